"""Run in a subprocess: prints the public names of ``tfmot.sparsity.keras`` as JSON."""

import json
import os

os.environ["KERAS_BACKEND"] = "tensorflow"

import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS=1

print(json.dumps(sorted(n for n in dir(tfmot.sparsity.keras) if not n.startswith("_"))))
