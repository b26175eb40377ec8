"""Prune for TFLite, strip, export float32 and int8, inspect, run in the interpreter.

1. Trains a small model on Fashion-MNIST with tf-mot-style gradual magnitude
   pruning (``kg.prune_low_magnitude(..., target="tflite")`` +
   ``kg.UpdatePruningStep``): Dense kernels are pruned in the (4, 1) blocks
   that TFLite's sparse FULLY_CONNECTED kernel runs natively (``--target
   tflite_int8``: (16, 1) blocks, the int8 kernel's), other layers
   unstructured. Or, with ``--model``, loads a ``.keras`` file instead (pruned
   or stripped, e.g. one written by examples/gap_fashion_mnist.py or demo.py).
2. Strips the wrappers (``kg.strip_pruning``) and saves the plain model.
3. Exports with ``kg.export.to_tflite``: float32 with TFLite's sparse weight
   encoding (verified against Keras on ``sample_inputs``), the same float32
   model without sparse encoding (for the size comparison), and full-integer
   int8 calibrated on ``representative_dataset`` (training images).
4. Prints ``kg.export.inspect_tflite`` for each file (which tensors are
   sparse-encoded, how, and which ops read them), runs each file on the test
   set with ``kg.export.run_tflite`` and prints the interpreter's accuracy next
   to the Keras model's, with file sizes (plain and gzip). Also writes
   ``results.json``.

Run:
    python examples/export_tflite.py
    python examples/export_tflite.py --arch cnn --sparsity 0.8 --epochs 4
    python examples/export_tflite.py --target tflite_int8 --sparsity 0.75
    python examples/export_tflite.py --model out/gap_fashion_mnist/gap_fashion_mnist.keras
    python examples/export_tflite.py --limit 1000 --test_limit 500 --epochs 1
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Third-party logs (TensorFlow C++, TFLite converter, TFDS) are hidden unless --verbose:
# keras_gap reads KERAS_GAP_QUIET when it is imported, before TensorFlow loads.
os.environ["KERAS_GAP_QUIET"] = ("0" if "--verbose" in sys.argv[1:]
                                 else os.environ.get("KERAS_GAP_QUIET", "1"))

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A .keras file to export instead of training one "
                    "(Fashion-MNIST classifier with 10 logits or probabilities).")
flags.DEFINE_enum("pixels", "auto", ["auto", "unit", "raw"],
                  "Input scale of --model: unit = 0..1, raw = 0..255; auto: raw when "
                  "the model has a Rescaling layer (demo.py, quickstart.py), else unit.")
flags.DEFINE_enum("arch", "mlp", ["mlp", "cnn"], "Model trained when --model is not given.")
flags.DEFINE_float("sparsity", 0.9, "Final sparsity of the pruned layers, in [0, 1).")
flags.DEFINE_enum("target", "tflite", ["tflite", "tflite_int8"],
                  "Block structure of Dense kernels: (4, 1) float32 or (16, 1) int8.")
flags.DEFINE_integer("epochs", 3, "Training epochs (pruning ends after 2/3 of them).")
flags.DEFINE_integer("limit", None, "Use only the first N training images.")
flags.DEFINE_integer("test_limit", None, "Use only the first N test images.")
flags.DEFINE_integer("calibration", 300, "Training images used to calibrate int8.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("output_dir", "out/export_tflite", "Where the models go.")
flags.DEFINE_bool("verbose", False, "Show TensorFlow, TFLite and TFDS logs (hidden by default).")


def build_model(arch):
    """Fashion-MNIST classifier on [28, 28, 1] inputs in 0..1; logits out."""
    import keras
    L = keras.layers
    if arch == "mlp":
        body = [L.Flatten(name="flatten"),
                L.Dense(256, activation="relu", name="fc1"),
                L.Dense(128, activation="relu", name="fc2")]
    else:
        body = [L.Conv2D(16, 3, activation="relu", name="conv1"),
                L.MaxPooling2D(name="pool1"),
                L.Conv2D(32, 3, activation="relu", name="conv2"),
                L.MaxPooling2D(name="pool2"),
                L.Flatten(name="flatten"),
                L.Dense(128, activation="relu", name="fc1")]
    return keras.Sequential([keras.Input((28, 28, 1)), *body, L.Dense(10, name="logits")],
                            name=f"fashion_{arch}")


def train_pruned(x, y):
    """Gradual magnitude pruning to --sparsity; returns the stripped model."""
    import keras
    import keras_gap as kg

    steps = -(-len(x) // FLAGS.batch_size)
    total = FLAGS.epochs * steps
    frequency = max(1, steps // 4)
    # Reach the target after about 2/3 of training, on a step the schedule prunes at.
    end_step = frequency * max(1, (2 * total // 3) // frequency)
    schedule = kg.PolynomialDecay(0.0, FLAGS.sparsity, begin_step=0, end_step=end_step,
                                  frequency=frequency)
    pruned = kg.prune_low_magnitude(
        build_model(FLAGS.arch), pruning_schedule=schedule, target=FLAGS.target,
        pruning_policy=lambda layer: layer.name != "logits")  # classifier stays dense
    pruned.compile(keras.optimizers.Adam(1e-3),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    print(f"training {pruned.name}: {FLAGS.epochs} epochs of {steps} steps, "
          f"sparsity 0 -> {FLAGS.sparsity} by step {end_step} (every {frequency} steps), "
          f"target={FLAGS.target!r}")
    pruned.fit(x, y, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, verbose=2,
               callbacks=[kg.UpdatePruningStep()])
    return kg.strip_pruning(pruned)


def load_model(path):
    """A .keras file (pruned models are stripped) and the pixel scale it expects."""
    import keras
    import keras_gap as kg
    model = kg.strip_pruning(keras.saving.load_model(path, compile=False))  # no-op if plain

    def layers(m):
        for layer in m.layers:
            yield layer
            if isinstance(layer, keras.Model):
                yield from layers(layer)

    scale = FLAGS.pixels
    if scale == "auto":
        has_rescaling = any(isinstance(l, keras.layers.Rescaling) for l in layers(model))
        scale = "raw" if has_rescaling else "unit"
    print(f"loaded {path}: {model.name}, inputs {model.input_shape}, pixels {scale}")
    return model, (255.0 if scale == "raw" else 1.0)


def accuracy(logits, y):
    import numpy as np
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def run_interpreter(path, x, chunk=1000):
    """Interpreter outputs on the whole test set (in chunks) and the resolver used."""
    import numpy as np
    import keras_gap as kg
    outs, resolver = [], None
    for i in range(0, len(x), chunk):
        result = kg.export.run_tflite(path, x[i:i + chunk])
        outs.append(result.outputs)
        resolver = result.resolver
    return np.concatenate(outs), resolver


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # hide the converter's INFO lines
    import gzip
    import math

    import keras_gap as kg  # first: see KERAS_GAP_QUIET above
    import keras
    import numpy as np

    keras.utils.set_random_seed(FLAGS.seed)
    x, y = kg.datasets.load_numpy("fashion_mnist", "train", limit=FLAGS.limit)
    xt, yt = kg.datasets.load_numpy("fashion_mnist", "test", limit=FLAGS.test_limit)
    if FLAGS.model:
        final, scale = load_model(FLAGS.model)
    else:
        final, scale = None, 1.0
    shape = (28, 28, 1) if final is None else tuple(final.input_shape[1:])
    if None in shape or math.prod(shape) != 28 * 28:
        raise app.UsageError(f"--model {FLAGS.model} takes inputs of shape {shape}; this "
                             "script feeds Fashion-MNIST images (28x28 = 784 values).")
    x = (x.astype(np.float32) * (scale / 255.0)).reshape((-1, *shape))
    xt = (xt.astype(np.float32) * (scale / 255.0)).reshape((-1, *shape))
    if final is None:
        final = train_pruned(x, y)

    os.makedirs(FLAGS.output_dir, exist_ok=True)
    keras_path = os.path.join(FLAGS.output_dir, "model.keras")
    final.save(keras_path)
    print(kg.sparsity_report(final))
    keras_logits = final.predict(xt, batch_size=512, verbose=0)
    keras_acc = accuracy(keras_logits, yt)

    calibration = x[:FLAGS.calibration]
    exports = {
        # name: (file, to_tflite keyword arguments)
        "float32": ("model_float32.tflite", dict(sample_inputs=xt[:64])),
        "float32 (no sparse encoding)": ("model_float32_dense.tflite",
                                         dict(sparse=False, sample_inputs=xt[:64])),
        "int8": ("model_int8.tflite", dict(quantize="int8",
                                           representative_dataset=calibration,
                                           sample_inputs=xt[:64])),
    }
    rows = [dict(format="keras (.keras file)", file=keras_path,
                 size_bytes=os.path.getsize(keras_path), accuracy=keras_acc, agreement=1.0,
                 resolver="-")]
    for name, (filename, kwargs) in exports.items():
        path = os.path.join(FLAGS.output_dir, filename)
        export = kg.export.to_tflite(final, path, **kwargs)
        print(f"\n== {name}: {export.path} ({export.size:,} bytes), verified against "
              f"Keras on {len(xt[:64])} images: max |diff| {export.max_abs_diff:.3g}, "
              f"top-1 agreement {export.top1_agreement:.3f}")
        print(kg.export.inspect_tflite(path))
        logits, resolver = run_interpreter(path, xt)
        rows.append(dict(format=f"tflite {name}", file=path, size_bytes=export.size,
                         accuracy=accuracy(logits, yt), resolver=resolver,
                         agreement=float(np.mean(np.argmax(logits, -1)
                                                 == np.argmax(keras_logits, -1)))))
    for row in rows:
        with open(row["file"], "rb") as f:
            row["gzip_bytes"] = len(gzip.compress(f.read(), 9))

    report = kg.sparsity_report(final)
    print(f"\nKeras model {final.name}: sparsity {report.sparsity:.2%} of the prunable "
          f"weights; {len(xt)} Fashion-MNIST test images")
    header = f"{'format':<36} {'bytes':>10} {'gzip':>10} {'accuracy':>9} {'agree':>6}  resolver"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['format']:<36} {r['size_bytes']:>10,} {r['gzip_bytes']:>10,} "
              f"{r['accuracy']:>9.4f} {r['agreement']:>6.3f}  {r['resolver']}")
    for r in rows[1:]:
        print(f"{r['format']} interpreter accuracy {r['accuracy']:.4f} "
              f"vs Keras accuracy {keras_acc:.4f}")
    with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
        json.dump({"model": final.name, "sparsity": report.sparsity,
                   "test_images": len(xt), "rows": rows}, f, indent=2)
    print(f"output folder: {FLAGS.output_dir}")


if __name__ == "__main__":
    app.run(main)
