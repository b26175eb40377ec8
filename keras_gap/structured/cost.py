"""`TrainingCost`: training MACs spent by a (sparse) fit, relative to dense training.

Every training step is charged the forward MACs of one example (counted by
`flops_report`, one mechanism) with each pruned kernel scaled by its current
mask density: a GaP partition while it is grown, GMP before its first prune
and every unwrapped layer count in full, sparse kernels by the fraction of
their mask that is 1. Training is taken as forward + backward = 3x the forward
MACs (gradients with respect to activations and to weights each cost about
one forward pass, and a sparse kernel spends both at its density), so the
ratio to dense training is the ratio of the forward counts.

Masks are read only when they change (`PruneLowMagnitude.mask_version`), not
at every step, so the callback adds no per-step device synchronisation.
"""

import warnings

import keras

from keras_gap.structured.flops import flops_report
from keras_gap.wrapper import collect_wrappers

_BACKWARD_FACTOR = 3  # forward + gradients w.r.t. inputs and w.r.t. weights


class TrainingCost(keras.callbacks.Callback):
    """Integrates the training MACs of ``fit`` relative to dense training.

    Add it to the callbacks of any ``fit`` (pruned with `UpdatePruningStep`
    or `GaPCallback`, or dense), in any order. After training, ``relative``
    is the training MACs spent divided by those of training the same
    architecture dense for the same number of steps (1.0 for a dense model,
    about 0.25 for a model whose pruned kernels stayed at 75% sparsity, more
    for GMP, which starts dense). The epoch logs (and so ``History``) get
    ``train_macs_ratio``: the same ratio over all steps so far. One callback
    accumulates over every fit it is passed to.

    Layers `flops_report` cannot count (custom layers with weights) are left
    out of both sides of the ratio, with a warning naming them. With
    ``structure="channel"`` a kernel is charged by its own kept output
    channels; the input channels its producer lost are not subtracted, so the
    ratio is an upper bound there (the materialized model's MACs, from
    `flops_report`, shrink with both).

    Args:
        log_name: key of the ratio in the epoch logs.
        sequence_length: length of an input sequence, for models whose inputs
            have an unknown length (KerasHub text models; see `flops_report`).

    Returns:
        A Keras callback with, after training: ``relative`` (float),
        ``steps`` (training steps counted), ``train_macs`` (training MACs of
        one example per step, summed over the steps: multiply by the batch
        size for the total) and ``dense_train_macs`` (the same for dense
        training).

    Example:
        >>> cost = kg.TrainingCost()
        >>> pruned.fit(x, y, epochs=2, callbacks=[kg.UpdatePruningStep(), cost])
        >>> cost.relative                            # e.g. 0.41
        >>> history.history["train_macs_ratio"]     # per epoch, cumulative
    """

    # Nothing happens at batch end: Keras may dispatch batch ends asynchronously.
    async_safe = True

    def __init__(self, log_name="train_macs_ratio", sequence_length=None):
        super().__init__()
        if not isinstance(log_name, str) or not log_name:
            raise ValueError(f"`log_name` must be a non-empty string; received {log_name!r}.")
        if sequence_length is not None and (not isinstance(sequence_length, int)
                                            or sequence_length < 1):
            raise ValueError("`sequence_length` must be a positive int or None; received "
                             f"{sequence_length!r}.")
        self.log_name = log_name
        self.sequence_length = sequence_length
        self.steps = 0
        self._forward_macs = 0.0   # sum over steps of one example's forward MACs
        self._dense_macs = None    # one example's forward MACs, dense
        self._model_id = None

    # Results ---------------------------------------------------------------------
    @property
    def relative(self):
        """Training MACs spent / dense training MACs for the same steps (None before a step)."""
        if not self.steps or not self._dense_macs:
            return None
        return self._forward_macs / (self.steps * self._dense_macs)

    @property
    def train_macs(self):
        return _BACKWARD_FACTOR * self._forward_macs

    @property
    def dense_train_macs(self):
        return _BACKWARD_FACTOR * self.steps * (self._dense_macs or 0)

    # Setup -----------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        model = self.model
        if self._model_id not in (None, id(model)):
            raise ValueError(
                "This TrainingCost already counted the training of another model; "
                "use one TrainingCost per model.")
        self._model_id = id(model)
        report = flops_report(model, sequence_length=self.sequence_length)
        if report.not_counted:
            hint = ("" if self.sequence_length is not None else
                    " For inputs of unknown length (token sequences) pass "
                    "TrainingCost(sequence_length=...).")
            warnings.warn(
                "TrainingCost leaves out layers whose MACs flops_report cannot count: "
                f"{', '.join(report.not_counted)}.{hint}", stacklevel=2)
        weight_macs = {path: macs for row in report.rows for path, macs in row.weight_macs}
        self._dense_macs = report.macs
        self._wrappers = collect_wrappers(model)
        # [(wrapper, [MACs of each pruned weight])]; those MACs scale with density.
        self._scaled = [(w, [weight_macs.get(v.path, 0) for v in w.pruned_weights])
                        for w in self._wrappers]
        self._fixed_macs = report.macs - sum(sum(m) for _, m in self._scaled)
        # Pruning callbacks edit masks in on_train_batch_begin. When they come
        # before this callback in the list (they mark the wrappers active in
        # their on_train_begin, which then ran first), an edit is seen in the
        # same batch; otherwise at the next one, and the batch between is
        # re-charged at the new densities.
        self._edits_seen_first = any(w.step_callback_active for w in self._wrappers)
        self._versions = self._mask_versions()
        self._step_macs = self._read_step_macs()
        self._last_steps = 0

    def _mask_versions(self):
        return [w.mask_version for w in self._wrappers]

    def _read_step_macs(self):
        """Forward MACs of one example at the current mask densities."""
        if not self._wrappers:
            return float(self._dense_macs)
        self.model  # JAX: sync the trainer's state into the variables first.
        macs = float(self._fixed_macs)
        for wrapper, weight_macs in self._scaled:
            for m, (size, nonzero) in zip(weight_macs, wrapper.mask_counts()):
                macs += m * nonzero / size if size else m
        return macs

    def _masks_changed(self):
        versions = self._mask_versions()
        if versions == self._versions:
            return False
        self._versions = versions
        return True

    # Counting --------------------------------------------------------------------
    def on_train_batch_begin(self, batch, logs=None):
        if self._masks_changed():
            self._recharge_last(self._read_step_macs())
        steps = int(getattr(self.model, "steps_per_execution", 1) or 1)
        total = (self.params or {}).get("steps")
        if total:
            steps = max(min(steps, total - batch), 1)
        self._forward_macs += steps * self._step_macs
        self.steps += steps
        self._last_steps = steps

    def _recharge_last(self, new_step_macs):
        """New densities: when the edit came after this callback's batch
        begin, the last batch already ran with them."""
        if not self._edits_seen_first:
            self._forward_macs += (new_step_macs - self._step_macs) * self._last_steps
        self._step_macs = new_step_macs

    def _settle(self):
        if self._masks_changed():
            self._recharge_last(self._read_step_macs())

    def on_epoch_end(self, epoch, logs=None):
        self._settle()
        if logs is not None and self.relative is not None:
            logs[self.log_name] = self.relative

    def on_train_end(self, logs=None):
        self._settle()
        self._last_steps = 0
