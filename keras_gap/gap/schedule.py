"""`GaPPruningSchedule`: GaP's per-partition schedule with tf-mot's contract.

Time is cut into GaP *steps* of ``steps_per_step`` training steps. During
GaP step ``j`` (``0 <= j < rounds * num_partitions``) partition
``j % num_partitions`` is grown (dense, sparsity 0) and every other partition is
at its target sparsity. At boundary ``j`` the previously grown partition is
pruned back and the next one is grown; after the last boundary
(``j = rounds * num_partitions``) all partitions are at the target and masks
stay fixed (fine-tuning).

For a layer in partition ``p`` the schedule returns ``should_prune=True`` only
at boundaries where ``p`` changes (is grown or pruned back) and at the very
first step, so the masks of the other sparse partitions stay fixed.

Steps are numbered as in tf-mot: the first training batch is step 1, so the
default ``begin_step=1`` starts GaP (boundary 0) at the first batch, under
keras-gap's callbacks and under tf-mot's wrapper alike.
"""

import numbers

from keras import ops

from keras_gap.masks import validate_sparsity
from keras_gap.schedules import PruningSchedule, register_schedule


def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int; received {value!r}.")
    return int(value)


@register_schedule
class GaPPruningSchedule(PruningSchedule):
    """Schedule of one GaP partition (C-GaP rotation, then fine-tuning).

    Give either ``steps_per_step`` (training steps per GaP step) or
    ``epochs_per_step``; the latter is turned into steps by `GaPCallback` at
    the start of training (`resolve`). With tf-mot, use ``steps_per_step``.

    Args:
        partition: index of this schedule's partition, in [0, num_partitions).
        num_partitions: K, the number of partitions.
        target_sparsity: the layer's sparsity when its partition is not grown.
        rounds: how many times every partition is grown.
        steps_per_step: training steps per GaP step (T in steps).
        epochs_per_step: epochs per GaP step (T in epochs).
        finetune_steps: training steps of the final phase (for bookkeeping).
        finetune_epochs: epochs of the final phase (for bookkeeping).
        begin_step: the step at which GaP starts (boundary 0); >= 1, since
            the first training batch is step 1 (tf-mot's numbering).
        method: "cgap" or "pgap" (read by `GaPCallback`).
        distribution: how per-layer targets were chosen; "global" makes
            `GaPCallback` re-balance ratios at each prune-back.
        seed: seed of the random initial masks.

    Returns:
        Called with a step: ``(should_prune, sparsity)``.

    Example:
        >>> s = kg.GaPPruningSchedule(1, 4, 0.9, rounds=2, steps_per_step=100)
        >>> s(101)   # partition 1 is grown at the first boundary
        (True, 0.0)
        >>> s(201)   # ... and pruned back at the next
        (True, 0.9)
    """

    # Read by the missing-callback error (wrapper.missing_callback_error).
    required_callback = "GaPCallback"

    def __init__(self, partition, num_partitions, target_sparsity, rounds=1,
                 steps_per_step=None, epochs_per_step=None, finetune_steps=0,
                 finetune_epochs=0, begin_step=1, method="cgap",
                 distribution="uniform", seed=0):
        self.num_partitions = _positive_int("num_partitions", num_partitions)
        if not isinstance(partition, numbers.Integral) or not 0 <= partition < num_partitions:
            raise ValueError(f"`partition` must be an int in [0, {num_partitions}); "
                             f"received {partition!r}.")
        self.partition = int(partition)
        self.target_sparsity = validate_sparsity(target_sparsity, "target_sparsity")
        self.rounds = _positive_int("rounds", rounds)
        self.steps_per_step = _positive_int("steps_per_step", steps_per_step, True)
        self.epochs_per_step = _positive_int("epochs_per_step", epochs_per_step, True)
        if self.steps_per_step is None and self.epochs_per_step is None:
            raise ValueError("Give `steps_per_step` or `epochs_per_step` (> 0): how "
                             "long each partition stays grown.")
        for name, value in (("finetune_steps", finetune_steps),
                            ("finetune_epochs", finetune_epochs),
                            ("begin_step", begin_step)):
            if not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0; received {value!r}.")
        self.finetune_steps = int(finetune_steps)
        self.finetune_epochs = int(finetune_epochs)
        if begin_step < 1:
            raise ValueError(
                f"`begin_step` must be >= 1; received {begin_step!r}. Training steps "
                "are numbered from 1 as in tf-mot (the first batch is step 1): "
                "begin_step=1 starts GaP at the first batch.")
        self.begin_step = int(begin_step)
        if method not in ("cgap", "pgap"):
            raise ValueError(f"`method` must be 'cgap' or 'pgap'; received {method!r}.")
        self.method = method
        self.distribution = str(distribution)
        self.seed = int(seed)

    # Derived quantities ---------------------------------------------------------
    @property
    def num_gap_steps(self):
        """rounds * num_partitions: GaP steps before fine-tuning."""
        return self.rounds * self.num_partitions

    @property
    def end_step(self):
        """The last boundary (start of fine-tuning), in training steps."""
        self._require_steps()
        return self.begin_step + self.num_gap_steps * self.steps_per_step

    def total_epochs(self):
        """Epochs needed by the whole schedule (epoch-based schedules)."""
        if self.epochs_per_step is None:
            raise ValueError("This GaP schedule is step-based (steps_per_step="
                             f"{self.steps_per_step}); use total_steps().")
        return self.num_gap_steps * self.epochs_per_step + self.finetune_epochs

    def total_steps(self):
        """Training steps (batches) needed by the whole schedule (after `resolve`).

        The number of the last batch: the final boundary is the first batch
        of fine-tuning, at step ``end_step``.
        """
        return self.end_step - 1 + self.finetune_steps

    def resolve(self, steps_per_epoch):
        """Returns a step-based copy for ``steps_per_epoch`` training steps."""
        steps_per_epoch = _positive_int("steps_per_epoch", steps_per_epoch)
        if self.epochs_per_step is None:
            return self
        config = self.get_config()["config"]
        config["steps_per_step"] = self.epochs_per_step * steps_per_epoch
        config["finetune_steps"] = self.finetune_epochs * steps_per_epoch
        config["begin_step"] = self.begin_step
        return GaPPruningSchedule(**config)

    def _require_steps(self):
        if self.steps_per_step is None:
            raise ValueError(
                "This GaP schedule counts in epochs (epochs_per_step="
                f"{self.epochs_per_step}) and has not been resolved to steps. "
                "Train with keras_gap.GaPCallback (it resolves it from the number "
                "of steps per epoch), or give steps_per_step.")

    def grown_partition(self, step):
        """Index of the grown partition at ``step`` (None outside the rotation)."""
        self._require_steps()
        if step < self.begin_step:
            return None
        j = (step - self.begin_step) // self.steps_per_step
        return j % self.num_partitions if j < self.num_gap_steps else None

    def phase(self, step):
        """(round, gap_step) at ``step``; gap_step == num_gap_steps in fine-tuning."""
        self._require_steps()
        j = max(0, step - self.begin_step) // self.steps_per_step
        j = min(j, self.num_gap_steps)
        return j // self.num_partitions, j

    # tf-mot contract --------------------------------------------------------------
    def __call__(self, step):
        self._require_steps()
        k, p, s = self.num_partitions, self.partition, self.target_sparsity
        if isinstance(step, numbers.Integral):
            if step < self.begin_step:
                return False, s
            offset = step - self.begin_step
            j = offset // self.steps_per_step
            grown = j % k if j < self.num_gap_steps else None
            sparsity = 0.0 if grown == p else s
            at_boundary = offset % self.steps_per_step == 0 and j <= self.num_gap_steps
            involved = j == 0 or (j - 1) % k == p or grown == p
            return bool(at_boundary and involved), sparsity
        # Tensor step (tf-mot's wrapper calls schedules inside tf.function).
        step = ops.cast(step, "int64")
        offset = step - self.begin_step
        j = ops.floor_divide(offset, self.steps_per_step)
        in_rotation = ops.logical_and(ops.greater_equal(j, 0),
                                      ops.less(j, self.num_gap_steps))
        grown_here = ops.logical_and(in_rotation, ops.equal(ops.mod(j, k), p))
        at_boundary = ops.logical_and(
            ops.logical_and(ops.greater_equal(offset, 0),
                            ops.equal(ops.mod(offset, self.steps_per_step), 0)),
            ops.less_equal(j, self.num_gap_steps))
        involved = ops.logical_or(
            ops.logical_or(ops.equal(j, 0), ops.equal(ops.mod(j - 1, k), p)),
            grown_here)
        sparsity = ops.where(grown_here, 0.0, s)
        return ops.logical_and(at_boundary, involved), ops.cast(sparsity, "float32")

    def get_config(self):
        return {"class_name": "GaPPruningSchedule", "config": {
            "partition": self.partition, "num_partitions": self.num_partitions,
            "target_sparsity": self.target_sparsity, "rounds": self.rounds,
            "steps_per_step": self.steps_per_step,
            "epochs_per_step": self.epochs_per_step,
            "finetune_steps": self.finetune_steps,
            "finetune_epochs": self.finetune_epochs, "begin_step": self.begin_step,
            "method": self.method, "distribution": self.distribution,
            "seed": self.seed}}
