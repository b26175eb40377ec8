"""strip_pruning and .keras save/load of pruned and stripped models."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import keras

import keras_gap as kg
from keras_gap.wrapper import PruneLowMagnitude, collect_wrappers
from pruning_testlib import blobs, compile_model, image_blobs, mlp, np_, small_cnn

pytestmark = pytest.mark.core


def _trained_pruned(build=mlp, data=blobs, epochs=2):
    x, y = data()
    schedule = kg.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=10, frequency=2)
    pruned = compile_model(kg.prune_low_magnitude(build(), pruning_schedule=schedule))
    pruned.fit(x, y, batch_size=32, epochs=epochs, verbose=0,
               callbacks=[kg.UpdatePruningStep()])
    return pruned, x, y


@pytest.mark.parametrize("build, data", [(mlp, blobs), (small_cnn, image_blobs)])
def test_strip_gives_identical_outputs_and_plain_layers(build, data):
    pruned, x, _ = _trained_pruned(build, data)
    expected = np_(pruned.predict(x, verbose=0))
    stripped = kg.strip_pruning(pruned)
    assert not collect_wrappers(stripped)
    assert not any(isinstance(l, PruneLowMagnitude) for l in stripped.layers)
    np.testing.assert_array_equal(np_(stripped.predict(x, verbose=0)), expected,
                                  err_msg="stripped model must give identical outputs")
    report = kg.sparsity_report(stripped)
    assert report.sparsity == pytest.approx(kg.sparsity_report(pruned).sparsity)
    assert report.sparsity > 0.7


def test_strip_bakes_in_masks_even_if_weights_drifted():
    """Masks are applied at strip time, not only trusted."""
    pruned, x, _ = _trained_pruned()
    w = collect_wrappers(pruned)[0]
    kernel, mask = w.pruned_weights[0], np_(w.masks[0])
    kernel.assign(np_(kernel) + (mask == 0) * 0.5)  # corrupt masked entries
    expected = np_(pruned.predict(x, verbose=0))  # forward pass masks them anyway
    stripped = kg.strip_pruning(pruned)
    np.testing.assert_allclose(np_(stripped.predict(x, verbose=0)), expected, atol=1e-6)
    assert np.count_nonzero(np_(stripped.layers[0].kernel)[mask == 0]) == 0


def test_strip_rejects_non_models():
    with pytest.raises(ValueError, match="strip_pruning"):
        kg.strip_pruning("model")


def _config_json(path):
    with zipfile.ZipFile(path) as z:
        return z.read("config.json").decode()


def test_stripped_model_saves_and_loads_without_custom_objects(tmp_path):
    pruned, x, _ = _trained_pruned()
    stripped = kg.strip_pruning(pruned)
    path = str(tmp_path / "stripped.keras")
    stripped.save(path)
    config = _config_json(path)
    assert "keras_gap" not in config and "PruneLowMagnitude" not in config, \
        "a stripped model must not reference keras_gap"
    expected = np_(stripped.predict(x[:16], verbose=0))
    np.save(tmp_path / "x.npy", x[:16])
    np.save(tmp_path / "expected.npy", expected)
    # Load in a fresh interpreter where keras_gap is never imported.
    code = (
        "import sys, numpy as np, keras\n"
        f"m = keras.saving.load_model({path!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "out = np.asarray(keras.ops.convert_to_numpy(m.predict(x, verbose=0)))\n"
        f"np.testing.assert_allclose(out, np.load({str(tmp_path / 'expected.npy')!r}), "
        "rtol=1e-6, atol=1e-6)\n"
        "assert 'keras_gap' not in sys.modules\n"
        "print('LOADED_OK')\n")
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=str(tmp_path), timeout=300)
    assert "LOADED_OK" in result.stdout, result.stderr[-3000:]


def test_pruned_model_saves_and_reloads_masks_step_and_schedule(tmp_path):
    pruned, x, _ = _trained_pruned()
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    old, new = collect_wrappers(pruned), collect_wrappers(loaded)
    assert len(old) == len(new) == 3
    for a, b in zip(old, new):
        assert int(np_(b.pruning_step)) == int(np_(a.pruning_step)) == 20
        assert b.pruning_schedule == a.pruning_schedule
        for ma, mb in zip(a.masks, b.masks):
            np.testing.assert_array_equal(np_(mb), np_(ma))
    np.testing.assert_array_equal(np_(loaded.predict(x, verbose=0)),
                                  np_(pruned.predict(x, verbose=0)))


def _run(tmp_path, interrupt):
    """4 epochs of deterministic training, optionally saved+reloaded after 2."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(42)
    x, y = blobs(n=128)
    schedule = kg.PolynomialDecay(0.1, 0.8, begin_step=2, end_step=14, frequency=3)
    model = compile_model(kg.prune_low_magnitude(mlp(), pruning_schedule=schedule),
                          keras.optimizers.Adam(0.01))
    kwargs = dict(batch_size=32, verbose=0, shuffle=False)
    if not interrupt:
        model.fit(x, y, epochs=4, callbacks=[kg.UpdatePruningStep()], **kwargs)
        return model
    model.fit(x, y, epochs=2, callbacks=[kg.UpdatePruningStep()], **kwargs)
    path = str(tmp_path / "mid.keras")
    model.save(path)
    del model
    keras.backend.clear_session()
    model = keras.saving.load_model(path)
    assert int(np_(collect_wrappers(model)[0].pruning_step)) == 8
    model.fit(x, y, epochs=4, initial_epoch=2, callbacks=[kg.UpdatePruningStep()], **kwargs)
    return model


def test_save_mid_training_reload_and_continue_exactly(tmp_path):
    straight = [np_(v).copy() for v in _run(tmp_path, interrupt=False).weights]
    resumed_model = _run(tmp_path, interrupt=True)
    resumed = [np_(v) for v in resumed_model.weights]
    names = [v.path for v in resumed_model.weights]
    assert len(straight) == len(resumed)
    for name, a, b in zip(names, straight, resumed):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name} differs after save/reload/continue")
    for w in collect_wrappers(resumed_model):
        assert int(np_(w.pruning_step)) == 16
        n, kept = w.mask_counts()[0]
        assert kept == kg.masks.num_to_keep(n, 0.8), w.name


def test_strip_returns_uncompiled_model_without_optimizer_state(tmp_path):
    """Like tf-mot: the stripped model carries no optimizer (a smaller .keras file)."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)])
    pruned = kg.prune_low_magnitude(model, pruning_schedule=kg.ConstantSparsity(0.5, 0))
    assert not pruned.compiled
    pruned.compile("adam", "mse")
    pruned.fit(np.zeros((8, 8)), np.zeros((8, 2)), verbose=0,
               callbacks=[kg.UpdatePruningStep()])
    final = kg.strip_pruning(pruned)
    assert not final.compiled and pruned.compiled
    path = os.path.join(tmp_path, "final.keras")
    final.save(path)
    with zipfile.ZipFile(path) as z:
        assert "optimizer" not in z.read("model.weights.h5").decode("latin-1")
