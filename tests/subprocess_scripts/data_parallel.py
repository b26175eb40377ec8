"""Trains pruned models on 2 logical CPU devices and on one; prints a JSON report.

Run in a fresh process (device configuration must precede TensorFlow / JAX
initialization):

    KERAS_BACKEND=tensorflow python data_parallel.py CASE [CASE ...]
    KERAS_BACKEND=jax python data_parallel.py CASE [CASE ...]

TensorFlow trains under ``tf.distribute.MirroredStrategy`` over two logical
CPUs; JAX under ``keras.distribution.DataParallel`` over two host devices.
After every training step a callback reads every replica's copy of every
model variable (masks, step counters, weights, growing gates' scores and
samples) and records whether they agree and whether the masked entries are
exactly zero. The same case is then
trained on one device from the same initial weights and data; the final
weights are compared. One JSON line per case on stdout:
``{"case", "ok", "steps_checked", "replicas", "max_replica_diff",
"masked_nonzero", "max_diff_vs_single", "sparsity", "error"}``.
"""

import json
import os
import sys
import traceback

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=2")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if BACKEND == "tensorflow":
    import tensorflow as tf
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402
import keras  # noqa: E402

import keras_gap as kg  # noqa: E402

BATCH, STEPS = 16, 6


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * STEPS, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 4, size=(BATCH * STEPS,)).astype("int32")
    return x, y


def _base_model():
    keras.utils.set_random_seed(7)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, name="conv")(inp)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="relu", name="d1")(h)
    out = keras.layers.Dense(4, name="out")(h)
    return keras.Model(inp, out)


def _schedule(begin_step=0):
    # Masks change at every step: 10% -> 80% over the run.
    return kg.PolynomialDecay(0.1, 0.8, begin_step=begin_step, end_step=STEPS, frequency=1)


def _dense(layer):
    return isinstance(layer, keras.layers.Dense)


CASES = {
    "unstructured": lambda m: kg.prune_low_magnitude(m, pruning_schedule=_schedule()),
    "block": lambda m: kg.prune_low_magnitude(m, pruning_schedule=_schedule(),
                                              block_size=(4, 1), pruning_policy=_dense),
    "n_by_m": lambda m: kg.prune_low_magnitude(m, sparsity_m_by_n=(2, 4), pruning_policy=_dense,
                                               pruning_schedule=kg.ConstantSparsity(
                                                   0.5, begin_step=0, frequency=1)),
    "global": lambda m: kg.prune_low_magnitude(m, pruning_schedule=_schedule(),
                                               scope="global"),
    "fggp": lambda m: kg.prune_low_magnitude(m, pruning_schedule=_schedule(begin_step=2),
                                             criterion=kg.criteria.FGGP(rate=0.5)),
    "channel": lambda m: kg.prune_low_magnitude(m, pruning_schedule=_schedule(),
                                                structure="channel"),
    "gap_cgap": lambda m: kg.prune_gap(m, target_sparsity=0.8, num_partitions=2,
                                       steps_per_step=2, rounds=1, finetune_steps=2),
    "gap_channel": lambda m: kg.prune_gap(m, target_sparsity=0.5, num_partitions=2,
                                          steps_per_step=2, rounds=1, finetune_steps=2,
                                          structure="channel"),
    "growing": lambda m: kg.growing.add_gates(m, seed_channels=0.5, seed=1,
                                              target=kg.growing.Budget(flops=0.5)),
    "gap_pgap": lambda m: kg.prune_gap(m, target_sparsity=0.8, num_partitions=2,
                                       steps_per_step=2, rounds=1, finetune_steps=2,
                                       method="pgap"),
}


def _replicas(variable):
    """Every replica's value of a Keras variable, as numpy arrays."""
    value = variable.value
    if BACKEND == "tensorflow":
        parts = getattr(value, "values", None) or (value,)
        return [np.asarray(p.numpy()) for p in parts]
    shards = getattr(value, "addressable_shards", None)
    if shards:
        return [np.asarray(s.data) for s in shards]
    return [np.asarray(value)]


class _Check(keras.callbacks.Callback):
    """After every step: replicas agree, masked entries are exactly zero."""

    def __init__(self):
        super().__init__()
        self.steps = 0
        self.replicas = 0
        self.max_diff = 0.0
        self.masked_nonzero = 0

    def on_train_batch_end(self, batch, logs=None):
        model = self.model  # JAX: syncs the trainer state into the variables
        self.steps += 1
        # Every model variable: masks, step counters, weights, gate scores/samples.
        for v in model.variables:
            reps = _replicas(v)
            self.replicas = max(self.replicas, len(reps))
            for r in reps[1:]:
                diff = float(np.max(np.abs(r.astype("float64") - reps[0])))
                self.max_diff = max(self.max_diff, diff)
        for w in _wrappers(model):
            for weight, mask in zip(w.pruned_weights, w.masks):
                for wv, mv in zip(_replicas(weight), _replicas(mask)):
                    self.masked_nonzero += int(np.count_nonzero(wv[mv == 0]))
        recorder = kg.gradients.find_recorder(model.optimizer)
        for buf in (recorder._buffers.values() if recorder is not None else ()):
            reps = _replicas(buf)  # FGGP's recorded gradients: the global batch's
            for r in reps[1:]:
                self.max_diff = max(self.max_diff, float(np.max(np.abs(r - reps[0]))))


def _wrappers(model):
    from keras_gap.wrapper import collect_wrappers
    return collect_wrappers(model)


def _callback(pruned):
    if any(isinstance(l, kg.growing.Gate) for l in pruned._flatten_layers()):
        return kg.growing.GrowingCallback(final_temperature=10.0, epochs=1, penalty=0.1)
    gap = any(isinstance(w.pruning_schedule, kg.GaPPruningSchedule) for w in _wrappers(pruned))
    return kg.GaPCallback(verbose=0) if gap else kg.UpdatePruningStep()


_STRATEGY = []


def _strategy():
    """One MirroredStrategy for all cases (a new one per case reuses collective
    instance keys with other shapes)."""
    if not _STRATEGY:
        _STRATEGY.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    return _STRATEGY[0]


def _train(case, distributed):
    x, y = _data()
    check = _Check()

    def build():
        pruned = CASES[case](_base_model())
        pruned.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return pruned

    if distributed and BACKEND == "tensorflow":
        with _strategy().scope():
            pruned = build()
    elif distributed:
        import jax
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=jax.devices()))
        try:
            pruned = build()
            pruned.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                       callbacks=[_callback(pruned), check])
        finally:
            keras.distribution.set_distribution(None)
        return pruned, check
    else:
        pruned = build()
    pruned.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
               callbacks=[_callback(pruned), check])
    return pruned, check


def run(case):
    report = {"case": case, "backend": BACKEND}
    try:
        dist, check = _train(case, True)
        single, _ = _train(case, False)
        diffs = [float(np.max(np.abs(keras.ops.convert_to_numpy(a).astype("float64")
                                     - keras.ops.convert_to_numpy(b))))
                 for a, b in zip(dist.variables, single.variables)]
        masks = [keras.ops.convert_to_numpy(m) for w in _wrappers(dist) for m in w.masks] or [
            keras.ops.convert_to_numpy(l.sample) for l in dist._flatten_layers()
            if isinstance(l, kg.growing.Gate)]  # growing: fraction of channels sampled off
        report.update(
            steps_checked=check.steps, replicas=check.replicas,
            max_replica_diff=check.max_diff, masked_nonzero=check.masked_nonzero,
            max_diff_vs_single=max(diffs),
            steps=[int(keras.ops.convert_to_numpy(w.pruning_step)) for w in _wrappers(dist)]
            or [int(keras.ops.convert_to_numpy(dist.optimizer.iterations))],
            sparsity=float(1 - sum(np.count_nonzero(m) for m in masks)
                           / sum(m.size for m in masks)),
            ok=True, error=None)
    except Exception as e:  # reported, the test decides
        report.update(ok=False, error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc()[-3000:])
    print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    for name in sys.argv[1:] or list(CASES):
        run(name)
