"""kg.gap.PGaPRunner: P-GaP's copies on Ray workers (2 local workers, tiny MLP).

The copies are trained with fixed seeds and no shuffling, so a Ray run must
reproduce the in-process P-GaP (``prune_gap(method="pgap")`` + GaPCallback)
exactly: same masks, same weights within float tolerance. That holds when a
worker is SIGKILLed mid-round (it is restarted and redoes its copy) and when
the driver is SIGKILLed between rounds (a new runner resumes from the
checkpoint).
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_gap as kg
from keras_gap.gap import ray_runner

import ray_testlib

HERE = os.path.dirname(__file__)
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAS_RAY, reason="ray is not installed (pip install 'keras-gap[distributed]')")

SCHEDULE = dict(target_sparsity=0.8, num_partitions=2, epochs_per_step=1, rounds=2,
                finetune_epochs=1)


def _runner(tmp_path=None, **kwargs):
    args = dict(SCHEDULE, num_workers=2, fit_kwargs={"shuffle": False}, verbose=1)
    args.update(kwargs)
    build = args.pop("build", ray_testlib.build)
    data = args.pop("data", ray_testlib.data)
    if tmp_path is not None:
        args.setdefault("checkpoint_dir", str(tmp_path / "ckpt"))
    return kg.gap.PGaPRunner(build, data, **args)


def _values(model):
    import keras
    from keras_gap.gap import pgap
    from keras_gap.gap.api import gap_wrappers
    return [keras.ops.convert_to_numpy(v)
            for v in pgap._tracked_variables(model, gap_wrappers(model))]


@pytest.fixture(scope="module")
def reference():
    """The in-process P-GaP with the same schedule (one machine)."""
    import keras
    model = ray_testlib.build()
    pruned = kg.prune_gap(model, method="pgap", **SCHEDULE)
    pruned.compile_from_config(model.get_compile_config())
    x, y = ray_testlib.arrays()
    pruned.fit(x, y, epochs=kg.gap_total_epochs(pruned), shuffle=False, verbose=0,
               callbacks=[kg.GaPCallback(verbose=0)])
    keras.backend.clear_session()
    return _values(pruned)


def _assert_same(values, ref):
    assert len(values) == len(ref)
    for v, r in zip(values, ref):
        np.testing.assert_allclose(v, r, atol=2e-5, rtol=1e-4)


# No Ray needed ---------------------------------------------------------------------
def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r"keras-gap\[distributed\]"):
        _runner().fit()


@pytest.mark.parametrize("kwargs, match", [
    ({"num_workers": 0}, "num_workers.*>= 1"),
    ({"num_workers": 3}, "num_workers=3 is more than num_partitions=2"),
    ({"build": "model"}, "`build` must be a function"),
    ({"rounds": 0}, "`rounds` must be an int >= 1"),
    ({"gap_kwargs": {"criterion": kg.criteria.FGGP(rate=0.9)}}, "no training gradients"),
    ({"fit_kwargs": {"epochs": 3}}, "cannot set 'epochs'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _runner(**kwargs)


def test_build_must_return_compiled_prunable_model():
    with pytest.raises(ValueError, match="uncompiled"):
        _runner(build=ray_testlib.build_uncompiled).fit()
    with pytest.raises(ValueError, match="prune_gap cannot prepare.*no prunable layers"):
        _runner(build=ray_testlib.build_unprunable).fit()


def test_fit_inputs_forms():
    x, y = ray_testlib.arrays()
    assert set(ray_runner.fit_inputs((x, y))) == {"x", "y"}
    assert set(ray_runner.fit_inputs(((x, y), (x, y)))) == {"x", "y", "validation_data"}
    with pytest.raises(ValueError, match="must return"):
        ray_runner.fit_inputs(x)


def test_thread_env_caps_every_framework():
    env = ray_runner.thread_env(1)
    assert env["TF_NUM_INTRAOP_THREADS"] == env["OMP_NUM_THREADS"] == "1"
    assert "--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"]
    assert ray_runner.thread_env(2.5)["TF_NUM_INTRAOP_THREADS"] == "2"


# Ray, before this module's shared instance starts ------------------------------------
@needs_ray
def test_unreachable_address_is_a_clear_error():
    import ray
    if ray.is_initialized():
        pytest.skip("Ray already initialized in this process")
    with pytest.raises(ConnectionError, match="cannot reach the Ray cluster at '127.0.0.1:9'"):
        _runner(address="127.0.0.1:9").fit()
    with pytest.raises(ValueError, match="host:port"):
        ray_runner.check_reachable("nowhere")


@needs_ray
def test_local_instance_sized_to_machine_without_leaking_auth_env(monkeypatch):
    import ray
    if ray.is_initialized():
        pytest.skip("Ray already initialized in this process")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    runner = _runner()
    with runner._ray_session(ray):
        assert ray.cluster_resources()["CPU"] == ray_runner._local_cpus()
        assert "RAY_AUTH_MODE" not in os.environ
    assert not ray.is_initialized()  # we started it, we stopped it
    assert "RAY_AUTH_MODE" not in os.environ


# Ray, one shared local instance ---------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    if not HAS_RAY:
        pytest.skip("ray is not installed (pip install 'keras-gap[distributed]')")
    import ray
    with ray_runner._environ(RAY_AUTH_MODE="disabled"):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_matches_in_process_pgap_with_a_worker_killed_mid_round(
        ray_cluster, reference, tmp_path, capsys):
    import functools
    marker = str(tmp_path / "killed_pid")
    data = functools.partial(ray_testlib.killing_data, marker, os.getpid())
    run = _runner(tmp_path, data=data)
    pruned = run.fit()
    out = capsys.readouterr().out

    assert os.path.exists(marker), "no worker was killed"
    killed = int(open(marker).read())
    pids = {p for h in run.history for p in h["worker_pids"].values()}
    assert killed not in pids                      # the copy was redone by a restarted actor
    _assert_same(_values(pruned), reference)       # ... from the round's start: same result
    assert [h["round"] for h in run.history] == [1, 2]
    assert all(set(h["copies"]) == {"0", "1"} for h in run.history)
    # 2 workers on the shared 2-CPU instance: 1 CPU each, TensorFlow capped at 1 thread.
    assert {t for h in run.history for t in h["worker_threads"].values()} == {1}
    assert all(abs(h["sparsity"] - 0.8) < 0.01 for h in run.history)
    assert "loss" in run.history[0]["copies"]["0"] and run.finetune_history["loss"]
    assert "round 1/2 partition 0" in out and "round 2/2: merged 2 copies" in out
    assert "fine-tuned 1 epochs on the driver" in out

    # A finished checkpoint: a new runner returns the same model without Ray work.
    again = _runner(tmp_path, data=data)
    _assert_same(_values(again.fit()), reference)
    assert "resuming" in capsys.readouterr().out


def test_driver_killed_between_rounds_resumes_from_checkpoint(
        ray_cluster, reference, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    address = ray_cluster.get_runtime_context().gcs_address
    out = subprocess.run([sys.executable, os.path.join(HERE, "subprocess_scripts",
                                                       "pgap_driver.py"), str(ckpt), address],
                         capture_output=True, text=True, env=env, timeout=600)
    assert "KILLING DRIVER" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.returncode == -9
    with np.load(ckpt / ray_runner.CHECKPOINT) as f:
        assert json.loads(str(f["__state__"]))["rounds_done"] == 1
    assert not [p for p in os.listdir(ckpt) if ".tmp" in p]

    run = _runner(tmp_path, num_workers=1)  # resuming with fewer workers is fine
    pruned = run.fit()
    text = capsys.readouterr().out
    assert "resuming from" in text and "1/2 rounds done" in text
    assert "round 1/2 partition" not in text        # round 1 is not redone
    assert [h["round"] for h in run.history] == [1, 2]
    _assert_same(_values(pruned), reference)

    with pytest.raises(ValueError, match="different settings.*gap_kwargs"):
        _runner(tmp_path, target_sparsity=0.5).fit()


def test_data_failing_on_a_worker_stops_cleanly(ray_cluster, tmp_path):
    import functools
    data = functools.partial(ray_testlib.data_failing_on_workers, os.getpid())
    with pytest.raises(RuntimeError) as info:
        _runner(tmp_path, data=data, num_workers=1, max_restarts=1).fit()
    text = str(info.value)
    assert "a worker failed in round 1" in text
    assert "training data unavailable on this worker" in text   # the worker's error
    assert "ray_testlib.py" in text and "data_failing_on_workers" in text  # ... its traceback
    assert os.path.exists(tmp_path / "ckpt" / ray_runner.CHECKPOINT)  # checkpoint stays
    assert ray_cluster.is_initialized()


def test_more_workers_than_the_cluster_can_place(ray_cluster):
    with pytest.raises(ValueError, match="the Ray cluster has 2 CPUs and 0 GPUs"):
        _runner(num_partitions=3, num_workers=3).fit()


def _write_user_code(root):
    """A user's project: build() in one module imports a helper from a sibling module."""
    (root / "kg_user_helpers.py").write_text(
        "import keras\n"
        "def mlp():\n"
        "    keras.utils.set_random_seed(3)\n"
        "    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name='d1'),\n"
        "                          keras.layers.Dense(16, name='d2'),\n"
        "                          keras.layers.Dense(3, name='out')])\n"
        "    m.compile('adam', keras.losses.SparseCategoricalCrossentropy(from_logits=True))\n"
        "    return m\n")
    (root / "kg_user_build.py").write_text(
        "from kg_user_helpers import mlp\n"
        "def build():\n"
        "    return mlp()\n")


def test_build_importing_a_sibling_module_runs_on_a_local_cluster(ray_cluster, tmp_path,
                                                                   monkeypatch):
    import importlib
    import sys
    _write_user_code(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    build = importlib.import_module("kg_user_build").build
    assert ray_runner._code_dirs([build]) == [str(tmp_path)]
    run = _runner(build=build, num_workers=1, rounds=1)
    run.fit()  # the workers import kg_user_helpers from tmp_path (PYTHONPATH)
    assert [h["round"] for h in run.history] == [1]
    for name in ("kg_user_build", "kg_user_helpers"):
        sys.modules.pop(name, None)


def test_worker_missing_module_error_names_it_and_the_way_out():
    run = ray_runner.PGaPRunner(ray_testlib.build, ray_testlib.arrays, num_partitions=2)
    error = RuntimeError("RayActorError: ... ModuleNotFoundError: No module named 'helpers'")
    text = str(run._worker_error(error, 0))
    assert "cannot import module 'helpers'" in text
    assert "working_dir" in text and "py_modules" in text
