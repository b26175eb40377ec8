"""P-GaP's rounds without Ray: what a worker and the driver do.

`PGaPRunner` (gap/ray_runner.py) is the Ray plumbing (cluster, actors, thread
limits, shipping the user's code); the round logic is here and runs in any
process:

* `prepare_model` builds and prunes the user's model (worker and driver);
* `train_copy` trains one P-GaP copy: the round's values restored, its
  partition grown and the optimizer reset as the in-process P-GaP does at that
  GaP step (`CopyCallback`), every mask fixed during the fit;
* the driver merges the copies and prunes back with `GaPEngine.merge_round`
  (the step logic `GaPCallback` uses), and fine-tunes with `finetune`;
* `RoundCheckpoint` writes the round-boundary state atomically.
"""

import json
import os
import time

import numpy as np

from keras_gap.callbacks import overall_sparsity
from keras_gap.gap import pgap
from keras_gap.gap.callback import GaPCallback
from keras_gap.gap.engine import GaPEngine

CHECKPOINT = "pgap_checkpoint.npz"
_FORMAT = 1


def prepare_model(build, gap_kwargs):
    """Calls ``build()``, checks it, prunes it with `prune_gap`, recompiles.

    Args:
        build: callable returning a compiled, unpruned Keras model.
        gap_kwargs: keyword arguments of `prune_gap` (method is "pgap").

    Returns:
        The compiled GaP model.

    Example:
        >>> pruned = prepare_model(build, {"target_sparsity": 0.9, "num_partitions": 2})
    """
    import keras

    from keras_gap.gap.api import prune_gap
    model = build()
    if not isinstance(model, keras.Model):
        raise ValueError("PGaPRunner: `build()` must return a compiled keras.Model; "
                         f"it returned {type(model).__name__}.")
    if getattr(model, "optimizer", None) is None or not model.compiled:
        raise ValueError(
            f"PGaPRunner: `build()` returned model {model.name!r} uncompiled. Compile it "
            "inside build (model.compile(optimizer, loss, metrics)): every worker trains "
            "with that optimizer and loss.")
    config = model.get_compile_config()
    try:
        pruned = prune_gap(model, method="pgap", **gap_kwargs)
    except ValueError as e:
        raise ValueError(f"PGaPRunner: `build()` returned model {model.name!r} that "
                         f"prune_gap cannot prepare: {e}") from e
    pruned.compile_from_config(config)
    return pruned


def fit_inputs(data):
    """``data()``'s result as keyword arguments of ``model.fit``.

    Accepted: ``(x, y)`` arrays; ``((x, y), (x_val, y_val))``;
    ``(train_ds, val_ds)`` (``val_ds`` may be None); a dataset; or a dict of
    `fit` arguments (``x``, ``y``, ``validation_data``, ...).

    Args:
        data: what ``data()`` returned.

    Returns:
        dict of `fit` keyword arguments.

    Example:
        >>> fit_inputs((x, y))
        {'x': x, 'y': y}
    """
    def is_array(a):
        return hasattr(a, "shape") and hasattr(a, "__len__")

    if isinstance(data, dict):
        if "x" not in data:
            raise ValueError("PGaPRunner: a dict from `data()` must hold fit arguments "
                             f"including 'x'; got keys {sorted(data)}.")
        return dict(data)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        a, b = data
        if is_array(a) and is_array(b):
            return {"x": a, "y": b}
        out = {"x": a[0], "y": a[1]} if isinstance(a, (tuple, list)) else {"x": a}
        if b is not None:
            out["validation_data"] = tuple(b) if isinstance(b, list) else b
        return out
    if data is None or is_array(data):
        raise ValueError(
            "PGaPRunner: `data()` must return (x, y), ((x, y), (x_val, y_val)), "
            "(train_ds, val_ds), a dataset, or a dict of fit arguments; it returned "
            f"{type(data).__name__}.")
    return {"x": data}


class CopyCallback(GaPCallback):
    """`GaPCallback` for one GaP step run on its own: one P-GaP copy, or the
    fine-tuning.

    At the start of the fit it puts the round's values in place, sets the
    step counters to where the in-process schedule would be at GaP step
    ``gap_step``, grows ``grow`` (None: fine-tuning) and resets the
    optimizer as the in-process P-GaP boundary does; no mask changes
    during the fit.

    Args:
        values: the round's values (`pgap.snapshot` order).
        gap_step: the GaP step this fit is (round * K + partition; K * rounds
            for fine-tuning).
        grow: the partition to grow, or None.
        reset_optimizer: as in `GaPCallback`.
        report: optional ``(epoch, logs) -> None`` called at every epoch end.

    Returns:
        A Keras callback.

    Example:
        >>> model.fit(x, y, epochs=2, callbacks=[CopyCallback(base, 1, 1, "all")])
    """

    def __init__(self, values, gap_step, grow, reset_optimizer, report=None):
        super().__init__(reset_optimizer=reset_optimizer, verbose=0)
        self._values, self._gap_step, self._grow_partition = values, gap_step, grow
        self._report = report
        self._checked_length = True  # this fit is one GaP step, not the schedule

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        model = self.model  # JAX: sync state before editing variables
        pgap.restore(model, self.wrappers, self._values)
        s = self.schedule
        start = s.begin_step - 1 + self._gap_step * s.steps_per_step
        self.set_step(start)  # every wrapper's pruning_step too
        if self._grow_partition is not None:
            self.engine.grow(self._grow_partition)
        self.engine.reset_slots()  # every copy is a fresh run (as in-process)
        optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
        if self.reset_optimizer == "fresh":
            self.engine.restart_optimizer()
            optimizer.iterations.assign(0)
        else:
            optimizer.iterations.assign(self._gap_step * s.steps_per_step)
        self.sparsity = overall_sparsity(self.wrappers)
        self._partition_cache = self.partition_sparsities()
        self.start_step = start

    def _boundary(self, step):
        """Masks stay fixed inside one GaP step."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self._report is not None:
            self._report(epoch, dict(logs or {}))


def train_copy(model, wrappers, inputs, fit_kwargs, values, round_index, partition, epochs,
               reset_optimizer, seed=0, report=None):
    """Trains one P-GaP copy: the round's ``values`` with ``partition`` grown.

    Args:
        model, wrappers: the worker's GaP model (from `prepare_model`) and its
            GaP wrappers.
        inputs, fit_kwargs: `fit` keyword arguments (`fit_inputs`) and extras.
        values: the round's values.
        round_index, partition: which copy (GaP step round_index * K + partition).
        epochs: epochs to train.
        reset_optimizer: as in `GaPCallback`.
        seed: base seed; the copy trains with ``seed + gap_step`` (a redo is
            the same run).
        report: optional ``(epoch, logs) -> None`` progress hook.

    Returns:
        dict: ``values`` (the trained copy's snapshot), ``history``,
        ``partition``, ``pid``, ``seconds``, ``threads`` (TF intra-op threads),
        ``steps_per_step``.

    Example:
        >>> out = train_copy(model, wrappers, fit_inputs(data()), {}, base, 0, 1, 2, "all")
    """
    import keras
    t0 = time.time()
    k = wrappers[0].pruning_schedule.num_partitions
    gap_step = round_index * k + partition
    keras.utils.set_random_seed(seed + gap_step)  # a redo is the same run
    for w in wrappers:  # (GaPCallback's resume check reads the counter)
        w.pruning_step.assign(0)
    callback = CopyCallback(values, gap_step, partition, reset_optimizer, report)
    kwargs = {"verbose": 0, **fit_kwargs, **inputs}
    history = model.fit(epochs=epochs, callbacks=[callback], **kwargs)
    return {"values": pgap.snapshot(model, wrappers),
            "history": {key: [float(v) for v in vs] for key, vs in history.history.items()},
            "partition": partition, "pid": os.getpid(), "seconds": time.time() - t0,
            "threads": _intra_op_threads(),
            "steps_per_step": int(callback.schedule.steps_per_step)}


def driver_engine(build, gap_kwargs, reset_optimizer):
    """The driver's GaP model and the `GaPEngine` that initializes, merges and
    prunes it back (schedules stay counted in epochs: the driver never trains
    a GaP step itself).

    Args:
        build: the user's build function.
        gap_kwargs: `prune_gap` arguments.
        reset_optimizer: as in `GaPCallback`.

    Returns:
        (model, engine).

    Example:
        >>> model, engine = driver_engine(build, {"target_sparsity": 0.9}, "all")
        >>> engine.initialize()
    """
    model = prepare_model(build, dict(gap_kwargs))
    return model, GaPEngine(model, reset_optimizer=reset_optimizer)


def finetune(model, engine, base, inputs, fit_kwargs, epochs, reset_optimizer, gap_step,
             steps_per_step=None):
    """Fine-tunes the merged model on the driver with every mask fixed.

    Args:
        model, engine: from `driver_engine`.
        base: the last round's merged values.
        inputs, fit_kwargs: `fit` arguments.
        epochs: fine-tuning epochs (0: none; the step counters are then set to
            the end of the rotation when ``steps_per_step`` is known).
        reset_optimizer: as in `GaPCallback`.
        gap_step: the GaP step fine-tuning is (rounds * K).
        steps_per_step: a copy's steps per GaP step.

    Returns:
        The fine-tuning's History.history as floats (None without fine-tuning).

    Example:
        >>> finetune(model, engine, base, fit_inputs(data()), {}, 2, "all", 4)
    """
    if epochs:
        callback = CopyCallback(base, gap_step, None, reset_optimizer)
        history = model.fit(epochs=epochs, callbacks=[callback],
                            **{"verbose": 0, **fit_kwargs, **inputs})
        return {key: [float(v) for v in vs] for key, vs in history.history.items()}
    if steps_per_step:  # no fine-tuning: counters at the end of the rotation
        for w in engine.wrappers:
            w.pruning_step.assign(w.pruning_schedule.begin_step - 1 + gap_step * steps_per_step)
    return None


class RoundCheckpoint:
    """P-GaP's round-boundary checkpoint: state (JSON) and values in one .npz,
    written atomically (a reader sees the old or the new file, whole).

    Args:
        directory: where ``pgap_checkpoint.npz`` lives (None: no checkpoint).
        signature: the run's settings; a checkpoint written with others is refused.

    Returns:
        A checkpoint; `save` writes, `load` reads ``(state, values)``.

    Example:
        >>> ckpt = RoundCheckpoint("runs/pgap", {"seed": 0})
        >>> ckpt.save({"rounds_done": 1}, values)
    """

    def __init__(self, directory, signature):
        self.directory = directory
        self.signature = signature

    @property
    def path(self):
        return None if self.directory is None else os.path.join(self.directory, CHECKPOINT)

    def save(self, state, values):
        if self.directory is None:
            return
        os.makedirs(self.directory, exist_ok=True)
        state = dict(state, format=_FORMAT, signature=self.signature)
        tmp = f"{self.path}.tmp-{os.getpid()}"
        arrays = {f"v{i}": np.asarray(v) for i, v in enumerate(values)}
        with open(tmp, "wb") as f:
            np.savez(f, __state__=np.array(json.dumps(state)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def load(self):
        """(state, values) of the checkpoint, or (None, None) when there is none."""
        if self.directory is None or not os.path.exists(self.path):
            return None, None
        with np.load(self.path, allow_pickle=False) as f:
            state = json.loads(str(f["__state__"]))
            values = [f[f"v{i}"] for i in range(len(f.files) - 1)]
        if state.get("format") != _FORMAT or state.get("signature") != self.signature:
            old = state.get("signature") or {}
            diff = sorted(k for k in set(old) | set(self.signature)
                          if old.get(k) != self.signature.get(k))
            raise ValueError(
                f"PGaPRunner: the checkpoint {self.path!r} was written by a run with "
                f"different settings ({', '.join(diff) or 'format'} differ). Use another "
                "checkpoint_dir, or the settings of that run to resume it.")
        return state, values


def _intra_op_threads():
    """TensorFlow's intra-op thread count in this process (None without TF)."""
    try:
        import tensorflow as tf
        return int(tf.config.threading.get_intra_op_parallelism_threads())
    except ImportError:
        return None

