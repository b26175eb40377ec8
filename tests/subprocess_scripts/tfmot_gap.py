"""Run in a subprocess: tf-mot itself trains a tf_keras model with GaPPruningSchedule.

Prints one JSON line: per training step, the mask sparsity of every layer after the step.
"""

import json
import os

os.environ["KERAS_BACKEND"] = "tensorflow"

import numpy as np
import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS=1
import tf_keras

import keras_gap as kg

STEPS_PER_STEP, K, TARGET = 5, 2, 0.8
layers_in_partition = {"d0": 0, "d1": 0, "d2": 1, "d3": 1}

tf_keras.utils.set_random_seed(0)
x = np.random.rand(320, 16).astype("float32")
y = (x.sum(1) > 8).astype("int32")
layers = [tf_keras.Input((16,))]
for name, width in (("d0", 32), ("d1", 32), ("d2", 32), ("d3", 2)):
    # tf-mot and keras-gap both count training steps from 1: begin_step=1 (the default)
    # starts GaP at the first batch.
    schedule = kg.GaPPruningSchedule(layers_in_partition[name], K, TARGET, rounds=1,
                                     steps_per_step=STEPS_PER_STEP, begin_step=1)
    layers.append(tfmot.sparsity.keras.prune_low_magnitude(
        tf_keras.layers.Dense(width, name=name), pruning_schedule=schedule))
model = tf_keras.Sequential(layers)
model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))

trace = []


class Record(tf_keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        row = {}
        for layer in self.model.layers:
            # tf-mot's optimizer step updates masked entries too (it re-masks in
            # the next forward pass), so read the masks themselves.
            (_, mask, _), = layer.pruning_vars
            row[layer.layer.name] = float((mask.numpy() == 0).mean())
        trace.append(row)


model.fit(x, y, batch_size=32, epochs=2, verbose=0,
          callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), Record()])
schedule_config = model.layers[0].pruning_schedule.get_config()
print(json.dumps({"trace": trace, "config": schedule_config,
                  "legacy": os.environ.get("TF_USE_LEGACY_KERAS")}))
