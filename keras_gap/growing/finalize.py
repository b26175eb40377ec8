"""`finalize`: hard gates folded into the weights, gates removed, then `kg.materialize`."""

import warnings

import keras
import numpy as np

from keras_gap.growing import gating
from keras_gap.growing.gates import BLOCK, CHANNEL, ApplyGate, Gate
from keras_gap.structured.materialize import materialize
from keras_gap.structured.trace import trace

L = keras.layers


def _copy_layer(layer):
    return type(layer).from_config(layer.get_config())


def _zero_out_channels(layer, off):
    """Zeroes output channels ``off`` (bool) of a producer: kernel slice and bias."""
    values = {}
    for v in layer.weights:
        a = np.array(keras.ops.convert_to_numpy(v))
        if v.name in ("kernel", "pointwise_kernel"):
            axis = -2 if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose,
                                            L.Conv3DTranspose)) else -1
            index = [slice(None)] * a.ndim
            index[axis] = off
            a[tuple(index)] = 0
        elif v.name == "bias":
            a[off] = 0
        values[id(v)] = a
    for v in layer.weights:
        v.assign(values[id(v)])


def _zero_bn_channels(bn, off):
    for v in (bn.gamma, bn.beta):
        if v is not None:
            a = np.array(keras.ops.convert_to_numpy(v))
            a[off] = 0
            v.assign(a)


def finalize(gated, return_report=False):
    """The finalized growing network: a plain, smaller Keras model.

    Hard gates (``score > 0``; a layer keeps at least its best channel) are
    folded into a copy of the weights: an off channel's producer kernel slice
    and bias are zeroed (and the scale and offset of the BatchNormalization
    the gate follows), so the channel is exactly zero; an off residual block's
    branch is removed (the ``Add`` passes the skip path on). The gates are
    dropped and `keras_gap.materialize` removes the zero channels. In
    inference the result's outputs equal the gated model's (up to float
    rounding).

    Args:
        gated: a model made by `add_gates` (trained with `GrowingCallback`).
        return_report: also return the `keras_gap.MaterializeReport`.

    Returns:
        The new uncompiled model (it shares no weights with ``gated``), or
        ``(model, report)``.

    Raises:
        ValueError: ``gated`` has no growing gates.

    Example:
        >>> small = kg.growing.finalize(gated)
        >>> print(kg.flops_report(small, reference=space))
    """
    gates = gating.gates_of(gated)
    if not gates:
        raise ValueError(f"finalize: model {getattr(gated, 'name', gated)!r} has no growing "
                         "gates; make it with keras_gap.growing.add_gates and train it.")
    if all(gating.trained_epochs(g) == 0 for g in gates):
        warnings.warn(
            f"finalize: model {gated.name!r} has not completed an epoch with "
            "GrowingCallback; its gates are still at their seed, so the result is the "
            "seed architecture.", stacklevel=2)
    functional = gating._functional(gated, "finalize")
    hard = {id(g): gating.hard_gates(g) for g in gates}
    off_adds = {}
    for g in gates:
        if g.kind == BLOCK and hard[id(g)][0] == 0:
            off_adds[g.targets[0]] = g.branch
    copies = {}

    def call_fn(op, inputs, *args, **kwargs):
        if isinstance(op, (Gate, ApplyGate)):
            return gating.without_gates(op, inputs, *args, **kwargs)
        if op.name in off_adds and isinstance(op, L.Add):
            return args[0][1 - off_adds[op.name]]
        new = copies.get(id(op))
        first = new is None
        if first:
            new = copies[id(op)] = _copy_layer(op)
        out = new(*args, **kwargs)
        if first:
            new.set_weights(op.get_weights())
        return out

    folded = gating._rebuild(functional, call_fn, gated.name.removesuffix("_gated"))
    by_name = {layer.name: layer for layer in functional.layers}
    traced = trace(functional)
    made_by = {k: c.layer for c in traced.calls for k in c.out_keys}
    site_input = {}   # id(gate) -> the layers whose outputs the gate scales
    for call in traced.calls:
        if isinstance(call.layer, ApplyGate):
            x, gate_values = call.in_keys[:2]
            site_input.setdefault(id(made_by.get(gate_values)), []).append(made_by.get(x))
    for g in gates:
        if g.kind != CHANNEL:
            continue
        off = hard[id(g)] == 0
        if not off.any():
            continue
        for name in g.targets:
            new = copies.get(id(by_name[name]))
            if new is not None:       # None: inside a removed residual branch
                _zero_out_channels(new, off)
        for op in site_input.get(id(g), []):
            new = copies.get(id(op))
            if new is not None and isinstance(new, L.BatchNormalization):
                _zero_bn_channels(new, off)
    return materialize(folded, return_report=return_report)
