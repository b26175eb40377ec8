"""C-GaP (or P-GaP) on a ResNet-20-style network, Fashion-MNIST at 32x32x3.

The CIFAR ResNet-20 layout (He et al., 2016): a 3x3 stem convolution, three
stages of three basic blocks (two 3x3 conv + BatchNorm each, identity or 1x1
projection shortcut) with 16, 32 and 64 filters, global average pooling and a
10-way classifier. Fashion-MNIST images are zero-padded from 28x28 to 32x32 and
repeated to 3 channels so the network is exactly the CIFAR one.

No dense pre-training: the 20 prunable convolutions start sparse (random
exact-count masks) and are split into 4 partitions balanced by parameter count
(``partitioning="balanced"``); one partition at a time is grown to dense,
trained and pruned back by magnitude, then everything is fine-tuned at the
target. The stem convolution and the classifier stay dense (``keep_dense``),
as in the paper. Prints the partitions, the sparsity report of the stripped
model and its test accuracy, and saves it as a plain ``.keras`` file.

Speed: one training step at batch 128 takes 0.6-1 s on a 2-core CPU, so the
default run (10 epochs of 469 steps on the full 60k images) takes 1-1.5 hours
there; use a GPU, or ``--limit`` for a shorter run (``--limit 2048
--test_limit 2000 --rounds 1 --finetune_epochs 1``: about 80 s, ~75% test
accuracy). BatchNorm uses momentum 0.9 (PyTorch's default) so its moving
statistics keep up with short runs and with each prune-back.

Run:
    python examples/gap_resnet.py
    python examples/gap_resnet.py --sparsity 0.95 --rounds 3 --finetune_epochs 4
    python examples/gap_resnet.py --method pgap --partitions 4 --rounds 1
    python examples/gap_resnet.py --limit 5000 --test_limit 2000 --rounds 1
"""

import functools
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Third-party logs (TensorFlow C++, TFLite converter, TFDS) are hidden unless --verbose:
# keras_gap reads KERAS_GAP_QUIET when it is imported, before TensorFlow loads.
os.environ["KERAS_GAP_QUIET"] = ("0" if "--verbose" in sys.argv[1:]
                                 else os.environ.get("KERAS_GAP_QUIET", "1"))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_float("sparsity", 0.9, "Target sparsity of the pruned convolutions, in [0, 1).")
flags.DEFINE_integer("partitions", 4, "Number of GaP partitions (K), balanced by size.")
flags.DEFINE_integer("rounds", 2, "How many times every partition is grown.")
flags.DEFINE_integer("epochs_per_step", 1, "Epochs a partition stays grown (T).")
flags.DEFINE_integer("finetune_epochs", 2, "Epochs of the final fine-tuning phase.")
flags.DEFINE_enum("method", "cgap", ["cgap", "pgap"], "Cyclic or parallel GaP.")
flags.DEFINE_enum("distribution", "uniform", ["uniform", "erk", "global"],
                  "Per-layer sparsity distribution.")
flags.DEFINE_enum("reset_optimizer", "all", ["fresh", "all", "none"],
                  "Optimizer state reset at each GaP boundary.")
flags.DEFINE_float("learning_rate", 0.05, "Peak learning rate (SGD, momentum 0.9, cosine).")
flags.DEFINE_float("weight_decay", 5e-4, "Decoupled weight decay.")
flags.DEFINE_bool("augment", True, "Random 4-pixel shifts and horizontal flips.")
flags.DEFINE_integer("limit", None, "Use only the first N training images (smoke tests).")
flags.DEFINE_integer("test_limit", None, "Use only the first N test images.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("output_dir", "out/gap_resnet", "Where the model and logs go.")
flags.DEFINE_bool("verbose", False, "Show TensorFlow, TFLite and TFDS logs (hidden by default).")

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics (0..1 scale)


def make_dataset(x, y, batch_size, training, seed):
    """uint8 [N, 28, 28, 1] -> batches of normalized float32 [32, 32, 3] images."""
    import tensorflow as tf

    def prep(image, label):
        image = (tf.cast(image, tf.float32) / 255.0 - MEAN) / STD
        image = tf.pad(image, [[2, 2], [2, 2], [0, 0]])  # 28 -> 32
        if training and FLAGS.augment:
            image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
            image = tf.image.random_crop(image, [32, 32, 1])
            image = tf.image.random_flip_left_right(image)
        return tf.repeat(image, 3, axis=-1), label

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(
        tf.data.AUTOTUNE)


def build_resnet20(num_classes=10, blocks_per_stage=3, filters=(16, 32, 64)):
    """ResNet-20 (CIFAR layout) with the Functional API; layer names say where they are."""
    import keras
    L = keras.layers

    def conv(x, f, kernel, stride, name):
        return L.Conv2D(f, kernel, strides=stride, padding="same", use_bias=False,
                        kernel_initializer="he_normal", name=name)(x)

    # momentum 0.9 (PyTorch's default, 0.1 in its convention): the moving
    # statistics follow the weights within tens of steps, also after each prune-back.
    BN = functools.partial(L.BatchNormalization, momentum=0.9)
    inputs = keras.Input((32, 32, 3), name="image")
    x = conv(inputs, filters[0], 3, 1, "stem_conv")
    x = BN(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    for s, f in enumerate(filters, start=1):
        for b in range(1, blocks_per_stage + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            name = f"stage{s}_block{b}"
            y = conv(x, f, 3, stride, f"{name}_conv1")
            y = BN(name=f"{name}_bn1")(y)
            y = L.ReLU(name=f"{name}_relu1")(y)
            y = conv(y, f, 3, 1, f"{name}_conv2")
            y = BN(name=f"{name}_bn2")(y)
            shortcut = x
            if stride != 1 or x.shape[-1] != f:
                shortcut = conv(x, f, 1, stride, f"{name}_shortcut")
                shortcut = BN(name=f"{name}_shortcut_bn")(shortcut)
            x = L.ReLU(name=f"{name}_out")(L.Add(name=f"{name}_add")([y, shortcut]))
    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet20")


def main(argv):
    del argv
    import math

    import keras_gap as kg  # first: see KERAS_GAP_QUIET above
    import keras

    keras.utils.set_random_seed(FLAGS.seed)
    x, y = kg.datasets.load_numpy("fashion_mnist", "train", limit=FLAGS.limit)
    xt, yt = kg.datasets.load_numpy("fashion_mnist", "test", limit=FLAGS.test_limit)
    train = make_dataset(x, y, FLAGS.batch_size, training=True, seed=FLAGS.seed)
    test = make_dataset(xt, yt, 512, training=False, seed=FLAGS.seed)

    model = build_resnet20()
    pruned = kg.prune_gap(
        model, target_sparsity=FLAGS.sparsity, num_partitions=FLAGS.partitions,
        epochs_per_step=FLAGS.epochs_per_step, rounds=FLAGS.rounds,
        finetune_epochs=FLAGS.finetune_epochs, partitioning="balanced",
        distribution=FLAGS.distribution, method=FLAGS.method,
        keep_dense=["stem_conv", "logits"], seed=FLAGS.seed)
    for p, wrappers in kg.gap_partitions(pruned).items():
        size = sum(math.prod(w.layer.kernel.shape) for w in wrappers)
        print(f"partition {p} ({size:,} weights): {[w.layer.name for w in wrappers]}")
    epochs = kg.gap_total_epochs(pruned)
    steps = -(-len(x) // FLAGS.batch_size)
    print(f"{model.count_params():,} parameters; {epochs} epochs of {steps} steps "
          f"({len(x)} training images, {len(xt)} test images)")
    pruned.compile(
        keras.optimizers.SGD(
            keras.optimizers.schedules.CosineDecay(FLAGS.learning_rate, epochs * steps),
            momentum=0.9, nesterov=True, weight_decay=FLAGS.weight_decay),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    pruned.fit(train, epochs=epochs, validation_data=test, verbose=2, shuffle=False,
               callbacks=[kg.GaPCallback(reset_optimizer=FLAGS.reset_optimizer,
                                         log_dir=os.path.join(FLAGS.output_dir, "logs"))])

    final = kg.strip_pruning(pruned)
    accuracy = float((final.predict(test, verbose=0).argmax(-1) == yt).mean())
    print(kg.sparsity_report(final))
    path = os.path.join(FLAGS.output_dir, "gap_resnet.keras")
    final.save(path)
    print(f"test accuracy {accuracy:.4f} ({len(xt)} images); stripped model saved to {path}")


if __name__ == "__main__":
    app.run(main)
