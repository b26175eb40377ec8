"""Smoke test of benchmarks/backend_export.py: the same weights exported from two
backends give byte-identical TFLite files (quick mode: the CNN only)."""

import json

from script_testlib import run_script


def test_backend_export_quick_gives_the_same_file_from_jax(tmp_path):
    stdout = run_script("benchmarks/backend_export.py", "--quick", "--backends",
                        "tensorflow,jax", "--runs", "5", "--output_dir", tmp_path,
                        timeout=600)
    assert "Worst non-TensorFlow ratio" in stdout
    result = json.loads((tmp_path / "backend_export.json").read_text())
    rows = {(r["backend"], r["quantize"]): r for r in result["rows"]}
    assert set(rows) == {(b, q) for b in ("tensorflow", "jax") for q in ("float32", "int8")}
    for q in ("float32", "int8"):
        tf_row, jax_row = rows[("tensorflow", q)], rows[("jax", q)]
        assert jax_row["sha1"] == tf_row["sha1"]  # the very same graph and weights
        assert jax_row["subprocess"]["backend"] == "jax" and tf_row["subprocess"] is None
        assert jax_row["latency_ms"] > 0 and tf_row["latency_ms"] > 0
    assert rows[("jax", "float32")]["max_abs_diff"] < 1e-4
    assert result["provenance"]["git"] and "| cnn | int8 | jax |" in (
        tmp_path / "backend_export.md").read_text()
