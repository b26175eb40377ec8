"""Prunability of KerasHub models: every family that builds offline from a tiny config.

For each family (its task where one exists, else its backbone), random init, the
script does what a user of the public API does and records which stage fails and why:

1. ``kg.prune_low_magnitude(model, ConstantSparsity(0.5))``: pruned in place, the
   class kept; fit ``--steps`` batches with ``UpdatePruningStep``; every pruned
   weight exactly 50% zero;
2. ``kg.strip_pruning`` (in place), ``model.save`` to ``.keras``, plain
   ``keras.saving.load_model``, outputs equal to the stripped model's
   (max |difference| <= ``--tolerance`` * max(1, max |output|));
3. ``kg.flops_report(model, sequence_length=...)``: layers with weights it
   cannot count;
4. a fresh model: ``kg.prune_gap(partitioning="blocks", steps_per_step=1,
   rounds=1, finetune_steps=1)``, fit with ``GaPCallback`` through the rounds
   and fine-tuning; every pruned weight at the target.

Backbones without a task are fitted with a mean-squared-error loss on their
output against zeros (a stand-in for a task; what matters is that the masks
hold while the model trains). Random data of the model's input structure.

Usage:
    KERAS_BACKEND=tensorflow python benchmarks/kerashub_prunability.py
    python benchmarks/kerashub_prunability.py --families gpt2,bert --quick

Writes benchmarks/results/kerashub_prunability.{json,md}.
"""

import json
import os
import tempfile
import time
import traceback

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

import _common  # noqa: E402

SEQ = 8
TEXT = dict(vocabulary_size=64, num_layers=2, hidden_dim=16, intermediate_dim=32)


def _families():
    """{family: (what it builds, a function returning the model)}."""
    import keras_hub as kh
    m = kh.models
    heads = dict(num_heads=2, max_sequence_length=SEQ)
    gqa = dict(num_query_heads=4, num_key_value_heads=2)
    image = (32, 32, 3)

    def lm(task, backbone):
        return lambda: task(backbone=backbone(), preprocessor=None)

    def clf(task, backbone, **kw):
        return lambda: task(backbone=backbone(), num_classes=3, preprocessor=None, **kw)

    return {
        "bert": ("BertTextClassifier", clf(m.BertTextClassifier,
                                           lambda: m.BertBackbone(**TEXT, **heads))),
        "roberta": ("RobertaTextClassifier", clf(m.RobertaTextClassifier,
                                                 lambda: m.RobertaBackbone(**TEXT, **heads))),
        "distilbert": ("DistilBertTextClassifier", clf(
            m.DistilBertTextClassifier, lambda: m.DistilBertBackbone(**TEXT, **heads))),
        "gpt2": ("GPT2CausalLM", lm(m.GPT2CausalLM, lambda: m.GPT2Backbone(**TEXT, **heads))),
        "opt": ("OPTCausalLM", lm(m.OPTCausalLM, lambda: m.OPTBackbone(**TEXT, **heads))),
        "gemma": ("GemmaCausalLM", lm(m.GemmaCausalLM, lambda: m.GemmaBackbone(
            **TEXT, **gqa, head_dim=8))),
        "llama": ("LlamaCausalLM", lm(m.LlamaCausalLM, lambda: m.LlamaBackbone(**TEXT, **gqa))),
        "mistral": ("MistralCausalLM", lm(m.MistralCausalLM,
                                          lambda: m.MistralBackbone(**TEXT, **gqa))),
        "qwen": ("QwenCausalLM", lm(m.QwenCausalLM, lambda: m.QwenBackbone(**TEXT, **gqa))),
        "vit": ("ViTImageClassifier", clf(m.ViTImageClassifier, lambda: m.ViTBackbone(
            image_shape=image, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
            mlp_dim=32))),
        "resnet": ("ResNetImageClassifier", clf(m.ResNetImageClassifier, lambda: m.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[3],
            stackwise_num_filters=[64, 16], stackwise_num_blocks=[1, 1],
            stackwise_num_strides=[1, 2], block_type="basic_block", image_shape=image))),
        "efficientnet": ("EfficientNetBackbone", lambda: m.EfficientNetBackbone(
            stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 1],
            stackwise_input_filters=[8, 8], stackwise_output_filters=[8, 16],
            stackwise_expansion_ratios=[1, 2], stackwise_squeeze_and_excite_ratios=[0.25, 0.25],
            stackwise_strides=[1, 2], stackwise_block_types=["v1", "v1"],
            width_coefficient=1.0, depth_coefficient=1.0, image_shape=image)),
        "t5": ("T5Backbone", lambda: m.T5Backbone(**TEXT, num_heads=2, key_value_dim=8)),
        "bart": ("BartBackbone", lambda: m.BartBackbone(**TEXT, **heads)),
    }


FLAGS = flags.FLAGS
flags.DEFINE_list("families", None, "families to run (default: all; see _families)")
flags.DEFINE_integer("steps", 4, "training batches of the prune_low_magnitude stage")
flags.DEFINE_integer("batch", 4, "batch size")
flags.DEFINE_float("tolerance", 1e-5, "relative max abs difference counted as equal outputs")
flags.DEFINE_bool("quick", False, "gpt2 and bert only (smoke test)")
flags.DEFINE_integer("seed", 0, "seed of the weights and the random data")
flags.DEFINE_string("output_dir", os.path.join(os.path.dirname(__file__), "results"),
                    "where the results files go")
flags.DEFINE_string("results_name", "kerashub_prunability", "stem of the results files")


def _inputs(model, n, rng):
    """Random inputs of ``model.input``'s structure (tokens below the vocabulary)."""
    import keras
    import numpy as np
    vocab = TEXT["vocabulary_size"]

    def one(spec):
        shape = (n,) + tuple(SEQ if d is None else int(d) for d in spec.shape[1:])
        name = getattr(spec, "name", "") or ""
        if "mask" in name:
            return np.ones(shape, bool)
        if "int" in str(spec.dtype):
            return rng.integers(0, vocab if "segment" not in name else 2, shape).astype("int32")
        return rng.random(shape, dtype=np.float32)

    return keras.tree.map_structure(one, model.input)


def _outputs_of(model, x):
    import keras
    import numpy as np
    out = model.predict(x, verbose=0)
    return [np.asarray(v, np.float64) for v in keras.tree.flatten(out)]


def _targets(model, x):
    import keras
    import numpy as np
    kind = type(model).__name__
    if kind.endswith("CausalLM"):
        return x["token_ids"], None
    if kind.endswith("Classifier"):
        n = len(keras.tree.flatten(x)[0])
        return np.arange(n) % 3, None
    outs = keras.tree.map_structure(np.zeros_like, model.predict(x, verbose=0))
    return outs, "mse"  # a backbone: MSE on its outputs (a stand-in task)


def _compile(model, loss):
    import keras
    if loss is None:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)


def _exact(model, sparsity):
    import numpy as np
    from keras import ops

    from keras_gap import inplace
    worst = 0.0
    for w in inplace.in_place_wrappers(model):
        for weight, mask in zip(w.pruned_weights, w.masks):
            v, m = ops.convert_to_numpy(weight), ops.convert_to_numpy(mask)
            if np.count_nonzero(v[m == 0]):
                raise AssertionError(f"{w.name}: masked weights are not zero")
            worst = max(worst, abs(float(np.mean(v == 0)) - sparsity))
    return worst


def run_family(family, build):
    import keras
    import numpy as np

    import keras_gap as kg
    from keras_gap import inplace
    row = {"family": family, "stages": {}}
    rng = np.random.default_rng(FLAGS.seed)
    stage = "build"
    try:
        keras.utils.set_random_seed(FLAGS.seed)
        model = build()
        row["class"] = type(model).__name__
        row["params"] = int(model.count_params())
        n = FLAGS.batch * FLAGS.steps
        x = _inputs(model, n, rng)
        y, loss = _targets(model, x)

        stage = "prune"
        pruned = kg.prune_low_magnitude(model, pruning_schedule=kg.ConstantSparsity(
            0.5, begin_step=1, frequency=1))
        assert pruned is model and type(pruned).__name__ == row["class"]
        row["wrapped_layers"] = len(inplace.in_place_wrappers(pruned))
        _compile(pruned, loss)
        pruned.fit(x, y, batch_size=FLAGS.batch, epochs=1, verbose=0,
                   callbacks=[kg.UpdatePruningStep()])
        row["sparsity_error"] = _exact(pruned, 0.5)
        row["stages"]["prune_fit"] = "ok"

        stage = "strip_save_load"
        final = kg.strip_pruning(pruned)
        expected = _outputs_of(final, x)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "model.keras")
            final.save(path)
            loaded = keras.saving.load_model(path)
        got = _outputs_of(loaded, x)
        scale = max(1.0, max(float(np.max(np.abs(e))) for e in expected))
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(expected, got))
        row["max_abs_diff"] = diff
        if diff > FLAGS.tolerance * scale:
            raise AssertionError(f"loaded outputs differ by {diff:.3g}")
        row["stages"]["strip_save_load"] = "ok"

        stage = "flops"
        report = kg.flops_report(final, sequence_length=SEQ)
        row["macs"], row["not_counted"] = int(report.macs), list(report.not_counted)
        row["stages"]["flops"] = "ok" if not report.not_counted else (
            f"{len(report.not_counted)} layer(s) not counted")

        stage = "gap"
        keras.utils.set_random_seed(FLAGS.seed)
        fresh = build()
        gap = kg.prune_gap(fresh, target_sparsity=0.5, partitioning="blocks", steps_per_step=1,
                           rounds=1, finetune_steps=1, unsupported_layers="keep_dense")
        k = gap.keras_gap_wrappers[0].pruning_schedule.num_partitions
        row["gap_partitions"] = int(k)
        _compile(gap, loss)
        gap.fit(x, y, batch_size=max(1, n // (k + 1)), epochs=1, verbose=0,
                callbacks=[kg.GaPCallback(verbose=0)])
        row["gap_sparsity_error"] = _exact(gap, 0.5)
        row["stages"]["gap"] = "ok"
    except Exception as e:  # noqa: BLE001 - the row names the stage and the reason
        row["stages"][stage] = "FAILED"
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        row["traceback"] = traceback.format_exc()[-2000:]
    row["end_to_end"] = not row.get("error") and all(
        v == "ok" for k, v in row["stages"].items() if k != "flops")
    return row


def markdown(result):
    rows = result["rows"]
    ok = sum(r["end_to_end"] for r in rows)
    lines = [
        f"# KerasHub prunability ({result['date'][:10]})", "",
        f"keras-hub {result['keras_hub']}, backend {result['backend']}. Tiny random-init "
        "configurations (no preset download): prune_low_magnitude in place at 50% and fit, "
        "strip, save, plain load, equal outputs, flops_report, one GaP round with one "
        "partition per block. Command: `" + result["command"] + "`.", "",
        result["provenance_line"], "",
        f"**End to end: {ok} of {len(rows)} families** (goal: at least 90%).", "",
        "| family | class | params | wrapped layers | prune + fit | strip, save, load | "
        "flops_report | GaP (blocks) | why it failed |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["stages"]
        lines.append(
            f"| {r['family']} | {r.get('class', '-')} | {r.get('params', '-')} | "
            f"{r.get('wrapped_layers', '-')} | {s.get('prune_fit', '-')} | "
            f"{s.get('strip_save_load', '-')} | {s.get('flops', '-')} | "
            f"{s.get('gap', '-')}" + (f" ({r['gap_partitions']} partitions)"
                                      if r.get("gap_partitions") else "")
            + f" | {r.get('error', '')} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    import keras
    import keras_hub

    families = _families()
    names = FLAGS.families or (["gpt2", "bert"] if FLAGS.quick else list(families))
    unknown = sorted(set(names) - set(families))
    if unknown:
        raise SystemExit(f"--families: unknown {unknown}; known: {sorted(families)}")
    rows = []
    for name in names:
        t0 = time.time()
        row = run_family(name, families[name][1])
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        print(f"{name}: {'end to end' if row['end_to_end'] else row.get('error', row['stages'])}"
              f" ({row['seconds']} s)", flush=True)
    prov = _common.provenance()
    result = {"date": _common.utc_now(), "backend": keras.backend.backend(),
              "keras_hub": keras_hub.__version__, "command": "python " + " ".join(
                  ["benchmarks/kerashub_prunability.py"] + [a for a in os.sys.argv[1:]]),
              "rows": rows, "provenance": prov, "provenance_line": _common.provenance_line(prov)}
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    stem = os.path.join(FLAGS.output_dir, FLAGS.results_name + ("_quick" if FLAGS.quick else ""))
    for suffix, text in ((".json", json.dumps(result, indent=2)), (".md", markdown(result))):
        tmp = stem + suffix + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, stem + suffix)
    print(markdown(result))


if __name__ == "__main__":
    app.run(main)
