"""tf-mot code runs unchanged: step numbering, layers, names, callbacks (issue 13).

tf-mot itself is only imported in subprocesses (importing it sets
TF_USE_LEGACY_KERAS=1 for the whole process).
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_gap as kg
from keras_gap.wrapper import collect_wrappers

HERE = os.path.dirname(__file__)
needs_tfmot = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_model_optimization") is None
    or importlib.util.find_spec("tf_keras") is None,
    reason="tensorflow-model-optimization and tf_keras are not installed "
           "(pip install -e '.[tfmot]')")


def np_(x):
    return keras.ops.convert_to_numpy(x)


def _run_tfmot(script, *args):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["KERAS_BACKEND"] = "tensorflow"
    out = subprocess.run([sys.executable, os.path.join(HERE, "subprocess_scripts", script),
                          *args], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# Step numbering ------------------------------------------------------------------------
SCHEDULES = [
    kg.ConstantSparsity(0.5, begin_step=0, frequency=4),
    kg.PolynomialDecay(0.1, 0.8, begin_step=2, end_step=10, frequency=3),
    kg.ConstantSparsity(0.6, begin_step=3, end_step=7, frequency=2),
]
STEPS = 12


def _keras_gap_trace(schedule):
    x = np.random.RandomState(0).rand(STEPS * 8, 16).astype("float32")
    y = (x.sum(1) > 8).astype("int32")
    model = keras.Sequential([
        keras.Input((16,)),
        kg.prune_low_magnitude(keras.layers.Dense(40), pruning_schedule=schedule),
        keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trace = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            wrapper = collect_wrappers(self.model)[0]
            trace.append([int(np_(wrapper.pruning_step)),
                          float((np_(wrapper.masks[0]) == 0).mean())])

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
              callbacks=[kg.UpdatePruningStep(), Record()])
    return trace


def _change_steps(trace):
    """[(pruning_step, sparsity)] at every batch where the mask changed."""
    out, last = [], 0.0
    for step, sparsity in trace:
        if sparsity != last:
            out.append((step, sparsity))
            last = sparsity
    return out


@pytest.mark.core
@pytest.mark.tfmot
@needs_tfmot
def test_schedules_fire_at_the_same_steps_as_tfmot():
    configs = [s.get_config() for s in SCHEDULES]
    tfmot_traces = _run_tfmot("tfmot_steps.py", json.dumps(configs), str(STEPS))["traces"]
    for schedule, theirs in zip(SCHEDULES, tfmot_traces):
        ours = _keras_gap_trace(schedule)
        assert [s for s, _ in ours] == [s for s, _ in theirs] == list(range(1, STEPS + 1))
        ours_changes, their_changes = _change_steps(ours), _change_steps(theirs)
        # Same batches; sparsities equal up to tf-mot rounding n*(1-s) where
        # keras-gap floors it (one weight of 640).
        assert [s for s, _ in ours_changes] == [s for s, _ in their_changes], (
            schedule, ours_changes, their_changes)
        for (_, a), (_, b) in zip(ours_changes, their_changes):
            assert a == pytest.approx(b, abs=1.5 / 640), (schedule, ours, theirs)


@pytest.mark.core
def test_first_batch_is_step_one():
    trace = _keras_gap_trace(kg.ConstantSparsity(0.5, begin_step=0, frequency=4))
    # step 0 never runs: the first update is at the 4th batch, as in tf-mot.
    assert _change_steps(trace) == [(4, 0.5)]
    trace = _keras_gap_trace(kg.ConstantSparsity(0.5, begin_step=1, frequency=100))
    assert _change_steps(trace) == [(1, 0.5)]
