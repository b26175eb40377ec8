"""`materialize`: a smaller plain Keras model without the removed channels.

Reads the one channel analysis (`keras_gap.structured.graph`). A channel of a
removable group is removed when the kernel slice of every producer of the
group is all zero (``structure="channel"`` training guarantees it; any model
whose whole filters are zero qualifies). Such a channel no longer depends on
the input: its value is a constant (the producer's bias, then whatever the
followers make of it: BatchNormalization's ``beta - gamma * mean / sqrt(var +
eps)``, an activation's ``f(c)``). The constant is traced through the graph
per channel; where it is non-zero it is folded into the bias of each
consumer when that is exact (Dense, Conv / SeparableConv with "valid"
padding or a 1x1 kernel); otherwise (zero padding in between, "same"
padding of a larger kernel, a transposed conv) the channel is kept and the
report says why. Every weight is copied into fresh layers, so the result
shares nothing with the input model.

Per layer type, one small function slices the output channels (producers),
the channel-wise weights (followers) and the input channels (consumers), as in
Torch-Pruning's per-type pruning functions.
"""

import dataclasses
import math
import warnings

import keras
import numpy as np

from keras_gap import registry
from keras_gap.structured import graph as graph_lib
from keras_gap.wrapper import collect_wrappers

L = keras.layers


@dataclasses.dataclass
class MaterializeReport:
    """What `materialize` removed and what it kept.

    Attributes:
        removed: dict group name -> number of channels removed.
        kept: list of (group name, channels kept although all-zero, reason).
        blocked: list of (group name, reason) for groups that are not
            removable (see `keras_gap.ChannelGroup.blocked_by`).
        params_before: parameters of the input model.
        params_after: parameters of the materialized model.
    """

    removed: dict
    kept: list
    blocked: list
    params_before: int
    params_after: int

    @property
    def channels_removed(self):
        return sum(self.removed.values())

    def to_dict(self):
        """Plain data."""
        return {"removed": dict(self.removed),
                "kept": [list(k) for k in self.kept],
                "blocked": [list(b) for b in self.blocked],
                "channels_removed": self.channels_removed,
                "params_before": self.params_before, "params_after": self.params_after}

    def __str__(self):
        ratio = self.params_after / self.params_before if self.params_before else 1.0
        lines = [f"materialize: {self.channels_removed} channels removed in "
                 f"{sum(1 for v in self.removed.values() if v)} groups; parameters "
                 f"{self.params_before} -> {self.params_after} ({ratio:.2%})"]
        for name, n in self.removed.items():
            if n:
                lines.append(f"  removed {n} channels of group {name!r}")
        for name, n, reason in self.kept:
            lines.append(f"  kept {n} zero channels of group {name!r}: {reason}")
        for name, reason in self.blocked:
            lines.append(f"  group {name!r} not removable: {reason}")
        return "\n".join(lines)


# Per-type helpers ------------------------------------------------------------------
def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _kind(layer):
    """"dense", "conv", "conv_t", "separable", or None (not a producer)."""
    if not graph_lib.is_producer(layer):
        return None
    if isinstance(layer, graph_lib._SEPARABLE):
        return "separable"
    if isinstance(layer, graph_lib._CONV_T):
        return "conv_t"
    if isinstance(layer, graph_lib._CONV):
        return "conv"
    return "dense"


def _out_kernel(layer):
    """(kernel as numpy, output-channel axis) of a producer."""
    kind = _kind(layer)
    if kind == "separable":
        return _np(layer.pointwise_kernel), -1
    return _np(layer.kernel), (-2 if kind == "conv_t" else -1)


def _zero_units(layer):
    """Heads / FFN units of a structure producer whose weights (kernels and
    biases: nothing may be left to fold inside a block) are all zero."""
    zero = None
    for variable, axis in registry.channel_weights(layer):
        moved = np.moveaxis(np.abs(_np(variable)), axis, 0)
        z = moved.reshape(moved.shape[0], -1).sum(axis=1) == 0
        zero = z if zero is None else zero & z
    return zero


def _unit_reason(graph, lid, steps):
    """Why the heads / units of structure producer ``lid`` cannot be removed, or None."""
    kind, owner, holder = graph.structure_of[lid]
    if kind == "heads":
        if isinstance(owner, L.MultiHeadAttention) and id(owner) in steps:
            return None
        return (f"{type(holder).__name__} {holder.name!r} builds its attention from its "
                "config (KerasHub: key_dim = hidden_dim // num_heads), which cannot "
                "express fewer heads of the same size; the heads stay masked (zero)")
    if id(holder) in steps and "intermediate_dim" in holder.get_config():
        return None
    return (f"{type(holder).__name__} {holder.name!r} has no `intermediate_dim` in its "
            "config to rebuild it with fewer units; the units stay masked (zero)")


def _zero_channels(layer):
    kernel, axis = _out_kernel(layer)
    moved = np.moveaxis(np.abs(kernel), axis, -1)
    return moved.reshape(-1, moved.shape[-1]).sum(axis=0) == 0


def _bias(layer):
    b = getattr(layer, "bias", None)
    return None if b is None else _np(b)


def _spatial_one(layer):
    return all(int(k) == 1 for k in layer.kernel_size)


def _foldable(layer):
    """Whether a constant input channel can be folded into the bias exactly."""
    kind = _kind(layer)
    if kind == "dense":
        return True
    if kind in ("conv", "separable"):
        return layer.padding == "valid" or _spatial_one(layer)
    return False


def _fold_delta(layer, const):
    """Bias change of ``layer`` when its inputs are the constants ``const``."""
    kind = _kind(layer)
    if kind == "dense":
        return const @ _np(layer.kernel)
    if kind == "conv":
        k = _np(layer.kernel)
        return const @ k.reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=0)
    dw = _np(layer.depthwise_kernel)
    m = dw.shape[-1]
    dw_sum = dw.reshape(-1, dw.shape[-2], m).sum(axis=0)      # [cin, m]
    inner = (const[:, None] * dw_sum).reshape(-1)              # [cin * m]
    pw = _np(layer.pointwise_kernel)
    return inner @ pw.reshape(-1, pw.shape[-1])


def _apply_elementwise(layer, const):
    known = ~np.isnan(const)
    if not known.any():
        return const
    values = _np(layer(np.nan_to_num(const)[None].astype(np.float32),
                       training=False)).reshape(-1)
    return np.where(known, values, np.nan)


def _op_const(layer, ins, arguments):
    """Constant of an element-wise keras.ops operation, evaluated on the vectors."""
    args, input_ids = arguments
    unknown = np.any(np.isnan(np.stack(ins)), axis=0)
    values = {i: np.nan_to_num(v)[None].astype(np.float32) for i, v in zip(input_ids, ins)}
    a, kw = args.fill_in(values)
    out = _np(layer(*a, **kw)).reshape(-1).astype(np.float64)
    return np.where(unknown, np.nan, out)


def _follow_const(layer, ins, out_len, arguments=None):
    """Per-channel constant of a follower's output (NaN: not constant)."""
    x = ins[0]
    if not isinstance(layer, keras.layers.Layer):
        return _op_const(layer, ins, arguments)
    if isinstance(layer, L.BatchNormalization):
        c = x.shape[0]
        gamma = _np(layer.gamma) if layer.gamma is not None else np.ones(c)
        beta = _np(layer.beta) if layer.beta is not None else np.zeros(c)
        mean, var = _np(layer.moving_mean), _np(layer.moving_variance)
        return (x - mean) / np.sqrt(var + layer.epsilon) * gamma + beta
    if isinstance(layer, graph_lib._DEPTHWISE):
        k = _np(layer.kernel)
        m = k.shape[-1]
        ksum = k.reshape(-1, k.shape[-2], m)
        total = ksum.sum(axis=0)                                  # [cin, m]
        zero_slice = np.abs(ksum).sum(axis=0) == 0
        out = (x[:, None] * total)
        b = _bias(layer)
        if b is not None:
            out = out + b.reshape(-1, m)
        exact = (layer.padding == "valid") or _spatial_one(layer)
        if not exact:
            constant = (x[:, None] == 0) | zero_slice
            out = np.where(constant, out, np.nan)
        return out.reshape(-1)
    if isinstance(layer, (L.Activation,) + (L.ReLU, L.LeakyReLU, L.ELU)):
        return _apply_elementwise(layer, x)
    if isinstance(layer, graph_lib._PADDING):
        return np.where(x == 0, x, np.nan)
    if isinstance(layer, graph_lib._MERGE):
        stack = np.stack(ins)
        if isinstance(layer, L.Add):
            return stack.sum(axis=0)
        if isinstance(layer, L.Subtract):
            return stack[0] - stack[1]
        if isinstance(layer, L.Multiply):
            return stack.prod(axis=0)
        if isinstance(layer, L.Average):
            return stack.mean(axis=0)
        if isinstance(layer, L.Maximum):
            return stack.max(axis=0)
        return stack.min(axis=0)
    if isinstance(layer, L.Concatenate):
        if out_len == sum(len(i) for i in ins):
            return np.concatenate(ins)
        stack = np.stack(ins)
        return np.where((stack == stack[0]).all(axis=0), stack[0], np.nan)
    if out_len != len(x) and len(x) and out_len % len(x) == 0:  # Flatten / Reshape
        return np.tile(x, out_len // len(x))
    return x  # dropout, pooling, cropping, up-sampling, reshape on the batch axes


# The pass ----------------------------------------------------------------------------
def _count_params(model):
    return int(sum(math.prod(v.shape) for v in model.weights))


def materialize(model, return_report=False):
    """A new plain Keras model in which removed output channels are gone.

    Channels of removable groups (`keras_gap.channel_groups`) whose producer
    kernels are all zero are physically removed from every producer (kernel,
    bias), follower (BatchNormalization gamma / beta / moving statistics,
    DepthwiseConv) and consumer (input rows of Dense, input channels of Conv*,
    SeparableConv, Conv*Transpose, through activations, Dropout, pooling,
    Flatten, Add and Concatenate), in Sequential, Functional and nested
    models. A constant a removed channel still carries (a bias, BatchNorm's
    offset, ``f(0) != 0``) is folded into the consumers' biases where exact;
    otherwise the channel is kept and the report says why. Inference outputs
    equal the input model's up to float rounding.

    Args:
        model: a built Sequential or Functional model. A model that still
            holds `PruneLowMagnitude` wrappers is stripped first (with a
            warning naming them).
        return_report: also return a `MaterializeReport`.

    Returns:
        The new model (uncompiled; it saves to ``.keras`` and loads without
        custom objects when the input model does), or ``(model, report)``.

    Example:
        >>> small = kg.materialize(kg.strip_pruning(pruned))
        >>> small, report = kg.materialize(stripped, return_report=True)
        >>> print(report)
    """
    if not isinstance(model, keras.Model):
        raise ValueError("materialize expects a Sequential or Functional keras Model; "
                         f"received {model!r} of type {type(model).__name__}.")
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built; build it (give it a "
                         "keras.Input or call it on data) before materialize.")
    wrappers = collect_wrappers(model)
    if wrappers:
        from keras_gap.prune import strip_pruning
        warnings.warn(
            f"materialize: model {model.name!r} still holds PruneLowMagnitude layers "
            f"{[w.name for w in wrappers][:6]}{' ...' if len(wrappers) > 6 else ''}; "
            "stripping them first (keras_gap.strip_pruning). Strip the model yourself "
            "to silence this warning.", stacklevel=2)
        model = strip_pruning(model)
    graph = graph_lib.analyze(model)
    removed, kept, consts = _plan(graph)
    new_model = _rebuild(model, graph, removed, consts)
    report = MaterializeReport(
        removed={graph.groups[g].name: n for g, n in sorted(_per_group(graph, removed).items())},
        kept=[(graph.groups[g].name, n, reason) for g, (n, reason) in sorted(kept.items())],
        blocked=[(g.name, "; ".join(f"{n} ({r})" for n, r in g.blocked_by[:3]))
                 for g in graph.groups if not g.removable],
        params_before=_count_params(model), params_after=_count_params(new_model))
    return (new_model, report) if return_report else new_model


def _per_group(graph, removed):
    out = {g.index: 0 for g in graph.groups if g.removable}
    for c in removed:
        out[int(graph.class_group[c])] = out.get(int(graph.class_group[c]), 0) + 1
    return out


def _plan(graph):
    """Classes to remove, kept zero classes with reasons, and the constants."""
    zero = {}
    for lid, layer in graph.layers.items():
        if graph_lib.PRODUCER not in graph.roles.get(lid, ()):
            continue
        out = graph.maps[lid]["out"]
        z = _zero_units(layer) if lid in graph.structure_of else _zero_channels(layer)
        for c, is_zero in zip(out.tolist(), z.tolist()):
            if c >= 0:
                zero[c] = zero.get(c, True) and is_zero
    candidates = {c for c, z in zero.items()
                  if z and graph.groups[int(graph.class_group[c])].removable}
    calls = {}
    for layer, _, _ in graph.steps:
        calls[id(layer)] = calls.get(id(layer), 0) + 1
    kept = {}
    for lid in graph.structure_of:   # heads / units a config cannot express
        reason = _unit_reason(graph, lid, calls)
        zero_here = [c for c in graph.maps[lid]["out"].tolist() if c in candidates]
        if reason is not None and zero_here:
            candidates.difference_update(zero_here)
            g = int(graph.class_group[zero_here[0]])
            kept[g] = (len(set(zero_here)), reason)
    consts = _constants(graph, candidates)
    for layer, in_keys, _ in graph.steps:
        if not graph_lib.is_producer(layer):
            continue
        classes = graph.tensor_classes(in_keys[0])
        if classes is None:
            continue
        const = consts[in_keys[0]]
        for c, value in zip(classes.tolist(), const.tolist()):
            if c not in candidates:
                continue
            reason = None
            if math.isnan(value):
                reason = (f"its value is not constant at {layer.name!r} (zero padding or a "
                          "'same'-padded DepthwiseConv in between)")
            elif value != 0 and calls[id(layer)] > 1:
                reason = (f"it carries the constant {value:.4g} into {layer.name!r}, a layer "
                          "called more than once (one bias cannot fold every call)")
            elif value != 0 and not _foldable(layer):
                reason = (f"it carries the constant {value:.4g} into {layer.name!r} "
                          f"({type(layer).__name__}, padding {getattr(layer, 'padding', '?')!r}), "
                          "where folding it into the bias is not exact")
            if reason:
                candidates.discard(c)
                g = int(graph.class_group[c])
                n, first = kept.get(g, (0, reason))
                kept[g] = (n + 1, first)
    return candidates, kept, consts


def _constants(graph, candidates):
    consts = {}
    for key in graph.model_inputs.get(id(graph.model), []):
        ids = graph.tensor_ids.get(key)
        consts[key] = np.full(0 if ids is None else len(ids), np.nan)
    for step, (layer, in_keys, out_keys) in enumerate(graph.steps):
        ins = [consts.get(k) for k in in_keys]
        for i, k in enumerate(in_keys):   # nested-model inputs map to outer keys
            if ins[i] is None:
                ids = graph.tensor_ids.get(k)
                ins[i] = np.full(0 if ids is None else len(ids), np.nan)
        out_ids = [graph.tensor_ids.get(k) for k in out_keys]
        if graph_lib.is_producer(layer):
            classes = graph.maps[id(layer)]["out"]
            b = _bias(layer)
            value = b if b is not None else np.zeros(len(classes), np.float32)
            act = getattr(layer, "activation", None)
            if act is not None:  # the producer's own activation of its bias
                value = _np(act(keras.ops.convert_to_tensor(value[None]))).reshape(-1)
            consts[out_keys[0]] = np.where(np.isin(classes, list(candidates)), value, np.nan)
            continue
        if any(ids is None for ids in out_ids) or graph_lib.FOLLOWER not in graph.roles.get(
                id(layer), ()) or any(len(i) == 0 for i in ins):
            for k, ids in zip(out_keys, out_ids):
                consts[k] = np.full(0 if ids is None else len(ids), np.nan)
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            consts[out_keys[0]] = np.asarray(
                _follow_const(layer, ins, len(out_ids[0]), graph.step_arguments[step]),
                dtype=np.float64)
    return consts


# Rebuilding ------------------------------------------------------------------------------
def _keep(classes, removed):
    if classes is None or not len(classes):
        return None
    return ~np.isin(classes, list(removed))


def _rebuild(model, graph, removed, consts):
    out_keep, in_keep, fold, reshape_last = {}, {}, {}, {}
    for layer, in_keys, out_keys in graph.steps:
        lid = id(layer)
        maps = graph.maps.get(lid, {})
        if "out" in maps:
            out_keep[lid] = _keep(maps["out"], removed)
        if graph_lib.is_producer(layer):
            classes = graph.tensor_classes(in_keys[0])
            keep = _keep(classes, removed)
            if keep is not None:
                in_keep[lid] = keep
                const = np.where(keep, 0.0, np.nan_to_num(consts[in_keys[0]]))
                if np.any(const != 0):
                    fold[lid] = const
        if isinstance(layer, L.Reshape):
            keep = _keep(graph.tensor_classes(out_keys[0]), removed)
            if keep is not None and not keep.all():
                reshape_last[lid] = int(keep.sum())

    # Heads and FFN units: the keep vectors of their producers and consumers
    # inside attention layers and blocks, and what each rebuilt layer's config
    # says (num_heads, intermediate_dim).
    unit_keep, unit_config = {}, {}
    for lid, (kind, owner, holder) in graph.structure_of.items():
        keep = _keep(graph.maps[lid]["out"], removed)
        if keep is None or keep.all():
            continue
        unit_keep[lid] = ("out", keep)
        if kind == "heads":
            unit_config[id(holder)] = {"num_heads": int(keep.sum())}
        else:
            unit_config[id(holder)] = {"intermediate_dim": int(keep.sum())}
    for lid, maps in graph.maps.items():
        if "in" in maps and lid not in {id(layer) for layer, _, _ in graph.steps}:
            keep = _keep(maps["in"], removed)
            if keep is not None and not keep.all():
                unit_keep[lid] = ("in", keep)

    new_layers = {}

    def clone_layer(layer):
        lid = id(layer)
        if lid in new_layers:
            return new_layers[lid]
        if not isinstance(layer, keras.layers.Layer):  # a stateless keras.ops operation
            return layer
        config = layer.get_config()
        config.update(unit_config.get(lid, {}))
        keep = out_keep.get(lid)
        kind = _kind(layer)
        if kind is not None and keep is not None:
            if isinstance(layer, L.EinsumDense):
                shape = config["output_shape"]
                config["output_shape"] = (int(keep.sum()) if isinstance(shape, int) else
                                          tuple(shape[:-1]) + (int(keep.sum()),))
            else:
                config["units" if kind == "dense" else "filters"] = int(keep.sum())
            if lid in fold and _bias(layer) is None:
                if isinstance(layer, L.EinsumDense):
                    config["bias_axes"] = layer.equation.split("->")[1][-1]
                else:
                    config["use_bias"] = True
                config["bias_initializer"] = "zeros"
        if lid in reshape_last:
            config["target_shape"] = tuple(config["target_shape"][:-1]) + (reshape_last[lid],)
        try:
            new = type(layer).from_config(config)
        except Exception:  # noqa: BLE001 - e.g. a Lambda that cannot be rebuilt safely
            new = layer
        new_layers[lid] = new
        return new

    def inputs_for(sub):
        functional = getattr(sub, "_functional", None) if isinstance(
            sub, keras.Sequential) else sub
        tensors = []
        for key, x in zip(graph.model_inputs[id(sub)], functional.inputs):
            shape = list(graph.tensor_shapes[key])
            keep = _keep(graph.tensor_classes(key), removed)
            if keep is not None:
                shape[-1] = int(keep.sum())
            tensors.append(keras.Input(batch_shape=tuple(shape), dtype=x.dtype,
                                       name=getattr(x, "name", None)))
        return tensors

    def clone_nested(sub):
        return rebuild(sub, inputs_for(sub))

    def rebuild(sub, input_tensors):
        from keras_gap.prune import clone_with
        if input_tensors is not None:
            if isinstance(sub, keras.Sequential):
                input_tensors = input_tensors[0]
            else:   # the nested model's own input structure (a dict for KerasHub)
                input_tensors = keras.tree.pack_sequence_as(sub.input, input_tensors)
        return clone_with(sub, clone_layer, input_tensors=input_tensors,
                          clone_nested=clone_nested)

    new_model = rebuild(model, None)
    for lid, new in new_layers.items():
        old = graph.layers.get(lid)
        if old is None or new is old:
            continue
        if lid in unit_config:
            _copy_units(old, new, unit_keep)
            continue
        _set_weights(old, new, out_keep.get(lid), in_keep.get(lid), fold.get(lid))
    for layer in model._flatten_layers(include_self=False):  # untraced layers
        lid = id(layer)
        if lid in new_layers and lid not in graph.layers and new_layers[lid] is not layer:
            new_layers[lid].set_weights([_np(v) for v in layer.weights])
    return new_model


def _copy_units(old, new, unit_keep):
    """Copies an attention layer or block with fewer heads / FFN units into ``new``.

    ``unit_keep`` maps a layer id to ("out" | "in", keep): the kept heads of a
    MultiHeadAttention, the kept units of an FFN intermediate Dense ("out")
    and of the Dense that reads them ("in"). Sublayers are matched by name.
    """
    if id(old) in unit_keep and isinstance(old, L.MultiHeadAttention):
        _, keep = unit_keep[id(old)]
        for o, n in ((old.query_dense, new.query_dense), (old.key_dense, new.key_dense),
                     (old.value_dense, new.value_dense)):
            kernel_axis, bias_axis = registry.head_axes(o)
            values = [np.compress(keep, _np(o.kernel), axis=kernel_axis)]
            if getattr(o, "bias", None) is not None:
                values.append(np.compress(keep, _np(o.bias), axis=bias_axis))
            n.set_weights(values)
        o, n = old.output_dense, new.output_dense
        n.set_weights([np.compress(keep, _np(o.kernel), axis=0)] + [
            _np(v) for v in o.weights[1:]])
        return
    subs = registry.sublayers(old)
    if not subs:
        values = [_np(v) for v in old.weights]
        if id(old) in unit_keep:
            role, keep = unit_keep[id(old)]
            if role == "out":   # a Dense's kernel columns and bias
                values = [np.compress(keep, v, axis=-1) for v in values]
            else:               # a Dense's kernel rows
                values = [np.compress(keep, values[0], axis=0)] + values[1:]
        new.set_weights(values)
        return
    new_subs = registry.sublayers(new)
    if len(new_subs) != len(subs):
        raise ValueError(f"materialize: rebuilt {type(new).__name__} {new.name!r} has "
                         f"{len(new_subs)} sublayers, {old.name!r} has {len(subs)}.")
    by_name = {s.name: s for s in new_subs}
    for i, sub in enumerate(subs):   # by name; unnamed helpers (softmax_3) by position
        if sub.weights:
            _copy_units(sub, by_name.get(sub.name, new_subs[i]), unit_keep)


def _set_weights(old, new, out_keep, in_keep, fold):
    """Copies ``old``'s weights into ``new``, sliced to the kept channels."""
    kind = _kind(old)
    if kind is None and out_keep is None and in_keep is None and fold is None:
        new.set_weights([_np(v) for v in old.weights])  # unchanged: copy in order
        return
    values = {v.name: _np(v) for v in old.weights}
    ok = (lambda a, axis=-1: a if out_keep is None else np.compress(out_keep, a, axis=axis))
    ik = (lambda a, axis: a if in_keep is None else np.compress(in_keep, a, axis=axis))
    if kind in ("dense", "conv"):
        values["kernel"] = ok(ik(values["kernel"], -2))
    elif kind == "conv_t":
        values["kernel"] = ik(ok(values["kernel"], -2), -1)
    elif kind == "separable":
        dw = values["depthwise_kernel"]
        m = dw.shape[-1]
        values["depthwise_kernel"] = ik(dw, -2)
        rows = np.repeat(in_keep, m) if in_keep is not None else None
        pw = values["pointwise_kernel"]
        if rows is not None:
            pw = np.compress(rows, pw, axis=-2)
        values["pointwise_kernel"] = ok(pw)
    elif isinstance(old, graph_lib._DEPTHWISE) and out_keep is not None:
        m = values["kernel"].shape[-1]
        values["kernel"] = np.compress(out_keep.reshape(-1, m)[:, 0], values["kernel"], axis=-2)
    elif isinstance(old, L.BatchNormalization) and out_keep is not None:
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            if name in values:
                values[name] = ok(values[name])
    if "bias" in values or fold is not None:
        bias = values.get("bias")
        if bias is None:
            bias = np.zeros(_out_kernel(old)[0].shape[_out_kernel(old)[1]], np.float32)
        if fold is not None:
            bias = bias + _fold_delta(old, fold).astype(bias.dtype)
        if kind is not None or isinstance(old, graph_lib._DEPTHWISE):
            bias = ok(bias)
        values["bias"] = bias
    new.set_weights([values[v.name] for v in new.weights])
