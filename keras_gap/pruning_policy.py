"""`PruningPolicy`: which layers of a model `prune_low_magnitude` wraps.

tf-mot's experimental API, for Keras 3 graphs. A policy answers two
questions: ``allow_pruning(layer)`` (wrap this layer?) and
``ensure_model_supports_pruning(model)`` (raise a clear ValueError when the
model does not fit the policy). `PruneForLatencyOnXNNPack` is tf-mot's policy
for XNNPACK's sparse inference (TFLite's CPU delegate runs sparse 1x1
convolutions in NHWC models between a first 3x3 stride-2 convolution and a
global average pooling; see "Fast Sparse ConvNets", arXiv 1911.09723).
"""

import abc

import keras

from keras_gap.wrapper import PruneLowMagnitude

L = keras.layers


class PruningPolicy(abc.ABC):
    """Specifies what layers to prune in a model (tf-mot's base class).

    Subclass it and pass an instance as ``prune_low_magnitude(model,
    pruning_policy=...)``: the model is checked with
    `ensure_model_supports_pruning` first, then only layers for which
    `allow_pruning` returns True are wrapped. A plain ``callable(layer) ->
    bool`` also works as ``pruning_policy`` (no model check).

    Returns:
        A policy object.

    Example:
        >>> class DenseOnly(kg.PruningPolicy):
        ...     def allow_pruning(self, layer):
        ...         return isinstance(layer, keras.layers.Dense)
        ...     def ensure_model_supports_pruning(self, model):
        ...         pass
        >>> pruned = kg.prune_low_magnitude(model, pruning_policy=DenseOnly())
    """

    @abc.abstractmethod
    def allow_pruning(self, layer):
        """Whether ``layer`` gets a pruning wrapper (True) or stays dense."""
        raise NotImplementedError

    @abc.abstractmethod
    def ensure_model_supports_pruning(self, model):
        """Raises ValueError when ``model`` does not fit this policy."""
        raise NotImplementedError

    def __call__(self, layer):
        return self.allow_pruning(layer)


class KeepDense(PruningPolicy):
    """Prunes every layer but the named ones (by name or by path).

    In a model whose sublayers repeat their names (every KerasHub transformer
    block has a ``feedforward_output_dense``), a path names one of them: Keras'
    own ``layer.path`` (``"transformer_layer_0/feedforward_output_dense"``) or
    keras-gap's, which starts at the outer model's graph
    (``"gpt2_backbone/transformer_layer_0/feedforward_output_dense"``, as in
    `prune_gap`'s ``keep_dense``). A plain name keeps every layer of that name.

    Args:
        names: layer names or paths to keep dense.

    Returns:
        A policy for ``prune_low_magnitude(model, pruning_policy=...)``.

    Raises:
        ValueError: (when pruning) a name or path that is no layer of the model,
            with the paths it has.

    Example:
        >>> pruned = kg.prune_low_magnitude(lm, pruning_policy=kg.KeepDense(
        ...     ["gpt2_backbone/transformer_layer_0/feedforward_output_dense"]))
    """

    def __init__(self, names):
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"KeepDense takes a list of layer names or paths; received "
                             f"{names!r}.")
        self.names = tuple(names)

    @staticmethod
    def _matches(name, layer):
        layer = _unwrap(layer)
        path = getattr(layer, "path", None) or layer.name
        return name in (layer.name, path) or name.endswith("/" + path)

    def allow_pruning(self, layer):
        return not any(self._matches(n, layer) for n in self.names)

    def ensure_model_supports_pruning(self, model):
        layers = list(model._flatten_layers(include_self=False, recursive=True))
        missing = [n for n in self.names if not any(self._matches(n, l) for l in layers)]
        if missing:
            paths = [getattr(l, "path", None) or l.name for l in layers
                     if not list(l._flatten_layers(include_self=False, recursive=False))]
            raise ValueError(f"KeepDense names layers that are not in model {model.name!r}: "
                             f"{missing}. Its layers (Keras paths): {paths[:40]}"
                             + (" ..." if len(paths) > 40 else "") + ".")


def _unwrap(layer):
    return layer.layer if isinstance(layer, PruneLowMagnitude) else layer


def _producers(layer):
    return {node.operation for inbound in layer._inbound_nodes
            for node in inbound.parent_nodes}


def _consumers(layer):
    out = []
    for node in layer._outbound_nodes:
        op = node.operation
        while isinstance(op, keras.Sequential) and op.layers:
            op = op.layers[0]
        out.append(op)
    return out


def _lookup(sources, stop_fn, next_fn):
    """Layers where ``stop_fn`` holds, reached from ``sources`` on every path
    (an empty set when some path ends first), as in tf-mot."""
    to_visit, used, found = set(sources), set(sources), set()
    while to_visit:
        layer = to_visit.pop()
        if stop_fn(layer):
            found.add(layer)
            continue
        following = next_fn(layer)
        if not following:
            return set()
        for nxt in following:
            if nxt not in used:
                used.add(nxt)
                to_visit.add(nxt)
    return found


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class PruneForLatencyOnXNNPack(PruningPolicy):
    """Prunes only 1x1 Conv2D layers, in a model XNNPACK can run sparse.

    tf-mot's policy (same checks, for Keras 3 graphs): every input branch must
    start with ``ZeroPadding2D(1)`` followed by a 3x3 stride-2 ``valid``
    Conv2D on 3 input channels, every output branch must pass a
    ``GlobalAveragePooling2D``, and every layer in between must be one
    XNNPACK's sparse subgraph supports: 1x1 stride-1 Conv2D (these are the
    pruned ones), 3x3 or 5x5 DepthwiseConv2D (stride 1 ``same``, or stride 1/2
    ``valid`` after matching ZeroPadding2D, depth_multiplier 1),
    BatchNormalization on the channel axis, ReLU / LeakyReLU / ELU, the
    activations relu, relu6, leaky_relu, elu, sigmoid, Add, Multiply,
    ZeroPadding2D, Dropout, bilinear UpSampling2D, GlobalAveragePooling2D with
    ``keepdims=True`` and the add / subtract / multiply ops.

    Returns:
        A `PruningPolicy`.

    Example:
        >>> pruned = kg.prune_low_magnitude(mobilenet_like, pruning_policy=
        ...     kg.PruneForLatencyOnXNNPack())
    """

    _ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "sigmoid")
    _OPS = ("Add", "Subtract", "Multiply", "Identity")

    def allow_pruning(self, layer):
        """Only 1x1 Conv2D layers are pruned."""
        return isinstance(layer, L.Conv2D) and _pair(layer.kernel_size) == (1, 1)

    def _is_start(self, layer):
        layer = _unwrap(layer)
        if not isinstance(layer, L.Conv2D) or not layer.built:
            return False
        producers = [_unwrap(p) for p in _producers(layer)]
        return (tuple(layer.kernel.shape[:3]) == (3, 3, 3)
                and _pair(layer.strides) == (2, 2) and layer.padding.lower() == "valid"
                and len(producers) == 1 and isinstance(producers[0], L.ZeroPadding2D)
                and tuple(map(tuple, producers[0].padding)) == ((1, 1), (1, 1)))

    @staticmethod
    def _is_end(layer):
        return isinstance(_unwrap(layer), L.GlobalAveragePooling2D)

    def _depthwise_supported(self, layer):
        padding = layer.padding.lower()
        producers = [_unwrap(p) for p in _producers(layer)]
        pad = producers[0] if (len(producers) == 1
                               and isinstance(producers[0], L.ZeroPadding2D)) else None
        pad = tuple(map(tuple, pad.padding)) if pad is not None else None
        kernel, strides = _pair(layer.kernel_size), _pair(layer.strides)
        ok = False
        for size, p in ((3, 1), (5, 2)):
            if kernel != (size, size):
                continue
            ok |= strides == (1, 1) and padding == "same"
            ok |= (strides in ((1, 1), (2, 2)) and padding == "valid"
                   and pad == ((p, p), (p, p)))
        return ok and layer.depth_multiplier == 1 and _pair(layer.dilation_rate) == (1, 1)

    def _supported(self, layer):
        """Mimics XNNPACK's sparse-subgraph compatibility check (tf-mot's list)."""
        layer = _unwrap(layer)
        if isinstance(layer, (L.Add, L.Multiply, L.ZeroPadding2D, L.ReLU, L.LeakyReLU,
                              L.ELU, L.Dropout)):
            return True
        if isinstance(layer, L.DepthwiseConv2D):
            return self._depthwise_supported(layer)
        if isinstance(layer, L.Conv2D):
            return (layer.groups == 1 and _pair(layer.dilation_rate) == (1, 1)
                    and _pair(layer.kernel_size) == (1, 1) and _pair(layer.strides) == (1, 1))
        if isinstance(layer, L.GlobalAveragePooling2D):
            return bool(layer.keepdims)
        if isinstance(layer, L.BatchNormalization):
            return layer.axis in (-1, 3)
        if isinstance(layer, L.UpSampling2D):
            return layer.interpolation == "bilinear"
        if isinstance(layer, L.Activation):
            return getattr(layer.activation, "__name__", None) in self._ACTIVATIONS
        if not isinstance(layer, L.Layer):  # a keras.ops call in a Functional graph
            return type(layer).__name__ in self._OPS
        return False

    def ensure_model_supports_pruning(self, model):
        """Raises ValueError unless ``model`` is XNNPACK sparse-inference friendly.

        Args:
            model: a built Sequential or Functional model.

        Raises:
            ValueError: naming the first check that fails (subclassed or
                unbuilt model, no start convolution, no global average
                pooling, or an unsupported layer between them).
        """
        if not isinstance(model, keras.Model) or not (
                isinstance(model, keras.Sequential) or isinstance(model, keras.Function)):
            raise ValueError(
                f"PruneForLatencyOnXNNPack needs a Sequential or Functional model; "
                f"received {type(model).__name__}: subclassed models are not supported.")
        if not model.built or not getattr(model, "inputs", None):
            raise ValueError(
                f"PruneForLatencyOnXNNPack needs a built model with an Input; model "
                f"{model.name!r} is not built.")
        if isinstance(model, keras.Sequential):
            model = model._functional if getattr(model, "_functional", None) else model
        input_layers = {id(op.output): op for op in model.operations
                        if isinstance(op, keras.layers.InputLayer)}
        inputs = {input_layers[id(t)] for t in model.inputs}
        starts = _lookup(inputs, self._is_start, _consumers)
        if not starts:
            raise ValueError(
                "PruneForLatencyOnXNNPack: could not find, in every input branch, a "
                "Conv2D 3x3 with strides 2, 3 input channels and 'valid' padding right "
                "after a ZeroPadding2D(padding=1) (XNNPACK's sparse subgraph starts "
                f"there); model {model.name!r} does not have one.")
        outputs = {t._keras_history.operation for t in model.outputs}
        ends = _lookup(outputs, self._is_end, lambda l: list(_producers(l)))
        if not ends:
            raise ValueError(
                "PruneForLatencyOnXNNPack: could not find a GlobalAveragePooling2D "
                f"in every output branch of model {model.name!r}.")

        def visit(layer):
            if layer not in ends and not self._supported(layer):
                inner = _unwrap(layer)
                raise ValueError(
                    f"Layer {getattr(inner, 'name', inner)!r} of type "
                    f"{type(inner).__name__} is not supported by the "
                    "PruneForLatencyOnXNNPack pruning policy (XNNPACK runs sparse "
                    "inference only on 1x1 Conv2D, DepthwiseConv2D 3x3/5x5, "
                    "BatchNormalization, ReLU-like activations, Add/Multiply, "
                    "ZeroPadding2D and Dropout between the first conv and the "
                    "GlobalAveragePooling2D).")
            return layer in ends

        _lookup([c for s in starts for c in _consumers(s)], visit, _consumers)
