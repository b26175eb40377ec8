"""keras_gap.schedules: tf-mot's schedule contract."""

import os
import sys

import numpy as np
import pytest
from keras import ops

import keras_gap as kg
from keras_gap import schedules
from pruning_testlib import np_

pytestmark = pytest.mark.core


@pytest.mark.parametrize("step, should", [
    (0, False), (9, False), (10, True), (15, False), (20, True), (50, True),
    (51, False), (60, False), (1000, False),
])
def test_constant_sparsity_steps_frequency_begin_end(step, should):
    sched = kg.ConstantSparsity(0.7, begin_step=10, end_step=50, frequency=10)
    assert sched(step) == (should, 0.7), step


def test_constant_sparsity_end_minus_one_prunes_forever():
    sched = kg.ConstantSparsity(0.5, begin_step=3, frequency=4)
    assert [s for s in range(40) if sched(s)[0]] == list(range(3, 40, 4))
    assert sched(10 ** 7 + 3)[0] is True


def test_constant_sparsity_defaults_match_tfmot():
    sched = kg.ConstantSparsity(0.5, 0)
    assert sched.get_config() == {"class_name": "ConstantSparsity", "config": {
        "target_sparsity": 0.5, "begin_step": 0, "end_step": -1, "frequency": 100}}


def _poly_reference(step, si, sf, begin, end, power):
    p = min(1.0, max(0.0, (step - begin) / (end - begin)))
    return sf + (si - sf) * (1 - p) ** power


@pytest.mark.parametrize("step", [0, 10, 25, 50, 75, 99, 100, 110, 200])
@pytest.mark.parametrize("power", [1, 2, 3])
def test_polynomial_decay_values(step, power):
    sched = kg.PolynomialDecay(0.1, 0.9, begin_step=10, end_step=110, power=power,
                               frequency=5)
    should, sparsity = sched(step)
    assert should == (10 <= step <= 110 and (step - 10) % 5 == 0), step
    assert sparsity == pytest.approx(_poly_reference(step, 0.1, 0.9, 10, 110, power))


def test_polynomial_decay_known_points():
    sched = kg.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, frequency=10)
    assert sched(0) == (True, pytest.approx(0.0))
    assert sched(50)[1] == pytest.approx(0.8 - 0.8 * 0.5 ** 3)
    assert sched(100) == (True, pytest.approx(0.8))
    assert sched(110) == (False, pytest.approx(0.8)), "no update after end_step"
    assert kg.PolynomialDecay(0.0, 0.9, 0, 1000)(1000) == (True, pytest.approx(0.9))


@pytest.mark.parametrize("step", [0, 9, 10, 20, 55, 60, 100, 130])
def test_tensor_steps_give_the_same_answers(step):
    for sched in (kg.ConstantSparsity(0.6, begin_step=10, end_step=100, frequency=10),
                  kg.PolynomialDecay(0.2, 0.8, begin_step=10, end_step=100, frequency=10)):
        py_should, py_sparsity = sched(step)
        should, sparsity = sched(ops.convert_to_tensor(step, "int64"))
        assert not isinstance(should, bool), "tensor step must return tensors"
        assert bool(np_(should)) == py_should, (sched, step)
        assert float(np_(sparsity)) == pytest.approx(py_sparsity, abs=1e-6), (sched, step)


@pytest.mark.parametrize("sched", [
    kg.ConstantSparsity(0.75, begin_step=5, end_step=80, frequency=3),
    kg.ConstantSparsity(0.0, begin_step=0),
    kg.PolynomialDecay(0.1, 0.95, begin_step=2, end_step=40, power=2, frequency=7),
])
def test_get_config_from_config_round_trip(sched):
    config = sched.get_config()
    assert set(config) == {"class_name", "config"}
    assert config["class_name"] == type(sched).__name__
    cls = type(sched)
    for rebuilt in (cls.from_config(config["config"]), cls.from_config(config),
                    schedules.deserialize_schedule(config), schedules.get_schedule(config)):
        assert type(rebuilt) is cls and rebuilt == sched
        assert rebuilt.get_config() == config
        assert [rebuilt(s) for s in range(50)] == [sched(s) for s in range(50)]


def test_custom_schedule_subclass_and_registration():
    @schedules.register_schedule
    class EveryTenth(kg.PruningSchedule):
        def __init__(self, sparsity=0.5):
            self.sparsity = sparsity

        def __call__(self, step):
            return step % 10 == 0, self.sparsity

        def get_config(self):
            return {"class_name": "EveryTenth", "config": {"sparsity": self.sparsity}}

    rebuilt = schedules.deserialize_schedule({"class_name": "EveryTenth",
                                              "config": {"sparsity": 0.3}})
    assert isinstance(rebuilt, EveryTenth) and rebuilt(20) == (True, 0.3)
    assert schedules.get_schedule(rebuilt) is rebuilt


# Errors -----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.2, "x"])
def test_sparsity_outside_unit_interval_is_an_error(bad):
    with pytest.raises(ValueError, match="target_sparsity"):
        kg.ConstantSparsity(bad, begin_step=0)
    with pytest.raises(ValueError, match="final_sparsity"):
        kg.PolynomialDecay(0.0, bad, begin_step=0, end_step=10)
    with pytest.raises(ValueError, match="initial_sparsity"):
        kg.PolynomialDecay(bad, 0.5, begin_step=0, end_step=10)


def test_end_step_before_begin_step_is_an_error():
    with pytest.raises(ValueError, match="end_step"):
        kg.ConstantSparsity(0.5, begin_step=10, end_step=5)
    with pytest.raises(ValueError, match="end_step"):
        kg.PolynomialDecay(0.0, 0.5, begin_step=10, end_step=5)
    with pytest.raises(ValueError, match="end_step"):
        kg.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=-1)


@pytest.mark.parametrize("freq", [0, -3])
def test_nonpositive_frequency_is_an_error(freq):
    with pytest.raises(ValueError, match="frequency"):
        kg.ConstantSparsity(0.5, begin_step=0, frequency=freq)
    with pytest.raises(ValueError, match="frequency"):
        kg.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10, frequency=freq)


def test_other_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="begin_step"):
        kg.ConstantSparsity(0.5, begin_step=-1)
    with pytest.raises(ValueError, match="begin_step"):
        kg.ConstantSparsity(0.5, begin_step=1.5)
    with pytest.raises(ValueError, match="power"):
        kg.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10, power=0)


@pytest.mark.parametrize("bad", [object(), "ConstantSparsity", 0.5, (lambda step: (True, 0.5))])
def test_unknown_schedule_object_is_an_error(bad):
    with pytest.raises(ValueError, match="Unknown pruning schedule"):
        schedules.get_schedule(bad)


def test_unknown_schedule_config_is_an_error():
    with pytest.raises(ValueError, match="Unknown pruning schedule 'NoSuch'"):
        schedules.get_schedule({"class_name": "NoSuch", "config": {}})
    with pytest.raises(ValueError, match="class_name"):
        schedules.deserialize_schedule({"config": {}})


def test_wrapper_rejects_unknown_schedule():
    import keras
    with pytest.raises(ValueError, match="Unknown pruning schedule"):
        kg.PruneLowMagnitude(keras.layers.Dense(2), pruning_schedule=object())


# tf-mot objects, without tf-mot ------------------------------------------------
def _fake_tfmot_class(name, config, call=None):
    """A class that looks like tf-mot's (its module starts with the package)."""
    namespace = {"get_config": lambda self: {"class_name": name, "config": dict(config)}}
    if call is not None:
        namespace["__call__"] = lambda self, step: call(step)
    cls = type(name, (object,), namespace)
    cls.__module__ = ("tensorflow_model_optimization.python.core.sparsity.keras."
                      "pruning_schedule")
    return cls


def test_fake_tfmot_constant_sparsity_becomes_native_twin():
    cfg = {"target_sparsity": 0.6, "begin_step": 4, "end_step": 40, "frequency": 2}
    obj = _fake_tfmot_class("ConstantSparsity", cfg)()
    sched = schedules.get_schedule(obj)
    assert sched == kg.ConstantSparsity(0.6, begin_step=4, end_step=40, frequency=2)


def test_fake_tfmot_polynomial_decay_becomes_native_twin():
    cfg = {"initial_sparsity": 0.1, "final_sparsity": 0.8, "begin_step": 0,
           "end_step": 100, "power": 3, "frequency": 10}
    sched = schedules.get_schedule(_fake_tfmot_class("PolynomialDecay", cfg)())
    assert isinstance(sched, kg.PolynomialDecay) and sched.get_config()["config"] == cfg


def test_fake_tfmot_subclass_detected_through_mro():
    base = _fake_tfmot_class("PruningSchedule", {})
    sub = type("MySchedule", (base,), {
        "get_config": lambda self: {"class_name": "MySchedule", "config": {}},
        "__call__": lambda self, step: (step % 3 == 0, 0.25)})
    sub.__module__ = "user_code"
    sched = schedules.get_schedule(sub())
    assert isinstance(sched, kg.PruningSchedule)
    assert sched(3) == (True, 0.25) and sched(4) == (False, 0.25)
    assert sched.get_config() == {"class_name": "MySchedule", "config": {}}


def test_foreign_tfmot_schedule_is_called_as_is():
    obj = _fake_tfmot_class("StepSchedule", {"x": 1},
                            call=lambda step: (np.bool_(step >= 5), np.float32(0.4)))()
    sched = schedules.get_schedule(obj)
    should, sparsity = sched(7)
    assert should is True and sparsity == pytest.approx(0.4)
    assert sched(2)[0] is False
    assert sched.get_config() == {"class_name": "StepSchedule", "config": {"x": 1}}


def test_importing_keras_gap_does_not_import_tfmot_or_set_legacy_keras():
    assert "tensorflow_model_optimization" not in sys.modules, \
        "keras_gap must not import tf-mot"
    assert "TF_USE_LEGACY_KERAS" not in os.environ


def test_end_step_zero_warns_that_the_schedule_never_fires():
    import warnings
    with pytest.warns(UserWarning, match=r"end_step=0: this schedule never updates.*"
                                         r"begin_step=1, end_step=1"):
        schedule = kg.ConstantSparsity(0.5, begin_step=0, end_step=0)
    assert not any(schedule(step)[0] for step in range(1, 5))  # indeed never
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kg.ConstantSparsity(0.5, begin_step=1, end_step=1)
