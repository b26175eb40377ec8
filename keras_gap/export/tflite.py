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


OPTIMIZE_FOR = ("size", "latency")

# "latency" picks the dense encoding only when it is at least this much faster (a
# closer result is timing noise, and the sparse file is smaller); "size" warns when
# the sparse file is at least this much slower than the dense encoding.
LATENCY_MARGIN = 1.05


class TFLiteVerificationError(RuntimeError):
    """The converted model's outputs disagree with the Keras model's."""


class SparseSlowerWarning(UserWarning):
    """The sparse-encoded TFLite file runs slower than the dense encoding."""


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
        encoding: "sparse" (the written file has weights in TFLite's sparse
            encoding) or "dense" (it has none: ``sparse=False``, the dense
            encoding was chosen, or no weight was sparse enough to encode).
        optimize_for: "size" or "latency" (see `to_tflite`).
        latency_ms: {"sparse": ms, "dense": ms}, batch-1 medians of both
            encodings of the same weights (`tflite_latency`), or None when
            not compared (nothing sparse-encoded, ``sparse=False``, float16,
            or a multi-input model).
        sizes: {"sparse": bytes, "dense": bytes} of both encodings, or None.
        resolvers: {"sparse": resolver, "dense": resolver} each file runs
            under (sparse int8 needs BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            dense files run with XNNPACK), or None.
        choice: one sentence: which encoding was written and why, with both
            latencies and sizes (None when not compared).
        subprocess: timings of the TensorFlow export subprocess (non-TensorFlow
            backends: ``backend``, ``save_s``, ``child_s``, ``work_s``,
            ``overhead_s``), or None when converted in this process.
    """

    path: str
    size: int
    quantize: object
    verified: bool
    max_abs_diff: object = None
    top1_agreement: object = None
    resolver: object = None
    encoding: str = "sparse"
    optimize_for: str = "size"
    latency_ms: object = None
    sizes: object = None
    resolvers: object = None
    choice: object = None
    subprocess: object = None

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


def _optimizations(sparse, quantize):
    import tensorflow as tf
    optimizations = []
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    if quantize is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    return optimizations


def _convert(model, sparse, quantize, representative_dataset, max_calibration_samples):
    """TFLite bytes of ``model`` (TensorFlow backend, in this process)."""
    import contextlib
    import io

    import tensorflow as tf

    # The converter traces through keras' exporter, which prints a summary.
    with contextlib.redirect_stdout(io.StringIO()):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        return _configure_and_convert(converter, _optimizations(sparse, quantize), quantize,
                                      representative_dataset, max_calibration_samples)


def _has_sparse_tensors(data):
    from keras_gap.export.inspection import inspect_tflite
    return bool(inspect_tflite(data).sparse_tensors)


def _convert_encodings(model, sparse, quantize, representative_dataset,
                       max_calibration_samples, want_dense):
    """{"main": bytes, "dense": bytes or None}: the requested file and, when
    ``want_dense`` and the requested one has sparse-encoded weights, the dense
    encoding of the same weights (for the latency comparison).

    The one TensorFlow conversion every backend runs: in this process on the
    TensorFlow backend, in the TensorFlow export subprocess on the others.
    """
    main = _convert(model, sparse, quantize, representative_dataset,
                    max_calibration_samples)
    dense = None
    if want_dense and sparse and _has_sparse_tensors(main):
        dense = _convert(model, False, quantize, representative_dataset,
                         max_calibration_samples)
    return {"main": main, "dense": dense}


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
              max_calibration_samples=500, optimize_for="size", latency_inputs=None):
    """Converts a (pruned or stripped) Keras model to a sparse ``.tflite`` file.

    A pruned model is stripped first (`keras_gap.strip_pruning`). Conversion
    uses ``TFLiteConverter.from_keras_model`` under the TensorFlow backend.
    Under JAX or PyTorch the stripped model is saved to a temporary ``.keras``
    file and converted by the same code in a TensorFlow-backend subprocess
    (one export path: the same graph and the same file as on TensorFlow; about
    6-8 s extra per call), then verified here against the active backend's
    Keras outputs. The file is written through a temporary file and renamed: a
    failed conversion or verification leaves no partial file (and keeps an
    existing file at ``path``).

    Sparse vs dense encoding: TFLite's sparse weight encoding makes the file
    smaller but not always faster (sparse int8 runs without XNNPACK; sparse
    convolutions are densified at load time). When the sparse file has
    sparse-encoded weights, the dense encoding of the same weights is also
    converted and both are timed (`tflite_latency`, one thread, on
    ``latency_inputs``). ``optimize_for="size"`` writes the sparse file and
    warns (`SparseSlowerWarning`) when it is at least 5% slower;
    ``optimize_for="latency"`` writes the faster one (the dense one only when
    it is at least 5% faster: closer is noise and the sparse file is smaller)
    and prints which it chose. Both times and sizes are in the result.

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
        optimize_for: "size" (default: the sparse encoding, with a warning
            when it is slower) or "latency" (whichever encoding runs faster).
        latency_inputs: the batch both encodings are timed on; default: the
            first sample of the verification inputs (batch 1), else zeros.

    Returns:
        A `TFLiteExport` (path-like: ``os.fspath(result)`` is the file) with
        the size, the verification result, the encoding written and, when
        both were compared, ``latency_ms``, ``sizes`` and ``choice``.

    Raises:
        ValueError: bad arguments (unknown ``quantize`` / ``optimize_for``,
            "int8" without data, ``sample_inputs`` / ``representative_dataset``
            whose shape or dtype does not fit the model's inputs: the message
            gives both shapes).
        TFLiteVerificationError: outputs disagree (nothing is written).
        ExportSubprocessError: the TensorFlow export subprocess failed
            (non-TensorFlow backends; names the layer when one failed).

    Example:
        >>> kg.export.to_tflite(pruned, "model.tflite")
        >>> kg.export.to_tflite(pruned, "model_int8.tflite", quantize="int8",
        ...                     representative_dataset=x_train[:200])
        >>> r = kg.export.to_tflite(pruned, "fast.tflite", quantize="int8",
        ...                         representative_dataset=x_train[:200],
        ...                         optimize_for="latency")
        >>> r.encoding, r.latency_ms
    """
    from keras_gap.export import _tf_subprocess

    _check_quantize(quantize)
    if optimize_for not in OPTIMIZE_FOR:
        raise ValueError(f"`optimize_for` must be one of {OPTIMIZE_FOR}; received "
                         f"{optimize_for!r}.")
    path = os.fspath(path)
    if quantize == "int8" and representative_dataset is None:
        raise ValueError(
            "quantize='int8' needs calibration data: pass representative_dataset="
            "(a numpy array of a few hundred training samples, a tf.data.Dataset, "
            "or a generator function).")
    if verify is None:
        verify = sample_inputs is not None or representative_dataset is not None
    model = _common.prepare_model(model)
    if isinstance(getattr(model, "input", None), dict):
        # Measured (TF 2.21, KerasHub 0.32): TFLiteConverter.from_keras_model fails
        # inside TensorFlow on such models ("'NoneType' object is not callable").
        raise ValueError(
            f"to_tflite does not convert models with named (dict) inputs yet: "
            f"{type(model).__name__} {model.name!r} takes {sorted(model.input)}. "
            "Export it with model.export(dir, format='tf_saved_model') and convert "
            "with tf.lite.TFLiteConverter.from_saved_model(dir) (optimizations="
            "[tf.lite.Optimize.EXPERIMENTAL_SPARSITY] for sparse weights).")
    if sample_inputs is not None:
        _common.check_input_arrays(model, _common.as_input_list(sample_inputs),
                                   "sample_inputs")
    _check_representative(model, representative_dataset)
    if latency_inputs is not None:
        _common.check_input_arrays(model, _common.as_input_list(latency_inputs),
                                   "latency_inputs")

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
    verify_inputs = None
    if verify:
        verify_inputs = (_common.as_input_list(sample_inputs) if sample_inputs is not None
                         else _sample_from_representative(representative_dataset))
        if verify_inputs is None:
            raise ValueError(
                "verify=True needs inputs: pass sample_inputs= (a numpy batch) or "
                "representative_dataset=, or verify=False.")
    compare = sparse and len(model.inputs or []) == 1
    timing = None
    if _tf_subprocess.needed():
        rep = representative_dataset
        if rep is not None:
            rep = _sample_from_representative(rep, limit=max_calibration_samples)
        out, timing = _tf_subprocess.run(
            "tflite", model,
            {"sparse": bool(sparse), "quantize": quantize, "want_dense": compare,
             "max_calibration_samples": int(max_calibration_samples)},
            arrays={"representative": rep}, what="to_tflite")
        datas = {"main": out["files"]["main"], "dense": out["files"].get("dense")}
    else:
        datas = _convert_encodings(model, sparse, quantize, representative_dataset,
                                   max_calibration_samples, compare)

    comparison = None
    if datas["dense"] is not None:
        if latency_inputs is not None:
            x_lat = _common.as_input_list(latency_inputs)[0]
        elif verify_inputs is not None:
            x_lat = np.asarray(verify_inputs[0][:1])
        else:
            x_lat = None
        comparison = _compare_encodings(datas["main"], datas["dense"], x_lat)
    encoding = "sparse" if sparse else "dense"
    data = datas["main"]
    choice = None
    if comparison is not None:
        lat, size, res = comparison
        dense_faster = lat["dense"] * LATENCY_MARGIN <= lat["sparse"]
        both = (f"sparse {lat['sparse']:.4g} ms ({size['sparse']:,} bytes, "
                f"{res['sparse']}), dense encoding {lat['dense']:.4g} ms "
                f"({size['dense']:,} bytes, {res['dense']})")
        mode = quantize or "float32"
        if optimize_for == "latency":
            if dense_faster:
                encoding, data = "dense", datas["dense"]
                choice = (f"wrote the dense encoding: it runs faster ({both}; {mode}, "
                          "batch-1 median, one thread)")
            else:
                choice = (f"wrote the sparse encoding: the dense one is not at least "
                          f"{LATENCY_MARGIN - 1:.0%} faster ({both}; {mode})")
            print(f"to_tflite(optimize_for='latency') {path}: {choice}.")
        else:
            choice = f"wrote the sparse encoding (optimize_for='size'; {both}; {mode})"
            if dense_faster:
                warnings.warn(
                    f"to_tflite {path}: the sparse {mode} file is slower than the dense "
                    f"encoding of the same weights: {both}. Pass optimize_for='latency' "
                    "(CLI: --optimize-for latency) to write the faster one, or "
                    "sparse=False.", SparseSlowerWarning, stacklevel=2)
    # Nothing sparse enough for the converter to encode: known already when the
    # encodings were compared (no dense twin was made), else read from the file.
    if encoding == "sparse" and comparison is None and (compare or not _has_sparse_tensors(data)):
        encoding = "dense"
    result = dict(max_abs_diff=None, top1_agreement=None, resolver=None)
    with _common.atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
        if verify:
            result = _verify(model, tmp, path, quantize, verify_inputs, tolerance)
    return TFLiteExport(
        path=path, size=len(data), quantize=quantize, verified=bool(verify), **result,
        encoding=encoding, optimize_for=optimize_for,
        latency_ms=None if comparison is None else comparison[0],
        sizes=None if comparison is None else comparison[1],
        resolvers=None if comparison is None else comparison[2], choice=choice,
        subprocess=timing)


def _compare_encodings(sparse_data, dense_data, x, rounds=3, budget_s=0.15):
    """({"sparse": ms, "dense": ms}, sizes, resolvers): batch-``x`` latency of both files.

    Both are timed with `tflite_latency` in alternating rounds (so a burst of
    load on a shared machine hits both); each file's time is its best round
    median. Each round runs about ``budget_s`` seconds per file.
    """
    import tempfile

    from keras_gap.export.runtime import tflite_latency

    with tempfile.TemporaryDirectory(prefix="keras_gap_latency_") as tmp:
        paths = {}
        for key, data in (("sparse", sparse_data), ("dense", dense_data)):
            paths[key] = os.path.join(tmp, f"{key}.tflite")
            with open(paths[key], "wb") as f:
                f.write(data)
        probe = {k: tflite_latency(p, x, runs=3, warmup=1) for k, p in paths.items()}
        runs = {k: int(min(500, max(10, budget_s * 1e3 / max(v["median_ms"], 1e-3))))
                for k, v in probe.items()}
        best, resolvers = {}, {}
        for _ in range(rounds):
            for key, p in paths.items():
                stats = tflite_latency(p, x, runs=runs[key], warmup=max(2, runs[key] // 10))
                best[key] = min(best.get(key, float("inf")), stats["median_ms"])
                resolvers[key] = stats["resolver"]
    sizes = {"sparse": len(sparse_data), "dense": len(dense_data)}
    return best, sizes, resolvers


def _verify(model, tmp, path, quantize, inputs, tolerance):
    from keras_gap.export.runtime import run_tflite

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
