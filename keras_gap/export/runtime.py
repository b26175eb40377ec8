"""`run_tflite`: run a ``.tflite`` file on a numpy batch with the right op resolver.

The interpreter comes from ``ai-edge-litert`` (LiteRT) when it is installed,
else from ``tf.lite``. Which op resolver is correct depends on the model
(measured on TF 2.21 / LiteRT 2.3, ../shared/REFERENCES.md section 5):

* Float models (dense, random-sparse with DENSIFY, or 1x4-block sparse FC)
  run correctly under the default resolver (built-in kernels + XNNPACK).
* int8 models with sparse-encoded weights fail to allocate under XNNPACK when
  they contain DENSIFY ops, and int8 1x16-block FC weights give silently
  wrong outputs. Both run correctly with
  ``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``, which is where the
  native sparse int8 FULLY_CONNECTED kernel runs.

``resolver="auto"`` picks BUILTIN_WITHOUT_DEFAULT_DELEGATES for any model
with a sparse-encoded integer weight (or DENSIFY next to integer weights) and
the default resolver otherwise; if allocation still fails under the default
resolver it retries without the delegate. The result says which it used.
"""

import dataclasses
import os
import statistics
import time
import warnings

import numpy as np

from keras_gap.export._common import as_input_list

AUTO = "auto"
BUILTIN = "BUILTIN"
NO_DELEGATES = "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
_RESOLVERS = (AUTO, BUILTIN, NO_DELEGATES)
_RUNTIMES = ("auto", "litert", "tensorflow")


@dataclasses.dataclass(frozen=True)
class TFLiteOutput:
    """Outputs of `run_tflite`.

    Attributes:
        outputs: one numpy array (single-output model) or a list of arrays.
        resolver: the op resolver used: "BUILTIN" (default kernels with the
            XNNPACK delegate) or "BUILTIN_WITHOUT_DEFAULT_DELEGATES".
        runtime: "litert" (ai-edge-litert) or "tensorflow" (tf.lite).
        reason: why that resolver was chosen.
    """

    outputs: object
    resolver: str
    runtime: str
    reason: str


def _interpreter_module(runtime="auto"):
    if runtime not in _RUNTIMES:
        raise ValueError(f"`runtime` must be one of {_RUNTIMES}; received {runtime!r}.")
    if runtime in ("auto", "litert"):
        try:
            from ai_edge_litert import interpreter as litert
            return litert, "litert"
        except ImportError:
            if runtime == "litert":
                raise ImportError(
                    "runtime='litert' needs the `ai-edge-litert` package: "
                    "pip install ai-edge-litert (or keras-gap[litert]).") from None
    import tensorflow as tf
    return tf.lite.experimental, "tensorflow"


def _interpreter_class(module, name):
    if name == "litert":
        return module.Interpreter, module.OpResolverType
    import tensorflow as tf
    return tf.lite.Interpreter, tf.lite.experimental.OpResolverType


def choose_resolver(model):
    """The op resolver under which a ``.tflite`` model computes correctly.

    Args:
        model: path to a ``.tflite`` file, its bytes, or a `TFLiteInspection`.

    Returns:
        (resolver_name, reason) with resolver_name "BUILTIN" or
        "BUILTIN_WITHOUT_DEFAULT_DELEGATES".

    Example:
        >>> choose_resolver("model_int8.tflite")[0]
        'BUILTIN_WITHOUT_DEFAULT_DELEGATES'
    """
    from keras_gap.export.inspection import TFLiteInspection, inspect_tflite
    info = model if isinstance(model, TFLiteInspection) else inspect_tflite(model)
    int_types = ("INT8", "UINT8", "INT16")
    sparse_int = [t for t in info.tensors if t.sparse and t.dtype in int_types]
    if sparse_int:
        return NO_DELEGATES, (
            f"{len(sparse_int)} sparse-encoded integer weight tensor(s): XNNPACK "
            "fails to prepare DENSIFY or computes wrong outputs for int8 block-"
            "sparse FULLY_CONNECTED")
    if info.densify_ops and any(t.dtype in int_types for t in info.tensors):
        return NO_DELEGATES, "DENSIFY ops in an integer model (XNNPACK fails to prepare)"
    return BUILTIN, "float or dense model: default kernels with XNNPACK are correct"


def make_interpreter(path, resolver=AUTO, num_threads=None, runtime="auto"):
    """Creates an interpreter for ``path`` under the chosen op resolver.

    Args:
        path: ``.tflite`` file.
        resolver: "auto", "BUILTIN" or "BUILTIN_WITHOUT_DEFAULT_DELEGATES".
        num_threads: CPU threads (None: the runtime's default).
        runtime: "auto" (LiteRT if installed, else tf.lite), "litert",
            "tensorflow".

    Returns:
        (interpreter, resolver_name, runtime_name, reason); the interpreter
        is not yet allocated.
    """
    path = os.fspath(path)
    if resolver not in _RESOLVERS:
        raise ValueError(f"`resolver` must be one of {_RESOLVERS}; received {resolver!r}.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path!r}.")
    module, runtime_name = _interpreter_module(runtime)
    cls, resolver_enum = _interpreter_class(module, runtime_name)
    reason = "requested"
    if resolver == AUTO:
        resolver, reason = choose_resolver(path)
    enum_value = (resolver_enum.BUILTIN if resolver == BUILTIN
                  else resolver_enum.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    kwargs = {"model_path": path, "experimental_op_resolver_type": enum_value}
    if num_threads is not None:
        kwargs["num_threads"] = int(num_threads)
    with warnings.catch_warnings():
        # tf.lite.Interpreter warns that it is deprecated in favour of LiteRT.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = cls(**kwargs)
    return interpreter, resolver, runtime_name, reason


def _quantize(x, detail):
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer) and np.issubdtype(x.dtype, np.floating):
        scale, zero = detail["quantization"]
        if scale:
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype, copy=False)


def _dequantize(y, detail):
    scale, zero = detail["quantization"]
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype(np.float32) - zero) * scale
    return y


def _invoke(interpreter, inputs):
    details = interpreter.get_input_details()
    if len(details) != len(inputs):
        raise ValueError(
            f"The model has {len(details)} input(s); received {len(inputs)} array(s).")
    for detail, x in zip(details, inputs):
        if tuple(detail["shape"]) != tuple(x.shape):
            interpreter.resize_tensor_input(detail["index"], list(x.shape), strict=False)
    interpreter.allocate_tensors()
    for detail, x in zip(interpreter.get_input_details(), inputs):
        interpreter.set_tensor(detail["index"], _quantize(x, detail))
    interpreter.invoke()
    return [_dequantize(interpreter.get_tensor(d["index"]).copy(), d)
            for d in interpreter.get_output_details()]


def run_tflite(path, x, resolver=AUTO, num_threads=None, runtime="auto"):
    """Runs a ``.tflite`` model on a numpy batch.

    Float inputs are quantized for models with integer inputs, and integer
    outputs are dequantized, so a float model and its int8 version are called
    the same way.

    Args:
        path: ``.tflite`` file.
        x: a numpy batch, or a list / dict of batches for multi-input models
            (dicts in the model's input order).
        resolver: "auto" (default: picks the resolver under which the model
            is correct, see `choose_resolver`), "BUILTIN" or
            "BUILTIN_WITHOUT_DEFAULT_DELEGATES".
        num_threads: CPU threads; None for the runtime's default.
        runtime: "auto" (ai-edge-litert if installed, else tf.lite),
            "litert" or "tensorflow".

    Returns:
        A `TFLiteOutput` with ``.outputs`` (array, or list for several outputs),
        ``.resolver``, ``.runtime`` and ``.reason``.

    Example:
        >>> out = kg.export.run_tflite("model.tflite", x_test[:64])
        >>> out.outputs.shape, out.resolver
        ((64, 10), 'BUILTIN')
    """
    inputs = [np.asarray(v) for v in as_input_list(x)]
    interpreter, used, runtime_name, reason = make_interpreter(
        path, resolver, num_threads, runtime)
    try:
        outputs = _invoke(interpreter, inputs)
    except RuntimeError as e:
        if used != BUILTIN or resolver != AUTO:
            raise
        # XNNPACK refused to prepare the graph: built-in kernels are correct.
        interpreter, used, runtime_name, _ = make_interpreter(
            path, NO_DELEGATES, num_threads, runtime)
        reason = f"default resolver failed to prepare ({str(e).splitlines()[0]})"
        outputs = _invoke(interpreter, inputs)
    return TFLiteOutput(outputs=outputs[0] if len(outputs) == 1 else outputs,
                        resolver=used, runtime=runtime_name, reason=reason)


def tflite_latency(path, x=None, runs=200, warmup=None, num_threads=1, resolver=AUTO,
                   runtime="auto"):
    """Wall time of one interpreter invocation of a ``.tflite`` file.

    The one latency measurement keras-gap's demo, examples and benchmarks use:
    the interpreter is created as `run_tflite` would (resolver chosen for the
    model), resized to ``x``'s batch, warmed up, then ``runs`` invocations on
    the same input are timed one by one.

    Args:
        path: ``.tflite`` file.
        x: input array (its first axis is the batch); default: zeros of the
            model's input shape at batch 1.
        runs: timed invocations (>= 1).
        warmup: untimed invocations first; default ``max(3, runs // 10)``.
        num_threads: interpreter threads (1: what a phone core or a latency
            budget sees).
        resolver: "auto", "BUILTIN" or "BUILTIN_WITHOUT_DEFAULT_DELEGATES".
        runtime: "auto", "litert" or "tensorflow".

    Returns:
        dict with ``median_ms``, ``p10_ms``, ``p90_ms``, ``runs``, ``batch``,
        ``resolver`` and ``runtime``.

    Example:
        >>> kg.export.tflite_latency("model.tflite", x_test[:1])["median_ms"]
    """
    if int(runs) < 1:
        raise ValueError(f"`runs` must be >= 1; received {runs!r}.")
    interpreter, resolver, runtime_name, _ = make_interpreter(
        path, resolver=resolver, num_threads=num_threads, runtime=runtime)
    detail = interpreter.get_input_details()[0]
    if x is None:
        x = np.zeros([1] + list(detail["shape"][1:]), dtype=detail["dtype"])
    x = np.asarray(x)
    interpreter.resize_tensor_input(detail["index"], list(x.shape), strict=False)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], _quantize(x, detail))
    for _ in range(max(3, int(runs) // 10) if warmup is None else int(warmup)):
        interpreter.invoke()
    times = []
    for _ in range(int(runs)):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1e3)
    p10, p90 = np.percentile(times, [10, 90])
    return {"median_ms": statistics.median(times), "p10_ms": float(p10),
            "p90_ms": float(p90), "runs": int(runs), "batch": int(x.shape[0]),
            "resolver": resolver, "runtime": runtime_name}
