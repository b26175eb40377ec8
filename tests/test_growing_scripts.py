"""Smoke tests of the growing-networks example and benchmark (small slices, subprocess)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from keras_gap import datasets

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (pathlib.Path(datasets.FASHION_MNIST_DEB_DIR) / "train-images-idx3-ubyte.gz").is_file()
    and not (datasets.default_data_dir() / "fashion_mnist").is_dir(),
    reason="Fashion-MNIST missing: bash tests/install_deps.sh")]


def run(script, *args, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2",
               KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)],
                          cwd=ROOT / os.path.dirname(script), env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{script} exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return proc.stdout


def test_growing_resnet_example_small_slice(tmp_path):
    stdout = run("examples/growing_resnet.py", "--limit", "256", "--test_limit", "128",
                 "--epochs", "2", "--latency_runs", "10", f"--output_dir={tmp_path}")
    assert "vs reference" in stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["finalize_max_abs_diff"] <= 1e-5
    dense, grown = results["models"]
    assert grown["macs"] < dense["macs"] and grown["params"] < dense["params"]
    assert 0 < grown["train_macs_ratio"] <= 1.0
    for key in ("flops", "flops_final", "train_flops", "channels", "blocks", "penalty"):
        assert len(results["history"][key]) == 2
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    import keras
    model = keras.models.load_model(tmp_path / "grown.keras")   # plain Keras
    assert model.count_params() == grown["params"]


def test_growing_benchmark_quick(tmp_path):
    stdout = run("benchmarks/growing.py", "--quick", "--budgets", "0.5",
                 f"--output_dir={tmp_path}")
    assert "| growing_0.5 |" in stdout
    result = json.loads((tmp_path / "growing.json").read_text())
    labels = {row["label"] for row in result["rows"]}
    assert {"dense", "growing_0.5", "cgap_unstructured_0.9"} <= labels
    assert any(label.startswith("gmp_") for label in labels)
    for entry in result["summary"]:
        assert entry["tflite_ms"] > 0 and 0 < entry["train_macs_ratio"] <= 1.0001
