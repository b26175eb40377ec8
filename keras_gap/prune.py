"""One-call API: `prune_low_magnitude` to wrap, `strip_pruning` to unwrap.

Both follow tf-mot: models are cloned with ``keras.models.clone_model`` and a
clone function that wraps (or unwraps) layers. The clone reuses the original
layers, so the pruned model starts from the original weights; the optimizer is
not carried over (compile the pruned model).
"""

import warnings

import keras

from keras_gap import criteria, distributions, inplace, registry
from keras_gap.schedules import ConstantSparsity, PolynomialDecay
from keras_gap.wrapper import PruneLowMagnitude, collect_wrappers

_UNSUPPORTED_MODES = ("error", "keep_dense")


def _is_graph_model(model):
    """Sequential or Functional (cloneable) as opposed to subclassed."""
    # Functional subclasses (KerasHub tasks/backbones) are not cloned: cloning
    # loses their class (see docs/DESIGN.md).
    return isinstance(model, keras.Sequential) or (
        isinstance(model, keras.Function) and type(model).__name__ == "Functional")


def _warn_already_pruned(names, what):
    warnings.warn(
        f"prune_low_magnitude: every prunable layer of this {what} is already wrapped in "
        f"PruneLowMagnitude ({names}); it is returned with those wrappers and their "
        "schedules unchanged (as tf-mot does). To prune again with new settings, "
        "strip it first with keras_gap.strip_pruning.", stacklevel=3)


def _check_not_pruned(obj):
    layers = [obj] if isinstance(obj, keras.layers.Layer) else list(obj)
    for layer in layers:
        if isinstance(layer, PruneLowMagnitude) or (
                isinstance(layer, keras.Model) and collect_wrappers(layer)):
            raise ValueError(
                f"{getattr(layer, 'name', layer)!r} is already pruned (it contains "
                "PruneLowMagnitude layers). Pruning an already-pruned model is not "
                "supported: strip it first with keras_gap.strip_pruning, or keep "
                "training the pruned model.")


def clone_with(model, clone_layer, input_tensors=None, clone_nested=None):
    """Clones a Sequential/Functional model, mapping every leaf layer.

    Args:
        model: a Sequential or Functional model.
        clone_layer: function(layer) -> layer used in the clone.
        input_tensors: optional new inputs (``keras.Input``) for the clone,
            as in ``keras.models.clone_model``.
        clone_nested: optional function(nested model) -> its clone; default
            clones it recursively with ``clone_layer``.

    Returns:
        The cloned model (nested models are cloned recursively; a Functional
        subclass such as a KerasHub backbone comes back as a plain Functional
        model of the same graph).
    """
    if inplace.is_functional_subclass(model):
        # A KerasHub backbone or task: its graph, as a plain Functional model
        # (the clone has other layers, which its class's config cannot describe).
        model = keras.Model(model.input, model.output, name=model.name)
    if not _is_graph_model(model):
        raise ValueError(
            f"Model {model.name!r} is a subclassed model ({type(model).__name__}); "
            "it cannot be cloned layer by layer. Wrap its layers where they are "
            "created instead, e.g. in __init__: "
            "self.dense = keras_gap.prune_low_magnitude(keras.layers.Dense(64), "
            "pruning_schedule=...). The UpdatePruningStep callback and "
            "strip_pruning's layer form work on such models.")

    def fn(layer):
        if isinstance(layer, keras.Model):
            if clone_nested is not None:
                return clone_nested(layer)
            return clone_with(layer, clone_layer)
        return clone_layer(layer)

    # Like tf-mot, the clone is not compiled: keras.models.clone_model would
    # re-compile it, and a stripped model saved to .keras would then carry a
    # fresh optimizer's slot variables (3x the file size for Adam).
    compiled = getattr(model, "compiled", False)
    try:
        model.compiled = False
        return keras.models.clone_model(model, input_tensors=input_tensors,
                                        clone_function=fn)
    finally:
        model.compiled = compiled


def prune_low_magnitude(to_prune, pruning_schedule=None, block_size=(1, 1),
                        block_pooling_type="AVG", pruning_policy=None,
                        sparsity_m_by_n=None, *, prune_depthwise=False,
                        criterion="magnitude", unsupported_layers="error",
                        scope="layer", distribution="uniform", initial_mask="dense",
                        initial_sparsity=None, seed=None, target=None,
                        structure="unstructured", **kwargs):
    """Wraps a layer, a list of layers or a model for magnitude pruning.

    tf-mot's function with the same name and arguments, for Keras 3 models on
    the TensorFlow, JAX and PyTorch backends. Train with the
    `UpdatePruningStep` callback, then `strip_pruning`.

    Args:
        to_prune: a Keras layer, a list of layers, or a Sequential / Functional
            model (nested models included). Layers with nothing to prune
            (Dropout, Flatten, pooling, norms) become no-op wrappers when given
            as layers, and stay unwrapped in a model; layers of a model that
            are already wrapped are kept as they are (as in tf-mot).
        pruning_schedule: `PruningSchedule` (or tf-mot schedule). None (the
            default) uses tf-mot's default, ``ConstantSparsity(0.5,
            begin_step=0)``: 50% sparsity from the first step, masks updated
            every 100 steps.
        block_size: block of the weight matrix pruned as a unit, e.g. (4, 1)
            for TFLite's sparse float FULLY_CONNECTED kernel.
        block_pooling_type: "AVG" or "MAX".
        pruning_policy: optional `keras_gap.PruningPolicy` (e.g.
            `PruneForLatencyOnXNNPack`: the model is checked first) or
            ``callable(layer) -> bool``; layers for which it returns False
            are left dense (first conv, classifier, ...).
        sparsity_m_by_n: optional (M, N) structured sparsity, tf-mot's meaning:
            M zeros in every N consecutive input channels, e.g. (2, 4) for 2:4.
        prune_depthwise: also prune DepthwiseConv kernels.
        criterion: "magnitude" (default), "random", a registered name or a
            `keras_gap.criteria.Criterion`.
        unsupported_layers: "error" (default) raises on a layer with weights
            keras-gap cannot prune; "keep_dense" leaves such layers as they are.
        scope: "layer" (default; each weight pruned to its own sparsity) or
            "global" (all wrapped weights ranked together; the schedule's
            sparsity is the overall one). Layers excluded by
            ``pruning_policy`` (e.g. the first conv) stay dense and outside.
        distribution: how the schedule's sparsity is split over the wrapped
            weights with ``scope="layer"``: "uniform" (default), "erk", "er"
            or a dict {weight path: sparsity}; also the split of a random
            initial mask.
        initial_mask: "dense" (default), "random" (exact-count random masks
            at ``initial_sparsity`` split by ``distribution``) or
            "erk_random" (the same with ERK). Use a schedule that starts at
            ``initial_sparsity``, e.g. PolynomialDecay(0.5, 0.95, ...).
        initial_sparsity: overall sparsity of the random initial mask.
        seed: int seed of the random initial mask.
        target: None, "tflite" or "tflite_int8": prune Dense kernels in the
            blocks TFLite's sparse FULLY_CONNECTED kernel runs natively ((4, 1)
            float, (16, 1) int8) and other layers unstructured (they only get
            a smaller file). Overrides ``block_size`` per layer.
        structure: "unstructured" (default) or "channel": whole output
            channels are removed, scored by the criterion summed per channel
            (L1 norm per filter for "magnitude") and pooled over each channel
            group (`keras_gap.channel_groups`: a residual Add's branches, the
            BatchNormalization / DepthwiseConv that follow a conv). Layers
            with per-channel weights (Dense, Conv*, SeparableConv,
            DepthwiseConv, BatchNormalization) are wrapped; a group is pruned
            when all its layers are wrapped and it is removable (groups that
            reach a model output, or a layer the analysis cannot see through,
            or a layer kept dense by ``pruning_policy``, keep every channel).
            At least one channel of a group stays. Follow with
            `keras_gap.materialize` for a smaller dense model.
        **kwargs: extra arguments for `PruneLowMagnitude`.

    Returns:
        The wrapped layer, list of wrapped layers, or a new model. A
        Functional subclass (a KerasHub task or backbone) is pruned in place
        and returned itself, still of its class (see `keras_gap.inplace`).

    Example:
        >>> pruned = kg.prune_low_magnitude(model, pruning_schedule=
        ...     kg.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=2000))
        >>> pruned.compile("adam", "sparse_categorical_crossentropy")
        >>> pruned.fit(x, y, callbacks=[kg.UpdatePruningStep()])
    """
    if unsupported_layers not in _UNSUPPORTED_MODES:
        raise ValueError(f"`unsupported_layers` must be one of {_UNSUPPORTED_MODES}; "
                         f"received {unsupported_layers!r}.")
    if pruning_schedule is None:
        pruning_schedule = ConstantSparsity(0.5, begin_step=0)
    init_distribution = _check_sparse_options(
        criteria.get(criterion), scope, distribution, initial_mask, initial_sparsity, block_size,
        sparsity_m_by_n)
    _check_structure(structure, block_size, sparsity_m_by_n, scope, distribution,
                     initial_mask, target)
    kwargs.setdefault("pruning_group",
                      f"pruning_group_{keras.backend.get_uid('keras_gap_group')}")
    params = dict(pruning_schedule=pruning_schedule, block_size=block_size,
                  block_pooling_type=block_pooling_type,
                  sparsity_m_by_n=sparsity_m_by_n, prune_depthwise=prune_depthwise,
                  criterion=criterion, scope=scope, distribution=distribution,
                  structure=structure, **kwargs)

    _check_target(target)

    def wrap(layer, path=None):  # path: the layer's path in a model pruned in place
        named = dict(params, name=inplace.wrapper_name(path)) if path else params
        if target is None:
            return PruneLowMagnitude(layer, **named)
        return PruneLowMagnitude(layer, **dict(named, block_size=_target_block(layer, target)))

    if isinstance(to_prune, (list, tuple)):
        # As in tf-mot, wrapped layers and InputLayers of the list are kept as
        # they are (a list with nothing left to wrap comes back unchanged).
        keep = (PruneLowMagnitude, keras.layers.InputLayer)
        if to_prune and all(isinstance(layer, keep) for layer in to_prune):
            _warn_already_pruned([layer.name for layer in to_prune
                                  if isinstance(layer, PruneLowMagnitude)], "list")
        _check_not_pruned([layer for layer in to_prune if not isinstance(layer, keep)])
        result = [layer if isinstance(layer, keep) else wrap(layer) for layer in to_prune]
    elif inplace.is_functional_subclass(to_prune):
        # A KerasHub task / backbone: pruned in place, it stays its class.
        if hasattr(pruning_policy, "ensure_model_supports_pruning"):
            pruning_policy.ensure_model_supports_pruning(to_prune)
        result = inplace.prune_in_place(to_prune, wrap, pruning_policy, prune_depthwise,
                                        structure, unsupported_layers)
    elif isinstance(to_prune, keras.Model):
        # Layers already wrapped are kept as they are (tf-mot); prune_model
        # raises when nothing is left to wrap.
        if hasattr(pruning_policy, "ensure_model_supports_pruning"):
            pruning_policy.ensure_model_supports_pruning(to_prune)
        result = prune_model(to_prune, wrap, pruning_policy, prune_depthwise,
                             unsupported_layers, structure=structure)
    elif isinstance(to_prune, PruneLowMagnitude):  # tf-mot returns it as it is
        _warn_already_pruned([to_prune.name], "layer")
        result = to_prune
    elif isinstance(to_prune, keras.layers.Layer):
        _check_not_pruned(to_prune)
        result = wrap(to_prune)
    else:
        result = None
    if result is not None:
        if init_distribution is not None:
            apply_random_initial_masks(result, initial_sparsity, init_distribution, seed)
        return result
    raise ValueError(
        "`to_prune` must be a keras Layer, a list of layers, or a Sequential / "
        f"Functional keras Model; received {to_prune!r} of type "
        f"{type(to_prune).__name__}.")


_TARGETS = {None: None, "tflite": 4, "tflite_int8": 16}


def _check_target(target):
    if target not in _TARGETS:
        raise ValueError(f"`target` must be one of {sorted(_TARGETS, key=str)}; "
                         f"received {target!r}.")


def _target_block(layer, target):
    """TFLite's native sparse block for a Dense kernel; (1, 1) elsewhere."""
    rows = _TARGETS[target]
    if isinstance(layer, keras.layers.Dense) and layer.built \
            and int(layer.kernel.shape[0]) % rows == 0:
        return (rows, 1)
    return (1, 1)


def has_prunable_weights(layer, prune_depthwise=False, structure="unstructured"):
    """True when ``layer`` is built and owns weights pruning would mask."""
    if structure == "channel":
        return layer.built and bool(registry.channel_weights(layer))
    if not layer.built:
        return registry.is_supported(layer, prune_depthwise) and not isinstance(
            layer, registry._PASS_THROUGH + registry.WEIGHTLESS_LAYERS)
    return bool(registry.get_prunable_weights(layer, prune_depthwise))


def prune_model(model, wrap, pruning_policy=None, prune_depthwise=False,
                unsupported_layers="error", structure="unstructured"):
    """Clones ``model`` wrapping every prunable layer with ``wrap(layer)``.

    The building block of `prune_low_magnitude` and `keras_gap.prune_gap`.

    Args:
        model: Sequential or Functional model.
        wrap: function(layer) -> PruneLowMagnitude.
        pruning_policy: optional `keras_gap.PruningPolicy` or callable(layer)
            -> bool (False: keep dense).
        prune_depthwise: also prune DepthwiseConv kernels.
        unsupported_layers: "error" or "keep_dense".
        structure: "unstructured" or "channel" (wrap the layers with
            per-channel weights, see `keras_gap.registry.channel_weights`).

    Returns:
        The pruned model.
    """
    wrapped, already = [], []
    allow = getattr(pruning_policy, "allow_pruning", pruning_policy)

    def clone_layer(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a keras.ops call on symbolic tensors (x + 3): no weights
        if isinstance(layer, PruneLowMagnitude):
            already.append(layer)  # wrapped by the user: kept as it is (tf-mot)
            return layer
        if not registry.is_supported(layer, prune_depthwise):
            if unsupported_layers == "keep_dense":
                return layer
            raise registry.unsupported_layer_error(layer)
        if allow is not None and not allow(layer):
            return layer
        if not has_prunable_weights(layer, prune_depthwise, structure):
            return layer
        wrapper = wrap(layer)
        wrapped.append(wrapper)
        return wrapper

    pruned = clone_with(model, clone_layer)
    if not wrapped and already:  # tf-mot: a new model holding the same wrappers
        _warn_already_pruned([w.name for w in already], f"model {model.name!r}")
        return pruned
    if not wrapped:
        raise ValueError(
            f"Model {model.name!r} has no prunable weights (no Dense, Conv, "
            "Embedding, RNN, MultiHeadAttention or get_prunable_weights() layer "
            "was selected). Nothing to prune.")
    return pruned


def prune_scope():
    """A scope in which pruned models saved to ``.keras`` / h5 load (tf-mot).

    keras-gap's classes are registered with Keras, so ``keras.models.load_model``
    works without it; the scope exists so tf-mot code runs unchanged.

    Returns:
        A `keras.saving.CustomObjectScope` with keras-gap's pruning classes.

    Example:
        >>> with kg.prune_scope():
        ...     loaded = keras.models.load_model("pruned.keras")
    """
    return keras.saving.CustomObjectScope({
        "PruneLowMagnitude": PruneLowMagnitude, "ConstantSparsity": ConstantSparsity,
        "PolynomialDecay": PolynomialDecay})


def _strip_layer(layer):
    if isinstance(layer, PruneLowMagnitude):
        layer.apply_masks()
        return layer.layer
    return layer


def strip_pruning(model):
    """Removes pruning wrappers; the zeros are baked into the weights.

    The result is a plain, uncompiled Keras model (saves and loads without
    custom objects) whose inference outputs equal the pruned model's.

    Args:
        model: a pruned model or a `PruneLowMagnitude` layer. For a subclassed
            model whose layers were wrapped by hand, strip each layer.

    Returns:
        The stripped model (or the inner layer); a model pruned in place (a
        KerasHub model) is stripped in place and returned itself, and one that
        holds no wrapper is returned itself.

    Example:
        >>> final = kg.strip_pruning(pruned)
        >>> final.save("final.keras")
    """
    if isinstance(model, PruneLowMagnitude):
        return _strip_layer(model)
    if not isinstance(model, keras.Model):
        raise ValueError("strip_pruning expects a keras Model or a PruneLowMagnitude "
                         f"layer; received {model!r} of type {type(model).__name__}.")
    if inplace.in_place_wrappers(model):  # pruned in place: the same object, unwrapped
        return inplace.strip_in_place(model)
    if inplace.is_functional_subclass(model):
        return model  # a KerasHub model never pruned (or already stripped): nothing to do
    return clone_with(model, _strip_layer)


_INITIAL_MASKS = ("dense", "random", "erk_random")


def _check_structure(structure, block_size, sparsity_m_by_n, scope, distribution,
                     initial_mask, target):
    """Validates ``structure`` and what it cannot be combined with."""
    from keras_gap.wrapper import CHANNEL, validate_structure
    validate_structure(structure, block_size, sparsity_m_by_n)
    if structure != CHANNEL:
        return
    for name, value, default in (("scope", scope, "layer"),
                                 ("distribution", distribution, "uniform"),
                                 ("initial_mask", initial_mask, "dense"),
                                 ("target", target, None)):
        if value != default:
            raise ValueError(f"structure='channel' prunes each channel group to the "
                             f"schedule's sparsity; it does not support {name}={value!r} "
                             f"(use the default {default!r}).")


def _check_sparse_options(criterion, scope, distribution, initial_mask,
                          initial_sparsity, block_size, sparsity_m_by_n):
    """Validates the FGGP / sparse-start options; returns the initial split."""
    if scope not in ("layer", "global"):
        raise ValueError(f"`scope` must be 'layer' or 'global'; received {scope!r}.")
    distributions.validate_distribution(distribution)
    structured = tuple(block_size) != (1, 1) or sparsity_m_by_n is not None
    if structured and (scope == "global" or criterion.needs_gradients):
        raise ValueError(
            f"scope={scope!r} with criterion {criterion!r} supports unstructured "
            f"pruning only; received block_size={tuple(block_size)}, "
            f"sparsity_m_by_n={sparsity_m_by_n}.")
    if initial_mask not in _INITIAL_MASKS:
        raise ValueError(f"`initial_mask` must be one of {_INITIAL_MASKS}; "
                         f"received {initial_mask!r}.")
    if initial_mask == "dense":
        if initial_sparsity not in (None, 0, 0.0):
            raise ValueError(
                f"initial_sparsity={initial_sparsity} needs a sparse start: pass "
                "initial_mask='random' or 'erk_random'.")
        return None
    if initial_sparsity is None:
        raise ValueError(f"initial_mask={initial_mask!r} needs `initial_sparsity` "
                         "(e.g. 0.5).")
    from keras_gap import masks as mask_lib
    mask_lib.validate_sparsity(initial_sparsity, "initial_sparsity")
    return "erk" if initial_mask == "erk_random" else distribution


def apply_random_initial_masks(pruned, sparsity, distribution="erk", seed=None):
    """Gives every pruned weight an exact-count random mask (a sparse start).

    Args:
        pruned: a pruned model, a `PruneLowMagnitude` layer or a list of them
            (built).
        sparsity: overall sparsity over all pruned weights.
        distribution: "uniform", "erk", "er" or a dict (see
            `keras_gap.distributions.layer_sparsities`).
        seed: int seed.

    Returns:
        dict weight path -> sparsity that was applied.

    Example:
        >>> apply_random_initial_masks(pruned, 0.5, "erk", seed=0)
    """
    items = pruned if isinstance(pruned, (list, tuple)) else [pruned]
    wrappers = [w for item in items for w in collect_wrappers(item)]
    unbuilt = [w.name for w in wrappers if not w.built]
    if unbuilt:
        raise ValueError(
            f"A random initial mask needs built layers; {unbuilt} are not built. "
            "Prune a model with an Input (or build the layers) first.")
    weights = [v for w in wrappers for v in w.pruned_weights]
    shapes = {v.path: tuple(v.shape) for v in weights}
    masks = distributions.random_masks(shapes, sparsity, distribution, seed=seed)
    for w in wrappers:
        w.set_masks([masks[v.path] for v in w.pruned_weights])
    return distributions.layer_sparsities(shapes, sparsity, distribution)
