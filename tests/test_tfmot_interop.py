"""keras-gap and tf-mot: GaP schedules drive tf-mot; no tf-mot side effects here."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest


HERE = os.path.dirname(__file__)
needs_tfmot = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_model_optimization") is None
    or importlib.util.find_spec("tf_keras") is None,
    reason="tensorflow-model-optimization and tf_keras are not installed "
           "(pip install -e '.[test]')")


def test_importing_keras_gap_does_not_import_tfmot():
    code = ("import os, sys, keras_gap; "
            "print('tensorflow_model_optimization' in sys.modules, "
            "os.environ.get('TF_USE_LEGACY_KERAS'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert out.stdout.split()[-2:] == ["False", "None"]


@pytest.mark.tfmot
@needs_tfmot
def test_tfmot_trains_with_gap_schedule():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, os.path.join(HERE, "subprocess_scripts", "tfmot_gap.py")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    trace = result["trace"]
    assert len(trace) == 20
    partition = {"d0": 0, "d1": 0, "d2": 1, "d3": 1}
    for step, row in enumerate(trace):
        j = step // 5
        grown = j % 2 if j < 2 else None
        for name, sparsity in row.items():
            if partition[name] == grown:
                assert sparsity < 0.05, (step, name, sparsity)   # dense (grown)
            else:
                assert sparsity == pytest.approx(0.8, abs=0.02), (step, name, sparsity)
    assert result["config"]["class_name"] == "GaPPruningSchedule"


@pytest.mark.tfmot
@needs_tfmot
def test_tfmot_schedule_objects_accepted_without_leaking_env():
    code = (
        "import os, json\n"
        "import tensorflow_model_optimization as tfmot\n"
        "import keras_gap as kg\n"
        "s = kg.schedules.get_schedule(tfmot.sparsity.keras.PolynomialDecay(0.1, 0.7, 0, 100))\n"
        "print(json.dumps([type(s).__name__, s(100)[1]]))\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    name, sparsity = json.loads(out.stdout.strip().splitlines()[-1])
    assert name == "PolynomialDecay" and sparsity == pytest.approx(0.7)
    assert "TF_USE_LEGACY_KERAS" not in os.environ


# The differences a tf-mot user could hit after the import swap (issue 23), run side by
# side: tf-mot 0.8.1 in a subprocess (tf_keras), keras-gap here.
_NM_SPECS = [  # (kernel shape, (M zeros, N)): full groups, partial groups, a conv
    ((8, 3), (2, 4)), ((7, 2), (2, 4)), ((7, 2), (1, 4)), ((8, 3), (3, 4)),
    ((8, 3), (1, 4)), ((3, 3, 6, 2), (2, 4)), ((10, 2), (3, 8))]


def _nm_kernels():
    rng = np.random.default_rng(7)
    return [{"kernel": (rng.permutation(int(np.prod(shape))).reshape(shape) + 1.0).tolist(),
             "m_by_n": list(pair)} for shape, pair in _NM_SPECS]


@pytest.fixture(scope="module")
def tfmot_behaviour():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    arg = {"xnnpack_ops": ["add", "concat"], "m_by_n": _nm_kernels()}
    out = subprocess.run([sys.executable, os.path.join(HERE, "subprocess_scripts",
                                                       "tfmot_behaviour.py"), "all",
                          json.dumps(arg)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.tfmot
@needs_tfmot
def test_m_by_n_masks_equal_tfmots(tfmot_behaviour):
    """sparsity_m_by_n=(M, N) is tf-mot's "M zeros in every N" (partial last groups
    included): the same mask, entry for entry, on the same kernels."""
    import keras
    import keras_gap as kg
    for spec, theirs in zip(_nm_kernels(), tfmot_behaviour["m_by_n"]):
        kernel = np.asarray(spec["kernel"], "float32")
        layer = (keras.layers.Dense(kernel.shape[-1], use_bias=False) if kernel.ndim == 2
                 else keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], use_bias=False))
        wrapper = kg.PruneLowMagnitude(layer, sparsity_m_by_n=tuple(spec["m_by_n"]),
                                       pruning_schedule=kg.ConstantSparsity(0.5, 0))
        wrapper.build((None,) + ((kernel.shape[0],) if kernel.ndim == 2
                                 else (8, 8, kernel.shape[2])))
        layer.kernel.assign(kernel)
        wrapper.update_masks(0.5)
        mine = keras.ops.convert_to_numpy(wrapper.masks[0])
        np.testing.assert_array_equal(mine, np.asarray(theirs),
                                      err_msg=f"{kernel.shape} {spec['m_by_n']}")
    assert np.asarray(tfmot_behaviour["m_by_n"][1]).sum() == 14 - 6  # 3 of 7 zero per column


@pytest.mark.tfmot
@needs_tfmot
def test_tfmot_differences_pruning_twice_and_nothing_prunable(tfmot_behaviour):
    """Pruning an already-pruned model: both keep the wrappers (keras-gap warns);
    nothing prunable: tf-mot returns no-op wrappers, keras-gap raises (deliberate,
    README "Migrating from tf-mot")."""
    import keras
    import keras_gap as kg
    from keras_gap.wrapper import collect_wrappers
    assert tfmot_behaviour["partly_pruned"]["second_keeps_wrappers"]
    assert tfmot_behaviour["double_xnnpack"]["first"] == tfmot_behaviour["double_xnnpack"][
        "second"] == ["pw"]
    mine = kg.prune_low_magnitude(keras.layers.Dense(8, name="mine"))
    model = keras.Sequential([keras.Input((4,)), mine, keras.layers.Dense(2, name="other")])
    pruned = kg.prune_low_magnitude(model)
    assert sorted(w.layer.name for w in collect_wrappers(pruned)) == sorted(
        tfmot_behaviour["partly_pruned"]["first"])
    with pytest.warns(UserWarning, match="already wrapped"):
        again = kg.prune_low_magnitude(pruned)
    assert all(a is b for a, b in zip(collect_wrappers(again), collect_wrappers(pruned)))
    assert tfmot_behaviour["nothing_prunable"]["prunable_weights"] == [0, 0]
    nothing = keras.Sequential([keras.Input((8,)), keras.layers.LayerNormalization(),
                                keras.layers.Activation("relu")])
    with pytest.raises(ValueError, match="no prunable weights"):
        kg.prune_low_magnitude(nothing)
    assert "wrapped" in tfmot_behaviour["xnnpack_ops"]["add"]
    assert "not supported" in tfmot_behaviour["xnnpack_ops"]["concat"]["error"]
