"""Channel pruning that runs faster: dense vs channel GMP vs channel C-GaP.

One run, same data and budget for every method: a ResNet-style CNN on
Fashion-MNIST (stride-2 stem, three stages of one basic block each with
24 / 48 / 96 filters, global average pooling, 10 logits), trained with Adam
and a cosine learning rate for the same number of steps by

* ``dense``;
* ``gmp``: ``kg.prune_low_magnitude(structure="channel",
  pruning_schedule=kg.PolynomialDecay(0, s, 0, 60% of the steps))``, then
  fine-tuning at ``s``;
* ``cgap``: ``kg.prune_gap(structure="channel", target_sparsity=s,
  num_partitions=2, rounds=2)`` over 60% of the steps, then fine-tuning;

at s = 50% and 75% of the channels of every removable group, 3 seeds. Each
pruned model is stripped and materialized (``kg.materialize``) into a smaller
dense model; the table reports test accuracy (of the materialized model),
validation accuracy (images held out from the training set; no choice here
was made on the test set), parameters, MACs (``kg.flops_report``), training
MACs relative to dense training (``kg.TrainingCost``), and the latency of the
materialized model vs the dense one: Keras ``predict_on_batch`` on the CPU at
batch 1 and 64, and TFLite float32 with one thread at batch 1.

Goals (issue 9): the TFLite speed-up is at least 0.75x the MAC reduction;
at 50% of the channels the accuracy is within 1 point of dense.

CPU budget: the default run trains 15 models on a subset of the training
images (``--train_images``, ``--epochs``) to stay under ~25 minutes on two
shared cores. ``--quick`` is the smoke-test form (one seed, a few steps).

Usage:
    KERAS_BACKEND=tensorflow python benchmarks/structured.py
    python benchmarks/structured.py --quick --output_dir /tmp/structured

Writes benchmarks/results/structured.{json,md}.
"""

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

import _common  # noqa: E402
from _machine import machine_info  # noqa: E402
from _models import (PRUNE_FRACTION, accuracy, channel_pruned, fashion_splits,  # noqa: E402
                     summarize_channel_runs)
from _timing import latency_set  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from structured_resnet import build_model  # noqa: E402  (the example's ResNet)

FLAGS = flags.FLAGS
_common.define_fashion_training_flags(
    "smoke test: one seed, 256 images, one epoch of 8 steps (flags given on the command "
    "line override these sizes)")
flags.DEFINE_list("sparsities", ["0.5", "0.75"], "fractions of channels removed")
flags.DEFINE_list("methods", ["gmp", "cgap"], "pruning methods (dense always runs)")


def train_one(method, sparsity, seed, data):
    import keras

    import keras_gap as kg

    (x, y), (xv, yv), (xt, yt) = data
    _common.set_seed(seed)  # initializers and fit's shuffling
    steps_per_epoch = -(-len(x) // FLAGS.batch_size)
    total = steps_per_epoch * FLAGS.epochs
    model, callbacks = channel_pruned(build_model(), method, sparsity, total, seed)
    cost = kg.TrainingCost()
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        FLAGS.learning_rate, total)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, verbose=0,
              shuffle=True, callbacks=callbacks + [cost])
    seconds = time.perf_counter() - t0
    final = model
    report = None
    if method != "dense":
        final, report = kg.materialize(kg.strip_pruning(model), return_report=True)
    row = {"method": method, "sparsity": sparsity, "seed": seed,
           "test_accuracy": accuracy(final, xt, yt), "val_accuracy": accuracy(final, xv, yv),
           "params": final.count_params(), "macs": kg.flops_report(final).macs,
           "train_macs_ratio": cost.relative, "train_seconds": round(seconds, 1),
           "channels_removed": (int(sum(report.removed.values())) if report else 0),
           "weights": _common.weights_fingerprint(final)}
    return row, final


def markdown(result):
    m = result["machine"]
    cfg = result["config"]
    lines = [
        "# Channel pruning: dense vs channel GMP vs channel C-GaP (materialized)", "",
        f"{result['date']}, {m['cpu']} ({m['logical_cores']} logical cores, load average "
        f"at start {m['load_average_at_start']}), Keras {result['keras']}, backend "
        f"{result['backend']}. ResNet-style CNN (24/48/96 filters) on Fashion-MNIST: "
        f"{cfg['train_images']:,} training images, {cfg['val_images']:,} validation images "
        f"held out from the training split, {cfg['test_images']:,} test images; "
        f"{cfg['epochs']} epochs at batch {cfg['batch_size']} for every method, "
        f"{cfg['seeds']} seed(s); pruning over the first {PRUNE_FRACTION:.0%} of the steps, "
        "then fine-tuning. Accuracy is the materialized model's; latency is the median "
        f"of {cfg['latency_runs']} runs (seed {cfg.get('first_seed', 0)}'s model), "
        "speed-up = dense ms / model ms. "
        f"Total wall time {result['wall_minutes']:.1f} min on a shared machine.", "",
        _common.provenance_line(result.get("provenance")), "",
        "| method | channels removed | test acc (mean ± std) | vs dense | val acc | params "
        "| MACs | MAC reduction | train MACs vs dense | Keras b1 speed-up "
        "| Keras b64 speed-up | TFLite b1 speed-up | TFLite speed-up / MAC reduction |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["summary"]:
        lat = e.get("latency")
        lines.append(
            f"| {e['method']} | {e['sparsity']:.0%} | {e['test_accuracy_mean']:.4f} ± "
            f"{e['test_accuracy_std']:.4f} | {e['accuracy_vs_dense'] * 100:+.2f} pts "
            f"| {e['val_accuracy_mean']:.4f} | {e['params']:,} | {e['macs'] / 1e6:.2f}M "
            f"| {e['macs_reduction']:.2f}x | {e['train_macs_ratio']:.2f} "
            + (f"| {e['keras_b1_speedup']:.2f}x ({lat['keras_b1']['median_ms']:.2f} ms) "
               f"| {e['keras_b64_speedup']:.2f}x ({lat['keras_b64']['median_ms']:.2f} ms) "
               f"| {e['tflite_b1_speedup']:.2f}x ({lat['tflite_b1']['median_ms']:.3f} ms) "
               f"| {e['tflite_speedup_over_mac_reduction']:.2f} |" if lat else "| | | | |"))
    lines += ["", "Goals: TFLite speed-up / MAC reduction >= 0.75; at 50% of the channels "
              "the test accuracy within 1 point of dense."]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    import keras

    import keras_gap as kg
    from keras_gap import console
    console.quiet_third_party()

    if FLAGS.quick:  # batch 32: 8 steps, room for the GaP steps and fine-tuning
        _common.apply_quick({"seeds": 1, "train_images": 256, "val_images": 128,
                             "test_images": 256, "epochs": 1, "latency_runs": 10,
                             "batch_size": 32})
    start = time.perf_counter()
    prov = _common.provenance()
    data = fashion_splits(FLAGS.train_images, FLAGS.val_images, FLAGS.test_images)
    xt = data[2][0]
    configs = [("dense", 0.0)] + [(m, float(s)) for s in FLAGS.sparsities
                                  for m in FLAGS.methods]
    rows, lat = [], {}
    x1, x64 = xt[:1].astype("float32"), xt[:64].astype("float32")
    with tempfile.TemporaryDirectory(prefix="kg_structured_") as workdir:
        for method, s in configs:
            for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
                row, final = train_one(method, s, seed, data)
                rows.append(row)
                print(f"{method:5s} {s:.2f} seed {seed}: test {row['test_accuracy']:.4f} "
                      f"val {row['val_accuracy']:.4f} params {row['params']:,} MACs "
                      f"{row['macs']:,} train MACs {row['train_macs_ratio']:.2f}x "
                      f"({row['train_seconds']} s)", flush=True)
                if seed == FLAGS.first_seed:
                    lat[f"{method}_{s}"] = latency_set(final, x1, x64, workdir, f"{method}_{s}",
                                                       FLAGS.latency_runs)
                keras.backend.clear_session()
    result = {"date": prov["date"], "provenance": prov,
              "machine": machine_info(), "keras": keras.__version__,
              "backend": keras.backend.backend(), "keras_gap": kg.__version__,
              "config": {"train_images": FLAGS.train_images, "val_images": FLAGS.val_images,
                         "test_images": len(xt), "epochs": FLAGS.epochs,
                         "batch_size": FLAGS.batch_size, "seeds": FLAGS.seeds,
                         "learning_rate": FLAGS.learning_rate,
                         "first_seed": FLAGS.first_seed, "latency_runs": FLAGS.latency_runs,
                         "quick": FLAGS.quick},
              "rows": rows, "summary": summarize_channel_runs(rows, lat),
              "wall_minutes": (time.perf_counter() - start) / 60}
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "structured.json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
    with open(os.path.join(FLAGS.output_dir, "structured.md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    app.run(main)
