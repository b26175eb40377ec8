"""The same model exported from each Keras backend: TFLite latency side by side.

Three models are built once (TensorFlow backend, seeded) and saved as ``.keras``
files: the Fashion-MNIST CNN of the benchmarks (``_models.fashion_cnn``), that
CNN channel-pruned to 50% with the public API and materialized
(``kg.materialize``), and ``keras.applications.MobileNetV2`` (alpha 0.35, 96x96,
random weights). Then, for each backend (TensorFlow, JAX, PyTorch), a fresh
process with that ``KERAS_BACKEND`` loads every file and exports it with
``kg.export.to_tflite`` (float32, and int8 calibrated on the same 64 inputs),
verified against that backend's Keras outputs. Finally one process times every
file (``kg.export.tflite_latency``, one thread, batch 1) in alternating rounds
(best round median per file), so load on the machine hits all backends alike,
and reports each backend's latency relative to the TensorFlow-exported file.

Goal: every backend's file within 1.1x of the TensorFlow one's latency.

Usage:
    python benchmarks/backend_export.py [--quick] [--backends tensorflow,jax,torch]

Writes benchmarks/results/backend_export.{json,md}.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_GAP_QUIET", "1")

from absl import app, flags  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "the CNN only, few timing runs (a smoke test)")
flags.DEFINE_list("backends", ["tensorflow", "jax", "torch"], "backends to export from")
flags.DEFINE_integer("runs", 300, "timed runs per file and round")
flags.DEFINE_integer("rounds", 3, "alternating timing rounds (best round median)")
flags.DEFINE_integer("seed", 0, "seed of the model weights and the inputs")
flags.DEFINE_string("output_dir", os.path.join(HERE, "results"),
                    "where backend_export.{json,md} go")
# Internal: one backend's export job (run as a child process).
flags.DEFINE_string("child_job", None, "internal: export job directory")

MODELS = ("cnn", "cnn_channels_materialized", "mobilenet_v2_0.35_96")
QUICK_MODELS = ("cnn",)


def _inputs(shape, seed, n=64):
    import numpy as np
    return np.random.RandomState(seed).rand(n, *shape).astype("float32")


def build_models(out_dir, names, seed):
    """Saves each model in ``names`` to ``out_dir/<name>.keras`` (TensorFlow backend)."""
    import keras
    import numpy as np

    import _common
    import keras_gap as kg
    from _models import fashion_cnn

    _common.set_seed(seed)
    built = {}
    if "cnn" in names or "cnn_channels_materialized" in names:
        built["cnn"] = fashion_cnn()
    if "cnn_channels_materialized" in names:
        x = _inputs((28, 28, 1), seed, n=64)
        y = np.random.RandomState(seed).randint(0, 10, 64)
        pruned = kg.prune_low_magnitude(
            fashion_cnn(), structure="channel",
            pruning_schedule=kg.ConstantSparsity(0.5, begin_step=0, frequency=1))
        pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        pruned.fit(x, y, batch_size=32, epochs=1, verbose=0,
                   callbacks=[kg.UpdatePruningStep()])
        built["cnn_channels_materialized"] = kg.materialize(kg.strip_pruning(pruned))
    if "mobilenet_v2_0.35_96" in names:
        built["mobilenet_v2_0.35_96"] = keras.applications.MobileNetV2(
            input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)
    for name in names:
        built[name].save(os.path.join(out_dir, f"{name}.keras"))
    return {n: list(built[n].input_shape[1:]) for n in names}


def child(job_dir):
    """Runs in a process whose KERAS_BACKEND is the backend under test."""
    import keras

    import keras_gap as kg

    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    backend = keras.backend.backend()
    rows = []
    for name, shape in job["models"].items():
        model = keras.saving.load_model(os.path.join(job_dir, f"{name}.keras"))
        x = _inputs(shape, job["seed"])
        for quantize in (None, "int8"):
            path = os.path.join(job_dir, f"{name}_{quantize or 'float32'}_{backend}.tflite")
            start = time.perf_counter()
            result = kg.export.to_tflite(
                model, path, quantize=quantize, representative_dataset=x if quantize else None,
                sample_inputs=None if quantize else x[:16])
            rows.append({"model": name, "quantize": quantize or "float32", "backend": backend,
                         "file": os.path.basename(path), "size_bytes": result.size,
                         "export_s": time.perf_counter() - start,
                         "max_abs_diff": result.max_abs_diff,
                         "top1_agreement": result.top1_agreement,
                         "subprocess": result.subprocess})
    with open(os.path.join(job_dir, f"rows_{backend}.json"), "w") as f:
        json.dump(rows, f)


def _sha1(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def _run_backend(job_dir, backend):
    env = dict(os.environ, KERAS_BACKEND=backend)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__),
                           f"--child_job={job_dir}"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"export from the {backend!r} backend failed:\n{proc.stderr[-4000:]}")
    with open(os.path.join(job_dir, f"rows_{backend}.json")) as f:
        return json.load(f)


def time_files(job_dir, rows, shapes, runs, rounds, seed):
    from keras_gap.export import tflite_latency
    best = {}
    for _ in range(rounds):
        for row in rows:
            x = _inputs(shapes[row["model"]], seed, n=1)
            stats = tflite_latency(os.path.join(job_dir, row["file"]), x, runs=runs,
                                   warmup=max(5, runs // 10), num_threads=1)
            key = row["file"]
            best[key] = min(best.get(key, float("inf")), stats["median_ms"])
            row["resolver"] = stats["resolver"]
    for row in rows:
        row["latency_ms"] = best[row["file"]]
        row["sha1"] = _sha1(os.path.join(job_dir, row["file"]))


def markdown(rows, backends, prov):
    import _common
    lines = ["# TFLite files exported from each Keras backend", "",
             "Same `.keras` weights loaded under each backend and exported with "
             "`kg.export.to_tflite` (JAX and PyTorch convert through the TensorFlow-backend "
             "export subprocess). Latency: batch 1, one thread, best of the alternating "
             "rounds' medians, all files timed in one process. Ratio: vs the "
             "TensorFlow-exported file (goal <= 1.10x). Same file: byte-identical to it.", "",
             "| model | dtype | backend | latency ms | vs TF | same file as TF | size | "
             "export s (subprocess overhead s) |", "|---|---|---|---|---|---|---|---|"]
    tf_rows = {(r["model"], r["quantize"]): r for r in rows if r["backend"] == "tensorflow"}
    for r in rows:
        ref = tf_rows.get((r["model"], r["quantize"]))
        ratio = f"{r['latency_ms'] / ref['latency_ms']:.2f}x" if ref else "-"
        same = ("yes" if ref and r["sha1"] == ref["sha1"] else "no") if ref else "-"
        over = r["subprocess"]["overhead_s"] if r.get("subprocess") else None
        lines.append(
            f"| {r['model']} | {r['quantize']} | {r['backend']} | {r['latency_ms']:.4f} | "
            f"{ratio} | {same} | {r['size_bytes']:,} | {r['export_s']:.1f}"
            + (f" ({over:.1f})" if over is not None else "") + " |")
    ratios = [r["latency_ms"] / tf_rows[(r["model"], r["quantize"])]["latency_ms"]
              for r in rows if r["backend"] != "tensorflow"
              and (r["model"], r["quantize"]) in tf_rows]
    if ratios:
        lines += ["", f"Worst non-TensorFlow ratio: {max(ratios):.2f}x (goal <= 1.10x); "
                  f"backends: {', '.join(backends)}."]
    lines += ["", _common.provenance_line(prov), ""]
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.child_job:
        child(FLAGS.child_job)
        return
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import _common
    from _machine import machine_info

    names = QUICK_MODELS if FLAGS.quick else MODELS
    runs = 30 if FLAGS.quick and not FLAGS["runs"].present else FLAGS.runs
    rounds = 1 if FLAGS.quick and not FLAGS["rounds"].present else FLAGS.rounds
    prov = _common.provenance()
    with tempfile.TemporaryDirectory(prefix="keras_gap_backend_export_") as job_dir:
        shapes = build_models(job_dir, names, FLAGS.seed)
        with open(os.path.join(job_dir, "job.json"), "w") as f:
            json.dump({"models": shapes, "seed": FLAGS.seed}, f)
        rows = []
        for backend in FLAGS.backends:
            print(f"exporting {len(names)} model(s) from the {backend!r} backend ...",
                  flush=True)
            rows += _run_backend(job_dir, backend)
        print(f"timing {len(rows)} files ({rounds} round(s) of {runs} runs) ...", flush=True)
        time_files(job_dir, rows, shapes, runs, rounds, FLAGS.seed)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    out = {"rows": rows, "provenance": prov, "machine": machine_info(),
           "backends": list(FLAGS.backends), "models": list(names)}
    with open(os.path.join(FLAGS.output_dir, "backend_export.json"), "w") as f:
        json.dump(out, f, indent=1)
    table = markdown(rows, FLAGS.backends, prov)
    with open(os.path.join(FLAGS.output_dir, "backend_export.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    app.run(main)
