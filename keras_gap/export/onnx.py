"""ONNX export through Keras' own exporter (the route to TensorRT on NVIDIA GPUs).

``model.export(path, format="onnx")`` needs a backend-specific converter:
``tf2onnx`` (TensorFlow backend), ``jax2onnx`` (JAX) or ``onnxscript`` /
``torch.onnx`` (PyTorch), plus ``onnx``. `to_onnx` checks for them first and
names the missing package instead of failing deep inside Keras.
"""

import importlib.util
import os

from keras_gap.export import _common

_REQUIRED = {
    "tensorflow": ("tf2onnx", "onnx"),
    "jax": ("jax2onnx", "onnx"),
    "torch": ("onnxscript", "onnx"),
}


def onnx_missing_packages(backend=None):
    """Packages Keras' ONNX exporter needs on ``backend`` that are not installed.

    Args:
        backend: a Keras backend name; default: the active backend.

    Returns:
        A list of missing package names (empty: ONNX export is available).

    Example:
        >>> kg.export.onnx.onnx_missing_packages("tensorflow")
        ['tf2onnx']
    """
    import keras

    backend = backend or keras.backend.backend()
    if backend not in _REQUIRED:
        return [f"(no ONNX exporter for the {backend!r} backend)"]
    return [p for p in _REQUIRED[backend] if importlib.util.find_spec(p) is None]


def to_onnx(model, path, opset_version=None, input_signature=None):
    """Exports a (pruned or stripped) model to ONNX with ``model.export``.

    Zeros (e.g. a 2:4 pattern from ``sparsity_m_by_n=(2, 4)``) are carried in
    the weight initializers; TensorRT's sparse kernels pick them up when the
    engine is built with sparse weights enabled. Check the pattern on the
    ONNX initializers with `check_n_by_m` (``axis=1`` for Conv [out, in, kh,
    kw], ``axis=0`` for MatMul [in, out]). Written atomically.

    Args:
        model: a `keras.Model` (pruned or not) or a path to a ``.keras`` file.
        path: output ``.onnx`` file.
        opset_version: optional ONNX opset.
        input_signature: optional input specs (needed for the torch backend,
            which has no dynamic batch in ONNX export).

    Returns:
        ``path``.

    Raises:
        ImportError: naming the packages to install when the active backend's
            ONNX converter is missing.

    Example:
        >>> kg.export.to_onnx(pruned, "model.onnx")
    """
    import contextlib
    import io

    import keras

    missing = onnx_missing_packages()
    if missing:
        raise ImportError(
            f"ONNX export on the {keras.backend.backend()!r} backend needs "
            f"{', '.join(missing)}: pip install {' '.join(missing)}.")
    model = _common.prepare_model(model)
    if input_signature is None and not getattr(model, "_called", True):
        _call_once(model)  # keras' ONNX exporter refuses never-called (cloned) models
    path = os.fspath(path)
    kwargs = {}
    if opset_version is not None:
        kwargs["opset_version"] = opset_version
    if input_signature is not None:
        kwargs["input_signature"] = input_signature
    with _common.atomic_file(path) as tmp:
        with contextlib.redirect_stdout(io.StringIO()):
            model.export(tmp, format="onnx", verbose=False, **kwargs)
    return path


def _call_once(model):
    import numpy as np

    if not getattr(model, "inputs", None):
        return
    batch = [np.zeros([1 if d is None else d for d in t.shape], dtype=str(t.dtype))
             for t in model.inputs]
    model(batch[0] if len(batch) == 1 else batch, training=False)
