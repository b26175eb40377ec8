"""Optimizer wrappers: the place where masked weights are kept at exactly zero.

`MaskedOptimizer` wraps any Keras 3 optimizer (Adam, SGD, Muon, Lion,
Adafactor, `LossScaleOptimizer`, `MultiOptimizer`, a user's own). After the
wrapped optimizer has applied its update it multiplies every pruned weight by
its mask, inside the compiled training step, so the invariant "masked weights
are exactly zero after every step" holds whatever the update rule does (Muon's
orthogonalized update and weight decay move masked entries; slot zeroing alone
cannot stop that) and however many steps one execution runs
(``steps_per_execution``).

The masks it multiplies by are its own copies, kept as optimizer variables:
under JAX the compiled step sees only the optimizer's and the trainable
variables (``stateless_apply``), not the layers' mask variables. The pruning
callbacks copy a layer's mask in whenever it changed (`sync`), between steps.
It also counts the training steps it applied (``steps``), once per step, so a
layer shared by two call sites or ``steps_per_execution > 1`` cannot confuse the
step count.

`OptimizerWrapper` is the shared delegation base (also of
`keras_gap.gradients.GradientRecorder`).
"""

import keras
from keras import ops

_PACKAGE = "keras_gap"

# The model attribute where the pruning callbacks stash the compiled training
# step between fits (keras_gap.callbacks); `strip_pruning` in place clears it.
STASH_ATTRIBUTE = "_keras_gap_train_function"


class Unsaved:
    """Holds Python state that Keras' `.keras` saver must not enter.

    The saver walks every attribute of a model or optimizer that is a layer,
    an optimizer, a list, a tuple or a dict, and saves what it finds there
    (a second copy of an optimizer, pruning wrappers kept for bookkeeping).
    State kept in this holder is invisible to it.

    Args:
        value: anything.

    Returns:
        The holder; the state is ``holder.value``.

    Example:
        >>> object.__setattr__(model, "_bookkeeping", Unsaved({"step": 3}))
    """

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class OptimizerWrapper(keras.optimizers.Optimizer):
    """Base of keras-gap's optimizer wrappers: delegates to ``inner_optimizer``.

    Subclasses add their own variables in ``build`` and do their work in
    ``_before_apply`` / ``_after_apply`` (stateful: TensorFlow, PyTorch, and
    JAX through a `keras.StatelessScope`).

    Args:
        inner_optimizer: the optimizer that applies the updates (instance or
            name such as "adam").
        name: optional name.

    Returns:
        A Keras optimizer.

    Example:
        >>> class Counting(OptimizerWrapper): ...
    """

    def __init__(self, inner_optimizer, name=None):
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = keras.optimizers.get(inner_optimizer)

    def build(self, var_list):
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)
        super().build(var_list)
        # The variable order the optimizer was built with (public: no reliance
        # on BaseOptimizer's private `_trainable_variables`).
        self._kg_built_vars = list(var_list)

    @property
    def variables(self):
        return super().variables + self.inner_optimizer.variables

    def _before_apply(self, grads):
        """Work on the gradients (ordered as the built variable list)."""

    def _after_apply(self):
        """Work on the updated variables."""

    def _ordered(self, grads, trainable_variables):
        if trainable_variables is None:
            return list(grads)
        index = {id(v): i for i, v in enumerate(trainable_variables)}
        grads = list(grads)
        return [grads[index[id(v)]] if id(v) in index else None
                for v in self._kg_built_vars]

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        grads = list(grads)
        self._before_apply(self._ordered(grads, trainable_variables))
        self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)
        self._after_apply()

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} must be built before stateless_apply; call "
                "optimizer.build(model.trainable_variables).")
        own_vars = super().variables  # the wrapper's own variables (a copy)
        n_own = len(own_vars)
        own, inner = list(optimizer_variables[:n_own]), list(optimizer_variables[n_own:])
        with keras.StatelessScope(state_mapping=list(zip(own_vars, own))) as scope:
            self._before_apply(list(grads))
        own = [scope.get_current_value(v) for v in own_vars]
        new_trainable, inner = self.inner_optimizer.stateless_apply(
            inner, grads, trainable_variables)
        mapping = (list(zip(own_vars, own))
                   + list(zip(self._kg_built_vars, new_trainable)))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self._after_apply()
        own = [scope.get_current_value(v) for v in own_vars]
        new_trainable = [scope.get_current_value(v) for v in self._kg_built_vars]
        return new_trainable, own + list(inner)

    # Delegation -------------------------------------------------------------
    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def __getattr__(self, name):
        # Attributes of the user's optimizer (beta_1, momentum, ...) read
        # through the wrapper; only called when normal lookup fails.
        inner = self.__dict__.get("inner_optimizer")
        if inner is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(inner, name)

    def get_config(self):
        return {"name": self.name,
                "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedOptimizer(OptimizerWrapper):
    """Applies the pruning masks right after every optimizer update.

    `keras_gap.UpdatePruningStep` and `keras_gap.GaPCallback` wrap the
    compiled optimizer in one at the start of the first ``fit`` (the model's
    ``optimizer`` then is this wrapper; ``optimizer.inner_optimizer`` is the
    one you compiled with, and its attributes read through). Wrap it yourself
    at compile time to keep ``fit`` from rebuilding its training step.

    Args:
        inner_optimizer: the optimizer that applies the updates.
        variables: paths (``variable.path``) of the pruned weights; None:
            set when the pruning callback binds the model's masks.
        name: optional name.

    Returns:
        A Keras optimizer.

    Example:
        >>> opt = kg.MaskedOptimizer(keras.optimizers.Muon(0.02))
        >>> pruned.compile(opt, "sparse_categorical_crossentropy")
        >>> pruned.fit(x, y, callbacks=[kg.UpdatePruningStep()])
    """

    def __init__(self, inner_optimizer, variables=None, name=None, **kwargs):
        if kwargs:
            raise ValueError(f"MaskedOptimizer does not accept the arguments {sorted(kwargs)}; "
                             "set them on the inner optimizer.")
        super().__init__(inner_optimizer, name=name)
        if isinstance(self.inner_optimizer, MaskedOptimizer):
            raise ValueError("MaskedOptimizer received a MaskedOptimizer to wrap; wrap the "
                             "optimizer once.")
        self._paths = None if variables is None else [
            v if isinstance(v, str) else v.path for v in variables]
        self._copies = {}   # path -> mask copy (optimizer variable)
        self._order = []    # (index in the built variable list, mask copy)
        # path -> (layer mask variable, owner wrapper), and path -> owner's
        # mask_version when last copied. Untracked (Keras would otherwise count
        # the layers' masks among the optimizer's variables) and unsaved (a
        # `.keras` file would hold the wrappers a second time).
        object.__setattr__(self, "_bound", Unsaved(({}, {})))

    def build(self, var_list):
        super().build(var_list)
        self._steps = self.add_variable(shape=(), dtype="int32", initializer="zeros",
                                        name="pruning_steps", aggregation="only_first_replica")
        paths = set(self._paths or [])
        for index, var in enumerate(var_list):
            if var.path in paths:
                copy = self.add_variable(shape=tuple(var.shape), dtype=var.dtype,
                                         initializer="ones", name=f"{var.name}_mask")
                self._copies[var.path] = copy
                self._order.append((index, copy))
        missing = sorted(paths - set(self._copies))
        if missing:
            raise ValueError(
                f"MaskedOptimizer was asked to mask {missing}, which the model's "
                "trainable variables do not include.")

    def _after_apply(self):
        for index, copy in self._order:
            var = self._kg_built_vars[index]
            var.assign(ops.multiply(var, ops.cast(copy, var.dtype)))
        self._steps.assign_add(1)

    def finalize_variable_values(self, var_list):
        # use_ema=True swaps in averages of the weights, which are not masked.
        super().finalize_variable_values(var_list)
        for index, copy in self._order:
            var = self._kg_built_vars[index]
            var.assign(ops.multiply(var, ops.cast(copy, var.dtype)))

    # Binding the model's masks ------------------------------------------------
    def covers(self, pairs):
        """True when this (built) wrapper has a mask copy for every weight path."""
        return self.built and all(w.path in self._copies for w, _, _ in pairs)

    def bind(self, pairs):
        """Remembers where each copy's mask lives: ``[(weight, mask, wrapper)]``.

        Before the optimizer is built it also fixes which weights get copies.
        """
        trainable = [(w, m, o) for w, m, o in pairs if w.trainable]
        if not self.built:
            self._paths = [w.path for w, _, _ in trainable]
        self._bound.value = ({w.path: (m, o) for w, m, o in trainable
                              if w.path in self._copies or not self.built}, {})

    @property
    def _sources(self):
        return self._bound.value[0]

    @property
    def _synced(self):
        return self._bound.value[1]

    def stale(self):
        """True when a bound layer's mask changed since it was last copied."""
        return any(self._synced.get(path) != owner.mask_version
                   for path, (_, owner) in self._sources.items())

    def sync(self):
        """Copies the masks that changed (eagerly, between steps).

        Returns:
            Number of masks copied.
        """
        copied = 0
        for path, (mask, owner) in self._sources.items():
            if self._synced.get(path) == owner.mask_version or path not in self._copies:
                continue
            # A copy, never the mask's own buffer: JAX donates both to the step.
            self._copies[path].assign(ops.copy(ops.cast(mask, self._copies[path].dtype)))
            self._synced[path] = owner.mask_version
            copied += 1
        return copied

    # Saving: the copies are rebuilt from the layers' masks (saved with the
    # model) and the step count lives in the layers' ``pruning_step``, so the
    # file holds exactly the inner optimizer's variables. A checkpoint written
    # during fit then loads into the optimizer the model was compiled with.
    def save_own_variables(self, store):
        self.inner_optimizer.save_own_variables(store)

    def load_own_variables(self, store):
        self.inner_optimizer.load_own_variables(store)

    @property
    def steps(self):
        """Training steps applied through this wrapper (int; 0 before build)."""
        if not self.built:
            return 0
        return int(ops.convert_to_numpy(self._steps))

    def get_config(self):
        config = super().get_config()
        config["variables"] = self._paths
        return config


def find_in_chain(optimizer, cls):
    """The first optimizer of type ``cls`` in an ``inner_optimizer`` chain, or None."""
    seen = 0
    while optimizer is not None and seen < 8:
        if isinstance(optimizer, cls):
            return optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)
        seen += 1
    return None


def base_optimizer(optimizer):
    """The optimizer at the end of an ``inner_optimizer`` chain (it holds the slots)."""
    seen = 0
    while getattr(optimizer, "inner_optimizer", None) is not None and seen < 8:
        optimizer = optimizer.inner_optimizer
        seen += 1
    return optimizer
