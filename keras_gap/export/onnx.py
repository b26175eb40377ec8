"""ONNX export through Keras' own exporter (the route to TensorRT on NVIDIA GPUs).

``model.export(path, format="onnx")`` with the TensorFlow converter
(``tf2onnx`` and ``onnx``). Under JAX or PyTorch the stripped model is
exported by the same code in a TensorFlow-backend subprocess (one export path
for every backend), so the packages needed are always ``tf2onnx`` and
``onnx``. `to_onnx` checks for them first and names the missing package
instead of failing deep inside Keras.
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
    """Packages `to_onnx` needs that are not installed.

    `to_onnx` converts with TensorFlow's converter on every backend (in a
    TensorFlow subprocess under JAX / PyTorch), so by default this checks
    ``tf2onnx`` and ``onnx``.

    Args:
        backend: the Keras backend whose *native* ONNX exporter to check
            ("jax": jax2onnx, "torch": onnxscript); default: "tensorflow",
            the converter `to_onnx` uses on every backend.

    Returns:
        A list of missing package names (empty: ONNX export is available).

    Example:
        >>> kg.export.onnx.onnx_missing_packages("tensorflow")
        ['tf2onnx']
    """
    backend = backend or "tensorflow"
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
        input_signature: optional input specs (objects with ``.shape`` and
            ``.dtype``, e.g. ``keras.InputSpec`` or ``tf.TensorSpec``).

    Returns:
        ``path``.

    Raises:
        ImportError: naming the packages to install when the TensorFlow
            ONNX converter is missing.
        ExportSubprocessError: the TensorFlow export subprocess failed
            (non-TensorFlow backends).

    Example:
        >>> kg.export.to_onnx(pruned, "model.onnx")
    """
    import keras

    from keras_gap.export import _tf_subprocess

    via_tf = _tf_subprocess.needed()
    backend = keras.backend.backend()
    missing = onnx_missing_packages("tensorflow")
    if missing:
        where = (f" (the {backend!r} backend exports through a TensorFlow subprocess, "
                 "which uses the TensorFlow converter)" if via_tf else "")
        raise ImportError(
            f"ONNX export on the {backend!r} backend needs {', '.join(missing)}{where}: "
            f"pip install {' '.join(missing)}.")
    model = _common.prepare_model(model)
    path = os.fspath(path)
    with _common.atomic_file(path) as tmp:
        if via_tf:
            signature = None
            if input_signature is not None:
                signature = [{"shape": [None if d is None else int(d) for d in s.shape],
                              "dtype": str(getattr(s.dtype, "name", s.dtype))}
                             for s in input_signature]
            _tf_subprocess.run("onnx", model, {"out": os.path.abspath(tmp),
                                               "opset_version": opset_version,
                                               "input_signature": signature},
                               what="to_onnx")
        else:
            _export_in_process(model, tmp, opset_version, input_signature)
    return path


def _export_in_process(model, out, opset_version=None, input_signature=None):
    """``model.export(format="onnx")`` (TensorFlow backend)."""
    import contextlib
    import io

    if input_signature is None and not getattr(model, "_called", True):
        _call_once(model)  # keras' ONNX exporter refuses never-called (cloned) models
    kwargs = {}
    if opset_version is not None:
        kwargs["opset_version"] = opset_version
    if input_signature is not None:
        kwargs["input_signature"] = input_signature
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(out, format="onnx", verbose=False, **kwargs)


def _call_once(model):
    import numpy as np

    if not getattr(model, "inputs", None):
        return
    batch = [np.zeros([1 if d is None else d for d in t.shape], dtype=str(t.dtype))
             for t in model.inputs]
    model(batch[0] if len(batch) == 1 else batch, training=False)
