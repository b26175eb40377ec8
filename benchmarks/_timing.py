"""Latency measurements shared by the benchmarks (TFLite interpreter, Keras)."""

import statistics
import time

import numpy as np


def _summary(times, runs):
    q = np.percentile(times, [10, 90])
    return {"median_ms": statistics.median(times), "p10_ms": float(q[0]),
            "p90_ms": float(q[1]), "runs": runs}


def time_tflite(path, x, runs, resolver="auto"):
    """Median / p10 / p90 milliseconds of `invoke` with one thread."""
    from keras_gap.export import tflite_latency
    return tflite_latency(path, x, runs=runs, num_threads=1, resolver=resolver)


def time_keras_predict(model, x, runs):
    """Median / p10 / p90 milliseconds of ``model.predict_on_batch(x)`` (warm)."""
    for _ in range(max(3, runs // 10)):
        model.predict_on_batch(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.predict_on_batch(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return _summary(times, runs)


def latency_set(model, x1, x64, workdir, name, runs):
    """Keras predict at batch 1 and 64 and TFLite float32 (one thread) at batch 1 of
    ``model``, exported to ``workdir/name.tflite``."""
    import os
    from keras_gap import export
    path = os.path.join(workdir, name + ".tflite")
    export.to_tflite(model, path, sparse=False, sample_inputs=x64[:8])
    return {"keras_b1": time_keras_predict(model, x1, runs),
            "keras_b64": time_keras_predict(model, x64, max(runs // 10, 5)),
            "tflite_b1": time_tflite(path, x1, runs)}
