"""Runs the repo's example and benchmark scripts in a subprocess (smoke tests)."""

import os
import pathlib
import subprocess
import sys

import pytest

from keras_gap import datasets

ROOT = pathlib.Path(__file__).resolve().parents[1]

needs_fashion_mnist = pytest.mark.skipif(
    not (pathlib.Path(datasets.FASHION_MNIST_DEB_DIR) / "train-images-idx3-ubyte.gz").is_file()
    and not (datasets.default_data_dir() / "fashion_mnist").is_dir(),
    reason="Fashion-MNIST missing: bash tests/install_deps.sh")


def run_script(script, *args, timeout=900):
    """Runs ``script`` (a path relative to the repo root) from its own folder
    on the TensorFlow backend; fails the test with its output on a non-zero
    exit. Returns its stdout."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2",
               KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)],
                          cwd=ROOT / os.path.dirname(script), env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{script} exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return proc.stdout
