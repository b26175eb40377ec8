"""Dense vs gradual magnitude pruning vs C-GaP vs P-GaP on real Fashion-MNIST.

Every method gets the same epoch budget, the same CNN, the same optimizer and
learning-rate schedule, the same data; sparsity is over the prunable layers
(first conv and classifier kept dense for every pruning method). Results
(mean and spread over seeds) go to benchmarks/results/gap_vs_baselines.{json,md,png}.

Run:
    python benchmarks/gap_vs_baselines.py            # about an hour on 2 cores
    python benchmarks/gap_vs_baselines.py --quick    # smoke test (a minute)
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

from _machine import cpu_name  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Tiny run for smoke testing.")
flags.DEFINE_integer("train_size", 15000, "Training examples (a fixed slice of the 60k).")
flags.DEFINE_integer("epochs", 8, "Epoch budget of every method.")
flags.DEFINE_list("sparsities", ["0.8", "0.9", "0.95"], "Target sparsities.")
flags.DEFINE_list("methods", ["gmp", "cgap", "pgap"], "Pruning methods.")
flags.DEFINE_bool("dense", True, "Also train the dense baseline.")
flags.DEFINE_integer("seeds", 3, "Seeds per configuration.")
flags.DEFINE_integer("partitions", 3, "GaP partitions.")
flags.DEFINE_integer("rounds", 2, "GaP rounds.")
flags.DEFINE_string("distribution", "uniform", "GaP sparsity distribution (uniform, erk, global).")
flags.DEFINE_enum("reset_optimizer", "all", ["regrown", "all", "none"],
                  "GaPCallback's optimizer reset at each boundary.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_string("output_dir", os.path.join(os.path.dirname(__file__), "results"),
                    "Where results are written.")

KEEP_DENSE = ("conv1", "logits")


def build_cnn():
    import keras
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu", name="fc1"),
        keras.layers.Dense(10, name="logits"),
    ], name="cnn")


def prepare(method, sparsity, steps_per_epoch, epochs, seed):
    """Returns (model ready to compile, callbacks) for one method."""
    import keras_gap as kg
    model = build_cnn()
    if method == "dense":
        return model, []
    prune_steps = int(0.75 * epochs * steps_per_epoch)  # 3/4 sparsifying, 1/4 fine-tuning
    if method == "gmp":
        schedule = kg.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=prune_steps,
                                      frequency=max(1, steps_per_epoch // 4))
        pruned = kg.prune_low_magnitude(
            model, pruning_schedule=schedule,
            pruning_policy=lambda layer: layer.name not in KEEP_DENSE)
        return pruned, [kg.UpdatePruningStep()]
    k, rounds = FLAGS.partitions, FLAGS.rounds
    pruned = kg.prune_gap(model, target_sparsity=sparsity, num_partitions=k,
                          steps_per_step=max(1, prune_steps // (k * rounds)), rounds=rounds,
                          keep_dense=KEEP_DENSE, method=method, seed=seed,
                          distribution=FLAGS.distribution)
    return pruned, [kg.GaPCallback(reset_optimizer=FLAGS.reset_optimizer, verbose=0)]


def run_one(method, sparsity, seed, data, epochs):
    import keras
    import keras_gap as kg
    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(seed)
    steps_per_epoch = -(-len(x) // FLAGS.batch_size)
    model, callbacks = prepare(method, sparsity, steps_per_epoch, epochs, seed)
    lr = keras.optimizers.schedules.CosineDecay(2e-3, epochs * steps_per_epoch)
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.time()
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=epochs, verbose=0,
              callbacks=callbacks)
    seconds = time.time() - start
    final = kg.strip_pruning(model) if method != "dense" else model
    acc = float((final.predict(xt, batch_size=512, verbose=0).argmax(-1) == yt).mean())
    report = kg.sparsity_report(final)
    pruned_rows = [r for r in report.rows if r.layer not in KEEP_DENSE]
    nz = sum(r.nonzero for r in pruned_rows)
    total = sum(r.params for r in pruned_rows)
    return {"method": method, "target": sparsity, "seed": seed, "accuracy": float(acc),
            "sparsity_prunable": 1 - nz / total, "sparsity_all": report.sparsity,
            "train_seconds": seconds}


def summarize(runs):
    table = {}
    for r in runs:
        table.setdefault((r["method"], r["target"]), []).append(r["accuracy"])
    out = []
    for (method, target), accs in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        out.append({"method": method, "target": target, "n": len(accs),
                    "mean": statistics.mean(accs),
                    "std": statistics.stdev(accs) if len(accs) > 1 else 0.0})
    return out


def write_results(runs, summary, meta):
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    stem = os.path.join(FLAGS.output_dir, "gap_vs_baselines" + ("_quick" if FLAGS.quick else ""))
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": runs}, f, indent=2)
    dense = next((s for s in summary if s["method"] == "dense"), None)
    lines = [f"# GaP vs baselines on Fashion-MNIST ({meta['date']})", "",
             f"Command: `{meta['command']}`", "",
             f"Machine: {meta['machine']}. Data: {meta['train_size']} training images "
             f"(fixed slice), full 10k test set. Budget: {meta['epochs']} epochs for every "
             f"method, batch {meta['batch_size']}, Adam 2e-3 with cosine decay. CNN "
             f"(conv16-conv32-pool-conv64-pool-fc128-fc10); conv1 and the classifier stay "
             f"dense; sparsity is over the other layers. GaP: {meta['partitions']} "
             f"partitions, {meta['rounds']} rounds over 3/4 of the budget, then "
             f"fine-tuning, reset_optimizer={meta['reset_optimizer']!r}. "
             f"GMP: PolynomialDecay (cubic) to the target over 3/4 of the "
             f"budget. Seeds: {meta['seeds']}.", "",
             "| method | target sparsity | test accuracy (mean ± std) | vs dense |",
             "|---|---|---|---|"]
    for s in summary:
        delta = f"{(s['mean'] - dense['mean']) * 100:+.2f} pts" if dense else ""
        target = "-" if s["method"] == "dense" else f"{s['target']:.0%}"
        lines.append(f"| {s['method']} | {target} | {s['mean']:.4f} ± {s['std']:.4f} "
                     f"(n={s['n']}) | {delta} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in sorted({s["method"] for s in summary} - {"dense"}):
            pts = [s for s in summary if s["method"] == method]
            ax.errorbar([p["target"] for p in pts], [p["mean"] for p in pts],
                        yerr=[p["std"] for p in pts], marker="o", capsize=3, label=method)
        if dense:
            ax.axhline(dense["mean"], color="k", ls="--", label="dense")
        ax.set_xlabel("target sparsity (prunable layers)")
        ax.set_ylabel("test accuracy")
        ax.set_title("Fashion-MNIST, same epoch budget")
        ax.legend()
        fig.tight_layout()
        fig.savefig(stem + ".png", dpi=120)
    except ImportError:
        pass
    return stem


def main(argv):
    del argv
    import keras
    import keras_gap as kg
    if FLAGS.quick:
        FLAGS.train_size, FLAGS.epochs, FLAGS.seeds = 2000, 3, 1
        FLAGS.sparsities, FLAGS.rounds = ["0.9"], 1
    x, y = kg.datasets.load_numpy("fashion_mnist", "train", limit=FLAGS.train_size)
    xt, yt = kg.datasets.load_numpy("fashion_mnist", "test")
    prep = lambda a: (a.astype("float32") / 255.0).reshape(-1, 28, 28, 1)
    data = ((prep(x), y), (prep(xt), yt))
    sparsities = [float(s) for s in FLAGS.sparsities]
    configs = [("dense", 0.0, s) for s in range(FLAGS.seeds)] if FLAGS.dense else []
    configs += [(m, sp, s) for sp in sparsities for m in FLAGS.methods
                for s in range(FLAGS.seeds)]
    runs = []
    t0 = time.time()
    for i, (method, sparsity, seed) in enumerate(configs):
        result = run_one(method, sparsity, seed, data, FLAGS.epochs)
        runs.append(result)
        print(f"[{i + 1}/{len(configs)}] {method} s={sparsity} seed={seed}: "
              f"acc={result['accuracy']:.4f} sparsity={result['sparsity_prunable']:.4f} "
              f"({result['train_seconds']:.0f}s; {time.time() - t0:.0f}s total)", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "command": "python " + " ".join(sys.argv),
            "machine": f"{cpu_name()}, {os.cpu_count()} cores, "
                       f"keras {keras.__version__} ({keras.backend.backend()})",
            "train_size": FLAGS.train_size, "epochs": FLAGS.epochs,
            "batch_size": FLAGS.batch_size, "partitions": FLAGS.partitions,
            "rounds": FLAGS.rounds, "seeds": FLAGS.seeds, "distribution": FLAGS.distribution,
            "reset_optimizer": FLAGS.reset_optimizer,
            "wall_seconds": time.time() - t0}
    summary = summarize(runs)
    stem = write_results(runs, summary, meta)
    print(open(stem + ".md").read())
    print(f"Results written to {stem}.{{json,md,png}}")


if __name__ == "__main__":
    app.run(main)
