"""Dense vs sparse TFLite latency and size (one thread, batch 1 and 64).

FC-heavy model: 2048 -> Dense 2048 (relu) -> Dense 2048 (relu) -> Dense 10,
pruned with the public API (`keras_gap.prune_low_magnitude` + one
`UpdatePruningStep` step to apply the masks; no training is needed for
latency) at 80/90/95% with unstructured ("random") or block sparsity:
(4, 1) for float32 and (16, 1) for int8 (`keras_gap.export.tflite_block_size`).
Every file is converted with `keras_gap.export.to_tflite` (verified against
Keras) and timed with the op resolver `run_tflite` would pick. A small CNN
shows the size story (convolutions: DENSIFY, smaller file, no speed-up on x86).

Usage:
    KERAS_BACKEND=tensorflow python benchmarks/tflite_latency.py [--quick]

Writes benchmarks/results/tflite_latency.{json,md}.
"""

import json
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

import _common  # noqa: E402
from _machine import machine_info  # noqa: E402
from _timing import time_tflite  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "90% only, few runs (a smoke test)")
flags.DEFINE_integer("width", 2048, "width of the Dense layers")
flags.DEFINE_integer("runs_b1", 300, "timed runs at batch 1")
flags.DEFINE_integer("runs_b64", 40, "timed runs at batch 64")
flags.DEFINE_list("sparsities", ["0.8", "0.9", "0.95"], "sparsity levels")
flags.DEFINE_string("output_dir", os.path.join(os.path.dirname(__file__), "results"),
                    "where tflite_latency.{json,md} go")


def fc_model(width):
    import keras
    return keras.Sequential([
        keras.Input((width,)),
        keras.layers.Dense(width, activation="relu", name="fc1"),
        keras.layers.Dense(width, activation="relu", name="fc2"),
        keras.layers.Dense(10, name="logits"),
    ], name="fc_2x%d" % width)


def small_cnn():
    import keras
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(128, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(128, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ], name="small_cnn")


def pruned_copy(build, sparsity, block_size, x):
    """Prunes a fresh model through the public API; returns the stripped model."""
    import keras
    import numpy as np

    import keras_gap as kg

    keras.utils.set_random_seed(0)
    model = build()
    if sparsity == 0:
        return model
    pruned = kg.prune_low_magnitude(
        model, block_size=block_size,
        pruning_schedule=kg.ConstantSparsity(sparsity, begin_step=0, frequency=1))
    pruned.compile(keras.optimizers.SGD(0.0), "mse")  # lr 0: masks only
    y = np.zeros((x.shape[0],) + tuple(pruned.outputs[0].shape[1:]), "float32")
    pruned.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0,
               callbacks=[kg.UpdatePruningStep()])
    return kg.strip_pruning(pruned)


def export_and_measure(model, name, quantize, calib, x1, x64, runs_b1, runs_b64, workdir,
                       resolver="auto"):
    from keras_gap import export

    path = os.path.join(workdir, name + ".tflite")
    kwargs = dict(quantize=quantize, sample_inputs=calib[:32])
    if quantize == "int8":
        kwargs["representative_dataset"] = calib
    result = export.to_tflite(model, path, **kwargs)
    info = export.inspect_tflite(path)
    row = {
        "name": name, "quantize": quantize or "float32",
        "file_bytes": info.file_size, "gzip_bytes": info.gzip_size,
        "densify_ops": info.densify_ops,
        "native_sparse_tensors": sum(t.native_sparse for t in info.tensors),
        "sparse_tensors": len(info.sparse_tensors),
        "verify_max_abs_diff": result.max_abs_diff,
        "batch1": time_tflite(path, x1, runs_b1, resolver),
    }
    if x64 is not None:
        row["batch64"] = time_tflite(path, x64, runs_b64, resolver)
    print(f"{name:32s} {row['file_bytes'] / 1e6:7.2f} MB  gzip "
          f"{row['gzip_bytes'] / 1e6:6.2f} MB  b1 {row['batch1']['median_ms']:8.3f} ms"
          + (f"  b64 {row['batch64']['median_ms']:8.2f} ms" if x64 is not None else "")
          + f"  [{row['batch1']['resolver']}]", flush=True)
    return row


def versions():
    out = _common.versions()
    try:
        from importlib.metadata import version
        out["ai_edge_litert"] = version("ai-edge-litert")
    except Exception:  # not installed
        out["ai_edge_litert"] = None
    return out


def speedups(rows):
    """Adds dense/this latency ratios and size ratios per quantization."""
    base = {r["quantize"]: r for r in rows
            if r["sparsity"] == 0 and not r["name"].endswith("nodelegate")}
    for r in rows:
        b = base[r["quantize"]]
        r["size_vs_dense"] = r["file_bytes"] / b["file_bytes"]
        r["gzip_vs_dense"] = r["gzip_bytes"] / b["gzip_bytes"]
        for key in ("batch1", "batch64"):
            if key in r:
                r[key]["speedup_vs_dense"] = b[key]["median_ms"] / r[key]["median_ms"]


def markdown(result):
    m = result["machine"]
    lines = [
        "# TFLite latency and size: dense vs sparse",
        "",
        f"Date: {result['date']}. Machine: {m['cpu']}, {m['logical_cores']} logical cores "
        f"({', '.join(m['simd'])}). Versions: " + ", ".join(
            f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
        _common.provenance_line(result.get("provenance")),
        "",
        "One interpreter thread, median of "
        f"{result['runs_b1']} runs at batch 1 and {result['runs_b64']} at batch 64. "
        "Other processes (tests, training jobs) may have been running on this "
        "shared machine: compare ratios within one run, not absolute times "
        "across runs.",
        "",
        f"## FC model: {result['fc_model']}",
        "",
        "| variant | quant | sparsity | block | file MB | gzip MB | size vs dense | "
        "DENSIFY | batch 1 ms | speed-up | batch 64 ms | speed-up | resolver |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["fc"]:
        lines.append(
            f"| {r['name']} | {r['quantize']} | {r['sparsity']:.0%} | {r['block']} | "
            f"{r['file_bytes'] / 1e6:.2f} | {r['gzip_bytes'] / 1e6:.2f} | "
            f"{r['size_vs_dense']:.2f}x | {r['densify_ops']} | "
            f"{r['batch1']['median_ms']:.3f} | {r['batch1']['speedup_vs_dense']:.2f}x | "
            f"{r['batch64']['median_ms']:.2f} | {r['batch64']['speedup_vs_dense']:.2f}x | "
            f"{r['batch1']['resolver']} |")
    lines += [
        "",
        f"## Small CNN ({result['cnn_model']}): the size story",
        "",
        "| variant | sparsity | file MB | gzip MB | size vs dense | gzip vs dense | "
        "DENSIFY | batch 1 ms | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["cnn"]:
        lines.append(
            f"| {r['name']} | {r['sparsity']:.0%} | {r['file_bytes'] / 1e6:.3f} | "
            f"{r['gzip_bytes'] / 1e6:.3f} | {r['size_vs_dense']:.2f}x | "
            f"{r['gzip_vs_dense']:.2f}x | {r['densify_ops']} | "
            f"{r['batch1']['median_ms']:.3f} | {r['batch1']['speedup_vs_dense']:.2f}x |")
    lines += ["", "Speed-ups are relative to the dense model under the default resolver "
              "(XNNPACK); the `dense_nodelegate` rows time the same dense file with the "
              "built-in kernels only.", "",
              "Resolver BUILTIN = default kernels + XNNPACK; "
              "BUILTIN_WITHOUT_DEFAULT_DELEGATES = built-in kernels only (required for "
              "sparse int8, see keras_gap.export.run_tflite).", ""]
    return "\n".join(lines)


def main(argv):
    del argv
    import numpy as np
    from absl import logging

    logging.set_verbosity(logging.ERROR)

    from keras_gap.export import tflite_block_size

    sparsities = [0.9] if FLAGS.quick else [float(s) for s in FLAGS.sparsities]
    runs_b1 = 30 if FLAGS.quick else FLAGS.runs_b1
    runs_b64 = 5 if FLAGS.quick else FLAGS.runs_b64
    width = FLAGS.width
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(128, width)).astype("float32")
    x1, x64 = calib[:1], calib[:64]
    fc_rows = []
    with tempfile.TemporaryDirectory(prefix="kg_bench_") as workdir:
        for quantize in (None, "int8"):
            qname = quantize or "float32"
            variants = [(0.0, None), (0.0, "nodelegate")]
            for s in sparsities:
                variants += [(s, (1, 1)), (s, tflite_block_size(quantize))]
            for sparsity, block in variants:
                resolver = "auto"
                if block == "nodelegate":
                    block, resolver = None, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
                model = pruned_copy(lambda: fc_model(width), sparsity, block or (1, 1),
                                    calib)
                label = (("dense" if resolver == "auto" else "dense_nodelegate")
                         if sparsity == 0 else
                         f"{'random' if block == (1, 1) else 'block%dx%d' % block}"
                         f"_{int(round(sparsity * 100))}")
                row = export_and_measure(model, f"fc_{qname}_{label}", quantize, calib,
                                         x1, x64, runs_b1, runs_b64, workdir, resolver)
                row.update(sparsity=sparsity,
                           block="-" if block is None else
                           ("random" if block == (1, 1) else "%dx%d" % block))
                fc_rows.append(row)
        speedups(fc_rows)

        cnn_rows = []
        cx = rng.normal(size=(32, 32, 32, 3)).astype("float32")
        for sparsity in [0.0] + sparsities:
            model = pruned_copy(small_cnn, sparsity, (1, 1), cx)
            name = "cnn_dense" if sparsity == 0 else f"cnn_random_{int(sparsity * 100)}"
            row = export_and_measure(model, name, None, cx, cx[:1], None,
                                     runs_b1 // 2, 0, workdir)
            row.update(sparsity=sparsity, block="random" if sparsity else "-")
            cnn_rows.append(row)
        speedups(cnn_rows)

    prov = _common.provenance()
    result = {
        "date": prov["date"], "provenance": prov,
        "machine": machine_info(), "versions": versions(),
        "note": "Shared machine: other processes may have been running during the "
                "measurements. One interpreter thread.",
        "quick": FLAGS.quick, "runs_b1": runs_b1, "runs_b64": runs_b64,
        "fc_model": f"{width} -> Dense {width} relu -> Dense {width} relu -> Dense 10",
        "cnn_model": "32x32x3 -> Conv 32 -> Conv 64 s2 -> Conv 128 s2 -> Conv 128 -> "
                     "GAP -> Dense 10",
        "fc": fc_rows, "cnn": cnn_rows,
    }
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    stem = os.path.join(FLAGS.output_dir, "tflite_latency" + ("_quick" if FLAGS.quick else ""))
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(markdown(result))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    app.run(main)
