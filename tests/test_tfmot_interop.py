"""keras-gap and tf-mot: GaP schedules drive tf-mot; no tf-mot side effects here."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest


HERE = os.path.dirname(__file__)
needs_tfmot = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_model_optimization") is None
    or importlib.util.find_spec("tf_keras") is None,
    reason="tensorflow-model-optimization and tf_keras are not installed "
           "(pip install -e '.[test]')")


def test_importing_keras_gap_does_not_import_tfmot():
    code = ("import os, sys, keras_gap; "
            "print('tensorflow_model_optimization' in sys.modules, "
            "os.environ.get('TF_USE_LEGACY_KERAS'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert out.stdout.split()[-2:] == ["False", "None"]


@pytest.mark.tfmot
@needs_tfmot
def test_tfmot_trains_with_gap_schedule():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, os.path.join(HERE, "subprocess_scripts", "tfmot_gap.py")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    trace = result["trace"]
    assert len(trace) == 20
    partition = {"d0": 0, "d1": 0, "d2": 1, "d3": 1}
    for step, row in enumerate(trace):
        j = step // 5
        grown = j % 2 if j < 2 else None
        for name, sparsity in row.items():
            if partition[name] == grown:
                assert sparsity < 0.05, (step, name, sparsity)   # dense (grown)
            else:
                assert sparsity == pytest.approx(0.8, abs=0.02), (step, name, sparsity)
    assert result["config"]["class_name"] == "GaPPruningSchedule"


@pytest.mark.tfmot
@needs_tfmot
def test_tfmot_schedule_objects_accepted_without_leaking_env():
    code = (
        "import os, json\n"
        "import tensorflow_model_optimization as tfmot\n"
        "import keras_gap as kg\n"
        "s = kg.schedules.get_schedule(tfmot.sparsity.keras.PolynomialDecay(0.1, 0.7, 0, 100))\n"
        "print(json.dumps([type(s).__name__, s(100)[1]]))\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    name, sparsity = json.loads(out.stdout.strip().splitlines()[-1])
    assert name == "PolynomialDecay" and sparsity == pytest.approx(0.7)
    assert "TF_USE_LEGACY_KERAS" not in os.environ
