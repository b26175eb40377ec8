"""Strip-and-export: TFLite (float32 / dynamic / float16 / int8), SavedModel, ONNX.

Runs on every backend (``core``): under JAX and PyTorch the exporters convert
in a TensorFlow-backend subprocess and verify against the active backend's
Keras outputs. Models are tiny and trained for a few steps on Gaussian blobs,
so the whole file runs in a couple of minutes on 2 CPU cores.
"""

import os

import keras
import numpy as np
import pytest

import keras_gap as kg
from keras_gap import export
from keras_gap import masks as mask_lib
from pruning_testlib import blobs

pytestmark = pytest.mark.core

DIM, HIDDEN, CLASSES = 64, 128, 10


def _mlp():
    return keras.Sequential([
        keras.Input((DIM,)),
        keras.layers.Dense(HIDDEN, activation="relu", name="hidden"),
        keras.layers.Dense(CLASSES, name="logits"),
    ])


def _train_pruned(model, x, y, epochs=3, **prune_kwargs):
    pruned = kg.prune_low_magnitude(model, **prune_kwargs)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    pruned.fit(x, y, epochs=epochs, batch_size=64, verbose=0,
               callbacks=[kg.UpdatePruningStep()])
    return pruned


@pytest.fixture(scope="module")
def data():
    x, y = blobs(n=1280, num_classes=CLASSES, dim=DIM, seed=0)
    return (x[:1024], y[:1024]), (x[1024:], y[1024:])


@pytest.fixture(scope="module")
def block4_pruned(data):
    """A 90% (4,1)-block pruned MLP trained with the public API (not stripped)."""
    (x, y), _ = data
    keras.utils.set_random_seed(0)
    return _train_pruned(
        _mlp(), x, y, block_size=(4, 1),
        pruning_schedule=kg.ConstantSparsity(0.9, begin_step=0, frequency=4))


@pytest.fixture(scope="module")
def block16_pruned(data):
    (x, y), _ = data
    keras.utils.set_random_seed(1)
    return _train_pruned(
        _mlp(), x, y, epochs=4, block_size=export.tflite_block_size("int8"),
        pruning_schedule=kg.ConstantSparsity(0.8, begin_step=0, frequency=4))


@pytest.fixture(scope="module")
def float_tflite(block4_pruned, data, tmp_path_factory):
    _, (x_test, _) = data
    path = tmp_path_factory.mktemp("float") / "model.tflite"
    result = export.to_tflite(block4_pruned, path, sample_inputs=x_test[:64])
    return result


# float32 -----------------------------------------------------------------------
def test_float32_tflite_matches_keras(float_tflite, block4_pruned, data):
    _, (x_test, _) = data
    assert float_tflite.verified and os.path.exists(float_tflite.path)
    expected = kg.strip_pruning(block4_pruned).predict(x_test, verbose=0)
    out = export.run_tflite(float_tflite.path, x_test)
    assert out.outputs.shape == expected.shape
    assert np.max(np.abs(out.outputs - expected)) <= 1e-4
    assert out.resolver == "BUILTIN"
    assert out.runtime in ("litert", "tensorflow")


def test_tflite_latency_measures_the_given_batch(float_tflite, data):
    _, (x_test, _) = data
    stats = export.tflite_latency(float_tflite.path, x_test[:8], runs=5, warmup=1)
    assert stats["runs"] == 5 and stats["batch"] == 8
    assert 0 < stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    assert stats["resolver"] == "BUILTIN" and stats["runtime"] in ("litert", "tensorflow")
    default = export.tflite_latency(float_tflite.path, runs=3)  # zeros at batch 1
    assert default["batch"] == 1
    with pytest.raises(ValueError, match="`runs` must be >= 1; received 0"):
        export.tflite_latency(float_tflite.path, runs=0)


def test_block4_dense_is_encoded_natively(float_tflite):
    info = export.inspect_tflite(float_tflite.path)
    hidden = [t for t in info.tensors if t.shape == (HIDDEN, DIM)]
    assert len(hidden) == 1, info
    t = hidden[0]
    assert t.sparse and t.block == (1, 4) and not t.densified and t.native_sparse
    assert t.op == "FULLY_CONNECTED"
    assert info.densify_ops == 0
    # 90% of 2048 (4,1) blocks removed: 204 blocks x 4 values stored.
    assert t.stored_values == 204 * 4
    assert info.file_size > info.gzip_size > 0
    text = str(info)
    assert "sparse block 1x4 (native)" in text and "DENSIFY" in text
    assert info.to_dict()["tensors"][0]["block"] is not None


def test_random_sparse_conv_is_densified(data, tmp_path):
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((8, 8, 4)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES),
    ])
    conv = model.get_layer("conv")
    conv.kernel.assign(conv.kernel * mask_lib.random_mask(conv.kernel.shape, 0.9, seed=3))
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 4)).astype("float32")
    result = export.to_tflite(model, tmp_path / "cnn.tflite", sample_inputs=x)
    assert result.max_abs_diff <= 1e-4
    info = export.inspect_tflite(result)
    (t,) = [t for t in info.tensors if len(t.shape) == 4]
    assert t.sparse and t.densified and t.op == "DENSIFY -> CONV_2D"
    assert not t.native_sparse and t.block is None
    assert info.densify_ops >= 1
    assert t.nonzeros == t.stored_values == mask_lib.num_to_keep(t.num_elements, 0.9)


def test_dense_export_without_sparse_flag(block4_pruned, data, tmp_path):
    _, (x_test, _) = data
    dense = export.to_tflite(block4_pruned, tmp_path / "dense.tflite", sparse=False,
                             sample_inputs=x_test[:8])
    info = export.inspect_tflite(dense)
    assert not info.sparse_tensors
    assert dense.size > 3 * os.path.getsize(export.to_tflite(
        block4_pruned, tmp_path / "sparse.tflite").path)


# quantized ---------------------------------------------------------------------
def test_int8_block16_top1_agreement(block16_pruned, data, tmp_path):
    (x, _), (x_test, _) = data
    result = export.to_tflite(block16_pruned, tmp_path / "int8.tflite", quantize="int8",
                              representative_dataset=x[:256])
    assert result.verified and result.resolver == "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
    info = export.inspect_tflite(result)
    (t,) = [t for t in info.tensors if t.shape == (HIDDEN, DIM)]
    assert t.dtype == "INT8" and t.sparse and t.block == (1, 16) and t.native_sparse
    out = export.run_tflite(result, x_test)
    assert out.resolver == "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
    expected = kg.strip_pruning(block16_pruned).predict(x_test, verbose=0)
    agreement = np.mean(np.argmax(out.outputs, 1) == np.argmax(expected, 1))
    assert agreement >= 0.99, agreement


def test_dynamic_and_float16(block16_pruned, data, tmp_path):
    _, (x_test, _) = data
    dyn = export.to_tflite(block16_pruned, tmp_path / "dyn.tflite", quantize="dynamic",
                           sample_inputs=x_test[:64])
    assert dyn.verified and dyn.top1_agreement >= 0.95
    (t,) = [t for t in export.inspect_tflite(dyn).tensors if t.shape == (HIDDEN, DIM)]
    assert t.dtype == "INT8" and t.block == (1, 16)
    with pytest.warns(UserWarning, match="float16"):
        f16 = export.to_tflite(block16_pruned, tmp_path / "f16.tflite",
                               quantize="float16", sample_inputs=x_test[:64])
    assert f16.verified and f16.max_abs_diff < 1e-2
    assert not export.inspect_tflite(f16).sparse_tensors  # sparse fp16 gives NaN


def test_verification_failure_writes_nothing(block16_pruned, data, tmp_path):
    _, (x_test, _) = data
    path = tmp_path / "strict.tflite"
    with pytest.raises(export.TFLiteVerificationError, match="disagrees"):
        export.to_tflite(block16_pruned, path, quantize="dynamic",
                         sample_inputs=x_test[:16], tolerance=0.0)
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_int8_without_representative_dataset_raises(block4_pruned, tmp_path):
    with pytest.raises(ValueError, match="representative_dataset"):
        export.to_tflite(block4_pruned, tmp_path / "x.tflite", quantize="int8")
    with pytest.raises(ValueError, match="quantize"):
        export.to_tflite(block4_pruned, tmp_path / "x.tflite", quantize="int4")
    assert os.listdir(tmp_path) == []


def test_atomic_write_when_conversion_fails(block4_pruned, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"previous version")

    def bad_calibration():  # passes the input check, then breaks inside the converter
        yield [np.zeros((1, DIM), "float32")]
        raise RuntimeError("calibration data broke")

    with pytest.raises(Exception):
        export.to_tflite(block4_pruned, path, quantize="int8",
                         representative_dataset=bad_calibration, verify=False)
    assert path.read_bytes() == b"previous version"
    assert sorted(os.listdir(tmp_path)) == ["model.tflite"]
    fresh = tmp_path / "fresh.tflite"
    with pytest.raises(Exception):
        export.to_tflite(block4_pruned, fresh, quantize="int8",
                         representative_dataset=bad_calibration, verify=False)
    assert not fresh.exists()


def test_tflite_block_size():
    assert export.tflite_block_size() == (4, 1)
    assert export.tflite_block_size("float16") == (4, 1)
    assert export.tflite_block_size("int8") == (16, 1)
    assert export.tflite_block_size("dynamic") == (16, 1)
    with pytest.raises(ValueError, match="quantize"):
        export.tflite_block_size("int4")


def test_inspect_and_run_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        export.inspect_tflite(tmp_path / "missing.tflite")
    not_tflite = tmp_path / "x.tflite"
    not_tflite.write_bytes(b"definitely not a flatbuffer")
    with pytest.raises(ValueError, match="not a TFLite model"):
        export.inspect_tflite(not_tflite)
    with pytest.raises(FileNotFoundError):
        export.run_tflite(tmp_path / "missing.tflite", np.zeros((1, 2), "float32"))
    with pytest.raises(ValueError, match="Keras model file"):
        export.to_tflite(str(not_tflite), tmp_path / "out.tflite")


# GPU route: SavedModel / ONNX with 2:4 -------------------------------------------
@pytest.fixture(scope="module")
def two_four_pruned(data):
    (x, y), _ = data
    keras.utils.set_random_seed(3)
    return _train_pruned(_mlp(), x[:512], y[:512], epochs=1, sparsity_m_by_n=(2, 4))


def test_two_four_survives_saved_model(two_four_pruned, data, tmp_path):
    _, (x_test, _) = data
    path = export.to_saved_model(two_four_pruned, tmp_path / "sm")
    check = export.check_n_by_m(path, n=2, m=4)
    assert check.ok, check
    # "sequential/hidden/kernel" (TensorFlow) or "hidden/kernel" (converted from
    # a .keras file in the TensorFlow subprocess): the layer and weight match.
    assert sorted("/".join(r.name.split("/")[-2:]) for r in check.checked) == [
        "hidden/kernel", "logits/kernel"]
    # the exported graph computes what the Keras model computes
    import tensorflow as tf
    loaded = tf.saved_model.load(path)
    got = loaded.serve(tf.constant(x_test[:8])).numpy()
    want = kg.strip_pruning(two_four_pruned).predict(x_test[:8], verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["sm"]  # no temp dirs left


def test_check_n_by_m_detects_violations(data, tmp_path):
    dense = export.to_saved_model(_mlp(), tmp_path / "dense_sm")
    check = export.check_n_by_m(dense)
    assert not check.ok and all(r.violations > 0 for r in check.checked)
    w = np.array([[1.0, 0.0], [2.0, 3.0], [0.0, 0.0], [0.0, 4.0]])  # [in=4, out=2]
    assert export.check_n_by_m([w]).ok
    w[2, 0] = 5.0  # column 0 now has 3 non-zeros in its group of 4
    row = export.check_n_by_m({"w": w}).rows[0]
    assert row.violations == 1 and row.status == "violates"
    skipped = export.check_n_by_m([np.ones((3, 2))])
    assert not skipped.ok and "skipped" in skipped.rows[0].status


def test_to_onnx(two_four_pruned, tmp_path):
    missing = export.onnx_missing_packages()
    if missing:
        with pytest.raises(ImportError, match=missing[0]):
            export.to_onnx(two_four_pruned, tmp_path / "m.onnx")
        assert not (tmp_path / "m.onnx").exists()
        pytest.skip(f"ONNX export needs {missing}")
    import onnx
    from onnx import numpy_helper
    path = export.to_onnx(two_four_pruned, tmp_path / "m.onnx")
    graph = onnx.load(path).graph
    kernels = [numpy_helper.to_array(i) for i in graph.initializer
               if numpy_helper.to_array(i).shape in ((DIM, HIDDEN), (HIDDEN, CLASSES))]
    assert len(kernels) == 2
    assert export.check_n_by_m(kernels, axis=0).ok  # MatMul weights are [in, out]


def test_target_tflite_picks_native_blocks(data, tmp_path):
    """prune_low_magnitude(target="tflite"): (4,1) on Dense kernels, run natively."""
    (x, y), (xt, _) = data
    keras.utils.set_random_seed(1)
    pruned = _train_pruned(_mlp(), x, y, epochs=1, target="tflite",
                           pruning_schedule=kg.ConstantSparsity(0.9, 0, frequency=4))
    assert [w.block_size for w in kg.wrapper.collect_wrappers(pruned)] == [(4, 1), (4, 1)]
    path = str(tmp_path / "target.tflite")
    export.to_tflite(pruned, path, sample_inputs=xt[:32])
    info = export.inspect_tflite(path)
    hidden = [t for t in info.tensors if t.shape == (HIDDEN, DIM)][0]
    assert hidden.block == (1, 4) and hidden.native_sparse and not hidden.densified
    with pytest.raises(ValueError, match="target"):
        kg.prune_low_magnitude(_mlp(), target="tpu")


# optimize_for: which encoding is written ------------------------------------------
@pytest.fixture(scope="module")
def block_sparse_mlp():
    """A 512-1024-512 MLP whose kernels are 90% zero in (4, 1) blocks.

    Measured (TF 2.21, x86, one thread): the sparse float32 file runs ~1.8x
    faster than its dense encoding; the sparse int8 file ~8x slower (sparse
    int8 runs without XNNPACK). So each encoding wins once.
    """
    rng = np.random.RandomState(0)
    model = keras.Sequential([keras.Input((512,)), keras.layers.Dense(1024, activation="relu"),
                              keras.layers.Dense(512)])
    for layer in model.layers:
        kernel, bias = layer.get_weights()
        keep = np.repeat(rng.rand(kernel.shape[0] // 4, kernel.shape[1]) > 0.9, 4, axis=0)
        layer.set_weights([kernel * keep, bias])
    return model, rng.randn(16, 512).astype("float32")


def _is_sparse_file(path):
    return bool(export.inspect_tflite(str(path)).sparse_tensors)


def test_optimize_for_latency_keeps_faster_sparse_float32(block_sparse_mlp, tmp_path):
    model, x = block_sparse_mlp
    r = export.to_tflite(model, tmp_path / "f.tflite", sample_inputs=x,
                         optimize_for="latency")
    assert r.encoding == "sparse" and _is_sparse_file(r.path), r.choice
    assert r.latency_ms["sparse"] < r.latency_ms["dense"], r.latency_ms
    assert r.sizes["sparse"] < r.sizes["dense"] == pytest.approx(
        4 * sum(w.size for w in model.get_weights()), rel=0.05)
    assert "sparse encoding" in r.choice and "ms" in r.choice


def test_optimize_for_latency_writes_dense_int8_and_size_warns(block_sparse_mlp, tmp_path):
    model, x = block_sparse_mlp
    fast = export.to_tflite(model, tmp_path / "fast.tflite", quantize="int8",
                            representative_dataset=x, optimize_for="latency")
    assert fast.encoding == "dense" and not _is_sparse_file(fast.path), fast.choice
    assert fast.size == fast.sizes["dense"] > fast.sizes["sparse"]
    assert fast.latency_ms["dense"] * export.tflite.LATENCY_MARGIN <= fast.latency_ms["sparse"]
    with pytest.warns(export.SparseSlowerWarning, match="optimize_for='latency'"):
        small = export.to_tflite(model, tmp_path / "small.tflite", quantize="int8",
                                 representative_dataset=x)
    assert small.encoding == "sparse" and _is_sparse_file(small.path)
    assert small.size == small.sizes["sparse"] < fast.size
    with pytest.raises(ValueError, match="optimize_for"):
        export.to_tflite(model, tmp_path / "x.tflite", optimize_for="speed")


# Export from JAX / PyTorch: errors name the layer and the backend --------------------
@pytest.mark.skipif(keras.backend.backend() == "tensorflow",
                    reason="the TensorFlow backend exports in-process")
def test_layer_the_tensorflow_backend_cannot_trace_is_named(tmp_path):
    from export_testlib import BACKEND_ONLY
    backend = keras.backend.backend()
    model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(8, name="d"),
                              BACKEND_ONLY[backend](name="native_tanh")])
    model.predict(np.zeros((2, DIM), "float32"), verbose=0)  # runs on its own backend
    path = tmp_path / "m.tflite"
    with pytest.raises(export.ExportSubprocessError) as info:
        export.to_tflite(model, path, verify=False)
    message = str(info.value)
    assert "'native_tanh'" in message and f"{backend!r} backend" in message, message
    assert "keras.ops" in message and info.value.child_traceback
    assert not path.exists()


@pytest.mark.skipif(keras.backend.backend() == "tensorflow",
                    reason="the TensorFlow backend exports in-process")
def test_layer_class_from_main_is_refused_with_the_way_out(tmp_path):
    import subprocess
    import sys
    code = (
        "import keras, numpy as np, keras_gap as kg\n"
        "class Mine(keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return keras.ops.relu(x)\n"
        "m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), Mine(name='mine')])\n"
        "try:\n"
        f"    kg.export.to_tflite(m, {str(tmp_path / 'm.tflite')!r}, verify=False)\n"
        "except ValueError as e:\n"
        "    print('REFUSED', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ))
    assert "REFUSED" in out.stdout, out.stderr[-3000:]
    assert "'mine'" in out.stdout and "__main__" in out.stdout
    assert "register_keras_serializable" in out.stdout
    assert not (tmp_path / "m.tflite").exists()
