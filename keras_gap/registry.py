"""Which weights of which layers are prunable.

One table maps built-in Keras layers to the attributes that hold their
prunable weights (tf-mot's list). A custom layer opts in by implementing
``get_prunable_weights()`` (tf-mot's ``PrunableLayer`` contract). Layers whose
weights must stay dense (normalizations, PReLU, depthwise convs unless asked)
pass through. Built-in layers without weights (Dropout, Flatten, pooling, ...)
are accepted even before they are built: wrapped, they are no-op wrappers (as
in tf-mot). RNN layers are pruned through their cells (``RNN(cell)``,
``RNN([cells])``). Anything else that owns weights is unsupported: a clear
error, or left dense on request.
"""

import abc
import dataclasses

import keras

L = keras.layers

# Layer class -> attribute names of its prunable weights (tf-mot 0.8.1's table).
_KERNEL_LAYERS = {
    L.Dense: ("kernel",),
    L.EinsumDense: ("kernel",),
    L.Conv1D: ("kernel",),
    L.Conv2D: ("kernel",),
    L.Conv3D: ("kernel",),
    L.Conv1DTranspose: ("kernel",),
    L.Conv2DTranspose: ("kernel",),
    L.Conv3DTranspose: ("kernel",),
    L.SeparableConv1D: ("pointwise_kernel",),
    L.SeparableConv2D: ("pointwise_kernel",),
    L.Embedding: ("embeddings",),
}
_DEPTHWISE_LAYERS = (L.DepthwiseConv1D, L.DepthwiseConv2D)
# Any RNN layer (LSTM, GRU, SimpleRNN, RNN(cell), RNN([cells])) whose cells are
# built-in cells or implement get_prunable_weights().
_RNN_LAYERS = (L.RNN,)
_RNN_CELLS = (L.LSTMCell, L.GRUCell, L.SimpleRNNCell)
_RNN_CELL_WEIGHTS = ("kernel", "recurrent_kernel")

# Layers that own weights which keras-gap leaves dense on purpose.
_PASS_THROUGH = tuple(
    cls for cls in (
        getattr(L, name, None) for name in (
            "BatchNormalization", "LayerNormalization", "GroupNormalization",
            "UnitNormalization", "RMSNormalization", "SpectralNormalization",
            "Normalization", "PReLU",
        )
    ) if cls is not None
)

# Built-in layers without weights (tf-mot's registry maps them to []): wrapping
# one gives a no-op wrapper, even before it is built.
WEIGHTLESS_LAYERS = tuple(
    cls for cls in (
        getattr(L, name, None) for name in (
            "Activation", "ActivityRegularization", "Dropout", "AlphaDropout",
            "GaussianDropout", "GaussianNoise", "SpatialDropout1D", "SpatialDropout2D",
            "SpatialDropout3D", "Flatten", "Reshape", "Permute", "RepeatVector",
            "Masking", "Lambda", "Identity", "Cropping1D", "Cropping2D", "Cropping3D",
            "UpSampling1D", "UpSampling2D", "UpSampling3D", "ZeroPadding1D",
            "ZeroPadding2D", "ZeroPadding3D", "Add", "Average", "Concatenate", "Dot",
            "Maximum", "Minimum", "Multiply", "Subtract", "ReLU", "LeakyReLU", "ELU",
            "Softmax", "Rescaling", "Resizing", "CenterCrop", "AveragePooling1D",
            "AveragePooling2D", "AveragePooling3D", "MaxPooling1D", "MaxPooling2D",
            "MaxPooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
            "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
            "GlobalMaxPooling3D", "InputLayer",
        )
    ) if cls is not None
)

SUPPORTED_LAYERS = tuple(_KERNEL_LAYERS) + _DEPTHWISE_LAYERS + _RNN_LAYERS + (
    L.MultiHeadAttention, L.Bidirectional, L.TimeDistributed)


class PrunableLayer(abc.ABC):
    """Abstract base class for making a custom Keras layer prunable (tf-mot).

    Mix it into a layer (or an RNN cell) and return the variables to prune
    from ``get_prunable_weights()``; ``[]`` keeps the layer dense. Any layer
    with a ``get_prunable_weights()`` method is accepted, base class or not.

    Returns:
        A mixin class.

    Example:
        >>> class MyDense(keras.layers.Layer, kg.PrunableLayer):
        ...     def build(self, shape):
        ...         self.kernel = self.add_weight(shape=(shape[-1], 4))
        ...     def call(self, x):
        ...         return x @ self.kernel
        ...     def get_prunable_weights(self):
        ...         return [self.kernel]
    """

    @abc.abstractmethod
    def get_prunable_weights(self):
        """The weight variables to prune; each must be an attribute of the layer."""
        raise NotImplementedError("Must be implemented in subclasses.")


def is_custom_prunable(layer):
    """True for layers that implement tf-mot's ``get_prunable_weights()``."""
    return isinstance(layer, PrunableLayer) or callable(
        getattr(layer, "get_prunable_weights", None))


def _kernel_attrs(layer):
    for cls in type(layer).__mro__:
        if cls in _KERNEL_LAYERS:
            return _KERNEL_LAYERS[cls]
    return None


def is_supported(layer, prune_depthwise=False):
    """Whether keras-gap knows how to prune (or pass through) ``layer``.

    Args:
        layer: a Keras layer (built or not).
        prune_depthwise: treat DepthwiseConv kernels as prunable.

    Returns:
        True when the layer is in the registry, implements
        ``get_prunable_weights()``, is a deliberate pass-through, or owns no
        weights; False for an unknown layer with weights.

    Example:
        >>> is_supported(keras.layers.Dense(3))
        True
    """
    if is_custom_prunable(layer) or isinstance(
            layer, SUPPORTED_LAYERS + _PASS_THROUGH + WEIGHTLESS_LAYERS):
        return True
    return layer.built and not layer.weights


def get_prunable_weights(layer, prune_depthwise=False):
    """The variables of ``layer`` that pruning masks.

    Args:
        layer: a built Keras layer.
        prune_depthwise: include DepthwiseConv kernels.

    Returns:
        A list of `keras.Variable` (empty for pass-through and weightless
        layers).

    Raises:
        ValueError: for an unsupported layer that owns weights.

    Example:
        >>> d = keras.layers.Dense(3); d.build((None, 4))
        >>> [w.name for w in get_prunable_weights(d)]
        ['kernel']
    """
    if is_custom_prunable(layer):
        return list(layer.get_prunable_weights())
    attrs = _kernel_attrs(layer)
    if attrs is not None:
        return [getattr(layer, a) for a in attrs]
    if isinstance(layer, _DEPTHWISE_LAYERS):
        return [layer.kernel] if prune_depthwise else []
    if isinstance(layer, _RNN_LAYERS):
        return rnn_cell_weights(layer.cell, layer)
    if isinstance(layer, L.MultiHeadAttention):
        return [d.kernel for d in (layer.query_dense, layer.key_dense,
                                   layer.value_dense, layer.output_dense)]
    if isinstance(layer, L.Bidirectional):
        return (get_prunable_weights(layer.forward_layer, prune_depthwise)
                + get_prunable_weights(layer.backward_layer, prune_depthwise))
    if isinstance(layer, L.TimeDistributed):
        return get_prunable_weights(layer.layer, prune_depthwise)
    if isinstance(layer, _PASS_THROUGH + WEIGHTLESS_LAYERS) or not layer.weights:
        return []
    raise unsupported_layer_error(layer)


def rnn_cell_weights(cell, rnn_layer=None):
    """Prunable weights of an RNN cell (``StackedRNNCells``: of every cell).

    Args:
        cell: a built LSTMCell, GRUCell, SimpleRNNCell, StackedRNNCells or a
            cell implementing ``get_prunable_weights()``.
        rnn_layer: the RNN layer holding the cell (for the error message).

    Returns:
        A list of `keras.Variable` (kernel and recurrent_kernel per cell).

    Raises:
        ValueError: for a cell with weights keras-gap cannot prune.

    Example:
        >>> rnn = keras.layers.RNN([keras.layers.LSTMCell(4), keras.layers.GRUCell(3)])
        >>> rnn.build((None, 5, 2)); len(rnn_cell_weights(rnn.cell))
        4
    """
    if is_custom_prunable(cell):
        return list(cell.get_prunable_weights())
    if isinstance(cell, _RNN_CELLS):
        return [getattr(cell, a) for a in _RNN_CELL_WEIGHTS]
    if isinstance(cell, L.StackedRNNCells):
        return [w for c in cell.cells for w in rnn_cell_weights(c, rnn_layer)]
    if not cell.weights:
        return []
    owner = f" of RNN layer {rnn_layer.name!r}" if rnn_layer is not None else ""
    raise ValueError(
        f"RNN cell {getattr(cell, 'name', cell)!r} of type {type(cell).__name__}{owner} "
        "owns weights but keras-gap does not know which of them to prune. Use "
        "LSTMCell, GRUCell or SimpleRNNCell, or implement `get_prunable_weights()` "
        "on the cell (return its kernels, or [] to keep it dense).")


def unsupported_layer_error(layer):
    if not layer.built:
        return ValueError(
            f"Layer {layer.name!r} of type {type(layer).__name__} is not a layer "
            "keras-gap knows, and it is not built yet, so keras-gap cannot tell "
            "whether it owns weights to prune. Build it first (a layer without "
            "weights is then accepted), implement `get_prunable_weights()` on it "
            "(return the kernels to prune, or [] to keep it dense), or pass "
            "`unsupported_layers='keep_dense'` to prune_low_magnitude or prune_gap.")
    return ValueError(
        f"Layer {layer.name!r} of type {type(layer).__name__} owns weights but "
        "keras-gap does not know which of them to prune. Either implement "
        "`get_prunable_weights()` on it (return the kernels to prune, or [] to "
        "keep it dense), or pass `unsupported_layers='keep_dense'` to "
        "prune_low_magnitude or prune_gap to leave such layers dense. Supported layers: "
        + ", ".join(sorted(c.__name__ for c in SUPPORTED_LAYERS)) + "."
    )


def channel_weights(layer):
    """Weights that hold a layer's output channels, for channel structure.

    A removed output channel is a slice of each of these (kernel and bias of
    a producer; gamma/beta of a BatchNormalization; kernel and bias of a
    DepthwiseConv), so masking them all makes the channel exactly zero.

    Args:
        layer: a built Keras layer.

    Returns:
        list of (variable, channel axis) pairs; the axis is an int or a tuple
        of consecutive axes (DepthwiseConv: (-2, -1), output channel c*m + j).
        Empty for layers without output channels keras-gap can mask.

    Example:
        >>> [(v.name, a) for v, a in channel_weights(conv)]
        [('kernel', -1), ('bias', -1)]
    """
    out = []
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        out.append((layer.kernel, -2))
    elif isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        out.append((layer.pointwise_kernel, -1))
    elif isinstance(layer, _DEPTHWISE_LAYERS):
        out.append((layer.kernel, (-2, -1)))
    elif isinstance(layer, L.MultiHeadAttention):
        # One channel per head: the query, key and value projections' head
        # slices (a head whose three slices are zero outputs exactly zero).
        heads = [p for dense in (layer.query_dense, layer.key_dense, layer.value_dense)
                 for p in channel_weights(dense)] if layer.built else []
        sizes = {int(v.shape[a]) for v, a in heads}
        return heads if len(heads) >= 3 and sizes == {int(layer.num_heads)} else []
    elif isinstance(layer, L.EinsumDense):
        if trivial_einsum(layer):
            out.append((layer.kernel, -1))
        else:
            axes = head_axes(layer)
            if axes is None:
                return []
            kernel_axis, bias_axis = axes
            out.append((layer.kernel, kernel_axis))
            if getattr(layer, "bias", None) is not None:
                if bias_axis is None:
                    return []  # a bias that is not per head
                out.append((layer.bias, bias_axis))
            return out
    elif isinstance(layer, (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D)):
        if int(getattr(layer, "groups", 1) or 1) != 1:
            return []
        out.append((layer.kernel, -1))
    elif isinstance(layer, L.BatchNormalization):
        return [(v, -1) for v in (layer.gamma, layer.beta) if v is not None]
    else:
        return []
    if getattr(layer, "bias", None) is not None:
        out.append((layer.bias, -1))
    return out


def _einsum_parts(layer):
    """(input, kernel, output) subscripts of an EinsumDense "x,k->out" equation, or
    None (another layer, or an equation of another form)."""
    if not isinstance(layer, L.EinsumDense):
        return None
    try:
        inputs, out = layer.equation.replace(" ", "").split("->")
        x, k = inputs.split(",")
    except ValueError:
        return None
    return x, k, out


def trivial_einsum(layer):
    """True for an EinsumDense that is a Dense on the last axis ("...b,bc->...c")."""
    parts = _einsum_parts(layer)
    if parts is None:
        return False
    x, k, out = parts
    if len(k) != 2 or not x or not out or x[-1] != k[0] or out[-1] != k[1]:
        return False
    bias = getattr(layer, "bias_axes", None)
    return x[:-1] == out[:-1] and k[1] not in x and bias in (None, "", k[1])


def head_axes(layer):
    """(kernel axis, bias axis) of the heads of an attention projection, or None.

    An attention projection is an EinsumDense that maps the input's last axis
    to two new axes, heads then head size (``"abc,cde->abde"``: Keras'
    MultiHeadAttention query / key / value, KerasHub's attention layers);
    the first new axis holds the heads.

    Args:
        layer: a built EinsumDense.

    Returns:
        (kernel axis, bias axis or None when the bias has no head axis), or
        None when ``layer`` is not such a projection.
    """
    parts = _einsum_parts(layer) if layer.built else None
    if parts is None:
        return None
    x, k, out = parts
    new = [c for c in k if c not in x]
    if "." in x or len(new) != 2 or k[:-2] != x[-(len(k) - 2):] or "".join(new) != k[-2:] \
            or out[-2:] != k[-2:] or x[-(len(k) - 2):] in out:
        return None
    bias = getattr(layer, "bias_axes", None) or ""
    return len(k) - 2, (bias.index(new[0]) if new[0] in bias else None)


@dataclasses.dataclass(frozen=True)
class Structure:
    """A set of units removed together inside one layer: attention heads or FFN units.

    Attributes:
        kind: "heads" or "units".
        size: number of units (KV heads for grouped-query attention).
        producers: ((sublayer, repeat), ...): layers whose output units these are
            (query / key / value, FFN intermediate and gate); ``repeat`` is how
            many consecutive output channels share one unit (query heads per
            KV head).
        consumers: ((sublayer, repeat), ...): layers that read the units on
            their input (attention output, FFN output projection).
        owner: the attention layer (heads) or the composite block (units).
        blocked: why the units cannot be removed, or "".
    """

    kind: str
    size: int
    producers: tuple
    consumers: tuple
    owner: object = None
    blocked: str = ""


def _attention_layers(layer):
    """(query, key, value, output, num query heads, num KV heads) of an attention layer."""
    names = [("query_dense", "key_dense", "value_dense", "output_dense"),
             ("_query_dense", "_key_dense", "_value_dense", "_output_dense")]
    for group in names:
        parts = [getattr(layer, n, None) for n in group]
        if all(isinstance(p, L.EinsumDense) for p in parts):
            heads = getattr(layer, "num_heads", None) or getattr(layer, "num_query_heads", None)
            kv = getattr(layer, "num_key_value_heads", None) or heads
            if heads and kv and int(heads) % int(kv) == 0:
                return (*parts, int(heads), int(kv))
    return None


def _zero_at_zero(layer):
    act = getattr(layer, "activation", None)
    if act is None:
        return True
    try:
        value = keras.ops.convert_to_numpy(act(keras.ops.zeros((1, 1))))
    except Exception:  # noqa: BLE001 - an activation that cannot run alone
        return False
    return bool((value == 0).all())


# Composite blocks whose feed-forward network keras-gap knows, by attribute:
# (intermediate producers, output consumer). KerasHub's TransformerEncoder /
# TransformerDecoder and the Llama / Mistral / Qwen style decoders (gated FFN).
_FFN_ATTRIBUTES = (
    (("_feedforward_intermediate_dense", "_feedforward_gate_dense"),
     "_feedforward_output_dense"),
)


def structures(layer):
    """The attention heads and FFN units of ``layer`` (a per-layer-type table).

    Attention: any layer with EinsumDense query / key / value / output
    projections (Keras' MultiHeadAttention and GroupedQueryAttention,
    KerasHub's cached and model-specific attention layers): one unit per head,
    or per KV head with the query heads that share it. FFN: a composite
    layer with the attributes of `_FFN_ATTRIBUTES` (KerasHub's transformer
    blocks); its units are blocked when the intermediate activation is not
    zero at zero (a masked unit would not output zero). Composite layers are
    searched at any depth for attention layers.

    Args:
        layer: a built Keras layer.

    Returns:
        list of `Structure` (empty when the layer has none).

    Example:
        >>> [(s.kind, s.size) for s in structures(encoder_block)]
        [('heads', 4), ('units', 128)]
    """
    out = []
    attention = _attention_layers(layer)
    if attention is not None:
        q, k, v, o, heads, kv = attention
        parts = [(q, heads // kv), (k, 1), (v, 1)]
        ok = all(head_axes(p) is not None for p, _ in parts)
        out.append(Structure("heads", kv, tuple(parts), ((o, heads // kv),), layer,
                             "" if ok else "projections without a head axis"))
        return out
    for sub in sublayers(layer):
        if isinstance(sub, keras.Model):
            continue
        out.extend(structures(sub))
    for producers, consumer in _FFN_ATTRIBUTES:
        ins = [getattr(layer, n, None) for n in producers]
        ins = [p for p in ins if p is not None]
        last = getattr(layer, consumer, None)
        if not ins or not all(isinstance(p, L.Dense) for p in ins + [last]):
            continue
        units = {int(p.units) for p in ins}
        if len(units) != 1 or not all(p.built for p in ins):
            continue
        blocked = "" if any(_zero_at_zero(p) for p in ins) else (
            "the intermediate activation is not zero at zero")
        out.append(Structure("units", units.pop(), tuple((p, 1) for p in ins),
                             ((last, 1),), layer, blocked))
    return out


def sublayers(layer):
    """Direct sublayers of ``layer`` (Keras has no public list for a plain Layer;
    used to enter composite layers such as KerasHub's TransformerEncoder)."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def replace_call(layer, wrap):
    """Replaces ``layer.call`` on the instance by ``wrap(current call)``.

    The current call is the instance's own ``call`` when it has one (a layer
    pruned in place runs its masked call) or the class's. The one place
    keras-gap patches calls: pruning in place, the FLOPs and one-shot
    recording passes.

    Args:
        layer: a Keras layer.
        wrap: function of the current bound ``call`` returning the new one.

    Returns:
        A function of no arguments that puts back what was there (the
        instance's previous ``call``, or the class's).

    Example:
        >>> undo = replace_call(layer, lambda call: lambda *a, **k: call(*a, **k))
        >>> undo()
    """
    own = vars(layer).get("call")
    object.__setattr__(layer, "call", wrap(layer.call))

    def undo():
        if own is not None:
            object.__setattr__(layer, "call", own)
        elif "call" in vars(layer):
            object.__delattr__(layer, "call")  # the class's call again
    return undo


def restore_call(layer):
    """Drops an instance ``call`` set by `replace_call`: the class's call again."""
    if "call" in vars(layer):
        object.__delattr__(layer, "call")
