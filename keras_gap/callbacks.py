"""Keras callbacks that drive pruning during ``model.fit``.

`UpdatePruningStep` is required (as in tf-mot): it follows the step count,
recomputes masks when a layer's schedule says so, zeroes the optimizer state
of removed weights, and puts the current overall sparsity into the Keras logs
(so the progress bar and History show it). `PruningSummaries` writes the
sparsity of every pruned weight to TensorBoard.
"""

import os
import warnings

import keras
from keras import ops

from keras_gap import gradients as gradients_lib
from keras_gap import optimizer_state
from keras_gap import optimizer_wrappers
from keras_gap import pruning_groups
from keras_gap.console import LogFraction
from keras_gap.wrapper import collect_wrappers, missing_callback_error


def overall_sparsity(wrappers):
    """Fraction of masked-out entries over all pruned weights of ``wrappers``."""
    total = nonzero = 0
    for w in wrappers:
        for n, nz in w.mask_counts():
            total += n
            nonzero += nz
    return 1.0 - nonzero / total if total else 0.0


_STASH = optimizer_wrappers.STASH_ATTRIBUTE


def _stash_train_function(model, reusable=True, masking=None):
    """Puts a guard in place of the compiled training step until the next
    UpdatePruningStep.

    A later ``fit`` (or ``train_on_batch``) without the callback calls the
    guard, which raises the missing-callback error (Keras reuses an existing
    ``train_function``, and JAX would reuse its cached trace, so the wrappers'
    trace-time check alone cannot catch it). ``fit`` with the callback gets
    the real step back in ``on_train_begin``, so repeated fits do not retrace;
    a recompile invalidates it.
    """
    stash = None
    if reusable and model.train_function is not None \
            and not getattr(model.train_function, "_keras_gap_guard", False):
        # ``masking``: the MaskedOptimizer the step was traced with, put back
        # in front of the compiled optimizer by the next fit.
        stash = (model.train_function, model.optimizer, masking)
    # Not tracked as model state, and not saved (Keras' saver enters tuples).
    object.__setattr__(model, _STASH, optimizer_wrappers.Unsaved(stash))

    def missing_callback_guard(*args, **kwargs):
        if keras.backend.backend() == "jax" and args:
            # The JAX trainer detached the variables' values before this step;
            # put them back so the model survives the error.
            _restore_jax_state(model, args[0])
        wrappers = collect_wrappers(model)
        raise missing_callback_error(model.name,
                                     wrappers[0].pruning_schedule if wrappers else None)

    missing_callback_guard._keras_gap_guard = True
    model.train_function = missing_callback_guard


def _restore_jax_state(model, state):
    """Re-attaches the values of the JAX trainer's state to the variables."""
    groups = [model.trainable_variables, model.non_trainable_variables,
              model.optimizer.variables if model.optimizer is not None else [],
              model.metrics_variables]
    if not isinstance(state, (tuple, list)) or len(state) != len(groups):
        return
    for variables, values in zip(groups, state):
        for v, value in zip(variables, values):
            v.assign(value)


def _restore_train_function(model):
    stash = getattr(getattr(model, _STASH, None), "value", None)
    object.__setattr__(model, _STASH, None)
    # `compile()` always resets `model.train_function`: the guard still being in
    # place means the model was not recompiled since the step was stashed.
    guarded = getattr(model.train_function, "_keras_gap_guard", False)
    if stash and guarded and stash[1] is model.optimizer:
        model.train_function = stash[0]
        if stash[2] is not None:
            model.optimizer = stash[2]
    elif guarded:
        model.train_function = None
        model.make_train_function()


class UpdatePruningStep(keras.callbacks.Callback):
    """Advances pruning and updates masks on schedule. Required for training.

    Masks are updated eagerly at the start of a batch whose step the layer's
    schedule selects; inside the compiled training step the optimizer,
    wrapped in `keras_gap.MaskedOptimizer` at the start of the first fit,
    multiplies the pruned weights by their masks after every update, so
    masked weights are exactly zero after every step whatever the optimizer.
    Steps are numbered as in tf-mot: the first training batch is step 1, so
    ``ConstantSparsity(0.5, begin_step=0, frequency=100)`` first prunes at the
    100th batch (``wrapper.pruning_step`` holds the number of batches run).
    The callback counts batches (not layer calls: a shared layer counts one
    step per batch).

    With ``compile(steps_per_execution=k)`` several steps run in one call of
    the compiled step and masks can only change between calls: an update
    scheduled at the first step of an execution is applied exactly; one
    scheduled inside an execution is applied at that execution's end (before
    the next execution, the validation at the end of the epoch, or the end of
    fit), up to k - 1 steps late. A warning says so once.
    Adds ``sparsity`` (overall fraction of masked-out prunable weights) to the
    batch and epoch logs.

    Returns:
        A Keras callback.

    Example:
        >>> pruned.fit(x, y, epochs=2, callbacks=[kg.UpdatePruningStep()])
    """

    def __init__(self):
        super().__init__()
        self.step = 0
        self.wrappers = []
        self.sparsity = 0.0
        self._masking = None
        self._in_fit = False
        self._warned_execution = False
        self.set_step(0)

    # `self.model` syncs JAX state (needed before editing variables); reading
    # the plain attribute avoids that cost on batches where nothing changes.
    def _raw_model(self):
        return getattr(self, "_model", None) or self.model

    def on_train_begin(self, logs=None):
        model = self._require_model("on_train_begin")
        self.wrappers = collect_wrappers(model)
        if not self.wrappers:
            # tf-mot does nothing here; a warning says why nothing will prune.
            warnings.warn(
                f"{type(self).__name__} found no PruneLowMagnitude layers in model "
                f"{model.name!r}: nothing will be pruned. Wrap the model first: "
                "keras_gap.prune_low_magnitude(model, ...).", stacklevel=2)
            return
        self._check_schedules_are_driven_here(model)
        for w in self.wrappers:
            if not w.built:
                raise ValueError(
                    f"Pruning layer {w.name!r} is not built; build the model "
                    "(call it on data or give it an Input) before fit.")
            w.step_callback_active = True
        self._recover_from_failed_fit(model)
        _restore_train_function(model)
        # In fit (Keras set params) the optimizer is wrapped so the compiled
        # step keeps masked weights at 0; a custom loop calls its own
        # optimizer, so there the callback re-masks eagerly before each step.
        self._in_fit = bool(self.params)
        self._masking = self._attach_masking(model) if self._in_fit else None
        self.set_step(int(ops.convert_to_numpy(self.wrappers[0].pruning_step)))
        for w in self.wrappers:
            object.__setattr__(w, "_step_source", self)  # live step for saves
        self._steps_per_execution = int(getattr(model, "steps_per_execution", 1) or 1)
        self.sparsity = overall_sparsity(self.wrappers)
        self._setup_groups(model)
        self._channel_plan = pruning_groups.channel_plan(model, self.wrappers)

    # Step bookkeeping -----------------------------------------------------------
    def set_step(self, step):
        """Sets the number of training steps already run (``pruning_step``).

        Args:
            step: int >= 0; the next batch is step ``step + 1``.

        Returns:
            None. Schedules are evaluated from step ``step + 1`` on.
        """
        self.step = int(step)
        self._processed = self.step   # schedule steps <= this were handled
        self._fit_start = self.step
        self._epoch_start = self.step
        self._open = False            # a custom loop's step has begun
        masking = getattr(self, "_masking", None)  # its count when this one was set
        self._masking_start = masking.steps if masking is not None else None
        for w in getattr(self, "wrappers", []):
            if w.built:
                w.pruning_step.assign(self.step)

    def current_step(self):
        """Training steps run so far in this fit (exact; reads the device when needed).

        Returns:
            int: the batches run, counted once per batch.
        """
        if self._masking is not None and self._masking_start is not None:
            return self._fit_start + self._masking.steps - self._masking_start
        return self.step + (1 if self._open else 0)

    def _attach_masking(self, model):
        """Wraps the compiled optimizer in a `MaskedOptimizer` (once).

        Returns the `MaskedOptimizer` of ``model`` (None when the model has no
        optimizer: nothing can be enforced inside the step).
        """
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            return None
        pairs = [(v, m, w) for w in self.wrappers for v, m in zip(w.pruned_weights, w.masks)]
        masking = optimizer_wrappers.find_in_chain(optimizer, optimizer_wrappers.MaskedOptimizer)
        if masking is None or (masking.built and not masking.covers(
                [p for p in pairs if p[0].trainable])):
            if masking is not None:  # the pruned weights changed: wrap afresh
                optimizer = masking.inner_optimizer
            with gradients_lib._strategy_scope(model):  # MirroredStrategy: mirrored copies
                masking = optimizer_wrappers.MaskedOptimizer(optimizer)
                masking.bind(pairs)
                masking.build(model.trainable_variables)
            model.optimizer = masking
            model.train_function = None
            model.make_train_function()
        else:
            masking.bind(pairs)
            if not masking.built:
                with gradients_lib._strategy_scope(model):
                    masking.build(model.trainable_variables)
        masking.sync()
        return masking

    def _sync_masking(self):
        """Copies changed masks into the optimizer (between steps)."""
        if self._masking is not None and self._masking.stale():
            self.model  # JAX: sync the trainer state before assigning
            self._masking.sync()

    def _warn_if_updates_fall_inside_executions(self):
        k = self._steps_per_execution
        self._warned_execution = True
        if k <= 1:
            return
        warnings.warn(
            f"steps_per_execution={k}: masks change only between executions of the "
            f"compiled step, so a pruning update scheduled inside an execution is "
            f"applied at its end (up to {k - 1} steps late). Schedule updates at steps "
            f"1, 1 + {k}, 1 + {2 * k}, ... to have them exact.", stacklevel=3)

    def _schedule_until(self, last):
        """Runs the schedule for every step not yet handled, up to ``last``."""
        first = self._processed + 1
        if last < first:
            return
        self._processed = last
        self._run_schedule(first, last)

    def _run_schedule(self, first, last):
        """Mask updates due at steps ``first..last`` (the latest one per layer)."""
        due = []
        for w in self.wrappers:
            chosen = None
            for step in range(first, last + 1):
                should_prune, sparsity = w.pruning_schedule(step)
                # N:M masks are set at step 1 whatever the schedule (tf-mot), and
                # recomputed at the schedule's updates.
                if should_prune or (step == 1 and w.sparsity_m_by_n is not None):
                    chosen = sparsity
            if chosen is not None:
                due.append((w, chosen))
        if due:
            self.update_masks(due)

    def _recover_from_failed_fit(self, model):
        """After a fit without the callback failed while tracing the training step.

        The half-traced step cannot be reused (TensorFlow: "Creating variables
        on a non-first call"): start a fresh one. Under JAX, Keras detached the
        variables' values for that step and they are gone: say so.
        """
        failed = [w for w in self.wrappers if getattr(w, "_missing_callback_raised", False)]
        if not failed:
            return
        for w in failed:
            object.__setattr__(w, "_missing_callback_raised", False)
        if keras.backend.backend() == "jax":
            lost = [v.path for v in model.variables if getattr(v, "_value", 0) is None]
            if lost:
                raise RuntimeError(
                    f"The weights of model {model.name!r} were lost when the earlier fit "
                    "without the pruning callback failed: under JAX, Keras detaches the "
                    f"variables during a training step ({len(lost)} variables, e.g. "
                    f"{lost[0]!r}). Rebuild the model (or reload it from a file), then fit "
                    f"with callbacks=[keras_gap.{type(self).__name__}()].")
        if getattr(model.train_function, "_keras_gap_guard", False):
            return  # _restore_train_function builds a fresh step
        object.__setattr__(model, _STASH, None)
        model.train_function = None
        model.make_train_function()

    def _check_schedules_are_driven_here(self, model):
        """A schedule that names another callback (GaP's) is an error here."""
        mine = {cls.__name__ for cls in type(self).__mro__}
        for w in self.wrappers:
            required = getattr(w.pruning_schedule, "required_callback", None)
            if required and required not in mine:
                raise ValueError(
                    f"Model {model.name!r} was prepared by keras_gap.prune_gap (layer "
                    f"{w.name!r} has a {type(w.pruning_schedule).__name__}): train it "
                    f"with keras_gap.{required}() instead of {type(self).__name__}: "
                    f"model.fit(..., callbacks=[keras_gap.{required}()]).")

    def _setup_groups(self, model):
        """Global scope / distributions / gradient criteria (FGGP)."""
        self._groups = pruning_groups.build_groups(self.wrappers)
        self._setup_recorder(model)

    def _setup_recorder(self, model):
        """Records loss gradients in the training step for criteria that need them."""
        self._recorder, self._attached_recorder = None, False
        needy = [w for w in self.wrappers
                 if getattr(w.criterion, "needs_gradients", False)]
        if needy:
            variables = [v for w in needy for v in w.pruned_weights]
            batches = max(int(getattr(w.criterion, "gradient_batches", 1)) for w in needy)
            self._recorder, self._attached_recorder = gradients_lib.attach_recorder(
                model, variables, num_batches=batches)

    def _gradients_of(self, wrapper):
        if not getattr(wrapper.criterion, "needs_gradients", False):
            return None
        return [self._gradient_of(v) for v in wrapper.pruned_weights]

    def _gradient_of(self, variable):
        return None if self._recorder is None else self._recorder.gradient(variable)

    # on_train_batch_end only writes a log entry, so Keras may run it on its
    # callback thread: the training loop then does not wait for every step's
    # results (a forced device sync per batch cost ~15% on a small MLP).
    async_safe = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.step

    def on_train_batch_begin(self, batch, logs=None):
        # tf-mot's numbering: the batch about to run is step ``self.step + 1``
        # (the first training batch is step 1). In fit, ``batch`` is the index
        # of the execution's first batch in the epoch; a custom loop (tf-mot's
        # guide passes batch=-1) runs one step per call.
        if self._in_fit and isinstance(batch, int) and batch >= 0:
            self.step = self._epoch_start + batch
            if not self._warned_execution:
                self._warn_if_updates_fall_inside_executions()
        else:
            self.step += 1 if self._open else 0
            self._open = True
        self._schedule_until(self.step + 1)
        if self._masking is None:
            self._remask()  # the step's own optimizer cannot be wrapped: re-mask now
        else:
            self._sync_masking()

    def _remask(self):
        self.model  # JAX: sync the trainer state before editing variables
        for w in self.wrappers:
            w.apply_masks()

    def _close_steps(self):
        """Brings the count up to date after the last execution; returns it."""
        self.model  # JAX: sync the trainer state (reads the optimizer's step count)
        self.step = self.current_step()
        self._open = False
        if self._masking_start is not None:
            self._fit_start, self._masking_start = self.step, self._masking.steps
        self._epoch_start = self.step
        self._schedule_until(self.step)  # updates that fell inside the last execution
        for w in self.wrappers:
            w.pruning_step.assign(self.step)
        return self.step

    def update_masks(self, due):
        """Recomputes the masks of ``[(wrapper, sparsity)]`` now (eagerly).

        Args:
            due: list of (PruneLowMagnitude, sparsity) pairs.

        Returns:
            The new overall sparsity.
        """
        model = self.model  # JAX: sync the trainer's state into the variables.
        groups = getattr(self, "_groups", None) or {}
        done_groups = set()
        plan = getattr(self, "_channel_plan", None)
        if plan is not None:  # structure="channel": coupled channels move together
            channel_due = [(w, s) for w, s in due if getattr(w, "structure", None) == "channel"]
            sparsity_of = {}
            for wrapper, sparsity in channel_due:
                for g in plan.groups_for([wrapper]):
                    sparsity_of.setdefault(g, sparsity)
            plan.update(sorted(sparsity_of), sparsity_of, self._gradient_of)
            due_ids = {id(w) for w, _ in channel_due}
            due = [(w, s) for w, s in due if id(w) not in due_ids] + [
                (w, 0.0) for g in sparsity_of for w in plan.members[g]]
        for wrapper, sparsity in due:
            if plan is not None and getattr(wrapper, "structure", None) == "channel":
                continue
            key = pruning_groups.group_key(wrapper)
            if getattr(wrapper, "structure", None) == "channel":  # no graph: layer by layer
                wrapper.update_masks(sparsity, gradients=self._gradients_of(wrapper))
                continue
            if pruning_groups.is_grouped(wrapper) and key in groups:
                if key not in done_groups:
                    done_groups.add(key)
                    pruning_groups.update_group(groups[key], sparsity, self._gradient_of)
            else:
                wrapper.update_masks(sparsity)
        for wrapper, _ in due:
            for weight, mask in zip(wrapper.pruned_weights, wrapper.masks):
                optimizer_state.mask_slots(model.optimizer, weight, mask)
        self._sync_masking()
        self.sparsity = overall_sparsity(self.wrappers)
        return self.sparsity

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            logs["sparsity"] = LogFraction(self.sparsity)  # never "0.0000e+00"

    def on_epoch_end(self, batch=None, logs=None, epoch=None):
        """End of an epoch; tf-mot's signature, so ``on_epoch_end(batch=-1)``
        works in a custom training loop (the first argument is the epoch)."""
        # The exact count (the optimizer's, even with steps_per_execution > 1
        # and a short last execution) is written to every wrapper here.
        self._require_model("on_epoch_end")  # JAX: syncs the trainer state
        if not self.wrappers:
            return
        self._close_steps()
        if self._masking is None:
            # A custom loop whose optimizer keras-gap does not wrap: masked
            # entries may have moved in the last step; re-mask.
            self._remask()
        else:
            self._sync_masking()
        if logs is not None:
            logs["sparsity"] = LogFraction(self.sparsity)

    def _require_model(self, hook):
        model = self.model
        if model is None:
            raise ValueError(
                f"{type(self).__name__}.{hook}() was called before set_model(). In a "
                "custom training loop call callback.set_model(model) and "
                "callback.on_train_begin() first.")
        return model

    def on_train_end(self, logs=None):
        if not self.wrappers:
            return
        self._close_steps()
        if self._masking is None:
            self._remask()
        for w in self.wrappers:
            w.step_callback_active = False
            object.__setattr__(w, "_step_source", None)
        if getattr(self, "_attached_recorder", False):
            self.model  # JAX: sync the trainer's state before swapping back.
            gradients_lib.detach_recorder(self._raw_model(), self._recorder)
            self._attached_recorder = False
        model = self._raw_model()
        masking = self._masking
        if masking is not None and model.optimizer is masking:
            # After fit ``model.optimizer`` is the optimizer the user compiled
            # with; the next fit puts the same wrapper back (no retrace).
            self.model  # JAX: sync the trainer's state before swapping back.
            model.optimizer = masking.inner_optimizer
        else:
            masking = None
        _stash_train_function(model, reusable=not self._recorder, masking=masking)


class PruningSummaries(keras.callbacks.Callback):
    """Writes pruning progress to TensorBoard (tf.summary event files).

    Per pruned weight: ``sparsity/<weight path>``; and ``sparsity/overall``
    plus ``pruning_step``. Needs TensorFlow installed (any Keras backend).
    In a custom training loop (tf-mot's guide) call ``set_model(model)`` once
    and ``on_epoch_begin(epoch=-1)`` every epoch: it writes there when no
    ``fit`` is running.

    Args:
        log_dir: directory for the event files (created if missing).
        update_freq: "epoch" (default) or an int N: also write every N batches.
        **kwargs: tf-mot passes `keras.callbacks.TensorBoard` arguments on;
            here they are accepted and ignored with a warning.

    Returns:
        A Keras callback.

    Example:
        >>> pruned.fit(x, y, callbacks=[kg.UpdatePruningStep(),
        ...                             kg.PruningSummaries(log_dir="logs")])
    """

    def __init__(self, log_dir, update_freq="epoch", **kwargs):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(f"`log_dir` must be a directory path; received {log_dir!r}.")
        if kwargs:
            # tf-mot's PruningSummaries is a TensorBoard subclass and takes its
            # arguments; they mean nothing here.
            warnings.warn(
                f"PruningSummaries ignores the TensorBoard arguments {sorted(kwargs)}: it "
                "writes pruning scalars only. Add keras.callbacks.TensorBoard(...) for "
                "the rest.", stacklevel=2)
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq > 0):
            raise ValueError(
                f"`update_freq` must be 'epoch' or a positive int; received {update_freq!r}.")
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self._writer = None
        self._in_fit = False
        self._batches = 0

    def on_train_begin(self, logs=None):
        self._open()
        self._in_fit = True

    def _open(self):
        if self.model is None:
            raise ValueError(
                "PruningSummaries was used before set_model(). In a custom training "
                "loop call callback.set_model(model) first.")
        if self._writer is None:
            import tensorflow as tf  # TensorBoard's writer; lazily imported.
            os.makedirs(self.log_dir, exist_ok=True)
            self._tf = tf
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, "pruning"))
        self.wrappers = collect_wrappers(self.model)

    def write(self, extra=None):
        """Writes the current sparsities (and ``extra`` {tag: value}); returns them."""
        if self._writer is None:
            self._open()
        wrappers = collect_wrappers(self.model)
        if not wrappers:
            return {}
        step = wrappers[0].current_step()
        values = {}
        for w in wrappers:
            for weight, (n, nz) in zip(w.pruned_weights, w.mask_counts()):
                values[f"sparsity/{weight.path}"] = 1.0 - nz / n
        values["sparsity/overall"] = overall_sparsity(wrappers)
        values.update(extra or {})
        with self._writer.as_default(step=step):
            for tag, value in values.items():
                self._tf.summary.scalar(tag, value)
            self._tf.summary.scalar("pruning_step", step)
        self._writer.flush()
        return values

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.update_freq != "epoch" and self._batches % self.update_freq == 0:
            self.write()

    def on_epoch_begin(self, epoch=None, logs=None):
        # tf-mot's custom-loop pattern calls only set_model and
        # on_epoch_begin(epoch=-1): write there when no fit is running.
        if not self._in_fit:
            self.write()

    def on_epoch_end(self, epoch=None, logs=None):
        self.write()

    def on_train_end(self, logs=None):
        self._in_fit = False
        if self._writer is not None:
            self._writer.close()
            self._writer = None
