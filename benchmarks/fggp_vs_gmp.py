"""Gradual magnitude pruning (GMP) vs FGGP on Fashion-MNIST.

Methods (same model, data, optimizer, epoch budget and cubic schedule):
  gmp   -- magnitude, per layer (uniform from dense; ERK split from an ERK start)
  fggp  -- FGGP(rate=0.5), global scope over all pruned kernels
at 90/95/98% final sparsity, from dense and from a 50% random ERK start,
over several seeds. Results: benchmarks/results/fggp_vs_gmp.{json,md}.

Model: MLP 784-300-100-10 (266,200 prunable kernel weights, every Dense kernel
pruned). Data: Fashion-MNIST through keras_gap.datasets.

    python benchmarks/fggp_vs_gmp.py --quick      # smoke run (~3 min on a shared 2-core box)
    python benchmarks/fggp_vs_gmp.py              # full run: 24 runs x 1880 steps
                                                  # (est. 10-15 min idle 2 cores,
                                                  #  ~30 min when heavily shared)

KERAS_BACKEND defaults to jax here; set it to run on another backend.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import _common  # noqa: E402
from _machine import cpu_name  # noqa: E402
from absl import app, flags  # noqa: E402

import keras  # noqa: E402
import keras_gap as kg  # noqa: E402
from keras_gap.callbacks import overall_sparsity  # noqa: E402
from keras_gap.wrapper import collect_wrappers  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Tiny smoke run (1 seed, 1 sparsity, 2 epochs; flags "
                  "given on the command line override these).")
flags.DEFINE_string("out_dir", os.path.join(os.path.dirname(__file__), "results"),
                    "Where fggp_vs_gmp.{json,md} go.")
flags.DEFINE_integer("train_size", 15000, "Training images used (first N).")
flags.DEFINE_integer("test_size", 10000, "Test images used (first N).")
flags.DEFINE_integer("epochs", 8, "Epochs per run (same for every method).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("prune_fraction", 0.75, "Pruning ends at this fraction of training.")
flags.DEFINE_integer("prune_events", 25, "Number of mask updates.")
flags.DEFINE_list("sparsities", ["0.9", "0.95", "0.98"], "Final sparsities.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_list("starts", ["dense", "erk50"], "Starts: dense, erk50.")
flags.DEFINE_list("methods", ["gmp", "fggp"], "Methods: gmp, fggp.")


def load(train_size, test_size):
    """Fashion-MNIST through keras_gap.datasets, flattened to [N, 784] in [0, 1]."""
    def part(split, limit):
        x, y = kg.datasets.load_numpy("fashion_mnist", split, limit=limit)
        return x.reshape(len(x), -1).astype("float32") / 255.0, y.astype("int32")
    return part("train", train_size), part("test", test_size)


def build_model():
    return keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10),
    ])


def run(method, start, sparsity, seed, data, steps_per_epoch):
    (x, y), (xt, yt) = data
    keras.backend.clear_session()
    _common.set_seed(seed)  # initializers and fit's shuffling; the ERK start gets seed too
    total = steps_per_epoch * FLAGS.epochs
    end_step = int(total * FLAGS.prune_fraction)
    frequency = max(1, end_step // FLAGS.prune_events)
    end_step = frequency * FLAGS.prune_events
    initial = 0.5 if start == "erk50" else 0.0
    # Steps count from 1 (the first batch is step 1, tf-mot's numbering): the first update
    # at the first batch, once FGGP has its gradient; the same batches as the committed
    # results, run when the first batch was step 0 with begin_step=0, end_step=end_step.
    schedule = kg.PolynomialDecay(initial, sparsity, begin_step=1, end_step=1 + end_step,
                                  power=3, frequency=frequency)
    kwargs = {}
    if start == "erk50":
        kwargs.update(initial_mask="erk_random", initial_sparsity=0.5, seed=seed)
    if method == "gmp":
        kwargs.update(criterion="magnitude", scope="layer",
                      distribution="erk" if start == "erk50" else "uniform")
    else:
        kwargs.update(criterion=kg.criteria.FGGP(rate=0.5), scope="global",
                      distribution="erk")
    pruned = kg.prune_low_magnitude(build_model(), pruning_schedule=schedule, **kwargs)
    pruned.compile(keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    t0 = time.time()
    pruned.fit(x, y, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, verbose=0,
               shuffle=True, callbacks=[kg.UpdatePruningStep()])
    seconds = time.time() - t0
    _, acc = pruned.evaluate(xt, yt, batch_size=1000, verbose=0)
    wrappers = collect_wrappers(pruned)
    return {"method": method, "start": start, "target": sparsity, "seed": seed,
            "test_accuracy": float(acc), "sparsity": overall_sparsity(wrappers),
            "per_layer_sparsity": [1 - nz / n for w in wrappers for n, nz in w.mask_counts()],
            "train_seconds": round(seconds, 1), "steps": total,
            "end_step": end_step, "frequency": frequency,
            "weights": _common.weights_fingerprint(pruned)}


def write(results, config, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "fggp_vs_gmp.json"), "w") as f:
        json.dump({"config": config, "provenance": config["provenance"], "runs": results}, f,
                  indent=1)
    rows = {}
    for r in results:
        rows.setdefault((r["start"], r["target"], r["method"]), []).append(r["test_accuracy"])
    lines = ["# GMP vs FGGP on Fashion-MNIST", "",
             "Config: " + ", ".join(f"{k}={v}" for k, v in config.items()
                                    if k != "provenance"), "",
             _common.provenance_line(config["provenance"]), "",
             "| start | sparsity | method | test acc mean | std | seeds |",
             "|---|---|---|---|---|---|"]
    for (start, target, method), accs in sorted(rows.items()):
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {start} | {target:.2f} | {method} | {100 * statistics.mean(accs):.2f} "
                     f"| {100 * std:.2f} | {len(accs)} |")
    with open(os.path.join(out_dir, "fggp_vs_gmp.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv):
    del argv
    if FLAGS.quick:
        _common.apply_quick({"train_size": 2000, "test_size": 1000, "epochs": 2,
                             "sparsities": ["0.9"], "seeds": ["0"], "prune_events": 8})
    data = load(FLAGS.train_size, FLAGS.test_size)
    steps_per_epoch = -(-FLAGS.train_size // FLAGS.batch_size)
    prov = _common.provenance()
    config = {
        "date": prov["date"],
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "backend": keras.backend.backend(), "keras": keras.__version__,
        "quick": FLAGS.quick, "model": "MLP 784-300-100-10 (all 3 kernels pruned)",
        "train_size": FLAGS.train_size, "test_size": FLAGS.test_size,
        "epochs": FLAGS.epochs, "batch_size": FLAGS.batch_size,
        "optimizer": "SGD(0.05, momentum 0.9, nesterov)",
        "schedule": f"cubic PolynomialDecay, {FLAGS.prune_events} updates, ends at "
                    f"{FLAGS.prune_fraction:.0%} of training",
        "provenance": prov,
    }
    results = []
    t0 = time.time()
    for start in FLAGS.starts:
        for target in (float(s) for s in FLAGS.sparsities):
            for seed in (int(s) for s in FLAGS.seeds):
                for method in FLAGS.methods:
                    r = run(method, start, target, seed, data, steps_per_epoch)
                    results.append(r)
                    print(f"{start} {target} {method} seed={seed}: acc "
                          f"{r['test_accuracy']:.4f} sparsity {r['sparsity']:.4f} "
                          f"({r['train_seconds']} s)", flush=True)
    config["total_minutes"] = round((time.time() - t0) / 60, 1)
    write(results, config, FLAGS.out_dir)


if __name__ == "__main__":
    app.run(main)
