"""Channel GaP on a small ResNet: half the channels, a smaller model that runs faster.

A ResNet-style CNN for Fashion-MNIST (stride-2 stem, three stages of one
basic block with 24 / 48 / 96 filters, global average pooling, 10 logits) is
trained twice with the same data and epochs:

* dense;
* channel C-GaP (``kg.prune_gap(..., structure="channel")``): whole output
  channels are pruned, coupled channels (a residual ``Add``, the
  BatchNormalization after a conv) are grown and pruned back together, to
  ``--sparsity`` of the channels of every removable group.

The pruned model is stripped and materialized (``kg.materialize``): a plain
Keras model with fewer channels and the same outputs. Both are exported to
TFLite float32 and timed with one interpreter thread at batch 1. The script
prints the materialize report, ``kg.flops_report`` of the small model against
the dense one, and a table of accuracy / params / MACs / training MACs /
latency, and writes ``results.md`` and ``results.json`` with the models.

Speed: the default run (12,000 training images, 6 epochs per model, about
2,300 training steps in all) takes several minutes on a 2-core CPU; ``--limit 512 --test_limit 256 --epochs_per_step 1
--finetune_epochs 1`` is a smoke test.

Run:
    python examples/structured_resnet.py
    python examples/structured_resnet.py --sparsity 0.75 --rounds 2
    python examples/structured_resnet.py --limit 512 --test_limit 256 --finetune_epochs 1
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The example's flags (defined only when it runs, so that benchmarks can import
    `build_model`)."""
    flags.DEFINE_float("sparsity", 0.5, "Fraction of the channels removed, in [0, 1).")
    flags.DEFINE_integer("partitions", 2, "Number of GaP partitions (K).")
    flags.DEFINE_integer("rounds", 1, "How many times every partition is grown.")
    flags.DEFINE_integer("epochs_per_step", 2, "Epochs a partition stays grown.")
    flags.DEFINE_integer("finetune_epochs", 2, "Epochs of the final fine-tuning phase.")
    flags.DEFINE_float("learning_rate", 2e-3, "Peak Adam learning rate (cosine decay).")
    flags.DEFINE_integer("limit", 12000, "Use only the first N training images.")
    flags.DEFINE_integer("test_limit", None, "Use only the first N test images.")
    flags.DEFINE_integer("batch_size", 64, "Batch size.")
    flags.DEFINE_integer("latency_runs", 300, "Timed TFLite runs per model.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_string("output_dir", "out/structured_resnet", "Where models and results go.")


def build_model(filters=(24, 48, 96)):
    """ResNet-style CNN for 28x28x1 uint8 images (one basic block per stage)."""
    import keras
    L = keras.layers

    def conv(x, f, k, s, name):
        return L.Conv2D(f, k, strides=s, padding="same", use_bias=False,
                        kernel_initializer="he_normal", name=name)(x)

    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Rescaling(1 / 255.0, name="scale")(inputs)
    x = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(
        conv(x, filters[0], 3, 2, "stem_conv")))
    for i, f in enumerate(filters, start=1):
        stride = 1 if i == 1 else 2
        y = L.ReLU(name=f"s{i}_relu1")(L.BatchNormalization(name=f"s{i}_bn1")(
            conv(x, f, 3, stride, f"s{i}_conv1")))
        y = L.BatchNormalization(name=f"s{i}_bn2")(conv(y, f, 3, 1, f"s{i}_conv2"))
        shortcut = x
        if stride != 1 or x.shape[-1] != f:
            shortcut = L.BatchNormalization(name=f"s{i}_short_bn")(
                conv(x, f, 1, stride, f"s{i}_short"))
        x = L.ReLU(name=f"s{i}_out")(L.Add(name=f"s{i}_add")([y, shortcut]))
    x = L.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="resnet_fmnist")


def main(argv):
    del argv
    import keras
    import numpy as np

    import keras_gap as kg
    from keras_gap import console
    console.quiet_third_party()

    x, y = kg.datasets.load_numpy("fashion_mnist", "train", limit=FLAGS.limit)
    xt, yt = kg.datasets.load_numpy("fashion_mnist", "test", limit=FLAGS.test_limit)
    x, xt = x.astype("float32"), xt.astype("float32")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    epochs = FLAGS.partitions * FLAGS.rounds * FLAGS.epochs_per_step + FLAGS.finetune_epochs
    steps = -(-len(x) // FLAGS.batch_size) * epochs
    print(f"{len(x):,} training images, {len(xt):,} test images; {epochs} epochs per model")

    def train(model, callbacks):
        cost = kg.TrainingCost()
        model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
            FLAGS.learning_rate, steps)),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=FLAGS.batch_size, epochs=epochs, verbose=2,
                  callbacks=callbacks + [cost])
        return cost.relative

    keras.utils.set_random_seed(FLAGS.seed)
    dense = build_model()
    dense_cost = train(dense, [])

    keras.utils.set_random_seed(FLAGS.seed)
    pruned = kg.prune_gap(
        build_model(), target_sparsity=FLAGS.sparsity, structure="channel",
        num_partitions=FLAGS.partitions, rounds=FLAGS.rounds,
        epochs_per_step=FLAGS.epochs_per_step, finetune_epochs=FLAGS.finetune_epochs,
        seed=FLAGS.seed)
    gap_cost = train(pruned, [kg.GaPCallback(verbose=1)])

    stripped = kg.strip_pruning(pruned)
    small, report = kg.materialize(stripped, return_report=True)
    print(report)
    diff = float(np.abs(stripped.predict(xt[:256], verbose=0)
                        - small.predict(xt[:256], verbose=0)).max())
    print(f"max abs difference, materialized vs stripped model: {diff:.2e}")
    flops = kg.flops_report(small, reference=dense)
    print(flops)

    rows = []
    for name, model, cost in (("dense", dense, dense_cost),
                              (f"channel C-GaP {FLAGS.sparsity:.0%}", small, gap_cost)):
        stem = "dense" if model is dense else "cgap_materialized"
        model.save(os.path.join(FLAGS.output_dir, stem + ".keras"))
        path = os.path.join(FLAGS.output_dir, stem + ".tflite")
        export = kg.export.to_tflite(model, path, sparse=False, sample_inputs=xt[:64])
        report_m = kg.flops_report(model)
        rows.append({
            "name": name, "file": stem,
            "test_accuracy": float((model.predict(xt, batch_size=500, verbose=0).argmax(-1)
                                    == yt).mean()),
            "params": model.count_params(), "macs": report_m.macs,
            "train_macs_ratio": cost, "tflite_bytes": export.size,
            "tflite_max_abs_diff": export.max_abs_diff,
            "tflite_ms_batch1": kg.export.tflite_latency(
                path, xt[:1], runs=FLAGS.latency_runs)["median_ms"]})
    dense_row, small_row = rows
    for r in rows:
        r["macs_reduction"] = dense_row["macs"] / r["macs"]
        r["tflite_speedup"] = dense_row["tflite_ms_batch1"] / r["tflite_ms_batch1"]
    header = ("| model | test acc | params | MACs | MAC reduction | training MACs vs dense "
              "| TFLite KB | TFLite ms (batch 1, 1 thread) | speed-up |\n"
              "|---|---|---|---|---|---|---|---|---|")
    lines = [header] + [
        f"| {r['name']} | {r['test_accuracy']:.4f} | {r['params']:,} | {r['macs']:,} "
        f"| {r['macs_reduction']:.2f}x | {r['train_macs_ratio']:.2f} "
        f"| {r['tflite_bytes'] / 1024:.0f} | {r['tflite_ms_batch1']:.3f} "
        f"| {r['tflite_speedup']:.2f}x |" for r in rows]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(FLAGS.output_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
        json.dump({"models": rows, "materialize_max_abs_diff": diff,
                   "channels_removed": report.removed, "sparsity": FLAGS.sparsity,
                   "training_images": len(x), "test_images": len(xt), "epochs": epochs},
                  f, indent=2)
    print(f"output folder: {FLAGS.output_dir}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
