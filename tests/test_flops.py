"""flops_report: hand-computed MACs per layer type, sparse MACs, ratios, errors."""

import numpy as np
import pytest
import keras

import keras_gap as kg
from keras_gap.wrapper import collect_wrappers

pytestmark = pytest.mark.core
L = keras.layers


def _macs_of(layer, input_shape, *more_inputs):
    """MACs flops_report counts for ``layer`` alone in a Functional model."""
    inputs = [keras.Input(input_shape)] + [keras.Input(s) for s in more_inputs]
    model = keras.Model(inputs, layer(*inputs))
    report = kg.flops_report(model)
    (row,) = report.rows
    return row.macs


# (layer factory, input shape, hand-computed MACs of one example)
CASES = {
    "dense_rank3": (lambda: L.Dense(5), (7, 4), 7 * 4 * 5),
    "einsum_dense": (lambda: L.EinsumDense("abc,cd->abd", (6, 3), bias_axes="d"),
                     (6, 4), 6 * 4 * 3),
    "einsum_ellipsis": (lambda: L.EinsumDense("...b,bc->...c", 3), (5, 2, 4), 5 * 2 * 4 * 3),
    "einsum_two_out_axes": (lambda: L.EinsumDense("ab,bcd->acd", (2, 3)), (4,), 4 * 2 * 3),
    "conv1d": (lambda: L.Conv1D(6, 3), (10, 4), 8 * 3 * 4 * 6),
    "conv2d_same_stride2": (lambda: L.Conv2D(8, 3, strides=2, padding="same"), (9, 9, 3),
                            5 * 5 * 3 * 3 * 3 * 8),
    "conv2d_groups": (lambda: L.Conv2D(8, 3, groups=2), (6, 6, 4), 4 * 4 * 3 * 3 * 2 * 8),
    "conv3d": (lambda: L.Conv3D(2, 2), (4, 4, 4, 3), 3 * 3 * 3 * 2 * 2 * 2 * 3 * 2),
    "conv1d_transpose": (lambda: L.Conv1DTranspose(4, 3, strides=2), (5, 2), 5 * 3 * 2 * 4),
    "conv2d_transpose": (lambda: L.Conv2DTranspose(4, 3, strides=2, padding="same"),
                         (5, 5, 2), 5 * 5 * 3 * 3 * 2 * 4),
    "conv3d_transpose": (lambda: L.Conv3DTranspose(2, 2), (3, 3, 3, 2), 27 * 8 * 2 * 2),
    "depthwise2d_mult2": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 4),
                          4 * 4 * 3 * 3 * 4 * 2),
    "depthwise1d": (lambda: L.DepthwiseConv1D(3), (10, 4), 8 * 3 * 4),
    "separable2d": (lambda: L.SeparableConv2D(8, 3, depth_multiplier=2), (6, 6, 4),
                    4 * 4 * (3 * 3 * 4 * 2 + 4 * 2 * 8)),
    "separable1d": (lambda: L.SeparableConv1D(8, 3), (10, 4), 8 * (3 * 4 + 4 * 8)),
    "batchnorm": (lambda: L.BatchNormalization(), (5, 5, 3), 5 * 5 * 3),
    "layernorm": (lambda: L.LayerNormalization(), (7, 4), 7 * 4),
    "embedding": (lambda: L.Embedding(100, 8), (12,), 0),
    "lstm": (lambda: L.LSTM(5), (6, 3), 6 * (3 * 20 + 5 * 20)),
    "gru": (lambda: L.GRU(5), (6, 3), 6 * (3 * 15 + 5 * 15)),
    "simple_rnn": (lambda: L.SimpleRNN(5), (6, 3), 6 * (3 * 5 + 5 * 5)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_macs_per_layer_type_match_hand_count(name):
    factory, shape, expected = CASES[name]
    assert _macs_of(factory(), shape) == expected


def test_conv_channels_first_uses_spatial_axes():
    layer = L.Conv2D(8, 3, data_format="channels_first")
    assert _macs_of(layer, (3, 9, 9)) == 7 * 7 * 3 * 3 * 3 * 8


def test_multi_head_attention_counts_projections_and_scores():
    # query length 6, key/value length 4, model dim 16, 2 heads of size 4.
    mha = L.MultiHeadAttention(num_heads=2, key_dim=4)
    q, v = keras.Input((6, 16)), keras.Input((4, 16))
    model = keras.Model([q, v], mha(q, v))
    (row,) = kg.flops_report(model).rows
    projections = 6 * 16 * 8 + 4 * 16 * 8 + 4 * 16 * 8   # query, key, value
    scores = 2 * 6 * 4 * (4 + 4)                        # QK^T and AV
    output = 6 * 8 * 16
    assert row.macs == projections + scores + output
    assert sum(m for _, m in row.weight_macs) == projections + output


def test_params_and_totals_match_keras_and_table_prints():
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3), L.BatchNormalization(),
                              L.Flatten(), L.Dense(10)])
    report = kg.flops_report(model)
    assert report.params == model.count_params()
    assert report.macs == 6 * 6 * 9 * 4 + 6 * 6 * 4 + 144 * 10
    assert report.nonzero_macs == report.macs   # random init: no zero weights
    text = str(report)
    assert text.splitlines()[0].split()[:4] == ["layer", "type", "params", "MACs"]
    assert "TOTAL" in text and f"{report.macs:,}" in text
    data = report.to_dict()
    assert data["total"] == {"params": report.params, "macs": report.macs,
                             "nonzero_macs": report.nonzero_macs, "not_counted": []}
    assert [r["layer"] for r in data["layers"]] == [r.layer for r in report.rows]


def test_shared_layer_counts_every_call():
    dense = L.Dense(3)
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], L.Add()([dense(a), dense(b)]))
    (row,) = kg.flops_report(model).rows
    assert row.macs == 2 * 4 * 3


def test_nested_models_are_counted_layer_by_layer():
    inner = keras.Sequential([keras.Input((6,)), L.Dense(4, name="d_in")], name="inner")
    x = keras.Input((5,))
    model = keras.Model(x, L.Dense(2, name="d_out")(inner(L.Dense(6, name="d_first")(x))))
    report = kg.flops_report(model)
    assert [(r.layer, r.macs) for r in report.rows] == [
        ("d_first", 30), ("inner/d_in", 24), ("d_out", 8)]


def test_sequential_built_without_input_layer():
    model = keras.Sequential([L.Dense(4), L.Dense(2)])
    model.build((None, 3))
    assert kg.flops_report(model).macs == 3 * 4 + 4 * 2


def test_sparse_macs_of_stripped_and_pruned_models():
    model = keras.Sequential([keras.Input((8,)), L.Dense(4, name="a"), L.Dense(2, name="b")])
    kernel = model.layers[0].kernel
    values = keras.ops.convert_to_numpy(kernel).copy()
    values[:2] = 0.0                               # 8 of 32 weights zero
    kernel.assign(values)
    report = kg.flops_report(model)
    assert report.macs == 32 + 8
    assert report.nonzero_macs == pytest.approx(24 + 8)

    pruned = kg.prune_low_magnitude(model)
    for w in collect_wrappers(pruned):
        w.update_masks(0.75)                       # masks keep 8 of 32, 2 of 8
    dense = keras.Sequential([keras.Input((8,)), L.Dense(4), L.Dense(2)])
    pruned_report = kg.flops_report(pruned, reference=dense)
    assert pruned_report.macs == 40
    assert pruned_report.nonzero_macs == pytest.approx(8 + 2)
    assert pruned_report.macs_ratio == 1.0
    assert pruned_report.nonzero_macs_ratio == pytest.approx(10 / 40)
    assert "vs reference" in str(pruned_report)


def test_wrapper_mask_counts_before_weights_are_zeroed():
    model = keras.Sequential([keras.Input((8,)), L.Dense(4)])
    pruned = kg.prune_low_magnitude(model)
    (w,) = collect_wrappers(pruned)
    w.masks[0].assign(np.zeros((8, 4), "float32"))   # weights untouched
    assert kg.flops_report(pruned).nonzero_macs == 0


def test_ratios_to_a_smaller_reference():
    big = keras.Sequential([keras.Input((10,)), L.Dense(20), L.Dense(5)])
    small = keras.Sequential([keras.Input((10,)), L.Dense(10), L.Dense(5)])
    report = kg.flops_report(small, reference=big)
    assert report.macs_ratio == pytest.approx((100 + 50) / (200 + 100))
    assert report.params_ratio == pytest.approx(small.count_params() / big.count_params())
    data = report.to_dict()["reference"]
    assert data["macs"] == 300 and data["macs_ratio"] == report.macs_ratio
    assert kg.flops_report(small).macs_ratio is None


class _Scale(L.Layer):
    """A custom layer with a weight: flops_report has no rule for it."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w


def test_unknown_layer_with_weights_is_listed_not_counted():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3), _Scale(name="scale")])
    report = kg.flops_report(model)
    row = report.rows[-1]
    assert row.layer == "scale" and row.macs is None and not row.counted
    assert row.params == 3 and "not counted" in row.note
    assert report.not_counted == ("scale",)
    assert report.macs == 12                          # counted layers only
    assert "not counted" in str(report)
    assert report.to_dict()["total"]["not_counted"] == ["scale"]


def test_unknown_sequence_length_is_not_counted():
    x = keras.Input((None, 4))
    model = keras.Model(x, L.Dense(3, name="d")(x))
    (row,) = kg.flops_report(model).rows
    assert row.macs is None and "unknown" in row.note


def test_unbuilt_model_and_non_model_give_clear_errors():
    with pytest.raises(ValueError, match="not built.*keras.Input"):
        kg.flops_report(keras.Sequential([L.Dense(3)]))
    with pytest.raises(ValueError, match="must be a keras.Model; received.*Dense"):
        kg.flops_report(L.Dense(3))
    built = keras.Sequential([keras.Input((2,)), L.Dense(3)])
    with pytest.raises(ValueError, match="reference"):
        kg.flops_report(built, reference="dense.keras")


def test_keras_ops_nodes_are_skipped_and_matmul_ops_not_counted():
    x = keras.Input((4, 6))
    y = L.Dense(3, name="d")(x) + 1.0                 # an Add op node, no MACs
    model = keras.Model(x, keras.ops.matmul(y, keras.ops.transpose(y, (0, 2, 1))))
    report = kg.flops_report(model)
    assert [(r.layer, r.type, r.macs) for r in report.rows if r.counted] == [
        ("d", "Dense", 4 * 6 * 3)]
    assert [r.type for r in report.rows if not r.counted] == ["Matmul"]
    # Pruning a graph with op nodes leaves them as they are.
    pruned = kg.prune_low_magnitude(model)
    assert kg.flops_report(pruned).macs == 4 * 6 * 3


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = L.Conv2D(4, 3)
        self.dense = L.Dense(3)

    def call(self, x):
        return self.dense(keras.ops.mean(self.conv(x), axis=(1, 2)))


def test_subclassed_model_counts_each_layer_once_at_its_build_shapes():
    model = _Subclassed()
    model(np.zeros((1, 8, 8, 1), "float32"))
    report = kg.flops_report(model)
    assert [r.macs for r in report.rows] == [6 * 6 * 3 * 3 * 4, 4 * 3]
    assert all("build shapes" in r.note for r in report.rows)


@keras.saving.register_keras_serializable(package="keras_gap_tests")
class _Block(L.Layer):
    """A transformer block as users (and KerasHub) write it: sublayers, no rule."""

    def __init__(self, hidden=8, heads=2, ffn=16, **kwargs):
        super().__init__(**kwargs)
        self.attention = L.MultiHeadAttention(heads, hidden // heads, name="attention")
        self.norm = L.LayerNormalization(name="norm")
        self.ffn = _Ffn(hidden, ffn, name="ffn")   # nested composite

    def build(self, shape):
        self.attention.build(shape, shape)
        self.norm.build(shape)
        self.ffn.build(shape)

    def call(self, x):
        return self.ffn(self.norm(x + self.attention(x, x)))


@keras.saving.register_keras_serializable(package="keras_gap_tests")
class _Ffn(L.Layer):
    def __init__(self, hidden, ffn, **kwargs):
        super().__init__(**kwargs)
        self.up, self.down = L.Dense(ffn, name="up"), L.Dense(hidden, name="down")

    def build(self, shape):
        self.up.build(shape)
        self.down.build(shape[:-1] + (self.up.units,))

    def call(self, x):
        return self.down(keras.ops.relu(self.up(x)))


def _block_model(seq):
    x = keras.Input((seq, 8))
    return keras.Model(x, L.Dense(3, name="head")(_Block(name="block")(x)))


def _block_macs(seq):
    attention = 4 * seq * 8 * 8 + 2 * seq * seq * (4 + 4)  # projections + QK^T, AV
    return {"block/attention": attention, "block/norm": seq * 8,
            "block/ffn/up": seq * 8 * 16, "block/ffn/down": seq * 16 * 8,
            "head": seq * 8 * 3}


def test_composite_layers_are_counted_per_sublayer():
    report = kg.flops_report(_block_model(5))
    macs = {r.layer: r.macs for r in report.rows}
    assert macs == _block_macs(5)
    assert report.not_counted == ()
    assert report.params == _block_model(5).count_params()
    assert "in _Block" in str(report)


def test_unknown_length_needs_sequence_length():
    model = _block_model(None)
    report = kg.flops_report(model)
    assert set(report.not_counted) == set(_block_macs(1)), report.not_counted
    assert "pass sequence_length=" in str(report)
    counted = kg.flops_report(model, sequence_length=6)
    assert {r.layer: r.macs for r in counted.rows} == _block_macs(6)
    with pytest.raises(ValueError, match="sequence_length.*int >= 1.*received 0"):
        kg.flops_report(model, sequence_length=0)


def test_kerashub_backbone_and_causal_lm_are_counted():
    keras_hub = pytest.importorskip("keras_hub")
    kw = dict(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8,
              intermediate_dim=16, max_sequence_length=6)
    bert = keras_hub.models.BertBackbone(**kw)
    report = kg.flops_report(bert, sequence_length=6)
    assert report.not_counted == () and report.params == bert.count_params()
    blocks = [r for r in report.rows if r.layer.startswith("transformer_layer_")]
    assert len(blocks) == 2 * 5  # attention, 2 norms, 2 FFN denses per block
    ffn = {r.layer: r.macs for r in blocks}
    assert ffn["transformer_layer_1/feedforward_intermediate_dense"] == 6 * 8 * 16
    assert ffn["transformer_layer_0/self_attention_layer"] == _block_macs(6)["block/attention"]
    lm = keras_hub.models.GPT2CausalLM(backbone=keras_hub.models.GPT2Backbone(**kw),
                                       preprocessor=None)
    report = kg.flops_report(lm, sequence_length=6)
    head = [r for r in report.rows if r.layer == "token_embedding"]
    assert [r.macs for r in head] == [6 * 50 * 8]          # the tied LM head
    assert head[0].params == 0 and "counted at gpt2_backbone" in head[0].note
    assert report.params == lm.count_params() and report.not_counted == ()
