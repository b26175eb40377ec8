"""Structured (channel) sparsity: one channel analysis, channel groups, materialize.

* `graph`: `analyze(model)` / `channel_groups(model)`, the one trace of which
  output channels are removed together.
* `materialize`: `materialize(model)`, a smaller plain Keras model without
  the removed channels.
"""

from keras_gap.structured.graph import ChannelGraph, ChannelGroup, analyze, channel_groups

__all__ = ["ChannelGraph", "ChannelGroup", "analyze", "channel_groups"]
