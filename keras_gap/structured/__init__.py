"""Structured (channel) sparsity: one channel analysis, channel groups, materialize.

* `trace`: `trace.trace(model)` -> `Trace`, the one walk of a model's layer calls (nested
  models expanded, wrappers seen through) that the channel analysis and the
  MAC counter both read.
* `graph`: `analyze(model)` / `channel_groups(model)`, which output channels
  are removed together.
* `materialize`: `materialize(model)`, a smaller plain Keras model without
  the removed channels.
* `flops`: `flops_report(model, reference=None)`, parameters and MACs per layer.
* `cost`: `TrainingCost`, a callback that integrates training MACs relative to
  dense training.
"""

from keras_gap.structured.cost import TrainingCost
from keras_gap.structured.flops import FlopsReport, LayerFlops, flops_report
from keras_gap.structured.graph import ChannelGraph, ChannelGroup, analyze, channel_groups
from keras_gap.structured.materialize import MaterializeReport, materialize
from keras_gap.structured.trace import Call, Trace

__all__ = ["Call", "ChannelGraph", "ChannelGroup", "FlopsReport", "LayerFlops",
           "MaterializeReport", "Trace", "TrainingCost", "analyze", "channel_groups",
           "flops_report", "materialize"]
