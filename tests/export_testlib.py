"""Layers whose ``call`` uses one backend's own ops instead of ``keras.ops``: they run on
that backend but cannot be traced by the TensorFlow backend (export tests)."""

import keras


@keras.saving.register_keras_serializable(package="keras_gap_tests")
class JaxTanh(keras.layers.Layer):
    def call(self, x):
        import jax.numpy as jnp
        return jnp.tanh(x)


@keras.saving.register_keras_serializable(package="keras_gap_tests")
class TorchTanh(keras.layers.Layer):
    def call(self, x):
        import torch
        return torch.tanh(x)


BACKEND_ONLY = {"jax": JaxTanh, "torch": TorchTanh}
