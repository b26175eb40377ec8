"""Attention heads and FFN units as channel groups: listed, masked, materialized."""

import os
import tempfile

import keras
import numpy as np
import pytest
from keras import layers as L

import keras_gap as kg
from keras_gap import registry
from keras_gap.structured import analyze
from pruning_testlib import np_

pytestmark = pytest.mark.core


def _transformer(heads=4, key_dim=4, width=16, ffn=32, seq=6, name="mha"):
    i = keras.Input((seq, width))
    a = L.MultiHeadAttention(heads, key_dim, name=name)(i, i)
    x = L.LayerNormalization(name="ln1")(L.Add()([i, a]))
    h = L.Dense(ffn, activation="gelu", name="ffn_in")(x)
    x = L.LayerNormalization(name="ln2")(L.Add()([x, L.Dense(width, name="ffn_out")(h)]))
    return keras.Model(i, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(x)))


def test_registry_head_axes_and_structures():
    mha = L.MultiHeadAttention(4, 8)
    x = np.zeros((1, 5, 16), "float32")
    mha(x, x)
    assert registry.head_axes(mha.query_dense) == (1, 0)
    assert registry.head_axes(mha.output_dense) is None   # reads heads, not a producer
    assert [(v.path.split("/")[-2:], a) for v, a in registry.channel_weights(mha)][:2] == [
        (["query", "kernel"], 1), (["query", "bias"], 0)]
    (st,) = registry.structures(mha)
    assert (st.kind, st.size, st.owner) == ("heads", 4, mha)
    gqa = L.GroupQueryAttention(8, num_query_heads=4, num_key_value_heads=2)
    gqa(x, x)
    (st,) = registry.structures(gqa)
    assert st.size == 2 and [r for _, r in st.producers] == [2, 1, 1]
    assert registry.channel_weights(gqa) == []   # no single keep vector for q and k/v


def test_heads_and_units_are_groups():
    groups = {g.name: g for g in kg.channel_groups(_transformer())}
    heads = groups["mha/heads"]
    assert (heads.kind, heads.size, heads.removable, heads.producers) == (
        "heads", 4, True, ("mha",))
    assert "4 heads, removable" in str(heads)
    ffn = groups["ffn_in"]   # a plain Dense pair: FFN units are channels
    assert ffn.removable and ffn.consumers == ("ffn_out",)


def test_grouped_query_attention_groups_share_kv_heads():
    i = keras.Input((5, 16))
    gqa = L.GroupQueryAttention(4, num_query_heads=4, num_key_value_heads=2, name="gqa")
    model = keras.Model(i, L.Dense(2)(L.Flatten()(gqa(i, i))))
    graph = analyze(model)
    (g,) = [g for g in graph.groups if g.kind == "heads"]
    assert g.size == 2 and g.producers == ("gqa/query", "gqa/key", "gqa/value")
    assert g.consumers == ("gqa/attention_output",)
    assert graph.positions(gqa._query_dense, g.index).tolist() == [0, 0, 1, 1]
    assert graph.positions(gqa._key_dense, g.index).tolist() == [0, 1]


def test_ffn_units_blocked_when_activation_is_not_zero_at_zero():
    keras_hub = pytest.importorskip("keras_hub")
    i = keras.Input((6, 8))
    block = keras_hub.layers.TransformerEncoder(16, 2, activation="sigmoid", name="block")
    model = keras.Model(i, L.Dense(2)(L.GlobalAveragePooling1D()(block(i))))
    units = [g for g in kg.channel_groups(model) if g.kind == "units"][0]
    assert not units.removable
    assert units.blocked_by == (("block/units", "the intermediate activation is not zero at "
                                 "zero"),)


@pytest.mark.parametrize("schedule", ["constant", "gap"])
def test_heads_masked_trained_and_removed(schedule):
    keras.utils.set_random_seed(1)
    model = _transformer()
    x = np.random.default_rng(0).normal(size=(32, 6, 16)).astype("float32")
    y = np.arange(32) % 3
    if schedule == "constant":
        pruned = kg.prune_low_magnitude(model, pruning_schedule=kg.ConstantSparsity(
            0.5, begin_step=1, frequency=1), structure="channel")
        callbacks, epochs = [kg.UpdatePruningStep()], 1
    else:
        pruned = kg.prune_gap(model, target_sparsity=0.5, num_partitions=2, rounds=1,
                              steps_per_step=2, finetune_steps=2, structure="channel",
                              keep_dense=["head"], seed=0)
        callbacks, epochs = [kg.GaPCallback(verbose=0)], 2   # 2 x 2 steps + 2 fine-tune <= 8
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks)
    final = kg.strip_pruning(pruned)
    mha = final.get_layer("mha")
    zero = [all(bool((np_(d.kernel)[:, h] == 0).all()) and bool((np_(d.bias)[h] == 0).all())
                for d in (mha.query_dense, mha.key_dense, mha.value_dense)) for h in range(4)]
    assert zero.count(True) == 2
    small, report = kg.materialize(final, return_report=True)
    assert report.removed["mha/heads"] == 2
    assert small.get_layer("mha").num_heads == 2 and small.get_layer("mha").key_dim == 4
    np.testing.assert_allclose(np_(small.predict(x, verbose=0)),
                               np_(final.predict(x, verbose=0)), atol=1e-5)
    flops = kg.flops_report(small, reference=final)
    row = {r.layer: r for r in flops.rows}["mha"]
    dense_row = {r.layer: r for r in flops.reference.rows}["mha"]
    assert row.macs == dense_row.macs // 2   # every term of attention scales with heads
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "small.keras")
        small.save(path)
        again = keras.saving.load_model(path)
    np.testing.assert_allclose(np_(again.predict(x, verbose=0)),
                               np_(small.predict(x, verbose=0)), atol=1e-6)
