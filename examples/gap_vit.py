"""C-GaP (or P-GaP) on a small Vision Transformer, partitioned by encoder blocks.

The ViT (Dosovitskiy et al., 2021), small enough for a CPU: the 28x28 image is
cut into non-overlapping patches, each embedded by one strided Conv2D (the
patch embedding), a learned position embedding is added, then ``--depth``
pre-norm encoder blocks follow (LayerNorm -> MultiHeadAttention -> residual,
LayerNorm -> Dense -> GELU -> Dense -> residual), a final LayerNorm, mean
pooling over the tokens and a 10-way classifier.

As in the paper's Transformer experiments, GaP partitions follow the encoder
blocks: partition i is block i's MultiHeadAttention (query, key, value and
output kernels) and its two MLP Dense layers, passed to ``kg.prune_gap`` as an
explicit list of layer-name groups (one group per block, so K = depth). The
patch embedding and the classifier stay dense (``keep_dense``); LayerNorms,
biases and the position embedding are never pruned. No dense pre-training:
the model starts sparse, one block at a time is grown to dense, trained and
pruned back, then everything is fine-tuned at the target. Prints the sparsity
report of the stripped model and its test accuracy, and saves it as a
``.keras`` file (loading it needs this module's ``PositionEmbedding`` class:
``import gap_vit`` or pass it in ``custom_objects``).

Data: MNIST by default (``--dataset fashion_mnist`` also works). MNIST is not
a Debian package: fetch it once with ``bash tests/install_deps.sh --mnist``;
without it the script stops with keras_gap.datasets' error, which names the
package and the command (it never switches to another data set).

Run:
    python examples/gap_vit.py
    python examples/gap_vit.py --depth 6 --sparsity 0.8 --rounds 3
    python examples/gap_vit.py --dataset fashion_mnist --method pgap
    python examples/gap_vit.py --limit 2000 --rounds 1 --finetune_epochs 1
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Third-party logs (TensorFlow C++, TFLite converter, TFDS) are hidden unless --verbose:
# keras_gap reads KERAS_GAP_QUIET when it is imported, before TensorFlow loads.
os.environ["KERAS_GAP_QUIET"] = ("0" if "--verbose" in sys.argv[1:]
                                 else os.environ.get("KERAS_GAP_QUIET", "1"))

from absl import app, flags  # noqa: E402

import keras_gap as kg  # noqa: E402  (before keras: see KERAS_GAP_QUIET above)
import keras  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "mnist", ["mnist", "fashion_mnist"], "Training data.")
flags.DEFINE_float("sparsity", 0.9, "Target sparsity of the encoder blocks, in [0, 1).")
flags.DEFINE_integer("depth", 4, "Encoder blocks; also the number of GaP partitions.")
flags.DEFINE_integer("dim", 64, "Token width.")
flags.DEFINE_integer("heads", 4, "Attention heads.")
flags.DEFINE_integer("mlp_dim", 128, "Hidden width of each block's MLP.")
flags.DEFINE_integer("patch_size", 4, "Patch side in pixels (must divide 28).")
flags.DEFINE_integer("rounds", 2, "How many times every block is grown.")
flags.DEFINE_integer("epochs_per_step", 1, "Epochs a block stays grown (T).")
flags.DEFINE_integer("finetune_epochs", 2, "Epochs of the final fine-tuning phase.")
flags.DEFINE_enum("method", "cgap", ["cgap", "pgap"], "Cyclic or parallel GaP.")
flags.DEFINE_enum("distribution", "uniform", ["uniform", "erk", "global"],
                  "Per-layer sparsity distribution.")
flags.DEFINE_enum("reset_optimizer", "all", ["fresh", "all", "none"],
                  "Optimizer state reset at each GaP boundary.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate (AdamW, cosine decay).")
flags.DEFINE_integer("limit", None, "Use only the first N training images (smoke tests).")
flags.DEFINE_integer("test_limit", None, "Use only the first N test images.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("output_dir", "out/gap_vit", "Where the model and logs go.")
flags.DEFINE_bool("verbose", False, "Show TensorFlow, TFLite and TFDS logs (hidden by default).")


@keras.saving.register_keras_serializable(package="keras_gap_examples")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned [tokens, dim] embedding to a [batch, tokens, dim] input.

    ``get_prunable_weights()`` returning ``[]`` is keras-gap's (and tf-mot's)
    contract for "this custom layer owns weights, keep them dense"; without it
    ``prune_gap`` refuses the unknown layer with a clear error.
    """

    def build(self, input_shape):
        self.embedding = self.add_weight(
            shape=tuple(input_shape[1:]), name="embedding",
            initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, x):
        return x + keras.ops.cast(self.embedding, x.dtype)

    def get_prunable_weights(self):
        return []


def build_vit(depth, dim, heads, mlp_dim, patch_size, num_classes=10):
    """A pre-norm ViT for 28x28x1 inputs in 0..1; block i's layers are named block{i}_*."""
    L = keras.layers
    if 28 % patch_size:
        raise app.UsageError(f"--patch_size {patch_size} must divide 28.")
    if dim % heads:
        raise app.UsageError(f"--dim {dim} must be a multiple of --heads {heads}.")
    tokens = (28 // patch_size) ** 2
    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Conv2D(dim, patch_size, strides=patch_size, name="patch_embed")(inputs)
    x = L.Reshape((tokens, dim), name="tokens")(x)
    x = PositionEmbedding(name="pos_embed")(x)
    for i in range(depth):
        h = L.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
        h = L.MultiHeadAttention(heads, dim // heads, name=f"block{i}_mha")(h, h)
        x = L.Add(name=f"block{i}_add1")([x, h])
        h = L.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
        h = L.Dense(mlp_dim, activation="gelu", name=f"block{i}_mlp1")(h)
        h = L.Dense(dim, name=f"block{i}_mlp2")(h)
        x = L.Add(name=f"block{i}_add2")([x, h])
    x = L.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = L.GlobalAveragePooling1D(name="pool")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vit")


def block_partitions(depth):
    """One GaP partition per encoder block: its attention and its two MLP layers."""
    return [[f"block{i}_mha", f"block{i}_mlp1", f"block{i}_mlp2"] for i in range(depth)]


def main(argv):
    del argv
    keras.utils.set_random_seed(FLAGS.seed)
    try:
        # float32 [N, 28, 28, 1] in [0, 1]
        x, y = kg.datasets.load_numpy(FLAGS.dataset, "train", limit=FLAGS.limit,
                                      normalize=True)
        xt, yt = kg.datasets.load_numpy(FLAGS.dataset, "test", limit=FLAGS.test_limit,
                                        normalize=True)
    except kg.datasets.DataNotFoundError as e:
        # No fallback to another data set: the message names the package to install.
        raise SystemExit(f"gap_vit.py: {type(e).__name__}: {e}") from None

    model = build_vit(FLAGS.depth, FLAGS.dim, FLAGS.heads, FLAGS.mlp_dim, FLAGS.patch_size)
    pruned = kg.prune_gap(
        model, target_sparsity=FLAGS.sparsity, num_partitions=FLAGS.depth,
        epochs_per_step=FLAGS.epochs_per_step, rounds=FLAGS.rounds,
        finetune_epochs=FLAGS.finetune_epochs, partitioning=block_partitions(FLAGS.depth),
        distribution=FLAGS.distribution, method=FLAGS.method,
        keep_dense=["patch_embed", "logits"], seed=FLAGS.seed)
    for p, wrappers in kg.gap_partitions(pruned).items():
        print(f"partition {p}: {[w.layer.name for w in wrappers]}")
    epochs = kg.gap_total_epochs(pruned)
    steps = -(-len(x) // FLAGS.batch_size)
    print(f"{FLAGS.dataset}: {len(x)} training / {len(xt)} test images; "
          f"{model.count_params():,} parameters; {epochs} epochs of {steps} steps")
    pruned.compile(
        keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(FLAGS.learning_rate, epochs * steps),
            weight_decay=1e-4),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    pruned.fit(x, y, batch_size=FLAGS.batch_size, epochs=epochs,
               validation_data=(xt, yt), verbose=2,
               callbacks=[kg.GaPCallback(reset_optimizer=FLAGS.reset_optimizer,
                                         log_dir=os.path.join(FLAGS.output_dir, "logs"))])

    final = kg.strip_pruning(pruned)
    accuracy = float((final.predict(xt, batch_size=512, verbose=0).argmax(-1) == yt).mean())
    print(kg.sparsity_report(final))
    path = os.path.join(FLAGS.output_dir, "gap_vit.keras")
    final.save(path)
    print(f"test accuracy {accuracy:.4f} ({FLAGS.dataset}, {len(xt)} images); "
          f"stripped model saved to {path}")


if __name__ == "__main__":
    app.run(main)
