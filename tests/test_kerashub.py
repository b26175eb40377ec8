"""KerasHub models pruned in place: they keep their class, train with exact masks,
generate, strip to the same object, and save / load with plain Keras."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import keras

import keras_gap as kg
from keras_gap import inplace
from keras_gap.wrapper import collect_wrappers
from pruning_testlib import masked_nonzeros, np_

keras_hub = pytest.importorskip("keras_hub")
pytestmark = pytest.mark.core

KW = dict(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
          max_sequence_length=6)


def _lm():
    return keras_hub.models.GPT2CausalLM(backbone=keras_hub.models.GPT2Backbone(**KW),
                                         preprocessor=None)


def _tokens(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = {"token_ids": rng.integers(0, 50, (n, 6)).astype("int32"),
         "padding_mask": np.ones((n, 6), bool)}
    return x, rng.integers(0, 50, (n, 6)).astype("int32")


def _check_exact(model, sparsity):
    wrappers = inplace.in_place_wrappers(model)
    assert wrappers
    for w in wrappers:
        assert sum(masked_nonzeros(w)) == 0, w.name  # masked weights are exactly zero
        for weight in w.pruned_weights:
            assert float(np.mean(np_(weight) == 0)) == pytest.approx(sparsity, abs=0.02)


def test_causal_lm_pruned_in_place_trains_generates_strips_and_loads_without_keras_gap(
        tmp_path):
    lm = _lm()
    pruned = kg.prune_low_magnitude(
        lm, pruning_schedule=kg.ConstantSparsity(0.5, begin_step=1, frequency=1))
    assert pruned is lm and type(pruned).__name__ == "GPT2CausalLM"
    names = [w.name for w in collect_wrappers(pruned)]
    assert "prune_low_magnitude_gpt2_backbone__transformer_layer_0__self_attention" in names
    assert len(names) == 6  # attention + 2 FFN denses per block; embeddings stay dense
    x, y = _tokens()
    spe = 1 if keras.backend.backend() == "torch" else 2  # torch: 1 only
    pruned.compile(optimizer=keras.optimizers.Adam(1e-2), steps_per_execution=spe,
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[kg.UpdatePruningStep()])
    _check_exact(pruned, 0.5)
    out = pruned.generate({"token_ids": np.ones((1, 6), "int32"),
                           "padding_mask": np.array([[1, 1, 0, 0, 0, 0]], bool)},
                          max_length=6, stop_token_ids=None)
    assert np.asarray(out["token_ids"]).shape == (1, 6)
    report = kg.sparsity_report(pruned)
    assert any("transformer_layer_1/feedforward_output_dense" in r.weight for r in report.rows)

    final = kg.strip_pruning(pruned)
    assert final is lm and not collect_wrappers(final)
    dense = final.backbone.get_layer("transformer_layer_0")._feedforward_intermediate_dense
    assert "call" not in vars(dense)  # the class's own call again
    zeros = kg.sparsity_report(final).sparsity
    assert zeros == pytest.approx(report.sparsity)
    path = str(tmp_path / "lm.keras")
    final.save(path)
    code = ("import json, sys, numpy as np, keras, keras_hub; "
            f"m = keras.saving.load_model({path!r}); "
            "z = sum(int(np.sum(keras.ops.convert_to_numpy(w) == 0)) for w in m.weights); "
            "print(json.dumps([type(m).__name__, z, 'keras_gap' in sys.modules]))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, loaded_zeros, imported = json.loads(proc.stdout.strip().splitlines()[-1])
    own_zeros = sum(int(np.sum(np_(w) == 0)) for w in final.weights)
    assert (name, loaded_zeros, imported) == ("GPT2CausalLM", own_zeros, False)


def test_classifier_in_place_weights_checkpoint_restores_masks_and_step(tmp_path):
    def build():
        return keras_hub.models.BertTextClassifier(
            backbone=keras_hub.models.BertBackbone(**KW, name="bert_backbone"), num_classes=2,
            preprocessor=None)

    schedule = kg.PolynomialDecay(0.0, 0.75, begin_step=1, end_step=8, frequency=2)
    clf = kg.prune_low_magnitude(build(), pruning_schedule=schedule)
    assert type(clf).__name__ == "BertTextClassifier"
    rng = np.random.default_rng(1)
    x = {"token_ids": rng.integers(0, 50, (32, 6)).astype("int32"),
         "segment_ids": np.zeros((32, 6), "int32"), "padding_mask": np.ones((32, 6), bool)}
    y = rng.integers(0, 2, 32)
    clf.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    clf.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[kg.UpdatePruningStep()])
    _check_exact(clf, 0.75)
    path = str(tmp_path / "ckpt.weights.h5")
    clf.save_weights(path)
    again = kg.prune_low_magnitude(build(), pruning_schedule=schedule)
    again.load_weights(path)
    for a, b in zip(inplace.in_place_wrappers(clf), inplace.in_place_wrappers(again)):
        for m, n in zip(a.masks, b.masks):
            np.testing.assert_array_equal(np_(m), np_(n))
        assert int(np_(b.pruning_step)) == int(np_(a.pruning_step)) == 8
    np.testing.assert_allclose(np_(again.predict(x, verbose=0)),
                               np_(clf.predict(x, verbose=0)), atol=1e-5)


def test_in_place_bad_input_and_pruning_twice():
    lm = _lm()
    kg.prune_low_magnitude(lm, pruning_policy=lambda layer: "intermediate" in layer.name)
    assert len(inplace.in_place_wrappers(lm)) == 2  # the policy kept the rest dense
    with pytest.warns(UserWarning, match="already wrapped"):
        assert kg.prune_low_magnitude(lm) is lm
    with pytest.raises(ValueError, match="no prunable weights"):
        kg.prune_low_magnitude(_lm(), pruning_policy=lambda layer: False)


def test_unknown_weight_layers_in_place_and_gap_say_what_to_do():
    @keras.saving.register_keras_serializable(package="keras_gap_tests")
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=shape[-1:], initializer="ones")

        def call(self, x):
            return x * self.w

    class Net(keras.Model):  # a Functional subclass, as KerasHub's
        def __init__(self, **kwargs):
            x = keras.Input((4,))
            y = keras.layers.Dense(2, name="head")(Scale(name="scale")(x))
            super().__init__(x, y, **kwargs)

    with pytest.raises(ValueError, match=r"\['scale \(Scale\)'\] own weights.*keep_dense"):
        kg.prune_low_magnitude(Net())
    net = kg.prune_low_magnitude(Net(), unsupported_layers="keep_dense")
    assert type(net).__name__ == "Net" and len(inplace.in_place_wrappers(net)) == 1
    with pytest.raises(ValueError, match=r"distribution='erk' is not supported"):
        kg.prune_gap(_lm(), target_sparsity=0.5, num_partitions=2, steps_per_step=2,
                     structure="channel", distribution="erk")
    with pytest.raises(ValueError, match="partitioning='blocks'.*Sequential / Functional"):
        kg.prune_gap(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]),
                     partitioning="blocks", steps_per_step=2)


def test_gap_in_place_one_partition_per_block():
    """prune_gap on a KerasHub model: in place, partitions by path, partitioning=
    "blocks": during the rounds exactly one transformer block is dense, then every
    layer is at the target; generate() works."""
    lm = _lm()
    with pytest.raises(ValueError, match=r"2 partitions.*num_partitions=3 differs"):
        kg.prune_gap(lm, target_sparsity=0.75, num_partitions=3, partitioning="blocks",
                     steps_per_step=2)
    pruned = kg.prune_gap(lm, target_sparsity=0.75, partitioning="blocks", steps_per_step=2,
                          rounds=1, finetune_steps=2)
    assert pruned is lm
    wrappers = inplace.in_place_wrappers(pruned)
    block_of = {w.name: w.name.split("__")[1] for w in wrappers}
    assert sorted(set(block_of.values())) == ["transformer_layer_0", "transformer_layer_1"]
    dense_blocks = []

    def record(batch, logs):
        recorder.model  # JAX: sync the trainer's state into the variables first
        dense = {block_of[w.name] for w in wrappers
                 if all(float(np.mean(np_(m))) == 1.0 for m in w.masks)}
        dense_blocks.append(sorted(dense))

    x, y = _tokens(n=8)
    pruned.compile(optimizer="adam",
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    recorder = keras.callbacks.LambdaCallback(on_train_batch_end=record)
    pruned.fit(x, y, batch_size=2, epochs=2, verbose=0, shuffle=False,
               callbacks=[kg.GaPCallback(verbose=0), recorder])
    assert dense_blocks[:4] == [["transformer_layer_0"]] * 2 + [["transformer_layer_1"]] * 2
    assert dense_blocks[4:] == [[]] * 4  # fine-tuning: every layer at the target
    _check_exact(pruned, 0.75)
    out = pruned.generate({"token_ids": np.ones((1, 6), "int32"),
                           "padding_mask": np.array([[1, 1, 0, 0, 0, 0]], bool)},
                          max_length=6, stop_token_ids=None)
    assert np.asarray(out["token_ids"]).shape == (1, 6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a script: TF pass only")
def test_kerashub_prunability_benchmark_runs(tmp_path):
    """The benchmark end to end on two families (GPT-2; Llama: grouped-query
    attention and its own norm layers, kept dense by rule)."""
    from script_testlib import run_script
    run_script("benchmarks/kerashub_prunability.py", "--families", "gpt2,llama",
               "--output_dir", str(tmp_path))
    result = json.loads((tmp_path / "kerashub_prunability.json").read_text())
    assert [r["family"] for r in result["rows"]] == ["gpt2", "llama"]
    assert all(r["end_to_end"] for r in result["rows"]), [r.get("error") for r in result["rows"]]
    assert result["provenance"]["git"]["commit"]


def test_gap_in_place_keep_dense_by_path():
    lm = _lm()
    with pytest.raises(ValueError, match=r"keep_dense.*\['gpt2_backbone/nope'\].*"
                                         r"gpt2_backbone/transformer_layer_0/self_attention"):
        kg.prune_gap(lm, target_sparsity=0.5, keep_dense=["gpt2_backbone/nope"],
                     steps_per_step=2, num_partitions=2)
    kept = "gpt2_backbone/transformer_layer_1/feedforward_output_dense"
    pruned = kg.prune_gap(lm, target_sparsity=0.5, keep_dense=[kept], steps_per_step=2,
                          num_partitions=2)
    names = [w.name for w in inplace.in_place_wrappers(pruned)]
    assert inplace.wrapper_name(kept) not in names and len(names) == 5
    with pytest.raises(ValueError, match="already pruned"):
        kg.prune_gap(pruned, target_sparsity=0.5, steps_per_step=2)


def _gap_lm_run(tmp_path, interrupt):
    """GaP in place (one partition per block), 3 epochs of 4 steps; optionally saved
    as `.keras` after epoch 1 (inside the rounds) and loaded with kg.load_model."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(5)
    lm = keras_hub.models.GPT2CausalLM(
        backbone=keras_hub.models.GPT2Backbone(**dict(KW, dropout=0.0)), preprocessor=None)
    lm = kg.prune_gap(lm, target_sparsity=0.75, partitioning="blocks", steps_per_step=3,
                      rounds=1, finetune_steps=4)
    x, y = _tokens(n=16)
    lm.compile(optimizer=keras.optimizers.Adam(1e-2),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kwargs = dict(batch_size=4, verbose=0, shuffle=False)
    if not interrupt:
        lm.fit(x, y, epochs=3, callbacks=[kg.GaPCallback(verbose=0)], **kwargs)
        return lm
    lm.fit(x, y, epochs=1, callbacks=[kg.GaPCallback(verbose=0)], **kwargs)
    path = str(tmp_path / "mid.keras")
    lm.save(path)
    del lm
    keras.backend.clear_session()
    with pytest.warns(UserWarning):  # KerasHub: plain Keras loads it dense, uncompiled
        plain = keras.saving.load_model(path)
    assert type(plain).__name__ == "GPT2CausalLM" and not inplace.in_place_wrappers(plain)
    lm = kg.load_model(path)
    assert type(lm).__name__ == "GPT2CausalLM"
    assert [int(np_(w.pruning_step)) for w in inplace.in_place_wrappers(lm)] == [4] * 6
    lm.fit(x, y, epochs=3, initial_epoch=1, callbacks=[kg.GaPCallback(verbose=0)], **kwargs)
    return lm


def _by_path(model):
    seen, out = {}, {}
    for v in model.weights:
        i = seen[v.path] = seen.get(v.path, -1) + 1
        out[(v.path, i)] = np_(v)
    return out


def test_gap_in_place_keras_checkpoint_resumes_exactly(tmp_path):
    """A `.keras` file written in the middle of GaP's rounds resumes with the same
    masks, step, weights and optimizer state (kg.load_model re-attaches the masks;
    the KerasHub task, whose compile() is its own, is compiled from the file)."""
    straight = _by_path(_gap_lm_run(tmp_path, interrupt=False))
    resumed_model = _gap_lm_run(tmp_path, interrupt=True)
    resumed = _by_path(resumed_model)
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        np.testing.assert_allclose(resumed[key], value, rtol=1e-5, atol=1e-6, err_msg=str(key))
    _check_exact(resumed_model, 0.75)


def test_load_model_names_missing_layers_and_loads_other_files_plainly(tmp_path):
    lm = kg.prune_low_magnitude(_lm(), pruning_schedule=kg.ConstantSparsity(0.5, 0))
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    other = keras_hub.models.GPT2CausalLM(
        backbone=keras_hub.models.GPT2Backbone(**dict(KW, num_layers=1)), preprocessor=None)
    bad = str(tmp_path / "bad.keras")
    # The archive of a pruned 2-block LM with the config of a 1-block one.
    import zipfile
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                data = json.dumps(keras.saving.serialize_keras_object(other)).encode()
            dst.writestr(item, data)
    with pytest.raises(ValueError, match=r"masks for layers \[.*transformer_layer_1/"):
        kg.load_model(bad)
    final = str(tmp_path / "final.keras")
    kg.strip_pruning(lm).save(final)
    loaded = kg.load_model(final)
    assert type(loaded).__name__ == "GPT2CausalLM" and not inplace.in_place_wrappers(loaded)


def _h5_keys(path):
    import io
    import zipfile
    import h5py
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        keys = []
        h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r").visit(keys.append)
    return names, sorted(keys)


def test_strip_in_place_leaves_a_plain_compiled_model(tmp_path):
    """After strip_pruning in place the model trains on without callbacks (its own
    optimizer back, state kept) and its `.keras` file holds exactly what a
    never-pruned model's holds: no wrapper, no second optimizer, no keras-gap asset."""
    x, y = _tokens()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    files = []
    for prune in (False, True):
        keras.backend.clear_session()
        lm = _lm()
        if prune:
            lm = kg.prune_low_magnitude(lm, pruning_schedule=kg.ConstantSparsity(0.5, 0))
        lm.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
        lm.fit(x, y, batch_size=8, verbose=0,
               callbacks=[kg.UpdatePruningStep()] if prune else [])
        final = kg.strip_pruning(lm)
        assert final is lm and type(final.optimizer).__name__ == "Adam"
        iterations = int(np_(final.optimizer.iterations))
        final.fit(x, y, batch_size=8, verbose=0)  # no callback needed any more
        assert int(np_(final.optimizer.iterations)) == iterations + 2
        path = str(tmp_path / f"{prune}.keras")
        final.save(path)
        files.append(_h5_keys(path))
    assert files[1] == files[0]
    assert not any("keras_gap" in name for name in files[1][0])


def _resnet_classifier():
    m = keras_hub.models
    return m.ResNetImageClassifier(backbone=m.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(16, 16, 3)), num_classes=3, preprocessor=None)


def test_channel_pruning_in_place_then_materialize_a_kerashub_cnn():
    """structure="channel" in place on KerasHub's ResNetImageClassifier: the class
    stays while training; coupled channels (BatchNorm, the residual add) are pruned
    together; materialize then removes them (a plain Functional model: its widths no
    longer fit ResNetBackbone's config) with outputs equal to the stripped model's."""
    clf = kg.prune_low_magnitude(_resnet_classifier(), structure="channel",
                                 pruning_schedule=kg.ConstantSparsity(0.5, 0, frequency=1))
    assert type(clf).__name__ == "ResNetImageClassifier"
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 16, 16, 3)).astype("float32"), rng.integers(0, 3, 16)
    clf.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clf.fit(x, y, batch_size=8, verbose=0, callbacks=[kg.UpdatePruningStep()])
    stripped = kg.strip_pruning(clf)
    assert type(stripped).__name__ == "ResNetImageClassifier"
    small, report = kg.materialize(stripped, return_report=True)
    assert report.removed == {"conv1_conv": 32, "stack0_block0_1_conv": 32,
                              "stack1_block0_1_conv": 8, "stack1_block0_2_conv": 8}
    assert report.params_after < 0.3 * report.params_before
    np.testing.assert_allclose(np_(small.predict(x, verbose=0)),
                               np_(stripped.predict(x, verbose=0)), atol=1e-4)


def test_channel_pruning_in_place_masks_heads_and_ffn_units():
    """structure="channel" on a KerasHub classifier: whole attention heads and FFN
    units of every TransformerEncoder are masked (the groups of channel_groups);
    materialize removes the FFN units through the block's config
    (intermediate_dim), keeps the heads masked and says why; outputs equal, the
    result saves and loads with its TransformerEncoder blocks."""
    def build():
        keras.utils.set_random_seed(0)
        return keras_hub.models.BertTextClassifier(
            backbone=keras_hub.models.BertBackbone(**KW, name="bert_backbone"), num_classes=2,
            preprocessor=None)

    groups = {g.name: g for g in kg.channel_groups(build())}
    heads = groups["bert_backbone/transformer_layer_0/self_attention_layer/heads"]
    units = groups["bert_backbone/transformer_layer_0/units"]
    assert (heads.kind, heads.size, heads.removable) == ("heads", 2, True)
    assert (units.kind, units.size, units.removable) == ("units", 16, True)
    assert units.consumers == ("bert_backbone/transformer_layer_0/feedforward_output_dense",)
    clf = kg.prune_low_magnitude(build(), pruning_schedule=kg.ConstantSparsity(
        0.5, begin_step=1, frequency=1), structure="channel")
    assert [w.in_place_path for w in inplace.in_place_wrappers(clf)] == [
        f"bert_backbone/transformer_layer_{i}/{n}" for i in (0, 1)
        for n in ("self_attention_layer", "feedforward_intermediate_dense")] + [
        "bert_backbone/pooled_dense", "logits"]
    x = {"token_ids": np.random.default_rng(0).integers(0, 50, (16, 6)).astype("int32"),
         "segment_ids": np.zeros((16, 6), "int32"), "padding_mask": np.ones((16, 6), "int32")}
    y = np.arange(16) % 2
    clf.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    clf.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[kg.UpdatePruningStep()])
    final = kg.strip_pruning(clf)
    for i in (0, 1):
        block = final.backbone.get_layer(f"transformer_layer_{i}")
        q = np_(block._self_attention_layer.query_dense.kernel)
        assert [bool((q[:, h] == 0).all()) for h in range(2)].count(True) == 1
        ffn = np_(block._feedforward_intermediate_dense.kernel)
        assert int((ffn == 0).all(axis=0).sum()) == 8
    small, report = kg.materialize(final, return_report=True)
    assert [g for g, n in report.removed.items() if n] == [
        f"bert_backbone/transformer_layer_{i}/units" for i in (0, 1)] + ["pooled_dense"]
    assert any("key_dim = hidden_dim // num_heads" in reason for _, _, reason in report.kept)
    block = small.get_layer("bert_backbone").get_layer("transformer_layer_0")
    assert type(block).__name__ == "TransformerEncoder" and block.intermediate_dim == 8
    np.testing.assert_allclose(np_(small.predict(x, verbose=0)),
                               np_(final.predict(x, verbose=0)), atol=1e-5)
    assert kg.flops_report(small, reference=final, sequence_length=6).macs_ratio < 0.95
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "small.keras")
        small.save(path)
        again = keras.saving.load_model(path)
    np.testing.assert_allclose(np_(again.predict(x, verbose=0)),
                               np_(small.predict(x, verbose=0)), atol=1e-6)


def test_channel_pruning_in_place_names_blocks_without_structures():
    @keras.saving.register_keras_serializable(package="keras_gap_tests")
    class TwoDense(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.a, self.b = keras.layers.Dense(4), keras.layers.Dense(4)

        def build(self, shape):
            self.a.build(shape)
            self.b.build(shape[:-1] + (4,))

        def call(self, x):
            return self.b(self.a(x))

    class Net(keras.Model):
        def __init__(self, head=True, **kwargs):
            x = keras.Input((4,))
            y = TwoDense(name="block")(x)
            if head:
                y = keras.layers.Dense(2, name="head")(keras.layers.Dense(3, name="mid")(y))
            super().__init__(x, y, **kwargs)

    with pytest.warns(UserWarning, match=r"the 2 layers inside composite layers.*no attention "
                                         "heads or FFN units"):
        net = kg.prune_low_magnitude(Net(), structure="channel")
    assert [w.in_place_path for w in inplace.in_place_wrappers(net)] == ["mid", "head"]
    with pytest.raises(ValueError, match="no layer with channels, heads or FFN units"):
        with pytest.warns(UserWarning):
            kg.prune_low_magnitude(Net(head=False), structure="channel")
    # GaP's channel units in place: a GPT-2 block's attention (heads) and FFN (units).
    lm = kg.prune_gap(_lm(), target_sparsity=0.5, structure="channel", steps_per_step=1,
                      partitioning="blocks")
    wrappers = inplace.in_place_wrappers(lm)
    assert {w.structure for w in wrappers} == {"channel"}
    assert sorted(w.in_place_path.split("/", 2)[2] for w in wrappers) == [
        "feedforward_intermediate_dense", "feedforward_intermediate_dense",
        "self_attention", "self_attention"]


def _training_cost_start(model):
    cost = kg.TrainingCost()
    cost.set_model(model)
    cost.on_train_begin()


def test_fggp_and_training_cost_in_place():
    """FGGP's gradient criterion and TrainingCost work on a model pruned in place."""
    lm = kg.prune_low_magnitude(
        _lm(), pruning_schedule=kg.PolynomialDecay(0.0, 0.75, begin_step=1, end_step=6,
                                                   frequency=1),
        criterion=kg.criteria.FGGP(rate=0.5), scope="global")
    x, y = _tokens()
    lm.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    with pytest.warns(UserWarning, match=r"TrainingCost\(sequence_length=...\)"):
        _training_cost_start(lm)  # token sequences of unknown length: says what to pass
    cost = kg.TrainingCost(sequence_length=6)
    lm.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[kg.UpdatePruningStep(), cost])
    report = kg.sparsity_report(lm)
    pruned = [r for r in report.rows if "transformer_layer" in r.weight]
    total = sum(r.params for r in pruned)
    assert 1 - sum(r.nonzero for r in pruned) / total == pytest.approx(0.75, abs=0.01)
    assert sum(masked_nonzeros(w)[0] for w in inplace.in_place_wrappers(lm)) == 0
    assert cost.steps == 8 and 0.3 < cost.relative < 1.0


def test_growing_gates_a_kerashub_cnn_and_finalizes():
    """kg.growing on KerasHub's ResNetBackbone: add_gates reads its channel groups (the
    gated space is a plain Functional model of the same graph), trains with
    GrowingCallback, and finalize materializes it. A task nesting the backbone is
    refused, naming the nested layers."""
    rng = np.random.default_rng(0)
    backbone = _resnet_classifier().backbone
    x = rng.random((16, 16, 16, 3)).astype("float32")
    y = np.zeros((16,) + tuple(backbone.output.shape[1:]), "float32")
    gated = kg.growing.add_gates(backbone, seed_channels=0.25,
                                 target=kg.growing.Budget(flops=0.5))
    gated.compile("adam", "mse")
    gated.fit(x, y, batch_size=8, epochs=1, verbose=0,
              callbacks=[kg.growing.GrowingCallback(final_temperature=200)])
    small = kg.growing.finalize(gated)
    assert small.count_params() < backbone.count_params()
    assert small.predict(x, verbose=0).shape[0] == 16
    with pytest.raises(ValueError, match="inside a nested model"):
        kg.growing.add_gates(_resnet_classifier(), seed_channels=0.25)


def test_flops_report_keeps_the_masked_calls_of_a_model_pruned_in_place():
    """flops_report records composite layers through their `call`; the masked call
    prune_in_place put on each layer must still be there afterwards (it was dropped)."""
    lm = kg.prune_low_magnitude(_lm(), pruning_schedule=kg.ConstantSparsity(0.5, 0))
    layers = [w.layer for w in inplace.in_place_wrappers(lm)]
    calls = [vars(layer)["call"] for layer in layers]
    kg.flops_report(lm, sequence_length=6)
    assert [vars(layer).get("call") for layer in layers] == calls


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="SavedModel: TF backend")
def test_stripped_in_place_model_exports_saved_model_and_tflite_refuses_dict_inputs(tmp_path):
    """After strip in place, model.export works (a stale tracked-attribute name broke
    it), and the SavedModel converts to sparse TFLite with outputs equal to Keras';
    to_tflite refuses named inputs clearly and names that route."""
    import tensorflow as tf
    clf = kg.prune_low_magnitude(keras_hub.models.BertTextClassifier(
        backbone=keras_hub.models.BertBackbone(**KW), num_classes=2, preprocessor=None),
        pruning_schedule=kg.ConstantSparsity(0.5, 0))
    rng = np.random.default_rng(1)
    x = {"token_ids": rng.integers(0, 50, (1, 6)).astype("int32"),
         "segment_ids": np.zeros((1, 6), "int32"), "padding_mask": np.ones((1, 6), "int32")}
    clf.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clf.fit(x, np.zeros(1), verbose=0, callbacks=[kg.UpdatePruningStep()])
    final = kg.strip_pruning(clf)
    with pytest.raises(ValueError, match=r"named \(dict\) inputs.*from_saved_model"):
        kg.export.to_tflite(final, str(tmp_path / "m.tflite"))
    final.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"))
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    runner = tf.lite.Interpreter(model_content=converter.convert()).get_signature_runner()
    got = list(runner(**{k: v for k, v in x.items()}).values())[0]
    np.testing.assert_allclose(got, np_(final.predict(x, verbose=0)), atol=1e-4)


def test_keep_dense_policy_names_sublayers_by_path():
    lm = _lm()
    path = "gpt2_backbone/transformer_layer_0/feedforward_output_dense"
    pruned = kg.prune_low_magnitude(lm, pruning_policy=kg.KeepDense([path, "self_attention"]))
    wrapped = {w.in_place_path for w in inplace.in_place_wrappers(pruned)}
    assert wrapped == {"gpt2_backbone/transformer_layer_0/feedforward_intermediate_dense",
                       "gpt2_backbone/transformer_layer_1/feedforward_intermediate_dense",
                       "gpt2_backbone/transformer_layer_1/feedforward_output_dense"}
    with pytest.raises(ValueError, match=r"KeepDense names layers that are not in model .*"
                                         r"\['transformer_layer_9/nope'\].*transformer_layer_0/"):
        kg.prune_low_magnitude(_lm(), pruning_policy=kg.KeepDense(["transformer_layer_9/nope"]))
    with pytest.raises(ValueError, match="list of layer names or paths; received 'logits'"):
        kg.KeepDense("logits")
    # The same policy on a clone-pruned Functional model: names as in tf-mot.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"),
                              keras.layers.Dense(2, name="b")])
    pruned = kg.prune_low_magnitude(model, pruning_policy=kg.KeepDense(["b"]))
    assert [type(l).__name__ for l in pruned.layers] == ["PruneLowMagnitude", "Dense"]


def test_channel_gap_in_place_grows_and_prunes_heads_and_units_per_block():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    clf = keras_hub.models.BertTextClassifier(backbone=keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=4, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=8), num_classes=3, preprocessor=None)
    pruned = kg.prune_gap(clf, target_sparsity=0.5, partitioning="blocks", steps_per_step=2,
                          rounds=1, finetune_steps=2, structure="channel",
                          keep_dense=["pooled_dense"])
    parts = {w.in_place_path: w.pruning_schedule.partition
             for w in inplace.in_place_wrappers(pruned)}
    block = "bert_backbone/transformer_layer_{}/"
    assert parts == {block.format(i) + name: i for i in (0, 1)
                     for name in ("self_attention_layer", "feedforward_intermediate_dense")}
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, 50, (32, 8)).astype("int32"),
         "segment_ids": np.zeros((32, 8), "int32"), "padding_mask": np.ones((32, 8), bool)}
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, rng.integers(0, 3, 32), batch_size=8, epochs=2, verbose=0,
               callbacks=[kg.GaPCallback(verbose=0)])   # 2 x 2 steps + 2 fine-tune <= 8
    final = kg.strip_pruning(pruned)
    assert type(final).__name__ == "BertTextClassifier"
    for i in (0, 1):
        attention = final.backbone.get_layer(f"transformer_layer_{i}")._self_attention_layer
        q = np_(attention._query_dense.kernel)
        assert sum(bool((q[:, h] == 0).all()) for h in range(4)) == 2
    small, report = kg.materialize(final, return_report=True)
    assert report.removed[block.format(0) + "units"] == 16
    np.testing.assert_allclose(np_(small.predict(x, verbose=0)),
                               np_(final.predict(x, verbose=0)), atol=1e-5)
