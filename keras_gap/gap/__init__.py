"""Scheduled grow-and-prune (GaP): schedule, partitioning, one-call API, step engine, callback."""

from keras_gap.gap.api import gap_partitions, gap_total_epochs, prune_gap
from keras_gap.gap.callback import GaPCallback
from keras_gap.gap.engine import GaPEngine
from keras_gap.gap.partition import partition_layers
from keras_gap.gap.ray_runner import PGaPRunner  # Ray itself is imported lazily
from keras_gap.gap.schedule import GaPPruningSchedule
from keras_gap.gap.step_lr import StepLR

__all__ = ["GaPCallback", "GaPEngine", "GaPPruningSchedule", "PGaPRunner", "gap_partitions",
           "gap_total_epochs", "partition_layers", "prune_gap", "StepLR"]
