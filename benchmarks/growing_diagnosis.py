"""Why growing networks lose accuracy: per-epoch diagnostics on the VALIDATION split.

Trains the growing search space of benchmarks/growing.py (examples/growing_resnet.py's
ResNet-style CNN on Fashion-MNIST) at one FLOPs budget on a reduced slice and logs,
per epoch (never touching the test set):

* the finalized (hard-gate) FLOPs ratio vs the target, its min / max within the
  epoch, and lambda's min / max (the PI controller);
* the training loss split into task loss and budget penalty (the penalty
  ``lambda * sum cost * sigmoid(beta * s)`` read every ``--check_every`` steps);
* hard-gate flips (structures whose hard gate changed between two checks) and
  the sampling noise (mean ``|q - sigmoid(beta s)|`` and the share of structures
  whose training sample differs from their hard gate);
* when each structure that started off switched on (epoch), and the norm of a
  grown channel's producer kernel slice at switch-on relative to the mean norm
  of the layer's seed channels;
* BatchNorm: for every BN layer, the mean relative gap between its moving
  variance and the variance of its input on validation images under the
  inference (hard) gates, and the validation accuracy after re-estimating BN
  statistics under the hard gates (a measurement only, not part of the method);
* validation accuracy of the gated model (inference gates) and, at the end,
  of the finalized model.

``--variants`` runs several settings, one at a time: ``base`` (the library
defaults), ``dense`` (the full space, validation accuracy per epoch: its
plateau; ``dense+epochs=N`` for another budget), or ``key=value`` overrides
joined by ``+``: keys of
``kg.growing.add_gates`` (seed_channels, initial_score, score_scale,
seed_blocks), of ``kg.growing.GrowingCallback`` (final_temperature, rounds,
penalty, penalty_rate, penalty_gain, update_freq, freeze_fraction, ...), and
``epochs`` / ``learning_rate``. Runs are cached one per line in
``<output_dir>/<results_name>_runs.jsonl`` with their provenance; the summary
(``<results_name>.{json,md}``) lists every cached run of the current code and
flags (``--reuse_from`` as in gap_vs_baselines.py).

Usage:
    KERAS_BACKEND=tensorflow python benchmarks/growing_diagnosis.py --variants base,dense
    python benchmarks/growing_diagnosis.py --quick --output_dir /tmp/diag
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

from absl import app, flags  # noqa: E402

import _common  # noqa: E402
from _models import accuracy, fashion_splits  # noqa: E402
from growing_resnet import build_space  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "smoke test: 256 / 128 images, 2 epochs, one seed")
flags.DEFINE_integer("seeds", 1, "seeds per variant (first_seed .. first_seed+N-1)")
flags.DEFINE_integer("first_seed", 0, "first seed")
flags.DEFINE_integer("train_images", 6000, "training images (the first N of the train split)")
flags.DEFINE_integer("val_images", 2000, "validation images held out from the end of the "
                     "train split (the only images evaluated)")
flags.DEFINE_integer("epochs", 5, "training epochs (a variant's epochs=N overrides)")
flags.DEFINE_integer("batch_size", 64, "batch size")
flags.DEFINE_float("learning_rate", 2e-3, "peak Adam learning rate (cosine decay)")
flags.DEFINE_float("budget", 0.5, "FLOPs budget of growing")
flags.DEFINE_integer("blocks", 2, "residual blocks per stage of the space")
flags.DEFINE_integer("check_every", 5, "steps between two gate reads")
flags.DEFINE_list("variants", ["base"], "settings to run (see the module docstring)")
flags.DEFINE_bool("report_only", False, "only summarize the cached runs")
flags.DEFINE_enum("reuse_from", "flags", ["commit", "flags", "any"],
                  "which cached runs count: 'commit' (same code and flags), 'flags' (same "
                  "RESULT_FLAGS and backend, any commit; rows name their commit), 'any'")
flags.DEFINE_string("output_dir", os.path.join(_common.HERE, "results"),
                    "where the results files go")
flags.DEFINE_string("results_name", "growing_diagnosis", "stem of the results files")

RESULT_FLAGS = ("train_images", "val_images", "batch_size", "blocks", "budget", "epochs",
                "learning_rate")
GATE_KEYS = {"seed_channels": float, "initial_score": float, "score_scale": float,
             "seed_blocks": int}
CALLBACK_KEYS = {"final_temperature": float, "rounds": int, "penalty": float,
                 "penalty_rate": float, "penalty_gain": float, "update_freq": int,
                 "freeze_fraction": float, "grow_init": str}
RUN_KEYS = {"epochs": int, "learning_rate": float}


def parse_variant(variant):
    """"score_scale=3+freeze_fraction=0.4" -> ({add_gates kw}, {callback kw}, {run kw})."""
    gate_kw, cb_kw, run_kw = {}, {}, {}
    parts = variant.split("+")
    if parts[0] in ("base", "dense"):
        parts = parts[1:]
    for part in parts:
        key, _, value = part.partition("=")
        for table, out in ((GATE_KEYS, gate_kw), (CALLBACK_KEYS, cb_kw), (RUN_KEYS, run_kw)):
            if key in table:
                out[key] = table[key](value)
                break
        else:
            raise app.UsageError(f"unknown variant key {key!r} in {variant!r}")
    return gate_kw, cb_kw, run_kw


def is_dense(variant):
    return variant.split("+")[0] == "dense"


def make_diagnostics(xv, yv, check_every):
    import keras
    import numpy as np

    from keras_gap.growing import gating

    class _Diagnostics(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.gates = gating.gates_of(self.model)
            self.structure = gating.GateStructure(self.model)
            self.costs = self.structure.costs("flops")
            self.step = 0
            self.epoch = 0
            self.start = self._hard()
            self.prev = self.start.copy()
            self.first_on = np.full(self.start.shape, -1.0)
            self.grown_norm = {}
            self.epochs = []
            self._reset_epoch()

        def _hard(self):
            return np.concatenate([gating.hard_gates(g) for g in self.gates])

        def _reset_epoch(self):
            self.acc = {"flips": 0, "penalty": [], "lambda": [], "ratio": [], "noise": [],
                        "sample_vs_hard": []}

        def _channel_norms(self, gate):
            layer = self.model.get_layer(gate.targets[0])
            k = np.asarray(keras.ops.convert_to_numpy(layer.kernel))
            return np.sqrt((k.reshape(-1, k.shape[-1]) ** 2).sum(0))

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step % check_every:
                return
            self.model  # JAX: sync state
            hard = self._hard()
            self.acc["flips"] += int(np.sum(hard != self.prev))
            newly = (hard > 0) & (self.first_on < 0) & (self.start == 0)
            if newly.any():
                frac = self.epoch + (batch + 1) / max(self.params.get("steps") or 1, 1)
                self.first_on[newly] = frac
                off = 0
                for g in self.gates:
                    sl = slice(off, off + g.units)
                    idx = np.where(newly[sl])[0]
                    if len(idx) and g.kind == gating.CHANNEL:
                        norms = self._channel_norms(g)
                        seed = self.start[sl] > 0
                        ref = norms[seed].mean() if seed.any() else norms.mean()
                        for i in idx:
                            self.grown_norm[(g.name, int(i))] = float(norms[i] / ref)
                    off += g.units
            self.prev = hard
            soft = [gating.soft_gates(g) for g in self.gates]
            lam = float(keras.ops.convert_to_numpy(self.gates[0].penalty))
            self.acc["lambda"].append(lam)
            self.acc["penalty"].append(lam * sum(float(np.sum(c * s))
                                                 for c, s in zip(self.costs, soft)))
            self.acc["ratio"].append(self.structure.ratio(
                [gating.hard_gates(g) for g in self.gates], "flops"))
            sampled = np.concatenate([gating.sampled_gates(g) for g in self.gates])
            s = np.concatenate(soft)
            self.acc["noise"].append(float(np.mean(np.abs(sampled - s))))
            self.acc["sample_vs_hard"].append(float(np.mean(sampled != hard)))

        def on_epoch_end(self, epoch, logs=None):
            self.model
            logs = dict(logs or {})
            hard = self._hard()
            a = self.acc
            penalty = statistics.mean(a["penalty"]) if a["penalty"] else 0.0
            row = {"epoch": epoch + 1, "loss": float(logs.get("loss", float("nan"))),
                   "penalty_mean": penalty,
                   "task_loss": float(logs.get("loss", float("nan"))) - penalty,
                   "flops_final": float(logs.get("flops_final", float("nan"))),
                   "ratio_min": min(a["ratio"], default=None),
                   "ratio_max": max(a["ratio"], default=None),
                   "lambda_min": min(a["lambda"], default=None),
                   "lambda_max": max(a["lambda"], default=None),
                   "beta": float(logs.get("beta", float("nan"))),
                   "train_flops": float(logs.get("train_flops", float("nan"))),
                   "flips": a["flips"], "active": int(hard.sum()),
                   "switched_on_this_epoch": int(np.sum((self.first_on >= epoch)
                                                        & (self.first_on < epoch + 1))),
                   "sample_noise": statistics.mean(a["noise"]) if a["noise"] else None,
                   "sample_vs_hard": (statistics.mean(a["sample_vs_hard"])
                                      if a["sample_vs_hard"] else None),
                   "val_accuracy": accuracy(self.model, xv, yv),
                   "bn_var_gap": bn_gap(self.model, xv[:500])}
            self.epochs.append(row)
            print(f"  epoch {row['epoch']}: val {row['val_accuracy']:.4f} flops_final "
                  f"{row['flops_final']:.3f} [{row['ratio_min']}, {row['ratio_max']}] "
                  f"lambda [{row['lambda_min']}, {row['lambda_max']}] loss {row['loss']:.3f} "
                  f"penalty {penalty:.3f} flips {row['flips']} on {row['active']} "
                  f"noise {row['sample_noise']} bn_gap {row['bn_var_gap']:.3f}", flush=True)
            self.epoch = epoch + 1
            self._reset_epoch()

        def summary(self):
            on = self.first_on[(self.start == 0) & (self._hard() > 0)]
            final_on = (self.start == 0) & (self._hard() > 0)
            norms = list(self.grown_norm.values())
            total = self.params.get("epochs") or self.epoch
            return {"grown_final": int(final_on.sum()),
                    "flips_total": int(sum(e["flips"] for e in self.epochs)),
                    "grown_switch_on_epoch_mean": float(on.mean()) if len(on) else None,
                    "grown_epochs_trained_mean": float(total - on.mean()) if len(on) else None,
                    "grown_switch_on_hist": np.histogram(on, bins=range(int(total) + 1))[0]
                    .tolist() if len(on) else [],
                    "seed_final_off": int(((self.start > 0) & (self._hard() == 0)).sum()),
                    "grown_norm_ratio_mean": statistics.mean(norms) if norms else None,
                    "grown_norm_ratio_min": min(norms) if norms else None,
                    "grown_norm_ratio_max": max(norms) if norms else None}

    return _Diagnostics()


def bn_inputs(model, bns):
    """The input tensors of ``bns`` in ``model``'s graph (the layers are shared with the
    space and with copies the library builds)."""
    by_op = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.input_tensors:
                by_op[id(node.operation)] = node.input_tensors[0]
    return [by_op[id(bn)] for bn in bns]


def bn_gap(model, x):
    """Mean over BN layers of mean_c |var(input_c) - moving_var_c| / moving_var_c on ``x``
    under the inference gates (how far the running statistics are from the network that
    inference runs)."""
    import keras
    import numpy as np
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(model.inputs, bn_inputs(model, bns))
    outs = probe.predict(x, batch_size=500, verbose=0)
    gaps = []
    for bn, out in zip(bns, outs):
        var = np.asarray(out).reshape(-1, out.shape[-1]).var(0)
        mv = np.asarray(keras.ops.convert_to_numpy(bn.moving_variance))
        gaps.append(float(np.mean(np.abs(var - mv) / (mv + 1e-3))))
    return float(np.mean(gaps))


def recalibrated_accuracy(model, x, xv, yv, images=2000):
    """Validation accuracy after re-estimating every BN's statistics under the inference
    gates on ``images`` training images, one BN at a time in graph order (each with the
    upstream ones already re-estimated); the BN variables are restored afterwards. A
    measurement of what stale BN statistics cost, not part of the method."""
    import keras
    import numpy as np
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(keras.ops.convert_to_numpy(bn.moving_mean),
              keras.ops.convert_to_numpy(bn.moving_variance)) for bn in bns]
    for bn, tensor in zip(bns, bn_inputs(model, bns)):
        out = np.asarray(keras.Model(model.inputs, tensor).predict(x[:images], batch_size=500,
                                                                  verbose=0))
        flat = out.reshape(-1, out.shape[-1])
        bn.moving_mean.assign(flat.mean(0))
        bn.moving_variance.assign(flat.var(0))
    acc = accuracy(model, xv, yv)
    for bn, (m, v) in zip(bns, saved):
        bn.moving_mean.assign(m)
        bn.moving_variance.assign(v)
    return acc


def run_one(variant, seed, data):
    import keras

    import keras_gap as kg
    (x, y), (xv, yv) = data
    gate_kw, cb_kw, run_kw = parse_variant(variant)
    epochs = run_kw.get("epochs", FLAGS.epochs)
    lr = run_kw.get("learning_rate", FLAGS.learning_rate)
    _common.set_seed(seed)
    steps = -(-len(x) // FLAGS.batch_size) * epochs
    space = build_space(blocks=FLAGS.blocks)
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, steps))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    t0 = time.perf_counter()
    row = {"variant": variant, "seed": seed, "epochs": epochs, "learning_rate": lr}
    if is_dense(variant):
        space.compile(optimizer, loss)
        vals = []

        class _Val(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                vals.append(accuracy(self.model, xv, yv))
                print(f"  epoch {epoch + 1}: val {vals[-1]:.4f} loss {logs['loss']:.4f}",
                      flush=True)
        space.fit(x, y, batch_size=FLAGS.batch_size, epochs=epochs, verbose=0, shuffle=True,
                  callbacks=[_Val()])
        row.update(val_accuracy=vals[-1], per_epoch=[{"epoch": i + 1, "val_accuracy": v}
                                                    for i, v in enumerate(vals)],
                   macs_ratio=1.0, train_macs_ratio=1.0)
    else:
        gate_kw.setdefault("seed_blocks", 1)
        gated = kg.growing.add_gates(space, target=kg.growing.Budget(flops=FLAGS.budget),
                                     seed=seed, **gate_kw)
        gated.compile(optimizer, loss)
        diag = make_diagnostics(xv, yv, FLAGS.check_every)
        history = gated.fit(x, y, batch_size=FLAGS.batch_size, epochs=epochs, verbose=0,
                            shuffle=True,
                            callbacks=[kg.growing.GrowingCallback(**cb_kw), diag])
        final = kg.growing.finalize(gated)
        macs = kg.flops_report(final).macs / kg.flops_report(space).macs
        row.update(val_accuracy=accuracy(final, xv, yv),
                   val_accuracy_bn_recalibrated=recalibrated_accuracy(gated, x, xv, yv),
                   macs_ratio=macs,
                   train_macs_ratio=float(history.history["train_flops"][-1]),
                   per_epoch=diag.epochs, **diag.summary())
    row["train_seconds"] = round(time.perf_counter() - t0, 1)
    return row


def load_cache(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def reusable(row, current):
    prov = row.get("provenance")
    if FLAGS.reuse_from == "any":
        return True
    if prov is None or prov.get("backend") != current["backend"]:
        return False
    flags_of = lambda p: {k: p["flags"].get(k) for k in RESULT_FLAGS}  # noqa: E731
    if flags_of(prov) != flags_of(current):
        return False
    return FLAGS.reuse_from == "flags" or _common.code_key(prov) == _common.code_key(current)


def summarize(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["variant"], r["epochs"]), []).append(r)
    out = []
    for (variant, epochs), rs in groups.items():
        def mean(key):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return statistics.mean(vals) if vals else None
        out.append({"variant": variant, "epochs": epochs, "n": len(rs),
                    "seeds": sorted(r["seed"] for r in rs),
                    "val_accuracy": mean("val_accuracy"),
                    "val_accuracy_std": statistics.pstdev([r["val_accuracy"] for r in rs]),
                    "val_accuracy_bn_recalibrated": mean("val_accuracy_bn_recalibrated"),
                    "macs_ratio": mean("macs_ratio"), "train_macs_ratio": mean("train_macs_ratio"),
                    "grown_epochs_trained_mean": mean("grown_epochs_trained_mean"),
                    "grown_norm_ratio_mean": mean("grown_norm_ratio_mean"),
                    "flips_total": mean("flips_total"),
                    "commits": sorted({_common.commit_label(r.get("provenance")) for r in rs})})
    return out


def markdown(rows, summary, prov):
    f = lambda v, spec=".4f": "" if v is None else format(v, spec)  # noqa: E731
    lines = ["# Growing networks: diagnosis on the validation split", "",
             _common.provenance_line([r.get("provenance") for r in rows]), "",
             f"Search space: benchmarks/growing.py's ResNet-style CNN ({FLAGS.blocks} blocks per "
             f"stage), Fashion-MNIST: {FLAGS.train_images:,} training images, "
             f"{FLAGS.val_images:,} validation images held out from the training split (the only "
             f"images evaluated: the test set is not loaded), batch {FLAGS.batch_size}, Adam "
             f"with a cosine learning rate from {FLAGS.learning_rate}; growing toward "
             f"{FLAGS.budget:.0%} of the space's MACs. Variants: `base` = library defaults, "
             "`dense` = the full space, else `key=value` overrides of add_gates / "
             "GrowingCallback / the run (benchmarks/growing_diagnosis.py docstring).", "",
             "| variant | epochs | seeds | val acc (finalized) | val acc, BN re-estimated "
             "| MACs vs space | train MACs | grown channels' epochs of training (mean) "
             "| grown kernel norm / seed norm at switch-on | commit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['variant']} | {s['epochs']} | {s['n']} | {f(s['val_accuracy'])} ± "
            f"{f(s['val_accuracy_std'])} | {f(s['val_accuracy_bn_recalibrated'])} "
            f"| {f(s['macs_ratio'], '.3f')} | {f(s['train_macs_ratio'], '.3f')} "
            f"| {f(s['grown_epochs_trained_mean'], '.2f')} "
            f"| {f(s['grown_norm_ratio_mean'], '.2f')} | {', '.join(s['commits'])} |")
    lines += ["", "## Per epoch", ""]
    for r in rows:
        lines += [f"### {r['variant']}, seed {r['seed']}, {r['epochs']} epochs "
                  f"(final val {r['val_accuracy']:.4f}; "
                  f"{_common.commit_label(r.get('provenance'))})", ""]
        if is_dense(r["variant"]):
            lines += ["val acc per epoch: " + ", ".join(
                f"{e['val_accuracy']:.4f}" for e in r["per_epoch"]), ""]
            continue
        lines += [f"Grown structures kept: {r['grown_final']} (switch-on epoch histogram "
                  f"{r['grown_switch_on_hist']}); seed structures switched off: "
                  f"{r['seed_final_off']}; grown kernel norm / seed norm at switch-on: mean "
                  f"{f(r['grown_norm_ratio_mean'], '.2f')} (min "
                  f"{f(r['grown_norm_ratio_min'], '.2f')}, max "
                  f"{f(r['grown_norm_ratio_max'], '.2f')}).", "",
                  "| epoch | beta | flops final [min, max in epoch] | lambda [min, max] "
                  "| loss | penalty | task loss | flips | active | switched on "
                  "| sample noise | sample != hard | BN var gap | val acc |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in r["per_epoch"]:
            lines.append(
                f"| {e['epoch']} | {e['beta']:.1f} | {e['flops_final']:.3f} "
                f"[{f(e['ratio_min'], '.3f')}, {f(e['ratio_max'], '.3f')}] "
                f"| [{f(e['lambda_min'], '.2f')}, {f(e['lambda_max'], '.2f')}] "
                f"| {e['loss']:.3f} | {e['penalty_mean']:.3f} | {e['task_loss']:.3f} "
                f"| {e['flips']} | {e['active']} | {e['switched_on_this_epoch']} "
                f"| {f(e['sample_noise'], '.3f')} | {f(e['sample_vs_hard'], '.3f')} "
                f"| {e['bn_var_gap']:.3f} | {e['val_accuracy']:.4f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    from keras_gap import console
    console.quiet_third_party()
    if FLAGS.quick:
        _common.apply_quick({"train_images": 256, "val_images": 128, "epochs": 2,
                             "seeds": 1})
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    stem = os.path.join(FLAGS.output_dir, FLAGS.results_name + ("_quick" if FLAGS.quick else ""))
    cache = stem + "_runs.jsonl"
    current = _common.provenance()
    for v in FLAGS.variants:
        parse_variant(v)
    rows = [r for r in load_cache(cache) if reusable(r, current)]
    if not FLAGS.report_only:
        (x, y), (xv, yv), _ = fashion_splits(FLAGS.train_images, FLAGS.val_images, 1)
        done = {(r["variant"], r["seed"], _common.code_key(r.get("provenance"))) for r in rows}
        for variant in FLAGS.variants:
            for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
                if (variant, seed, _common.code_key(current)) in done:
                    continue
                print(f"{variant} seed {seed}", flush=True)
                row = run_one(variant, seed, ((x, y), (xv, yv)))
                row["provenance"] = _common.provenance()
                row["command"] = "python " + " ".join(sys.argv)
                rows.append(row)
                with open(cache, "a") as f:
                    f.write(json.dumps(row, default=float) + "\n")
                print(f"{variant} seed {seed}: val {row['val_accuracy']:.4f} MACs "
                      f"{row['macs_ratio']:.3f} ({row['train_seconds']} s)", flush=True)
                import keras
                keras.backend.clear_session()
    summary = summarize(rows)
    with open(stem + ".json", "w") as f:
        json.dump({"provenance": current, "summary": summary, "rows": rows}, f, indent=2,
                  default=float)
    text = markdown(rows, summary, current)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
