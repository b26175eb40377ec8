"""`GaPCallback`: where GaP decides which partition is dense.

At every GaP boundary (see `GaPPruningSchedule`) it prunes the previously
grown partition back by the criterion (magnitude by default), grows the next
one (masks become ones; the regrown weights start at exactly zero because they
were zeroed when pruned), and after the last boundary prunes the last grown
partition and leaves all masks fixed for fine-tuning.

P-GaP (``method="pgap"``) runs its K copies one after another in the same
fit: every copy starts from the round's sparse model, copy i grows partition
i; at the end of a round partition i is taken from copy i, the other weights
(biases, norms, dense layers) are averaged over the copies, and everything is
pruned back to the target.

The step logic (what is grown, prune back, grow next, the P-GaP merge) is
`GaPEngine` (gap/engine.py): this callback decides *when* (the boundaries of
the schedule inside one fit) and reports; the Ray runner drives the same engine.
"""

import math
import warnings

from keras_gap.callbacks import PruningSummaries, UpdatePruningStep, overall_sparsity
from keras_gap.console import LogFraction, LogInt
from keras_gap.gap import pgap
from keras_gap.gap.api import gap_wrappers
from keras_gap.gap.engine import RESET_MODES, GaPEngine
from keras_gap.gap.step_lr import StepLR
from keras_gap.optimizer_wrappers import base_optimizer



class GaPCallback(UpdatePruningStep):
    """Drives scheduled grow-and-prune during ``model.fit`` (use instead of
    `UpdatePruningStep`).

    Args:
        reset_optimizer: optimizer state at every boundary (each GaP step
            and the start of fine-tuning). "fresh": a new optimizer, as the
            paper launches every step: all slots zeroed AND
            ``optimizer.iterations`` back to 0, so Adam's bias correction and
            any `LearningRateSchedule` start over. "all": every slot zeroed
            but the step counter keeps running; with Adam the first updates
            after a boundary are then several times larger than a fresh
            Adam's (bias correction of a large step count: ~6.5x at 12 steps
            after the reset), an implicit warm restart; with SGD it is a plain
            momentum reset. "none": slots kept. Slots of removed weights are
            always zeroed, so a regrown weight always restarts with zero
            slots (the former "regrown" mode did exactly what "none" does and
            was removed). Default "all": on the validation split of
            benchmarks/gap_vs_baselines.py (90%, Adam) it beat "fresh" with a
            per-step cosine at the base peak, at 8 and at 24 epochs, and it
            works with any compiled optimizer and schedule ("fresh" restarts a
            whole-run `LearningRateSchedule` at every boundary). The best
            setting measured is "fresh" with ``step_lr=StepLR(peak=3 x the
            base learning rate, warmup=0.1)``: the paper's restart, with the
            warm-restart boost made explicit (README, Results).
        step_lr: optional `StepLR` (or any callable ``(i, length) -> lr``):
            sets the learning rate before every batch from the position ``i``
            in the current phase of ``length`` batches (a GaP step, or the
            whole fine-tuning phase), so the schedule restarts at every
            boundary. The optimizer must have a float learning rate (not a
            `LearningRateSchedule`).
        log_dir: optional TensorBoard directory (per-weight and per-partition
            sparsity, grown partition).
        verbose: 1 prints a line at every boundary; 0 is silent.

    Returns:
        A Keras callback. Adds ``gap_partition`` (grown partition, -1 while
        fine-tuning; an int in the progress bar), ``sparsity`` (overall),
        ``sparse_part_sparsity`` (the weights outside the grown partition: at
        the target during rounds) and ``sparsity_p<i>`` (per partition, epoch
        logs) to the logs.

    Example:
        >>> pruned.fit(ds, epochs=kg.gap_total_epochs(pruned),
        ...            callbacks=[kg.GaPCallback(log_dir="logs")])
    """

    def __init__(self, reset_optimizer="all", step_lr=None, log_dir=None, verbose=1):
        super().__init__()
        if reset_optimizer == "regrown":
            raise ValueError(
                "reset_optimizer='regrown' was removed: slots of removed weights are "
                "zeroed when they are pruned, so regrown weights always restart with "
                "zero slots and 'regrown' trained exactly as 'none' does. Use 'none' "
                "(same behaviour), 'all' or 'fresh'.")
        if reset_optimizer not in RESET_MODES:
            raise ValueError(f"`reset_optimizer` must be one of {RESET_MODES}; "
                             f"received {reset_optimizer!r}.")
        if isinstance(step_lr, dict):
            step_lr = StepLR.from_config(step_lr)
        if step_lr is not None and not callable(step_lr):
            raise ValueError("`step_lr` must be a keras_gap.gap.StepLR or a callable "
                             f"(i, length) -> learning rate; received {step_lr!r}.")
        self.reset_optimizer = reset_optimizer
        self.step_lr = step_lr
        self._last_lr = None
        self.verbose = verbose
        self._summaries = PruningSummaries(log_dir) if log_dir else None
        self.engine = None  # a GaPEngine from on_train_begin: the step logic
        self._checked_length = False

    # Setup ----------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.wrappers = gap_wrappers(self.model)
        steps_per_epoch = self.params.get("steps") if self.params else None
        for w in self.wrappers:
            sched = w.pruning_schedule
            if sched.epochs_per_step is not None:
                if not steps_per_epoch:
                    raise ValueError(
                        "GaP counts in epochs (epochs_per_step="
                        f"{sched.epochs_per_step}) but fit does not know the number of "
                        "steps per epoch. Pass steps_per_epoch= to fit, or use "
                        "prune_gap(steps_per_step=...).")
                w.pruning_schedule = sched.resolve(steps_per_epoch)
        self.engine = GaPEngine(self.model, reset_optimizer=self.reset_optimizer,
                                gradient_of=self._gradient_of, channel_plan=self._channel_plan)
        self.schedule, self.partitions = self.engine.schedule, self.engine.partitions
        self._partition_cache = self.partition_sparsities()
        self._sparse_part = self.sparse_part_sparsity(self.grown_partition())
        if self.step_lr is not None:
            self._setup_step_lr(steps_per_epoch)
        if self._summaries is not None:
            self._summaries.set_model(self.model)
            self._summaries.on_train_begin()
        if self.schedule.method == "pgap" and self.step + 1 > self.schedule.begin_step:
            _, j = self.schedule.phase(self.step + 1)
            if j % self.schedule.num_partitions and j < self.schedule.num_gap_steps:
                warnings.warn(
                    "P-GaP resumed in the middle of a round: the copies trained "
                    "before the interruption are not in the checkpoint, so this "
                    "round's merge takes their partitions from the resumed model.")
                self.engine.round_base = pgap.snapshot(self.model, self.wrappers)

    def _setup_step_lr(self, steps_per_epoch):
        optimizer = base_optimizer(self.model.optimizer)
        try:  # a float exactly when the rate is a variable; a dict for a schedule
            lr = optimizer.get_config().get("learning_rate")
        except Exception:  # noqa: BLE001 - get_config cannot serialize a lambda rate
            lr = None
        if not isinstance(lr, (int, float)):
            kind = (f"a LearningRateSchedule ({lr.get('class_name')})" if isinstance(lr, dict) else
                    "a callable" if lr is None else type(lr).__name__)
            raise ValueError(
                "GaPCallback(step_lr=...) sets the learning rate itself at every batch, "
                "so the optimizer needs a float learning rate; this model's optimizer "
                f"uses {kind}. Compile with e.g. keras.optimizers.Adam(1e-3).")
        s = self.schedule
        self._finetune_length = s.finetune_steps
        epochs = self.params.get("epochs") if self.params else None
        if not self._finetune_length and steps_per_epoch and epochs:
            last = self.step + epochs * steps_per_epoch  # number of the fit's last batch
            self._finetune_length = last - s.end_step + 1
        if self._finetune_length <= 0:
            self._finetune_length = s.steps_per_step
        self._last_lr = None

    def _apply_step_lr(self, step):
        """Sets the learning rate of batch ``step`` from `step_lr` (phase position)."""
        s = self.schedule
        if self.step_lr is None or step < s.begin_step:
            return
        offset = step - s.begin_step
        if offset < s.num_gap_steps * s.steps_per_step:
            i, length = offset % s.steps_per_step, s.steps_per_step
        else:
            i, length = offset - s.num_gap_steps * s.steps_per_step, self._finetune_length
        lr = float(self.step_lr(i, length))
        if lr != self._last_lr:
            self.model.optimizer.learning_rate = lr  # `model` syncs JAX state
            self._last_lr = lr

    def _setup_groups(self, model):
        # GaP decides itself which wrappers are pruned together (partitions);
        # only the gradient recorder (FGGP prune-back) is shared with the base.
        self._groups = {}
        self._setup_recorder(model)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if self._checked_length or not self.params:
            return
        self._checked_length = True
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if not steps or not epochs:
            return
        needed_steps = self.schedule.total_steps() - self.step
        have_steps = (epochs - epoch) * steps
        if have_steps < needed_steps:
            needed = epoch + math.ceil(needed_steps / steps)
            warnings.warn(
                f"This fit ends before the GaP schedule does: the schedule needs "
                f"epochs={needed} (with {steps} steps per epoch) but fit was given "
                f"epochs={epochs}. The model will not reach its final pruned state; "
                "use epochs=keras_gap.gap_total_epochs(model).")

    # Boundaries -------------------------------------------------------------------
    # The per-batch logs name the grown partition from the step counter, so
    # batch ends must run in order with batch begins.
    async_safe = False

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch, logs)  # boundaries up to the batch about to run
        self._apply_step_lr(self.step + 1)

    def _run_schedule(self, first, last):
        for step in range(first, last + 1):
            self._boundary(step)

    def _warn_if_updates_fall_inside_executions(self):
        k, s = self._steps_per_execution, self.schedule
        steps = self.params.get("steps") if self.params else None
        aligned = (s.steps_per_step % k == 0 and (s.begin_step - 1 - self.step) % k == 0
                   and (not steps or steps % k == 0))
        self._warned_execution = True
        if k > 1 and not aligned:
            warnings.warn(
                f"steps_per_execution={k} does not divide the GaP step "
                f"(steps_per_step={s.steps_per_step}, begin_step={s.begin_step}"
                f"{f', {steps} steps per epoch' if steps else ''}): masks change only "
                "between executions of the compiled step, so a GaP boundary inside an "
                f"execution is applied at its end (up to {k - 1} steps late).", stacklevel=3)

    def _boundary(self, step):
        """GaP's work at training step ``step`` (nothing between boundaries)."""
        s = self.schedule
        if step < s.begin_step or (step - s.begin_step) % s.steps_per_step:
            return
        j = (step - s.begin_step) // s.steps_per_step
        if j > s.num_gap_steps:
            return
        self.model  # JAX: sync trainer state into the variables before editing.
        self.engine.step(j)
        self.sparsity = overall_sparsity(self.wrappers)
        self._partition_cache = self.partition_sparsities()
        self._sparse_part = self.sparse_part_sparsity(
            j % s.num_partitions if j < s.num_gap_steps else None)
        if self.verbose:
            self._announce(j, step)
        self._write_summaries()

    # Reporting ------------------------------------------------------------------------
    def partition_sparsities(self):
        """{partition: sparsity of its pruned weights}."""
        return self.engine.partition_sparsities()

    def sparse_part_sparsity(self, grown):
        """Sparsity of the pruned weights outside partition ``grown`` (None: all).

        While a partition is grown the overall sparsity is low (a large grown
        partition can leave it near 0); the rest of the model is at its
        target, which is what the logs' ``sparse_part_sparsity`` shows.
        """
        return self.engine.sparse_part_sparsity(grown)

    def grown_partition(self):
        """Partition grown during the last completed step (-1: fine-tuning)."""
        # The last step whose boundary was applied: the masks' state.
        g = self.schedule.grown_partition(max(self._processed, self.schedule.begin_step))
        return -1 if g is None else g

    def _announce(self, j, step):
        s = self.schedule
        what = (f"round {j // s.num_partitions + 1}/{s.rounds}, partition "
                f"{j % s.num_partitions} grown" if j < s.num_gap_steps
                else "all partitions at target, fine-tuning")
        parts = " ".join(f"p{p}={v:.3f}" for p, v in self._partition_cache.items())
        print(f"\n[GaP {s.method}] step {j}/{s.num_gap_steps} at training step "
              f"{step}: {what}; sparsity {self.sparsity:.4f} ({parts})", flush=True)

    def _add_logs(self, logs, per_partition=False):
        if logs is None:
            return
        logs["gap_partition"] = LogInt(self.grown_partition())  # "2", not "2.0000"
        logs["sparsity"] = LogFraction(self.sparsity)           # "0.0000", not "0.0000e+00"
        logs["sparse_part_sparsity"] = LogFraction(self._sparse_part)
        if per_partition:  # epoch logs (History, end-of-epoch progress line)
            for p, v in self._partition_cache.items():
                logs[f"sparsity_p{p}"] = LogFraction(v)

    def _write_summaries(self):
        if self._summaries is not None:
            extra = {f"gap/sparsity_partition_{p}": v for p, v in self._partition_cache.items()}
            extra["gap/grown_partition"] = self.grown_partition()
            self._summaries.write(extra)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        self._add_logs(logs)

    def on_epoch_end(self, epoch=None, logs=None, batch=None):
        # batch=: tf-mot's custom-loop call, on_epoch_end(batch=-1).
        super().on_epoch_end(epoch, logs)
        self._add_logs(logs, per_partition=True)
        self._write_summaries()

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        if self._summaries is not None:
            self._summaries.on_train_end()

