"""`PruneLowMagnitude`: the Keras 3 pruning wrapper.

How masking works on every backend (see ../shared/REFERENCES.md section 4):

* Forward pass: while the wrapped layer runs, each prunable weight's attribute
  is temporarily replaced by ``weight * mask``. The product is taken inside the
  traced function, so it is correct under TensorFlow's ``tf.function``, JAX's
  stateless tracing and PyTorch, and gradients of masked entries are exactly 0.
  Nothing is assigned to a trainable variable inside ``call()`` (that
  assignment is silently lost under JAX).
* Mask updates happen eagerly, outside the compiled step, from the
  `UpdatePruningStep` callback: the mask is recomputed, the weight is
  multiplied by it, and the optimizer's slots (momentum, Adam moments) of the
  removed entries are zeroed.
* Inside the compiled step the masks are enforced where the update happens:
  the callback wraps the optimizer in `keras_gap.MaskedOptimizer`, which
  multiplies every pruned weight by its mask right after each update. So
  masked weights are exactly zero after every step whatever the optimizer
  (Muon's and weight decay's updates move masked entries; zero slots alone
  do not keep them at 0) and with ``steps_per_execution > 1``.
* The training step counter ``pruning_step`` (a non-trainable variable, saved
  with the model) is kept by the callback, which counts batches, not layer
  calls: a layer shared by two call sites counts one step per batch. It is
  written at every epoch end, at mask updates, at the end of fit and whenever
  the model is saved, so a checkpoint written during fit resumes at its step.
"""

import inspect
import json
import os
import warnings

import keras
import numpy as np
from keras import ops

from keras_gap import masks as mask_lib
from keras_gap import registry
from keras_gap.schedules import ConstantSparsity, deserialize_schedule, get_schedule

_PACKAGE = "keras_gap"

_MISSING_CALLBACK = (
    "PruneLowMagnitude layer {name!r} was called with training=True but the "
    "`keras_gap.UpdatePruningStep()` callback is not active. Pass it to fit: "
    "model.fit(..., callbacks=[keras_gap.UpdatePruningStep()]). In a custom "
    "training loop call its set_model(model) and on_train_begin() first, and "
    "on_train_batch_begin/on_train_batch_end around every step."
)

_MISSING_GAP_CALLBACK = (
    "PruneLowMagnitude layer {name!r} was called with training=True but the "
    "`keras_gap.GaPCallback()` callback is not active. This model was prepared by "
    "keras_gap.prune_gap: pass GaPCallback (not UpdatePruningStep) to fit: "
    "model.fit(..., callbacks=[keras_gap.GaPCallback()])."
)


def missing_callback_error(name, schedule=None):
    """The error for training a pruned layer without its callback.

    Args:
        name: the layer (or model) name for the message.
        schedule: its pruning schedule; one with ``required_callback =
            "GaPCallback"`` (`GaPPruningSchedule`) gets GaP's advice.

    Returns:
        A RuntimeError naming the callback to pass to ``fit``.
    """
    gap = getattr(schedule, "required_callback", None) == "GaPCallback"
    return RuntimeError((_MISSING_GAP_CALLBACK if gap else _MISSING_CALLBACK).format(name=name))


def _find_owner_attribute(layer, variable):
    """(owner_layer, attribute_name) whose attribute *is* ``variable``."""
    for owner in layer._flatten_layers(include_self=True, recursive=True):
        for attr, value in vars(owner).items():
            if value is variable:
                return owner, attr
    raise ValueError(
        f"Cannot find which attribute of layer {layer.name!r} holds the "
        f"prunable weight {variable.path!r}. `get_prunable_weights()` must "
        "return variables the layer stores as attributes (e.g. self.kernel)."
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PruneLowMagnitude(keras.layers.Wrapper):
    """Wraps a layer so that its prunable weights are masked during training.

    Same name and arguments as ``tfmot.sparsity.keras.PruneLowMagnitude``;
    usually created through `keras_gap.prune_low_magnitude`.

    Args:
        layer: the Keras layer to prune (see `keras_gap.registry`).
        pruning_schedule: a `PruningSchedule` (or a tf-mot schedule object);
            default ``ConstantSparsity(0.5, begin_step=0)``.
        block_size: (rows, cols) block of the weight viewed as
            [all leading axes, last axis]; (1, 1) is unstructured. (4, 1) on a
            Dense kernel is TFLite's native float sparse block, (16, 1) int8's.
        block_pooling_type: "AVG" or "MAX", how a block's score is pooled.
        sparsity_m_by_n: optional (M, N), tf-mot's meaning: M zeros in every
            N consecutive input channels ((2, 4): 2:4 for NVIDIA sparse tensor
            cores; (1, 4) keeps 3 of 4). Overrides the schedule's sparsity;
            masks are recomputed at every update. An input axis that is not
            a multiple of N ends in a partial group that keeps
            ``min(N - M, size)`` (as tf-mot).
        prune_depthwise: also prune DepthwiseConv kernels (off by default).
        criterion: how weights are scored for removal; a name registered in
            `keras_gap.criteria` or a `Criterion` object. Default "magnitude".
        scope: "layer" (each weight pruned to its own sparsity) or "global"
            (all wrappers of the same ``pruning_group`` ranked together by
            `UpdatePruningStep`; the schedule's sparsity is then overall).
        distribution: per-weight split of the schedule's sparsity across the
            ``pruning_group`` for ``scope="layer"``: "uniform", "erk", "er"
            or a dict {weight path: sparsity} (see `keras_gap.distributions`).
        pruning_group: name shared by wrappers pruned together (set by
            `prune_low_magnitude`); None is the default group.
        structure: "unstructured" (default) or "channel": whole output
            channels are masked (kernel slice, bias; gamma/beta of a wrapped
            BatchNormalization; DepthwiseConv slices), scored by the
            criterion summed per channel. In a model, `UpdatePruningStep`
            updates coupled channels together (see `keras_gap.channel_groups`).
        strict: with ``sparsity_m_by_n``, a weight whose input-channel axis
            (-2) is not a multiple of N (or of rank < 2) raises a ValueError
            when True; when False (default, as in tf-mot) the last group is
            partial, and a weight of rank < 2 is left unpruned with a warning
            naming it.
        **kwargs: passed to `keras.layers.Wrapper`.

    Returns:
        A layer whose outputs use the masked weights.

    Example:
        >>> layer = kg.PruneLowMagnitude(keras.layers.Dense(64),
        ...     pruning_schedule=kg.ConstantSparsity(0.8, begin_step=0))
    """

    def __init__(self, layer, pruning_schedule=None, block_size=(1, 1),
                 block_pooling_type="AVG", sparsity_m_by_n=None,
                 prune_depthwise=False, criterion="magnitude", scope="layer",
                 distribution="uniform", pruning_group=None, structure="unstructured",
                 strict=False, **kwargs):
        m_by_n_checked = kwargs.pop("_m_by_n_checked", False)
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(
                f"Layer {layer.layer.name!r} is already wrapped for pruning; "
                "pruning an already-pruned layer is not supported. Strip it "
                "first with keras_gap.strip_pruning.")
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                "PruneLowMagnitude wraps a keras.layers.Layer; received "
                f"{layer!r} of type {type(layer).__name__}.")
        if not registry.is_supported(layer, prune_depthwise):
            raise registry.unsupported_layer_error(layer)
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        if pruning_schedule is None:
            pruning_schedule = ConstantSparsity(0.5, begin_step=0)
        self.pruning_schedule = get_schedule(pruning_schedule)
        self.block_size = mask_lib.validate_block_size(block_size)
        self.block_pooling_type = mask_lib.validate_pooling_type(block_pooling_type)
        self.sparsity_m_by_n = mask_lib.validate_m_by_n(sparsity_m_by_n)
        if not m_by_n_checked:
            _warn_m_by_n_meaning(self.sparsity_m_by_n)
        self.prune_depthwise = bool(prune_depthwise)
        from keras_gap import criteria  # local: criteria imports this module's users
        self.criterion = criteria.get(criterion)
        if scope not in ("layer", "global"):
            raise ValueError(f"`scope` must be 'layer' or 'global'; received {scope!r}.")
        from keras_gap import distributions
        self.scope = scope
        self.distribution = distributions.validate_distribution(distribution)
        self.pruning_group = pruning_group
        self.strict = bool(strict)
        self.structure = validate_structure(structure, self.block_size, self.sparsity_m_by_n)
        self.channel_axes = []
        self.step_callback_active = False
        self._targets = []
        # Counts mask edits (set_masks), so observers such as
        # structured.TrainingCost re-read masks only when they changed.
        self.mask_version = 0

    # Building -----------------------------------------------------------------
    def build(self, input_shape=None):
        if not self.layer.built:
            try:
                self.layer.build(input_shape)
            except TypeError:
                # Layers whose build needs several shapes (MultiHeadAttention):
                # build for self-attention on the one shape we have.
                self.layer.build(input_shape, input_shape)
            self.layer.built = True
        if self.structure == CHANNEL:
            pairs = registry.channel_weights(self.layer)
            if not pairs:
                raise ValueError(
                    f"structure='channel' masks output channels of Dense, Conv*, "
                    "Conv*Transpose, SeparableConv, DepthwiseConv and "
                    f"BatchNormalization layers; layer {self.layer.name!r} "
                    f"({type(self.layer).__name__}) has none it can mask.")
            weights = [v for v, _ in pairs]
            self.channel_axes = [a for _, a in pairs]
        else:
            weights = registry.get_prunable_weights(self.layer, self.prune_depthwise)
            weights = self._skip_unfit_n_by_m(weights)
        # A layer with nothing to prune (Dropout, Flatten, pooling, norms,
        # DepthwiseConv unless opted in) is a no-op wrapper, as in tf-mot.
        self._targets = [_find_owner_attribute(self.layer, w) for w in weights]
        self.pruned_weights = list(weights)
        if self.structure != CHANNEL:
            for w in weights:
                self.check_structure(tuple(w.shape))
        self.masks = [
            self.add_weight(name=f"{w.name}_mask", shape=tuple(w.shape),
                            initializer="ones", trainable=False, dtype=w.dtype)
            for w in weights
        ]
        self.pruning_step = self.add_weight(
            name="pruning_step", shape=(), initializer="zeros",
            trainable=False, dtype="int32")
        self.built = True

    def _skip_unfit_n_by_m(self, weights):
        """Weights N:M can apply to; the others stay dense with a warning."""
        if self.sparsity_m_by_n is None or self.strict:
            return weights
        fit = [w for w in weights if len(w.shape) >= 2]
        for w in weights:
            if not any(w is f for f in fit):
                warnings.warn(
                    f"sparsity_m_by_n={self.sparsity_m_by_n}: weight {w.path!r} of "
                    f"shape {tuple(w.shape)} is left unpruned: N:M groups run along the "
                    "input-channel axis (-2), which a weight of rank < 2 does not have. "
                    "Pass strict=True to raise instead.", stacklevel=3)
        return fit

    def check_structure(self, shape):
        """Raises a clear error when block / N:M structure cannot apply."""
        probe = ops.ones(shape)
        if self.sparsity_m_by_n is not None:
            mask_lib.n_by_m_mask(probe, self.sparsity_m_by_n, partial=not self.strict)
        elif self.block_size != (1, 1):
            mask_lib.block_mask(probe, 0.5, self.block_size, self.block_pooling_type)

    # Forward ------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        # Keyword-only calls such as mha(query=x, value=x): the wrapped layer's
        # first call argument becomes the wrapper's positional input.
        if not args:
            first = _first_call_argument(self.layer)
            for name in (first, "inputs"):
                if name in kwargs:
                    args = (kwargs.pop(name),)
                    break
        return super().__call__(*args, **kwargs)

    def call(self, inputs, *args, training=None, **kwargs):
        if training:
            if not self.step_callback_active:
                # Read by the next UpdatePruningStep: the compiled step failed.
                object.__setattr__(self, "_missing_callback_raised", True)
                raise missing_callback_error(self.name, self.pruning_schedule)
        if training is not None:
            kwargs["training"] = training
        return self.masked(self.layer, inputs, *args, **kwargs)

    def masked(self, fn, *args, **kwargs):
        """Runs ``fn(*args, **kwargs)`` with each pruned weight of the wrapped
        layer replaced by ``weight * mask`` (restored after), as `call` does.

        keras-gap's in-place pruning (`keras_gap.inplace`, KerasHub models)
        runs the wrapped layer's own ``call`` through this.

        Args:
            fn: a callable that uses the wrapped layer (its ``call``, or the
                layer itself).
            *args, **kwargs: its arguments.

        Returns:
            What ``fn`` returns.

        Example:
            >>> y = wrapper.masked(wrapper.layer.call, x)
        """
        originals = []
        try:
            for (owner, attr), weight, mask in zip(self._targets, self.pruned_weights,
                                                   self.masks):
                originals.append((owner, attr, getattr(owner, attr)))
                object.__setattr__(owner, attr, ops.multiply(weight, mask))
            return fn(*args, **kwargs)
        finally:
            for owner, attr, value in originals:
                object.__setattr__(owner, attr, value)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return self.layer.compute_output_shape(input_shape, *args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        # Delegate symbolic calls with all their arguments: layers with several
        # inputs (MultiHeadAttention's query, value) need more than one shape.
        return self.layer.compute_output_spec(*args, **kwargs)

    # Eager mask operations (called from callbacks, never inside call) -----------
    def update_masks(self, sparsity, scores=None, gradients=None):
        """Recomputes every mask at ``sparsity`` and zeroes the removed weights.

        Args:
            sparsity: float in [0, 1) (ignored with ``sparsity_m_by_n``).
            scores: optional list of score tensors, one per pruned weight;
                default: the criterion's scores.
            gradients: optional list of loss gradients, one per pruned weight,
                for criteria that need them (FGGP).

        Returns:
            The list of new masks (tensors).

        Example:
            >>> wrapper.update_masks(0.8)
        """
        if self.structure == CHANNEL:
            return self.update_channel_masks(sparsity, gradients=gradients)
        new_masks = []
        for i, (weight, mask) in enumerate(zip(self.pruned_weights, self.masks)):
            new = self.criterion.compute_mask(
                weight=weight, mask=mask, sparsity=sparsity,
                block_size=self.block_size,
                block_pooling_type=self.block_pooling_type,
                sparsity_m_by_n=self.sparsity_m_by_n,
                scores=None if scores is None else scores[i],
                variable_path=weight.path,
                **({} if gradients is None else {"gradient": gradients[i]}))
            new_masks.append(new)
        self.set_masks(new_masks)
        return new_masks

    def scored_weights(self):
        """Indices of the pruned weights that score channels (kernels, not biases)."""
        kernels = {id(v) for v in registry.get_prunable_weights(self.layer, True)}
        picked = [i for i, v in enumerate(self.pruned_weights) if id(v) in kernels]
        return picked or list(range(len(self.pruned_weights)))

    def channel_keep(self):
        """Current per-output-channel keep vector (structure="channel")."""
        i = self.scored_weights()[0]
        return mask_lib.channel_scores(self.masks[i], self.channel_axes[i]) > 0

    def set_channel_keep(self, keep, reinitialize=True):
        """Masks every channel weight from one per-output-channel keep vector.

        A channel that comes back (mask 0 -> 1: GaP's grow, a random
        criterion) has all-zero weights; behind a BatchNormalization and a ReLU
        such a channel gets no gradient at all, so with ``reinitialize`` its
        kernel and scale restart from the layer's initializers.
        """
        keep = np.asarray(ops.convert_to_numpy(keep)).reshape(-1) > 0
        if reinitialize:
            grown = keep & ~self.channel_keep()
            if grown.any():
                self._reinitialize_channels(grown)
        self.set_masks([mask_lib.expand_channel_mask(keep, tuple(v.shape), axis)
                        for v, axis in zip(self.pruned_weights, self.channel_axes)])

    def _reinitialize_channels(self, grown):
        names = {"kernel": ("kernel_initializer", "depthwise_initializer"),
                 "pointwise_kernel": ("pointwise_initializer",),
                 "gamma": ("gamma_initializer",)}
        for v, axis in zip(self.pruned_weights, self.channel_axes):
            init = next((getattr(self.layer, a) for a in names.get(v.name, ())
                         if getattr(self.layer, a, None) is not None), None)
            if init is None:
                continue  # biases and offsets restart at 0
            region = mask_lib.expand_channel_mask(grown, tuple(v.shape), axis)
            fresh = keras.initializers.get(init)(tuple(v.shape), dtype=v.dtype)
            v.assign(ops.where(region > 0, fresh, ops.convert_to_tensor(v)))

    def update_channel_masks(self, sparsity, gradients=None):
        """This layer's channels alone (a wrapper used outside a model).

        In a model, `UpdatePruningStep` updates coupled channels together
        with `keras_gap.pruning_groups.ChannelPlan` instead.
        """
        idx = self.scored_weights()
        keep = self.criterion.select_channels(
            [self.pruned_weights[i] for i in idx], [self.masks[i] for i in idx],
            [None if gradients is None else gradients[i] for i in idx],
            [np.arange(int(mask_lib.channel_scores(self.masks[i],
                                                   self.channel_axes[i]).size))
             for i in idx], [self.channel_axes[i] for i in idx], sparsity)
        self.set_channel_keep(keep)
        return [ops.convert_to_tensor(m) for m in self.masks]

    def set_masks(self, new_masks):
        """Assigns masks and multiplies the weights by them."""
        self.mask_version += 1
        for weight, mask, new in zip(self.pruned_weights, self.masks, new_masks):
            new = ops.cast(new, mask.dtype)
            mask.assign(new)
            weight.assign(ops.multiply(weight, new))

    def apply_masks(self):
        """Multiplies every pruned weight by its mask (bakes zeros in)."""
        if not self.built:  # never built (e.g. an unbuilt Sequential): no masks yet
            return
        for weight, mask in zip(self.pruned_weights, self.masks):
            weight.assign(ops.multiply(weight, mask))

    def mask_counts(self):
        """[(num_elements, num_nonzero_in_mask)] per pruned weight."""
        out = []
        for mask in self.masks:
            m = ops.convert_to_numpy(mask)
            out.append((int(m.size), int((m != 0).sum())))
        return out

    def current_step(self):
        """Training steps run so far (int), exact also in the middle of a fit.

        During fit the pruning callback holds the live count and writes
        ``pruning_step`` at epoch ends, mask updates and saves.
        """
        source = getattr(self, "_step_source", None)
        if source is not None:
            return int(source.current_step())
        return int(ops.convert_to_numpy(self.pruning_step))

    # Serialization ------------------------------------------------------------
    def save_own_variables(self, store):
        # A checkpoint written in the middle of an epoch carries the step it
        # was taken at.
        if getattr(self, "_step_source", None) is not None:
            self.pruning_step.assign(self.current_step())
        super().save_own_variables(store)

    # A wrapper attached in place (`keras_gap.inplace`) is saved with the model
    # it prunes, whose own config knows nothing of it: its settings and the path
    # of its layer go into the `.keras` archive's assets, where
    # `keras_gap.load_model` finds them to attach it again.
    IN_PLACE_ASSET = "keras_gap_in_place.json"

    def save_assets(self, dir_path):
        path = getattr(self, "in_place_path", None)
        if not getattr(self, "in_place", False) or path is None:
            return
        config = {k: v for k, v in self.get_config().items() if k != "layer"}
        with open(os.path.join(dir_path, self.IN_PLACE_ASSET), "w") as f:
            json.dump({"path": path, "index": getattr(self, "in_place_index", 0),
                       "config": config}, f)

    def load_assets(self, dir_path):
        del dir_path  # read by keras_gap.load_model before the wrapper exists

    def get_config(self):
        config = super().get_config()
        config.update({
            "pruning_schedule": self.pruning_schedule.get_config(),
            "block_size": list(self.block_size),
            "block_pooling_type": self.block_pooling_type,
            "sparsity_m_by_n": (list(self.sparsity_m_by_n)
                                if self.sparsity_m_by_n else None),
            "prune_depthwise": self.prune_depthwise,
            "criterion": keras.saving.serialize_keras_object(self.criterion),
            "scope": self.scope,
            "distribution": self.distribution,
            "pruning_group": self.pruning_group,
            "structure": self.structure,
            "strict": self.strict,
            "step_origin": 1,
            "m_by_n_meaning": "zeros",  # (M, N): M zeros in every N (tf-mot)
        })
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(
            config.pop("layer"), custom_objects=custom_objects)
        return cls.from_config_with_layer(layer, config, custom_objects)

    @classmethod
    def from_config_with_layer(cls, layer, config, custom_objects=None):
        """A wrapper of ``layer`` (an existing layer) with the settings of ``config``.

        Args:
            layer: the layer to wrap (not deserialized: the one a model already
                holds, as when a model pruned in place is loaded).
            config: `get_config()` of a wrapper, with or without its "layer".
            custom_objects: as for `from_config`.

        Returns:
            A `PruneLowMagnitude`.

        Example:
            >>> w2 = PruneLowMagnitude.from_config_with_layer(dense, w.get_config())
        """
        config = {k: v for k, v in config.items() if k != "layer"}
        schedule = config["pruning_schedule"]
        if config.pop("step_origin", 0) == 0:
            schedule = _shift_legacy_schedule(schedule, config.get("name"))
        config["pruning_schedule"] = deserialize_schedule(schedule)
        config["criterion"] = keras.saving.deserialize_keras_object(
            config["criterion"], custom_objects=custom_objects)
        if config.pop("m_by_n_meaning", None) is None and config.get("sparsity_m_by_n"):
            config["sparsity_m_by_n"] = _legacy_m_by_n(config["sparsity_m_by_n"],
                                                       config.get("name"))
        return cls(layer, _m_by_n_checked=True, **config)


_WARNED_M_BY_N = set()


def _warn_m_by_n_meaning(m_by_n):
    """Once per pair: an asymmetric pair now means what it means in tf-mot."""
    if m_by_n is None or m_by_n[0] * 2 == m_by_n[1] or m_by_n in _WARNED_M_BY_N:
        return
    _WARNED_M_BY_N.add(m_by_n)
    m, n = m_by_n
    warnings.warn(
        f"sparsity_m_by_n={m_by_n} means {m} zero(s) in every {n} input channels "
        f"({n - m} of {n} kept), tf-mot's meaning. keras-gap before 2026-12-07 read the "
        f"pair as {m} kept of {n}; for that pattern pass sparsity_m_by_n=({n - m}, {n}). "
        "Models saved before the change are converted when loaded.", stacklevel=4)


def _legacy_m_by_n(pair, name):
    """A pair saved with the former meaning (N kept of M) in tf-mot's (zeros, N)."""
    kept, n = (int(v) for v in pair)
    if 2 * kept != n:
        warnings.warn(
            f"Layer {name!r} was saved by keras-gap before 2026-12-07 with "
            f"sparsity_m_by_n={tuple(pair)} meaning {kept} kept of {n}; loaded as "
            f"sparsity_m_by_n=({n - kept}, {n}) (tf-mot's meaning: zeros), the same "
            "pattern.", stacklevel=3)
    return [n - kept, n]


def _first_call_argument(layer):
    """Name of the first argument of ``layer.call`` (``query`` for MHA)."""
    try:
        params = list(inspect.signature(layer.call).parameters.values())
    except (TypeError, ValueError):
        return None
    if params and params[0].kind in (params[0].POSITIONAL_ONLY,
                                     params[0].POSITIONAL_OR_KEYWORD):
        return params[0].name
    return None


def _shift_legacy_schedule(schedule_config, name):
    """Schedule config of a model saved when keras-gap counted from step 0.

    Until keras-gap 0.1.0 the first training batch was step 0; it is now step
    1, as in tf-mot, and ``pruning_step`` still counts the batches run. Adding
    1 to ``begin_step`` / ``end_step`` makes an old checkpoint update its masks
    at exactly the batches it used to.
    """
    if not isinstance(schedule_config, dict) or "config" not in schedule_config:
        return schedule_config
    inner = dict(schedule_config["config"])
    if "begin_step" not in inner:
        warnings.warn(
            f"Pruning layer {name!r} was saved by an older keras-gap that numbered "
            "training steps from 0; its schedule "
            f"{schedule_config.get('class_name')!r} has no begin_step to shift, so "
            "it now fires one batch later (steps are numbered from 1, as in tf-mot).")
        return schedule_config
    inner["begin_step"] = int(inner["begin_step"]) + 1
    if inner.get("end_step", -1) != -1:
        inner["end_step"] = int(inner["end_step"]) + 1
    return dict(schedule_config, config=inner)


UNSTRUCTURED, CHANNEL = "unstructured", "channel"
STRUCTURES = (UNSTRUCTURED, CHANNEL)


def validate_structure(structure, block_size=(1, 1), sparsity_m_by_n=None):
    """Returns ``structure`` or raises a clear error (channel + block / N:M)."""
    if structure not in STRUCTURES:
        raise ValueError(f"`structure` must be one of {STRUCTURES}; received {structure!r}.")
    if structure == CHANNEL and tuple(block_size) != (1, 1):
        raise ValueError("structure='channel' removes whole output channels; it cannot be "
                         f"combined with block_size={tuple(block_size)}. Use block_size=(1, 1).")
    if structure == CHANNEL and sparsity_m_by_n is not None:
        raise ValueError("structure='channel' removes whole output channels; it cannot be "
                         f"combined with sparsity_m_by_n={tuple(sparsity_m_by_n)}.")
    return structure


def collect_wrappers(model):
    """All `PruneLowMagnitude` layers in a model, nested models included.

    In definition order, depth first (Keras' ``_flatten_layers`` reverses the
    order of sublayers inside nested models).
    """
    if isinstance(model, PruneLowMagnitude):
        return [model]
    found, seen = [], set()

    def walk(layer):
        for sub in getattr(layer, "_layers", []):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if isinstance(sub, PruneLowMagnitude):
                found.append(sub)
            else:
                walk(sub)

    walk(model)
    return found
