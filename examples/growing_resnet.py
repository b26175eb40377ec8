"""Growing a small ResNet from a seed toward a FLOPs budget, then materializing it.

The search space is a ResNet-style CNN for Fashion-MNIST (stride-2 stem,
three stages of ``--blocks`` basic blocks with 16 / 32 / 64 filters, global
average pooling, 10 logits). ``kg.growing.add_gates`` puts a gate on every
channel group (coupled channels share one) and every residual block; training
starts from ``--seed_channels`` of the channels and one block per stage and
grows / prunes structures toward ``--budget`` of the space's inference MACs
(``kg.growing.GrowingCallback``: temperature schedule, budget-aware penalty,
cost logs). ``kg.growing.finalize`` folds the hard gates into the weights and
materializes a plain, smaller Keras model with the same outputs.

The dense space is trained for the same epochs for comparison. Both are
exported to TFLite float32 and timed with one thread at batch 1.

Run:
    python examples/growing_resnet.py
    python examples/growing_resnet.py --budget 0.25 --epochs 10
    python examples/growing_resnet.py --limit 512 --test_limit 256 --epochs 2   # smoke test
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The example's flags (defined only when it runs, so that benchmarks can import
    `build_space`)."""
    flags.DEFINE_float("budget", 0.5, "Target inference MACs, as a fraction of the space.")
    flags.DEFINE_float("seed_channels", 0.25, "Fraction of each layer's channels on at the start.")
    flags.DEFINE_integer("blocks", 2, "Residual blocks per stage in the space.")
    flags.DEFINE_integer("epochs", 6, "Training epochs (both models).")
    flags.DEFINE_float("final_temperature", 200.0, "Gate temperature at the end of training.")
    flags.DEFINE_float("learning_rate", 2e-3, "Peak Adam learning rate (cosine decay).")
    flags.DEFINE_integer("limit", 12000, "Use only the first N training images.")
    flags.DEFINE_integer("test_limit", None, "Use only the first N test images.")
    flags.DEFINE_integer("batch_size", 64, "Batch size.")
    flags.DEFINE_integer("latency_runs", 300, "Timed TFLite runs per model.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_string("output_dir", "out/growing_resnet", "Where models and results go.")


def build_space(widths=(16, 32, 64), blocks=2):
    """ResNet-style CNN for 28x28x1 uint8 images: the largest network allowed."""
    import keras
    L = keras.layers

    def conv(x, f, k, s, name):
        return L.Conv2D(f, k, strides=s, padding="same", use_bias=False,
                        kernel_initializer="he_normal", name=name)(x)

    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Rescaling(1 / 255.0, name="scale")(inputs)
    x = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(
        conv(x, widths[0], 3, 2, "stem_conv")))
    for i, f in enumerate(widths, start=1):
        for b in range(1, blocks + 1):
            stride = 2 if (i > 1 and b == 1) else 1
            name = f"s{i}b{b}"
            y = L.ReLU(name=f"{name}_relu1")(L.BatchNormalization(name=f"{name}_bn1")(
                conv(x, f, 3, stride, f"{name}_conv1")))
            y = L.BatchNormalization(name=f"{name}_bn2")(conv(y, f, 3, 1, f"{name}_conv2"))
            shortcut = x
            if stride != 1 or x.shape[-1] != f:
                shortcut = L.BatchNormalization(name=f"{name}_short_bn")(
                    conv(x, f, 1, stride, f"{name}_short"))
            x = L.ReLU(name=f"{name}_out")(L.Add(name=f"{name}_add")([shortcut, y]))
    x = L.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="resnet_space")


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
    steps = -(-len(x) // FLAGS.batch_size) * FLAGS.epochs

    def compile_(model):
        model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
            FLAGS.learning_rate, steps)),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"])

    keras.utils.set_random_seed(FLAGS.seed)
    dense = build_space(blocks=FLAGS.blocks)
    compile_(dense)
    dense.fit(x, y, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, verbose=2)

    keras.utils.set_random_seed(FLAGS.seed)
    space = build_space(blocks=FLAGS.blocks)
    gated = kg.growing.add_gates(space, seed_channels=FLAGS.seed_channels, seed_blocks=1,
                                 target=kg.growing.Budget(flops=FLAGS.budget),
                                 seed=FLAGS.seed)
    compile_(gated)
    history = gated.fit(x, y, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, verbose=2,
                        callbacks=[kg.growing.GrowingCallback(
                            final_temperature=FLAGS.final_temperature,
                            log_dir=os.path.join(FLAGS.output_dir, "logs"))])
    small = kg.growing.finalize(gated)
    diff = float(np.abs(gated.predict(xt[:256], verbose=0)
                        - small.predict(xt[:256], verbose=0)).max())
    print(f"max abs difference, finalized vs gated model: {diff:.2e}")
    print(kg.flops_report(small, reference=space))

    rows = []
    for name, model in (("dense space", dense), (f"grown ({FLAGS.budget:.0%} budget)", small)):
        stem = "dense" if model is dense else "grown"
        model.save(os.path.join(FLAGS.output_dir, stem + ".keras"))
        path = os.path.join(FLAGS.output_dir, stem + ".tflite")
        kg.export.to_tflite(model, path, sparse=False, sample_inputs=xt[:64])
        rows.append({
            "name": name,
            "test_accuracy": float((model.predict(xt, batch_size=500, verbose=0).argmax(-1)
                                    == yt).mean()),
            "params": model.count_params(), "macs": kg.flops_report(model).macs,
            "tflite_ms_batch1": kg.export.tflite_latency(
                path, xt[:1], runs=FLAGS.latency_runs)["median_ms"]})
    for r in rows:
        r["macs_ratio"] = r["macs"] / rows[0]["macs"]
        r["tflite_speedup"] = rows[0]["tflite_ms_batch1"] / r["tflite_ms_batch1"]
    rows[1]["train_macs_ratio"] = history.history["train_flops"][-1]
    rows[0]["train_macs_ratio"] = 1.0
    table = "\n".join(
        ["| model | test acc | params | MACs | MACs vs space | training MACs vs space "
         "| TFLite ms (batch 1, 1 thread) | speed-up |", "|---|---|---|---|---|---|---|---|"]
        + [f"| {r['name']} | {r['test_accuracy']:.4f} | {r['params']:,} | {r['macs']:,} "
           f"| {r['macs_ratio']:.2f} | {r['train_macs_ratio']:.2f} "
           f"| {r['tflite_ms_batch1']:.3f} | {r['tflite_speedup']:.2f}x |" for r in rows])
    print(table)
    with open(os.path.join(FLAGS.output_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
        json.dump({"models": rows, "finalize_max_abs_diff": diff,
                   "history": {k: [float(v) for v in vs]
                               for k, vs in history.history.items()},
                   "budget": FLAGS.budget, "training_images": len(x),
                   "test_images": len(xt), "epochs": FLAGS.epochs}, f, indent=2)
    print(f"output folder: {FLAGS.output_dir}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
