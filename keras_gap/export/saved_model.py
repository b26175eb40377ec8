"""SavedModel export (the GPU / TensorRT / TF-Serving route) and the N:M check.

NVIDIA's sparse tensor cores (Ampere and later) run 2:4 sparsity: in every
group of 4 consecutive input channels at most 2 weights are non-zero.
Prune with ``sparsity_m_by_n=(2, 4)``, export, and verify the exported
weights with `check_n_by_m` before handing them to TensorRT (via ONNX).
"""

import dataclasses
import os

import numpy as np

from keras_gap.export import _common


def to_saved_model(model, path, sample_inputs=None, tolerance=1e-4):
    """Exports a (pruned or stripped) model as an inference SavedModel.

    Uses Keras' own exporter (``model.export(path, format="tf_saved_model")``)
    under the TensorFlow backend, whose output TFLite and TF-Serving load
    correctly. Under JAX or PyTorch the stripped model goes through a
    TensorFlow-backend subprocess (saved as a temporary ``.keras`` file and
    exported by the same code), so the SavedModel is the one TensorFlow would
    write. A pruned model is stripped first. The directory is written next to
    ``path`` and renamed into place when complete: a failed export or
    verification leaves ``path`` untouched.

    Args:
        model: a `keras.Model` (pruned or not) or a path to a ``.keras`` file.
        path: output directory (replaced if it exists).
        sample_inputs: optional inputs (a numpy batch, or list / dict): the
            SavedModel's ``serve`` outputs are compared with the Keras model's
            (active backend) before the directory is put in place.
        tolerance: allowed max |saved_model - keras| relative to
            max(1, max|keras|).

    Returns:
        ``path``.

    Raises:
        ValueError: ``sample_inputs`` do not fit the model's inputs, or the
            SavedModel's outputs disagree with Keras (nothing is written).
        ExportSubprocessError: the TensorFlow export subprocess failed
            (non-TensorFlow backends).

    Example:
        >>> kg.export.to_saved_model(pruned, "out/saved_model", sample_inputs=x_test[:8])
        >>> kg.export.check_n_by_m("out/saved_model").ok
        True
    """
    from keras_gap.export import _tf_subprocess

    model = _common.prepare_model(model)
    if sample_inputs is not None:
        _common.check_input_arrays(model, _common.as_input_list(sample_inputs),
                                   "sample_inputs")
    path = os.fspath(path)
    with _common.atomic_directory(path) as tmp:
        if _tf_subprocess.needed():
            _tf_subprocess.run("saved_model", model, {"out": os.path.abspath(tmp)},
                               what="to_saved_model")
        else:
            _export_in_process(model, tmp)
        if sample_inputs is not None:
            _verify_saved_model(model, tmp, path, sample_inputs, tolerance)
    return path


def _export_in_process(model, out):
    """``model.export`` to a SavedModel directory (TensorFlow backend)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        model.export(out, format="tf_saved_model", verbose=False)


def _verify_saved_model(model, directory, path, sample_inputs, tolerance):
    import tensorflow as tf

    inputs = [np.asarray(a, np.float32) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
              for a in _common.as_input_list(sample_inputs)]
    expected = _common.as_output_list(model.predict(
        inputs[0] if len(inputs) == 1 else inputs, verbose=0))
    loaded = tf.saved_model.load(directory)
    got = _common.as_output_list(
        [t.numpy() for t in tf.nest.flatten(loaded.serve(*[tf.constant(a) for a in inputs]))])
    for i, (ref, out) in enumerate(zip(expected, got)):
        diff = float(np.max(np.abs(np.asarray(out, np.float64) - ref))) if ref.size else 0.0
        limit = tolerance * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
        if out.shape != ref.shape or not np.isfinite(diff) or diff > limit:
            raise ValueError(
                f"The SavedModel for {path!r} disagrees with the Keras model on "
                f"{inputs[0].shape[0]} sample(s): output {i} shape {out.shape} vs "
                f"{ref.shape}, max |saved_model - keras| = {diff:.3g} > {limit:.3g}. "
                "Nothing was written.")


@dataclasses.dataclass(frozen=True)
class NByMRow:
    """N:M check of one weight.

    Attributes:
        name: weight name.
        shape: weight shape.
        groups: number of M-groups checked (0 when skipped).
        violations: groups with more than N non-zeros.
        status: "ok", "violates" or "skipped (...)".
    """

    name: str
    shape: tuple
    groups: int
    violations: int
    status: str


@dataclasses.dataclass(frozen=True)
class NByMCheck:
    """Result of `check_n_by_m`; ``.ok`` is the verdict, ``print()`` for a table."""

    n: int
    m: int
    axis: int
    rows: tuple

    @property
    def checked(self):
        return tuple(r for r in self.rows if r.groups)

    @property
    def ok(self):
        """True when at least one weight was checked and none violates N:M."""
        return bool(self.checked) and all(r.violations == 0 for r in self.checked)

    def __bool__(self):
        return self.ok

    def to_dict(self):
        return {"n": self.n, "m": self.m, "axis": self.axis, "ok": self.ok,
                "weights": [dict(dataclasses.asdict(r), shape=list(r.shape))
                            for r in self.rows]}

    def __str__(self):
        lines = [f"{self.n}:{self.m} check along axis {self.axis}: "
                 + ("OK" if self.ok else "FAILED")]
        for r in self.rows:
            lines.append(f"  {r.name}  {'x'.join(map(str, r.shape))}  groups={r.groups}"
                         f"  violations={r.violations}  {r.status}")
        return "\n".join(lines)


def _keras_weights(model):
    from keras import ops

    from keras_gap import registry
    from keras_gap.wrapper import PruneLowMagnitude

    layers = list(model._flatten_layers(include_self=False, recursive=True))
    wrapped = {id(l.layer) for l in layers if isinstance(l, PruneLowMagnitude)}
    out = {}
    for layer in layers:
        if isinstance(layer, PruneLowMagnitude):
            for w, mask in zip(layer.pruned_weights, layer.masks):
                out[w.path] = ops.convert_to_numpy(w) * ops.convert_to_numpy(mask)
            continue
        if id(layer) in wrapped or isinstance(layer, keras_model_types()) \
                or not layer.built:
            continue
        try:
            weights = registry.get_prunable_weights(layer)
        except ValueError:
            continue
        for w in weights:
            out.setdefault(w.path, ops.convert_to_numpy(w))
    return out


def keras_model_types():
    import keras
    return (keras.Model,)


def _saved_model_weights(path):
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    variables = getattr(loaded, "variables", None) or []
    out = {}
    for v in variables:
        if v.trainable and len(v.shape) >= 2 and v.dtype.is_floating:
            out[v.name.split(":")[0]] = v.numpy()
    if not out:
        raise ValueError(
            f"SavedModel {path!r} exposes no trainable weights of rank >= 2 (was it "
            "written by keras_gap.export.to_saved_model / model.export?).")
    return out


def _collect(model_or_weights):
    import keras

    obj = model_or_weights
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if os.path.isdir(path):
            return _saved_model_weights(path)
        obj = _common.load_keras_model(path)
    if isinstance(obj, keras.Model) or isinstance(obj, keras.layers.Layer):
        if isinstance(obj, keras.layers.Layer) and not isinstance(obj, keras.Model):
            from keras_gap import registry
            return {w.path: keras.ops.convert_to_numpy(w)
                    for w in registry.get_prunable_weights(obj)}
        return _keras_weights(obj)
    if isinstance(obj, dict):
        return {str(k): np.asarray(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return {f"weight_{i}": np.asarray(v) for i, v in enumerate(obj)}
    if isinstance(obj, np.ndarray):
        return {"weight": obj}
    raise ValueError(
        "check_n_by_m expects a keras Model or layer, a SavedModel directory, a "
        "'.keras' file, a dict name -> array, or a list of arrays; received "
        f"{obj!r} of type {type(obj).__name__}.")


def check_n_by_m(model_or_weights, n=2, m=4, axis=-2, names=None):
    """Checks that weights have at most N non-zeros in every M along input channels.

    The layout TensorRT's 2:4 kernels need: groups of M consecutive entries
    along the input-channel axis (-2 for Keras/TF weights: Dense [in, out],
    Conv [kh, kw, in, out]).

    Args:
        model_or_weights: a SavedModel directory (as written by
            `to_saved_model`; its trainable float weights of rank >= 2 are
            checked), a keras Model (its prunable weights), a ``.keras`` path,
            a dict name -> array or a list of arrays.
        n: at most this many non-zeros per group.
        m: group size.
        axis: the input-channel axis (-2 for Keras layouts; 1 for an ONNX
            Conv weight [out, in, kh, kw]).
        names: optional substrings; only weights whose name contains one are
            checked (e.g. ``["dense"]`` to leave an unpruned stem out).

    Returns:
        An `NByMCheck`: ``.ok`` (also its truth value), ``.rows`` per weight,
        ``print()`` for a table. Weights whose axis is not divisible by ``m``
        are listed as skipped.

    Example:
        >>> kg.export.to_saved_model(kg.strip_pruning(pruned), "sm")
        >>> assert kg.export.check_n_by_m("sm", 2, 4).ok
    """
    n, m = int(n), int(m)
    if not 0 < n < m:
        raise ValueError(f"Need 0 < n < m for an N:M check; received n={n}, m={m}.")
    weights = _collect(model_or_weights)
    if names:
        names = [names] if isinstance(names, str) else list(names)
        weights = {k: v for k, v in weights.items() if any(s in k for s in names)}
    rows = []
    for name, w in weights.items():
        w = np.asarray(w)
        shape = tuple(w.shape)
        if w.ndim < 2:
            rows.append(NByMRow(name, shape, 0, 0, "skipped (rank < 2)"))
            continue
        ax = axis % w.ndim
        if shape[ax] % m:
            rows.append(NByMRow(name, shape, 0, 0,
                                f"skipped (axis {axis} of size {shape[ax]} not "
                                f"divisible by {m})"))
            continue
        moved = np.moveaxis(w != 0, ax, -1)
        counts = moved.reshape(-1, m).sum(axis=1)
        bad = int(np.sum(counts > n))
        rows.append(NByMRow(name, shape, int(counts.size), bad,
                            "ok" if bad == 0 else "violates"))
    return NByMCheck(n=n, m=m, axis=axis, rows=tuple(rows))
