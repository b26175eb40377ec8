"""Run in a subprocess: tf-mot trains a tf_keras MLP and records, after every
batch, the mask sparsity of each layer and the wrapper's ``pruning_step``.

Usage: python tfmot_steps.py '<json list of schedule configs>' STEPS
Prints one JSON line: {"traces": [[[pruning_step, sparsity], ...] per schedule]}.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"

import numpy as np
import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS=1
import tf_keras

sparsity_api = tfmot.sparsity.keras
configs, steps = json.loads(sys.argv[1]), int(sys.argv[2])
x = np.random.RandomState(0).rand(steps * 8, 16).astype("float32")
y = (x.sum(1) > 8).astype("int32")

traces = []
for config in configs:
    schedule = getattr(sparsity_api, config["class_name"])(**config["config"])
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.Input((16,)),
        sparsity_api.prune_low_magnitude(tf_keras.layers.Dense(40), pruning_schedule=schedule),
        tf_keras.layers.Dense(2)])
    model.compile("sgd", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trace = []

    class Record(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            layer = self.model.layers[0]
            (_, mask, _), = layer.pruning_vars
            trace.append([int(layer.pruning_step.numpy()), float((mask.numpy() == 0).mean())])

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
              callbacks=[sparsity_api.UpdatePruningStep(), Record()])
    traces.append(trace)
print(json.dumps({"traces": traces}))
