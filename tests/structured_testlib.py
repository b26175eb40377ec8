"""Helpers for the structured-sparsity tests: zero whole channels of a model."""

import numpy as np
from keras import ops

from keras_gap.structured import analyze
from keras_gap.structured.graph import unwrap


def randomize_bn(model, seed=0):
    """Random biases, and BatchNorm statistics / gamma / beta (not the identity)."""
    import keras
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False):
        layer = unwrap(layer)
        bias = getattr(layer, "bias", None)
        if bias is not None:
            bias.assign(rng.normal(0, 1, tuple(bias.shape)).astype("float32"))
        if isinstance(layer, keras.layers.BatchNormalization):
            for v in layer.weights:
                shape = tuple(v.shape)
                if v.name == "moving_variance":
                    v.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
                else:
                    v.assign(rng.normal(0, 1, shape).astype("float32"))


def zero_channels(model, fraction=0.5, seed=0, zero_bias=False, zero_bn=False):
    """Zeroes ``fraction`` of every removable group's channels in all producers.

    Returns:
        dict group name -> number of channels zeroed.
    """
    import keras
    graph = analyze(model)
    rng = np.random.default_rng(seed)
    done = {}
    for group in graph.groups:
        if not group.removable or group.size < 2:
            continue
        count = max(1, int(group.size * fraction))
        chosen = rng.choice(group.size, count, replace=False)
        done[group.name] = count
        for lid, layer in graph.layers.items():
            maps = graph.maps.get(lid, {})
            if "out" not in maps or group.index not in graph.layer_groups(layer):
                continue
            gone = np.isin(graph.positions(layer, group.index), chosen)
            for v in layer.weights:
                if "moving" in v.name:
                    continue
                is_kernel = v.name in ("kernel", "pointwise_kernel")
                if layer.name not in group.producers and not (
                        zero_bn and v.name in ("gamma", "beta")) and not (
                        zero_bias and isinstance(layer, (keras.layers.DepthwiseConv1D,
                                                         keras.layers.DepthwiseConv2D))):
                    continue
                if not is_kernel and v.name != "bias" and v.name not in ("gamma", "beta"):
                    continue
                if v.name == "bias" and not zero_bias:
                    continue
                value = np.array(ops.convert_to_numpy(v))
                if isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                                      keras.layers.Conv3DTranspose)) and v.name == "kernel":
                    value[..., gone, :] = 0
                elif isinstance(layer, (keras.layers.DepthwiseConv1D,
                                        keras.layers.DepthwiseConv2D)) and v.name == "kernel":
                    m = value.shape[-1]
                    value = value.reshape(value.shape[:-2] + (-1,))
                    value[..., gone] = 0
                    value = value.reshape(value.shape[:-1] + (-1, m))
                else:
                    value[..., gone] = 0
                v.assign(value)
    return done


def max_diff(a, b, x):
    ya = ops.convert_to_numpy(a(x, training=False))
    yb = ops.convert_to_numpy(b(x, training=False))
    assert ya.shape == yb.shape
    return float(np.abs(ya - yb).max())
