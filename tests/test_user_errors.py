"""Errors a new user meets in the first hour say what was given, what is expected and
what to do (issue 14): input shapes for TFLite export, the callback a GaP model needs,
unknown layer names, the default schedule."""

import keras
import numpy as np
import pytest

import keras_gap as kg
from keras_gap.wrapper import collect_wrappers


def _cnn():
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                             keras.layers.Flatten(), keras.layers.Dense(10, name="logits")])


def _mlp():
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="a"),
                             keras.layers.Dense(8, name="b"), keras.layers.Dense(4, name="c")])


# --- to_tflite checks its inputs before the converter sees them ------------------------

@pytest.mark.core
@pytest.mark.parametrize("kwargs, message", [
    (dict(sample_inputs=np.zeros((64, 28, 28), "float32")),
     r"sample_inputs has shape \(64, 28, 28\); the model expects \(None, 28, 28, 1\)"
     r".*x\[\.\.\., None\]"),
    (dict(sample_inputs=np.zeros((28, 28, 1), "float32")),
     r"sample_inputs has shape \(28, 28, 1\); the model expects \(None, 28, 28, 1\)"
     r".*x\[None\]"),
    (dict(sample_inputs=np.zeros((4, 32, 32, 3), "float32")),
     r"sample_inputs has shape \(4, 32, 32, 3\); the model expects \(None, 28, 28, 1\)"),
    (dict(sample_inputs=np.full((2, 28, 28, 1), "a")),
     r"sample_inputs has dtype <U1; the model expects float32"),
    (dict(sample_inputs=[np.zeros((2, 28, 28, 1)), np.zeros((2, 3))]),
     r"sample_inputs gives 2 array\(s\); the model has 1 input\(s\)"),
    (dict(quantize="int8", representative_dataset=np.zeros((300, 28, 28), "uint8")),
     r"representative_dataset has shape \(300, 28, 28\); the model expects "
     r"\(None, 28, 28, 1\)"),
    (dict(quantize="int8",
          representative_dataset=lambda: iter([[np.zeros((1, 784), "float32")]])),
     r"an item of representative_dataset\(\) has shape \(1, 784\); the model expects "
     r"\(None, 28, 28, 1\)"),
    (dict(quantize="int8", representative_dataset=lambda: iter([])),
     r"representative_dataset is empty"),
])
def test_to_tflite_names_both_shapes(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kg.export.to_tflite(_cnn(), tmp_path / "m.tflite", **kwargs)
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.core
def test_to_tflite_checks_a_tf_data_batch(tmp_path):
    import tensorflow as tf
    x = np.zeros((32, 28, 28), "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(32, "int64"))).batch(8)
    with pytest.raises(ValueError, match=r"a batch of representative_dataset has shape "
                                         r"\(8, 28, 28\); the model expects \(None, 28, 28, 1\)"):
        kg.export.to_tflite(_cnn(), tmp_path / "m.tflite", quantize="int8",
                            representative_dataset=ds)


# --- the callback a model needs ----------------------------------------------------------

def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 8)).astype("float32"), rng.normal(size=(16, 4)).astype("float32")


@pytest.mark.core
def test_gap_model_without_callback_says_gap_callback():
    pruned = kg.prune_gap(_mlp(), num_partitions=2, steps_per_step=2)
    pruned.compile("sgd", "mse")
    x, y = _data()
    with pytest.raises(Exception, match=r"keras_gap\.GaPCallback\(\)") as info:
        pruned.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert "UpdatePruningStep()]" not in str(info.value)  # not the tf-mot advice
    if keras.backend.backend() == "jax":
        # Keras detached the variables for the failed JAX step: a clear error, not a
        # TypeError deep inside the trainer.
        with pytest.raises(RuntimeError, match="were lost when the earlier fit.*Rebuild"):
            pruned.fit(x, y, epochs=1, batch_size=4, verbose=0,
                       callbacks=[kg.GaPCallback(verbose=0)])
        return
    # Following the advice works (no second error, e.g. TensorFlow's "Creating variables
    # on a non-first call" from the half-traced step).
    pruned.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[kg.GaPCallback(verbose=0)])


@pytest.mark.core
def test_following_the_advice_after_a_failed_first_fit_trains():
    pruned = kg.prune_low_magnitude(_mlp())
    pruned.compile("adam", "mse")  # Adam: slot variables are created in the first trace
    x, y = _data()
    with pytest.raises(Exception, match=r"keras_gap\.UpdatePruningStep\(\)"):
        pruned.fit(x, y, epochs=1, batch_size=4, verbose=0)
    if keras.backend.backend() == "jax":
        with pytest.raises(RuntimeError, match="were lost when the earlier fit"):
            pruned.fit(x, y, epochs=1, batch_size=4, verbose=0,
                       callbacks=[kg.UpdatePruningStep()])
        return
    pruned.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[kg.UpdatePruningStep()])
    assert int(keras.ops.convert_to_numpy(collect_wrappers(pruned)[0].pruning_step)) == 4


@pytest.mark.core
def test_gap_model_with_update_pruning_step_says_gap_callback():
    pruned = kg.prune_gap(_mlp(), num_partitions=2, steps_per_step=2)
    pruned.compile("sgd", "mse")
    x, y = _data()
    with pytest.raises(ValueError, match=r"prepared by keras_gap\.prune_gap.*train it with "
                                         r"keras_gap\.GaPCallback\(\) instead of "
                                         r"UpdatePruningStep"):
        pruned.fit(x, y, epochs=1, batch_size=4, verbose=0,
                   callbacks=[kg.UpdatePruningStep()])


@pytest.mark.core
def test_plain_pruned_model_without_callback_says_update_pruning_step():
    pruned = kg.prune_low_magnitude(_mlp())
    pruned.compile("sgd", "mse")
    x, y = _data()
    with pytest.raises(Exception, match=r"keras_gap\.UpdatePruningStep\(\)"):
        pruned.fit(x, y, epochs=1, batch_size=4, verbose=0)


# --- unknown layer names list the layers that exist ------------------------------------

@pytest.mark.core
def test_keep_dense_unknown_layer_lists_prunable_layers():
    with pytest.raises(ValueError, match=r"`keep_dense` names layers that are not in the "
                                         r"model: \['logits'\]\. Prunable layers of model "
                                         r".*\['a', 'b', 'c'\]"):
        kg.prune_gap(_mlp(), num_partitions=2, keep_dense=["logits"])


@pytest.mark.core
def test_explicit_partition_unknown_layer_lists_prunable_layers():
    with pytest.raises(ValueError, match=r"Partition 1 names layer 'd'.*Prunable layers: "
                                         r"\['a', 'b', 'c'\]"):
        kg.prune_gap(_mlp(), partitioning=[["a", "b"], ["c", "d"]])


# --- the default schedule is tf-mot's -----------------------------------------------------

@pytest.mark.core
def test_prune_low_magnitude_default_schedule_is_tfmot_default():
    pruned = kg.prune_low_magnitude(_mlp())
    schedule = collect_wrappers(pruned)[0].pruning_schedule
    assert isinstance(schedule, kg.ConstantSparsity)
    config = schedule.get_config()["config"]
    assert config["target_sparsity"] == 0.5 and config["begin_step"] == 0
    assert config["frequency"] == 100
    assert "ConstantSparsity(0.5" in kg.prune_low_magnitude.__doc__
