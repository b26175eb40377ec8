"""P-GaP in one process vs on Ray workers: wall time per round and in all, accuracy.

One run, same schedule and seeds for both: the Fashion-MNIST CNN of
gap_vs_baselines.py (first conv and classifier dense), ``--partitions`` K
partitions, ``--rounds`` rounds of ``--epochs_per_step`` epochs per copy,
``--finetune`` epochs of fine-tuning, TensorFlow backend.

* in-process: ``prune_gap(method="pgap")`` + ``GaPCallback`` in one ``fit``
  (the K copies of a round run one after another, TensorFlow uses every core);
* Ray: ``kg.gap.PGaPRunner`` with ``--workers`` local actors (one core and one
  math thread each on a 2-core machine), merge and fine-tuning on the driver.

A round's time in-process is the sum of its copies' epochs; on Ray it is the
driver's wall time from sending the round's model to the end of the merge
(slowest copy + transfer + merge). Startup (Ray, actors importing TensorFlow)
is reported apart. The extrapolation to K = 4 and 8 workers, one per
partition and each on its own machine, uses

    round(K) = copy + K * (merge + transfer) / 2

with ``copy`` the measured slowest copy time, ``merge`` and ``transfer`` the
measured per-round values for K = 2 (both grow linearly with the number of
copies the driver receives and merges), against the in-process round
``K * step`` (``step``: measured in-process time of one copy). It assumes a
copy's time does not depend on K (each copy trains the whole model on the
whole data) and one idle core per worker.

Usage:
    python benchmarks/pgap_parallel.py            # full run (~5-8 min on 2 cores)
    python benchmarks/pgap_parallel.py --quick    # smoke run
Results: benchmarks/results/pgap_parallel.{json,md}.
"""

import functools
import json
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

import _common  # noqa: E402
from _machine import machine_info  # noqa: E402
from _models import KEEP_DENSE, fashion_cnn  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("train_limit", 30000, "Fashion-MNIST training examples.")
flags.DEFINE_integer("test_limit", 10000, "Fashion-MNIST test examples.")
flags.DEFINE_integer("partitions", 2, "K, GaP partitions (copies per round).")
flags.DEFINE_integer("workers", 2, "Ray workers.")
flags.DEFINE_integer("rounds", 2, "P-GaP rounds.")
flags.DEFINE_integer("epochs_per_step", 1, "Epochs each copy trains per round.")
flags.DEFINE_integer("finetune", 1, "Fine-tuning epochs.")
flags.DEFINE_float("sparsity", 0.9, "Target sparsity.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("seed", 0, "Seed (initial weights, GaP's initial masks, shuffling; "
                     "Ray copy j of a round: seed + its GaP step).")
flags.DEFINE_bool("quick", False, "Tiny sizes (smoke run; flags given on the command line "
                  "override them).")
flags.DEFINE_bool("ray", True, "Also run P-GaP on Ray workers (--noray: in-process only).")
flags.DEFINE_string("output_dir", os.path.join(os.path.dirname(__file__), "results"),
                    "Where results are written.")

HERE = os.path.dirname(os.path.abspath(__file__))


def build(seed):
    """The compiled Fashion-MNIST CNN, initialized from ``seed`` (runs on the driver
    and on every worker: the same weights everywhere)."""
    import keras
    keras.utils.set_random_seed(seed)
    model = fashion_cnn(rescale=True)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def make_data(limit):
    def data():
        import keras_gap as kg
        return kg.datasets.load_numpy("fashion_mnist", "train", limit=limit)
    return data


def in_process(cfg, data, test):
    import keras

    import keras_gap as kg
    model = build(cfg["seed"])
    pruned = kg.prune_gap(model, method="pgap", target_sparsity=cfg["sparsity"],
                          num_partitions=cfg["partitions"],
                          epochs_per_step=cfg["epochs_per_step"], rounds=cfg["rounds"],
                          finetune_epochs=cfg["finetune"], keep_dense=KEEP_DENSE,
                          seed=cfg["seed"])
    pruned.compile_from_config(model.get_compile_config())
    x, y = data()

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends, self.start = [], time.time()

        def on_epoch_end(self, epoch, logs=None):
            self.ends.append(time.time())

    clock = Clock()
    _common.set_seed(cfg["seed"])  # fit's shuffling
    t0 = time.time()
    pruned.fit(x, y, batch_size=cfg["batch_size"], epochs=kg.gap_total_epochs(pruned),
               callbacks=[kg.GaPCallback(verbose=0), clock], verbose=0)
    total = time.time() - t0
    epochs = [b - a for a, b in zip([clock.start] + clock.ends[:-1], clock.ends)]
    eps = cfg["epochs_per_step"]
    per_round = cfg["partitions"] * eps
    rounds = [sum(epochs[r * per_round:(r + 1) * per_round]) for r in range(cfg["rounds"])]
    _, acc = pruned.evaluate(*test, verbose=0, batch_size=512)
    return {"total_seconds": total, "round_seconds": rounds,
            "copy_seconds": [sum(epochs[i * eps:(i + 1) * eps])
                             for i in range(cfg["partitions"] * cfg["rounds"])],
            "finetune_seconds": sum(epochs[per_round * cfg["rounds"]:]),
            "accuracy": float(acc), "sparsity": _sparsity(pruned),
            "weights": _common.weights_fingerprint(pruned)}


def on_ray(cfg, data, test):
    import keras_gap as kg
    t0 = time.time()
    run = kg.gap.PGaPRunner(
        functools.partial(build, cfg["seed"]), data, target_sparsity=cfg["sparsity"],
        num_partitions=cfg["partitions"],
        epochs_per_step=cfg["epochs_per_step"], rounds=cfg["rounds"],
        finetune_epochs=cfg["finetune"], num_workers=cfg["workers"],
        gap_kwargs={"keep_dense": KEEP_DENSE, "seed": cfg["seed"]},
        fit_kwargs={"batch_size": cfg["batch_size"]}, seed=cfg["seed"], verbose=1,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
            [HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p])}})  # _models
    t_fit = time.time()
    pruned = run.fit()
    total = time.time() - t0
    rounds = [h["seconds"] for h in run.history]
    _, acc = pruned.evaluate(*test, verbose=0, batch_size=512)
    return {"total_seconds": total, "round_seconds": rounds,
            "slowest_copy_seconds": [max(h["copy_seconds"].values()) for h in run.history],
            "copy_seconds": [h["copy_seconds"] for h in run.history],
            "merge_seconds": [h["merge_seconds"] for h in run.history],
            "transfer_seconds": [h["transfer_seconds"] for h in run.history],
            "fit_seconds": time.time() - t_fit,
            "accuracy": float(acc), "sparsity": _sparsity(pruned),
            "weights": _common.weights_fingerprint(pruned)}


def _sparsity(model):
    """Sparsity of the pruned kernels (the layers kept dense left out)."""
    import keras_gap as kg
    rows = [r for r in kg.sparsity_report(model).rows if r.layer not in KEEP_DENSE]
    return 1.0 - sum(r.nonzero for r in rows) / sum(r.params for r in rows)


def extrapolate(local, ray_result, k_values=(4, 8)):
    """round(K) = copy + K * (merge + transfer) / 2 vs in-process K * step."""
    n = len(ray_result["round_seconds"])
    last = slice(1, n) if n > 1 else slice(0, n)  # steady state: round 1 holds actor startup
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    copy = mean(ray_result["slowest_copy_seconds"][last])
    per_copy_overhead = mean([m + t for m, t in zip(ray_result["merge_seconds"][last],
                                                     ray_result["transfer_seconds"][last])]) / 2
    step = mean(local["copy_seconds"])
    rows = []
    for k in k_values:
        ray_round = copy + k * per_copy_overhead
        rows.append({"K": k, "in_process_round_s": k * step, "ray_round_s": ray_round,
                     "speedup": k * step / ray_round})
    return {"copy_s": copy, "merge_plus_transfer_per_copy_s": per_copy_overhead,
            "in_process_step_s": step, "rows": rows}


def write(results):
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "pgap_parallel.json"), "w") as f:
        json.dump(results, f, indent=2)
    loc, ray_r, ex, cfg = (results["in_process"], results["ray"], results["extrapolation"],
                           results["config"])
    n = cfg["rounds"]
    lines = [
        "# P-GaP: in one process vs on Ray workers",
        "",
        f"Generated by `python benchmarks/pgap_parallel.py` on {results['date']}.",
        f"Machine: {results['machine']['cpu']}, {results['machine']['logical_cores']} logical "
        f"cores; load average at start {results['machine']['load_average_at_start']}; "
        f"`uptime` at start: `{results['uptime_start']}`; at end: `{results['uptime_end']}`.",
        "No GPU run: this task had no device machine lent.",
        "",
        _common.provenance_line(results["provenance"]),
        "",
        f"Fashion-MNIST CNN, {cfg['train_limit']} training / {cfg['test_limit']} test "
        f"images, K={cfg['partitions']} partitions, {n} rounds x {cfg['epochs_per_step']} "
        f"epoch(s) per copy, {cfg['finetune']} fine-tuning epoch(s), sparsity "
        f"{cfg['sparsity']}, batch {cfg['batch_size']}, seed {cfg['seed']}. Ray: "
        f"{cfg['workers']} local workers (1 CPU and 1 math thread each); in-process: one "
        "TensorFlow process using every core.",
        "",
        "| | in-process | Ray, 2 workers | speed-up |",
        "|---|---|---|---|",
    ]
    for r in range(n):
        a, b = loc["round_seconds"][r], ray_r["round_seconds"][r]
        note = " (incl. actor startup)" if r == 0 else ""
        lines.append(f"| round {r + 1} (s){note} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    steady = [r for r in range(1, n)] or [0]
    a = sum(loc["round_seconds"][r] for r in steady) / len(steady)
    b = sum(ray_r["round_seconds"][r] for r in steady) / len(steady)
    lines += [
        f"| round, steady state (s) | {a:.1f} | {b:.1f} | **{a / b:.2f}x** |",
        f"| total incl. fine-tuning and startup (s) | {loc['total_seconds']:.1f} | "
        f"{ray_r['total_seconds']:.1f} | {loc['total_seconds'] / ray_r['total_seconds']:.2f}x |",
        f"| test accuracy | {loc['accuracy']:.4f} | {ray_r['accuracy']:.4f} | |",
        f"| sparsity of pruned layers (conv1, logits dense) | {loc['sparsity']:.4f} | "
        f"{ray_r['sparsity']:.4f} | |",
        "",
        "Ray round = slowest copy + transfer + merge: "
        + "; ".join(f"round {r + 1}: {ray_r['slowest_copy_seconds'][r]:.1f} + "
                    f"{ray_r['transfer_seconds'][r]:.2f} + {ray_r['merge_seconds'][r]:.2f} s"
                    for r in range(n)) + ".",
        "",
        "## Extrapolation (a model, not a measurement)",
        "",
        "round(K) = copy + K x (merge + transfer per copy), one worker per partition, each "
        f"on its own machine; copy = {ex['copy_s']:.1f} s (measured slowest copy, steady "
        f"state), merge + transfer per copy = {ex['merge_plus_transfer_per_copy_s']:.2f} s "
        f"(measured at K=2); in-process round = K x {ex['in_process_step_s']:.1f} s "
        "(measured in-process copy).",
        "",
        "| K | in-process round (s) | Ray round (s) | speed-up |",
        "|---|---|---|---|",
    ]
    for row in ex["rows"]:
        lines.append(f"| {row['K']} | {row['in_process_round_s']:.1f} | "
                     f"{row['ray_round_s']:.1f} | {row['speedup']:.2f}x |")
    with open(os.path.join(FLAGS.output_dir, "pgap_parallel.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_in_process_only(results):
    """--noray: the in-process run alone (results json, no table)."""
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, "pgap_parallel_in_process.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path} (--noray: no Ray run, no table)")


def _uptime():
    try:
        import subprocess
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return str(os.getloadavg())


def main(argv):
    del argv
    if FLAGS.quick:
        _common.apply_quick({"train_limit": 1024, "test_limit": 512})
    cfg = {k: getattr(FLAGS, k) for k in ("train_limit", "test_limit", "partitions", "workers",
                                          "rounds", "epochs_per_step", "finetune", "sparsity",
                                          "batch_size", "seed")}
    import keras_gap as kg
    test = kg.datasets.load_numpy("fashion_mnist", "test", limit=cfg["test_limit"])
    data = make_data(cfg["train_limit"])
    prov = _common.provenance()
    results = {"date": prov["date"], "machine": machine_info(), "uptime_start": _uptime(),
               "config": cfg, "provenance": prov}
    print("in-process P-GaP ...", flush=True)
    results["in_process"] = in_process(cfg, data, test)
    print(json.dumps(results["in_process"]), flush=True)
    if not FLAGS.ray:
        write_in_process_only(results)
        return
    print("P-GaP on Ray ...", flush=True)
    results["ray"] = on_ray(cfg, data, test)
    results["extrapolation"] = extrapolate(results["in_process"], results["ray"])
    results["uptime_end"] = _uptime()
    write(results)


if __name__ == "__main__":
    app.run(main)
