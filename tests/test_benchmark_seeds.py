"""Every benchmark's seed reaches every random source, and a seed repeats.

Each benchmark runs its quick path (smaller still where a flag allows) twice in
a subprocess: run A with seeds 0 and 1, run B with seed 1 alone (pgap_parallel
has one ``--seed``: it runs three times). For every configuration the final
weights of seed 0 and seed 1 must differ (``weights``: a sha1 of every weight
of the final model, benchmarks/_common.py) and seed 1's must be the same bit
for bit in A, where it ran after seed 0 in the same process, and in B, a fresh
process; so must its accuracies.
"""

import json

import pytest

from script_testlib import needs_fashion_mnist, run_script

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


def _by_seed(rows, key):
    out = {}
    for r in rows:
        out.setdefault(key(r), {})[int(r["seed"])] = r
    return out


def check_seeds(a_rows, b_rows, key, metrics):
    a, b = _by_seed(a_rows, key), _by_seed(b_rows, key)
    assert a and set(a) == set(b), (sorted(a), sorted(b))
    for config, seeds in a.items():
        assert set(seeds) == {0, 1} and set(b[config]) == {1}, (config, seeds, b[config])
        assert seeds[0]["weights"]["sha1"] != seeds[1]["weights"]["sha1"], (
            f"{config}: seeds 0 and 1 trained the same weights")
        again = b[config][1]
        assert seeds[1]["weights"] == again["weights"], (
            f"{config}: seed 1 is not reproducible: {seeds[1]['weights']} vs "
            f"{again['weights']}")
        for m in metrics:
            assert seeds[1][m] == again[m], (config, m, seeds[1][m], again[m])


def test_gap_vs_baselines_seeds(tmp_path):
    args = ["--quick", "--variants", "gmp,cgap+fresh,pgap", "--nodense", "--train_size", "512",
            "--val_size", "256"]
    run_script("benchmarks/gap_vs_baselines.py", *args, "--seeds", "2",
               "--output_dir", tmp_path / "a")
    run_script("benchmarks/gap_vs_baselines.py", *args, "--first_seed", "1", "--seeds", "1",
               "--output_dir", tmp_path / "b")
    rows = {d: json.loads((tmp_path / d / "gap_vs_baselines_quick.json").read_text())["runs"]
            for d in "ab"}
    for r in rows["a"] + rows["b"]:
        assert r["provenance"]["flags"]["train_size"] == 512
        assert r["provenance"]["git"]["commit"]
    check_seeds(rows["a"], rows["b"], lambda r: (r["variant"], r["target"], r["epochs"]),
                ["accuracy", "val_accuracy", "layer_sparsity"])


@pytest.mark.parametrize("script,args", [
    ("structured.py", ["--sparsities", "0.5"]),
    ("heads.py", ["--sparsities", "0.5", "--limit", "96"]),
    ("growing.py", ["--budgets", "0.5", "--train_images", "192", "--test_images", "128"]),
])
def test_channel_benchmarks_seeds(tmp_path, script, args):
    name = script[:-3]
    run_script(f"benchmarks/{script}", "--quick", *args, "--seeds", "2",
               "--output_dir", tmp_path / "a")
    run_script(f"benchmarks/{script}", "--quick", *args, "--first_seed", "1", "--seeds", "1",
               "--output_dir", tmp_path / "b")
    rows = {d: json.loads((tmp_path / d / f"{name}.json").read_text())["rows"] for d in "ab"}
    key = ((lambda r: (r["method"], r["sparsity"])) if name in ("structured", "heads")
           else (lambda r: r["label"]))
    check_seeds(rows["a"], rows["b"], key, ["test_accuracy", "val_accuracy", "params"])


def test_fggp_vs_gmp_seeds(tmp_path):
    args = ["--quick", "--train_size", "1024", "--test_size", "512", "--epochs", "1"]
    run_script("benchmarks/fggp_vs_gmp.py", *args, "--seeds", "0,1", "--out_dir", tmp_path / "a")
    run_script("benchmarks/fggp_vs_gmp.py", *args, "--seeds", "1", "--out_dir", tmp_path / "b")
    rows = {d: json.loads((tmp_path / d / "fggp_vs_gmp.json").read_text())["runs"] for d in "ab"}
    check_seeds(rows["a"], rows["b"], lambda r: (r["method"], r["start"], r["target"]),
                ["test_accuracy", "per_layer_sparsity"])


def test_pgap_parallel_seeds_in_process(tmp_path):
    """In-process P-GaP only (--noray): the Ray path is seeded the same way (the
    run's seed builds the model, seeds the masks and each copy's shuffling)."""
    out = {}
    for run, seed in (("a", 0), ("b", 1), ("c", 1)):
        run_script("benchmarks/pgap_parallel.py", "--quick", "--noray", "--seed", seed,
                   "--train_limit", "512", "--test_limit", "256", "--output_dir", tmp_path / run)
        out[run] = json.loads((tmp_path / run / "pgap_parallel_in_process.json").read_text())
    a, b, c = (out[r]["in_process"] for r in "abc")
    assert a["weights"]["sha1"] != b["weights"]["sha1"]
    assert b["weights"] == c["weights"] and b["accuracy"] == c["accuracy"]
    assert out["b"]["provenance"]["flags"]["seed"] == 1
