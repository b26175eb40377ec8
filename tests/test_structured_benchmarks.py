"""Smoke tests of the structured-sparsity benchmarks (a slice / quick mode, subprocess)."""

import json

import pytest

from script_testlib import needs_fashion_mnist, run_script

pytestmark = pytest.mark.slow


def run_benchmark(name, *args, timeout=900):
    return run_script(f"benchmarks/{name}", *args, timeout=timeout)


def test_prunability_slice_materializes_with_equal_outputs(tmp_path):
    stdout = run_benchmark("prunability.py", "--models", "MobileNetV2,DenseNet121,ResNet50",
                           "--input_size", "32", "--output_dir", tmp_path)
    assert "3 of 3 models materialize with equal outputs" in stdout
    result = json.loads((tmp_path / "prunability.json").read_text())
    for row in result["rows"]:
        assert row["status"] == "equal", row
        assert row["max_abs_diff"] <= 1e-5 * max(1.0, row["max_abs_output"])
        assert row["removable_groups"] > 0 and row["channels_removed"] > 0
        assert row["params_after"] < 0.8 * row["params_before"]
        assert row["macs_after"] < 0.8 * row["macs_before"]
    assert "| DenseNet121 | equal |" in (tmp_path / "prunability.md").read_text()


@needs_fashion_mnist
def test_structured_benchmark_quick_mode(tmp_path):
    run_benchmark("structured.py", "--quick", "--output_dir", tmp_path)
    result = json.loads((tmp_path / "structured.json").read_text())
    summary = {(e["method"], e["sparsity"]): e for e in result["summary"]}
    assert set(summary) == {("dense", 0.0), ("gmp", 0.5), ("cgap", 0.5),
                            ("gmp", 0.75), ("cgap", 0.75)}
    dense = summary[("dense", 0.0)]
    assert dense["train_macs_ratio"] == 1.0 and dense["macs_reduction"] == 1.0
    for s in (0.5, 0.75):
        for method in ("gmp", "cgap"):
            e = summary[(method, s)]
            # Channels really removed (a 4-step run need not reach the final sparsity).
            assert e["macs_reduction"] > 2.0 and e["params"] < 0.5 * dense["params"]
            assert e["train_macs_ratio"] < 1.0
            assert e["tflite_b1_speedup"] > 0 and e["latency"]["tflite_b1"]["median_ms"] > 0
    assert "| cgap | 75% |" in (tmp_path / "structured.md").read_text()


def test_heads_benchmark_quick_mode_removes_heads_and_units(tmp_path):
    run_benchmark("heads.py", "--quick", "--output_dir", tmp_path)
    result = json.loads((tmp_path / "heads.json").read_text())
    rows = {(r["method"], r["sparsity"]): r for r in result["rows"]}
    assert set(rows) == {("dense", 0.0), ("gmp", 0.25), ("cgap", 0.25), ("gmp", 0.5),
                         ("cgap", 0.5)}
    assert rows[("dense", 0.0)]["heads"] == [4, 4] and rows[("dense", 0.0)]["units"] == [64, 64]
    for method in ("gmp", "cgap"):   # --quick: 4 heads of 8, FFN 64 per block
        assert rows[(method, 0.25)]["heads"] == [3, 3]
        assert rows[(method, 0.5)]["heads"] == [2, 2] and rows[(method, 0.5)]["units"] == [32, 32]
        assert rows[(method, 0.5)]["kept"] == []
    summary = {(e["method"], e["sparsity"]): e for e in result["summary"]}
    assert summary[("cgap", 0.5)]["macs_reduction"] > 1.8
    assert summary[("cgap", 0.5)]["latency"]["tflite_b1"]["median_ms"] > 0
    assert "| cgap | 50% | 2 / 32 |" in (tmp_path / "heads.md").read_text()
