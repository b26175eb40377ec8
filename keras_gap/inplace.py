"""Pruning in place: masks attached to a model's own layers, the model object kept.

`prune_low_magnitude` clones Sequential and Functional models and puts a
`PruneLowMagnitude` wrapper where each prunable layer was. That cannot work for
a *Functional subclass* (a KerasHub task or backbone: ``class
BertBackbone(keras.Model)`` built with ``super().__init__(inputs, outputs)``):
cloning loses its class, so ``generate()``, ``preprocessor`` and ``backbone``
would be gone, and most of its weights sit inside composite layers
(``TransformerEncoder``, ``CachedMultiHeadAttention``) that a layer-by-layer
clone does not enter.

So for those models keras-gap prunes in place, the pattern of Keras' own
``enable_lora()`` / ``quantize()``: the model and every layer stay the objects
they were, at any depth. Each prunable layer gets a `PruneLowMagnitude` that
holds its masks and step counter (the same wrapper, so every schedule, callback,
criterion and optimizer wrapper works unchanged), and the layer's ``call`` is
replaced on the instance by one that runs the original ``call`` with
``weight * mask`` in place of each pruned weight (`PruneLowMagnitude.masked`).
The wrappers are tracked in the model's ``keras_gap_wrappers`` list, so their
variables are model state (saved, restored by ``BackupAndRestore`` /
``load_weights``, carried by the JAX trainer). `strip_in_place` zeroes the
removed weights for good, restores every ``call`` and drops the list: the model
is again exactly its class, and saves and loads without keras-gap.

Embeddings and normalizations stay dense in place (token and position tables,
a tied ``ReversibleEmbedding`` that is also the LM head, KerasHub's own norm
layers: any class whose name holds "Embedding" or "Norm"), as does any layer a
``pruning_policy`` keeps dense. Another leaf layer that owns weights keras-gap
does not know is an error naming it (``unsupported_layers="keep_dense"``
keeps it dense).
"""

import json
import zipfile

import keras

from keras_gap import optimizer_wrappers, registry
from keras_gap.wrapper import PruneLowMagnitude

ATTRIBUTE = "keras_gap_wrappers"


def is_functional_subclass(model):
    """Whether ``model`` is pruned in place.

    Args:
        model: any object.

    Returns:
        True for a graph model of a subclass of Model (KerasHub's tasks and
        backbones), which cloning would turn into a plain Functional model.

    Example:
        >>> is_functional_subclass(keras_hub.models.BertBackbone(...))
        True
    """
    return (isinstance(model, keras.Model) and isinstance(model, keras.Function)
            and type(model).__name__ != "Functional"
            and not isinstance(model, keras.Sequential))


def in_place_wrappers(model):
    """The wrappers `prune_in_place` attached to ``model``.

    Args:
        model: a Keras model.

    Returns:
        A list of `PruneLowMagnitude` ([] if the model is not pruned in place).

    Example:
        >>> [w.name for w in in_place_wrappers(pruned_lm)]
    """
    return list(getattr(model, ATTRIBUTE, None) or [])


def _prunable(layer, prune_depthwise, structure):
    if isinstance(layer, (keras.Model, PruneLowMagnitude, keras.layers.Embedding)):
        return False
    if not registry.is_supported(layer, prune_depthwise) or not layer.built:
        return False
    if structure == "channel":
        return bool(registry.channel_weights(layer))
    return bool(registry.get_prunable_weights(layer, prune_depthwise))


def _dense_by_rule(layer):
    """Embeddings, position tables and normalizations (KerasHub's PositionEmbedding,
    RMSNormalization, LlamaLayerNorm, T5LayerNorm ...): kept dense, silently."""
    name = type(layer).__name__
    return isinstance(layer, keras.layers.Embedding) or "Embedding" in name or "Norm" in name


def wrapper_name(path):
    """The name of the in-place wrapper of the layer at ``path`` (unique in a model,
    where layer names repeat in every block)."""
    return "prune_low_magnitude_" + path.replace("/", "__")


def prunable_paths(model, prune_depthwise=False, structure="unstructured", unknown=None,
                   is_leaf=None):
    """The layers `prune_in_place` would mask, with their paths and blocks.

    Args:
        model: a built Functional subclass.
        prune_depthwise: also DepthwiseConv kernels.
        structure: "unstructured".
        unknown: optional list; the paths of leaf layers with weights keras-gap
            does not know how to prune are appended to it (with ``is_leaf``:
            every other leaf layer with weights, tables and norms excepted).
        is_leaf: optional ``layer -> bool`` selecting the layers to list
            instead of keras-gap's prunable layers (layers it rejects are
            entered when they have sublayers).

    Returns:
        [(path, layer, block)] in definition order: ``path`` like
        ``"gpt2_backbone/transformer_layer_0/self_attention"``; ``block`` the
        path of the outermost composite layer holding it (a transformer
        block), or None for a layer of the model's graph itself.

    Example:
        >>> [p for p, _, _ in prunable_paths(lm)][:1]
        ['gpt2_backbone/transformer_layer_0/self_attention']
    """
    return [(path, layer, block) for path, layer, block
            in _leaves(model, prune_depthwise, structure, unknown, is_leaf)]


def _leaves(model, prune_depthwise, structure, unknown=None, is_leaf=None):
    """[(path, layer, block)] of the prunable layers at any depth, in definition
    order; ``unknown`` collects the paths of leaf layers that own weights
    keras-gap does not know how to prune (not tables). ``is_leaf(layer)``
    replaces the prunability test (one-shot pruning selects Dense and
    EinsumDense layers, inside attention layers too)."""
    out, seen = [], set()
    custom_leaf = is_leaf is not None
    if is_leaf is None:
        def is_leaf(layer):
            return _prunable(layer, prune_depthwise, structure)

    def walk(layer, prefix, block):
        for sub in registry.sublayers(layer):
            if id(sub) in seen or isinstance(sub, keras.layers.InputLayer):
                continue
            seen.add(id(sub))
            path = f"{prefix}/{sub.name}" if prefix else sub.name
            if is_leaf(sub):
                out.append((path, sub, block))
            elif registry.sublayers(sub):
                inner_block = block
                if inner_block is None and not isinstance(sub, keras.Model):
                    inner_block = path  # the outermost composite layer: a block
                walk(sub, path, inner_block)
            elif (unknown is not None and sub.weights and not _dense_by_rule(sub)
                  and (custom_leaf or not registry.is_supported(sub, prune_depthwise))):
                unknown.append(f"{path} ({type(sub).__name__})")

    walk(model, "", None)
    return out


def checked_leaves(model, prune_depthwise=False, structure="unstructured",
                   unsupported_layers="error"):
    """`prunable_paths` after the checks every in-place entry makes.

    Args:
        model: a Functional subclass.
        prune_depthwise: also DepthwiseConv kernels.
        structure: "unstructured" or "channel" (graph layers only).
        unsupported_layers: "error" refuses leaf layers with weights keras-gap
            does not know (naming their paths); "keep_dense" keeps them dense.

    Returns:
        [(path, layer, block)] as `prunable_paths`.

    Raises:
        ValueError: an unbuilt model, unknown layers, or (channel) no layer
            outside composite layers.

    Example:
        >>> leaves = checked_leaves(lm)
    """
    if structure not in ("unstructured", "channel"):
        raise ValueError(f"`structure` must be 'unstructured' or 'channel'; received "
                         f"{structure!r}.")
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built: call it on data or build "
                         "it before pruning it.")
    unknown = []
    leaves = _leaves(model, prune_depthwise, structure, unknown)
    if structure == "channel":
        leaves = _graph_visible(model, leaves)
    if unknown and unsupported_layers == "error":
        raise ValueError(
            f"Model {model.name!r}: layer(s) {unknown} own weights but keras-gap does not "
            "know which of them to prune. Implement `get_prunable_weights()` on them "
            "(return the kernels to prune, or [] to keep them dense), or pass "
            "unsupported_layers='keep_dense' to leave them dense.")
    return leaves


def _graph_visible(model, leaves):
    """structure="channel": the layers of the model's graph (nested models
    included), whose channel groups `keras_gap.channel_groups` analyses, and
    inside composite layers (transformer blocks) the producers of attention
    heads and FFN units (`registry.structures`). Other layers inside
    composite layers stay dense; a block with neither is named in a warning."""
    members = set()
    for layer in model._flatten_layers(include_self=False):
        for st in registry.structures(layer):
            if st.blocked:
                continue
            if st.kind == "heads" and isinstance(st.owner, keras.layers.MultiHeadAttention):
                members.add(id(st.owner))
            else:
                members.update(id(p) for p, _ in st.producers)
    visible = [leaf for leaf in leaves if leaf[2] is None or id(leaf[1]) in members]
    used = {block for _, layer, block in visible if block is not None}
    inside = [p for p, _, block in leaves if block is not None and block not in used]
    if inside:
        import warnings
        blocks = sorted({b for _, _, b in leaves if b is not None and b not in used})
        warnings.warn(
            f"structure='channel' on {type(model).__name__} {model.name!r}: the {len(inside)} "
            f"layers inside composite layers ({blocks[:3]}{' ...' if len(blocks) > 3 else ''}) "
            "stay dense: keras-gap finds no attention heads or FFN units in them "
            "(see keras_gap.registry.structures). Use unstructured pruning for them.",
            stacklevel=4)
    if not visible:
        raise ValueError(
            f"structure='channel': {type(model).__name__} {model.name!r} has no layer with "
            "channels, heads or FFN units keras-gap can mask (its prunable layers are all "
            f"inside {sorted({b for _, _, b in leaves})[:3]}). Use the default unstructured "
            "pruning.")
    return visible


def prune_in_place(model, wrap, pruning_policy=None, prune_depthwise=False,
                   structure="unstructured", unsupported_layers="error", paths=None):
    """Attaches a `PruneLowMagnitude` to every prunable layer of ``model``, in place.

    Args:
        model: a built Functional subclass (a KerasHub task or backbone).
        wrap: ``(layer, path) -> PruneLowMagnitude`` (the settings of
            `prune_low_magnitude` or `prune_gap`; name it `wrapper_name(path)`).
        pruning_policy: optional `PruningPolicy` or ``callable(layer) -> bool``
            (False: keep dense).
        prune_depthwise: also prune DepthwiseConv kernels.
        structure: "unstructured", or "channel": only the layers of the
            model's graph (nested backbones included) and the members of
            attention-head and FFN-unit groups inside composite layers get
            channel masks, kept in step over each channel group by the pruning
            callbacks; other layers inside composite layers stay dense (with a
            warning).
        unsupported_layers: "error" (default) refuses a leaf layer that owns
            weights keras-gap does not know how to prune (embeddings,
            position tables and normalizations excepted: they stay dense);
            "keep_dense" keeps such layers dense.
        paths: optional collection of layer paths (see `prunable_paths`): only
            those are masked (GaP's partitions).

    Returns:
        ``model`` itself, its prunable layers masked; ``in_place_wrappers(model)``
        lists the wrappers.

    Raises:
        ValueError: unbuilt model, channel structure, or nothing to prune.

    Example:
        >>> lm = keras_hub.models.GPT2CausalLM(backbone=..., preprocessor=None)
        >>> pruned = kg.prune_low_magnitude(lm)   # calls this; pruned is lm
    """
    existing = in_place_wrappers(model)
    if existing:
        import warnings
        warnings.warn(
            f"prune_low_magnitude: every prunable layer of model {model.name!r} is already "
            f"wrapped in PruneLowMagnitude ({[w.name for w in existing]}); it is returned "
            "with those wrappers and their schedules unchanged (as tf-mot does). To prune "
            "again with new settings, strip it first with keras_gap.strip_pruning.",
            stacklevel=3)
        return model
    allow = getattr(pruning_policy, "allow_pruning", pruning_policy)
    leaves = checked_leaves(model, prune_depthwise, structure, unsupported_layers)
    wrappers = []
    for path, layer, _ in leaves:
        if allow is not None and not allow(layer):
            continue
        if paths is not None and path not in paths:
            continue
        wrapper = wrap(layer, path)
        wrapper.build(None)
        wrapper.in_place = True
        wrapper.in_place_path = path  # saved in `.keras` assets: see `load_model`
        wrapper.in_place_index = len(wrappers)

        def masked(call, _wrapper=wrapper):
            return lambda *args, **kwargs: _wrapper.masked(call, *args, **kwargs)

        registry.replace_call(layer, masked)  # on the instance only
        wrappers.append(wrapper)
    if not wrappers:
        raise ValueError(
            f"Model {model.name!r} has no prunable weights (no Dense, Conv, "
            "EinsumDense, MultiHeadAttention or get_prunable_weights() layer was "
            "selected; embeddings stay dense in place). Nothing to prune.")
    _set_tracked(model, wrappers)
    return model


def strip_in_place(model):
    """Removes `prune_in_place`'s wrappers from ``model``; the zeros stay.

    Args:
        model: a model pruned in place.

    Returns:
        ``model`` itself, of its own class, with no keras-gap object left in it
        (it saves and loads with plain ``keras.saving.load_model``). A compiled
        model stays compiled with the optimizer it was compiled with (its state
        kept) and trains on without pruning callbacks.

    Example:
        >>> final = kg.strip_pruning(pruned)   # calls this for in-place models
        >>> final is pruned
        True
    """
    for wrapper in in_place_wrappers(model):
        for weight, mask in zip(wrapper.pruned_weights, wrapper.masks):
            weight.assign(keras.ops.multiply(weight, keras.ops.cast(mask, weight.dtype)))
        registry.restore_call(wrapper.layer)  # the class's call again
    _set_tracked(model, None)
    # The model stays compiled: its optimizer (and that optimizer's state) comes
    # back out of the MaskedOptimizer the pruning callbacks put around it, and
    # the next fit traces a fresh step (no mask, no missing-callback guard).
    optimizer = getattr(model, "optimizer", None)
    if isinstance(optimizer, optimizer_wrappers.MaskedOptimizer):
        model.optimizer = optimizer.inner_optimizer
    if getattr(model, "compiled", False):
        model.train_function = None
    if optimizer_wrappers.STASH_ATTRIBUTE in vars(model):
        object.__delattr__(model, optimizer_wrappers.STASH_ATTRIBUTE)
    return model


def _set_tracked(model, wrappers):
    """Sets (or, with None, removes) the model's tracked wrapper list. A built
    model's tracker is locked against new state; it is unlocked for this, as
    Keras' own ``enable_lora`` does."""
    tracker = getattr(model, "_tracker", None)
    locked = bool(getattr(tracker, "locked", False))
    if locked:
        tracker.unlock()
    try:
        if wrappers is not None:
            setattr(model, ATTRIBUTE, wrappers)
        elif ATTRIBUTE in vars(model):
            for w in in_place_wrappers(model):
                tracker.untrack(w)
            object.__delattr__(model, ATTRIBUTE)
            # The TensorFlow backend also lists tracked attribute names for
            # SavedModel export (`_tracked`); a stale name breaks `model.export`
            # and the TFLite converter (docs/KERAS_INTERNALS.md).
            names = getattr(model, "_tracked", None)
            if isinstance(names, list) and ATTRIBUTE in names:
                names.remove(ATTRIBUTE)
    finally:
        if locked:
            tracker.lock()


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Loads a `.keras` file, attaching again the masks of a model pruned in place.

    A model pruned in place saves as its own class (a KerasHub task's config
    knows nothing of keras-gap); its wrappers' settings and layer paths travel
    in the archive's assets and their masks and steps in its weights. This
    loads the model as ``keras.saving.load_model`` does, attaches a
    `PruneLowMagnitude` to each layer that had one, and restores masks, steps,
    weights and optimizer state: training resumes where it stopped. (A class
    with its own ``compile()``, as every KerasHub task, is compiled from the
    saved compile config too, which plain ``load_model`` skips with a warning.) Any other
    `.keras` file (a cloned pruned model, a stripped one, any Keras model) is
    loaded by ``keras.saving.load_model`` unchanged.

    Args:
        filepath: path of a `.keras` file.
        custom_objects: as for ``keras.saving.load_model``.
        compile: restore the compiled state (optimizer and its variables).
        safe_mode: as for ``keras.saving.load_model``.

    Returns:
        The model, of its saved class.

    Raises:
        ValueError: a pruned layer path of the file is missing from the model.

    Example:
        >>> lm.save("mid_training.keras")               # pruned in place, mid-fit
        >>> lm = kg.load_model("mid_training.keras")    # same masks and step
        >>> lm.fit(x, y, callbacks=[kg.UpdatePruningStep()])
    """
    entries, config = [], None
    if str(filepath).endswith(".keras") and zipfile.is_zipfile(filepath):
        with zipfile.ZipFile(filepath) as archive:
            for name in archive.namelist():
                if name.endswith("/" + PruneLowMagnitude.IN_PLACE_ASSET):
                    entries.append(json.loads(archive.read(name)))
            if entries:
                config = json.loads(archive.read("config.json"))
    if not entries:
        return keras.saving.load_model(filepath, custom_objects=custom_objects,
                                       compile=compile, safe_mode=safe_mode)
    compile_config = config.pop("compile_config", None) if compile else None
    config["compile_config"] = None
    model = keras.saving.deserialize_keras_object(config, custom_objects=custom_objects,
                                                  safe_mode=safe_mode)
    configs = {e["path"]: e["config"]
               for e in sorted(entries, key=lambda e: e.get("index", 0))}
    depthwise = any(c.get("prune_depthwise") for c in configs.values())
    found = {p for p, _, _ in _leaves(model, depthwise, "unstructured")}
    missing = sorted(set(configs) - found)
    if missing:
        raise ValueError(
            f"{filepath!r} holds masks for layers {missing}, which model {model.name!r} "
            f"({type(model).__name__}) built from its config does not have (its prunable "
            f"layers: {sorted(found)}).")

    def wrap(layer, path):
        return PruneLowMagnitude.from_config_with_layer(layer, configs[path], custom_objects)

    prune_in_place(model, wrap, prune_depthwise=depthwise, unsupported_layers="keep_dense",
                   paths=set(configs))
    if compile_config:
        # Model.compile_from_config, except that a class with its own compile()
        # (every KerasHub task) is compiled too, so the optimizer's state is
        # restored (plain load_model skips it with a warning).
        with keras.saving.custom_object_scope(custom_objects or {}):
            model.compile(**keras.saving.deserialize_keras_object(compile_config))
        if model.built:
            model.optimizer.build(model.trainable_variables)
    model.load_weights(filepath)
    return model
