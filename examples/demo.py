"""The keras-gap demo: dense vs gradual pruning (GMP) vs GaP on real Fashion-MNIST.

Every model gets the same epoch budget, data and optimizer:

1. dense: the baseline.
2. GMP 90%: gradual magnitude pruning (tf-mot's ``prune_low_magnitude`` with
   ``PolynomialDecay``); it trains dense at first.
3. C-GaP 90%: scheduled grow-and-prune (``prune_gap`` + ``GaPCallback``): only
   one partition of the layers is ever dense, so training costs fewer MACs.
4. C-GaP 90%, TFLite blocks: the same with ``target="tflite"``: Dense kernels
   pruned in the (4, 1) blocks TFLite's sparse kernel runs natively, so the
   exported model runs faster, not only smaller.
5. C-GaP channels 50%, materialized: ``prune_gap(structure="channel")`` grows
   and prunes whole channels; ``kg.materialize`` then removes them, giving a
   smaller dense model that is faster everywhere (convolutions included).

Recipe (benchmarks/gap_vs_baselines.py): the first conv and the classifier stay
dense; sparsity is over the other layers. Each model is stripped, exported to
float32 and int8 TFLite (sparse weight encoding for the sparse ones) and
measured: accuracy (Keras and interpreter), training MACs relative to dense
(`kg.TrainingCost`), non-zeros, file sizes, batch-1 latency. Writes
``results.md``, ``results.json`` and ``results.png`` (accuracy vs training
MACs, one marker per model) to the output folder, whose path it prints.

Run:
    python examples/demo.py                  # the full demo (about 10 minutes on 2 cores)
    python examples/demo.py --limit 60000 --epochs 12 --restart fresh
    python examples/demo.py --fast           # tiny budget (CI smoke test)
    python examples/demo.py --verbose        # also show TensorFlow's and TFDS's logs
"""

import gzip
import json
import os
import sys
import tempfile
import time
import warnings

if "--verbose" not in sys.argv:  # before TensorFlow is imported (see keras_gap.console)
    os.environ.setdefault("KERAS_GAP_QUIET", "1")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", None, "Epoch budget of EACH model. Default: 9 "
                     "(--fast: partitions + 1).")
flags.DEFINE_float("sparsity", 0.9, "Target sparsity of the prunable weights, in [0, 1).")
flags.DEFINE_integer("partitions", 3, "GaP partitions (K).")
flags.DEFINE_enum("restart", "fresh", ["all", "fresh"],
                  "GaP's restart at each boundary: 'fresh' (the benchmark's best: a new "
                  "optimizer and a warmup + cosine learning rate restarted per GaP step, "
                  "kg.gap.StepLR with peak --step_lr_peak) or 'all' (GaPCallback's "
                  "default: slots zeroed, one cosine decay over the budget).")
flags.DEFINE_float("step_lr_peak", None, "--restart fresh: peak of each GaP step's "
                   "learning rate (default: 3 x --learning_rate).")
flags.DEFINE_float("channel_sparsity", 0.5, "Fraction of channels the channel C-GaP model "
                   "removes (model 5); 0 skips that model.")
flags.DEFINE_list("keep_dense", ["conv1", "logits"], "Layers kept dense by every method.")
flags.DEFINE_integer("limit", None, "Use only the first N training and N/5 test examples "
                     "(default: 30000 training images and the full test set; --fast: 2000).")
flags.DEFINE_bool("fast", False, "Tiny budget for CI: --limit 2000, epochs = partitions + 1, "
                  "fewer latency runs.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate (Adam) of every model.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's, TFLite's and TFDS's logs.")
flags.DEFINE_string("output_dir", None, "Output folder (default: a new temp folder).")

DEFAULT_EPOCHS = 9
DEFAULT_TRAIN_IMAGES = 30000


# --- data and model -------------------------------------------------------------------

def make_data(limit):
    """Fashion-MNIST as float32 arrays in 0..255: train, test and calibration images."""
    from keras_gap import datasets
    x, y = datasets.load_numpy("fashion_mnist", "train", limit=limit or DEFAULT_TRAIN_IMAGES)
    xt, yt = datasets.load_numpy("fashion_mnist", "test",
                                 limit=None if limit is None else max(limit // 5, 100))
    return (x.astype("float32"), y), (xt.astype("float32"), yt), x[:300].astype("float32")


def make_model():
    """Small CNN for 28x28x1 inputs in 0..255, with a Dense head (about 550k parameters)."""
    import keras
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Rescaling(1.0 / 255, name="rescale"),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(name="pool2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(512, activation="relu", name="fc1"),
        keras.layers.Dense(256, activation="relu", name="fc2"),
        keras.layers.Dense(10, name="logits"),
    ], name="cnn")


def gap_plan(epochs, partitions):
    """(rounds, finetune_epochs): one epoch per GaP step, ~3/4 of the budget for GaP."""
    if epochs < partitions + 1:
        raise app.UsageError(
            f"GaP with {partitions} partitions needs an epoch budget of at least "
            f"{partitions + 1} (one epoch per partition plus one fine-tuning epoch); "
            f"got --epochs {epochs}.")
    rounds = max(1, int(0.75 * epochs) // partitions)
    return rounds, epochs - rounds * partitions


def build(kind, epochs, steps_per_epoch):
    """(model to train, pruning callbacks, optimizer, description) for one kind."""
    import keras
    import keras_gap as kg
    total = epochs * steps_per_epoch
    cosine = keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(FLAGS.learning_rate, total))
    model = make_model()
    keep = set(FLAGS.keep_dense)
    if kind == "dense":
        return model, [], cosine, f"dense, Adam {FLAGS.learning_rate:g} with cosine decay"
    if kind == "gmp":
        schedule = kg.PolynomialDecay(0.0, FLAGS.sparsity, begin_step=0,
                                      end_step=max(1, int(0.75 * total)),
                                      frequency=max(1, steps_per_epoch // 4))
        pruned = kg.prune_low_magnitude(model, pruning_schedule=schedule,
                                        pruning_policy=lambda layer: layer.name not in keep)
        return (pruned, [kg.UpdatePruningStep()], cosine,
                f"GMP: PolynomialDecay 0 -> {FLAGS.sparsity:.0%} over 3/4 of the budget")
    rounds, finetune = gap_plan(epochs, FLAGS.partitions)
    if kind == "cgap_channels":
        pruned = kg.prune_gap(model, target_sparsity=FLAGS.channel_sparsity,
                              structure="channel", num_partitions=FLAGS.partitions,
                              epochs_per_step=1, rounds=rounds, finetune_epochs=finetune,
                              keep_dense=tuple(keep) or None, seed=FLAGS.seed)
        callback, optimizer, restart = gap_restart(cosine)
        return (pruned, [callback], optimizer,
                f"C-GaP on whole channels ({FLAGS.channel_sparsity:.0%} of the channels of "
                f"the prunable layers), {FLAGS.partitions} partitions x {rounds} round(s), "
                f"{finetune} fine-tuning epoch(s), restart {restart}, then kg.materialize")
    pruned = kg.prune_gap(model, target_sparsity=FLAGS.sparsity,
                          num_partitions=FLAGS.partitions, epochs_per_step=1, rounds=rounds,
                          finetune_epochs=finetune, keep_dense=tuple(keep) or None,
                          seed=FLAGS.seed, target="tflite" if kind == "cgap_tflite" else None)
    callback, optimizer, restart = gap_restart(cosine)
    desc = (f"C-GaP: {FLAGS.partitions} partitions x {rounds} round(s), 1 epoch per step, "
            f"{finetune} fine-tuning epoch(s), restart {restart}")
    if kind == "cgap_tflite":
        desc += "; Dense kernels in TFLite (4, 1) blocks"
    return pruned, [callback], optimizer, desc


def gap_restart(cosine):
    """(GaPCallback, optimizer, description) for --restart."""
    import keras
    import keras_gap as kg
    if FLAGS.restart == "fresh":
        peak = FLAGS.step_lr_peak or 3 * FLAGS.learning_rate
        callback = kg.GaPCallback(reset_optimizer="fresh", verbose=1,
                                  step_lr=kg.gap.StepLR(peak, warmup=0.1))
        return (callback, keras.optimizers.Adam(FLAGS.learning_rate),
                f"'fresh' with StepLR(peak={peak:g}, warmup=0.1) per GaP step")
    return kg.GaPCallback(reset_optimizer="all", verbose=1), cosine, "'all'"


def train(kind, data, epochs):
    """Trains one model; returns (stripped model, record)."""
    import keras
    import keras_gap as kg
    (x, y), _, _ = data
    keras.utils.set_random_seed(FLAGS.seed)
    steps_per_epoch = -(-len(x) // FLAGS.batch_size)
    model, callbacks, optimizer, desc = build(kind, epochs, steps_per_epoch)
    if kind.startswith("cgap"):
        assert kg.gap_total_epochs(model) == epochs, kg.gap_total_epochs(model)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    cost = kg.TrainingCost()
    start = time.time()
    history = model.fit(x, y, batch_size=FLAGS.batch_size, epochs=epochs,
                        callbacks=callbacks + [cost], verbose=2)
    seconds = time.time() - start
    final = kg.strip_pruning(model) if kind != "dense" else model
    if kind == "cgap_channels":
        final = kg.materialize(final)  # removed channels physically gone
    return final, {"description": desc, "train_seconds": seconds,
                   "train_macs_ratio": float(cost.relative),
                   "history": {k: [float(v) for v in vals]
                               for k, vals in history.history.items()}}


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


def export_and_measure(name, model, output_dir, data, sparse, runs):
    """Exports float32 and int8 TFLite files; returns {dtype: measurements}."""
    import numpy as np
    import keras_gap as kg
    _, (xt, yt), x_cal = data
    out = {}
    for quantize in (None, "int8"):
        dtype = "int8" if quantize else "float32"
        path = os.path.join(output_dir, f"{name}_{dtype}.tflite")
        kwargs = dict(sparse=sparse, quantize=quantize,
                      representative_dataset=x_cal if quantize else None,
                      sample_inputs=xt[:64] if not quantize else None)
        with warnings.catch_warnings():
            # The table shows both encodings' latencies; no need to warn as well.
            warnings.simplefilter("ignore", kg.export.SparseSlowerWarning)
            kg.export.to_tflite(model, path, **kwargs)
        # What optimize_for="latency" writes (the faster of the two encodings).
        fast = kg.export.to_tflite(model, path.replace(".tflite", "_fast.tflite"),
                                   optimize_for="latency", **kwargs)
        result = kg.export.run_tflite(path, xt)
        out[dtype] = {
            "file": os.path.basename(path),
            "tflite_accuracy": float(np.mean(np.argmax(result.outputs, -1) == yt)),
            "resolver": result.resolver,
            "size_bytes": os.path.getsize(path),
            "gzip_bytes": gzip_size(path),
            "sparse_tensors": len(kg.export.inspect_tflite(path).sparse_tensors),
            "latency_ms": kg.export.tflite_latency(path, runs=runs, warmup=20)["median_ms"],
            "latency_pick": fast.encoding,
            "latency_pick_ms": fast.latency_ms,  # {"sparse", "dense"} or None: not compared
        }
    return out


# --- reporting ---------------------------------------------------------------------------

def markdown_table(models):
    header = ("model", "test acc (Keras)", "TFLite acc (float32 / int8)",
              "training MACs vs dense", "non-zeros", "float32 file (gzip)",
              "int8 file (gzip)", "latency float32 ms", "latency int8 ms",
              "float32 speed-up", "optimize_for='latency' writes (float32 / int8)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    dense_ms = models[0]["tflite"]["float32"]["latency_ms"]
    for m in models:
        f, q = m["tflite"]["float32"], m["tflite"]["int8"]
        lines.append("| " + " | ".join([
            m["label"], f"{m['keras_accuracy']:.4f}",
            f"{f['tflite_accuracy']:.4f} / {q['tflite_accuracy']:.4f}",
            f"{m['train_macs_ratio']:.2f}x", f"{m['nonzero']:,} of {m['params']:,}",
            f"{f['size_bytes'] / 1024:.0f} KiB ({f['gzip_bytes'] / 1024:.0f})",
            f"{q['size_bytes'] / 1024:.0f} KiB ({q['gzip_bytes'] / 1024:.0f})",
            f"{f['latency_ms']:.3f}", f"{q['latency_ms']:.3f}",
            f"{dense_ms / f['latency_ms']:.2f}x",
            f"{_pick(f)} / {_pick(q)}"]) + " |")
    return "\n".join(lines)


def provenance():
    """Commit (when run from a git checkout), package versions and date of this run."""
    import datetime
    import importlib.metadata
    import subprocess

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=os.path.dirname(os.path.abspath(__file__)),
                                  capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for dist in ("keras", "keras-gap", "tensorflow", "jax", "torch"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "versions": versions, "argv": sys.argv[1:],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _pick(row):
    """'dense (0.12 vs 0.02 ms)': the encoding optimize_for='latency' wrote, with both times."""
    times = row["latency_pick_ms"]
    if times is None:
        return "dense (no sparse-encoded weights)"
    return (f"{row['latency_pick']} (sparse {times['sparse']:.3f}, "
            f"dense {times['dense']:.3f} ms)")


def plot(models, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 6))
    markers = ["o", "s", "D", "^", "v", "P"]
    for i, m in enumerate(models):
        ax.scatter(m["train_macs_ratio"], m["keras_accuracy"], s=90, marker=markers[i % 6],
                   color=f"C{i}", label=f"{m['label']}: {m['nonzero']:,} non-zeros, "
                   f"{m['tflite']['float32']['latency_ms']:.3f} ms")
    ax.set_xlabel("training MACs relative to dense training (same epochs)")
    ax.set_ylabel("test accuracy")
    ax.set_xlim(0, 1.1)
    lo = min(m["keras_accuracy"] for m in models)
    hi = max(m["keras_accuracy"] for m in models)
    pad = max(0.005, (hi - lo) * 0.4)
    ax.set_ylim(lo - pad, hi + pad)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13),
              title="model: non-zero weights, TFLite latency (float32, batch 1)",
              title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    t_start = time.time()
    load_at_start = os.getloadavg()
    import keras_gap as kg  # first: it reads KERAS_GAP_QUIET before TensorFlow is imported
    import keras
    from keras_gap import console
    console.quiet_third_party(FLAGS.verbose)

    if not 0.0 <= FLAGS.sparsity < 1.0:
        raise app.UsageError(f"--sparsity must be in [0, 1); got {FLAGS.sparsity}.")
    limit = FLAGS.limit if FLAGS.limit is not None else (2000 if FLAGS.fast else None)
    epochs = FLAGS.epochs or ((FLAGS.partitions + 1) if FLAGS.fast else DEFAULT_EPOCHS)
    gap_plan(epochs, FLAGS.partitions)  # check the flags before training
    output_dir = FLAGS.output_dir or tempfile.mkdtemp(prefix="keras_gap_demo_")
    os.makedirs(output_dir, exist_ok=True)
    latency_runs = 50 if FLAGS.fast else 500

    data = make_data(limit)
    n_train, n_test = len(data[0][1]), len(data[1][1])
    print(f"Fashion-MNIST: {n_train} training and {n_test} test images; "
          f"budget {epochs} epochs per model.")

    pct = f"{FLAGS.sparsity:.0%}"
    kinds = [("dense", "dense"), ("gmp", f"GMP {pct}"), ("cgap", f"C-GaP {pct}"),
             ("cgap_tflite", f"C-GaP {pct}, TFLite blocks")]
    if FLAGS.channel_sparsity > 0:
        kinds.append(("cgap_channels",
                      f"C-GaP channels {FLAGS.channel_sparsity:.0%}, materialized"))
    models = []
    for i, (kind, label) in enumerate(kinds, start=1):
        print(f"\n=== {i}/{len(kinds)} {label}: {epochs} epochs ===", flush=True)
        final, record = train(kind, data, epochs)
        final.save(os.path.join(output_dir, f"{kind}.keras"))  # plain Keras model
        _, (xt, yt), _ = data
        keras_acc = float((final.predict(xt, batch_size=512, verbose=0).argmax(-1)
                           == yt).mean())
        params, nonzero = count_params(final)
        report = kg.sparsity_report(final)
        print(f"{label}: test accuracy {keras_acc:.4f}, training MACs "
              f"{record['train_macs_ratio']:.2f}x dense; exporting to TFLite ...", flush=True)
        record.update({
            "name": kind, "label": label, "keras_accuracy": keras_acc, "params": params,
            "nonzero": nonzero, "prunable_sparsity": report.sparsity,
            "layers": [{"layer": r.layer, "params": r.params, "nonzero": r.nonzero,
                        "sparsity": r.sparsity} for r in report.rows],
            "tflite": export_and_measure(kind, final, output_dir, data,
                                         kind not in ("dense", "cgap_channels"),
                                         latency_runs)})
        models.append(record)

    wall = time.time() - t_start
    table = markdown_table(models)
    results = {"config": {"epochs": epochs, "sparsity": FLAGS.sparsity,
                          "partitions": FLAGS.partitions, "restart": FLAGS.restart,
                          "keep_dense": FLAGS.keep_dense, "limit": limit,
                          "batch_size": FLAGS.batch_size,
                          "learning_rate": FLAGS.learning_rate, "seed": FLAGS.seed,
                          "backend": keras.backend.backend()},
               "models": models, "wall_seconds": wall, "provenance": provenance()}
    title = (f"Fashion-MNIST, {epochs} epochs per model; kept dense: "
             f"{', '.join(FLAGS.keep_dense) or 'none'}")
    md = "\n".join([
        "# keras-gap demo: dense vs GMP vs C-GaP on Fashion-MNIST", "",
        f"Command: `python examples/demo.py {' '.join(sys.argv[1:])}`".rstrip(), "",
        f"Every model: {epochs} epochs, batch {FLAGS.batch_size}, Adam (peak "
        f"{FLAGS.learning_rate:g}), {n_train} training images, {n_test} test images, "
        f"backend {keras.backend.backend()}. Layers kept dense by every method: "
        f"{', '.join(FLAGS.keep_dense) or 'none'}. Machine: {os.cpu_count()} cores, load "
        f"average {load_at_start[0]:.1f} at the start (other jobs share the machine when it "
        "exceeds the core count).", ""]
        + [f"- {m['label']}: {m['description']}; "
           + (f"{m['params']:,} parameters left ({m['params'] / models[0]['params']:.0%} "
              "of dense)" if m["name"] == "cgap_channels" else
              f"prunable weights {m['prunable_sparsity']:.2%} sparse")
           + f"; trained in {m['train_seconds']:.0f} s." for m in models]
        + ["", table, "",
           "Training MACs: forward+backward MACs spent over the whole fit relative to "
           "training the dense model for the same steps (`kg.TrainingCost`; a pruned "
           "weight costs its mask density at every step, so GMP pays for its dense start "
           "and GaP for its one dense partition). Non-zeros: all weights, biases included. "
           "Sizes: the .tflite file (sparse weight encoding for the pruned models) and its "
           "gzip -9 size. Latency: median of one-thread batch-1 interpreter invocations on "
           "this machine, which other jobs may share: compare within this table. On x86 "
           "only Dense layers have sparse kernels, and only in TFLite's (4, 1) float "
           "blocks run fast: unstructured sparse weights are densified at load time "
           "(smaller file, dense compute): the faster models are the one in TFLite "
           "blocks and the materialized channel-pruned one (fewer channels, dense "
           "kernels everywhere).",
           f"Whole run: {wall:.0f} s.", "",
           "![accuracy vs training MACs](results.png)", ""])
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(models, os.path.join(output_dir, "results.png"), title)
    print("\n" + table + "\n")
    print(f"Whole run: {wall:.0f} s.")
    print(f"Results (results.md, results.json, results.png, models): {output_dir}")


if __name__ == "__main__":
    app.run(main)
