"""Growing networks vs dense, channel GMP / C-GaP at the same MACs, unstructured C-GaP.

One run, same data and epoch budget for every method: the search space is a
ResNet-style CNN on Fashion-MNIST (stride-2 stem, three stages of
``--blocks`` basic blocks with 16 / 32 / 64 filters; the builder of
examples/growing_resnet.py), trained with Adam and a cosine learning rate by

* ``dense``: the full space;
* ``growing``: ``kg.growing.add_gates(space, seed_channels=0.25, seed_blocks=1,
  target=Budget(flops=b))`` + ``GrowingCallback(final_temperature=200)``, then
  ``kg.growing.finalize``, at b = 50% and 25%;
* ``gmp`` / ``cgap``: channel GMP and channel C-GaP (benchmarks/structured.py's
  set-up) with the channel fraction chosen so that the materialized MACs match
  growing at 50% (``s = 1 - sqrt(r)``, r = growing's measured MACs ratio;
  the table gives the MACs each reached);
* ``cgap_unstructured``: unstructured C-GaP at 90% sparsity (reference; its
  MACs are the dense ones, its non-zero MACs 10%).

Columns: test accuracy (validation images held out from the training split
too), final parameters and MACs (``kg.flops_report``), training MACs relative
to dense training (growing: ``GrowingCallback``'s ``train_flops``, the expected
MACs of the sampled networks; the others: ``kg.TrainingCost``), and TFLite
float32 latency (one thread, batch 1) of the materialized model.

Goals (issue 10): at 50% FLOPs growing is within 1 point of dense and at
least as accurate as channel GMP at the same MACs; training MACs <= 0.6x dense;
materialized latency >= 1.7x faster than dense.

This script shares benchmarks/structured.py's data and training flags
(--train_images, --val_images, --test_images, --epochs, --seeds,
--batch_size, --learning_rate, --latency_runs, --quick, --output_dir;
benchmarks/_common.py) and its channel GMP / C-GaP set-up (benchmarks/_models.py).

Usage:
    KERAS_BACKEND=tensorflow python benchmarks/growing.py --seeds 2 --train_images 6000
    python benchmarks/growing.py --quick --output_dir /tmp/growing

Writes benchmarks/results/growing.{json,md} (``--results_name`` for another stem).
"""

import json
import math
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

from absl import app, flags  # noqa: E402

import _common  # noqa: E402
from _machine import machine_info  # noqa: E402
from _models import PRUNE_FRACTION, accuracy, channel_pruned, fashion_splits  # noqa: E402
from _timing import time_tflite  # noqa: E402
from growing_resnet import build_space  # noqa: E402

FLAGS = flags.FLAGS
_common.define_fashion_training_flags(
    "smoke test: one seed, 256 images, 2 epochs (flags given on the command line override "
    "these sizes)")
flags.DEFINE_list("budgets", ["0.5", "0.25"], "growing FLOPs budgets")
flags.DEFINE_float("seed_channels", 0.25, "growing: channels on at the start")
flags.DEFINE_integer("blocks", 2, "residual blocks per stage of the space")
flags.DEFINE_float("final_temperature", 200.0, "growing: final gate temperature")
flags.DEFINE_bool("baselines", True, "also run channel GMP / C-GaP and unstructured C-GaP")
flags.DEFINE_string("results_name", "growing", "stem of the results files (<name>.json/.md)")


def train(method, seed, data, budget=None, sparsity=None):
    import keras

    import keras_gap as kg

    (x, y), (xv, yv), (xt, yt) = data
    _common.set_seed(seed)  # initializers and fit's shuffling
    steps = -(-len(x) // FLAGS.batch_size) * FLAGS.epochs
    space = build_space(blocks=FLAGS.blocks)
    callbacks, cost = [], kg.TrainingCost()
    if method == "growing":
        model = kg.growing.add_gates(space, seed_channels=FLAGS.seed_channels, seed_blocks=1,
                                     target=kg.growing.Budget(flops=budget), seed=seed)
        callbacks = [kg.growing.GrowingCallback(final_temperature=FLAGS.final_temperature)]
    elif method == "cgap_unstructured":
        per_step = max(int(PRUNE_FRACTION * steps) // 4, 1)
        model = kg.prune_gap(space, target_sparsity=sparsity, num_partitions=2, rounds=2,
                             steps_per_step=per_step, finetune_steps=steps - 4 * per_step,
                             seed=seed)
        callbacks = [kg.GaPCallback(verbose=0), cost]
    else:
        model, callbacks = channel_pruned(space, method, sparsity, steps, seed)
        callbacks = callbacks + [cost]
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        FLAGS.learning_rate, steps)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.perf_counter()
    history = model.fit(x, y, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, verbose=0,
                        shuffle=True, callbacks=callbacks)
    seconds = time.perf_counter() - t0
    if method == "growing":
        final = kg.growing.finalize(model)
        train_ratio = history.history["train_flops"][-1]
    elif method == "dense":
        final, train_ratio = model, cost.relative
    else:
        final, train_ratio = kg.materialize(kg.strip_pruning(model)), cost.relative
    flops = kg.flops_report(final)
    row = {"method": method, "budget": budget, "sparsity": sparsity, "seed": seed,
           "test_accuracy": accuracy(final, xt, yt),
           "val_accuracy": accuracy(final, xv, yv),
           "params": final.count_params(), "macs": flops.macs,
           "nonzero_macs": flops.nonzero_macs, "train_macs_ratio": train_ratio,
           "train_seconds": round(seconds, 1), "weights": _common.weights_fingerprint(final)}
    if method == "growing":
        row["history"] = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    return row, final


def summarize(rows, lat):
    groups = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    dense = groups["dense"]
    dense_acc = statistics.mean(r["test_accuracy"] for r in dense)
    dense_macs = dense[0]["macs"]
    out = []
    for label, rs in groups.items():
        acc = [r["test_accuracy"] for r in rs]
        entry = {"label": label, "seeds": len(rs),
                 "test_accuracy_mean": statistics.mean(acc),
                 "test_accuracy_std": statistics.pstdev(acc),
                 "val_accuracy_mean": statistics.mean(r["val_accuracy"] for r in rs),
                 "accuracy_vs_dense": statistics.mean(acc) - dense_acc,
                 "params_mean": statistics.mean(r["params"] for r in rs),
                 "macs_mean": statistics.mean(r["macs"] for r in rs),
                 "macs_ratio": statistics.mean(r["macs"] for r in rs) / dense_macs,
                 "nonzero_macs_ratio": statistics.mean(r["nonzero_macs"] for r in rs)
                 / dense_macs,
                 "train_macs_ratio": statistics.mean(r["train_macs_ratio"] for r in rs)}
        if label in lat:
            entry["tflite_ms"] = lat[label]["median_ms"]
            entry["tflite_speedup"] = lat["dense"]["median_ms"] / lat[label]["median_ms"]
        out.append(entry)
    return out


def markdown(result):
    m, cfg = result["machine"], result["config"]
    lines = [
        "# Growing networks vs dense, channel GMP / C-GaP and unstructured C-GaP", "",
        f"{result['date']}, {m['cpu']} ({m['logical_cores']} logical cores, load average "
        f"at start {m['load_average_at_start']}; shared with other jobs), Keras "
        f"{result['keras']}, backend {result['backend']}. Search space: ResNet-style CNN "
        f"(16/32/64 filters, {cfg['blocks']} blocks per stage) on Fashion-MNIST: "
        f"{cfg['train_images']:,} training images, {cfg['val_images']:,} validation images "
        f"held out, {cfg['test_images']:,} test images; {cfg['epochs']} epochs at batch "
        f"{cfg['batch_size']} for every method (a reduced budget: 2 shared CPU cores), "
        f"{cfg['seeds']} seed(s). Growing: seed {cfg['seed_channels']:.0%} of the channels and "
        "1 block per stage, final temperature 200. "
        + (f"GMP / C-GaP: channel fraction {cfg['matched_sparsity']:.2f} (s = 1 - "
           "sqrt(MACs ratio of growing at the first budget)). "
           if cfg["matched_sparsity"] == cfg["matched_sparsity"] else "") +
        "Accuracy and MACs are the materialized model's; TFLite latency is the median of "
        f"{cfg['latency_runs']} runs (one thread, batch 1, seed "
        f"{cfg.get('first_seed', 0)}'s model). Total wall time "
        f"{result['wall_minutes']:.1f} min.", "",
        _common.provenance_line(result.get("provenance")), "",
        "| method | test acc (mean ± std) | vs dense | val acc | params | MACs | MACs vs dense "
        "| train MACs vs dense | TFLite ms | TFLite speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["summary"]:
        macs = f"{e['macs_ratio']:.2f}"
        if e["label"].startswith("cgap_unstructured"):
            macs += f" (non-zero {e['nonzero_macs_ratio']:.2f})"
        lines.append(
            f"| {e['label']} | {e['test_accuracy_mean']:.4f} ± {e['test_accuracy_std']:.4f} "
            f"| {e['accuracy_vs_dense'] * 100:+.2f} pts | {e['val_accuracy_mean']:.4f} "
            f"| {e['params_mean']:,.0f} | {e['macs_mean'] / 1e6:.2f}M | {macs} "
            f"| {e['train_macs_ratio']:.2f} "
            + (f"| {e['tflite_ms']:.3f} | {e['tflite_speedup']:.2f}x |" if "tflite_ms" in e
               else "| | |"))
    lines += ["", "Goals: growing at 50% within 1 point of dense and >= channel GMP at the "
              "same MACs; training MACs <= 0.6x dense; TFLite speed-up >= 1.7x."]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    import keras

    import keras_gap as kg
    from keras_gap import console
    console.quiet_third_party()

    if FLAGS.quick:
        _common.apply_quick({"seeds": 1, "train_images": 256, "val_images": 128,
                             "test_images": 256, "epochs": 2, "latency_runs": 10})
    start = time.perf_counter()
    prov = _common.provenance()
    data = fashion_splits(FLAGS.train_images, FLAGS.val_images, FLAGS.test_images)
    xt = data[2][0]
    x1, x64 = xt[:1].astype("float32"), xt[:64].astype("float32")
    rows, lat = [], {}
    budgets = [float(b) for b in FLAGS.budgets]
    matched = None

    with tempfile.TemporaryDirectory(prefix="kg_growing_") as workdir:
        def run(label, method, **kw):
            for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
                row, final = train(method, seed, data, **kw)
                row["label"] = label
                rows.append(row)
                print(f"{label:22s} seed {seed}: test {row['test_accuracy']:.4f} params "
                      f"{row['params']:,} MACs {row['macs']:,} train MACs "
                      f"{row['train_macs_ratio']:.2f}x ({row['train_seconds']} s)", flush=True)
                if seed == FLAGS.first_seed:
                    path = os.path.join(workdir, label + ".tflite")
                    kg.export.to_tflite(final, path, sparse=False, sample_inputs=x64[:8])
                    lat[label] = time_tflite(path, x1, FLAGS.latency_runs)
                keras.backend.clear_session()

        run("dense", "dense")
        dense_macs = rows[0]["macs"]
        for b in budgets:
            run(f"growing_{b:g}", "growing", budget=b)
        if FLAGS.baselines:
            first = [r for r in rows if r["label"] == f"growing_{budgets[0]:g}"]
            ratio = statistics.mean(r["macs"] for r in first) / dense_macs
            matched = round(min(max(1 - math.sqrt(ratio), 0.05), 0.95), 3)
            run(f"gmp_{matched:g}", "gmp", sparsity=matched)
            run(f"cgap_{matched:g}", "cgap", sparsity=matched)
            run("cgap_unstructured_0.9", "cgap_unstructured", sparsity=0.9)
    result = {"date": prov["date"], "provenance": prov, "machine": machine_info(),
              "keras": keras.__version__,
              "backend": keras.backend.backend(), "keras_gap": kg.__version__,
              "config": {"train_images": FLAGS.train_images, "val_images": FLAGS.val_images,
                         "test_images": len(xt), "epochs": FLAGS.epochs,
                         "batch_size": FLAGS.batch_size, "seeds": FLAGS.seeds,
                         "learning_rate": FLAGS.learning_rate, "blocks": FLAGS.blocks,
                         "budgets": budgets, "seed_channels": FLAGS.seed_channels,
                         "matched_sparsity": matched if matched is not None else float("nan"),
                         "first_seed": FLAGS.first_seed, "latency_runs": FLAGS.latency_runs,
                         "quick": FLAGS.quick},
              "rows": rows, "latency": lat, "summary": summarize(rows, lat),
              "wall_minutes": (time.perf_counter() - start) / 60}
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, FLAGS.results_name + ".json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
    with open(os.path.join(FLAGS.output_dir, FLAGS.results_name + ".md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    app.run(main)
