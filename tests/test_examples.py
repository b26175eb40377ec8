"""Smoke tests: every example runs as a subprocess on a small slice of real data.

Each run uses the default TFDS cache (built once by tests/test_datasets.py or
the first example). The demo runs in --fast mode (the CI form of the README's
main-job command) and its exported TFLite models must agree with Keras.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import keras_gap as kg
from keras_gap import datasets

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.skipif(
    not (pathlib.Path(datasets.FASHION_MNIST_DEB_DIR) / "train-images-idx3-ubyte.gz").is_file()
    and not (datasets.default_data_dir() / "fashion_mnist").is_dir(),
    reason="Fashion-MNIST missing: bash tests/install_deps.sh")


def _has_export():
    try:
        import keras_gap.export  # noqa: F401
        return hasattr(keras_gap.export, "to_tflite")
    except ImportError:
        return False


def run_example(name, *args, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{name} {' '.join(args)} exited with {proc.returncode}:\n"
                    f"--- stdout (tail) ---\n{proc.stdout[-4000:]}\n"
                    f"--- stderr (tail) ---\n{proc.stderr[-4000:]}")
    return proc.stdout


def test_quickstart_small_slice(tmp_path):
    out = tmp_path / "quickstart"
    stdout = run_example("quickstart.py", "--limit", "1000", "--epochs", "2",
                         "--sparsity", "0.75", f"--output_dir={out}")
    assert (out / "pruned.keras").is_file()
    import importlib.util
    if importlib.util.find_spec("tensorboard") is not None:
        events = list((out / "logs").rglob("events.out.tfevents.*"))
        assert events, "PruningSummaries wrote no TensorBoard event file"
    else:
        assert "PruningSummaries skipped: TensorBoard is not installed" in stdout
    assert f"output folder: {out}" in stdout
    total = [line for line in stdout.splitlines() if line.startswith("TOTAL")]
    assert total and total[-1].split()[-1] == "75.00%", stdout[-2000:]

    import keras
    import numpy as np
    model = keras.models.load_model(out / "pruned.keras")  # plain Keras, no custom objects
    report = kg.sparsity_report(model)
    assert abs(report.sparsity - 0.75) < 0.01
    x, _ = datasets.load_numpy("fashion_mnist", "test", limit=8)
    assert model.predict(x[..., None].astype(np.float32), verbose=0).shape == (8, 10)


@pytest.mark.skipif(not hasattr(kg, "prune_gap"),
                    reason="keras_gap.prune_gap is not available yet (GaP not merged)")
@pytest.mark.skipif(not _has_export(),
                    reason="keras_gap.export.to_tflite is not available yet")
def test_demo_fast_mode(tmp_path):
    out = tmp_path / "demo"
    stdout = run_example("demo.py", "--fast", f"--output_dir={out}")
    assert str(out) in stdout
    for name in ("results.md", "results.json", "results.png", "dense.keras", "cgap.keras",
                 "dense_float32.tflite", "dense_int8.tflite", "cgap_float32.tflite",
                 "cgap_int8.tflite"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = json.loads((out / "results.json").read_text())
    dense, sparse = results["models"]
    assert dense["name"] == "dense" and sparse["name"] == "cgap"
    assert abs(sparse["prunable_sparsity"] - 0.9) < 0.005
    assert sparse["nonzero"] < 0.2 * dense["nonzero"]
    # The GaP partition was logged every epoch; -1 = final fine-tuning.
    assert sparse["history"]["gap_partition"][0] == 0
    assert sparse["history"]["gap_partition"][-1] == -1
    for model in (dense, sparse):
        float_row, int8_row = model["tflite"]
        assert float_row["dtype"] == "float32" and int8_row["dtype"] == "int8"
        # Exported models agree with Keras on the same test images.
        assert abs(float_row["tflite_accuracy"] - model["keras_accuracy"]) <= 0.005
        assert abs(int8_row["tflite_accuracy"] - model["keras_accuracy"]) <= 0.05
        assert model["keras_accuracy"] > 0.2  # learned something (10 classes)
        for row in model["tflite"]:
            assert row["latency_ms"] > 0 and 0 < row["gzip_bytes"] <= row["size_bytes"]
    assert sparse["tflite"][0]["sparse_tensors"] > 0
    assert sparse["tflite"][0]["gzip_bytes"] < 0.5 * dense["tflite"][0]["gzip_bytes"]

    table = (out / "results.md").read_text()
    assert "| model | Keras acc |" in table
    assert table.count("\n| dense |") == 2 and table.count("\n| C-GaP 90% |") == 2
