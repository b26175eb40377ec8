"""C-GaP (or P-GaP) at 90% sparsity on real Fashion-MNIST with a small CNN.

No dense pre-training: the model starts sparse (random exact-count masks), one
partition at a time is grown to dense, trained and pruned back by magnitude,
then everything is fine-tuned at the target. Prints the sparsity report of the
stripped model and its test accuracy, and saves it as a plain `.keras` file.

Run:
    python examples/gap_fashion_mnist.py
    python examples/gap_fashion_mnist.py --sparsity 0.95 --partitions 4 --rounds 2
    python examples/gap_fashion_mnist.py --limit 2000 --epochs_per_step 1 --rounds 1
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Third-party logs (TensorFlow C++, TFLite converter, TFDS) are hidden unless --verbose:
# keras_gap reads KERAS_GAP_QUIET when it is imported, before TensorFlow loads.
os.environ["KERAS_GAP_QUIET"] = ("0" if "--verbose" in sys.argv[1:]
                                 else os.environ.get("KERAS_GAP_QUIET", "1"))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_float("sparsity", 0.9, "Target sparsity in [0, 1).")
flags.DEFINE_integer("partitions", 4, "Number of GaP partitions (K).")
flags.DEFINE_integer("rounds", 2, "How many times every partition is grown.")
flags.DEFINE_integer("epochs_per_step", 1, "Epochs a partition stays grown (T).")
flags.DEFINE_integer("finetune_epochs", 2, "Epochs of the final fine-tuning phase.")
flags.DEFINE_enum("method", "cgap", ["cgap", "pgap"], "Cyclic or parallel GaP.")
flags.DEFINE_string("partitioning", "balanced", "sequential | balanced | random.")
flags.DEFINE_string("distribution", "uniform", "uniform | erk | global.")
flags.DEFINE_enum("reset_optimizer", "all", ["fresh", "all", "none"],
                  "Optimizer state reset at each GaP boundary.")
flags.DEFINE_integer("limit", None, "Use only the first N training images (smoke tests).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("output_dir", "out/gap_fashion_mnist", "Where the model and logs go.")
flags.DEFINE_bool("verbose", False, "Show TensorFlow, TFLite and TFDS logs (hidden by default).")


def build_model():
    import keras
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv4"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu", name="fc1"),
        keras.layers.Dense(10, name="logits"),
    ], name="fashion_cnn")


def main(argv):
    del argv
    import keras_gap as kg  # first: see KERAS_GAP_QUIET above
    import keras

    keras.utils.set_random_seed(FLAGS.seed)
    # float32 [N, 28, 28, 1] in [0, 1]
    x, y = kg.datasets.load_numpy("fashion_mnist", "train", limit=FLAGS.limit, normalize=True)
    xt, yt = kg.datasets.load_numpy("fashion_mnist", "test", normalize=True)

    pruned = kg.prune_gap(
        build_model(), target_sparsity=FLAGS.sparsity, num_partitions=FLAGS.partitions,
        epochs_per_step=FLAGS.epochs_per_step, rounds=FLAGS.rounds,
        finetune_epochs=FLAGS.finetune_epochs, partitioning=FLAGS.partitioning,
        distribution=FLAGS.distribution, method=FLAGS.method,
        keep_dense=["conv1", "logits"], seed=FLAGS.seed)
    for p, wrappers in kg.gap_partitions(pruned).items():
        print(f"partition {p}: {[w.layer.name for w in wrappers]}")
    epochs = kg.gap_total_epochs(pruned)
    steps = -(-len(x) // FLAGS.batch_size)
    pruned.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, epochs * steps)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    pruned.fit(x, y, batch_size=FLAGS.batch_size, epochs=epochs,
               validation_data=(xt, yt), verbose=2,
               callbacks=[kg.GaPCallback(reset_optimizer=FLAGS.reset_optimizer,
                                         log_dir=os.path.join(FLAGS.output_dir, "logs"))])

    final = kg.strip_pruning(pruned)
    final.compile(metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _, accuracy = final.evaluate(xt, yt, batch_size=512, verbose=0)
    print(kg.sparsity_report(final))
    path = os.path.join(FLAGS.output_dir, "gap_fashion_mnist.keras")
    final.save(path)
    print(f"test accuracy {accuracy:.4f}; stripped model saved to {path}")


if __name__ == "__main__":
    app.run(main)
