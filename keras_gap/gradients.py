"""Loss gradients of pruned weights for pruning decisions (FGGP), all backends.

`GradientRecorder` wraps any Keras 3 optimizer. Every training step it stores
the gradient it is given for selected variables in non-trainable buffer
variables (optionally the last ``num_batches`` of them, for averaging), then
lets the wrapped optimizer apply the update. The buffers are optimizer
variables, so they are written in both ``apply`` (TensorFlow, PyTorch) and
``stateless_apply`` (JAX's stateless training step): no second forward or
backward pass is needed. `keras_gap.UpdatePruningStep` wraps the optimizer
automatically for criteria with ``needs_gradients`` (and unwraps it at the end
of ``fit``); wrap it yourself at compile time to keep it.

`compute_gradients` is the fallback for custom loops and one-off decisions:
one extra forward/backward pass on a given batch.
"""

import keras
from keras import ops

from keras_gap.optimizer_wrappers import OptimizerWrapper, find_in_chain

_PACKAGE = "keras_gap"


def _key(variable):
    return id(variable)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GradientRecorder(OptimizerWrapper):
    """Optimizer wrapper that keeps the last gradients of chosen variables.

    Args:
        inner_optimizer: the optimizer that applies the updates (instance or
            name such as "adam").
        variables: variables (or their ``.path`` strings) whose gradients are
            recorded; None records every trainable variable of rank >= 2.
        num_batches: int >= 1, number of recent batches kept; `gradient`
            returns their mean.
        name: optional name.

    Returns:
        A Keras optimizer; ``inner_optimizer`` holds the real state.

    Example:
        >>> opt = kg.gradients.GradientRecorder(keras.optimizers.SGD(0.1))
        >>> model.compile(opt, "sparse_categorical_crossentropy")
        >>> model.fit(x, y)
        >>> g = opt.gradient(model.layers[0].kernel)
    """

    def __init__(self, inner_optimizer, variables=None, num_batches=1, name=None,
                 **kwargs):
        if kwargs:
            raise ValueError("GradientRecorder does not accept the arguments "
                             f"{sorted(kwargs)}; set them on the inner optimizer.")
        if (not isinstance(num_batches, int) or isinstance(num_batches, bool)
                or num_batches < 1):
            raise ValueError("`num_batches` must be an int >= 1; received "
                             f"{num_batches!r}.")
        super().__init__(inner_optimizer, name=name)
        self.num_batches = num_batches
        self._selection = None if variables is None else [
            v if isinstance(v, str) else v.path for v in variables]
        self._buffers = {}
        self._order = []  # (index in trainable variables, buffer)

    def _selected(self, variable):
        if self._selection is None:
            return len(variable.shape) >= 2
        return variable.path in self._selection

    def build(self, var_list):
        super().build(var_list)
        self._recorded_batches = self.add_variable(
            shape=(), dtype="int32", initializer="zeros", name="recorded_batches")
        for index, var in enumerate(var_list):
            if not self._selected(var):
                continue
            buf = self.add_variable(
                shape=(self.num_batches,) + tuple(var.shape), dtype="float32",
                initializer="zeros", name=f"{var.name}_grad")
            self._buffers[_key(var)] = buf
            self._order.append((index, buf))
        if self._selection is not None:
            found = {v.path for v in var_list if self._selected(v)}
            missing = sorted(set(self._selection) - found)
            if missing:
                raise ValueError(
                    f"GradientRecorder was asked to record {missing}, which the "
                    "model's trainable variables do not include.")

    # Recording --------------------------------------------------------------
    def _before_apply(self, grads):
        slot = ops.mod(self._recorded_batches.value, self.num_batches)
        grads = _all_reduce_replica_gradients(grads)
        for index, buf in self._order:
            g = grads[index]
            if g is None:
                continue
            g = ops.expand_dims(ops.cast(ops.convert_to_tensor(g), "float32"), 0)
            start = [slot] + [0] * (len(buf.shape) - 1)
            buf.assign(ops.slice_update(buf.value, start, g))
        self._recorded_batches.assign(self._recorded_batches.value + 1)

    # Reading ----------------------------------------------------------------
    @property
    def recorded_batches(self):
        """Number of training batches recorded so far (int)."""
        if not self.built:
            return 0
        return int(ops.convert_to_numpy(self._recorded_batches))

    def records(self, variable):
        """True when ``variable``'s gradient is recorded."""
        return _key(variable) in self._buffers

    def gradient(self, variable):
        """Mean recorded gradient of ``variable`` over the last batches.

        Args:
            variable: a recorded trainable variable.

        Returns:
            float32 tensor shaped like ``variable`` (the last batch's gradient
            for ``num_batches=1``), or None if no batch was recorded yet.
        """
        if _key(variable) not in self._buffers:
            raise ValueError(
                f"GradientRecorder does not record {variable.path!r}; record it "
                "with GradientRecorder(opt, variables=[...]).")
        seen = min(self.recorded_batches, self.num_batches)
        if seen == 0:
            return None
        buf = self._buffers[_key(variable)]
        return ops.sum(buf[:seen], axis=0) / float(seen)

    def get_config(self):
        config = super().get_config()
        config.update(variables=self._selection, num_batches=self.num_batches)
        return config


def _all_reduce_replica_gradients(grads):
    """Under `tf.distribute` (replica context), the global batch's gradients.

    Keras applies gradients per replica and sums them across replicas inside
    the optimizer update; the recorder sees them before that sum, so it sums
    them itself (each replica's loss is already divided by the number of
    replicas): every replica records the gradient single-device training sees.
    """
    if keras.backend.backend() != "tensorflow":
        return grads  # JAX / torch: the step already sees global gradients
    import tensorflow as tf
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return grads
    picked = [i for i, g in enumerate(grads) if g is not None]
    reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in picked])
    grads = list(grads)
    for i, g in zip(picked, reduced):
        grads[i] = g
    return grads


def _strategy_scope(model):
    """The model's `tf.distribute` strategy scope (a no-op elsewhere), so
    variables created for it are replicated like the model's own."""
    import contextlib
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def find_recorder(optimizer):
    """The `GradientRecorder` in an optimizer chain, or None."""
    return find_in_chain(optimizer, GradientRecorder)


def compute_gradients(model, x, y, loss, variables=None, sample_weight=None):
    """One extra forward/backward pass: d loss / d variables on a batch.

    The fallback when no `GradientRecorder` ran (custom loops, one-off
    decisions). Works on TensorFlow, JAX and PyTorch.

    Args:
        model: a built Keras model.
        x, y: one batch of inputs and targets.
        loss: a Keras loss (name, function or `keras.losses.Loss`).
        variables: variables to differentiate (default: trainable variables).
        sample_weight: optional per-sample weights.

    Returns:
        List of gradient tensors, one per variable (zeros where unused).

    Example:
        >>> grads = kg.gradients.compute_gradients(model, x[:64], y[:64],
        ...     "sparse_categorical_crossentropy", variables=[kernel])
    """
    loss_fn = keras.losses.get(loss)
    variables = list(variables if variables is not None else model.trainable_variables)
    backend = keras.backend.backend()

    def compute_loss(pred):
        per_sample = loss_fn(y, pred)
        if sample_weight is not None:
            per_sample = per_sample * ops.cast(sample_weight, per_sample.dtype)
        return ops.mean(per_sample)

    if backend == "tensorflow":
        import tensorflow as tf
        with tf.GradientTape() as tape:
            value = compute_loss(model(x, training=False))
        grads = tape.gradient(value, [v.value for v in variables])
    elif backend == "jax":
        import jax
        trainable = model.trainable_variables
        non_trainable = model.non_trainable_variables
        wanted = {id(v) for v in variables}
        positions = [i for i, v in enumerate(trainable) if id(v) in wanted]
        if len(positions) != len(variables):
            raise ValueError("compute_gradients on JAX differentiates trainable "
                             "variables of the model only.")

        def f(tv):
            pred, _ = model.stateless_call(tv, [v.value for v in non_trainable], x,
                                           training=False)
            return compute_loss(pred)

        all_grads = jax.grad(f)([v.value for v in trainable])
        by_id = {id(trainable[i]): all_grads[i] for i in positions}
        grads = [by_id[id(v)] for v in variables]
    elif backend == "torch":
        import torch
        for v in variables:
            v.value.grad = None
        value = compute_loss(model(x, training=False))
        grads = torch.autograd.grad(value, [v.value for v in variables],
                                    allow_unused=True)
    else:
        raise ValueError(f"compute_gradients does not support backend {backend!r}.")
    return [ops.zeros(tuple(v.shape)) if g is None else ops.convert_to_tensor(g)
            for g, v in zip(grads, variables)]


def attach_recorder(model, variables, num_batches=1):
    """Makes ``model.optimizer`` record the gradients of ``variables``.

    Reuses a `GradientRecorder` already in the optimizer chain (it must record
    ``variables``); otherwise wraps the compiled optimizer, builds it and
    drops the compiled train function so the next step is traced with the
    recorder (call at the start of ``fit``, e.g. from ``on_train_begin``).

    Args:
        model: a compiled Keras model.
        variables: the variables whose gradients are needed.
        num_batches: batches kept for averaging (for a new recorder).

    Returns:
        ``(recorder, attached)``: ``attached`` is True when the recorder was
        created here (undo with `detach_recorder`).
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError(
            f"Model {model.name!r} has no optimizer; compile it before fit. "
            "Pruning criteria that need gradients (FGGP) record them in the optimizer.")
    existing = find_recorder(optimizer)
    if existing is not None:
        if existing.built:
            missing = [v.path for v in variables if not existing.records(v)]
            if missing:
                raise ValueError(
                    f"The model's GradientRecorder does not record {missing}, which "
                    "the pruning criterion needs. Create it with variables=None "
                    "(all kernels) or list these variables.")
        return existing, False
    with _strategy_scope(model):  # MirroredStrategy: mirrored buffers
        recorder = GradientRecorder(optimizer, variables=list(variables),
                                    num_batches=num_batches)
        recorder.build(model.trainable_variables)
    model.optimizer = recorder
    model.train_function = None
    model.make_train_function()
    return recorder, True


def detach_recorder(model, recorder):
    """Puts back the optimizer that `attach_recorder` wrapped."""
    if getattr(model, "optimizer", None) is recorder:
        model.optimizer = recorder.inner_optimizer
        model.train_function = None
