"""`flops_report`: parameters and multiply-accumulates (MACs) per layer.

MACs are counted for ONE example (batch size 1) from each layer's input and
output shapes in the built model: node shapes of a Functional model (a built
Sequential model is one), the ``compute_output_shape`` chain of a Sequential
model without a graph, and the build shapes of layers elsewhere. Pruning
wrappers are seen through (the wrapped layer is counted) and nested models are
counted layer by layer.

Conventions (the usual ones of FLOPs counters, e.g. fvcore / ptflops):

* a MAC is one multiply-accumulate with a weight or between two activations
  (attention scores); bias additions, activations, pooling and element-wise
  merges are not counted;
* Dense / EinsumDense / Conv* / DepthwiseConv* / SeparableConv*: every kernel
  entry once per output position (input position for transposed convs);
* MultiHeadAttention: its four projections plus ``QK^T`` and ``AV``;
* LSTM / GRU / SimpleRNN: kernel and recurrent kernel once per timestep;
* BatchNormalization, LayerNormalization, GroupNormalization, PReLU: one MAC
  per output element (the folded scale and shift of inference);
* Embedding: 0 MACs (a table lookup);
* composite layers (a layer that owns sublayers and has no rule of its own:
  KerasHub's TransformerEncoder / TransformerDecoder, a user's block) are
  counted through their sublayers, one row per sublayer with a rule
  (``block/feedforward_intermediate_dense``, ``block/self_attention_layer``
  ...), from one eager forward pass on a batch of one that records each
  sublayer's call shapes. Inputs whose length is unknown (``None``: a text
  model's sequence) need ``sequence_length``.

"Non-zero MACs" scale the MACs of each kernel by the fraction of its entries
that are non-zero (``weight * mask`` for wrapped layers): what a kernel that
skips zero weights could spend. A layer that owns weights but is none of the
above is listed as "not counted" (its MACs are ``None``), never a silent 0.
"""

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from keras_gap import registry
from keras_gap.structured import trace as trace_lib
from keras_gap.wrapper import PruneLowMagnitude

L = keras.layers

_CONVS = (L.Conv1D, L.Conv2D, L.Conv3D)
_TRANSPOSES = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_RNNS = (L.LSTM, L.GRU, L.SimpleRNN)
_PER_ELEMENT = tuple(
    cls for cls in (getattr(L, n, None) for n in (
        "BatchNormalization", "LayerNormalization", "GroupNormalization",
        "RMSNormalization", "PReLU")) if cls is not None)
# Weight-free layers that still multiply activations: listed as not counted.
_UNCOUNTED_MATMULS = tuple(
    cls for cls in (getattr(L, n, None) for n in ("Dot", "Attention", "AdditiveAttention"))
    if cls is not None)
# Position tables added to their input (KerasHub): 0 MACs, as Embedding.
_POSITION_TABLES = ("PositionEmbedding", "TokenAndPositionEmbedding")
# keras.ops applied to symbolic tensors in a Functional model that multiply-add.
_UNCOUNTED_OPS = ("Matmul", "Einsum", "Tensordot", "Dot", "Inner", "Outer", "Conv",
                  "DepthwiseConv", "ConvTranspose", "SeparableConv")


@dataclasses.dataclass(frozen=True)
class LayerFlops:
    """One row of a `FlopsReport`.

    ``macs`` and ``nonzero_macs`` are None when the layer is not counted
    (``note`` says why). ``weight_macs`` is ((weight path, MACs), ...) for the
    kernels whose MACs scale with their density; ``macs`` minus their sum is
    the part no weight sparsity can remove (attention scores, normalizations).
    """

    layer: str
    type: str
    params: int
    macs: object
    nonzero_macs: object
    weight_macs: tuple = ()
    note: str = ""

    @property
    def counted(self):
        return self.macs is not None


def _ratio(a, b):
    return a / b if b else None


@dataclasses.dataclass(frozen=True)
class FlopsReport:
    """Parameters and MACs per layer and in total; ``print()`` it or read
    ``rows`` / ``to_dict()``.

    ``reference`` is the report of the reference model (or None); the
    ``*_ratio`` properties are this model's totals divided by its totals.
    """

    rows: tuple
    reference: object = None

    @property
    def params(self):
        return sum(r.params for r in self.rows)

    @property
    def macs(self):
        """Total MACs of the counted layers (see ``not_counted``)."""
        return sum(r.macs for r in self.rows if r.counted)

    @property
    def nonzero_macs(self):
        return sum(r.nonzero_macs for r in self.rows if r.counted)

    @property
    def not_counted(self):
        """Names of layers with weights whose MACs could not be counted."""
        return tuple(r.layer for r in self.rows if not r.counted)

    @property
    def params_ratio(self):
        return _ratio(self.params, self.reference.params) if self.reference else None

    @property
    def macs_ratio(self):
        return _ratio(self.macs, self.reference.macs) if self.reference else None

    @property
    def nonzero_macs_ratio(self):
        """Non-zero MACs of this model over the reference's non-zero MACs."""
        if not self.reference:
            return None
        return _ratio(self.nonzero_macs, self.reference.nonzero_macs)

    def to_dict(self):
        """Plain data: ``{"layers": [...], "total": {...}, "reference": ...}``."""
        out = {
            "layers": [{"layer": r.layer, "type": r.type, "params": r.params,
                        "macs": r.macs, "nonzero_macs": r.nonzero_macs,
                        "counted": r.counted, "note": r.note} for r in self.rows],
            "total": {"params": self.params, "macs": self.macs,
                      "nonzero_macs": self.nonzero_macs,
                      "not_counted": list(self.not_counted)},
        }
        if self.reference is not None:
            out["reference"] = {
                "params": self.reference.params, "macs": self.reference.macs,
                "nonzero_macs": self.reference.nonzero_macs,
                "params_ratio": self.params_ratio, "macs_ratio": self.macs_ratio,
                "nonzero_macs_ratio": self.nonzero_macs_ratio}
        return out

    def __str__(self):
        header = ("layer", "type", "params", "MACs", "non-zero MACs", "note")
        lines = [(r.layer, r.type, f"{r.params:,}",
                  f"{r.macs:,}" if r.counted else "not counted",
                  f"{round(r.nonzero_macs):,}" if r.counted else "-", r.note)
                 for r in self.rows]
        total = ("TOTAL", "", f"{self.params:,}", f"{self.macs:,}",
                 f"{round(self.nonzero_macs):,}",
                 f"{len(self.not_counted)} layer(s) not counted" if self.not_counted else "")
        widths = [max(len(x) for x in col) for col in zip(header, total, *lines)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        rule = "  ".join("-" * w for w in widths)
        out = [fmt.format(*header).rstrip(), rule]
        out += [fmt.format(*line).rstrip() for line in lines]
        out += [rule, fmt.format(*total).rstrip()]
        if self.reference is not None:
            ref = self.reference
            out.append(
                f"vs reference: params {self.params:,} / {ref.params:,} = "
                f"{_fmt_ratio(self.params_ratio)}, MACs {self.macs:,} / {ref.macs:,} = "
                f"{_fmt_ratio(self.macs_ratio)}, non-zero MACs "
                f"{_fmt_ratio(self.nonzero_macs_ratio)}")
        return "\n".join(out)


def _fmt_ratio(r):
    return "n/a" if r is None else f"{r:.3f}x"


# Shapes -------------------------------------------------------------------------------
_shape = trace_lib.shape_of


def _known(shape, skip_batch=True):
    dims = shape[1:] if skip_batch else shape
    return all(d is not None for d in dims)


def _prod(values):
    return math.prod(int(v) for v in values)


def _spatial(layer, shape):
    """Spatial dims of a conv input/output shape (batch and channels dropped)."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return shape[2:]
    return shape[1:-1]


# Per-layer counting -------------------------------------------------------------------
class _NotCounted(Exception):
    pass


def _einsum_macs(equation, input_shape, kernel_shape):
    """MACs of ``einsum(equation, x, kernel)`` for one example (x's axis 0 = batch)."""
    lhs, _ = equation.split("->")
    in_spec, kernel_spec = lhs.split(",")
    shape = (1,) + tuple(input_shape[1:])
    sizes, ellipsis = {}, 1
    if "..." in in_spec:
        before, after = in_spec.split("...")
        n_ellipsis = len(shape) - len(before) - len(after)
        ellipsis = _prod(shape[len(before):len(before) + n_ellipsis])
        in_spec = before + after
        shape = shape[:len(before)] + shape[len(before) + n_ellipsis:]
    for letter, dim in list(zip(in_spec, shape)) + list(zip(kernel_spec, kernel_shape)):
        if dim is None:
            raise _NotCounted("unknown input size")
        sizes[letter] = int(dim)
    return _prod(sizes.values()) * ellipsis


def _attention_macs(layer, query_shape, value_shape, key_shape):
    """{projection kernel path: MACs} and the score/sum MACs of MultiHeadAttention."""
    key_shape = key_shape or value_shape
    for s in (query_shape, value_shape, key_shape):
        if not _known(s):
            raise _NotCounted("unknown sequence length")
    weight = {}
    for dense, shape in ((layer.query_dense, query_shape), (layer.key_dense, key_shape),
                         (layer.value_dense, value_shape)):
        weight[dense.kernel.path] = _einsum_macs(dense.equation, shape, dense.kernel.shape)
    heads, key_dim = layer.num_heads, layer.key_dim
    value_dim = layer.value_dim or key_dim
    q_positions = _prod(query_shape[1:-1])
    k_positions = _prod(key_shape[1:-1])
    other = heads * q_positions * k_positions * (key_dim + value_dim)
    out = layer.output_dense
    proj_shape = (None,) + tuple(query_shape[1:-1]) + (heads, value_dim)
    weight[out.kernel.path] = _einsum_macs(out.equation, proj_shape, out.kernel.shape)
    return weight, other


def _count(layer, in_shapes, out_shapes):
    """({kernel path: MACs}, other MACs) of one call of ``layer``.

    Raises:
        _NotCounted: the layer type is unknown or a needed size is unknown.
    """
    x, y = in_shapes[0] if in_shapes else None, out_shapes[0] if out_shapes else None

    def need(*shapes):
        for s in shapes:
            if s is None or not _known(s):
                raise _NotCounted("unknown input size")

    if isinstance(layer, L.Dense):
        need(x, y)
        return {layer.kernel.path: _prod(y[1:-1]) * _prod(layer.kernel.shape)}, 0
    if isinstance(layer, L.EinsumDense):
        need(x)
        return {layer.kernel.path: _einsum_macs(layer.equation, x, layer.kernel.shape)}, 0
    if isinstance(layer, _SEPARABLE):
        need(y)
        positions = _prod(_spatial(layer, y))
        return {layer.depthwise_kernel.path: positions * _prod(layer.depthwise_kernel.shape),
                layer.pointwise_kernel.path: positions * _prod(layer.pointwise_kernel.shape)}, 0
    if isinstance(layer, _CONVS + _DEPTHWISE):
        need(y)
        return {layer.kernel.path: _prod(_spatial(layer, y)) * _prod(layer.kernel.shape)}, 0
    if isinstance(layer, _TRANSPOSES):
        need(x)
        return {layer.kernel.path: _prod(_spatial(layer, x)) * _prod(layer.kernel.shape)}, 0
    if isinstance(layer, L.Embedding):
        if x is not None and y is not None and len(y) == len(x) and _known(y):
            # A reversed (tied) embedding, KerasHub's ReversibleEmbedding(x,
            # reverse=True): hidden states times the table, the LM head.
            return {layer.embeddings.path: _prod(y[1:-1]) * _prod(layer.embeddings.shape)}, 0
        return {}, 0
    if type(layer).__name__ in _POSITION_TABLES:
        return {}, 0  # a table added to the input
    if isinstance(layer, L.MultiHeadAttention):
        if len(in_shapes) < 2:
            raise _NotCounted("query and value shapes unknown")
        return _attention_macs(layer, in_shapes[0], in_shapes[1],
                               in_shapes[2] if len(in_shapes) > 2 else None)
    if isinstance(layer, _RNNS):
        need(x)
        steps, cell = x[1], layer.cell
        return {cell.kernel.path: steps * _prod(cell.kernel.shape),
                cell.recurrent_kernel.path: steps * _prod(cell.recurrent_kernel.shape)}, 0
    if isinstance(layer, L.Bidirectional):
        weight, other = {}, 0
        for half in (layer.forward_layer, layer.backward_layer):
            w, o = _count(half, in_shapes[:1], [None])
            weight.update(w)
            other += o
        return weight, other
    if isinstance(layer, L.TimeDistributed):
        need(x, y)
        w, o = _count(layer.layer, [(None,) + x[2:]], [(None,) + y[2:]])
        return {k: v * x[1] for k, v in w.items()}, o * x[1]
    if isinstance(layer, _PER_ELEMENT):
        need(y)
        return {}, _prod(y[1:])
    raise _NotCounted(f"no MAC rule for {type(layer).__name__}")


_RULED = (L.Dense, L.EinsumDense, L.Embedding, L.MultiHeadAttention, L.Bidirectional,
          L.TimeDistributed) + _SEPARABLE + _CONVS + _DEPTHWISE + _TRANSPOSES + _RNNS \
    + _PER_ELEMENT


_sublayers = registry.sublayers


def _has_rule(layer):
    return isinstance(layer, _RULED) or type(layer).__name__ in _POSITION_TABLES


def _is_composite(layer):
    """A layer counted through its sublayers: no rule of its own, owns sublayers."""
    return (isinstance(layer, L.Layer) and not _has_rule(layer)
            and not isinstance(layer, PruneLowMagnitude)
            and not _is_model(layer) and bool(_sublayers(layer)))


def _composite_paths(layer, prefix):
    """{id(sublayer with a rule): path} below composite ``layer``, at any depth."""
    out = {}
    for sub in _sublayers(layer):
        inner = sub.layer if isinstance(sub, PruneLowMagnitude) else sub
        path = f"{prefix}/{inner.name}"
        if _has_rule(inner):
            out[id(inner)] = (path, sub)
        elif _sublayers(inner):
            out.update(_composite_paths(inner, path))
    return out


def _density(variable, mask=None):
    values = ops.convert_to_numpy(variable)
    if mask is not None:
        values = values * ops.convert_to_numpy(mask)
    return np.count_nonzero(values) / values.size if values.size else 1.0


def _row(name, layer, wrapper, calls, note=""):
    """The `LayerFlops` of ``layer`` (masks from its pruning ``wrapper``, if any)."""
    masks = {}
    if wrapper is not None:
        masks = {id(w): m for w, m in zip(wrapper.pruned_weights, wrapper.masks)}
    params = sum(_prod(w.shape) for w in layer.weights)
    try:
        weight, other = {}, 0
        for ins, outs in calls:
            w, o = _count(layer, ins, outs)
            for path, macs in w.items():
                weight[path] = weight.get(path, 0) + macs
            other += o
    except _NotCounted as e:
        return LayerFlops(layer=name, type=type(layer).__name__, params=params,
                          macs=None, nonzero_macs=None, note=f"not counted: {e}")
    by_path = {w.path: w for w in layer.weights}
    nonzero = other + sum(macs * _density(by_path[path], masks.get(id(by_path[path])))
                          for path, macs in weight.items())
    note = "; ".join(n for n in ("pruning wrapper" if masks else "", note) if n)
    return LayerFlops(layer=name, type=type(layer).__name__, params=params,
                      macs=int(other + sum(weight.values())), nonzero_macs=float(nonzero),
                      weight_macs=tuple(weight.items()), note=note)


_is_model = trace_lib.is_model


def _attention_inputs(call):
    """[query, value, key] shapes of a MultiHeadAttention call in a graph."""
    args = call.arguments
    if args is None:
        return list(call.in_shapes)
    names = ("query", "value", "key")
    values = list(args.args) + [None] * 3
    found = {n: args.kwargs.get(n, values[i]) for i, n in enumerate(names)}
    return [_shape(found[n]) for n in names if hasattr(found[n], "shape")]


def _shapes(call):
    """(input shapes, output shapes) of one traced call, as `_count` reads them."""
    if isinstance(call.layer, L.MultiHeadAttention):
        return _attention_inputs(call), list(call.out_shapes)
    return list(call.in_shapes), list(call.out_shapes)


class _Concrete:
    """The eager pass of `trace.concrete_calls`, run once, when first needed."""

    def __init__(self, model, sequence_length):
        self.model, self.sequence_length = model, sequence_length
        self._calls = None

    def get(self):
        """dict id(layer) -> [(ins, outs)], or the `_NotCounted` that stopped it."""
        if self._calls is None:
            targets = {}
            for layer in self.model._flatten_layers(include_self=False):
                inner = trace_lib.unwrap(layer)
                if _has_rule(inner) and not _is_model(inner):
                    targets[id(inner)] = inner
            try:
                self._calls = trace_lib.concrete_calls(
                    self.model, targets.values(), self.sequence_length)
            except trace_lib.UnknownInputLength as e:
                self._calls = _NotCounted(str(e))
        return self._calls


def _rows(model, sequence_length=None):
    """Rows of ``model``, one per (layer, path) of its trace. A layer called from two
    models (a tied embedding: lookup in the backbone, LM head in the task) has
    its parameters in its first row only."""
    traced = trace_lib.trace(model)
    concrete = _Concrete(model, sequence_length)
    note = ("one call at its build shapes (subclassed model)"
            if traced.kind == trace_lib.BUILD_SHAPES else "")
    rows, seen = [], {}
    for name, inner, wrapper, calls in traced.layer_calls():
        layer_calls = [_shapes(c) for c in calls if c.in_shapes or c.out_shapes]
        if _is_composite(inner):
            rows.extend(_composite_rows(inner, name, concrete.get()))
            continue
        if not isinstance(inner, L.Layer):   # a keras.ops call on symbolic tensors
            if type(inner).__name__ in _UNCOUNTED_OPS:
                rows.append(LayerFlops(layer=name, type=type(inner).__name__, params=0,
                                       macs=None, nonzero_macs=None,
                                       note="not counted: no MAC rule for this op"))
            continue
        if not inner.weights and not isinstance(inner, _UNCOUNTED_MATMULS):
            continue
        if sequence_length is not None and not all(
                _known(shape) for ins, outs in layer_calls for shape in ins + outs
                if shape is not None):
            eager = concrete.get()
            if not isinstance(eager, Exception) and eager.get(id(inner)):
                layer_calls = eager[id(inner)]
        if not layer_calls:
            rows.append(LayerFlops(layer=name, type=type(inner).__name__,
                                   params=sum(_prod(w.shape) for w in inner.weights),
                                   macs=None, nonzero_macs=None,
                                   note="not counted: input size unknown"))
            continue
        row = _row(name, inner, wrapper, layer_calls, note)
        if id(inner) in seen:  # its weights are already in an earlier row
            row = dataclasses.replace(row, params=0, note="; ".join(
                n for n in (row.note, f"weights counted at {seen[id(inner)]}") if n))
        seen.setdefault(id(inner), name)
        rows.append(row)
    return rows


def _composite_rows(layer, name, traced):
    """One row per sublayer with a rule of composite ``layer`` (at any depth)."""
    rows = []
    for inner_id, (path, sub) in _composite_paths(layer, name).items():
        inner = sub.layer if isinstance(sub, PruneLowMagnitude) else sub
        if not inner.weights and not isinstance(inner, _UNCOUNTED_MATMULS):
            continue
        sub_calls = [] if isinstance(traced, Exception) else traced.get(inner_id, [])
        if not sub_calls:
            why = str(traced) if isinstance(traced, Exception) else "not called"
            rows.append(LayerFlops(layer=path, type=type(inner).__name__,
                                   params=sum(_prod(w.shape) for w in inner.weights),
                                   macs=None, nonzero_macs=None, note=f"not counted: {why}"))
            continue
        wrapper = sub if isinstance(sub, PruneLowMagnitude) else None
        rows.append(_row(path, inner, wrapper, sub_calls, f"in {type(layer).__name__}"))
    return rows


def flops_report(model, reference=None, sequence_length=None):
    """Per layer and total parameters and MACs of one example.

    Counts Dense, EinsumDense, Conv1D/2D/3D and their transposes,
    DepthwiseConv, SeparableConv, MultiHeadAttention, LSTM/GRU/SimpleRNN,
    normalizations and Embedding (0 MACs), through pruning wrappers and nested
    models; the conventions are in this module's docstring. Also counts the
    MACs of non-zero weights only (what a sparse kernel could spend). A layer
    that owns weights but cannot be counted is listed as "not counted" and
    left out of the totals (``report.not_counted`` names them).

    Args:
        model: a built Keras model (Functional, Sequential, nested, pruned
            or stripped; KerasHub backbones and tasks).
        reference: optional built model to compare with (e.g. the dense model
            before pruning or materialization); the report then has
            ``params_ratio``, ``macs_ratio`` and ``nonzero_macs_ratio``.
        sequence_length: the length of input dimensions the model leaves
            unknown (``None``, e.g. a text model's tokens), used to count
            composite layers such as transformer blocks. Without it such
            layers are "not counted" when their input length is unknown.

    Returns:
        A `FlopsReport` (``print()`` it for a table, ``.to_dict()`` for data,
        ``.macs`` / ``.params`` / ``.nonzero_macs`` for totals).

    Raises:
        ValueError: ``model`` (or ``reference``) is not a Keras model or is
            not built.

    Example:
        >>> model = keras.Sequential([keras.Input((28, 28, 1)),
        ...     keras.layers.Conv2D(8, 3), keras.layers.Flatten(),
        ...     keras.layers.Dense(10)])
        >>> report = kg.flops_report(model)
        >>> report.macs    # 26*26*3*3*1*8 + 5408*10
        102752
    """
    if sequence_length is not None and (isinstance(sequence_length, bool) or not isinstance(
            sequence_length, int) or sequence_length < 1):
        raise ValueError("flops_report: `sequence_length` must be an int >= 1 (the length "
                         f"of the unknown input dimensions); received {sequence_length!r}.")
    rows = tuple(_rows(_check_model(model, "model"), sequence_length=sequence_length))
    ref = None
    if reference is not None:
        ref = FlopsReport(rows=tuple(_rows(_check_model(reference, "reference"),
                                           sequence_length=sequence_length)))
    return FlopsReport(rows=rows, reference=ref)


def _check_model(model, what):
    if not isinstance(model, keras.Model):
        raise ValueError(f"flops_report: `{what}` must be a keras.Model; received "
                         f"{model!r} of type {type(model).__name__}.")
    if not model.built:
        raise ValueError(
            f"flops_report: {what} {model.name!r} is not built, so its layer shapes "
            "are unknown. Build it first: give it an input (keras.Input(shape) as "
            "the first layer), call model.build((None, ...)), or call it on data.")
    return model
