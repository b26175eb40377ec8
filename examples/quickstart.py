"""keras-gap quickstart: tf-mot style gradual magnitude pruning on Fashion-MNIST.

The same flow as ``tfmot.sparsity.keras``, with keras-gap names:
``prune_low_magnitude`` + ``PolynomialDecay`` -> ``fit`` with
``UpdatePruningStep`` (and ``PruningSummaries`` for TensorBoard) ->
``strip_pruning`` -> ``sparsity_report``.

Run:
    python examples/quickstart.py                      # full data, 2 epochs
    python examples/quickstart.py --limit 2000 --epochs 1

Writes ``<output_dir>/pruned.keras`` and TensorBoard logs in
``<output_dir>/logs``.
"""

import os
import sys
import tempfile

# Third-party logs (TensorFlow C++, TFLite converter, TFDS) are hidden unless --verbose:
# keras_gap reads KERAS_GAP_QUIET when it is imported, before TensorFlow loads.
os.environ["KERAS_GAP_QUIET"] = ("0" if "--verbose" in sys.argv[1:]
                                 else os.environ.get("KERAS_GAP_QUIET", "1"))

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 2, "Training epochs (pruning runs over all of them).")
flags.DEFINE_integer("limit", None, "Use only the first N training and N/5 test examples.")
flags.DEFINE_float("sparsity", 0.8, "Final sparsity of the pruned weights, in [0, 1).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_string("output_dir", None, "Output folder (default: a new temp folder).")
flags.DEFINE_bool("verbose", False, "Show TensorFlow, TFLite and TFDS logs (hidden by default).")


def make_datasets(limit, batch_size):
    """Fashion-MNIST train/test pipelines of (float32 [28, 28, 1] in 0..255, label)."""
    import tensorflow as tf
    from keras_gap import datasets
    train_split = "train" if limit is None else f"train[:{limit}]"
    test_split = "test" if limit is None else f"test[:{max(limit // 5, 100)}]"

    def prep(ds, shuffle):
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
        if shuffle:
            ds = ds.shuffle(10000, seed=0)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    train = prep(datasets.fashion_mnist(train_split).cache(), shuffle=True)
    test = prep(datasets.fashion_mnist(test_split).cache(), shuffle=False)
    return train, test


def tensorboard_available():
    """PruningSummaries writes tf.summary events, which need the tensorboard package."""
    import importlib.util
    return importlib.util.find_spec("tensorboard") is not None


def make_model():
    """A small CNN; the Rescaling layer takes 0..255 pixels."""
    import keras
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Rescaling(1.0 / 255),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # hide TFDS's INFO lines
    import keras_gap as kg  # first: see KERAS_GAP_QUIET above
    import keras

    if not 0.0 <= FLAGS.sparsity < 1.0:
        raise app.UsageError(f"--sparsity must be in [0, 1); got {FLAGS.sparsity}.")
    if FLAGS.epochs < 1:
        raise app.UsageError(f"--epochs must be >= 1; got {FLAGS.epochs}.")
    output_dir = FLAGS.output_dir or tempfile.mkdtemp(prefix="keras_gap_quickstart_")
    os.makedirs(output_dir, exist_ok=True)
    keras.utils.set_random_seed(0)

    train, test = make_datasets(FLAGS.limit, FLAGS.batch_size)
    steps = FLAGS.epochs * int(train.cardinality())
    model = make_model()

    # 1. Wrap: sparsity grows from 0 to --sparsity over the first 80% of steps.
    pruned = kg.prune_low_magnitude(
        model, pruning_schedule=kg.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=FLAGS.sparsity, begin_step=0,
            end_step=max(1, int(0.8 * steps)), frequency=max(1, steps // 20)))
    pruned.compile(optimizer="adam",
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])

    # 2. Train with the required UpdatePruningStep callback.
    callbacks = [kg.UpdatePruningStep()]
    if tensorboard_available():
        callbacks.append(kg.PruningSummaries(log_dir=os.path.join(output_dir, "logs")))
    else:
        print("PruningSummaries skipped: TensorBoard is not installed "
              "(pip install tensorboard).")
    pruned.fit(train, epochs=FLAGS.epochs, validation_data=test, callbacks=callbacks)

    # 3. Strip the wrappers: a plain Keras model with the zeros baked in.
    final = kg.strip_pruning(pruned)
    path = os.path.join(output_dir, "pruned.keras")
    final.save(path)  # a plain Keras model: loads without keras_gap
    final.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    _, accuracy = final.evaluate(test, verbose=0)
    print(kg.sparsity_report(final))
    print(f"test accuracy {accuracy:.4f}; saved {path}")
    print(f"output folder: {output_dir}")


if __name__ == "__main__":
    app.run(main)
