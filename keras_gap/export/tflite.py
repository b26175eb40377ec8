"""`to_tflite`: strip, convert with sparse encoding, verify, write atomically.

What the TFLite converter does with sparse weights (TF 2.21, measured on an
x86 AVX2/AVX-512 CPU; ../shared/REFERENCES.md section 5):

* ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` stores constant weights of
  FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D and TRANSPOSE_CONV in a sparse
  format when at least 30% of them are zero.
* Only FULLY_CONNECTED (Keras ``Dense``) has native sparse kernels: float32
  with unstructured zeros or 1x4 blocks, int8 (full or dynamic range) with
  1x16 blocks. A 1x4 TFLite block is a (4, 1) block on the Keras [in, out]
  kernel: use ``block_size=tflite_block_size()`` when pruning. These run
  faster (several times at 90% sparsity and batch 1).
* float16 weights are never sparse-encoded here: the converter would put the
  sparse tensor in front of a DEQUANTIZE op, which outputs NaN.
* Every other sparse weight (convolutions, and FC weights whose pattern the
  kernel does not support) is expanded by a DENSIFY op when the model loads:
  the file shrinks but the computation stays dense. XNNPACK's sparse
  convolution path (ARM only; disabled on x86 with AVX) is what makes sparse
  convolutions faster on phones.
"""

import dataclasses
import os
import warnings

import numpy as np

from keras_gap.export import _common

QUANTIZE_MODES = (None, "dynamic", "float16", "int8")

# Relative output tolerance used by verification: max|tflite - keras| must be
# <= tol * max(1, max|keras|) (float32) or tol * max|keras| (quantized).
DEFAULT_TOLERANCE = {None: 1e-4, "float16": 1e-2, "dynamic": 0.1, "int8": 0.2}


class TFLiteVerificationError(RuntimeError):
    """The converted model's outputs disagree with the Keras model's."""


@dataclasses.dataclass(frozen=True)
class TFLiteExport:
    """Result of `to_tflite`; usable wherever a path is expected (``os.fspath``).

    Attributes:
        path: the written ``.tflite`` file.
        size: its size in bytes.
        quantize: the quantization mode.
        verified: whether outputs were compared with Keras.
        max_abs_diff: max |tflite - keras| on the verification inputs (None
            when not verified).
        top1_agreement: fraction of rows with the same argmax (2-D outputs
            with more than one column; else None).
        resolver: op resolver used for verification (see `run_tflite`).
    """

    path: str
    size: int
    quantize: object
    verified: bool
    max_abs_diff: object = None
    top1_agreement: object = None
    resolver: object = None

    def __fspath__(self):
        return self.path

    def __str__(self):
        return self.path


def tflite_block_size(quantize=None):
    """Block size whose sparsity TFLite's FULLY_CONNECTED kernel runs natively.

    Pass it to `keras_gap.prune_low_magnitude` for the Dense layers you will
    export: (4, 1) on the Keras [in, out] kernel is TFLite's 1x4 float block;
    int8 (full or dynamic range) needs 1x16, i.e. (16, 1).

    Which layers get faster: only Dense (FULLY_CONNECTED). Convolutions,
    depthwise and transposed convolutions get a smaller file (DENSIFY at load
    time) but no speed-up on x86; on ARM, XNNPACK runs sparse 1x1 / depthwise
    convolutions of suitable networks faster. The block sizes also need the
    kernel's input dimension to be divisible by 4 (or 16).

    Args:
        quantize: None / "float16" (float kernels: (4, 1)), "dynamic" or
            "int8" ((16, 1)).

    Returns:
        A (rows, cols) tuple for ``block_size``.

    Example:
        >>> pruned = kg.prune_low_magnitude(mlp, block_size=kg.export.tflite_block_size(),
        ...     pruning_schedule=kg.PolynomialDecay(0.0, 0.9, 0, 1000))
    """
    _check_quantize(quantize)
    return (16, 1) if quantize in ("dynamic", "int8") else (4, 1)


def _check_quantize(quantize):
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"`quantize` must be one of {QUANTIZE_MODES}; received {quantize!r}.")


def _input_specs(model):
    inputs = model.inputs if getattr(model, "inputs", None) else None
    if not inputs:
        return None
    return [(tuple(t.shape), str(t.dtype)) for t in inputs]


def _representative_fn(representative_dataset, max_samples):
    """Normalizes a representative dataset into the converter's generator."""
    if representative_dataset is None:
        return None
    if callable(representative_dataset):
        return representative_dataset

    def gen():
        data = representative_dataset
        if hasattr(data, "as_numpy_iterator"):  # tf.data.Dataset (unbatched or batched)
            count = 0
            for item in data.as_numpy_iterator():
                item = item[0] if isinstance(item, tuple) and len(item) == 2 else item
                arrays = _common.as_input_list(item)
                for i in range(arrays[0].shape[0]):
                    yield [a[i:i + 1].astype(np.float32) for a in arrays]
                    count += 1
                    if count >= max_samples:
                        return
            return
        arrays = _common.as_input_list(data)
        n = min(arrays[0].shape[0], max_samples)
        for i in range(n):
            yield [a[i:i + 1].astype(np.float32) for a in arrays]
    return gen


def _check_representative(model, representative_dataset):
    """Compares the calibration data's first batch with the model's inputs."""
    data = representative_dataset
    if data is None:
        return
    if callable(data):
        what, first = "an item of representative_dataset()", next(iter(data()), None)
    elif hasattr(data, "as_numpy_iterator"):
        what = "a batch of representative_dataset"
        first = next(iter(data.take(1).as_numpy_iterator()), None)
        if isinstance(first, tuple) and len(first) == 2:  # (inputs, labels)
            first = first[0]
    else:
        what, first = "representative_dataset", data
    if first is None:
        raise ValueError("representative_dataset is empty; expected calibration samples "
                         "(a few hundred training inputs).")
    _common.check_input_arrays(model, _common.as_input_list(first), what)


def _sample_from_representative(representative_dataset, limit=64):
    if representative_dataset is None:
        return None
    if callable(representative_dataset):
        rows = []
        for i, item in enumerate(representative_dataset()):
            rows.append(_common.as_input_list(item))
            if i + 1 >= limit:
                break
        if not rows:
            return None
        return [np.concatenate([r[j] for r in rows]) for j in range(len(rows[0]))]
    rows = list(_representative_fn(representative_dataset, limit)())
    if not rows:
        return None
    return [np.concatenate([r[j] for r in rows]) for j in range(len(rows[0]))]


def _convert(model, optimizations, quantize, representative_dataset,
             max_calibration_samples):
    import contextlib
    import io
    import tempfile

    import keras
    import tensorflow as tf

    # The converter traces through keras' exporter, which prints a summary.
    with contextlib.redirect_stdout(io.StringIO()):
        if keras.backend.backend() == "tensorflow":
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            return _configure_and_convert(converter, optimizations, quantize,
                                          representative_dataset,
                                          max_calibration_samples)
        # Other backends: a model.export SavedModel freezes correctly with
        # from_saved_model (tf.saved_model.save would not: NaN outputs).
        with tempfile.TemporaryDirectory(prefix="keras_gap_") as tmp:
            model.export(os.path.join(tmp, "sm"), format="tf_saved_model",
                         verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(
                os.path.join(tmp, "sm"))
            return _configure_and_convert(converter, optimizations, quantize,
                                          representative_dataset,
                                          max_calibration_samples)


def _configure_and_convert(converter, optimizations, quantize, representative_dataset,
                           max_calibration_samples):
    import tensorflow as tf

    converter.optimizations = optimizations
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.representative_dataset = _representative_fn(
            representative_dataset, max_calibration_samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def _compare(keras_outputs, tflite_outputs, quantize, tolerance):
    max_diff, top1, problems = 0.0, None, []
    for i, (ref, got) in enumerate(zip(keras_outputs, tflite_outputs)):
        ref = np.asarray(ref, np.float64)
        got = np.asarray(got, np.float64)
        if ref.shape != got.shape:
            problems.append(f"output {i}: shape {got.shape} != Keras {ref.shape}")
            continue
        if not np.all(np.isfinite(got)):
            problems.append(f"output {i}: {int(np.sum(~np.isfinite(got)))} NaN/Inf "
                            "values (unfrozen variables or a broken kernel)")
            continue
        diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        max_diff = max(max_diff, diff)
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        limit = tolerance * (max(1.0, scale) if quantize is None else max(scale, 1e-6))
        if ref.ndim == 2 and ref.shape[1] > 1:
            agree = float(np.mean(np.argmax(ref, 1) == np.argmax(got, 1)))
            top1 = agree if top1 is None else min(top1, agree)
        if diff > limit:
            problems.append(f"output {i}: max |tflite - keras| = {diff:.3g} > allowed "
                            f"{limit:.3g} (tolerance {tolerance} x output scale "
                            f"{scale:.3g})")
    return max_diff, top1, problems


def to_tflite(model, path, sparse=True, quantize=None, representative_dataset=None,
              verify=None, sample_inputs=None, tolerance=None,
              max_calibration_samples=500):
    """Converts a (pruned or stripped) Keras model to a sparse ``.tflite`` file.

    A pruned model is stripped first (`keras_gap.strip_pruning`). Conversion
    uses ``TFLiteConverter.from_keras_model`` (TensorFlow backend) or
    ``from_saved_model`` on a ``model.export`` directory (other backends):
    paths that freeze the variables (``tf.saved_model.save`` +
    ``from_saved_model`` silently produces NaN models). The file is written
    through a temporary file and renamed: a failed conversion or verification
    leaves no partial file (and keeps an existing file at ``path``).

    Args:
        model: a `keras.Model` (pruned or not) or a path to a ``.keras`` file.
        path: output ``.tflite`` path.
        sparse: turn on ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` (weights
            with >= 30% zeros are stored sparse; see the module docstring for
            which layers get faster). Ignored with a warning for "float16"
            (TFLite's sparse float16 weights give NaN outputs).
        quantize: None (float32), "dynamic" (int8 weights, float
            activations), "float16" (float16 weights) or "int8" (full integer
            kernels, float inputs/outputs; needs ``representative_dataset``).
        representative_dataset: calibration data for "int8": a numpy array
            (or list/dict of arrays) of samples, a *batched*
            ``tf.data.Dataset`` (of inputs or (inputs, labels)), or a
            generator function yielding lists of batch-1 arrays (the TFLite
            converter's contract). Also used for verification.
        verify: compare interpreter outputs with Keras and raise
            `TFLiteVerificationError` on disagreement. Default (None): True
            when ``sample_inputs`` or ``representative_dataset`` is given.
        sample_inputs: inputs for verification (a numpy batch or list/dict);
            default: up to 64 samples of ``representative_dataset``.
        tolerance: allowed max |tflite - keras| relative to the output scale;
            default per mode: float32 1e-4 (of max(1, scale)), float16 1e-2,
            dynamic 0.1, int8 0.2. NaN/Inf outputs always fail.
        max_calibration_samples: at most this many samples are used for int8
            calibration.

    Returns:
        A `TFLiteExport` (path-like: ``os.fspath(result)`` is the file) with
        the size, and the verification result.

    Raises:
        ValueError: bad arguments (unknown ``quantize``, "int8" without data,
            ``sample_inputs`` / ``representative_dataset`` whose shape or dtype
            does not fit the model's inputs: the message gives both shapes).
        TFLiteVerificationError: outputs disagree (nothing is written).

    Example:
        >>> kg.export.to_tflite(pruned, "model.tflite")
        >>> kg.export.to_tflite(pruned, "model_int8.tflite", quantize="int8",
        ...                     representative_dataset=x_train[:200])
    """
    import tensorflow as tf

    _check_quantize(quantize)
    path = os.fspath(path)
    if quantize == "int8" and representative_dataset is None:
        raise ValueError(
            "quantize='int8' needs calibration data: pass representative_dataset="
            "(a numpy array of a few hundred training samples, a tf.data.Dataset, "
            "or a generator function).")
    if verify is None:
        verify = sample_inputs is not None or representative_dataset is not None
    model = _common.prepare_model(model)
    if sample_inputs is not None:
        _common.check_input_arrays(model, _common.as_input_list(sample_inputs),
                                   "sample_inputs")
    _check_representative(model, representative_dataset)

    if sparse and quantize == "float16":
        # Measured (TF 2.21 / LiteRT 2.3): the converter then stores float16
        # weights sparse in front of a DEQUANTIZE op that cannot read the
        # sparse format; the model outputs NaN under every resolver.
        warnings.warn(
            "to_tflite(quantize='float16') ignores sparse=True: TFLite's sparse "
            "float16 weights feed DEQUANTIZE ops that produce NaN. The float16 "
            "model is written dense (gzip still compresses its zeros).",
            stacklevel=2)
        sparse = False
    optimizations = []
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    if quantize is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    data = _convert(model, optimizations, quantize, representative_dataset,
                    max_calibration_samples)

    result = dict(max_abs_diff=None, top1_agreement=None, resolver=None)
    with _common.atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
        if verify:
            result = _verify(model, tmp, path, quantize, representative_dataset,
                             sample_inputs, tolerance)
    return TFLiteExport(path=path, size=len(data), quantize=quantize,
                        verified=bool(verify), **result)


def _verify(model, tmp, path, quantize, representative_dataset, sample_inputs,
            tolerance):
    from keras_gap.export.runtime import run_tflite

    inputs = (_common.as_input_list(sample_inputs) if sample_inputs is not None
              else _sample_from_representative(representative_dataset))
    if inputs is None:
        raise ValueError(
            "verify=True needs inputs: pass sample_inputs= (a numpy batch) or "
            "representative_dataset=, or verify=False.")
    inputs = [np.asarray(a, np.float32) if np.issubdtype(np.asarray(a).dtype, np.floating)
              else np.asarray(a) for a in inputs]
    keras_in = inputs[0] if len(inputs) == 1 else inputs
    expected = _common.as_output_list(model.predict(keras_in, verbose=0))
    run = run_tflite(tmp, keras_in)
    got = _common.as_output_list(run.outputs)
    tol = DEFAULT_TOLERANCE[quantize] if tolerance is None else float(tolerance)
    max_diff, top1, problems = _compare(expected, got, quantize, tol)
    if problems:
        raise TFLiteVerificationError(
            f"The TFLite model for {path!r} (quantize={quantize!r}, resolver "
            f"{run.resolver}, runtime {run.runtime}) disagrees with the Keras model "
            f"on {inputs[0].shape[0]} sample(s): " + "; ".join(problems)
            + ". Nothing was written. Pass verify=False to write it anyway, or a "
            "larger tolerance= if the difference is expected from quantization.")
    return dict(max_abs_diff=max_diff, top1_agreement=top1, resolver=run.resolver)
