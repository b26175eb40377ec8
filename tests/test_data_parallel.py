"""Pruning under data-parallel training on 2 logical CPU devices.

TensorFlow: `tf.distribute.MirroredStrategy`; JAX: `keras.distribution.DataParallel`.
Device configuration must precede TensorFlow / JAX initialization, so every
backend's cases run in one fresh subprocess (subprocess_scripts/data_parallel.py).
After every training step: every model variable (masks, step counters, weights,
growing gates' scores and samples) and FGGP's recorded gradients identical on
every replica, masked entries exactly zero;
at the end: equal to single-device training from the same start within float
tolerance.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)
SCRIPT = os.path.join(HERE, "subprocess_scripts", "data_parallel.py")
CASES = ["unstructured", "block", "n_by_m", "global", "fggp", "channel",
         "gap_cgap", "gap_pgap", "gap_channel", "growing"]
# The default suite runs these on TensorFlow (one subprocess, ~30 s) and "unstructured" on JAX;
# --slow runs every case on both backends. (PyTorch: Keras' distribution API has no torch
# data parallelism.)
SMOKE = ["unstructured", "fggp", "gap_pgap"]
_RESULTS = {}


def _results(backend, cases):
    key = (backend, tuple(cases))
    if key not in _RESULTS:
        if importlib.util.find_spec(backend) is None:
            pytest.skip(f"{backend} is not installed")
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        out = subprocess.run([sys.executable, SCRIPT, *cases], capture_output=True,
                             text=True, env=env, timeout=900)
        rows = [json.loads(line[len("RESULT "):]) for line in out.stdout.splitlines()
                if line.startswith("RESULT ")]
        if out.returncode != 0 or not rows:
            pytest.fail(f"data_parallel.py failed on {backend}:\n{out.stderr[-4000:]}")
        _RESULTS[key] = {r["case"]: r for r in rows}
    return _RESULTS[key]


@pytest.mark.parametrize("case", SMOKE)
def test_pruning_under_mirrored_strategy(case):
    _check(_results("tensorflow", SMOKE).get(case), case)


def test_pruning_under_jax_data_parallel():
    """One replica-identity case on JAX (keras.distribution.DataParallel) in the default run."""
    _check(_results("jax", ["unstructured"]).get("unstructured"), "unstructured")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
@pytest.mark.parametrize("case", CASES)
def test_pruning_under_data_parallel(backend, case):
    _check(_results(backend, CASES).get(case), case)


def _check(result, case):
    assert result is not None, f"no result for {case}"
    assert result["ok"], result.get("traceback") or result["error"]
    assert result["replicas"] == 2, "the variables were not replicated on 2 devices"
    assert result["steps_checked"] == 6
    assert result["max_replica_diff"] == 0.0      # masks, counters, weights agree
    assert result["masked_nonzero"] == 0          # masked entries exactly zero
    assert set(result["steps"]) == {6}            # every wrapper (growing: optimizer) at 6
    assert result["max_diff_vs_single"] < 1e-5    # same as one device
    if case == "growing":                         # some channels sampled off (random)
        assert 0 < result["sparsity"] < 1
    else:
        assert result["sparsity"] > 0.45
