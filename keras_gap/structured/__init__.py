"""Structured (channel) sparsity: one channel analysis, channel groups, materialize.

* `graph`: `analyze(model)` / `channel_groups(model)`, the one trace of which
  output channels are removed together.
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

__all__ = ["ChannelGraph", "ChannelGroup", "FlopsReport", "LayerFlops", "MaterializeReport",
           "TrainingCost", "analyze", "channel_groups", "flops_report", "materialize"]
