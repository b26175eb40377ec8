"""The keras-gap demo: dense vs scheduled grow-and-prune on real Fashion-MNIST.

1. Trains a dense baseline and a sparse model (C-GaP by default, 90%
   sparsity) with the same epoch budget; Keras progress bars throughout, the
   grown GaP partition is shown at each boundary and in the logs.
2. Strips the sparse model, exports float32 and int8 TFLite files (sparse
   weight encoding for the sparse model), and measures the interpreter's
   accuracy on the test set.
3. Prints a table (accuracy, parameters, non-zeros, file sizes plain and gzip,
   TFLite latency at batch 1) and writes ``results.md``, ``results.json`` and
   ``results.png`` (accuracy per epoch and per-layer sparsity) to the output
   folder, whose path it prints.

Run:
    python examples/demo.py                 # default budget: 12 epochs per model
    python examples/demo.py --fast          # tiny budget (CI smoke test)
    python examples/demo.py --epochs 20 --partitions 4 --sparsity 0.95

Method ``gmp`` (gradual magnitude pruning, ``prune_low_magnitude`` with
``PolynomialDecay``) is the tf-mot baseline; ``cgap`` / ``pgap`` need
``keras_gap.prune_gap``.
"""

import gzip
import json
import os
import statistics
import sys
import tempfile
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", None, "Epoch budget of EACH model (dense and sparse). "
                     "Default: 12 (--fast: partitions + 1).")
flags.DEFINE_float("sparsity", 0.9, "Target sparsity of the prunable weights, in [0, 1).")
flags.DEFINE_integer("partitions", 4, "GaP partitions (K).")
flags.DEFINE_integer("rounds", None, "GaP rounds (default: as many as fit in 3/4 of "
                     "the budget; the rest is fine-tuning).")
flags.DEFINE_enum("method", "cgap", ["cgap", "pgap", "gmp"],
                  "cgap: cyclic GaP; pgap: parallel GaP; gmp: gradual magnitude pruning.")
flags.DEFINE_list("keep_dense", [], "Layer names kept dense (e.g. conv1,logits).")
flags.DEFINE_integer("limit", None, "Use only the first N training and N/5 test examples.")
flags.DEFINE_bool("fast", False, "Tiny budget for CI: --limit 2000, epochs = partitions + 1, "
                  "fewer latency runs.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("output_dir", None, "Output folder (default: a new temp folder).")

DEFAULT_EPOCHS = 12


# --- data and model -------------------------------------------------------------------

def make_data(limit, batch_size, seed):
    """Fashion-MNIST: train/test tf.data pipelines and numpy test/calibration arrays."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from keras_gap import datasets

    train_split = "train" if limit is None else f"train[:{limit}]"
    test_split = "test" if limit is None else f"test[:{max(limit // 5, 100)}]"
    to_float = lambda x, y: (tf.cast(x, tf.float32), y)  # noqa: E731
    train = (datasets.fashion_mnist(train_split).map(to_float).cache()
             .shuffle(10000, seed=seed).batch(batch_size).prefetch(tf.data.AUTOTUNE))
    # batch_size=-1: the whole split as one batch of tensors.
    x_test, y_test = tfds.as_numpy(datasets.fashion_mnist(test_split, batch_size=-1))
    x_test = x_test.astype(np.float32)
    x_cal, _ = tfds.as_numpy(datasets.fashion_mnist("train[:300]", batch_size=-1))
    test = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(512)
    return train, test, x_test, y_test, x_cal.astype(np.float32)


def make_model():
    """Small CNN for 28x28x1 inputs in 0..255 (about 110k parameters)."""
    import keras
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Rescaling(1.0 / 255, name="rescale"),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(name="pool2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(128, activation="relu", name="fc1"),
        keras.layers.Dense(10, name="logits"),
    ], name="cnn")


def compile_model(model):
    import keras
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def gap_plan(epochs, partitions, rounds=None):
    """Splits an epoch budget: (rounds, epochs_per_step=1, finetune_epochs).

    Args:
        epochs: total budget.
        partitions: K.
        rounds: fixed rounds, or None: as many as fit in 3/4 of the budget (>= 1).

    Returns:
        (rounds, finetune_epochs), with rounds * partitions + finetune == epochs.
    """
    if epochs < partitions + 1:
        raise app.UsageError(
            f"GaP with {partitions} partitions needs an epoch budget of at least "
            f"{partitions + 1} (one epoch per partition plus one fine-tuning epoch); "
            f"got --epochs {epochs}.")
    if rounds is None:
        rounds = max(1, int(0.75 * epochs) // partitions)
    finetune = epochs - rounds * partitions
    if finetune < 1:
        raise app.UsageError(
            f"--rounds {rounds} x --partitions {partitions} leaves no fine-tuning epoch "
            f"in --epochs {epochs}.")
    return rounds, finetune


def train_sparse(method, train, test, epochs, sparsity, partitions, rounds, keep_dense,
                 history_out):
    """Builds and trains the sparse model; returns (pruned model, description)."""
    import keras_gap as kg

    model = make_model()
    if method == "gmp":
        steps = epochs * int(train.cardinality())
        pruned = kg.prune_low_magnitude(
            model,
            pruning_schedule=kg.PolynomialDecay(
                0.0, sparsity, begin_step=0, end_step=max(1, int(0.75 * steps)),
                frequency=max(1, steps // 40)),
            pruning_policy=(lambda l: l.name not in keep_dense) if keep_dense else None)
        callbacks = [kg.UpdatePruningStep()]
        desc = f"GMP (PolynomialDecay 0->{sparsity:.0%} over 3/4 of {epochs} epochs)"
    else:
        if not hasattr(kg, "prune_gap"):
            sys.exit("keras_gap.prune_gap is not available in this keras_gap build; "
                     "run with --method gmp.")
        rounds, finetune = gap_plan(epochs, partitions, rounds)
        pruned = kg.prune_gap(
            model, target_sparsity=sparsity, num_partitions=partitions,
            epochs_per_step=1, rounds=rounds, finetune_epochs=finetune,
            partitioning="balanced", distribution="uniform", method=method,
            keep_dense=tuple(keep_dense) or None)
        assert kg.gap_total_epochs(pruned) == epochs, kg.gap_total_epochs(pruned)
        callbacks = [kg.GaPCallback(log_dir=None)]
        desc = (f"{method.upper().replace('GAP', '-GaP')} ({partitions} partitions x "
                f"{rounds} round(s), 1 epoch per step, {finetune} fine-tuning epoch(s))")
    compile_model(pruned)
    history = pruned.fit(train, epochs=epochs, validation_data=test, callbacks=callbacks)
    history_out.update({k: [float(v) for v in vals] for k, vals in history.history.items()})
    return pruned, desc


# --- measuring --------------------------------------------------------------------------

def count_params(model):
    """(parameters, non-zeros) over all weights of ``model``."""
    import numpy as np
    params = nonzero = 0
    for w in model.weights:
        v = np.asarray(w.numpy() if hasattr(w, "numpy") else w)
        params += v.size
        nonzero += int(np.count_nonzero(v))
    return params, nonzero


def gzip_size(path):
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=9))


def tflite_latency_ms(path, runs, warmup=20):
    """Median wall time (ms) of one batch-1 invocation, one thread."""
    import numpy as np
    from keras_gap.export import runtime
    interpreter, _, _, _ = runtime.make_interpreter(os.fspath(path), num_threads=1)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [1] + list(detail["shape"][1:]))
    try:
        interpreter.allocate_tensors()
    except RuntimeError:  # default delegate refused the graph: built-in kernels
        interpreter, _, _, _ = runtime.make_interpreter(
            os.fspath(path), resolver="BUILTIN_WITHOUT_DEFAULT_DELEGATES", num_threads=1)
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], [1] + list(detail["shape"][1:]))
        interpreter.allocate_tensors()
    x = np.zeros([1] + list(detail["shape"][1:]), dtype=detail["dtype"])
    times = []
    for i in range(warmup + runs):
        interpreter.set_tensor(detail["index"], x)
        t = time.perf_counter()
        interpreter.invoke()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def tflite_accuracy(path, x, y):
    import numpy as np
    import keras_gap as kg
    out = kg.export.run_tflite(os.fspath(path), x)
    return float(np.mean(np.argmax(out.outputs, axis=-1) == y)), out.resolver


def export_and_measure(name, model, output_dir, x_test, y_test, x_cal, sparse, runs):
    """Exports float32 and int8 TFLite files; returns one result row per file."""
    import keras_gap as kg
    rows = []
    for quantize in (None, "int8"):
        suffix = "int8" if quantize else "float32"
        path = os.path.join(output_dir, f"{name}_{suffix}.tflite")
        kg.export.to_tflite(model, path, sparse=sparse, quantize=quantize,
                            representative_dataset=x_cal if quantize else None,
                            sample_inputs=x_test[:64] if not quantize else None)
        accuracy, resolver = tflite_accuracy(path, x_test, y_test)
        inspection = kg.export.inspect_tflite(path)
        rows.append({
            "file": os.path.basename(path),
            "dtype": suffix,
            "tflite_accuracy": accuracy,
            "resolver": resolver,
            "size_bytes": os.path.getsize(path),
            "gzip_bytes": gzip_size(path),
            "sparse_tensors": len(inspection.sparse_tensors),
            "weight_tensors": len(inspection.tensors),
            "latency_ms": tflite_latency_ms(path, runs),
        })
    return rows


# --- reporting ---------------------------------------------------------------------------

def markdown_table(results):
    header = ("model", "Keras acc", "TFLite file", "TFLite acc", "params", "non-zeros",
              "size (bytes)", "gzip (bytes)", "latency ms (batch 1)", "kernels")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in results["models"]:
        for r in m["tflite"]:
            lines.append("| " + " | ".join([
                m["label"], f"{m['keras_accuracy']:.4f}", f"{r['file']}",
                f"{r['tflite_accuracy']:.4f}", f"{m['params']:,}", f"{m['nonzero']:,}",
                f"{r['size_bytes']:,}", f"{r['gzip_bytes']:,}",
                f"{r['latency_ms']:.3f}",
                "XNNPACK" if r["resolver"] == "BUILTIN" else "built-in"]) + " |")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.5))
    for m in results["models"]:
        acc = m["history"].get("val_accuracy", [])
        ax1.plot(range(1, len(acc) + 1), acc, marker="o", label=f"{m['label']} (Keras, test)")
        for r in m["tflite"]:
            ax1.scatter([len(acc)], [r["tflite_accuracy"]], marker="x" if r["dtype"] == "int8"
                        else "+", s=80, label=f"{m['label']} TFLite {r['dtype']}")
    sparse = results["models"][-1]
    parts = sparse["history"].get("gap_partition")
    if parts:
        for epoch, p in enumerate(parts, start=1):
            ax1.axvspan(epoch - 0.5, epoch + 0.5, alpha=0.08 if p >= 0 else 0.0,
                        color=f"C{int(p) % 10 + 2}" if p >= 0 else "white")
            ax1.text(epoch, 0.02, f"P{int(p)}" if p >= 0 else "ft", ha="center",
                     transform=ax1.get_xaxis_transform(), fontsize=8)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy")
    ax1.set_title("Accuracy (shaded: grown GaP partition; ft: fine-tuning)")
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    ax1.grid(alpha=0.3)

    layers = [r["layer"] for r in sparse["layers"]]
    ax2.bar(layers, [r["sparsity"] for r in sparse["layers"]], color="C1")
    for i, r in enumerate(sparse["layers"]):
        ax2.text(i, r["sparsity"], f"{r['sparsity']:.1%}\n{r['params']:,}", ha="center",
                 va="bottom", fontsize=8)
    ax2.axhline(results["config"]["sparsity"], ls="--", color="gray", label="target")
    ax2.set_ylim(0, 1.15)
    ax2.set_ylabel("sparsity")
    ax2.set_title(f"Per-layer sparsity of the stripped {sparse['label']} model")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    t_start = time.time()
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # hide TFDS's INFO lines
    import keras
    import keras_gap as kg

    if not hasattr(kg, "export"):
        try:
            import keras_gap.export  # noqa: F401
        except ImportError as e:
            sys.exit(f"keras_gap.export is not available ({e}); the demo needs it for "
                     "the TFLite step.")
    if not 0.0 <= FLAGS.sparsity < 1.0:
        raise app.UsageError(f"--sparsity must be in [0, 1); got {FLAGS.sparsity}.")
    limit = FLAGS.limit if FLAGS.limit is not None else (2000 if FLAGS.fast else None)
    epochs = FLAGS.epochs or ((FLAGS.partitions + 1) if FLAGS.fast else DEFAULT_EPOCHS)
    if FLAGS.method != "gmp":
        gap_plan(epochs, FLAGS.partitions, FLAGS.rounds)  # check the flags before training
    output_dir = FLAGS.output_dir or tempfile.mkdtemp(prefix="keras_gap_demo_")
    os.makedirs(output_dir, exist_ok=True)
    latency_runs = 50 if FLAGS.fast else 500
    keras.utils.set_random_seed(FLAGS.seed)

    train, test, x_test, y_test, x_cal = make_data(limit, FLAGS.batch_size, FLAGS.seed)
    print(f"Fashion-MNIST: {int(train.cardinality())} batches of {FLAGS.batch_size} "
          f"for training, {len(y_test)} test images; budget {epochs} epochs per model.")

    results = {"config": {"epochs": epochs, "sparsity": FLAGS.sparsity,
                          "partitions": FLAGS.partitions, "method": FLAGS.method,
                          "limit": limit, "batch_size": FLAGS.batch_size,
                          "seed": FLAGS.seed, "keep_dense": FLAGS.keep_dense,
                          "backend": keras.backend.backend()},
               "models": []}

    # 1a. Dense baseline.
    print(f"\n=== 1/3 dense baseline: {epochs} epochs ===")
    dense = make_model()
    compile_model(dense)
    t = time.time()
    dense_hist = dense.fit(train, epochs=epochs, validation_data=test)
    dense_time = time.time() - t

    # 1b. Sparse model, same budget.
    print(f"\n=== 2/3 sparse model ({FLAGS.method}, {FLAGS.sparsity:.0%}): "
          f"{epochs} epochs ===")
    sparse_hist = {}
    t = time.time()
    pruned, desc = train_sparse(FLAGS.method, train, test, epochs, FLAGS.sparsity,
                                FLAGS.partitions, FLAGS.rounds, FLAGS.keep_dense,
                                sparse_hist)
    sparse_time = time.time() - t
    final = kg.strip_pruning(pruned)
    final.save(os.path.join(output_dir, f"{FLAGS.method}.keras"))  # plain Keras model
    compile_model(final)
    print(kg.sparsity_report(final))

    # 2. Export and check in the interpreter.
    print("\n=== 3/3 export to TFLite (float32, int8), interpreter accuracy, latency ===")
    label = {"cgap": "C-GaP", "pgap": "P-GaP", "gmp": "GMP"}[FLAGS.method]
    label = f"{label} {FLAGS.sparsity:.0%}"
    for name, model, lab, hist, seconds, sparse in (
            ("dense", dense, "dense", {k: [float(v) for v in vals] for k, vals in
                                      dense_hist.history.items()}, dense_time, False),
            (FLAGS.method, final, label, sparse_hist, sparse_time, True)):
        keras_acc = float(model.evaluate(test, verbose=0)[1])
        params, nonzero = count_params(model)
        report = kg.sparsity_report(model)
        if name == "dense":
            model.save(os.path.join(output_dir, "dense.keras"))
        rows = export_and_measure(name, model, output_dir, x_test, y_test, x_cal,
                                  sparse, latency_runs)
        results["models"].append({
            "name": name, "label": lab, "description": desc if sparse else "dense Adam",
            "keras_accuracy": keras_acc, "params": params, "nonzero": nonzero,
            "prunable_params": report.params, "prunable_nonzero": report.nonzero,
            "prunable_sparsity": report.sparsity, "train_seconds": seconds,
            "history": hist,
            "layers": [{"layer": r.layer, "params": r.params, "nonzero": r.nonzero,
                        "sparsity": r.sparsity} for r in report.rows],
            "tflite": rows})

    results["wall_seconds"] = time.time() - t_start
    table = markdown_table(results)
    sparse_m = results["models"][1]
    md = "\n".join([
        "# keras-gap demo: dense vs sparse on Fashion-MNIST", "",
        f"Command: `python examples/demo.py {' '.join(sys.argv[1:])}`".rstrip(), "",
        f"Sparse model: {sparse_m['description']}; prunable weights "
        f"{sparse_m['prunable_sparsity']:.2%} sparse. Both models: {epochs} epochs, "
        f"batch {FLAGS.batch_size}, Adam 1e-3, "
        f"{'full 60000' if limit is None else f'first {limit}'} training images, "
        f"{len(y_test)} test images. Backend {keras.backend.backend()}.", "",
        table, "",
        "Latency: median of one-thread batch-1 interpreter invocations on this machine "
        "(kernels: XNNPACK = default delegate; built-in = TFLite's own kernels, used "
        "where XNNPACK cannot run the model, e.g. int8 with DENSIFY ops). On x86 only "
        "Dense layers have sparse kernels; sparse convolution weights are densified at "
        "load time (smaller file, dense compute). Sizes: the .tflite file and its "
        "gzip -9 size. Non-zeros: all weights, biases included.",
        f"Training time: dense {dense_time:.0f} s, sparse {sparse_time:.0f} s; "
        f"whole run {results['wall_seconds']:.0f} s.", "",
        "![accuracy and per-layer sparsity](results.png)", ""])
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.join(output_dir, "results.png"))
    print("\n" + table + "\n")
    print(f"Whole run: {results['wall_seconds']:.0f} s.")
    print(f"Results (results.md, results.json, results.png, models): {output_dir}")


if __name__ == "__main__":
    app.run(main)
