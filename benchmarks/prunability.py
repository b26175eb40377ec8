"""Prunability of real architectures: channel groups, materialize, equal outputs.

For every ``keras.applications`` model that builds offline (``weights=None``,
a small input, 10 classes, logits out) the script does what a user of the
public API does:

1. ``kg.prune_low_magnitude(model, structure="channel",
   pruning_schedule=kg.ConstantSparsity(0.3, ...), unsupported_layers="keep_dense")``
   and one training step with learning rate 0 (``UpdatePruningStep`` computes
   the masks: the weakest 30% of the channels of every removable group by L1
   norm; BatchNormalization's moving statistics move, so removed channels
   carry non-zero constants that materialize must fold);
2. ``kg.strip_pruning``, then ``kg.materialize(..., return_report=True)``;
3. compares the materialized model's outputs with the stripped model's on
   random inputs, and counts parameters and MACs (``kg.flops_report``) before
   and after.

"Equal outputs" means max |difference| <= 1e-5 * max(1, max |output|). The
goal (issue 9): at least 90% of the models materialize with equal outputs
(Torch-Pruning reports 81 of 85 torchvision models).

Usage:
    KERAS_BACKEND=tensorflow python benchmarks/prunability.py
    python benchmarks/prunability.py --models ResNet50,MobileNetV2 --input_size 64

Writes benchmarks/results/prunability.{json,md}.
"""

import json
import os
import time
import traceback

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

import _common  # noqa: E402
from _machine import machine_info  # noqa: E402

MODELS = [
    "ResNet50", "ResNet50V2", "ResNet101", "MobileNet", "MobileNetV2", "MobileNetV3Small",
    "MobileNetV3Large", "EfficientNetB0", "EfficientNetV2B0", "DenseNet121", "ConvNeXtTiny",
    "NASNetMobile", "Xception", "VGG16", "VGG19", "InceptionV3", "InceptionResNetV2",
    "ResNet101V2", "DenseNet169",
]  # Keras 3.15 has no RegNet in keras.applications.
# Models that need a bigger input than --input_size (minimum sizes of keras.applications).
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}

FLAGS = flags.FLAGS
flags.DEFINE_list("models", MODELS, "keras.applications model names")
flags.DEFINE_integer("input_size", 96, "input height and width")
flags.DEFINE_float("fraction", 0.3, "fraction of the channels of every removable group to remove")
flags.DEFINE_float("tolerance", 1e-5, "relative max abs difference counted as equal outputs")
flags.DEFINE_bool("merge", False, "replace the rows of --models in an existing "
                  "prunability.json (other rows of MODELS are kept, with their dates)")
flags.DEFINE_string("output_dir", os.path.join(os.path.dirname(__file__), "results"),
                    "where prunability.{json,md} go")


def build(name, size):
    import keras
    cls = getattr(keras.applications, name)
    kwargs = dict(weights=None, input_shape=(size, size, 3), classes=10)
    try:
        return cls(classifier_activation=None, **kwargs)
    except TypeError:  # applications without the argument
        return cls(**kwargs)


def zero_channels(model, fraction, x):
    """The public path: channel masks at ``fraction``, applied by one fit step."""
    import keras
    import numpy as np

    import keras_gap as kg

    pruned = kg.prune_low_magnitude(
        model, structure="channel", unsupported_layers="keep_dense",
        pruning_schedule=kg.ConstantSparsity(fraction, begin_step=0, frequency=1))
    pruned.compile(keras.optimizers.SGD(0.0), "mse", run_eagerly=True)
    y = np.zeros((len(x),) + tuple(pruned.outputs[0].shape[1:]), "float32")
    pruned.fit(x, y, batch_size=len(x), epochs=1, verbose=0,
               callbacks=[kg.UpdatePruningStep()])
    return kg.strip_pruning(pruned)


def check(name, size, fraction, tolerance):
    import keras
    import numpy as np

    import keras_gap as kg

    row = {"model": name, "input_size": size,
           "date": _common.utc_now(), "provenance": _common.provenance()}
    t0 = time.perf_counter()
    keras.utils.set_random_seed(0)
    try:
        model = build(name, size)
    except Exception as e:  # noqa: BLE001 - a model that does not build is a result
        row.update(status="does not build", error=f"{type(e).__name__}: {e}"[:300])
        return row
    x = np.random.default_rng(0).normal(size=(4, size, size, 3)).astype("float32")
    try:
        groups = kg.channel_groups(model)
        stripped = zero_channels(model, fraction, x)
        small, report = kg.materialize(stripped, return_report=True)
        y0 = np.asarray(stripped.predict(x, verbose=0))
        y1 = np.asarray(small.predict(x, verbose=0))
        flops = kg.flops_report(small, reference=stripped)
    except Exception as e:  # noqa: BLE001 - a failure is a result, with its message
        row.update(status="error", error=f"{type(e).__name__}: {e}"[:300],
                   trace=traceback.format_exc()[-1500:])
        return row
    diff = float(np.abs(y0 - y1).max())
    scale = max(1.0, float(np.abs(y0).max()))
    blockers = {}
    for _, reason in report.blocked:
        for part in reason.split("; "):
            kind = part.split(" (", 1)[-1].rstrip(")") if " (" in part else part
            blockers[kind] = blockers.get(kind, 0) + 1
    removable = [g for g in groups if g.removable]
    row.update(
        status="equal" if diff <= tolerance * scale else "outputs differ",
        groups=len(groups), removable_groups=len(removable),
        channels=sum(g.size for g in groups),
        removable_channels=sum(g.size for g in removable),
        channels_removed=int(sum(report.removed.values())),
        kept_groups=len(report.kept),
        params_before=report.params_before, params_after=report.params_after,
        macs_before=flops.reference.macs, macs_after=flops.macs,
        not_counted=list(flops.not_counted),
        max_abs_diff=diff, max_abs_output=float(np.abs(y0).max()),
        blockers=dict(sorted(blockers.items(), key=lambda kv: -kv[1])),
        seconds=round(time.perf_counter() - t0, 1))
    return row


def merged(path, result):
    """``result`` with the rows of an earlier run for the other models of MODELS."""
    with open(path) as f:
        old = json.load(f)
    for key in ("input_size", "fraction", "tolerance", "backend"):
        if old.get(key) != result.get(key):
            raise ValueError(f"--merge: {path} was run with {key}={old.get(key)!r}, this run "
                             f"with {result.get(key)!r}; rerun every model instead")
    rows = {r["model"]: r for r in old["rows"]}
    rows.update({r["model"]: r for r in result["rows"]})
    order = MODELS + [m for m in rows if m not in MODELS]
    result["rows"] = [rows[m] for m in order if m in rows and m in MODELS + FLAGS.models]
    return result


def markdown(result):
    rows = result["rows"]
    ok = [r for r in rows if r["status"] == "equal"]
    dates = sorted(r["date"][:16] for r in rows if "date" in r) or [result["date"]]
    when = dates[0] if dates[0] == dates[-1] else f"rows measured {dates[0]} to {dates[-1]}"
    lines = [
        "# Prunability of keras.applications models", "",
        f"{when}, {result['machine']['cpu']} ({result['machine']['logical_cores']} "
        f"logical cores), Keras {result['keras']}, backend {result['backend']}. "
        f"Every model built with `weights=None`, input {result['input_size']}x"
        f"{result['input_size']}x3 (larger where the model needs it), 10 logits; "
        f"{result['fraction']:.0%} of the channels of every removable group zeroed by L1 "
        "norm through `prune_low_magnitude(structure=\"channel\")` and one fit step at "
        "learning rate 0, stripped, materialized; outputs compared on 4 random inputs "
        f"(equal: max abs diff <= {result['tolerance']:g} x max(1, max |output|)).", "",
        _common.provenance_line([r.get("provenance") for r in rows]), "",
        f"**{len(ok)} of {len(rows)} models materialize with equal outputs "
        f"({len(ok) / max(len(rows), 1):.0%}; goal >= 90%).**", "",
        "| model | status | groups (removable) | channels removed | params before -> after "
        "| MACs before -> after | max abs diff | blocked by (groups) |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "groups" not in r:
            lines.append(f"| {r['model']} | {r['status']}: {r.get('error', '')[:120]} "
                         "| | | | | | |")
            continue
        blockers = ", ".join(f"{k} ({v})" for k, v in list(r["blockers"].items())[:3])
        lines.append(
            f"| {r['model']} | {r['status']} | {r['groups']} ({r['removable_groups']}) "
            f"| {r['channels_removed']:,} of {r['channels']:,} "
            f"| {r['params_before'] / 1e6:.2f}M -> {r['params_after'] / 1e6:.2f}M "
            f"({r['params_after'] / r['params_before']:.2f}x) "
            f"| {r['macs_before'] / 1e6:.1f}M -> {r['macs_after'] / 1e6:.1f}M "
            f"({r['macs_after'] / r['macs_before']:.2f}x) "
            f"| {r['max_abs_diff']:.1e} | {blockers or '-'} |")
    lines += ["", "Groups that are not removable keep all their channels (their channels "
              "reach a model output, or a layer the channel analysis cannot see through); "
              "the last column counts them by reason."]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    import keras

    import keras_gap as kg
    from keras_gap import console
    console.quiet_third_party()

    prov = _common.provenance()
    result = {"date": prov["date"], "provenance": prov, "machine": machine_info(),
              "keras": keras.__version__,
              "backend": keras.backend.backend(), "keras_gap": kg.__version__,
              "input_size": FLAGS.input_size, "fraction": FLAGS.fraction,
              "tolerance": FLAGS.tolerance, "rows": []}
    for name in FLAGS.models:
        size = max(FLAGS.input_size, MIN_SIZE.get(name, 0))
        row = check(name, size, FLAGS.fraction, FLAGS.tolerance)
        result["rows"].append(row)
        print(f"{name:18s} {row['status']:15s} "
              + (f"groups {row['groups']} ({row['removable_groups']} removable), params "
                 f"{row['params_before']:,} -> {row['params_after']:,}, max abs diff "
                 f"{row['max_abs_diff']:.2e}, {row['seconds']} s" if "groups" in row
                 else row.get("error", "")), flush=True)
        keras.backend.clear_session()
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, "prunability.json")
    if FLAGS.merge and os.path.exists(path):
        result = merged(path, result)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(FLAGS.output_dir, "prunability.md"), "w") as f:
        f.write(markdown(result))
    ok = sum(r["status"] == "equal" for r in result["rows"])
    print(f"{ok} of {len(result['rows'])} models materialize with equal outputs; wrote "
          f"{FLAGS.output_dir}/prunability.{{json,md}}")


if __name__ == "__main__":
    app.run(main)
