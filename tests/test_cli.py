"""The `keras-gap` console script: report and export, round trip and bad input."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("CLI export tests need KERAS_BACKEND=tensorflow", allow_module_level=True)

import keras_gap as kg  # noqa: E402
from keras_gap import cli  # noqa: E402
from pruning_testlib import blobs  # noqa: E402

DIM = 32


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A pruned (not stripped) 90% (4,1)-block model saved as .keras + calibration."""
    root = tmp_path_factory.mktemp("cli")
    x, y = blobs(n=512, num_classes=4, dim=DIM, seed=5)
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((DIM,)),
                              keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(4)])
    pruned = kg.prune_low_magnitude(
        model, block_size=(4, 1),
        pruning_schedule=kg.ConstantSparsity(0.9, begin_step=0, frequency=4))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[kg.UpdatePruningStep()])
    pruned.save(root / "pruned.keras")
    np.save(root / "calib.npy", x[:128])
    norm = keras.Sequential([keras.Input((DIM,)), keras.layers.BatchNormalization()])
    norm.save(root / "no_prunable.keras")
    (root / "notes.keras").write_text("not a model")
    return root


def _cli(*args):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "keras_gap.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_round_trip_subprocess(files, tmp_path):
    out = _cli("export", files / "pruned.keras", "--tflite", tmp_path / "m.tflite",
               "--saved-model", tmp_path / "sm")
    assert out.returncode == 0, out.stderr
    assert "verified" in out.stdout and (tmp_path / "sm" / "saved_model.pb").exists()
    rep = _cli("report", tmp_path / "m.tflite", "--json")
    assert rep.returncode == 0, rep.stderr
    info = json.loads(rep.stdout)
    hidden = [t for t in info["tensors"] if t["shape"] == [64, DIM]]
    assert hidden and hidden[0]["sparse"] and hidden[0]["block"] == [1, 4]
    assert info["densify_ops"] == 0
    bad = _cli("report", tmp_path / "missing.keras")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        f"keras-gap: error: no such file: {tmp_path / 'missing.keras'}")


@pytest.mark.skipif(shutil.which("keras-gap") is None,
                    reason="console script not installed (pip install -e .)")
def test_console_script_help():
    out = subprocess.run(["keras-gap", "export", "--help"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0
    assert "--quantize" in out.stdout and "--calibration" in out.stdout


def test_report_keras_model(files, capsys):
    assert cli.main(["report", str(files / "pruned.keras")]) == 0
    text = capsys.readouterr().out
    assert "TOTAL" in text and "2304" in text  # 32*64 + 64*4 prunable weights
    assert cli.main(["report", str(files / "pruned.keras"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"]["sparsity"] == pytest.approx(0.9, abs=0.01)


def test_export_int8_with_calibration(files, tmp_path, capsys):
    out = tmp_path / "int8.tflite"
    code = cli.main(["export", str(files / "pruned.keras"), "--tflite", str(out),
                     "--quantize", "int8", "--calibration", str(files / "calib.npy")])
    assert code == 0, capsys.readouterr().err
    assert "int8" in capsys.readouterr().out and out.exists()
    assert cli.main(["report", str(out)]) == 0
    assert "INT8" in capsys.readouterr().out


def test_export_optimize_for_latency_prints_both_encodings(files, tmp_path, capsys):
    out = tmp_path / "fast.tflite"
    code = cli.main(["export", str(files / "pruned.keras"), "--tflite", str(out),
                     "--quantize", "int8", "--calibration", str(files / "calib.npy"),
                     "--optimize-for", "latency"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    # pruned.keras has sparse weights, so both encodings were converted and timed.
    assert "encoding" in printed.out.splitlines()[0], printed.out
    assert "sparse" in printed.out and "dense encoding" in printed.out, printed.out
    assert " ms" in printed.out.splitlines()[1], printed.out
    assert out.exists()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(files / "pruned.keras"), "--tflite", str(out),
                  "--optimize-for", "speed"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("args, message", [
    (["report", "{root}/missing.keras"], "no such file"),
    (["report", "{root}/notes.keras"], "Could not load"),
    (["report", "{root}/calib.npy"], "not a Keras model file"),
    (["report", "{root}/no_prunable.keras"], "no prunable weights"),
    (["report", "{root}/notes.keras.tflite"], "no such file"),
    (["export", "{root}/pruned.keras"], "nothing to export"),
    (["export", "{root}/pruned.keras", "--tflite", "{root}/o.tflite",
      "--quantize", "int8"], "needs calibration data"),
    (["export", "{root}/pruned.keras", "--tflite", "{root}/o.tflite",
      "--quantize", "int8", "--calibration", "{root}/notes.keras"],
     "cannot read calibration data"),
])
def test_bad_input_one_line_error(files, capsys, args, message):
    code = cli.main([a.format(root=files) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("keras-gap: error:") and message in err[0]
    assert not (files / "o.tflite").exists()


def test_bad_tflite_file(files, tmp_path, capsys):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"0123456789")
    assert cli.main(["report", str(bad)]) == 2
    assert "not a TFLite model" in capsys.readouterr().err


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "m.keras", "--quantize", "int4"])
    assert e.value.code == 2


def test_report_flops_table_json_and_reference(files, capsys):
    path = str(files / "pruned.keras")
    assert cli.main(["report", "--flops", path]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["layer", "type", "params", "MACs"]
    macs = DIM * 64 + 64 * 4
    assert "TOTAL" in out and f"{macs:,}" in out
    assert cli.main(["report", "--flops", path, "--json", "--reference", path]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"]["macs"] == macs
    assert data["total"]["nonzero_macs"] < 0.15 * macs     # pruned to 90%
    assert data["reference"]["macs_ratio"] == 1.0


@pytest.mark.parametrize("args,message", [
    (["report", "--flops", "{root}/m.tflite"], "is a .tflite file"),
    (["report", "{root}/pruned.keras", "--reference", "{root}/pruned.keras"],
     "--reference applies to --flops only"),
    (["report", "--flops", "{root}/notes.keras"], ""),
])
def test_report_flops_bad_input_one_line_error(files, capsys, args, message):
    (files / "m.tflite").write_bytes(b"0123456789")
    code = cli.main([a.format(root=files) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("keras-gap: error:") and message in err[0]


# --- issue 14: shapes of user arrays, exit codes, tracebacks, a quiet console ------------

def test_calibration_with_the_wrong_shape_names_both_shapes(files, tmp_path, capsys):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((16, DIM + 3), "float32"))
    out = tmp_path / "o.tflite"
    code = cli.main(["export", str(files / "pruned.keras"), "--tflite", str(out),
                     "--quantize", "int8", "--calibration", str(wrong)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0] == (f"keras-gap: error: representative_dataset has shape (16, {DIM + 3}); "
                      f"the model expects (None, {DIM}) (first axis: batch).")
    assert not out.exists()


def test_debug_shows_the_original_exception(files, tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((16, DIM + 3), "float32"))
    with pytest.raises(ValueError, match=r"has shape \(16, 35\)"):
        cli.main(["export", str(files / "pruned.keras"), "--tflite", str(tmp_path / "o.tflite"),
                  "--quantize", "int8", "--calibration", str(wrong), "--debug"])


def test_unexpected_failure_is_one_line_exit_1(files, capsys, monkeypatch):
    def broken(args):
        raise KeyError("something inside")

    monkeypatch.setattr(cli, "_report", broken)
    assert cli.main(["report", str(files / "pruned.keras")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["keras-gap: internal error: KeyError: 'something inside' "
                   "(run again with --debug for the traceback)"]
    with pytest.raises(KeyError):
        cli.main(["report", str(files / "pruned.keras"), "--debug"])


def _plain_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_GAP_QUIET")}
    env.update(KERAS_BACKEND="tensorflow", **extra)
    return env


def _export_int8(command, files, out, *flags, env):
    return subprocess.run([*command, "export", str(files / "pruned.keras"), "--tflite",
                           str(out), "--quantize", "int8", "--calibration",
                           str(files / "calib.npy"), *flags],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(shutil.which("keras-gap") is None,
                    reason="console script not installed (pip install -e .)")
def test_console_script_prints_no_third_party_lines(files, tmp_path):
    # int8 export: TensorFlow start-up, converter and TFLite runtime all log by default.
    quiet = _export_int8(["keras-gap"], files, tmp_path / "q.tflite", env=_plain_env())
    assert quiet.returncode == 0, quiet.stderr
    assert "wrote" in quiet.stdout
    assert quiet.stderr == "", quiet.stderr
    loud = _export_int8(["keras-gap"], files, tmp_path / "v.tflite", "--verbose",
                        env=_plain_env())
    assert loud.returncode == 0, loud.stderr
    assert "port.cc" in loud.stderr or "tf_tfl_flatbuffer_helpers" in loud.stderr \
        or "XNNPACK" in loud.stderr, loud.stderr[-2000:]


@pytest.mark.slow
def test_module_cli_quiet_with_environment(files, tmp_path):
    quiet = _export_int8([sys.executable, "-m", "keras_gap.cli"], files, tmp_path / "q.tflite",
                         env=_plain_env(KERAS_GAP_QUIET="1"))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "", quiet.stderr
