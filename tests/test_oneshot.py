"""One-shot pruning (kg.oneshot.prune): magnitude, Wanda and SparseGPT on calibration data."""

import numpy as np
import pytest
import keras

import keras_gap as kg
from keras_gap import oneshot
from pruning_testlib import np_

pytestmark = pytest.mark.core


def _data(seed=0, n=512, d=32):
    """Correlated inputs with uneven feature scales: where the input-aware criteria
    should beat magnitude (as in LLM activations)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d))
    scale = np.exp(rng.normal(size=d))
    return (rng.normal(size=(n, d)) @ mix * scale).astype("float32")


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu",
                                                                    name="d1"),
                             keras.layers.Dense(16, name="d2")])


def _heldout_error(method, **kwargs):
    x = _data()
    reference = _mlp().predict(x[256:], verbose=0)
    model, report = oneshot.prune(_mlp(), x[:256], method=method, verbose=0, **kwargs)
    out = model.predict(x[256:], verbose=0)
    return float(np.mean((out - reference) ** 2) / np.mean(reference ** 2)), model, report


@pytest.mark.parametrize("kwargs", [dict(sparsity=0.5), dict(sparsity_m_by_n=(2, 4))])
def test_sparsegpt_beats_wanda_beats_magnitude_on_held_out_inputs(kwargs):
    errors = {m: _heldout_error(m, **kwargs)[0] for m in oneshot.METHODS}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_exact_sparsity_per_output_and_n_by_m_groups():
    _, model, report = _heldout_error("wanda", sparsity=0.5)
    for layer in model.layers:
        kernel = np_(layer.kernel)
        assert (kernel == 0).sum(axis=0).tolist() == [kernel.shape[0] // 2] * kernel.shape[1]
    assert report.sparsity == 0.5 and [r.path for r in report.layers] == ["d1", "d2"]
    for method in ("magnitude", "sparsegpt", "wanda"):
        _, model, _ = _heldout_error(method, sparsity_m_by_n=(1, 4))
        for layer in model.layers:
            groups = (np_(layer.kernel) == 0).reshape(-1, 4, layer.kernel.shape[1])
            assert (groups.sum(axis=1) == 1).all(), method  # 1 zero in every 4 inputs


def test_sparsegpt_at_zero_sparsity_changes_nothing():
    x = _data()
    model = _mlp()
    before = [np_(w).copy() for w in model.weights]
    _, report = oneshot.prune(model, x[:64], method="sparsegpt", sparsity=0.0, verbose=0)
    for a, b in zip(before, model.weights):
        np.testing.assert_allclose(np_(b), a, atol=1e-5)
    assert all(r.error < 1e-8 for r in report.layers)


def test_fine_tuning_with_prune_low_magnitude_keeps_the_one_shot_zeros():
    x = _data()
    model, _ = oneshot.prune(_mlp(), x[:128], method="sparsegpt", sparsity=0.5, verbose=0)
    zeros = [np_(layer.kernel) == 0 for layer in model.layers]
    pruned = kg.prune_low_magnitude(
        model, pruning_schedule=kg.ConstantSparsity(0.5, begin_step=1, end_step=1))
    pruned.compile("adam", "mse")
    pruned.fit(x, np.zeros((len(x), 16)), batch_size=64, epochs=2, verbose=0,
               callbacks=[kg.UpdatePruningStep()])
    final = kg.strip_pruning(pruned)
    for z, layer in zip(zeros, final.layers):
        assert ((np_(layer.kernel) == 0) == z).all()


def test_kerashub_lm_block_by_block_keeps_its_class_and_generates():
    keras_hub = pytest.importorskip("keras_hub")
    lm = keras_hub.models.GPT2CausalLM(backbone=keras_hub.models.GPT2Backbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=8), preprocessor=None)
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, 50, (16, 8)).astype("int32"),
         "padding_mask": np.ones((16, 8), bool)}
    same, report = oneshot.prune(lm, x, method="sparsegpt", sparsity_m_by_n=(2, 4), verbose=0)
    assert same is lm and type(lm).__name__ == "GPT2CausalLM"
    paths = [r.path for r in report.layers]
    assert len(paths) == 12  # q, k, v, output + 2 FFN per block; embeddings and norms not
    assert "gpt2_backbone/transformer_layer_1/self_attention/attention_output" in paths
    assert report.sparsity == 0.5 and report.samples == 16
    out = lm.generate({"token_ids": np.ones((1, 8), "int32"),
                       "padding_mask": np.array([[1, 1, 0, 0, 0, 0, 0, 0]], bool)},
                      max_length=8, stop_token_ids=None)
    assert np.asarray(out["token_ids"]).shape == (1, 8)
    with pytest.raises(ValueError, match=r"takes inputs .*'token_ids': \(None, None\).*"
                                         r"received \['token_ids'\]"):
        oneshot.prune(lm, {"token_ids": x["token_ids"]}, method="wanda")
    with pytest.raises(ValueError, match=r"\['token_ids'\]: dtype float32 does not fit.*int32"):
        oneshot.prune(lm, dict(x, token_ids=x["token_ids"].astype("float32")))


def test_bad_input_is_named():
    x = _data()
    with pytest.raises(ValueError, match=r"shape \(8, 5\) does not fit the model's input.*"
                                         r"\(None, 32\)"):
        oneshot.prune(_mlp(), x[:8, :5])
    with pytest.raises(ValueError, match="`method` must be one of"):
        oneshot.prune(_mlp(), x[:8], method="obs")
    with pytest.raises(ValueError, match=r"keep_dense.*\['nope'\]"):
        oneshot.prune(_mlp(), x[:8], keep_dense=["nope"])
    with pytest.raises(ValueError, match="holds pruning wrappers"):
        oneshot.prune(kg.prune_low_magnitude(_mlp()), x[:8])
    with pytest.raises(ValueError, match=r"structure='channel'.*method='sparsegpt'"):
        oneshot.prune(_mlp(), x[:8], structure="channel", method="sparsegpt")
    with pytest.raises(ValueError, match=r"structure='channel'.*sparsity_m_by_n=\(2, 4\)"):
        oneshot.prune(_mlp(), x[:8], structure="channel", sparsity_m_by_n=(2, 4))
    with pytest.raises(ValueError, match="`structure` must be None .* received 'block'"):
        oneshot.prune(_mlp(), x[:8], structure="block")
    _, report = oneshot.prune(_mlp(), x[:8], keep_dense=["d2"], verbose=0)
    assert [r.path for r in report.layers] == ["d1"] and ("d2", "keep_dense") in report.skipped


def _transformer():
    keras.utils.set_random_seed(0)
    L = keras.layers
    i = keras.Input((6, 16))
    a = L.MultiHeadAttention(4, 4, name="mha")(i, i)
    x = L.LayerNormalization()(L.Add()([i, a]))
    h = L.Dense(32, activation="relu", name="ffn_in")(x)
    x = L.LayerNormalization()(L.Add()([x, L.Dense(16, name="ffn_out")(h)]))
    model = keras.Model(i, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(x)))
    # FFN units 0-7 never fire (bias -100 before a ReLU): their inputs to ffn_out are
    # always 0, so Wanda's |W| x ||X|| finds them although their weights are large.
    model.get_layer("ffn_in").bias.assign(np.where(np.arange(32) < 8, -100.0, 0.0)
                                          .astype("float32"))
    return model


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_channel_structure_removes_whole_heads_and_units(method):
    model = _transformer()
    x = np.random.default_rng(0).normal(size=(64, 6, 16)).astype("float32")
    same, report = oneshot.prune(model, x, method=method, sparsity=0.25, structure="channel",
                                 verbose=0)
    assert same is model
    rows = {r.path: r for r in report.layers}
    assert set(rows) == {"mha/heads", "ffn_in"} and rows["ffn_in"].sparsity == 0.25
    assert dict(report.skipped)["head"].startswith("not removable")
    dead = np.where((np_(model.get_layer("ffn_in").kernel) == 0).all(axis=0))[0].tolist()
    if method == "wanda":
        assert dead == list(range(8))
    else:   # magnitude keeps them: the L1 norm counts the large bias
        assert not set(dead) & set(range(8)) and len(dead) == 8
    assert report.samples == (64 if method == "wanda" else 0)
    assert "groups" in str(report) and "n/a" in str(report)
    small, removed = kg.materialize(model, return_report=True)
    assert removed.removed == {"mha/heads": 1, "ffn_in": 8}
    assert small.get_layer("mha").num_heads == 3 and small.get_layer("ffn_in").units == 24
    np.testing.assert_allclose(np_(small.predict(x, verbose=0)),
                               np_(model.predict(x, verbose=0)), atol=1e-5)


def test_channel_structure_on_a_kerashub_classifier_keeps_its_class():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    clf = keras_hub.models.BertTextClassifier(backbone=keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=4, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=8), num_classes=3, preprocessor=None)
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, 50, (16, 8)).astype("int32"),
         "segment_ids": np.zeros((16, 8), "int32"), "padding_mask": np.ones((16, 8), bool)}
    before = np_(clf.predict(x, verbose=0))
    same, report = oneshot.prune(clf, x, method="wanda", sparsity=0.5, structure="channel",
                                 verbose=0)
    assert same is clf and type(clf).__name__ == "BertTextClassifier"
    groups = {r.path: r.sparsity for r in report.layers}
    assert groups["bert_backbone/transformer_layer_1/self_attention_layer/heads"] == 0.5
    assert groups["bert_backbone/transformer_layer_0/units"] == 0.5
    attention = clf.backbone.get_layer("transformer_layer_0")._self_attention_layer
    q = np_(attention._query_dense.kernel)            # [hidden, heads, head_dim]
    assert sum(bool((q[:, h] == 0).all()) for h in range(4)) == 2
    assert np.abs(np_(clf.predict(x, verbose=0)) - before).max() > 0
    small, removed = kg.materialize(clf, return_report=True)
    assert removed.removed["bert_backbone/transformer_layer_0/units"] == 16
    np.testing.assert_allclose(np_(small.predict(x, verbose=0)),
                               np_(clf.predict(x, verbose=0)), atol=1e-5)


def test_layers_it_cannot_handle_are_skipped_and_listed():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(h))
    x = np.random.default_rng(0).random((8, 8, 8, 3)).astype("float32")
    _, report = oneshot.prune(model, x, method="wanda", verbose=0)
    assert [r.path for r in report.layers] == ["head"]
    assert report.skipped[0][0] == "conv" and "Conv2D" in report.skipped[0][1]
    assert "skipped conv" in str(report)


@pytest.mark.slow   # 46 s: a benchmark's smoke test, like tests/test_structured_benchmarks.py
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a script: TF pass only")
def test_oneshot_lm_benchmark_quick(tmp_path):
    """benchmarks/oneshot_lm.py end to end on tiny sizes (the King James text from
    Debian's bible-kjv): every method and pattern, fine-tuning, GMP and C-GaP."""
    import json
    import shutil
    if shutil.which("bible") is None:
        pytest.skip("Debian package bible-kjv missing: bash tests/install_deps.sh")
    from script_testlib import run_script
    run_script("benchmarks/oneshot_lm.py", "--quick", "--output_dir", str(tmp_path))
    result = json.loads((tmp_path / "oneshot_lm.json").read_text())
    got = {(r["method"], r["pattern"]) for r in result["rows"]}
    assert {("sparsegpt", "2:4"), ("wanda", "50%"), ("magnitude", "50%"),
            ("cgap", "50% (during training)"), ("dense", "-")} <= got
    assert all(r["ppl"] > 1 for r in result["rows"])
    assert result["data"]["license"].startswith("public domain")
