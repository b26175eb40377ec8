"""Smoke test of benchmarks/gap_vs_baselines.py (quick mode, subprocess)."""

import json

import pytest

from script_testlib import needs_fashion_mnist, run_script

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


def test_gap_vs_baselines_quick(tmp_path):
    run_script("benchmarks/gap_vs_baselines.py", "--quick", "--output_dir", tmp_path,
                  "--variants", "gmp,gmp+global,cgap+fresh+hot,cgap+global+fresh+hot,pgap")
    result = json.loads((tmp_path / "gap_vs_baselines_quick.json").read_text())
    runs = {r["variant"]: r for r in result["runs"]}
    assert set(runs) == {"dense", "gmp", "gmp+global", "cgap+fresh+hot",
                         "cgap+global+fresh+hot", "pgap"}
    for variant, r in runs.items():
        if variant != "dense":
            assert r["sparsity_prunable"] == pytest.approx(0.9, abs=1e-3), variant
        assert 0.0 < r["train_macs_ratio"] <= 1.0 + 1e-6
    # Uniform variants prune every layer to the target; global ones do not.
    assert all(s == pytest.approx(0.9, abs=1e-3) for s in runs["gmp"]["layer_sparsity"].values())
    for variant in ("gmp+global", "cgap+global+fresh+hot"):
        spread = runs[variant]["layer_sparsity"].values()
        assert max(spread) - min(spread) > 0.05, (variant, spread)
    summary = {s["variant"]: s for s in result["summary"]}
    assert summary["dense"]["inference_macs_ratio"] == pytest.approx(1.0)
    assert summary["gmp"]["inference_macs_ratio"] < 0.2
    md = (tmp_path / "gap_vs_baselines_quick.md").read_text()
    assert "inference MACs (non-zero) vs dense" in md and "| gmp+global | 90% |" in md
    assert (tmp_path / "gap_vs_baselines_quick.png").stat().st_size > 0
