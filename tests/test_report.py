"""sparsity_report on pruned and stripped models."""

import numpy as np
import pytest
import keras

import keras_gap as kg
from keras_gap import masks as mask_lib
from keras_gap.wrapper import collect_wrappers
from pruning_testlib import mlp

pytestmark = pytest.mark.core


def _pruned_at(sparsity):
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, name="d1"),
                              keras.layers.BatchNormalization(),
                              keras.layers.Dense(10, name="d2")])
    pruned = kg.prune_low_magnitude(model)
    for w in collect_wrappers(pruned):
        w.update_masks(sparsity)
    return pruned


def test_report_rows_and_totals_on_pruned_model():
    report = kg.sparsity_report(_pruned_at(0.75))
    assert [r.layer for r in report.rows] == ["d1", "d2"]
    assert [r.shape for r in report.rows] == [(16, 32), (32, 10)]
    assert [r.params for r in report.rows] == [512, 320]
    assert [r.nonzero for r in report.rows] == [128, 80]
    assert [r.sparsity for r in report.rows] == [0.75, 0.75]
    assert report.params == 832 and report.nonzero == 208
    assert report.sparsity == pytest.approx(0.75)


def test_report_counts_effective_weights_of_pruned_model():
    pruned = kg.prune_low_magnitude(mlp())
    w = collect_wrappers(pruned)[0]
    w.masks[0].assign(np.zeros(tuple(w.masks[0].shape), "float32"))  # weights untouched
    assert kg.sparsity_report(pruned).rows[0].nonzero == 0


def test_report_on_stripped_and_plain_models():
    pruned = _pruned_at(0.5)
    stripped = kg.strip_pruning(pruned)
    a, b = kg.sparsity_report(pruned), kg.sparsity_report(stripped)
    assert [(r.layer, r.params, r.nonzero) for r in a.rows] == \
        [(r.layer, r.params, r.nonzero) for r in b.rows]
    dense = kg.sparsity_report(mlp())
    assert dense.sparsity == 0.0 and len(dense.rows) == 3


def test_report_is_printable_and_plain_data():
    report = kg.sparsity_report(_pruned_at(0.9))
    text = str(report)
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["layer", "weight", "shape", "params", "nonzero", "sparsity"]
    assert "16x32" in text and "TOTAL" in lines[-1]
    total_nonzero = mask_lib.num_to_keep(512, 0.9) + mask_lib.num_to_keep(320, 0.9)
    assert str(total_nonzero) in lines[-1]
    data = report.to_dict()
    assert set(data) == {"weights", "total"}
    assert data["total"] == {"params": 832, "nonzero": total_nonzero,
                             "sparsity": pytest.approx(1 - total_nonzero / 832)}
    row = data["weights"][0]
    assert row["layer"] == "d1" and row["shape"] == [16, 32] and row["params"] == 512
    import json
    json.dumps(data)  # serializable


def test_report_on_a_single_layer_and_nested_model():
    layer = kg.prune_low_magnitude(keras.layers.Dense(4))
    layer.build((None, 8))
    layer.update_masks(0.5)
    assert kg.sparsity_report(layer).nonzero == 16
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="inner_d")])
    inp = keras.Input((4,))
    outer = keras.Model(inp, keras.layers.Dense(2, name="outer_d")(inner(inp)))
    assert [r.layer for r in kg.sparsity_report(outer).rows] == ["inner_d", "outer_d"]
