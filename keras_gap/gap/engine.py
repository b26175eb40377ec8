"""`GaPEngine`: GaP's step logic, one public API for every driver.

What is grown, pruning back, growing the next partition and the P-GaP merge
live here, on one GaP model. Two drivers use it:

* `GaPCallback` calls `GaPEngine.step` at every GaP boundary inside one
  ``model.fit`` (C-GaP, and P-GaP with its copies run one after another);
* `PGaPRunner` (Ray) calls `initialize`, `grow` on the workers (one copy per
  fit), `merge_round` on the driver, and `prune_back`.

The engine edits masks, weights and optimizer slots eagerly; the caller picks
the moment (between training steps; on JAX after syncing the trainer's state
into the variables, which reading ``callback.model`` does).
"""

import numpy as np
from keras import ops

from keras_gap import masks as mask_lib
from keras_gap import optimizer_state, pruning_groups
from keras_gap.callbacks import overall_sparsity
from keras_gap.gap import pgap
from keras_gap.gap.api import gap_wrappers

RESET_MODES = ("fresh", "all", "none")


class GaPEngine:
    """Scheduled grow-and-prune on one model, step by step.

    Args:
        model: a model prepared by `keras_gap.prune_gap`. Compiled, the
            engine also edits its optimizer's slots (`reset_optimizer`, and
            the slots of removed weights are zeroed); uncompiled, only masks
            and weights.
        reset_optimizer: "all", "fresh" or "none", as in `GaPCallback`.
        gradient_of: optional ``variable -> gradient`` (the recorded loss
            gradient) for criteria that need gradients (FGGP prune-back).
        channel_plan: the `ChannelPlan` for ``structure="channel"``;
            "auto" (default) builds it when any layer uses channel structure.

    Returns:
        An engine. ``wrappers``, ``partitions`` ({partition: wrappers}) and
        ``schedule`` describe the model; `grown` is the partition whose
        masks are dense (None: none); `round_base` is the all-sparse values
        P-GaP's copies start from.

    Example:
        >>> engine = GaPEngine(pruned, reset_optimizer="all")
        >>> engine.initialize()          # random masks, partition 0 grown
        >>> pruned.fit(x, y, epochs=1)   # (masks held by the wrapper's update)
        >>> engine.step(1)               # prune 0 back, grow 1
    """

    def __init__(self, model, reset_optimizer="all", gradient_of=None, channel_plan="auto"):
        if reset_optimizer not in RESET_MODES:
            raise ValueError(f"`reset_optimizer` must be one of {RESET_MODES}; "
                             f"received {reset_optimizer!r}.")
        self.model = model
        self.reset_optimizer = reset_optimizer
        self.wrappers = gap_wrappers(model)
        self.schedule = self.wrappers[0].pruning_schedule
        self.partitions = {}
        for w in self.wrappers:
            self.partitions.setdefault(w.pruning_schedule.partition, []).append(w)
        self._gradient_of = gradient_of or (lambda variable: None)
        if isinstance(channel_plan, str) and channel_plan == "auto":
            channel_plan = pruning_groups.channel_plan(model, self.wrappers)
        self.channel_plan = channel_plan
        self.grown = None
        self.round_base = None  # P-GaP: values every copy of the round starts from
        self._copies = {}       # P-GaP in one process: {partition: trained values}

    # The schedule, step by step -----------------------------------------------------
    def step(self, j):
        """Applies GaP step ``j``'s boundary (0 <= j <= num_gap_steps).

        Step 0 initializes (random masks, partition 0 grown). C-GaP: prunes the
        grown partition back and grows the next one (the last step grows
        nothing: fine-tuning). P-GaP in one process: keeps the finished copy,
        restarts from the round's base and grows the next partition; at the
        end of a round merges the copies and prunes everything back. Then
        resets the optimizer as ``reset_optimizer`` says.

        Args:
            j: the GaP step number.

        Returns:
            The grown partition after the step (None: fine-tuning).
        """
        s = self.schedule
        if not 0 <= j <= s.num_gap_steps:
            raise ValueError(f"GaP step must be in [0, {s.num_gap_steps}]; received {j}.")
        k = s.num_partitions
        if j == 0:
            self.initialize()
        elif s.method == "pgap":
            self._copies[(j - 1) % k] = pgap.snapshot(self.model, self.wrappers)
            if j % k:  # next copy of the same round: restart from the round's model
                pgap.restore(self.model, self.wrappers, self.round_base)
                self.grow(j % k)
            else:
                self.merge_round(self._copies, prune=True)
                self._copies = {}
                if j < s.num_gap_steps:
                    self.grow(0)
            self.reset_slots()  # every copy is a fresh run
        else:
            self.prune_back((j - 1) % k)  # the partition grown during step j - 1
            if j < s.num_gap_steps:
                self.grow(j % k)
            if self.reset_optimizer == "all":
                self.reset_slots()
        if self.reset_optimizer == "fresh":  # every phase starts as a new run
            self.restart_optimizer()
        return self.grown

    def initialize(self):
        """Step 0: exact-count random masks at the target; partition 0 grown.

        For P-GaP the all-sparse model becomes `round_base`, the model every
        copy of the first round starts from.

        Returns:
            None.
        """
        plan = self.channel_plan
        if plan is not None:  # structure="channel": random whole channels per group
            groups = plan.groups_for(plan.wrappers)
            plan.random(groups, {g: plan.producers[g][0].pruning_schedule.target_sparsity
                                 for g in groups}, seed=self.schedule.seed)
            for w in plan.wrappers:
                self._zero_removed_slots(w)
        for w in self.wrappers:
            if plan is not None and w.structure == "channel":
                continue
            sched = w.pruning_schedule
            w.set_masks([_random_mask(w, v, sched) for v in w.pruned_weights])
            self._zero_removed_slots(w)
        self.grown = None
        if self.schedule.method == "pgap":
            self.round_base = pgap.snapshot(self.model, self.wrappers)
            self._copies = {}
        self.grow(0)

    def grow(self, partition):
        """Grows ``partition`` to dense (masks of ones; its removed weights
        restart at exactly 0, where pruning left them).

        Args:
            partition: the partition index.

        Returns:
            None.
        """
        wrappers = self._partition(partition)
        plan = self.channel_plan
        if plan is not None:
            groups = plan.groups_of_producers(wrappers)
            plan.apply({g: np.ones(plan.graph.groups[g].size, np.float32) for g in groups})
            wrappers = [w for w in wrappers if w.structure != "channel"]
        for w in wrappers:
            w.set_masks([ops.ones(tuple(v.shape)) for v in w.pruned_weights])
        self.grown = partition

    def prune_back(self, partition=None):
        """Prunes ``partition`` (None: every layer) back to its target by the
        layers' criterion (one global threshold with ``distribution="global"``);
        the removed weights' optimizer slots are zeroed.

        Args:
            partition: the partition index, or None for the whole model.

        Returns:
            None.
        """
        wrappers = self.wrappers if partition is None else self._partition(partition)
        plan = self.channel_plan
        if plan is not None:
            groups = plan.groups_of_producers(wrappers)
            touched = plan.update(
                groups, {g: plan.producers[g][0].pruning_schedule.target_sparsity
                         for g in groups}, self._gradient_of)
            for w in touched:
                self._zero_removed_slots(w)
            wrappers = [w for w in wrappers if w.structure != "channel"]
        if wrappers:
            if self.schedule.distribution == "global":
                self._prune_back_global(wrappers)
            else:
                for w in wrappers:
                    gradients = None
                    if getattr(w.criterion, "needs_gradients", False):  # FGGP
                        gradients = [self._gradient_of(v) for v in w.pruned_weights]
                    w.update_masks(w.pruning_schedule.target_sparsity, gradients=gradients)
            for w in wrappers:
                self._zero_removed_slots(w)
        if partition is None or partition == self.grown:
            self.grown = None

    def merge_round(self, copies, prune=True):
        """P-GaP's merge: partition i from copy i, every other value averaged
        over the copies (see `pgap.merge_copies`); then, with ``prune``, every
        layer pruned back to the target. The result is the next `round_base`.

        Args:
            copies: {partition: values} (`pgap.snapshot` of each trained copy).
            prune: prune everything back after the merge.

        Returns:
            The merged (and pruned) values, also kept as `round_base`.
        """
        merged = pgap.merge_copies(
            copies, pgap.partition_indices(self.model, self.wrappers, self.partitions),
            base=self.round_base)
        pgap.restore(self.model, self.wrappers, merged)
        if prune:
            self.prune_back()
        self.round_base = pgap.snapshot(self.model, self.wrappers)
        return self.round_base

    # Optimizer state ----------------------------------------------------------------
    # An uncompiled model has no optimizer state to edit: these do nothing then.
    def _optimizer(self):
        return getattr(self.model, "optimizer", None)

    def reset_slots(self):
        """Zeroes every optimizer slot (the step counter keeps running)."""
        if self._optimizer() is not None:
            for v in self.model.trainable_variables:
                optimizer_state.reset_slots(self._optimizer(), v)

    def restart_optimizer(self):
        """A new optimizer: every slot zeroed and its step counter back to 0."""
        if self._optimizer() is not None:
            optimizer_state.restart(self._optimizer(), self.model.trainable_variables)

    def _zero_removed_slots(self, wrapper):
        if self._optimizer() is not None:
            for v, m in zip(wrapper.pruned_weights, wrapper.masks):
                optimizer_state.mask_slots(self._optimizer(), v, m)

    # Reporting ------------------------------------------------------------------------
    def sparsity(self):
        """Sparsity of every pruned weight of the model."""
        return overall_sparsity(self.wrappers)

    def partition_sparsities(self):
        """{partition: sparsity of its pruned weights}."""
        return {p: overall_sparsity(ws) for p, ws in self.partitions.items()}

    def sparse_part_sparsity(self, grown):
        """Sparsity of the pruned weights outside partition ``grown`` (None: all).

        While a partition is grown the overall sparsity is low (a large grown
        partition can leave it near 0); the rest of the model is at its
        target.
        """
        return overall_sparsity([w for p, ws in self.partitions.items() if p != grown
                                 for w in ws])

    # Internals ------------------------------------------------------------------------
    def _partition(self, partition):
        if partition not in self.partitions:
            raise ValueError(f"No GaP partition {partition!r}; this model has partitions "
                             f"{sorted(self.partitions)}.")
        return self.partitions[partition]

    def _prune_back_global(self, wrappers):
        """One magnitude threshold across every pruned layer, with the budget
        that puts the whole model exactly at its target.

        ``wrappers`` (the partition being pruned back) compete with the kept
        weights of the sparse partitions: a layer that matters more keeps more,
        so per-layer ratios become non-uniform even with one layer per
        partition. Sparse layers can lose weights here but never regrow one
        (their removed weights rank last); they regrow only when grown.
        """
        chosen = {id(w) for w in wrappers}
        ranked = [w for w in self.wrappers if w.structure != "channel"]
        budget = sum(mask_lib.num_to_keep(n, w.pruning_schedule.target_sparsity)
                     for w in ranked for n, _ in w.mask_counts())
        scores = []
        for w in ranked:
            for v, m in zip(w.pruned_weights, w.masks):
                s = ops.convert_to_tensor(w.criterion.scores(v, m), "float32")
                if id(w) not in chosen:  # removed weights of sparse layers stay removed
                    s = ops.where(ops.convert_to_tensor(m) > 0, s, float("-inf"))
                scores.append(s)
        new = iter(mask_lib.joint_topk_masks(scores, max(budget, 0)))
        for w in ranked:
            w.set_masks([next(new) for _ in w.pruned_weights])
            if id(w) not in chosen:
                self._zero_removed_slots(w)


def _random_mask(wrapper, variable, sched):
    # Seed from names that do not depend on auto-numbered model names.
    seed = _seed(sched.seed, f"{wrapper.layer.name}/{variable.name}")
    if wrapper.sparsity_m_by_n is not None:
        import keras
        scores = keras.random.uniform(tuple(variable.shape), seed=seed)
        return mask_lib.n_by_m_mask(scores, wrapper.sparsity_m_by_n)
    return mask_lib.random_mask(tuple(variable.shape), sched.target_sparsity,
                                seed=seed, block_size=wrapper.block_size)


def _seed(seed, path):
    """A per-variable seed derived from the run seed and a variable's name."""
    return (int(seed) * 1_000_003 + sum(ord(c) * 31 ** i for i, c in enumerate(path))) % (2**31 - 1)


__all__ = ["GaPEngine"]
