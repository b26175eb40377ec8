"""Growing networks vs dense, channel GMP / C-GaP at the same MACs, unstructured C-GaP.

One run, same data and epoch budget for every method: the search space is a
ResNet-style CNN on Fashion-MNIST (stride-2 stem, three stages of
``--blocks`` basic blocks with 16 / 32 / 64 filters; the builder of
examples/growing_resnet.py), trained with Adam and a cosine learning rate by

* ``dense``: the full space;
* ``growing``: ``kg.growing.add_gates(space, seed_channels=0.25, seed_blocks=1,
  target=Budget(flops=b))`` + ``GrowingCallback(final_temperature=200)`` (the
  library's default ``freeze_fraction``, 0.3, unless ``--freeze_fraction``), then
  ``kg.growing.finalize``, at b = 50% and 25%;
* ``gmp`` / ``cgap``: channel GMP and channel C-GaP (benchmarks/structured.py's
  set-up) with the channel fraction chosen so that the materialized MACs match
  growing at 50% (``s = 1 - sqrt(r)``, r = growing's measured MACs ratio;
  the table gives the MACs each reached);
* ``cgap_unstructured``: unstructured C-GaP at 90% sparsity with
  benchmarks/gap_vs_baselines.py's recipe (stem conv and classifier left dense,
  3 partitions, 2 rounds over 3/4 of the steps; reference: its MACs are the
  dense ones, its non-zero MACs lower).

Columns: test accuracy (validation images held out from the training split
too), final parameters and MACs (``kg.flops_report``), training MACs relative
to dense training (growing: ``GrowingCallback``'s ``train_flops``, the expected
MACs of the sampled networks; the others: ``kg.TrainingCost``), and TFLite
float32 latency (one thread, batch 1) of the materialized model.

Goals (issue 22): at 50% FLOPs growing is within 1.0 point of dense and at
most 0.3 points under channel GMP at the same MACs; training MACs <= 0.6x
dense; TFLite speed-up >= 0.75 of the MAC reduction; at 25% within 2.5 points
of dense.

Runs are cached one per line in ``<output_dir>/<results_name>_runs.jsonl``
(with their provenance and, for the first seed, the TFLite latency), seed by
seed (every method of seed 0, then seed 1, ...), so a long run can be stopped
and resumed: a run is skipped when the cache holds one of the same label and
seed from the same code and RESULT_FLAGS (``--reuse_from``, as in
gap_vs_baselines.py). The results files summarize the cached runs and say
which planned runs are missing (a partial table).

Latency: by default each model is timed once, right after its training; on a
shared machine the load changes between runs. ``--retime`` re-trains the first
seed's runs (checking the weights bit for bit against the cache), exports them
and times all of them interleaved (``--latency_rounds`` rounds, each model once
per round, in a rotating order), and records each model's layer widths; the
tables then use those medians (``<name>_latency.json``).

This script shares benchmarks/structured.py's data and training flags
(--train_images, --val_images, --test_images, --epochs, --seeds,
--batch_size, --learning_rate, --latency_runs, --quick, --output_dir;
benchmarks/_common.py) and its channel GMP / C-GaP set-up (benchmarks/_models.py).

Usage:
    KERAS_BACKEND=tensorflow python benchmarks/growing.py --seeds 3 --epochs 10 \
        --train_images 6000
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
flags.DEFINE_float("freeze_fraction", None, "growing: GrowingCallback(freeze_fraction=) "
                   "(None: the library default)")
flags.DEFINE_bool("baselines", True, "also run channel GMP / C-GaP and unstructured C-GaP")
flags.DEFINE_bool("unstructured", True, "also run unstructured C-GaP (90%)")
flags.DEFINE_string("results_name", "growing", "stem of the results files (<name>.json/.md; "
                    "runs cached in <name>_runs.jsonl)")
flags.DEFINE_enum("reuse_from", "commit", ["commit", "flags", "any"],
                  "which cached runs count (to skip and to summarize): 'commit': same git "
                  "commit and uncommitted changes, versions, backend and RESULT_FLAGS; "
                  "'flags': any commit, same RESULT_FLAGS and backend; 'any': every row")
flags.DEFINE_bool("report_only", False, "only summarize the cached runs")
flags.DEFINE_bool("retime", False, "re-train the first seed's cached runs (the weights' sha1 "
                  "is checked against the cache: training is deterministic) and time their "
                  "TFLite models interleaved, --latency_rounds rounds of --latency_runs runs "
                  "each; writes <name>_latency.json, which the tables then use")
flags.DEFINE_integer("latency_rounds", 7, "--retime: rounds over all models (the reported "
                     "latency is the median of a model's round medians)")

# The flags that change a run's numbers besides its key (label, seed).
RESULT_FLAGS = ("train_images", "val_images", "test_images", "epochs", "batch_size",
                "learning_rate", "blocks", "seed_channels", "final_temperature",
                "freeze_fraction")
UNSTRUCTURED_KEEP_DENSE = ("stem_conv", "logits")  # the GaP benchmark's recipe


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
        extra = ({} if FLAGS.freeze_fraction is None
                 else {"freeze_fraction": FLAGS.freeze_fraction})
        callbacks = [kg.growing.GrowingCallback(final_temperature=FLAGS.final_temperature,
                                                **extra)]
    elif method == "cgap_unstructured":
        # benchmarks/gap_vs_baselines.py's recipe: stem conv and classifier dense, 3
        # partitions, 2 rounds over 3/4 of the steps, then fine-tuning; optimizer
        # slots reset at every boundary.
        per_step = max(int(0.75 * steps) // 6, 1)
        model = kg.prune_gap(space, target_sparsity=sparsity, num_partitions=3, rounds=2,
                             steps_per_step=per_step, finetune_steps=steps - 6 * per_step,
                             keep_dense=UNSTRUCTURED_KEEP_DENSE, seed=seed)
        callbacks = [kg.GaPCallback(reset_optimizer="all", verbose=0), cost]
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
        f"{cfg['seeds']} seed(s) planned. Growing: seed {cfg['seed_channels']:.0%} of the "
        f"channels and 1 block per stage, final temperature {cfg['final_temperature']:g}, "
        "freeze_fraction "
        + ("library default" if cfg.get("freeze_fraction") is None
           else f"{cfg['freeze_fraction']:g}") + ". "
        + (f"GMP / C-GaP: channel fraction {cfg['matched_sparsity']:.3f} (s = 1 - "
           "sqrt(MACs ratio of the first seed's growing run at the first budget)). "
           if cfg["matched_sparsity"] == cfg["matched_sparsity"] else "") +
        "Unstructured C-GaP: benchmarks/gap_vs_baselines.py's recipe (stem conv and "
        "classifier dense, 3 partitions, 2 rounds over 3/4 of the steps, then fine-tuning; "
        "90% over the other layers). " +
        "Accuracy and MACs are the materialized model's; TFLite latency: one thread, "
        f"batch 1, seed {cfg.get('first_seed', 0)}'s model, "
        + (f"the median of {result['retimed']['latency_rounds']} interleaved rounds' medians "
           f"of {result['retimed']['latency_runs']} runs (--retime: the models re-trained, "
           "weights identical to the cached runs' "
           + ("for every model" if all(m["weights_match_cache"]
                                       for m in result["retimed"]["models"].values())
              else "NOT for every model: see the JSON") + ")"
           if result.get("retimed") else
           f"the median of {cfg['latency_runs']} runs right after its training") +
        f". Total wall time {result['wall_minutes']:.1f} min (this invocation).", "",
        _common.provenance_line([r.get("provenance") for r in result["rows"]]), ""]
    if result.get("missing"):
        lines += [f"**PARTIAL**: {len(result['missing'])} planned run(s) not done yet: "
                  + ", ".join(result["missing"]) + ". Means are over the seeds done (column "
                  "n).", ""]
    lines += [
        "| method | n | test acc (mean ± std) | vs dense | val acc | params | MACs "
        "| MACs vs dense | train MACs vs dense | TFLite ms | TFLite speed-up "
        "| speed-up / MAC reduction |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["summary"]:
        macs = f"{e['macs_ratio']:.2f}"
        if e["label"].startswith("cgap_unstructured"):
            macs += f" (non-zero {e['nonzero_macs_ratio']:.2f})"
        lines.append(
            f"| {e['label']} | {e['seeds']} "
            f"| {e['test_accuracy_mean']:.4f} ± {e['test_accuracy_std']:.4f} "
            f"| {e['accuracy_vs_dense'] * 100:+.2f} pts | {e['val_accuracy_mean']:.4f} "
            f"| {e['params_mean']:,.0f} | {e['macs_mean'] / 1e6:.2f}M | {macs} "
            f"| {e['train_macs_ratio']:.2f} "
            + (f"| {e['tflite_ms']:.3f} | {e['tflite_speedup']:.2f}x "
               f"| {e['tflite_speedup'] * e['macs_ratio']:.2f} |" if "tflite_ms" in e
               else "| | | |"))
    if result.get("retimed"):
        lines += ["", f"TFLite latency per round (--retime, seed {result['retimed']['seed']}; "
                  "ms, median of each round) and the materialized layer widths (output "
                  "channels of each Conv2D / Dense layer, in model order):", "",
                  "| method | round medians (ms) | widths |", "|---|---|---|"]
        for label, m in result["retimed"]["models"].items():
            lines.append(f"| {label} | "
                         + ", ".join(f"{t:.3f}" for t in m["tflite"]["round_medians_ms"])
                         + " | " + " ".join(str(w) for w in m["widths"].values()) + " |")
    lines += ["", "Goals (issue 22; test accuracy, mean over seeds, same epochs for every "
              "method): growing at 50% within 1.0 point of dense and >= channel GMP - 0.3 "
              "points at the same MACs; training MACs <= 0.6x dense; TFLite speed-up >= 0.75 "
              "of the MAC reduction (last column >= 0.75); growing at 25% within 2.5 points "
              "of dense."]
    return "\n".join(lines) + "\n"


def load_cache(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def result_flags(prov):
    values = (prov or {}).get("flags")
    return None if values is None else {k: values.get(k) for k in RESULT_FLAGS}


def reusable(row, current):
    """Whether a cached row stands for a run of this invocation (``--reuse_from``)."""
    prov = row.get("provenance")
    if FLAGS.reuse_from == "any":
        return True
    if prov is None or prov.get("backend") != current["backend"]:
        return False
    if result_flags(prov) != result_flags(current):
        return False
    if FLAGS.reuse_from == "flags":
        return True
    versions = ("keras", "tensorflow", "jax")
    return (_common.code_key(prov) == _common.code_key(current)
            and all(prov["versions"].get(k) == current["versions"].get(k) for k in versions))


def plan(budgets, matched, seeds):
    """(label, method, kwargs) of every run, seed-major (a partial cache compares every
    method on the same seeds)."""
    configs = [("dense", "dense", {})]
    configs += [(f"growing_{b:g}", "growing", {"budget": b}) for b in budgets]
    if FLAGS.baselines and matched is not None:
        configs += [(f"gmp_{matched:g}", "gmp", {"sparsity": matched}),
                    (f"cgap_{matched:g}", "cgap", {"sparsity": matched})]
    if FLAGS.baselines and FLAGS.unstructured:
        configs.append(("cgap_unstructured_0.9", "cgap_unstructured", {"sparsity": 0.9}))
    return [(seed, c) for seed in seeds for c in configs]


def layer_widths(model):
    """{layer name: output channels} of the Conv2D / Dense layers of ``model``."""
    import keras
    return {layer.name: int(layer.kernel.shape[-1]) for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))}


def retime(rows, data, x1, x64, workdir, out_path):
    """Interleaved TFLite latency of the first seed's models (see --retime)."""
    import keras

    import keras_gap as kg
    first_rows = {r["label"]: r for r in rows if r["seed"] == FLAGS.first_seed}
    labels = [label for _, (label, _, _) in plan([float(b) for b in FLAGS.budgets],
                                                 _matched(rows), [FLAGS.first_seed])
              if label in first_rows]
    configs = {label: (method, kw) for _, (label, method, kw) in
               plan([float(b) for b in FLAGS.budgets], _matched(rows), [FLAGS.first_seed])}
    paths, info = {}, {}
    for label in labels:
        method, kw = configs[label]
        row, final = train(method, FLAGS.first_seed, data, **kw)
        cached = first_rows[label]
        paths[label] = os.path.join(workdir, label + ".tflite")
        kg.export.to_tflite(final, paths[label], sparse=False, sample_inputs=x64[:8])
        info[label] = {"weights_match_cache": row["weights"] == cached["weights"],
                       "test_accuracy": row["test_accuracy"], "macs": row["macs"],
                       "widths": layer_widths(final)}
        print(f"retime: {label} re-trained, weights match the cache: "
              f"{info[label]['weights_match_cache']}", flush=True)
        keras.backend.clear_session()
    rounds = {label: [] for label in labels}
    for k in range(FLAGS.latency_rounds):
        order = labels[k % len(labels):] + labels[:k % len(labels)]
        for label in order:
            rounds[label].append(time_tflite(paths[label], x1, FLAGS.latency_runs))
    for label in labels:
        medians = [t["median_ms"] for t in rounds[label]]
        info[label]["tflite"] = dict(rounds[label][0], median_ms=statistics.median(medians),
                                     p10_ms=min(t["p10_ms"] for t in rounds[label]),
                                     p90_ms=max(t["p90_ms"] for t in rounds[label]),
                                     round_medians_ms=medians, rounds=FLAGS.latency_rounds)
        print(f"retime: {label} {statistics.median(medians):.4f} ms (round medians "
              f"{min(medians):.4f}-{max(medians):.4f})", flush=True)
    out = {"provenance": _common.provenance(), "seed": FLAGS.first_seed,
           "latency_rounds": FLAGS.latency_rounds, "latency_runs": FLAGS.latency_runs,
           "models": info}
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2, default=float)
    return out


def _matched(rows):
    """GMP / C-GaP channel fraction from the lowest seed's growing run at the first
    budget (so that every seed's baseline is the same); None before that run."""
    first = sorted((r for r in rows if r["label"] == f"growing_{float(FLAGS.budgets[0]):g}"),
                   key=lambda r: r["seed"])
    if not first or not any(r["label"] == "dense" for r in rows):
        return None
    dense_macs = next(r["macs"] for r in rows if r["label"] == "dense")
    ratio = first[0]["macs"] / dense_macs
    return round(min(max(1 - math.sqrt(ratio), 0.05), 0.95), 3)


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
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    stem = os.path.join(FLAGS.output_dir, FLAGS.results_name)
    cache_path = stem + "_runs.jsonl"
    rows = [r for r in load_cache(cache_path) if reusable(r, prov)]
    print(f"code: {_common.commit_label(prov)}; {len(rows)} cached run(s) reused from "
          f"{cache_path} (--reuse_from={FLAGS.reuse_from})", flush=True)
    data = fashion_splits(FLAGS.train_images, FLAGS.val_images, FLAGS.test_images)
    xt = data[2][0]
    x1, x64 = xt[:1].astype("float32"), xt[:64].astype("float32")
    budgets = [float(b) for b in FLAGS.budgets]
    seeds = list(range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds))

    def matched_sparsity():
        return _matched(rows)

    with tempfile.TemporaryDirectory(prefix="kg_growing_") as workdir:
        # growing first (the baselines' channel fraction matches its MACs), then the rest
        latency_path = stem + "_latency.json"
        if FLAGS.retime:
            retime(rows, data, x1, x64, workdir, latency_path)
        while not FLAGS.report_only and not FLAGS.retime:
            done = {(r["label"], r["seed"]) for r in rows}
            todo = [(seed, c) for seed, c in plan(budgets, matched_sparsity(), seeds)
                    if (c[0], seed) not in done]
            if not todo:
                break
            # the matched baselines need growing's MACs from the first seed's run
            seed, (label, method, kw) = todo[0]
            row, final = train(method, seed, data, **kw)
            row["label"] = label
            if seed == FLAGS.first_seed:
                path = os.path.join(workdir, label + ".tflite")
                kg.export.to_tflite(final, path, sparse=False, sample_inputs=x64[:8])
                row["tflite"] = time_tflite(path, x1, FLAGS.latency_runs)
            row["provenance"] = _common.provenance()
            row["command"] = "python " + " ".join(sys.argv)
            rows.append(row)
            with open(cache_path, "a") as f:
                f.write(json.dumps(row, default=float) + "\n")
            print(f"{label:22s} seed {seed}: test {row['test_accuracy']:.4f} val "
                  f"{row['val_accuracy']:.4f} params {row['params']:,} MACs {row['macs']:,} "
                  f"train MACs {row['train_macs_ratio']:.2f}x ({row['train_seconds']} s)",
                  flush=True)
            keras.backend.clear_session()
    if not any(r["label"] == "dense" for r in rows):
        sys.exit(f"no dense run in {cache_path}: nothing to compare with")
    matched = matched_sparsity()
    planned = plan(budgets, matched, seeds)
    have = {(r["label"], r["seed"]) for r in rows}
    missing = [f"{label} seed {seed}" for seed, (label, _, _) in planned
               if (label, seed) not in have]
    lat = {r["label"]: r["tflite"] for r in rows
           if r.get("tflite") and r["seed"] == FLAGS.first_seed}
    retimed = None
    if os.path.exists(latency_path):
        with open(latency_path) as f:
            retimed = json.load(f)
        if retimed.get("seed") == FLAGS.first_seed:
            lat.update({label: m["tflite"] for label, m in retimed["models"].items()})
        else:
            retimed = None
    result = {"date": prov["date"], "provenance": prov, "machine": machine_info(),
              "keras": keras.__version__,
              "backend": keras.backend.backend(), "keras_gap": kg.__version__,
              "config": {"train_images": FLAGS.train_images, "val_images": FLAGS.val_images,
                         "test_images": len(xt), "epochs": FLAGS.epochs,
                         "batch_size": FLAGS.batch_size, "seeds": FLAGS.seeds,
                         "learning_rate": FLAGS.learning_rate, "blocks": FLAGS.blocks,
                         "budgets": budgets, "seed_channels": FLAGS.seed_channels,
                         "final_temperature": FLAGS.final_temperature,
                         "freeze_fraction": FLAGS.freeze_fraction,
                         "matched_sparsity": matched if matched is not None else float("nan"),
                         "first_seed": FLAGS.first_seed, "latency_runs": FLAGS.latency_runs,
                         "quick": FLAGS.quick},
              "missing": missing, "rows": rows, "latency": lat, "retimed": retimed,
              "summary": summarize(rows, lat),
              "wall_minutes": (time.perf_counter() - start) / 60}
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2, default=float)
    with open(stem + ".md", "w") as f:
        f.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    app.run(main)
