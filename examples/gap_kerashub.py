"""C-GaP on a KerasHub model: a BERT topic classifier on real text, one partition per block.

The model is KerasHub's own ``BertTextClassifier`` (a ``BertBackbone`` of
``--layers`` transformer blocks, random init, no preset download), pruned in
place: it stays a ``BertTextClassifier`` through training, stripping and saving.
The data is real English text available offline: the fortune-mod collection of
quotations filed by topic (Debian package ``fortunes``, BSD licence;
``kg.datasets.fortunes``), six topics (computers, people, politics, science,
songs-poems, work), about 4,000 training / 450 validation / 530 test
quotations, split by a hash of the text; a word vocabulary built from the
training split only.

Three methods train the same model for the same number of steps, with the same
optimizer (Adam, cosine learning-rate decay) and seed:

  dense  no pruning;
  gmp    gradual magnitude pruning (tf-mot's recipe): cubic PolynomialDecay to
         the target over the first 3/4 of the steps, then at the target;
  cgap   C-GaP, ``kg.prune_gap(partitioning="blocks")``: one partition per
         transformer block; each block in turn is grown to dense, trained and
         pruned back, over the same first 3/4 of the steps (``--rounds`` times
         every block), then every layer at the target for the last 1/4.

Embeddings and LayerNorms stay dense (keras-gap's rule in place); the pooler
and the 6-way classifier stay dense in every method (``--keep_dense``), so
the pruned layers are the blocks' attention projections and FFN Dense layers.
Reported: test accuracy (and validation accuracy), sparsity, the stripped
``.keras`` file's size and its gzip size (zeros compress), and a sparse TFLite
export of the C-GaP model where KerasHub's graph converts (TensorFlow backend).
Nothing is tuned on the test split.

Run:
    python examples/gap_kerashub.py                       # 1 seed, ~5 min on 2 cores
    python examples/gap_kerashub.py --seeds 1,2,3 --output_dir benchmarks/results
    python examples/gap_kerashub.py --fast                # a smoke run (tests)
"""

import gzip
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ["KERAS_GAP_QUIET"] = ("0" if "--verbose" in sys.argv[1:]
                                 else os.environ.get("KERAS_GAP_QUIET", "1"))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_float("sparsity", 0.8, "Target sparsity of the pruned layers, in [0, 1).")
flags.DEFINE_list("methods", ["dense", "gmp", "cgap"], "Methods to run: dense, gmp, cgap.")
flags.DEFINE_list("seeds", ["1"], "Seeds; each method runs once per seed.")
flags.DEFINE_integer("epochs", 12, "Training epochs, the same for every method.")
flags.DEFINE_integer("rounds", 2, "C-GaP: how many times every block is grown.")
flags.DEFINE_integer("layers", 2, "Transformer blocks (= C-GaP partitions).")
flags.DEFINE_integer("hidden_dim", 64, "Hidden width.")
flags.DEFINE_integer("heads", 4, "Attention heads.")
flags.DEFINE_integer("intermediate_dim", 256, "FFN width.")
flags.DEFINE_integer("sequence_length", 64, "Tokens per quotation (cut / padded).")
flags.DEFINE_integer("vocabulary_size", 8000, "Word vocabulary, from the training split.")
flags.DEFINE_float("dropout", 0.1, "Dropout of the backbone and the classifier.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_float("peak_lr", 1e-3, "Peak learning rate (cosine decay to 0).")
flags.DEFINE_list("keep_dense", ["pooled_dense", "logits"],
                  "Layers (names or paths) no method prunes.")
flags.DEFINE_bool("export", True, "Export the C-GaP model to sparse TFLite (TF backend).")
flags.DEFINE_string("output_dir", None, "Write gap_kerashub.{json,md} here (None: print).")
flags.DEFINE_bool("fast", False, "Tiny sizes for a smoke test.")
flags.DEFINE_bool("verbose", False, "Third-party logs and per-epoch progress.")

TOPICS = ("computers", "people", "politics", "science", "songs-poems", "work")


def load_data(vocabulary_size, sequence_length, limit=None):
    """Train / validation / test inputs of BertTextClassifier, vocabulary from train."""
    import keras_gap as kg
    import numpy as np
    splits = {s: kg.datasets.fortunes(s, topics=TOPICS) for s in ("train", "validation", "test")}
    vocab = kg.datasets.word_vocabulary(splits["train"][0], vocabulary_size)
    data = {}
    for split, (texts, labels) in splits.items():
        if limit:
            texts, labels = texts[:limit], labels[:limit]
        ids, mask = kg.datasets.encode_words(texts, vocab, sequence_length)
        data[split] = ({"token_ids": ids, "segment_ids": np.zeros_like(ids),
                        "padding_mask": mask}, labels)
    return data, len(vocab)


def build_classifier(vocabulary_size, num_classes):
    """KerasHub's BertTextClassifier, random init, without preprocessor."""
    import keras_hub
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size, num_layers=FLAGS.layers, num_heads=FLAGS.heads,
        hidden_dim=FLAGS.hidden_dim, intermediate_dim=FLAGS.intermediate_dim,
        max_sequence_length=FLAGS.sequence_length, dropout=FLAGS.dropout)
    return keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=num_classes,
                                               preprocessor=None, dropout=FLAGS.dropout)


def prepare(method, model, total_steps, steps_per_epoch, seed):
    """(model, callbacks) of one method; every method gets the same step budget."""
    import keras_gap as kg
    keep = set(FLAGS.keep_dense)
    prune_steps = int(0.75 * total_steps)  # 3/4 sparsifying, 1/4 at the target
    if method == "dense":
        return model, []
    if method == "gmp":
        schedule = kg.PolynomialDecay(0.0, FLAGS.sparsity, begin_step=0, end_step=prune_steps,
                                      frequency=max(1, steps_per_epoch // 4))
        pruned = kg.prune_low_magnitude(model, pruning_schedule=schedule,
                                        pruning_policy=lambda layer: layer.name not in keep)
        return pruned, [kg.UpdatePruningStep()]
    if method == "cgap":
        k = FLAGS.layers
        steps_per_step = max(1, prune_steps // (k * FLAGS.rounds))
        pruned = kg.prune_gap(model, target_sparsity=FLAGS.sparsity, partitioning="blocks",
                              steps_per_step=steps_per_step, rounds=FLAGS.rounds,
                              finetune_steps=total_steps - k * FLAGS.rounds * steps_per_step,
                              keep_dense=sorted(keep), seed=seed)
        return pruned, [kg.GaPCallback(reset_optimizer="all", verbose=0)]
    raise ValueError(f"--methods: unknown method {method!r}; expected dense, gmp or cgap.")


def file_sizes(model):
    """Bytes of the model's `.keras` file and of that file gzip-compressed."""
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        with open(path, "rb") as f:
            raw = f.read()
        return len(raw), len(gzip.compress(raw, 9))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_one(method, seed, data, vocabulary_size):
    import keras
    import keras_gap as kg
    import numpy as np
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    (x, y), (xv, yv), (xt, yt) = data["train"], data["validation"], data["test"]
    steps_per_epoch = -(-len(y) // FLAGS.batch_size)
    total = FLAGS.epochs * steps_per_epoch
    model, callbacks = prepare(method, build_classifier(vocabulary_size, len(TOPICS)),
                               total, steps_per_epoch, seed)
    model.compile(optimizer=keras.optimizers.Adam(
                      keras.optimizers.schedules.CosineDecay(FLAGS.peak_lr, total)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    # A KerasHub task's fit turns arrays into a tf.data pipeline and then
    # ignores shuffle=True (KerasHub 0.32 warns once); the quotations come
    # grouped by topic, so they are shuffled here, afresh every epoch.
    import tensorflow as tf
    train = (tf.data.Dataset.from_tensor_slices((x, y))
             .shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
             .batch(FLAGS.batch_size))
    start = time.time()
    history = model.fit(train, epochs=FLAGS.epochs, validation_data=(xv, yv),
                        callbacks=callbacks, verbose=2 if FLAGS.verbose else 0)
    seconds = time.time() - start
    final = kg.strip_pruning(model)
    assert type(final).__name__ == "BertTextClassifier"  # still KerasHub's class
    test_acc = float(np.mean(np.argmax(final.predict(xt, batch_size=256, verbose=0), -1) == yt))
    report = kg.sparsity_report(final)
    blocks = [r for r in report.rows if "transformer_layer" in r.weight]  # the pruned layers
    block_sparsity = 1.0 - sum(r.nonzero for r in blocks) / sum(r.params for r in blocks)
    size, gz = file_sizes(final)
    row = {"method": method, "seed": seed, "test_accuracy": test_acc,
           "val_accuracy": float(history.history["val_accuracy"][-1]),
           "val_accuracy_by_epoch": [float(a) for a in history.history["val_accuracy"]],
           "sparsity": float(report.sparsity), "block_sparsity": float(block_sparsity),
           "keras_bytes": size, "keras_gzip_bytes": gz,
           "train_seconds": seconds, "class": type(final).__name__}
    print(f"{method:5s} seed {seed}: test {test_acc:.4f}  val {row['val_accuracy']:.4f}  "
          f"sparsity {block_sparsity:.3f} (blocks) {report.sparsity:.3f} (all)  .keras {size / 1e6:.2f} MB (gzip "
          f"{gz / 1e6:.2f} MB)  {seconds:.0f} s", flush=True)
    return row, final


def export_tflite(model, xt):
    """Sparse TFLite of ``model`` (TF backend) through a SavedModel: kg.export.to_tflite
    does not take named (dict) inputs yet. {"bytes", "max_abs_diff"} or {"error"}."""
    import keras
    import numpy as np
    if keras.backend.backend() != "tensorflow":
        return {"error": "skipped: TFLite export is run on the TensorFlow backend here"}
    import tensorflow as tf
    tmp = tempfile.mkdtemp()
    try:
        model.export(os.path.join(tmp, "saved_model"), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(tmp, "saved_model"))
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        data = converter.convert()
        runner = tf.lite.Interpreter(model_content=data).get_signature_runner()
        diffs = []
        for i in range(8):
            one = {k: (v[i:i + 1].astype("int32")) for k, v in xt.items()}
            got = list(runner(**one).values())[0]
            diffs.append(float(np.max(np.abs(got - model.predict(one, verbose=0)))))
        return {"bytes": len(data), "max_abs_diff": max(diffs), "samples": 8}
    except Exception as e:  # noqa: BLE001 -- recorded: KerasHub's graph may not convert
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(rows):
    import numpy as np
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        test = np.array([r["test_accuracy"] for r in mine])
        val = np.array([r["val_accuracy"] for r in mine])
        out.append({"method": method, "seeds": len(mine), "test_mean": float(test.mean()),
                    "test_std": float(test.std()), "val_mean": float(val.mean()),
                    "sparsity": float(np.mean([r["sparsity"] for r in mine])),
                    "block_sparsity": float(np.mean([r["block_sparsity"] for r in mine])),
                    "keras_bytes": int(np.mean([r["keras_bytes"] for r in mine])),
                    "keras_gzip_bytes": int(np.mean([r["keras_gzip_bytes"] for r in mine]))})
    return out


def table(summary):
    lines = ["| method | seeds | test accuracy | val accuracy | sparsity of the blocks | "
             "of all weights | .keras MB | gzip MB |", "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['method']} | {s['seeds']} | {s['test_mean']:.4f} +- "
                     f"{s['test_std']:.4f} | {s['val_mean']:.4f} | {s['block_sparsity']:.3f} | "
                     f"{s['sparsity']:.3f} | "
                     f"{s['keras_bytes'] / 1e6:.2f} | {s['keras_gzip_bytes'] / 1e6:.2f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    import keras_gap as kg  # noqa: F401 -- first: see KERAS_GAP_QUIET above
    if FLAGS.fast:
        for name, value in dict(epochs=2, rounds=1, hidden_dim=16, intermediate_dim=32,
                                heads=2, sequence_length=16, vocabulary_size=500,
                                export=False).items():
            if not FLAGS[name].present:
                setattr(FLAGS, name, value)
    unknown = [m for m in FLAGS.methods if m not in ("dense", "gmp", "cgap")]
    if unknown:
        raise app.UsageError(f"--methods: unknown {unknown}; expected dense, gmp, cgap.")
    data, vocabulary_size = load_data(FLAGS.vocabulary_size, FLAGS.sequence_length,
                                      limit=256 if FLAGS.fast else None)
    print(f"fortunes ({kg.datasets.FORTUNES_LICENSE}): "
          + ", ".join(f"{s} {len(y)}" for s, (_, y) in data.items())
          + f"; {len(TOPICS)} topics; vocabulary {vocabulary_size}", flush=True)
    rows, export = [], None
    for seed in [int(s) for s in FLAGS.seeds]:
        for method in FLAGS.methods:
            row, final = run_one(method, seed, data, vocabulary_size)
            rows.append(row)
            if method == "cgap" and FLAGS.export and export is None:
                export = export_tflite(final, data["test"][0])
                print(f"sparse TFLite export of the C-GaP model: {export}", flush=True)
    summary = summarize(rows)
    print(table(summary))
    if FLAGS.output_dir:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                        "benchmarks"))
        import _common
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        result = {"rows": rows, "summary": summary, "tflite_export": export,
                  "data": {"source": "Debian package fortunes", "topics": list(TOPICS),
                           "license": kg.datasets.FORTUNES_LICENSE,
                           "sizes": {s: len(y) for s, (_, y) in data.items()}},
                  "provenance": _common.provenance()}
        path = os.path.join(FLAGS.output_dir, "gap_kerashub.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, path)
        prov = result["provenance"]
        md = (f"# C-GaP on a KerasHub BertTextClassifier (fortunes topics)\n\n"
              f"`python examples/gap_kerashub.py {' '.join(sys.argv[1:])}`; commit "
              f"{_common.commit_label(prov)}, {prov['backend']} backend, {prov['date']}, "
              f"{prov['machine'].get('logical_cores', '?')} logical cores. {FLAGS.epochs} epochs for every "
              f"method, target sparsity {FLAGS.sparsity} of the blocks' attention and FFN "
              f"kernels (pooler and classifier dense). Data: {result['data']['sizes']}.\n\n"
              + table(summary) + f"\n\nSparse TFLite export of the C-GaP model: {export}\n")
        with open(os.path.join(FLAGS.output_dir, "gap_kerashub.md"), "w") as f:
            f.write(md)
        print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
