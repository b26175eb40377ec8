"""Run in a subprocess: what tf-mot 0.8.1 does in the cases where keras-gap used to differ.

Usage: python tfmot_behaviour.py CASE ['<json argument>']   (CASE "all": every case,
with the argument {"xnnpack_ops": [...], "m_by_n": [...]})
Prints one JSON line with the result (see each case below). tf-mot runs on tf_keras
models (importing it sets TF_USE_LEGACY_KERAS=1 for this process only).

Cases:
  partly_pruned      a Sequential holding one wrapped Dense and one plain Dense, pruned
                     twice: which layers are wrapped, and whether the second call raises.
  double_xnnpack     tf-mot's own double PruneForLatencyOnXNNPack test.
  nothing_prunable   a model without prunable weights (and a policy that allows nothing).
  xnnpack_ops        a Functional model with a TF op between the layers, for each op in
                     the JSON list: the number of wrapped layers or the error message.
  m_by_n             JSON list of {"kernel": nested list [in, out] or [kh, kw, in, out],
                     "m_by_n": [a, b]}: the masks tf-mot sets at step 1.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS=1
import tf_keras

api = tfmot.sparsity.keras
L = tf_keras.layers
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (  # noqa: E402
    PruneLowMagnitude as Wrapper)


def wrapped_names(model):
    return [l.layer.name for l in model.submodules if isinstance(l, Wrapper)]


def partly_pruned(_):
    mine = api.prune_low_magnitude(L.Dense(8, name="mine"))
    model = tf_keras.Sequential([tf_keras.Input((4,)), mine, L.Dense(2, name="other")])
    pruned = api.prune_low_magnitude(model)
    again = api.prune_low_magnitude(pruned)
    return {"first": wrapped_names(pruned), "mine_kept": pruned.layers[0] is mine,
            "second": wrapped_names(again),
            "second_keeps_wrappers": all(a is b for a, b in zip(again.layers, pruned.layers)),
            "second_is_new_model": again is not pruned,
            "list_of_wrapped": [l is mine for l in api.prune_low_magnitude([mine])]}


def _xnnpack_model(op=None):
    i = tf_keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, strides=2, padding="valid")(L.ZeroPadding2D(1)(i))
    r = L.Conv2D(16, 1, name="pw")(x)
    x = x + r if op is None else OPS[op](x, r)
    return tf_keras.Model(i, L.GlobalAveragePooling2D()(x))


OPS = {
    "add": lambda x, r: x + r,
    "subtract": lambda x, r: x - r,
    "multiply": lambda x, r: x * r,
    "identity": lambda x, r: tf.identity(x + r),
    "relu6": lambda x, r: tf.nn.relu6(x + r),
    "mean": lambda x, r: x - tf.reduce_mean(r, axis=-1, keepdims=True),
    "concat": lambda x, r: tf.concat([x, r], axis=-1),
}


def double_xnnpack(_):
    policy = api.PruneForLatencyOnXNNPack()
    pruned = api.prune_low_magnitude(_xnnpack_model(), pruning_policy=policy)
    twice = api.prune_low_magnitude(pruned, pruning_policy=policy)
    return {"first": wrapped_names(pruned), "second": wrapped_names(twice)}


def xnnpack_ops(names):
    out = {}
    for name in names:
        try:
            pruned = api.prune_low_magnitude(_xnnpack_model(name),
                                             pruning_policy=api.PruneForLatencyOnXNNPack())
            out[name] = {"wrapped": wrapped_names(pruned)}
        except ValueError as e:
            out[name] = {"error": str(e)}
    return out


class _Nothing(api.PruningPolicy):
    def allow_pruning(self, layer):
        return False

    def ensure_model_supports_pruning(self, model):
        pass


def nothing_prunable(_):
    model = tf_keras.Sequential([tf_keras.Input((8,)), L.LayerNormalization(name="norm"),
                                 L.Activation("relu", name="act")])
    pruned = api.prune_low_magnitude(model)
    layers = [[type(l).__name__, type(getattr(l, "layer", l)).__name__] for l in pruned.layers]
    x = np.random.RandomState(0).rand(16, 8).astype("float32")
    pruned.compile("sgd", "mse")
    pruned.fit(x, x, verbose=0, callbacks=[api.UpdatePruningStep()])
    dense = tf_keras.Sequential([tf_keras.Input((8,)), L.Dense(4, name="d")])
    none = api.prune_low_magnitude(dense, pruning_policy=_Nothing())
    return {"layers": layers, "trained": True, "policy_none": wrapped_names(none),
            "prunable_weights": [len(l.layer.get_prunable_weights()) for l in pruned.layers]}


def _m_by_n_one(spec):
    kernel = np.asarray(spec["kernel"], "float32")
    if kernel.ndim == 2:
        layer = L.Dense(kernel.shape[1], use_bias=False)
        shape, x = (kernel.shape[0],), np.ones((1, kernel.shape[0]), "float32")
    else:
        layer = L.Conv2D(kernel.shape[3], kernel.shape[:2], use_bias=False)
        shape = kernel.shape[:2] + (kernel.shape[2],)
        x = np.ones((1,) + shape, "float32")
    wrapper = api.prune_low_magnitude(layer, sparsity_m_by_n=tuple(spec["m_by_n"]),
                                      pruning_schedule=api.ConstantSparsity(0.5, 0))
    model = tf_keras.Sequential([tf_keras.Input(shape), wrapper])
    layer.kernel.assign(kernel)
    model.compile(tf_keras.optimizers.SGD(0.0), "mse")
    y = np.zeros((1,) + tuple(model.output_shape[1:]), "float32")
    model.fit(x, y, verbose=0, callbacks=[api.UpdatePruningStep()])
    (_, mask, _), = wrapper.pruning_vars
    return mask.numpy().tolist()


def m_by_n(specs):
    return [_m_by_n_one(spec) for spec in specs]


def all_cases(arg):
    return {"partly_pruned": partly_pruned(None), "double_xnnpack": double_xnnpack(None),
            "nothing_prunable": nothing_prunable(None),
            "xnnpack_ops": xnnpack_ops(arg.get("xnnpack_ops", [])),
            "m_by_n": m_by_n(arg.get("m_by_n", []))}


CASES = {f.__name__: f for f in (partly_pruned, double_xnnpack, nothing_prunable,
                                 xnnpack_ops, m_by_n)}
CASES["all"] = all_cases

if __name__ == "__main__":
    case = sys.argv[1]
    arg = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    print(json.dumps(CASES[case](arg)))
