"""`GrowingCallback`: temperature, budget penalty and cost accounting of growing networks.

Schedule (Continuous Sparsification's, per epoch; the planned epochs are
split into ``rounds`` equal rounds of R epochs):

* temperature: ``beta = final_temperature ** (e / (R - 1))`` at epoch ``e`` of
  its round (1 at a round's start, ``final_temperature`` at its end);
* at the end of every round but the last, scores are clipped and beta
  restarts: ``s <- min(beta * s, initial_score)`` (the soft gates keep their
  value, the "on" structures are reset to the seed's confidence);
* freezing (``freeze_fraction``, default 0.3): the last ``round(freeze_fraction * epochs)``
  epochs train the weights of the hard-gate architecture (no sampling, no
  score gradient, no penalty); the temperature rounds span the epochs before;
* budget penalty: the loss adds ``lambda * sum_g cost_g * sigmoid(beta * s_g)``
  over every structure g (channel of a gated group, residual block), with
  ``cost_g`` its share of the full space's inference MACs (or parameters
  for ``Budget(params=...)``; see `GateStructure.costs`);
* lambda adaptation (a proportional-integral controller), every
  ``update_freq`` steps (10) and at every epoch end, with ``e = (r - t) / t``, ``r`` the
  hard-gate (finalized) cost ratio and ``t`` the target:
  ``I <- clip(I + penalty_rate * e, -100, 100)``,
  ``lambda <- clip(I + penalty_gain * e, -100, 100)``:
  raised while over budget, lowered while under, below zero under budget
  (then the penalty rewards growing, cheap structures most). ``I`` starts at
  ``penalty`` (default 0).

Cost accounting (epoch logs, so the progress bar, ``History`` and
TensorBoard): ``flops`` the expected inference MACs ratio of the gated network
(gate probabilities ``sigmoid(beta * s)``), ``flops_sampled`` that of the last
step's sampled gates, ``flops_final`` that of the hard gates (what `finalize`
gives), ``train_flops`` the running training MACs spent on active structures
relative to training the full space (each epoch charged the mean of its
expected ratio at its start and end: the expected cost of the sampled
networks), ``channels`` / ``blocks`` the active gated channels and blocks,
``beta`` and ``penalty`` (lambda). On this hardware the wall time does not
fall during training: gated-off structures are still computed (multiplied by
0); the savings are real only once `finalize` removes them.
"""

import math
import os

import keras
import numpy as np

from keras_gap.growing import gating
from keras_gap import optimizer_state
from keras_gap.optimizer_wrappers import base_optimizer
from keras_gap.growing.gates import (BLOCK, EPOCH, PENALTY_INTEGRAL, TOTAL_EPOCHS, TRAIN_COST,
                                     TRAIN_EPOCHS)

_LAMBDA_RANGE = (-100.0, 100.0)


class GrowingCallback(keras.callbacks.Callback):
    """Drives the temperature and the budget penalty of a gated model.

    Use it in every ``fit`` of a model from `add_gates`. The schedule's state
    (epoch, planned epochs, beta, lambda, training cost so far) lives in the
    model's gate variables, so a gated model saved to ``.keras`` and loaded
    continues the same schedule (pass a new callback to the resumed ``fit``).

    Gate scores (variables named ``gate_score``) are trained by the model's
    optimizer, which this callback tells to skip them in weight decay (as
    ``optimizer.exclude_from_weight_decay(var_names=["gate_score"])`` would).
    Their step size is the optimizer's learning rate: a larger
    ``initial_score`` (`add_gates`) makes structures switch more slowly, a
    larger ``penalty`` makes the budget pull harder.

    Args:
        final_temperature: beta at the end of each round (> 1).
        rounds: number of rounds (int >= 1).
        epochs: planned epochs of the whole schedule; None takes the
            ``epochs`` of the first ``fit`` (saved in the model).
        penalty: initial lambda (and integral term) when a budget is set.
        penalty_rate: integral gain: step of the integral term per update
            (>= 0).
        penalty_gain: proportional gain (>= 0); 0 and 0 keep lambda fixed.
        update_freq: an int N (default 10): adapt lambda every N training
            steps as well as at each epoch end (reads the scores: one device
            sync per update), or "epoch": at epoch ends only.
        log_dir: directory for TensorBoard scalars (``<log_dir>/growing``;
            needs TensorFlow installed), or None.
        freeze_fraction: share of the planned epochs, at the end, trained with
            the architecture fixed (in [0, 1); default 0.3; 0: never): from epoch
            ``epochs - round(freeze_fraction * epochs)`` on, the gates are
            their hard values in training too (no sampling), scores get no
            gradient and the penalty is off; the weights train on. The
            temperature schedule (and its rounds) runs over the epochs
            before, so beta reaches ``final_temperature`` when the
            architecture freezes. The default, 0.3, is the measured best on
            the validation split of benchmarks/growing_diagnosis.py (10
            epochs, 50% FLOPs budget: 0.860 against 0.851 with 0; dense
            0.856); it is the paper's method without a separate fine-tuning
            stage: the grown network's weights keep training in the same run.

    Returns:
        A Keras callback.

    Example:
        >>> gated.fit(x, y, epochs=10,
        ...           callbacks=[kg.growing.GrowingCallback(final_temperature=200,
        ...                                                 freeze_fraction=0.3)])
    """

    def __init__(self, final_temperature=200.0, rounds=1, epochs=None, penalty=0.0,
                 penalty_rate=0.05, penalty_gain=2.0, update_freq=10, log_dir=None,
                 freeze_fraction=0.3):
        super().__init__()
        if isinstance(freeze_fraction, bool) or not isinstance(
                freeze_fraction, (int, float)) or not 0 <= freeze_fraction < 1:
            raise ValueError("`freeze_fraction` must be a number in [0, 1); received "
                             f"{freeze_fraction!r}.")
        self.freeze_fraction = float(freeze_fraction)
        if isinstance(final_temperature, bool) or not isinstance(
                final_temperature, (int, float)) or final_temperature <= 1:
            raise ValueError("`final_temperature` must be a number > 1; received "
                             f"{final_temperature!r}.")
        for name, value, low in (("rounds", rounds, 1), ("epochs", epochs, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise ValueError(f"`{name}` must be an int >= {low}; received {value!r}.")
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)):
            raise ValueError(f"`penalty` must be a number; received {penalty!r}.")
        for name, value in (("penalty_rate", penalty_rate), ("penalty_gain", penalty_gain)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0; received {value!r}.")
        self.penalty_gain = float(penalty_gain)
        if update_freq != "epoch" and (isinstance(update_freq, bool) or not isinstance(
                update_freq, int) or update_freq < 1):
            raise ValueError("`update_freq` must be 'epoch' or a positive int; received "
                             f"{update_freq!r}.")
        self.update_freq = update_freq
        self._steps = 0
        self._frozen_now = False
        if log_dir is not None and (not isinstance(log_dir, (str, os.PathLike))
                                    or not str(log_dir)):
            raise ValueError(f"`log_dir` must be a directory path or None; received "
                             f"{log_dir!r}.")
        self.final_temperature = float(final_temperature)
        self.rounds = rounds
        self.epochs = epochs
        self.penalty = float(penalty)
        self.penalty_rate = float(penalty_rate)
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self._writer = None

    # State in the model ------------------------------------------------------------
    def _state(self):
        return np.array(keras.ops.convert_to_numpy(self.gates[0].schedule), dtype=np.float64)

    def _set_state(self, state):
        for g in self.gates:
            g.schedule.assign(state.astype("float32"))

    def _assign(self, name, value):
        for g in self.gates:
            getattr(g, name).assign(value)

    def temperature(self, epoch):
        """beta at schedule epoch ``epoch`` (0-based)."""
        per_round = self._per_round()
        position = min(epoch - per_round * min(epoch // per_round, self.rounds - 1),
                       per_round - 1)
        return self.final_temperature ** (position / max(per_round - 1, 1))

    def growth_epochs(self):
        """Epochs before the architecture freezes (all planned epochs without
        ``freeze_fraction``; at least 1)."""
        frozen = int(round(self.freeze_fraction * self._total))
        return max(1, self._total - frozen)

    def _per_round(self):
        return max(1, math.ceil(self.growth_epochs() / self.rounds))

    def _frozen(self):
        return float(keras.ops.convert_to_numpy(self.gates[0].frozen)) > 0.5

    def _freeze(self):
        """Fixes the architecture: hard gates in training, no score gradient, no penalty.
        Scores are set to +-initial_score (same hard gates) and their optimizer slots
        (momentum, Adam moments) zeroed, so that no step moves them afterwards."""
        optimizer = getattr(self.model, "optimizer", None)
        for g in self.gates:
            on = gating.hard_gates(g) > 0
            g.set_scores(np.where(on, g.initial_score, -g.initial_score).astype("float32"))
            g.frozen.assign(1.0)
            optimizer_state.reset_slots(optimizer, g.score)
        self._assign("beta", self.final_temperature)

    # Keras hooks ---------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        model = self.model
        self.gates = gating.gates_of(model)
        if not self.gates:
            raise ValueError(
                f"GrowingCallback: model {model.name!r} has no growing gates; make it with "
                "keras_gap.growing.add_gates(space, ...) and fit that model.")
        self.structure = gating.GateStructure(model)
        self.kind = self.gates[0].budget_kind
        self.target = self.gates[0].budget
        state = self._state()
        if state[TOTAL_EPOCHS] == 0:
            total = self.epochs or int((self.params or {}).get("epochs") or 1)
            state[TOTAL_EPOCHS] = total
            state[PENALTY_INTEGRAL] = self.penalty
            self._set_state(state)
            self._assign("penalty", self.penalty if self.kind is not None else 0.0)
        self._total = int(state[TOTAL_EPOCHS])
        self._exclude_from_weight_decay(model)
        if self.log_dir is not None and self._writer is None:
            import tensorflow as tf  # TensorBoard's writer; lazily imported.
            os.makedirs(self.log_dir, exist_ok=True)
            self._tf = tf
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "growing"))

    def _exclude_from_weight_decay(self, model):
        """Gate scores get no weight decay (Continuous Sparsification's setting).

        ``Optimizer.exclude_from_weight_decay`` refuses a built optimizer and
        Keras builds it before callbacks start on some backends, so the score
        variables are added to the optimizer's exclusion set directly; the
        train step, traced at its first call, reads it.
        """
        # The optimizer that applies the decay (inside LossScaleOptimizer and
        # keras-gap's wrappers, which hide `weight_decay`).
        opt = base_optimizer(getattr(model, "optimizer", None))
        if opt is None or not getattr(opt, "weight_decay", None):
            return
        keys = {opt._var_key(g.score) for g in self.gates}
        opt._exclude_from_weight_decay = set(
            getattr(opt, "_exclude_from_weight_decay", None) or ()) | keys
        cache = getattr(opt, "_exclude_from_weight_decay_cache", None)
        if cache is not None:
            for key in keys:
                cache.pop(key, None)

    def on_epoch_begin(self, epoch, logs=None):
        self.model  # JAX: sync the trainer's state before editing variables.
        e = int(self._state()[EPOCH])
        if e >= self.growth_epochs():
            if not self._frozen():
                self._freeze()
        else:
            self._assign("beta", self.temperature(e))
        self._frozen_now = self._frozen()
        self._begin_ratio = self.structure.ratio(
            [gating.soft_gates(g) for g in self.gates], "flops")

    def on_epoch_end(self, epoch, logs=None):
        self.model  # JAX: sync the trainer's state before reading it.
        gates, structure = self.gates, self.structure
        soft = [gating.soft_gates(g) for g in gates]
        hard = [gating.hard_gates(g) for g in gates]
        expected = structure.ratio(soft, "flops")
        values = {"flops": expected,
                  "flops_sampled": structure.ratio([gating.sampled_gates(g) for g in gates],
                                                   "flops"),
                  "flops_final": structure.ratio(hard, "flops")}
        state = self._state()
        state[TRAIN_COST] += 0.5 * (self._begin_ratio + expected)
        state[TRAIN_EPOCHS] += 1
        values["train_flops"] = state[TRAIN_COST] / state[TRAIN_EPOCHS]
        channels, blocks = structure.active(hard)
        values["channels"] = channels
        if any(g.kind == BLOCK for g in gates):
            values["blocks"] = blocks
        values["beta"] = float(keras.ops.convert_to_numpy(gates[0].beta))
        if self.kind is not None:
            values["penalty"] = float(keras.ops.convert_to_numpy(gates[0].penalty))
            r = (self.structure.ratio(hard, self.kind) if self._frozen()
                 else self._adapt_penalty(hard))
            state[PENALTY_INTEGRAL] = self._state()[PENALTY_INTEGRAL]
            if self.kind == "params":
                values["params_final"] = r
        state[EPOCH] += 1
        e = int(state[EPOCH])
        if (e % self._per_round() == 0 and e < self._per_round() * self.rounds
                and e < self.growth_epochs()):
            self._end_round(values["beta"])
        self._set_state(state)
        values = {k: (int(v) if k in ("channels", "blocks") else float(v))
                  for k, v in values.items()}
        if logs is not None:
            logs.update(values)
        if self._writer is not None:
            with self._writer.as_default(step=e):
                for tag, value in values.items():
                    self._tf.summary.scalar(f"growing/{tag}", value)
            self._writer.flush()

    def _adapt_penalty(self, hard):
        """One lambda update from the hard-gate cost ratio; returns the ratio."""
        r = self.structure.ratio(hard, self.kind)
        e = (r - self.target) / self.target
        state = self._state()
        state[PENALTY_INTEGRAL] = np.clip(state[PENALTY_INTEGRAL] + self.penalty_rate * e,
                                          *_LAMBDA_RANGE)
        self._set_state(state)
        self._assign("penalty", float(np.clip(state[PENALTY_INTEGRAL] + self.penalty_gain * e,
                                              *_LAMBDA_RANGE)))
        return r

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq == "epoch" or self.kind is None:
            return
        self._steps += 1
        if self._steps % self.update_freq == 0 and not self._frozen_now:
            self.model  # JAX: sync the trainer's state before reading / editing it.
            self._adapt_penalty([gating.hard_gates(g) for g in self.gates])

    def _end_round(self, beta):
        for g in self.gates:
            s = np.asarray(keras.ops.convert_to_numpy(g.scores()), dtype=np.float64)
            g.set_scores(np.minimum(beta * s, g.initial_score).astype("float32"))
