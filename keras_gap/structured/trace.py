"""`trace`: the one walk of a model's layer calls that every structural tool reads.

The channel analysis (`keras_gap.structured.analyze`, hence channel masks,
`keras_gap.materialize` and growing's gates) and the MAC counter
(`keras_gap.flops_report`, hence `TrainingCost` and growing's budget) all
start from the same `Trace`, in the spirit of Torch-Pruning's dependency
graph: one `Call` per call of a layer (or of a ``keras.ops`` operation on
symbolic tensors), nested Functional / Sequential models expanded in place,
in graph order. Each call names its tensors by integer keys, so one tensor
read by two calls has one key and a nested model's inputs are its caller's
tensors.

How the calls are found depends on what the model is:

* ``"graph"``: a Functional model, a Functional subclass (KerasHub tasks and
  backbones) or a built Sequential model: the nodes of its graph, with the
  symbolic shapes and the call's arguments (``node.arguments``);
* ``"chain"``: a Sequential model built without a graph: the
  ``compute_output_shape`` chain of its layers;
* ``"build_shapes"``: a subclassed model (a hand-written ``call``): each
  layer once, at the shapes it was built with (no tensor keys to follow).

Layers pruned with a wrapper are seen through: ``Call.layer`` is the wrapped
layer, ``Call.wrapper`` the `PruneLowMagnitude` (the clone's wrapper, or the
wrapper of a layer pruned in place) and ``Call.path`` is named by the wrapped
layer (``"backbone/dense"``).

Composite layers (a layer that owns sublayers: KerasHub's TransformerEncoder)
are one call here; what happens inside them is seen by `concrete_calls`, one
eager forward pass on a batch of one that records the calls of chosen layers
at any depth.
"""

import dataclasses

import keras

from keras_gap import inplace, registry
from keras_gap.wrapper import PruneLowMagnitude

L = keras.layers

GRAPH, CHAIN, BUILD_SHAPES = "graph", "chain", "build_shapes"


def unwrap(layer):
    """The layer a `PruneLowMagnitude` wraps (or ``layer`` itself)."""
    return layer.layer if isinstance(layer, PruneLowMagnitude) else layer


def shape_of(tensor_or_shape):
    """A shape as a tuple of ints and None."""
    shape = getattr(tensor_or_shape, "shape", tensor_or_shape)
    return tuple(None if d is None else int(d) for d in shape)


def is_model(layer):
    """True for a nested model (expanded by the trace, never one call)."""
    return isinstance(layer, keras.Model) or (
        hasattr(layer, "layers") and not isinstance(layer, PruneLowMagnitude)
        and type(layer).__name__ in ("Functional", "Sequential"))


@dataclasses.dataclass(frozen=True, eq=False)
class Call:
    """One call of a layer or operation in a `Trace`.

    Attributes:
        layer: the called layer (a wrapper seen through) or ``keras.ops``
            operation.
        wrapper: its `PruneLowMagnitude` (a clone's wrapper or the wrapper of
            a layer pruned in place), or None.
        path: the layer's name, prefixed by the names of the nested models
            holding it (``"backbone/dense"``).
        in_keys: keys of the input tensors (into ``Trace.shapes``), in the
            order of the call's flattened tensor arguments; empty for a
            ``"build_shapes"`` trace.
        out_keys: keys of the output tensors.
        in_shapes: shapes of the inputs.
        out_shapes: shapes of the outputs (None where unknown).
        arguments: the graph node's ``node.arguments`` (None outside a graph).
        input_tensors: the symbolic input tensors of the node (empty outside a
            graph).
        model: the (nested) model whose graph holds the call.
    """

    layer: object
    wrapper: object
    path: str
    in_keys: tuple
    out_keys: tuple
    in_shapes: tuple
    out_shapes: tuple
    arguments: object = None
    input_tensors: tuple = ()
    model: object = None


class Trace:
    """The calls of a model, in order (see the module docstring).

    Attributes:
        model: the traced model.
        kind: ``"graph"``, ``"chain"`` or ``"build_shapes"``.
        calls: list of `Call` (nested models expanded).
        shapes: dict tensor key -> shape.
        model_inputs: dict id(model) -> its input keys, the traced model and
            every nested model (the first call of a model called twice).
        output_keys: keys of the traced model's outputs.
        output_layers: the layer (or operation) producing each output, or None.
        models: the nested models, in the order they are first entered, with
            their path prefix: list of (model, prefix).
    """

    def __init__(self, model):
        self.model = model
        self.calls, self.shapes, self.model_inputs = [], {}, {}
        self.output_keys, self.output_layers, self.models = [], [], []
        self._in_place = {id(w.layer): w for w in inplace.in_place_wrappers(model)}
        functional = _functional(model)
        if functional is not None:
            self.kind = GRAPH
            self.output_keys = self._walk(model, functional, None, "")
            self.output_layers = [
                unwrap(getattr(getattr(x, "_keras_history", None), "operation", None))
                for x in functional.outputs]
        elif isinstance(model, keras.Sequential):
            self.kind = CHAIN
            self._chain(model)
        else:
            self.kind = BUILD_SHAPES
            self._build_shapes(model, "")

    # Building ------------------------------------------------------------------------
    def _key(self, shape):
        key = len(self.shapes)
        self.shapes[key] = shape_of(shape) if shape is not None else None
        return key

    def _call(self, op, path, in_keys, out_keys, **extra):
        layer = unwrap(op)
        wrapper = op if isinstance(op, PruneLowMagnitude) else self.wrapper_of(layer)
        self.calls.append(Call(
            layer=layer, wrapper=wrapper, path=path, in_keys=tuple(in_keys),
            out_keys=tuple(out_keys), in_shapes=tuple(self.shapes[k] for k in in_keys),
            out_shapes=tuple(self.shapes[k] for k in out_keys), **extra))

    def _walk(self, model, functional, input_keys, prefix):
        tensors = {}
        for i, x in enumerate(functional.inputs):
            tensors[id(x)] = self._key(x.shape) if input_keys is None else input_keys[i]
        self.model_inputs.setdefault(id(model), [tensors[id(x)] for x in functional.inputs])
        for depth in sorted(functional._nodes_by_depth, reverse=True):
            for node in functional._nodes_by_depth[depth]:
                op = node.operation
                if op is None or node.is_input or isinstance(op, L.InputLayer):
                    continue
                if any(id(x) not in tensors for x in node.input_tensors):
                    continue
                in_keys = [tensors[id(x)] for x in node.input_tensors]
                inner = unwrap(op)
                if is_model(inner):
                    nested = _functional(inner)
                    name = prefix + inner.name + "/"
                    if not any(m is inner for m, _ in self.models):
                        self.models.append((inner, name))
                    if nested is None:  # a subclassed model inside a graph
                        self._build_shapes(inner, name)
                        out_keys = [self._key(x.shape) for x in node.outputs]
                    else:
                        out_keys = self._walk(inner, nested, in_keys, name)
                else:
                    out_keys = [self._key(x.shape) for x in node.outputs]
                    self._call(op, prefix + inner.name, in_keys, out_keys,
                               arguments=node.arguments,
                               input_tensors=tuple(node.input_tensors), model=model)
                for x, key in zip(node.outputs, out_keys):
                    tensors[id(x)] = key
        return [tensors.get(id(x)) for x in functional.outputs]

    def _chain(self, model):
        build = getattr(model, "_build_shapes_dict", None) or {}
        shape = next(iter(build.values()), None)
        if shape is None:
            return
        key = self._key(shape)
        self.model_inputs[id(model)] = [key]
        for layer in model.layers:
            out = self._key(layer.compute_output_shape(self.shapes[key]))
            self._call(layer, unwrap(layer).name, [key], [out], model=model)
            key = out
        self.output_keys = [key]

    def _build_shapes(self, model, prefix):
        for layer in model.layers:
            inner = unwrap(layer)
            if is_model(inner):
                self.models.append((inner, prefix + inner.name + "/"))
                nested = _functional(inner)
                if nested is not None:
                    keys = [self._key(x.shape) for x in nested.inputs]
                    self._walk(inner, nested, keys, prefix + inner.name + "/")
                else:
                    self._build_shapes(inner, prefix + inner.name + "/")
                continue
            ins, outs = _layer_build_shapes(inner) or ((), ())
            self._call(layer, prefix + inner.name, [self._key(s) for s in ins],
                       [self._key(s) for s in outs], model=model)

    # Queries -------------------------------------------------------------------------
    def wrapper_of(self, layer):
        """The in-place `PruneLowMagnitude` of ``layer`` (at any depth), or None."""
        return self._in_place.get(id(layer))

    def layer_calls(self):
        """``[(path, layer, wrapper, [calls])]``: the calls grouped by layer and path,
        in order of first call (a layer called from two models, e.g. a tied
        embedding used by the backbone and the task's head, has two entries)."""
        grouped = {}
        for call in self.calls:
            entry = grouped.setdefault((id(call.layer), call.path),
                                       (call.path, call.layer, call.wrapper, []))
            entry[3].append(call)
        return list(grouped.values())

    def leaves(self):
        """The distinct called layers (``keras.layers.Layer`` only), in call order."""
        out, seen = [], set()
        for call in self.calls:
            if isinstance(call.layer, L.Layer) and id(call.layer) not in seen:
                seen.add(id(call.layer))
                out.append(call.layer)
        return out


def _functional(model):
    """The graph of ``model`` (a ``keras.Function``) or None."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model if isinstance(model, keras.Function) else None


def _layer_build_shapes(layer):
    """(input shapes, output shapes) from the shapes ``layer`` was built with."""
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    ins = [tuple(s) for s in shapes.values() if isinstance(s, (tuple, list))
           and all(d is None or isinstance(d, int) for d in s)]
    if not ins:
        return None
    try:
        out = layer.compute_output_shape(*ins)
    except Exception:  # noqa: BLE001 - many layers cannot infer shapes alone
        out = None
    if out is None or isinstance(out, (list, dict)):
        return ins, [None]
    return ins, [shape_of(out)]


def trace(model):
    """Traces ``model``'s layer calls once (see the module docstring).

    Args:
        model: a built Keras model (Functional, Functional subclass, Sequential,
            subclassed; pruned, pruned in place or stripped).

    Returns:
        A `Trace`.

    Example:
        >>> t = kg.structured.trace.trace(model)
        >>> [(c.path, c.out_shapes) for c in t.calls]
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"trace expects a keras.Model; received {model!r} of type "
                         f"{type(model).__name__}.")
    return Trace(model)


class UnknownInputLength(ValueError):
    """An input dimension is unknown and no ``sequence_length`` was given."""


def call_shapes(layer, args, kwargs, output):
    """(input shapes, output shapes) of one eager call of ``layer``
    (MultiHeadAttention: query, value, key)."""
    if isinstance(layer, L.MultiHeadAttention):
        values = list(args) + [None] * 3
        found = [kwargs.get(n, values[i]) for i, n in enumerate(("query", "value", "key"))]
        ins = [shape_of(t) for t in found if hasattr(t, "shape")]
    else:
        ins = [shape_of(t) for t in keras.tree.flatten((args, kwargs)) if hasattr(t, "shape")]
    outs = [shape_of(t) for t in keras.tree.flatten(output) if hasattr(t, "shape")]
    return ins, outs


def concrete_calls(model, layers, sequence_length=None):
    """Shapes of every call of ``layers``, at any depth, in one eager forward pass.

    ``model`` is run once on a batch of one (ones; unknown input dims =
    ``sequence_length``). Each of ``layers`` has its ``call`` wrapped on the
    instance for the pass and put back after (a masked ``call`` of a layer
    pruned in place included); a call made while another recorded layer is
    running (a MultiHeadAttention's projections) is part of that call.

    Args:
        model: a built model.
        layers: the layers to record.
        sequence_length: the size of the model's unknown input dimensions.

    Returns:
        dict id(layer) -> list of (input shapes, output shapes), one per call.

    Raises:
        UnknownInputLength: an input dimension is unknown and no
            ``sequence_length`` was given.
    """
    targets = {id(layer): layer for layer in layers}
    if not targets:
        return {}

    def concrete(x):
        dims = [1] + [sequence_length if d is None else int(d) for d in x.shape[1:]]
        if any(d is None for d in dims):
            raise UnknownInputLength("unknown input length; pass sequence_length=")
        return keras.ops.ones(dims, dtype=x.dtype)

    inputs = keras.tree.map_structure(concrete, model.input)
    calls, active = {}, []

    def recorder(layer):
        def wrap(call):
            def recorded(*args, **kwargs):
                outer = not active
                active.append(layer)
                try:
                    output = call(*args, **kwargs)
                finally:
                    active.pop()
                if outer:
                    calls.setdefault(id(layer), []).append(
                        call_shapes(layer, args, kwargs, output))
                return output
            return recorded
        return wrap

    undo = [registry.replace_call(layer, recorder(layer)) for layer in targets.values()]
    try:
        model(inputs, training=False)
    finally:
        for restore in reversed(undo):
            restore()
    return calls
