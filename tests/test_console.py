"""A readable console (issue 14): integer and fraction logs in Keras' progress bar, the
GaP progress bar's sparsity of the sparse part, and no third-party log lines from the
examples unless --verbose (keras_gap.console)."""

import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_gap as kg
from keras_gap import console, datasets

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.core
def test_progbar_prints_log_ints_and_fractions(capsys):
    bar = keras.utils.Progbar(target=2, stateless_metrics=set())
    bar.update(1, [("gap_partition", console.LogInt(0)), ("sparsity", console.LogFraction(0.0)),
                   ("plain", 0)])
    bar.update(2, [("gap_partition", console.LogInt(-1)),
                   ("sparsity", console.LogFraction(0.9)), ("plain", 0)])
    out = capsys.readouterr().out
    assert "gap_partition: 0 " in out and "gap_partition: -1 " in out
    assert "sparsity: 0.0000 " in out and "sparsity: 0.9000 " in out
    assert "plain: 0.0000e+00" in out  # what Keras does to a plain 0 (why LogInt exists)
    assert console.LogInt(3) + 1 == 4 and float(console.LogFraction(0.25)) == 0.25


@pytest.mark.core
def test_gap_progress_bar_shows_partition_and_sparse_part(capsys):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64, name="a"),
                              keras.layers.Dense(8, name="b"), keras.layers.Dense(4, name="c")])
    pruned = kg.prune_gap(model, target_sparsity=0.9, num_partitions=3, steps_per_step=4,
                          partitioning="sequential")
    pruned.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    history = pruned.fit(rng.normal(size=(16, 8)), rng.normal(size=(16, 4)), epochs=1,
                         batch_size=4, verbose=1, callbacks=[kg.GaPCallback(verbose=0)])
    out = capsys.readouterr().out
    assert "gap_partition: 0 " in out, out[-1500:]
    assert "e+00" not in out, out[-1500:]
    # Partition 0 (the 8x64 kernel, the largest) is grown: overall sparsity is far below
    # the target, the sparse part is at it.
    assert history.history["gap_partition"] == [0]
    assert history.history["sparsity"][0] < 0.5
    assert history.history["sparse_part_sparsity"][0] == pytest.approx(0.9, abs=0.01)
    assert re.search(r"sparse_part_sparsity: 0\.9\d{3}", out), out[-1500:]


def _run(args, **env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_GAP_QUIET")}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(base, KERAS_BACKEND="tensorflow", **env), timeout=600)


_TF_LOG = re.compile(r"^[IWE]\d{4} |absl::InitializeLog|TensorFlow Lite|Warning: ")


def test_import_keras_gap_leaves_the_process_untouched():
    code = ("import os; before = os.readlink('/proc/self/fd/2'); import keras_gap; "
            "print(keras_gap.console.is_quiet(), before == os.readlink('/proc/self/fd/2'))")
    plain = _run(["-c", code])
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.split() == ["False", "True"]  # stderr is still the caller's
    assert _TF_LOG.search(plain.stderr), plain.stderr  # TensorFlow logs as it always does
    opted_in = _run(["-c", code], KERAS_GAP_QUIET="1")
    assert opted_in.stdout.split() == ["True", "False"]
    assert opted_in.stderr == "", opted_in.stderr  # TensorFlow's import-time lines too


@pytest.mark.skipif(not (pathlib.Path(datasets.FASHION_MNIST_DEB_DIR)
                         / "train-images-idx3-ubyte.gz").is_file()
                    and not (datasets.default_data_dir() / "fashion_mnist").is_dir(),
                    reason="Fashion-MNIST missing: bash tests/install_deps.sh")
def test_example_prints_no_third_party_lines(tmp_path):
    args = ["examples/quickstart.py", "--limit", "256", "--epochs", "1",
            f"--output_dir={tmp_path}"]
    quiet = _run(args)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "output folder:" in quiet.stdout
    lines = [line for line in quiet.stderr.splitlines() if line.strip()]
    assert lines == [], "third-party lines on stderr:\n" + "\n".join(lines[:20])
    verbose = _run(args + ["--verbose"])
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    shown = [line for line in verbose.stderr.splitlines() if _TF_LOG.search(line)]
    assert shown, verbose.stderr[-3000:]  # the count above can fail
