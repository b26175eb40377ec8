"""keras_gap.structured.trace: the one walk of layer calls read by the channel
analysis, materialize, flops_report and growing."""

import keras
import numpy as np
import pytest
from keras import layers as L

import keras_gap as kg
from keras_gap import registry
from keras_gap.growing import gating
from keras_gap.structured import trace as trace_lib

pytestmark = pytest.mark.core


def _nested():
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, L.Dense(5, name="inner_dense")(inner_in), name="inner")
    i = keras.Input((6,))
    shared = L.Dense(6, name="shared")
    x = shared(i)
    y = inner(x)
    z = L.Dense(6, name="proj")(y)
    out = L.Dense(3, name="head")(L.Add(name="add")([shared(z), x]))
    return keras.Model(i, out, name="outer")


def test_graph_trace_expands_nested_models_and_shares_tensor_keys():
    t = trace_lib.trace(_nested())
    assert t.kind == trace_lib.GRAPH
    paths = [c.path for c in t.calls]
    assert paths == ["shared", "inner/inner_dense", "proj", "shared", "add", "head"]
    by_path = {c.path: c for c in t.calls}
    # The nested model's input is its caller's tensor: one key.
    assert by_path["inner/inner_dense"].in_keys == t.calls[0].out_keys
    assert by_path["inner/inner_dense"].in_shapes == ((None, 6),)
    assert by_path["head"].out_shapes == ((None, 3),)
    assert t.output_keys == list(by_path["head"].out_keys)
    assert [m.name for m, _ in t.models] == ["inner"]
    # A layer called twice: two calls, one entry in layer_calls.
    grouped = {path: calls for path, _, _, calls in t.layer_calls()}
    assert len(grouped["shared"]) == 2 and list(grouped)[0] == "shared"
    assert [layer.name for layer in t.leaves()] == [
        "shared", "inner_dense", "proj", "add", "head"]


def test_wrappers_are_seen_through_and_in_place_wrappers_found():
    model = _nested()
    pruned = kg.prune_low_magnitude(model, pruning_schedule=kg.ConstantSparsity(0.5, 0))
    t = trace_lib.trace(pruned)
    head = [c for c in t.calls if c.path == "head"][0]
    assert isinstance(head.wrapper, kg.PruneLowMagnitude)
    assert head.layer is head.wrapper.layer and head.layer.name == "head"


def test_chain_and_build_shape_traces():
    seq = keras.Sequential([L.Dense(4, name="a"), L.Dense(2, name="b")])
    seq.build((None, 3))
    t = trace_lib.trace(seq)
    assert [(c.path, c.in_shapes, c.out_shapes) for c in t.calls] == [
        ("a", ((None, 3),), ((None, 4),)), ("b", ((None, 4),), ((None, 2),))]

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(3, name="d")

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 5), "float32"))
    t = trace_lib.trace(sub)
    assert t.kind == trace_lib.BUILD_SHAPES
    assert [(c.path, c.in_shapes) for c in t.calls] == [("d", ((1, 5),))]
    with pytest.raises(ValueError, match="not a Sequential or Functional"):
        kg.structured.analyze(sub)


def test_trace_rejects_non_models():
    with pytest.raises(ValueError, match="keras.Model; received"):
        trace_lib.trace(L.Dense(3))


def test_analysis_and_flops_read_the_same_trace_paths():
    model = _nested()
    graph = kg.structured.analyze(model)
    rows = {r.layer for r in kg.flops_report(model).rows}
    assert {graph.paths[id(graph.by_name(n))] for n in ("inner_dense", "head")} == {
        "inner/inner_dense", "head"}
    assert {"inner/inner_dense", "head", "shared", "proj"} <= rows
    # `shared` runs twice: its MACs are counted per call.
    row = [r for r in kg.flops_report(model).rows if r.layer == "shared"][0]
    assert row.macs == 2 * 6 * 6


def test_concrete_calls_record_and_put_every_call_back():
    i = keras.Input((None, 4))
    dense = L.Dense(3, name="d")
    model = keras.Model(i, dense(i))
    marker = []
    undo = registry.replace_call(dense, lambda call: lambda *a, **k: (
        marker.append(1), call(*a, **k))[1])
    own = vars(dense)["call"]
    with pytest.raises(trace_lib.UnknownInputLength):
        trace_lib.concrete_calls(model, [dense])
    assert vars(dense)["call"] is own
    calls = trace_lib.concrete_calls(model, [dense], sequence_length=7)
    assert calls[id(dense)] == [([(1, 7, 4)], [(1, 7, 3)])]
    assert vars(dense)["call"] is own and marker  # the instance call ran and stayed
    undo()
    assert "call" not in vars(dense)


def test_growing_costs_join_nested_layers_by_trace_path():
    """A layer inside a nested model reads gated channels: its MACs scale with the
    gate (its flops row and its analysed layer meet on the path "inner/c2")."""
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(i)
    x = L.ReLU()(x)
    inner_in = keras.Input((8, 8, 8))
    inner = keras.Model(inner_in, L.Conv2D(4, 3, padding="same", name="c2")(inner_in),
                        name="inner")
    x = L.GlobalAveragePooling2D()(inner(x))
    space = keras.Model(i, L.Dense(2, name="head")(x))
    gated = kg.growing.add_gates(space, seed_channels=0.5)
    structure = gating.GateStructure(gated)
    assert [g.targets for g in structure.gates] == [["c1"]]
    rows = {r.layer: r.macs for r in kg.flops_report(space).rows}
    share = float(np.sum(structure.costs()[0]))
    assert share == pytest.approx((rows["c1"] + rows["inner/c2"]) / sum(
        m for m in rows.values() if m), rel=1e-6)
    # Half the channels on: c1 and c2 each cost half.
    half = structure.ratio([np.arange(8) < 4])
    total = sum(m for m in rows.values() if m)
    assert half == pytest.approx((total - (rows["c1"] + rows["inner/c2"]) / 2) / total,
                                 rel=1e-6)
