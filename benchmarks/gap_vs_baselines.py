"""Dense vs gradual magnitude pruning (GMP) vs C-GaP vs P-GaP on real Fashion-MNIST.

Every method gets the same epoch budget, the same CNN, the same data and the
same optimizer (Adam, peak learning rate 2e-3); sparsity is over the prunable
layers (first conv and classifier kept dense for every pruning method).

Variants (``--variants``), ``method[+global][+fresh]``:
  dense, gmp: baselines (cosine decay of the learning rate over the budget).
  gmp+global: GMP with ``scope="global"`` (one magnitude threshold over every
      pruned layer: the non-uniform baseline for cgap+global).
  cgap, pgap: GaP, uniform per-layer sparsity, ``reset_optimizer="all"``
      (slots zeroed at each boundary, step counter running) and one cosine
      decay over the whole budget.
  +global: ``distribution="global"``: at each prune-back one magnitude
      threshold over every pruned layer (non-uniform per-layer ratios, the
      paper's non-uniform setting).
  +erk: non-uniform per-layer ratios fixed at the start (``distribution="erk"``).
  +fresh+hot: the same restart with a hotter per-step peak (``--hot_factor`` x
      the peak learning rate): the documented form of the boost "all" gets from
      Adam's bias correction.
  +fresh: the paper's restart: ``reset_optimizer="fresh"`` (a new optimizer at
      every boundary) and ``step_lr=StepLR(2e-3, warmup=0.1)``, a cosine
      learning-rate schedule restarted at every GaP step and over fine-tuning.

Every run reports accuracy on a validation split held out from the training
images (for choosing a setting) and on the test set (reported, never used to
choose). Runs are cached one per line in ``<output_dir>/<results_name>_runs.jsonl``
so a long grid can be run in parts (several invocations with different
``--epochs``) and summarized at the end; ``--report_only`` just writes the
summary (benchmarks/results/gap_vs_baselines.{json,md,png}).

Every cached run records its provenance (git commit and uncommitted changes,
versions, backend, date, every flag, machine; benchmarks/_common.py). A run is
reused (not rerun, and summarized) only if it comes from the same commit, the
same uncommitted changes, versions, backend and ``RESULT_FLAGS``
(``--reuse_from=commit``, the default); ``--reuse_from=flags`` drops the
commit condition and ``--reuse_from=any`` takes every cached run, also the
rows written before provenance was recorded (their commit is unknown). The
results files name the commit(s) their runs came from.

Run:
    python benchmarks/gap_vs_baselines.py --epochs 8,24     # the full grid (hours)
    python benchmarks/gap_vs_baselines.py --quick           # smoke test (a minute)
    # the committed grid, summarized again (runs from before provenance):
    python benchmarks/gap_vs_baselines.py --report_only --reuse_from=any
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

import _common  # noqa: E402
from _machine import cpu_name  # noqa: E402
from _models import KEEP_DENSE, fashion_cnn as build_cnn  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Tiny run for smoke testing (not cached with real runs; "
                  "flags given on the command line override its sizes).")
flags.DEFINE_integer("train_size", 15000, "Training examples (a fixed slice of the 60k).")
flags.DEFINE_integer("val_size", 5000, "Validation examples, the next slice of the 60k "
                     "training images (held out; used to choose settings).")
flags.DEFINE_list("epochs", ["8"], "Epoch budgets (every method gets each budget).")
flags.DEFINE_list("sparsities", ["0.8", "0.9"], "Target sparsities.")
flags.DEFINE_list("variants", ["gmp", "cgap", "cgap+fresh", "cgap+global",
                               "cgap+global+fresh", "pgap"],
                  "Pruning variants: method[+global][+fresh] (see the module docstring).")
flags.DEFINE_bool("dense", True, "Also train the dense baseline.")
flags.DEFINE_integer("seeds", 3, "Seeds per configuration (seeds 0..N-1).")
flags.DEFINE_integer("first_seed", 0, "First seed (to add seeds to a cached grid).")
flags.DEFINE_integer("partitions", 3, "GaP partitions.")
flags.DEFINE_integer("rounds", 2, "GaP rounds.")
flags.DEFINE_float("peak_lr", 2e-3, "Peak learning rate of every method.")
flags.DEFINE_float("warmup", 0.1, "+fresh: warmup fraction of each GaP step.")
flags.DEFINE_float("hot_factor", 3.0, "+fresh+hot: StepLR's peak is this many times "
                   "--peak_lr (a warm restart hotter than the base schedule).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_bool("report_only", False, "Only summarize the cached runs.")
flags.DEFINE_string("output_dir", os.path.join(os.path.dirname(__file__), "results"),
                    "Where results are written.")
flags.DEFINE_string("results_name", "gap_vs_baselines",
                    "Stem of the results files: <stem>_runs.jsonl (the run cache), "
                    "<stem>.{json,md,png} (a fresh name starts a fresh cache).")
flags.DEFINE_enum("reuse_from", "commit", ["commit", "flags", "any"],
                  "Which cached runs count (to skip and to summarize): 'commit': only runs "
                  "of this git commit (and the same uncommitted changes), the same keras / "
                  "tensorflow / jax versions, backend and RESULT_FLAGS; 'flags': any commit "
                  "but the same RESULT_FLAGS and backend; 'any': every cached run, also "
                  "rows written before provenance was recorded (commit unknown).")

# The flags that change a run's numbers besides its key (variant, target, seed, epochs).
RESULT_FLAGS = ("train_size", "val_size", "batch_size", "partitions", "rounds", "peak_lr",
                "warmup", "hot_factor")


def parse_variant(variant):
    """"cgap+global+fresh" -> ("cgap", "global", True)."""
    method, *options = variant.split("+")
    unknown = set(options) - {"global", "erk", "fresh", "hot"}
    if method not in ("dense", "gmp", "cgap", "pgap") or unknown or (
            method == "dense" and options) or (
            method == "gmp" and set(options) - {"global"}) or ("hot" in options
                                                                and "fresh" not in options):
        raise app.UsageError(f"Unknown variant {variant!r}: expected dense, gmp "
                             "(+global), or cgap/pgap with optional +global or +erk, and "
                             "+fresh (+fresh+hot).")
    distribution = next((o for o in options if o in ("global", "erk")), "uniform")
    return method, distribution, "fresh" in options, "hot" in options


def prepare(variant, sparsity, steps_per_epoch, epochs, seed):
    """Returns (model ready to compile, callbacks, optimizer) for one variant."""
    import keras
    import keras_gap as kg
    method, distribution, fresh, hot = parse_variant(variant)
    total = epochs * steps_per_epoch
    cosine = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(FLAGS.peak_lr, total))
    model = build_cnn()
    if method == "dense":
        return model, [], cosine
    prune_steps = int(0.75 * total)  # 3/4 sparsifying, 1/4 fine-tuning
    if method == "gmp":
        schedule = kg.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=prune_steps,
                                      frequency=max(1, steps_per_epoch // 4))
        pruned = kg.prune_low_magnitude(
            model, pruning_schedule=schedule,
            pruning_policy=lambda layer: layer.name not in KEEP_DENSE,
            scope="global" if distribution == "global" else "layer")
        return pruned, [kg.UpdatePruningStep()], cosine
    k, rounds = FLAGS.partitions, FLAGS.rounds
    steps_per_step = max(1, prune_steps // (k * rounds))
    pruned = kg.prune_gap(model, target_sparsity=sparsity, num_partitions=k,
                          steps_per_step=steps_per_step, rounds=rounds,
                          finetune_steps=total - k * rounds * steps_per_step,
                          keep_dense=KEEP_DENSE, method=method, seed=seed,
                          distribution=distribution)
    if fresh:
        peak = FLAGS.peak_lr * (FLAGS.hot_factor if hot else 1.0)
        callback = kg.GaPCallback(reset_optimizer="fresh", verbose=0,
                                  step_lr=kg.gap.StepLR(peak, warmup=FLAGS.warmup))
        return pruned, [callback], keras.optimizers.Adam(FLAGS.peak_lr)
    return pruned, [kg.GaPCallback(reset_optimizer="all", verbose=0)], cosine


def accuracy(model, x, y):
    return float((model.predict(x, batch_size=512, verbose=0).argmax(-1) == y).mean())


def run_one(variant, sparsity, seed, data, epochs):
    import keras
    import keras_gap as kg
    (x, y), (xv, yv), (xt, yt) = data
    _common.set_seed(seed)  # initializers and fit's shuffling; prune_gap gets seed too
    steps_per_epoch = -(-len(x) // FLAGS.batch_size)
    model, callbacks, optimizer = prepare(variant, sparsity, steps_per_epoch, epochs, seed)
    cost = kg.TrainingCost()  # sparse-aware training MACs relative to dense
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.time()
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=epochs, verbose=0,
              callbacks=callbacks + [cost])
    seconds = time.time() - start
    final = kg.strip_pruning(model) if variant != "dense" else model
    report = kg.sparsity_report(final)
    pruned_rows = [r for r in report.rows if r.layer not in KEEP_DENSE]
    nz = sum(r.nonzero for r in pruned_rows)
    total = sum(r.params for r in pruned_rows)
    return {"variant": variant, "target": sparsity, "seed": seed, "epochs": epochs,
            "val_accuracy": accuracy(final, xv, yv), "accuracy": accuracy(final, xt, yt),
            "sparsity_prunable": 1 - nz / total if total else 0.0,
            "sparsity_all": report.sparsity,
            "layer_sparsity": {r.layer: r.sparsity for r in pruned_rows},
            "train_macs_ratio": float(cost.relative),
            "train_seconds": seconds, "weights": _common.weights_fingerprint(final)}


def run_key(r):
    return (r["variant"], float(r["target"]), int(r["seed"]), int(r["epochs"]))


def layer_macs():
    """{layer name: MACs} of the CNN (the same for every variant)."""
    import keras_gap as kg
    return {r.layer: r.macs for r in kg.flops_report(build_cnn()).rows}


def inference_macs_ratio(run, macs):
    """Non-zero MACs of a run's final model relative to dense (every pruned
    weight's MACs scaled by its layer's density)."""
    sparsity = run.get("layer_sparsity", {})
    return sum(m * (1 - sparsity.get(name, 0.0)) for name, m in macs.items()) / sum(macs.values())


def summarize(runs):
    macs_of = layer_macs()
    table = {}
    for r in runs:
        table.setdefault((r["epochs"], r["target"], r["variant"]), []).append(r)
    out = []
    for (epochs, target, variant), rs in sorted(table.items()):
        test = [r["accuracy"] for r in rs]
        val = [r["val_accuracy"] for r in rs]
        macs = [r["train_macs_ratio"] for r in rs if r.get("train_macs_ratio") is not None]
        out.append({"variant": variant, "target": target, "epochs": epochs, "n": len(rs),
                    "mean": statistics.mean(test),
                    "std": statistics.stdev(test) if len(test) > 1 else 0.0,
                    "val_mean": statistics.mean(val),
                    "train_macs_ratio": statistics.mean(macs) if macs else None,
                    "inference_macs_ratio": statistics.mean(
                        inference_macs_ratio(r, macs_of) for r in rs),
                    "seeds": sorted(r["seed"] for r in rs)})
    return out


def write_results(runs, summary, meta, stem):
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": runs}, f, indent=2)
    lines = [f"# GaP vs baselines on Fashion-MNIST (summarized {meta['date']})", "",
             meta["provenance_line"], "",
             f"Commands: {meta['commands']}", "",
             f"Machine: {meta['machine']}. Data: {meta['train_size']} training images "
             f"(fixed slice), validation: the next {meta['val_size']} training images "
             "(held out, used to choose), full 10k test set (reported only). CNN "
             "(conv16-conv32-pool-conv64-pool-fc128-fc10); conv1 and the classifier stay "
             "dense; sparsity is over the other layers. Every method: the same epoch "
             f"budget, batch {meta['batch_size']}, Adam with peak learning rate "
             f"{meta['peak_lr']}. GMP: PolynomialDecay (cubic) to the target over 3/4 of "
             f"the budget. GaP: {meta['partitions']} partitions, {meta['rounds']} rounds "
             "over 3/4 of the budget, then fine-tuning. Plain variants (`cgap`, `pgap`, "
             "`gmp`, `dense`): one cosine decay over the whole budget; GaP with "
             "`reset_optimizer='all'`. `+fresh`: `reset_optimizer='fresh'` and "
             f"`step_lr=StepLR({meta['peak_lr']}, warmup={meta['warmup']})` (cosine "
             "restarted at every GaP step and over fine-tuning). `+fresh+hot`: the same "
             f"with a peak of {meta['hot_factor']} x {meta['peak_lr']}. `+global`: "
             "`distribution='global'` (GaP) or `scope='global'` (GMP): one magnitude threshold "
             "over every pruned layer. Training MACs: forward+backward MACs spent over "
             "the whole run relative to training the dense model for the same steps "
             "(sparse-aware: each pruned weight counted by its mask density at each step). "
             "Inference MACs: the final model's non-zero MACs relative to dense (what "
             "non-uniform sparsity spends: it keeps the convolutions denser).",
             ""]
    for epochs in sorted({s["epochs"] for s in summary}):
        rows = [s for s in summary if s["epochs"] == epochs]
        dense = next((s for s in rows if s["variant"] == "dense"), None)
        lines += [f"## {epochs} epochs", "",
                  "| variant | target | val acc | test acc (mean ± std) | vs dense (test) "
                  "| training MACs vs dense | inference MACs (non-zero) vs dense |",
                  "|---|---|---|---|---|---|---|"]
        for s in sorted(rows, key=lambda s: (s["target"], s["variant"] != "dense",
                                            s["variant"] != "gmp", s["variant"])):
            delta = f"{(s['mean'] - dense['mean']) * 100:+.2f} pts" if dense else ""
            target = "-" if s["variant"] == "dense" else f"{s['target']:.0%}"
            macs = ("n/a" if s["train_macs_ratio"] is None
                    else f"{s['train_macs_ratio']:.2f}x")
            lines.append(f"| {s['variant']} | {target} | {s['val_mean']:.4f} | "
                         f"{s['mean']:.4f} ± {s['std']:.4f} (n={s['n']}) | {delta} | "
                         f"{macs} | {s['inference_macs_ratio']:.2f}x |")
        lines.append("")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines))
    plot(summary, stem + ".png")


def plot(summary, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    budgets = sorted({s["epochs"] for s in summary})
    fig, axes = plt.subplots(2, len(budgets), figsize=(6 * len(budgets), 9), squeeze=False)
    variants = sorted({s["variant"] for s in summary} - {"dense"})
    for col, epochs in enumerate(budgets):
        rows = [s for s in summary if s["epochs"] == epochs]
        dense = next((s for s in rows if s["variant"] == "dense"), None)
        for ax, key, label in ((axes[0][col], "target", "target sparsity (prunable layers)"),
                               (axes[1][col], "inference_macs_ratio",
                                "inference MACs (non-zero) relative to dense")):
            for i, variant in enumerate(variants):
                pts = sorted((s for s in rows if s["variant"] == variant), key=lambda s: s[key])
                if pts:
                    ax.errorbar([p[key] + (i - len(variants) / 2) * 0.003 for p in pts],
                                [p["mean"] for p in pts], yerr=[p["std"] for p in pts],
                                marker="o", capsize=3, label=variant)
            if dense:
                ax.axhline(dense["mean"], color="k", ls="--", label="dense")
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy")
            ax.set_title(f"Fashion-MNIST, {epochs} epochs for every method")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_cache(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def result_flags(prov):
    """{flag: value} of RESULT_FLAGS in a provenance dict (None: not recorded)."""
    values = (prov or {}).get("flags")
    return None if values is None else {k: values.get(k) for k in RESULT_FLAGS}


def reusable(row, current, reuse_from):
    """Whether a cached row may stand for a run of this invocation; (ok, why not)."""
    prov = row.get("provenance")
    if reuse_from == "any":
        return True, ""
    if prov is None:
        return False, "no provenance (commit unknown)"
    if prov.get("backend") != current["backend"]:
        return False, f"backend {prov.get('backend')}"
    if result_flags(prov) != result_flags(current):
        diff = {k: v for k, v in result_flags(prov).items() if result_flags(current)[k] != v}
        return False, f"flags {diff}"
    if reuse_from == "flags":
        return True, ""
    if _common.code_key(prov) != _common.code_key(current):
        return False, _common.commit_label(prov)
    versions = ("keras", "tensorflow", "jax")
    if any(prov["versions"].get(k) != current["versions"].get(k) for k in versions):
        return False, "versions " + ", ".join(f"{k} {prov['versions'].get(k)}"
                                              for k in versions)
    return True, ""


def select_cache(rows, current, reuse_from):
    """(rows this invocation may reuse and summarize, {reason: count} of the others)."""
    kept, ignored = [], {}
    for row in rows:
        ok, why = reusable(row, current, reuse_from)
        if ok:
            kept.append(row)
        else:
            ignored[why] = ignored.get(why, 0) + 1
    return kept, ignored


def main(argv):
    del argv
    import keras_gap as kg
    if FLAGS.quick:
        _common.apply_quick({"train_size": 2000, "val_size": 500, "seeds": 1,
                             "epochs": ["3"], "sparsities": ["0.9"], "rounds": 1})
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    stem = os.path.join(FLAGS.output_dir, FLAGS.results_name + ("_quick" if FLAGS.quick else ""))
    cache_path = stem + "_runs.jsonl"
    variants = ["dense"] * FLAGS.dense + list(FLAGS.variants)
    for v in variants:
        parse_variant(v)
    current = _common.provenance()
    print(f"code: {_common.commit_label(current)}; cached runs reused: --reuse_from="
          f"{FLAGS.reuse_from}", flush=True)
    runs, ignored = select_cache(load_cache(cache_path), current, FLAGS.reuse_from)
    if ignored:
        print(f"{cache_path}: ignoring {sum(ignored.values())} cached run(s) (not rerun "
              "from, not summarized): " + "; ".join(f"{n} with {why}"
                                                   for why, n in sorted(ignored.items()))
              + ". --reuse_from=flags or =any uses them.", flush=True)
    done = {run_key(r) for r in runs}
    if not FLAGS.report_only:
        x, y = kg.datasets.load_numpy("fashion_mnist", "train",
                                      limit=FLAGS.train_size + FLAGS.val_size)
        xt, yt = kg.datasets.load_numpy("fashion_mnist", "test")
        prep = lambda a: (a.astype("float32") / 255.0).reshape(-1, 28, 28, 1)  # noqa: E731
        n = FLAGS.train_size
        data = ((prep(x[:n]), y[:n]), (prep(x[n:]), y[n:]), (prep(xt), yt))
        configs = [(v, 0.0 if v == "dense" else float(sp), seed, int(e))
                   for e in FLAGS.epochs
                   for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds)
                   for sp in FLAGS.sparsities for v in variants]
        configs = list(dict.fromkeys(c for c in configs if c not in done))
        t0 = time.time()
        for i, (variant, sparsity, seed, epochs) in enumerate(configs):
            result = run_one(variant, sparsity, seed, data, epochs)
            result["command"] = "python " + " ".join(sys.argv)
            result["provenance"] = _common.provenance()
            runs.append(result)
            with open(cache_path, "a") as f:
                f.write(json.dumps(result) + "\n")
            print(f"[{i + 1}/{len(configs)}] {variant} s={sparsity} seed={seed} "
                  f"epochs={epochs}: val={result['val_accuracy']:.4f} "
                  f"test={result['accuracy']:.4f} sparsity={result['sparsity_prunable']:.4f} "
                  f"({result['train_seconds']:.0f}s; {time.time() - t0:.0f}s total)",
                  flush=True)
    if not runs:
        sys.exit(f"No usable runs in {cache_path} (--reuse_from={FLAGS.reuse_from}"
                 + (f"; ignored: {ignored}" if ignored else "") + ").")
    commits = {}
    for r in runs:
        label = _common.commit_label(r.get("provenance"))
        commits[label] = commits.get(label, 0) + 1
    meta = {"date": time.strftime("%Y-%m-%d"),
            "commands": ", ".join(sorted({f"`{r['command']}`" for r in runs
                                          if r.get("command")})),
            "machine": f"{cpu_name()}, {os.cpu_count()} cores (shared with other jobs), "
                       f"keras {current['versions']['keras']} ({current['backend']})",
            "train_size": FLAGS.train_size, "val_size": FLAGS.val_size,
            "batch_size": FLAGS.batch_size, "partitions": FLAGS.partitions,
            "rounds": FLAGS.rounds, "peak_lr": FLAGS.peak_lr, "warmup": FLAGS.warmup,
            "hot_factor": FLAGS.hot_factor,
            "train_seconds_total": sum(r["train_seconds"] for r in runs),
            "reuse_from": FLAGS.reuse_from, "commits": commits,
            "provenance_line": _common.provenance_line([r.get("provenance") for r in runs]),
            "provenance": current}
    summary = summarize(runs)
    write_results(runs, summary, meta, stem)
    print(open(stem + ".md").read())
    print(f"Results written to {stem}.{{json,md,png}} (runs cached in {cache_path})")


if __name__ == "__main__":
    app.run(main)
