"""keras-gap: sparse training for Keras 3 (GaP, gradual pruning, FGGP, export).

The public API mirrors ``tfmot.sparsity.keras``: a tf-mot user migrates by
changing the import.

Example:
    >>> import keras, keras_gap as kg
    >>> pruned = kg.prune_low_magnitude(model, pruning_schedule=
    ...     kg.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=2000))
    >>> pruned.compile("adam", "sparse_categorical_crossentropy")
    >>> pruned.fit(x, y, callbacks=[kg.UpdatePruningStep()])
    >>> final = kg.strip_pruning(pruned)
    >>> print(kg.sparsity_report(final))
"""

from keras_gap import console  # first: stdlib only, imported before Keras/TensorFlow

console._from_environment()  # opt-in (KERAS_GAP_QUIET=1) only; see keras_gap/console.py

from keras_gap import (criteria, datasets, distributions, export, gradients, masks,  # noqa: E402
                       oneshot, registry, structured)
from keras_gap import growing  # noqa: E402
from keras_gap.callbacks import PruningSummaries, UpdatePruningStep
from keras_gap.inplace import load_model
from keras_gap.optimizer_wrappers import MaskedOptimizer
from keras_gap.gap import (GaPCallback, GaPPruningSchedule, gap_partitions,
                           gap_total_epochs, prune_gap)
from keras_gap.prune import prune_low_magnitude, prune_scope, strip_pruning
from keras_gap.pruning_policy import KeepDense, PruneForLatencyOnXNNPack, PruningPolicy
from keras_gap.registry import PrunableLayer
from keras_gap.report import SparsityReport, sparsity_report
from keras_gap.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from keras_gap.structured import (FlopsReport, TrainingCost, channel_groups, flops_report,
                                  materialize)
from keras_gap.wrapper import PruneLowMagnitude

__version__ = "0.1.0"

__all__ = [
    "ConstantSparsity", "FlopsReport", "GaPCallback", "GaPPruningSchedule", "MaskedOptimizer",
    "KeepDense", "PolynomialDecay", "PrunableLayer", "PruneForLatencyOnXNNPack",
    "PruneLowMagnitude", "PruningPolicy",
    "PruningSchedule", "PruningSummaries", "SparsityReport",
    "TrainingCost", "UpdatePruningStep", "channel_groups", "criteria", "datasets",
    "distributions", "export", "flops_report", "gap_partitions", "gap_total_epochs", "gradients",
    "growing", "load_model", "masks", "materialize", "oneshot", "prune_gap", "prune_low_magnitude", "prune_scope",
    "registry", "sparsity_report", "strip_pruning", "structured",
]
