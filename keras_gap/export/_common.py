"""Shared helpers of the export package: model preparation, atomic writes, inputs."""

import contextlib
import os
import shutil
import tempfile

import numpy as np


def load_keras_model(path):
    """Loads a ``.keras`` / ``.h5`` file with keras-gap's layers registered.

    Args:
        path: path to a Keras model file.

    Returns:
        The loaded `keras.Model`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a Keras model file.
    """
    import keras

    import keras_gap  # noqa: F401  (registers PruneLowMagnitude for loading)

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path!r}.")
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise ValueError(
            f"{path!r} is not a Keras model file: expected a '.keras' (or legacy "
            "'.h5') file saved with model.save(...).")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for corrupt files
        raise ValueError(
            f"Could not load {path!r} as a Keras model ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}).") from e


def prepare_model(model):
    """Returns a plain Keras model ready for export.

    A path is loaded; a pruned model (one containing `PruneLowMagnitude`
    layers) is stripped with `keras_gap.strip_pruning`, which bakes the masks
    into the weights.

    Args:
        model: a `keras.Model` (pruned or not) or a path to a ``.keras`` file.

    Returns:
        A `keras.Model` without pruning wrappers.
    """
    import keras

    from keras_gap.prune import strip_pruning
    from keras_gap.wrapper import collect_wrappers

    if isinstance(model, (str, os.PathLike)):
        model = load_keras_model(model)
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Expected a keras.Model (pruned or stripped) or a path to a '.keras' "
            f"file; received {model!r} of type {type(model).__name__}.")
    if collect_wrappers(model):
        model = strip_pruning(model)
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built: call it on a batch or create it "
            "with keras.Input before exporting.")
    return model


def _tmp_sibling(path, suffix=".tmp"):
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    return directory, f".{base}.", suffix


def atomic_write_bytes(path, data):
    """Writes ``data`` to ``path`` through a temporary file and `os.replace`.

    A reader never sees a partial file, and a failure leaves ``path`` as it
    was (absent, or the previous version).
    """
    directory, prefix, suffix = _tmp_sibling(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path):
    """Yields a temporary directory that replaces ``path`` on success.

    On an exception the temporary directory is removed and ``path`` is left
    untouched. An existing ``path`` is replaced only once the new one is
    complete.
    """
    directory, prefix, _ = _tmp_sibling(path)
    tmp = tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=directory)
    out = os.path.join(tmp, "out")
    try:
        yield out
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=directory)
            os.replace(path, os.path.join(old, "prev"))
            os.replace(out, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(out, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path):
    """Yields a temporary file path that replaces ``path`` on success."""
    directory, prefix, suffix = _tmp_sibling(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def as_input_list(x):
    """Normalizes model inputs (array, list/tuple, dict) to a list of arrays."""
    if isinstance(x, dict):
        return [np.asarray(v) for v in x.values()]
    if isinstance(x, (list, tuple)):
        return [np.asarray(v) for v in x]
    return [np.asarray(x)]


def as_output_list(y):
    if isinstance(y, dict):
        return [np.asarray(v) for v in y.values()]
    if isinstance(y, (list, tuple)):
        return [np.asarray(v) for v in y]
    return [np.asarray(y)]


def _expected_inputs(model):
    """[(name, shape, dtype)] of the model's inputs, or None when unknown."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return None
    out = []
    for i, t in enumerate(inputs):
        name = getattr(t, "name", None) or f"input {i}"
        out.append((name, tuple(t.shape), str(getattr(t, "dtype", "float32"))))
    return out


def _shape_str(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"


def check_input_arrays(model, arrays, what):
    """Checks arrays against the model's inputs before TFLite sees them.

    A wrong shape would otherwise fail deep inside the converter or the
    interpreter ("conv.cc: input->dims->size != 4"); this names both shapes.

    Args:
        model: the `keras.Model` being exported.
        arrays: the arrays given for its inputs (list, in input order).
        what: how the user passed them, for the message ("sample_inputs").

    Raises:
        ValueError: wrong number of arrays, rank, size or dtype, naming what
            was given and what the model expects.
    """
    expected = _expected_inputs(model)
    if expected is None:
        return
    if len(arrays) != len(expected):
        names = ", ".join(f"{n} {_shape_str(s)}" for n, s, _ in expected)
        raise ValueError(f"{what} gives {len(arrays)} array(s); the model has "
                         f"{len(expected)} input(s): {names}.")
    for array, (name, shape, dtype) in zip(arrays, expected):
        array = np.asarray(array)
        got = tuple(array.shape)
        where = f" for input {name!r}" if len(expected) > 1 else ""
        matches = len(got) == len(shape) and all(
            e is None or g == e for g, e in zip(got[1:], shape[1:]))
        if not matches:
            hint = ""
            if len(got) + 1 == len(shape) and shape[-1] == 1 and \
                    all(e is None or g == e for g, e in zip(got[1:], shape[1:-1])):
                hint = " Add the channel axis: x[..., None]."
            elif len(got) == len(shape) - 1 and got == tuple(shape[1:]):
                hint = " Add the batch axis: x[None]."
            raise ValueError(f"{what}{where} has shape {_shape_str(got)}; the model "
                             f"expects {_shape_str(shape)} (first axis: batch).{hint}")
        kind = array.dtype.kind
        wants_int = "int" in dtype or "bool" in dtype
        ok = kind in "biu" if wants_int else kind in "biuf"
        if not ok:
            raise ValueError(f"{what}{where} has dtype {array.dtype}; the model expects "
                             f"{dtype} inputs (numeric arrays"
                             + (" of integers)." if wants_int else ")."))
