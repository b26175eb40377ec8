"""Smoke tests of the growing-networks example and benchmark (small slices, subprocess)."""

import json

import pytest

from script_testlib import needs_fashion_mnist, run_script as run

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


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
