"""Strip-and-export: SavedModel, sparse TFLite, ONNX, inspection and inference.

Example:
    >>> import keras_gap as kg
    >>> final = kg.strip_pruning(pruned)          # to_* also strip for you
    >>> kg.export.to_saved_model(final, "out/saved_model")
    >>> kg.export.to_tflite(final, "out/model.tflite", sparse=True,
    ...                     sample_inputs=x_test[:64])          # verified
    >>> kg.export.to_tflite(final, "out/model_int8.tflite", quantize="int8",
    ...                     representative_dataset=x_train[:300])
    >>> print(kg.export.inspect_tflite("out/model.tflite"))
    >>> kg.export.run_tflite("out/model_int8.tflite", x_test[:64]).outputs

Which layers get faster in TFLite (measured on x86, see
`keras_gap.export.tflite`): only Dense (FULLY_CONNECTED), with unstructured
or (4, 1)-block float32 sparsity and (16, 1)-block int8 sparsity (prune with
``block_size=kg.export.tflite_block_size(quantize)``). Convolutions get a
smaller file (DENSIFY at load time) but dense compute on x86.

Every backend exports the same files: under JAX or PyTorch the stripped model
is converted by the same TensorFlow code in a TensorFlow-backend subprocess
(`keras_gap.export._tf_subprocess`) and verified against the active backend.
"""

from keras_gap.export._tf_subprocess import ExportSubprocessError
from keras_gap.export.inspection import TFLiteInspection, TFLiteTensorInfo, inspect_tflite
from keras_gap.export.onnx import onnx_missing_packages, to_onnx
from keras_gap.export.runtime import (TFLiteOutput, choose_resolver, run_tflite,
                                      tflite_latency)
from keras_gap.export.saved_model import NByMCheck, check_n_by_m, to_saved_model
from keras_gap.export.tflite import (
    OPTIMIZE_FOR,
    QUANTIZE_MODES,
    SparseSlowerWarning,
    TFLiteExport,
    TFLiteVerificationError,
    tflite_block_size,
    to_tflite,
)

__all__ = [
    "ExportSubprocessError", "NByMCheck", "OPTIMIZE_FOR", "QUANTIZE_MODES",
    "SparseSlowerWarning", "TFLiteExport", "TFLiteInspection", "TFLiteOutput",
    "TFLiteTensorInfo", "TFLiteVerificationError", "check_n_by_m", "choose_resolver",
    "inspect_tflite", "onnx_missing_packages", "run_tflite", "tflite_block_size",
    "tflite_latency", "to_onnx", "to_saved_model", "to_tflite",
]
