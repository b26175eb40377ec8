"""Attention heads and FFN units removed: dense vs channel GMP vs channel C-GaP.

A Transformer gets faster only when whole heads and FFN hidden units go (issue 21,
part 3). One run, same data and step budget for every method: a small
Transformer text classifier in plain Keras (token embedding + learned positions,
``--layers`` post-LN blocks of ``keras.layers.MultiHeadAttention`` and a ReLU FFN
Dense pair, mean pooling, logits) classifies fortune-mod quotations into six
topics (Debian package ``fortunes``, BSD licence; ``kg.datasets.fortunes``: the
same data as examples/gap_kerashub.py). It is trained with Adam and a cosine
learning rate by

* ``dense``;
* ``gmp``: ``kg.prune_low_magnitude(structure="channel")`` with a cubic ramp to
  ``s`` over the first 60% of the steps, then fine-tuning;
* ``cgap``: ``kg.prune_gap(structure="channel", num_partitions=2, rounds=2)``
  over the same 60%, then fine-tuning;

at s = 25% and 50% of every head group and FFN-unit group (the only removable
groups: the residual stream meets LayerNormalization). Each pruned model is
stripped and materialized (``kg.materialize``: ``MultiHeadAttention`` rebuilt with
fewer ``num_heads``, FFN Dense layers with fewer units). The table reports test
accuracy of the materialized model (validation accuracy beside it: the
fortunes validation split; nothing here was chosen on the test split), MACs
(``kg.flops_report``), training MACs vs dense (``kg.TrainingCost``) and the
TFLite latency of the materialized model vs dense (float32, one thread, batch 1;
the models timed interleaved over several rounds, so load on a shared machine
hits them alike).

Goals (issue 21): TFLite speed-up at least 0.75 of the MAC reduction; channel
C-GaP at 25% within 1 point of dense accuracy.

Why plain Keras and not KerasHub's BertTextClassifier: KerasHub blocks derive
``key_dim`` from ``hidden_dim // num_heads``, so a block with fewer heads cannot be
written in their config; ``materialize`` keeps their heads masked (README,
"Structured sparsity"). Keras' ``MultiHeadAttention`` keeps ``key_dim`` per head.

Usage:
    KERAS_BACKEND=tensorflow python benchmarks/heads.py
    python benchmarks/heads.py --quick --output_dir /tmp/heads

Writes benchmarks/results/heads.{json,md}.
"""

import json
import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

import _common  # noqa: E402
from _machine import machine_info  # noqa: E402
from _models import PRUNE_FRACTION, accuracy, channel_pruned, summarize_channel_runs  # noqa: E402
from _timing import time_tflite  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "smoke test: one seed, 256 quotations, one epoch, tiny "
                  "model (flags given on the command line override these sizes)")
flags.DEFINE_integer("seeds", 3, "seeds per configuration (first_seed .. first_seed+N-1)")
flags.DEFINE_integer("first_seed", 0, "first seed (the latency runs time its models)")
flags.DEFINE_integer("limit", None, "use only the first N quotations of each split")
flags.DEFINE_integer("epochs", 12, "training epochs for every method")
flags.DEFINE_integer("batch_size", 32, "batch size")
flags.DEFINE_float("learning_rate", 1e-3, "peak Adam learning rate (cosine decay to 0)")
flags.DEFINE_integer("layers", 2, "Transformer blocks")
flags.DEFINE_integer("hidden_dim", 128, "model width")
flags.DEFINE_integer("heads", 8, "attention heads per block")
flags.DEFINE_integer("key_dim", 16, "width of one head")
flags.DEFINE_integer("intermediate_dim", 512, "FFN units per block")
flags.DEFINE_integer("sequence_length", 64, "tokens per quotation (cut / padded)")
flags.DEFINE_integer("vocabulary_size", 8000, "word vocabulary, from the training split")
flags.DEFINE_float("dropout", 0.1, "dropout on the residual branches")
flags.DEFINE_list("sparsities", ["0.25", "0.5"], "fractions of heads and units removed")
flags.DEFINE_list("methods", ["gmp", "cgap"], "pruning methods (dense always runs)")
flags.DEFINE_integer("latency_runs", 300, "timed TFLite runs per model, over all rounds")
flags.DEFINE_integer("latency_rounds", 5, "rounds of timing, the models interleaved in each "
                     "(a slow spell of a shared machine then hits every model alike)")
flags.DEFINE_string("output_dir", os.path.join(_common.HERE, "results"),
                    "where the results files go")

TOPICS = ("computers", "people", "politics", "science", "songs-poems", "work")


def load_data():
    """((ids, labels) for train, validation, test), vocabulary size: words of the
    training split only."""
    import keras_gap as kg
    splits = {s: kg.datasets.fortunes(s, topics=TOPICS) for s in ("train", "validation", "test")}
    vocab = kg.datasets.word_vocabulary(splits["train"][0], FLAGS.vocabulary_size)
    out = []
    for split in ("train", "validation", "test"):
        texts, labels = splits[split]
        if FLAGS.limit:
            texts, labels = texts[:FLAGS.limit], labels[:FLAGS.limit]
        ids, _ = kg.datasets.encode_words(texts, vocab, FLAGS.sequence_length)
        out.append((ids.astype("int32"), labels))
    return tuple(out), len(vocab)


def build_model(vocabulary_size):
    """The Transformer classifier (plain Keras layers; positions are a learned table
    added by ``AddPositions``)."""
    import keras
    from keras import layers as L

    @keras.saving.register_keras_serializable(package="keras_gap_benchmarks")
    class AddPositions(L.Layer):
        """x + a learned (sequence_length, width) table."""

        def build(self, input_shape):
            self.table = self.add_weight(shape=tuple(input_shape[1:]), name="table",
                                         initializer=keras.initializers.RandomNormal(0, 0.02))

        def call(self, x):
            return x + self.table

        def get_prunable_weights(self):   # tf-mot's PrunableLayer: kept dense
            return []

    inputs = keras.Input((FLAGS.sequence_length,), dtype="int32", name="token_ids")
    x = AddPositions(name="positions")(
        L.Embedding(vocabulary_size, FLAGS.hidden_dim, name="tokens")(inputs))
    for i in range(FLAGS.layers):
        a = L.MultiHeadAttention(FLAGS.heads, FLAGS.key_dim, name=f"attention_{i}")(x, x)
        x = L.LayerNormalization(name=f"ln_{i}a")(L.Add()([x, L.Dropout(FLAGS.dropout)(a)]))
        f = L.Dense(FLAGS.intermediate_dim, activation="relu", name=f"ffn_{i}_in")(x)
        f = L.Dense(FLAGS.hidden_dim, name=f"ffn_{i}_out")(f)
        x = L.LayerNormalization(name=f"ln_{i}b")(L.Add()([x, L.Dropout(FLAGS.dropout)(f)]))
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(len(TOPICS), name="logits")(x), name="transformer")


def train_one(method, sparsity, seed, data, vocabulary_size):
    import keras
    import tensorflow as tf

    import keras_gap as kg

    (x, y), (xv, yv), (xt, yt) = data
    _common.set_seed(seed)  # initializers, dropout, C-GaP's random masks
    steps_per_epoch = -(-len(x) // FLAGS.batch_size)
    total = steps_per_epoch * FLAGS.epochs
    model, callbacks = channel_pruned(build_model(vocabulary_size), method, sparsity, total,
                                      seed)
    cost = kg.TrainingCost()
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        FLAGS.learning_rate, total)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # The quotations come grouped by topic: shuffled afresh every epoch, seeded.
    train = (tf.data.Dataset.from_tensor_slices((x, y))
             .shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
             .batch(FLAGS.batch_size))
    t0 = time.perf_counter()
    model.fit(train, epochs=FLAGS.epochs, verbose=0, callbacks=callbacks + [cost])
    seconds = time.perf_counter() - t0
    final, report = model, None
    if method != "dense":
        final, report = kg.materialize(kg.strip_pruning(model), return_report=True)
    heads = [final.get_layer(f"attention_{i}").num_heads for i in range(FLAGS.layers)]
    units = [final.get_layer(f"ffn_{i}_in").units for i in range(FLAGS.layers)]
    row = {"method": method, "sparsity": sparsity, "seed": seed,
           "test_accuracy": accuracy(final, xt, yt), "val_accuracy": accuracy(final, xv, yv),
           "params": final.count_params(), "macs": kg.flops_report(final).macs,
           "train_macs_ratio": cost.relative, "train_seconds": round(seconds, 1),
           "heads": heads, "units": units,
           "removed": dict(report.removed) if report else {},
           "kept": [str(k) for k in report.kept] if report else [],
           "weights": _common.weights_fingerprint(final)}
    return row, final


def interleaved_latency(paths, x):
    """{name: {"tflite_b1": median / p10 / p90 ms}}: every model timed in each of
    ``--latency_rounds`` rounds (one thread, batch 1); the median over rounds of
    each round's median."""
    import statistics
    per_round = max(FLAGS.latency_runs // FLAGS.latency_rounds, 1)
    medians = {name: [] for name in paths}
    for _ in range(FLAGS.latency_rounds):
        for name, path in paths.items():
            medians[name].append(time_tflite(path, x, per_round)["median_ms"])
    return {name: {"tflite_b1": {"median_ms": statistics.median(m), "p10_ms": min(m),
                                 "p90_ms": max(m), "runs": per_round * len(m),
                                 "round_medians_ms": m}}
            for name, m in medians.items()}


def markdown(result):
    m, cfg = result["machine"], result["config"]
    lines = [
        "# Attention heads and FFN units removed: dense vs channel GMP vs channel C-GaP", "",
        f"{result['date']}, {m['cpu']} ({m['logical_cores']} logical cores, load average at "
        f"start {m['load_average_at_start']}), Keras {result['keras']}, backend "
        f"{result['backend']}. Plain-Keras Transformer classifier ({cfg['layers']} blocks, "
        f"width {cfg['hidden_dim']}, {cfg['heads']} heads of {cfg['key_dim']}, FFN "
        f"{cfg['intermediate_dim']}, {cfg['sequence_length']} tokens, vocabulary "
        f"{cfg['vocabulary_size']:,}) on fortune-mod quotations, six topics (Debian "
        f"`fortunes`, BSD licence): {cfg['train']:,} train / {cfg['validation']:,} validation "
        f"/ {cfg['test']:,} test; {cfg['epochs']} epochs at batch {cfg['batch_size']} for "
        f"every method, {cfg['seeds']} seed(s); pruning over the first {PRUNE_FRACTION:.0%} "
        "of the steps, then fine-tuning. Accuracy is the materialized model's; TFLite latency "
        f"(float32, one thread, batch 1, seed {cfg['first_seed']}'s models) is the median "
        f"over {cfg['latency_rounds']} rounds, all models interleaved in each, of "
        f"{cfg['latency_runs'] // cfg['latency_rounds']} runs; speed-up = dense ms / model ms. "
        f"Total wall time {result['wall_minutes']:.1f} min on a shared machine.", "",
        _common.provenance_line([result["provenance"]]), "",
        "| method | heads and units removed | heads / units per block | test acc (mean ± std) "
        "| vs dense | val acc | params | MACs | MAC reduction | train MACs vs dense "
        "| TFLite b1 ms | TFLite b1 speed-up | TFLite speed-up / MAC reduction |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    shapes = {(r["method"], r["sparsity"]): r for r in result["rows"]}
    for e in result["summary"]:
        lat = e.get("latency")
        r = shapes[(e["method"], e["sparsity"])]
        lines.append(
            f"| {e['method']} | {e['sparsity']:.0%} | {r['heads'][0]} / {r['units'][0]} "
            f"| {e['test_accuracy_mean']:.4f} ± {e['test_accuracy_std']:.4f} "
            f"| {e['accuracy_vs_dense'] * 100:+.2f} pts | {e['val_accuracy_mean']:.4f} "
            f"| {e['params']:,} | {e['macs'] / 1e6:.2f}M | {e['macs_reduction']:.2f}x "
            f"| {e['train_macs_ratio']:.2f} "
            + (f"| {lat['tflite_b1']['median_ms']:.3f} | {e['tflite_b1_speedup']:.2f}x "
               f"| {e['tflite_speedup_over_mac_reduction']:.2f} |" if lat else "| | | |"))
    lines += ["", "Goals (issue 21): TFLite speed-up / MAC reduction >= 0.75; channel C-GaP "
              "at 25% within 1 point of dense test accuracy."]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    import keras

    import keras_gap as kg
    from keras_gap import console
    console.quiet_third_party()
    import warnings
    # AddPositions (an add) has no MACs to count; TrainingCost would say so every run.
    warnings.filterwarnings("ignore", message="TrainingCost leaves out layers .*: positions\\.")

    if FLAGS.quick:
        _common.apply_quick({"seeds": 1, "limit": 256, "epochs": 1, "latency_runs": 10,
                             "latency_rounds": 2,
                             "hidden_dim": 32, "heads": 4, "key_dim": 8,
                             "intermediate_dim": 64, "sequence_length": 16,
                             "vocabulary_size": 500, "batch_size": 16})
    start = time.perf_counter()
    prov = _common.provenance()
    data, vocabulary_size = load_data()
    xt = data[2][0]
    print(f"fortunes ({kg.datasets.FORTUNES_LICENSE}): " + ", ".join(
        f"{name} {len(d[1]):,}" for name, d in zip(("train", "validation", "test"), data)),
        flush=True)
    configs = [("dense", 0.0)] + [(m, float(s)) for s in FLAGS.sparsities
                                  for m in FLAGS.methods]
    rows, tflite = [], {}
    with tempfile.TemporaryDirectory(prefix="kg_heads_") as workdir:
        for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
            for method, s in configs:
                row, final = train_one(method, s, seed, data, vocabulary_size)
                rows.append(row)
                print(f"{method:5s} {s:.2f} seed {seed}: test {row['test_accuracy']:.4f} "
                      f"val {row['val_accuracy']:.4f} heads {row['heads']} units "
                      f"{row['units']} MACs {row['macs']:,} train MACs "
                      f"{row['train_macs_ratio']:.2f}x ({row['train_seconds']} s)", flush=True)
                if seed == FLAGS.first_seed:
                    tflite[f"{method}_{s}"] = os.path.join(workdir, f"{method}_{s}.tflite")
                    kg.export.to_tflite(final, tflite[f"{method}_{s}"], sparse=False,
                                        sample_inputs=xt[:8])
                keras.backend.clear_session()
        lat = interleaved_latency(tflite, xt[:1])
    result = {"date": prov["date"], "provenance": prov,
              "machine": machine_info(), "keras": keras.__version__,
              "backend": keras.backend.backend(), "keras_gap": kg.__version__,
              "config": {"train": len(data[0][1]), "validation": len(data[1][1]),
                         "test": len(data[2][1]),
                         **{k: getattr(FLAGS, k) for k in (
                             "epochs", "batch_size", "seeds", "first_seed", "learning_rate",
                             "layers", "hidden_dim", "heads", "key_dim", "intermediate_dim",
                             "sequence_length", "vocabulary_size", "dropout", "latency_runs", "latency_rounds",
                             "quick", "limit")}},
              "rows": rows, "summary": summarize_channel_runs(rows, lat),
              "wall_minutes": (time.perf_counter() - start) / 60}
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    for name, text in (("heads.json", json.dumps(result, indent=2, default=float)),
                       ("heads.md", markdown(result))):
        tmp = os.path.join(FLAGS.output_dir, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(FLAGS.output_dir, name))   # atomic
    print(markdown(result))


if __name__ == "__main__":
    app.run(main)
