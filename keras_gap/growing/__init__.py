"""Growing efficient networks (Yuan, Savarese & Maire, ICLR 2021) in Keras 3.

Channel and residual-block gates trained by structured continuous
sparsification, grown from a seed architecture toward a cost budget, then
materialized into a plain, smaller model:

* `gates`: the `Gate` layer (stochastic binary gates, straight-through) and
  `Budget`;
* `gating`: `add_gates(space, ...)` and `GateStructure` (cost shares and the
  expected / sampled / final inference cost);
* `callback`: `GrowingCallback` (temperature rounds, budget-aware penalty,
  cost logs);
* `finalize`: `finalize(gated)` (hard gates folded, then `kg.materialize`).
"""

from keras_gap.growing.callback import GrowingCallback
from keras_gap.growing.finalize import finalize
from keras_gap.growing.gates import ApplyGate, Budget, Gate
from keras_gap.growing.gating import GateStructure, add_gates

__all__ = ["ApplyGate", "Budget", "Gate", "GateStructure", "GrowingCallback", "add_gates", "finalize"]
