"""Training-step overhead of keras-gap pruning vs dense, and vs tf-mot.

Measures, on CPU with the TensorFlow backend, in one run and side by side:

1. step time of a pruned model / step time of the same dense model, for an MLP
   and a small ResNet-style CNN (keras-gap, Keras 3);
2. the same ratio for tf-mot's ``prune_low_magnitude`` on the equivalent
   tf_keras models, run in a subprocess (tf-mot is never imported here: it
   needs TF_USE_LEGACY_KERAS=1);
3. the time of one mask update (``keras_gap.masks.topk_mask`` at 90% sparsity)
   on a 4096x4096 kernel against a full sort (keras.ops.argsort, np.sort).

Method: each model is warmed up (traced) first; then dense and pruned fits of
``--steps`` batches alternate for ``--reps`` repetitions. Step time is the gap
between consecutive ``on_train_batch_end`` calls (the first batches of every
fit are dropped: keras-gap retraces the train function at each fit), so it
includes the pruning callback's per-batch work. Ratios are medians. The
schedule is ``ConstantSparsity(0.9, begin_step=0, frequency=100)`` (tf-mot's
default frequency), so mask updates are part of the measured steps.

Usage:
    python benchmarks/overhead.py            # full sizes
    python benchmarks/overhead.py --quick    # small sizes, a smoke run
Results go to benchmarks/results/overhead.{json,md}.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

import _common  # noqa: E402
from _machine import machine_info  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Small sizes and few repetitions (smoke run).")
flags.DEFINE_integer("reps", None, "Interleaved repetitions (default 5; quick 3).")
flags.DEFINE_integer("steps", None, "Training steps per timed fit (default 40; quick 12).")
flags.DEFINE_integer("mask_size", None, "Kernel side for the mask update (default 4096; quick 1024).")
flags.DEFINE_string("out_dir", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                    "Where overhead.json and overhead.md are written.")
flags.DEFINE_bool("tfmot", True, "Also measure tf-mot in a subprocess.")
flags.DEFINE_integer("tfmot_timeout", 900, "Seconds allowed for the tf-mot subprocess.")

SPARSITY = 0.9
FREQUENCY = 100
SKIP = 2  # batches dropped at the start of each fit (tracing, iterator setup)


def sizes(quick):
    if quick:
        return dict(mlp=(784, [128], 10), mlp_batch=64, cnn_size=16, cnn_width=8,
                    cnn_blocks=1, cnn_batch=32, reps=3, steps=12, mask_size=1024)
    return dict(mlp=(784, [300, 100], 10), mlp_batch=128, cnn_size=28, cnn_width=16,
                cnn_blocks=1, cnn_batch=64, reps=5, steps=40, mask_size=4096)


# Model definitions shared (as source text) with the tf-mot subprocess ---------
MODEL_SOURCE = '''
def build_mlp(K, dims):
    inp, hidden, out = dims
    layers = [K.Input((inp,))]
    layers += [K.layers.Dense(h, activation="relu") for h in hidden]
    layers += [K.layers.Dense(out)]
    return K.Sequential(layers)


def build_resnet(K, size, width, blocks):
    L = K.layers
    inp = K.Input((size, size, 1))
    x = L.Conv2D(width, 3, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    for stage in range(3):
        for b in range(blocks):
            stride = 2 if (stage > 0 and b == 0) else 1
            filters = width * (2 ** stage)
            shortcut = x
            y = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
            y = L.BatchNormalization()(y)
            y = L.Activation("relu")(y)
            y = L.Conv2D(filters, 3, padding="same", use_bias=False)(y)
            y = L.BatchNormalization()(y)
            if stride != 1 or shortcut.shape[-1] != filters:
                shortcut = L.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
                shortcut = L.BatchNormalization()(shortcut)
            x = L.Activation("relu")(L.Add()([y, shortcut]))
    x = L.GlobalAveragePooling2D()(x)
    return K.Model(inp, L.Dense(10)(x))


def make_timer(K):
    class StepTimer(K.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    return StepTimer


def timed_fit(model, x, y, batch, steps, callbacks, timer_cls, skip):
    timer = timer_cls()
    n = batch * steps
    model.fit(x[:n], y[:n], batch_size=batch, epochs=1, verbose=0, shuffle=False,
              callbacks=list(callbacks) + [timer])
    gaps = [b - a for a, b in zip(timer.ends[:-1], timer.ends[1:])]
    return gaps[skip:]


def compare(dense, pruned, x, y, batch, steps, reps, dense_cbs, pruned_cbs, timer_cls, skip):
    """Warm up both, then interleave timed fits; returns per-step medians."""
    import statistics
    timed_fit(dense, x, y, batch, 4, dense_cbs(), timer_cls, 0)
    timed_fit(pruned, x, y, batch, 4, pruned_cbs(), timer_cls, 0)
    d_all, p_all, ratios = [], [], []
    for _ in range(reps):
        d = timed_fit(dense, x, y, batch, steps, dense_cbs(), timer_cls, skip)
        p = timed_fit(pruned, x, y, batch, steps, pruned_cbs(), timer_cls, skip)
        d_all += d
        p_all += p
        ratios.append(statistics.median(p) / statistics.median(d))
    md, mp = statistics.median(d_all), statistics.median(p_all)
    return {"dense_step_ms": 1e3 * md, "pruned_step_ms": 1e3 * mp, "ratio": mp / md,
            "ratio_per_rep": ratios, "steps_timed_each": len(d_all)}
'''

exec(MODEL_SOURCE)  # defines build_mlp, build_resnet, make_timer, timed_fit, compare


def data(kind, cfg, n, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    if kind == "mlp":
        x = rng.normal(size=(n, cfg["mlp"][0])).astype("float32")
    else:
        s = cfg["cnn_size"]
        x = rng.normal(size=(n, s, s, 1)).astype("float32")
    return x, rng.integers(0, 10, size=n).astype("int32")


def run_keras_gap(cfg):
    import keras
    import keras_gap as kg

    timer_cls = make_timer(keras)
    results = {}
    for kind in ("mlp", "resnet"):
        keras.utils.set_random_seed(0)
        if kind == "mlp":
            build = lambda: build_mlp(keras, cfg["mlp"])  # noqa: E731
            batch = cfg["mlp_batch"]
        else:
            build = lambda: build_resnet(keras, cfg["cnn_size"], cfg["cnn_width"],  # noqa: E731
                                         cfg["cnn_blocks"])
            batch = cfg["cnn_batch"]
        x, y = data(kind, cfg, batch * max(cfg["steps"], 4))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        dense = build()
        dense.compile(keras.optimizers.SGD(0.01, momentum=0.9), loss)
        pruned = kg.prune_low_magnitude(
            build(), pruning_schedule=kg.ConstantSparsity(SPARSITY, 0, frequency=FREQUENCY))
        pruned.compile(keras.optimizers.SGD(0.01, momentum=0.9), loss)
        res = compare(dense, pruned, x, y, batch, cfg["steps"], cfg["reps"],
                      lambda: [], lambda: [kg.UpdatePruningStep()], timer_cls, SKIP)
        res["params"] = int(dense.count_params())
        res["batch"] = batch
        res["jit_compile"] = str(getattr(pruned, "jit_compile", None))
        res["final_sparsity"] = round(kg.sparsity_report(pruned).sparsity, 4)
        results[kind] = res
        print(f"keras-gap {kind}: dense {res['dense_step_ms']:.2f} ms, pruned "
              f"{res['pruned_step_ms']:.2f} ms, ratio {res['ratio']:.3f}", flush=True)
    return results


TFMOT_MAIN = '''
import json, os, sys, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
cfg = json.loads(sys.argv[1])
import numpy as np
import tf_keras as K
import tensorflow_model_optimization as tfmot
{model_source}
out = {{"versions": {{"tensorflow_model_optimization": tfmot.__version__, "tf_keras": K.__version__}}}}
for kind in ("mlp", "resnet"):
    K.utils.set_random_seed(0)
    if kind == "mlp":
        build = lambda: build_mlp(K, cfg["mlp"]); batch = cfg["mlp_batch"]
    else:
        build = lambda: build_resnet(K, cfg["cnn_size"], cfg["cnn_width"], cfg["cnn_blocks"])
        batch = cfg["cnn_batch"]
    rng = np.random.default_rng(0)
    n = batch * max(cfg["steps"], 4)
    x = (rng.normal(size=(n, cfg["mlp"][0])) if kind == "mlp"
         else rng.normal(size=(n, cfg["cnn_size"], cfg["cnn_size"], 1))).astype("float32")
    y = rng.integers(0, 10, size=n).astype("int32")
    loss = K.losses.SparseCategoricalCrossentropy(from_logits=True)
    dense = build(); dense.compile(K.optimizers.SGD(0.01, momentum=0.9), loss)
    sched = tfmot.sparsity.keras.ConstantSparsity({sparsity}, 0, frequency={frequency})
    pruned = tfmot.sparsity.keras.prune_low_magnitude(build(), pruning_schedule=sched)
    pruned.compile(K.optimizers.SGD(0.01, momentum=0.9), loss)
    res = compare(dense, pruned, x, y, batch, cfg["steps"], cfg["reps"], lambda: [],
                  lambda: [tfmot.sparsity.keras.UpdatePruningStep()], make_timer(K), {skip})
    res["params"] = int(dense.count_params()); res["batch"] = batch
    out[kind] = res
    print(kind, res["ratio"], file=sys.stderr, flush=True)
print("RESULT_JSON " + json.dumps(out))
'''


def run_tfmot(cfg):
    """tf-mot in a subprocess; returns its results or {'error': why}."""
    script = TFMOT_MAIN.format(model_source="import time\n" + MODEL_SOURCE,
                               sparsity=SPARSITY, frequency=FREQUENCY, skip=SKIP)
    with tempfile.NamedTemporaryFile("w", suffix="_tfmot_overhead.py", delete=False) as f:
        f.write(script)
        path = f.name
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    try:
        proc = subprocess.run([sys.executable, path, json.dumps(cfg)], capture_output=True,
                              text=True, env=env, timeout=FLAGS.tfmot_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"tf-mot subprocess timed out after {FLAGS.tfmot_timeout} s"}
    finally:
        os.unlink(path)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT_JSON "):
            res = json.loads(line[len("RESULT_JSON "):])
            for kind in ("mlp", "resnet"):
                print(f"tf-mot {kind}: dense {res[kind]['dense_step_ms']:.2f} ms, pruned "
                      f"{res[kind]['pruned_step_ms']:.2f} ms, ratio {res[kind]['ratio']:.3f}",
                      flush=True)
            return res
    tail = (proc.stderr or "")[-1500:]
    return {"error": f"tf-mot could not run (exit {proc.returncode}): {tail}"}


def time_mask_update(side, reps=5):
    import numpy as np
    import keras
    from keras import ops
    from keras_gap import masks

    rng = np.random.default_rng(0)
    w = ops.convert_to_tensor(rng.normal(size=(side, side)).astype("float32"))
    scores = ops.abs(w)
    k = masks.num_to_keep(side * side, SPARSITY)
    w_np = np.abs(ops.convert_to_numpy(w)).ravel()

    def run(fn):
        fn()  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(times))

    topk = run(lambda: ops.convert_to_numpy(masks.topk_mask(scores, k)))
    argsort = run(lambda: ops.convert_to_numpy(ops.argsort(ops.reshape(scores, (-1,)))))
    npsort = run(lambda: np.sort(w_np))
    mask = masks.topk_mask(scores, k)
    kept = int(np.asarray(ops.convert_to_numpy(mask)).sum())
    return {"shape": [side, side], "sparsity": SPARSITY, "kept": kept, "expected_kept": k,
            "topk_mask_ms": topk, "keras_ops_argsort_ms": argsort, "np_sort_ms": npsort,
            "speedup_vs_argsort": argsort / topk, "speedup_vs_np_sort": npsort / topk,
            "backend": keras.backend.backend()}


def write_markdown(result, path):
    m, mk = result["machine"], result["mask_update"]
    lines = [
        "# Pruning overhead benchmark",
        "",
        f"Generated by `benchmarks/overhead.py{' --quick' if result['quick'] else ''}` on "
        f"{result['date']}.",
        "",
        _common.provenance_line(result.get("provenance")),
        "",
        f"- Machine: {m['cpu_model']}, {m['logical_cores']} logical cores "
        f"({m['platform']}); load average at start {m['load_average_at_start']}.",
        "- Other processes (other jobs, test suites) may have been running on this shared "
        "machine during the measurement: absolute times are noisy; the ratios are "
        "medians of interleaved runs.",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}.",
        f"- Backend: TensorFlow, CPU. Schedule: ConstantSparsity({SPARSITY}, begin_step=0, "
        f"frequency={FREQUENCY}); SGD with momentum; {result['config']['reps']} interleaved "
        f"repetitions of {result['config']['steps']} steps, first {SKIP} steps of each fit "
        "dropped, after a warm-up fit.",
        "",
        "## Training step time, pruned / dense",
        "",
        "| model | params | batch | dense ms/step | pruned ms/step | keras-gap ratio | "
        "tf-mot dense ms | tf-mot pruned ms | tf-mot ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tfm = result["tfmot"]
    for kind in ("mlp", "resnet"):
        r = result["keras_gap"][kind]
        t = tfm.get(kind) if "error" not in tfm else None
        tcols = (f"{t['dense_step_ms']:.2f} | {t['pruned_step_ms']:.2f} | {t['ratio']:.3f}"
                 if t else "n/a | n/a | n/a")
        lines.append(f"| {kind} | {r['params']} | {r['batch']} | {r['dense_step_ms']:.2f} | "
                     f"{r['pruned_step_ms']:.2f} | **{r['ratio']:.3f}** | {tcols} |")
    if "error" in tfm:
        lines += ["", f"tf-mot could not be measured: {tfm['error']}"]
    lines += [
        "",
        f"Models: MLP {result['config']['mlp']}; ResNet-style CNN on "
        f"{result['config']['cnn_size']}x{result['config']['cnn_size']}x1 inputs, 3 stages "
        f"x {result['config']['cnn_blocks']} basic block(s), width {result['config']['cnn_width']}"
        ", BatchNorm, global average pooling.",
        "",
        "## One mask update vs a full sort",
        "",
        f"Kernel {mk['shape'][0]}x{mk['shape'][1]} at {mk['sparsity']:.0%} sparsity "
        f"(keeps {mk['kept']} = num_to_keep; expected {mk['expected_kept']}), median of 5:",
        "",
        "| operation | ms |",
        "|---|---|",
        f"| `keras_gap.masks.topk_mask` (O(n) introselect + exact tie-break) | "
        f"{mk['topk_mask_ms']:.1f} |",
        f"| `keras.ops.argsort` (full sort, {mk['backend']}) | {mk['keras_ops_argsort_ms']:.1f} |",
        f"| `np.sort` (full sort) | {mk['np_sort_ms']:.1f} |",
        "",
        f"topk_mask is {mk['speedup_vs_argsort']:.2f}x the speed of keras.ops.argsort and "
        f"{mk['speedup_vs_np_sort']:.2f}x of np.sort.",
        "",
    ]
    if result.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv):
    del argv
    cfg = sizes(FLAGS.quick)
    if FLAGS.reps:
        cfg["reps"] = FLAGS.reps
    if FLAGS.steps:
        cfg["steps"] = FLAGS.steps
    if FLAGS.mask_size:
        cfg["mask_size"] = FLAGS.mask_size
    started = time.time()
    prov = _common.provenance()
    result = {"quick": FLAGS.quick, "date": prov["date"], "provenance": prov,
              "machine": machine_info(), "config": cfg}
    result["versions"] = dict(prov["versions"])
    result["keras_gap"] = run_keras_gap(cfg)
    result["mask_update"] = time_mask_update(cfg["mask_size"])
    print(f"mask update {cfg['mask_size']}^2: topk_mask {result['mask_update']['topk_mask_ms']:.1f} ms, "
          f"argsort {result['mask_update']['keras_ops_argsort_ms']:.1f} ms, "
          f"np.sort {result['mask_update']['np_sort_ms']:.1f} ms", flush=True)
    result["tfmot"] = run_tfmot(cfg) if FLAGS.tfmot else {"error": "skipped (--notfmot)"}
    if "versions" in result["tfmot"]:
        result["versions"].update(result["tfmot"]["versions"])
    result["notes"] = [
        "keras-gap's UpdatePruningStep is async-safe (its batch-end hook only writes a "
        "log entry), so Keras does not wait for every step's results; the compiled "
        "step is kept between fits (a guard stands in for it while no UpdatePruningStep "
        "is active). The first steps of each fit are dropped for both libraries.",
        "tf-mot was run in a separate process (TF_USE_LEGACY_KERAS=1, tf_keras); it is "
        "never imported in the main process.",
    ]
    result["elapsed_s"] = round(time.time() - started, 1)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "overhead.json"), "w") as f:
        json.dump(result, f, indent=2)
    write_markdown(result, os.path.join(FLAGS.out_dir, "overhead.md"))
    print(f"wrote {FLAGS.out_dir}/overhead.{{json,md}} in {result['elapsed_s']} s")


if __name__ == "__main__":
    app.run(main)
