"""`prune_gap`: prepares a model for scheduled grow-and-prune in one call."""

import math

import keras

from keras_gap import registry
from keras_gap.gap.partition import partition_layers
from keras_gap.gap.schedule import GaPPruningSchedule
from keras_gap.masks import validate_sparsity
from keras_gap.prune import (_check_not_pruned, _check_target, _target_block,
                             has_prunable_weights, prune_model)
from keras_gap.wrapper import PruneLowMagnitude, collect_wrappers

METHODS = ("cgap", "pgap")
DISTRIBUTIONS = ("uniform", "erk", "er", "global")


def prunable_layers(model, keep_dense=(), prune_depthwise=False, skip_unsupported=False):
    """Prunable leaf layers of ``model`` in forward order (nested models too).

    Args:
        model: a Sequential or Functional model.
        keep_dense: names of layers to leave dense.
        prune_depthwise: treat DepthwiseConv kernels as prunable.
        skip_unsupported: leave unknown layers with weights out instead of
            raising.

    Returns:
        List of (layer, number of prunable parameters).
    """
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(prunable_layers(layer, keep_dense, prune_depthwise, skip_unsupported))
        elif layer.name in keep_dense:
            continue
        elif not registry.is_supported(layer, prune_depthwise):
            if not skip_unsupported:
                raise registry.unsupported_layer_error(layer)
        elif has_prunable_weights(layer, prune_depthwise):
            size = sum(math.prod(w.shape)
                       for w in registry.get_prunable_weights(layer, prune_depthwise))
            out.append((layer, size))
    return out


def _layer_sparsities(layers, target, distribution, keep_dense, names=None):
    names = [l.name for l, _ in layers] if names is None else list(names)
    if isinstance(distribution, dict):
        unknown = sorted(set(distribution) - set(names))
        if unknown:
            raise ValueError(f"Sparsity distribution names unknown layers {unknown}; "
                             f"prunable layers: {names}.")
        return {n: validate_sparsity(distribution.get(n, target), f"sparsity of {n}")
                for n in names}
    if distribution in ("uniform", "global"):
        return {n: target for n in names}
    if distribution in ("erk", "er"):
        from keras_gap import distributions  # shared with FGGP
        shapes = {}
        for name, (layer, _) in zip(names, layers):
            weights = registry.get_prunable_weights(layer)
            # One shape per layer: the largest prunable weight stands for it.
            shapes[name] = tuple(max(weights, key=lambda w: math.prod(w.shape)).shape)
        return distributions.layer_sparsities(shapes, target, distribution)
    raise ValueError(f"`distribution` must be one of {DISTRIBUTIONS} or a dict of "
                     f"layer name -> sparsity; received {distribution!r}.")


def prune_gap(model, target_sparsity=0.9, num_partitions=None, epochs_per_step=None,
              steps_per_step=None, rounds=1, finetune_epochs=0, finetune_steps=0,
              partitioning="balanced", distribution="uniform", keep_dense=None,
              method="cgap", criterion="magnitude", block_size=(1, 1),
              block_pooling_type="AVG", seed=0, unsupported_layers="error",
              structure="unstructured", target=None):
    """Wraps a model for scheduled grow-and-prune (GaP), in one call.

    The prunable layers are split into ``num_partitions`` partitions; each is
    grown to dense in turn for ``epochs_per_step`` epochs (or
    ``steps_per_step`` steps) while the others stay sparse, ``rounds`` times;
    then every layer is pruned to its target and fine-tuned for
    ``finetune_epochs``. Train with ``fit(epochs=gap_total_epochs(model),
    callbacks=[GaPCallback()])``. No dense pre-training: the sparse
    partitions start from exact-count random masks.

    Args:
        model: a Sequential or Functional Keras model, or a Functional
            subclass (a KerasHub task or backbone: pruned in place, it keeps
            its class; see `keras_gap.inplace`).
        target_sparsity: overall target in [0, 1).
        num_partitions: K (default 4; with ``partitioning="blocks"`` the
            number of blocks, which an explicit value must equal).
        epochs_per_step: epochs each partition stays grown (default 1 when
            ``steps_per_step`` is not given).
        steps_per_step: training steps each partition stays grown.
        rounds: how many times each partition is grown.
        finetune_epochs: epochs of the final phase with all masks fixed.
        finetune_steps: the same in steps (with ``steps_per_step``).
        partitioning: "balanced" (default), "sequential", "random", or a
            list of lists of layer names (paths such as
            ``"gpt2_backbone/transformer_layer_0/self_attention"`` for a
            KerasHub model); "blocks" for a model pruned in place (a KerasHub
            task or backbone): one partition per transformer block, plus one
            for the layers outside the blocks if any.
        distribution: "uniform" (default), "erk", "er", "global" (at each
            prune-back one magnitude threshold over every pruned layer: the
            grown partition competes with the kept weights of the sparse ones,
            which can lose weights but not regrow them; per-layer ratios
            become non-uniform, the model's total stays exact), or a dict
            layer name -> sparsity.
        keep_dense: layer names left dense (e.g. first conv, classifier).
        method: "cgap" (cyclic, default) or "pgap" (parallel copies, merged).
        criterion: prune-back criterion ("magnitude", or a Criterion such as
            ``kg.criteria.FGGP(rate=...)``; a prune-back removes the target
            fraction of a grown partition at once, so FGGP needs
            ``rate >= target_sparsity``).
        block_size: block structure, as in `prune_low_magnitude`.
        target: None, "tflite" or "tflite_int8", as in `prune_low_magnitude`:
            Dense kernels in the blocks TFLite's sparse kernel runs natively
            (so the exported model runs faster), other layers unstructured.
        block_pooling_type: "AVG" or "MAX".
        seed: seed of the random initial masks and of "random" partitioning.
        structure: "unstructured" (default) or "channel": GaP grows and
            prunes back whole output channels. The partitions are then made
            of channel groups (`keras_gap.channel_groups`), never of single
            layers: all layers holding a group's channels (its producers,
            BatchNormalization, DepthwiseConv) are in the partition of that
            group, so a group spanning what would be several partitions is
            grown and pruned as one. An explicit ``partitioning`` lists group
            names. Only "uniform" distribution; groups that are not removable
            or touch a ``keep_dense`` layer stay dense. On a model pruned in
            place (KerasHub) the groups include attention heads and FFN
            units, and ``partitioning="blocks"`` puts each block's groups in
            its partition.
        unsupported_layers: "error" (default) or "keep_dense": leave layers
            with weights keras-gap cannot prune dense instead of raising.

    Returns:
        The wrapped model (compile it, then fit with `GaPCallback`).

    Example:
        >>> pruned = kg.prune_gap(model, target_sparsity=0.9, num_partitions=4,
        ...                       epochs_per_step=2, rounds=3, finetune_epochs=4)
        >>> pruned.compile("adam", "sparse_categorical_crossentropy")
        >>> pruned.fit(ds, epochs=kg.gap_total_epochs(pruned),
        ...            callbacks=[kg.GaPCallback()])
    """
    _check_target(target)
    blocks_for = target  # "target" below is the sparsity
    target = validate_sparsity(target_sparsity, "target_sparsity")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; received {method!r}.")
    if epochs_per_step is None and steps_per_step is None:
        epochs_per_step = 1
    if epochs_per_step is not None and steps_per_step is not None:
        raise ValueError("Give either `epochs_per_step` or `steps_per_step`, not both.")
    for name, value in (("epochs_per_step", epochs_per_step),
                        ("steps_per_step", steps_per_step)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"`{name}` must be a positive int (each partition must "
                             f"train for at least one); received {value!r}.")
    from keras_gap import criteria as criteria_lib
    if distribution == "global" and criteria_lib.get(criterion).needs_gradients:
        raise ValueError("distribution='global' ranks weights by magnitude across layers; it "
                         f"cannot be combined with criterion {criterion!r}. Use "
                         "distribution='uniform' or 'erk' with gradient-based criteria.")
    if distribution == "global" and (tuple(block_size) != (1, 1) or blocks_for):
        raise ValueError("distribution='global' ranks single weights across layers; it "
                         f"cannot keep blocks (block_size={tuple(block_size)}, "
                         f"target={blocks_for!r}). Use distribution='uniform' or 'erk'.")
    if not isinstance(model, keras.Model):
        raise ValueError("prune_gap expects a Sequential or Functional keras Model; "
                         f"received {type(model).__name__}.")
    from keras_gap import inplace
    _check_not_pruned(model)
    if inplace.in_place_wrappers(model):
        raise ValueError(f"Model {model.name!r} is already pruned (in place); strip it "
                         "first with keras_gap.strip_pruning.")
    keep_dense = tuple(keep_dense or ())
    if inplace.is_functional_subclass(model):  # a KerasHub task / backbone
        return _prune_gap_in_place(
            model, target, num_partitions, partitioning, distribution, keep_dense, seed,
            unsupported_layers, structure, dict(
                rounds=rounds, steps_per_step=steps_per_step, epochs_per_step=epochs_per_step,
                finetune_steps=finetune_steps, finetune_epochs=finetune_epochs,
                method=method, seed=seed),
            dict(criterion=criterion, block_size=block_size,
                 block_pooling_type=block_pooling_type), blocks_for)
    if num_partitions is None:
        num_partitions = 4
    if partitioning == "blocks":
        raise ValueError(
            "partitioning='blocks' makes one partition per transformer block of a model "
            f"pruned in place (a KerasHub task or backbone); {type(model).__name__} "
            f"{model.name!r} is a Sequential / Functional model. Use 'balanced', "
            "'sequential', 'random' or a list of layer-name groups.")
    all_names = {l.name for l in model._flatten_layers(include_self=False)}
    unknown = [n for n in keep_dense if n not in all_names]
    if unknown:
        existing = [l.name for l, _ in prunable_layers(model, skip_unsupported=True)]
        raise ValueError(f"`keep_dense` names layers that are not in the model: {unknown}. "
                         f"Prunable layers of model {model.name!r}: {existing}.")

    if unsupported_layers not in ("error", "keep_dense"):
        raise ValueError("`unsupported_layers` must be 'error' or 'keep_dense'; received "
                         f"{unsupported_layers!r}.")
    from keras_gap.wrapper import CHANNEL, validate_structure
    validate_structure(structure, block_size)
    if structure == CHANNEL:
        if distribution != "uniform":
            raise ValueError("prune_gap(structure='channel') prunes every channel group to "
                             f"target_sparsity; distribution={distribution!r} is not "
                             "supported (use 'uniform').")
        units, unit_of = _channel_units(model, keep_dense)
        groups = partition_layers([u for u, _ in units], [n for _, n in units],
                                  num_partitions, partitioning, seed)
        unit_part = {u: i for i, g in enumerate(groups) for u in g}
        part_of = {name: unit_part[u] for name, u in unit_of.items()}
        sparsities = {name: target for name in part_of}
    else:
        layers = prunable_layers(model, keep_dense,
                                 skip_unsupported=unsupported_layers == "keep_dense")
        if not layers:
            raise ValueError(f"Model {model.name!r} has no prunable layers left to partition "
                             f"(keep_dense={list(keep_dense)}).")
        names = [l.name for l, _ in layers]
        groups = partition_layers(names, [n for _, n in layers], num_partitions,
                                  partitioning, seed)
        part_of = {name: i for i, g in enumerate(groups) for name in g}
        sparsities = _layer_sparsities(layers, target, distribution, keep_dense)
    k = len(groups)
    dist_name = distribution if isinstance(distribution, str) else "custom"

    def wrap(layer):
        schedule = GaPPruningSchedule(
            part_of[layer.name], k, sparsities[layer.name], rounds=rounds,
            steps_per_step=steps_per_step, epochs_per_step=epochs_per_step,
            finetune_steps=finetune_steps, finetune_epochs=finetune_epochs,
            method=method, distribution=dist_name, seed=seed)
        return PruneLowMagnitude(layer, pruning_schedule=schedule, criterion=criterion,
                                 block_size=_target_block(layer, blocks_for) if blocks_for
                                 else block_size,
                                 block_pooling_type=block_pooling_type, structure=structure)

    pruned = prune_model(model, wrap, pruning_policy=lambda l: l.name in part_of,
                         unsupported_layers="keep_dense", structure=structure)
    return pruned


def _prune_gap_in_place(model, target, num_partitions, partitioning, distribution,
                        keep_dense, seed, unsupported_layers, structure, schedule_kwargs,
                        wrapper_kwargs, blocks_for):
    """prune_gap for a Functional subclass (a KerasHub model): masks attached in
    place (`keras_gap.inplace`), layers named by path, one GaP partition per
    transformer block with ``partitioning="blocks"``."""
    from keras_gap import inplace
    from keras_gap.wrapper import CHANNEL, validate_structure
    validate_structure(structure, wrapper_kwargs.get("block_size"))
    if structure == CHANNEL and distribution != "uniform":
        raise ValueError("prune_gap(structure='channel') prunes every channel group to "
                         f"target_sparsity; distribution={distribution!r} is not "
                         "supported (use 'uniform').")
    leaves = inplace.checked_leaves(model, structure=structure,
                                    unsupported_layers=unsupported_layers)
    known = {p for p, _, _ in leaves} | {l.name for _, l, _ in leaves}
    missing = [n for n in keep_dense if n not in known]
    if missing:
        raise ValueError(f"`keep_dense` names layers that are not in the model: {missing}. "
                         f"Prunable layers of model {model.name!r} (by path): "
                         f"{[p for p, _, _ in leaves]}.")
    kept = [l for p, l, _ in leaves if p in keep_dense or l.name in keep_dense]
    leaves = [(p, l, b) for p, l, b in leaves if p not in keep_dense and l.name not in keep_dense]
    if not leaves:
        raise ValueError(f"Model {model.name!r} has no prunable layers left to partition "
                         f"(keep_dense={list(keep_dense)}).")
    if structure == CHANNEL:
        # GaP's units are channel groups (attention heads, FFN units, graph
        # channels): a layer goes with its first removable group, and a layer in
        # none stays dense; a group's layers share one partition.
        leaves, unit_of = _channel_units_in_place(model, leaves, kept, keep_dense)
    paths = [p for p, _, _ in leaves]
    sizes = [sum(math.prod(w.shape) for w in registry.get_prunable_weights(l))
             for _, l, _ in leaves]
    if structure == CHANNEL and partitioning != "blocks":
        units = list(dict.fromkeys(unit_of[p] for p in paths))
        unit_sizes = [sum(n for p, n in zip(paths, sizes) if unit_of[p] == u) for u in units]
        unit_groups = partition_layers(units, unit_sizes,
                                       4 if num_partitions is None else num_partitions,
                                       partitioning, seed)
        groups = [[p for p in paths if unit_of[p] in g] for g in unit_groups]
    elif partitioning == "blocks":
        order = list(dict.fromkeys(b for _, _, b in leaves))  # None: outside every block
        groups = [[p for p, _, b in leaves if b == block] for block in order]
        if num_partitions not in (None, len(groups)):
            raise ValueError(
                f"partitioning='blocks' makes {len(groups)} partitions for model "
                f"{model.name!r} (one per block {[b for b in order if b]}"
                + (" and one for the layers outside them" if None in order else "")
                + f"); num_partitions={num_partitions} differs. Pass num_partitions="
                f"{len(groups)} or None.")
    else:
        groups = partition_layers(paths, sizes, 4 if num_partitions is None else num_partitions,
                                  partitioning, seed)
    part_of = {p: i for i, g in enumerate(groups) for p in g}
    if structure == CHANNEL:
        sparsities = {p: target for p in paths}
    else:
        sparsities = _layer_sparsities([(l, n) for (_, l, _), n in zip(leaves, sizes)], target,
                                       distribution, keep_dense, names=paths)
    k = len(groups)
    dist_name = distribution if isinstance(distribution, str) else "custom"

    def wrap(layer, path):
        schedule = GaPPruningSchedule(part_of[path], k, sparsities[path],
                                      distribution=dist_name, **schedule_kwargs)
        kwargs = dict(wrapper_kwargs, structure=structure)
        if blocks_for:
            kwargs["block_size"] = _target_block(layer, blocks_for)
        return PruneLowMagnitude(layer, pruning_schedule=schedule,
                                 name=inplace.wrapper_name(path), **kwargs)

    return inplace.prune_in_place(model, wrap, paths=set(paths), structure=structure,
                                  unsupported_layers="keep_dense")


def _channel_units_in_place(model, leaves, kept, keep_dense):
    """(leaves holding a removable channel group, {path: group name}) of a model
    pruned in place; a group with a ``kept`` (keep_dense) layer stays dense whole."""
    from keras_gap.structured import graph as graph_lib
    graph = graph_lib.analyze(model)
    removable = {g.index for g in graph.groups if g.removable}
    kept_groups = set()
    for layer in kept:
        if id(layer) in graph.layers:
            kept_groups.update(graph.layer_groups(layer))
    chosen, unit_of = [], {}
    for path, layer, block in leaves:
        groups = [g for g in graph.layer_groups(layer)
                  if g in removable and g not in kept_groups]
        if "out" in graph.maps.get(id(layer), {}) and groups:
            unit_of[path] = graph.groups[groups[0]].name
            chosen.append((path, layer, block))
    if not chosen:
        raise ValueError(f"Model {model.name!r} has no removable channel group to partition "
                         f"(keep_dense={list(keep_dense)}); see keras_gap.channel_groups(model).")
    return chosen, unit_of


def _channel_units(model, keep_dense):
    """GaP's units for structure="channel": one per prunable channel group.

    Returns:
        ([(group name, prunable parameters of its producers)],
         {layer name: group name}) -- a layer holding channels of several
        groups (a BatchNormalization after a Concatenate) goes with the first.
    """
    from keras_gap.structured import graph as graph_lib
    graph = graph_lib.analyze(model)
    members = {}
    for lid, layer in graph.layers.items():
        if "out" in graph.maps.get(lid, {}) and registry.channel_weights(layer):
            for g in graph.layer_groups(layer):
                members.setdefault(g, []).append(layer)
    units, unit_of = [], {}
    for g, layers in sorted(members.items()):
        group = graph.groups[g]
        if not group.removable or any(l.name in keep_dense for l in layers):
            continue
        size = sum(math.prod(w.shape) for l in layers if l.name in group.producers
                   for w in registry.get_prunable_weights(l))
        units.append((group.name, size))
        for l in layers:
            unit_of.setdefault(l.name, group.name)
    if not units:
        raise ValueError(f"Model {model.name!r} has no removable channel group to partition "
                         f"(keep_dense={list(keep_dense)}); see keras_gap.channel_groups(model).")
    return units, unit_of


def gap_wrappers(model):
    """The model's GaP-scheduled wrappers; a clear error if there are none."""
    wrappers = collect_wrappers(model)
    if not wrappers or not all(isinstance(w.pruning_schedule, GaPPruningSchedule)
                               for w in wrappers):
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} was not prepared by "
            "keras_gap.prune_gap (its pruning layers do not all carry a "
            "GaPPruningSchedule). Call pruned = keras_gap.prune_gap(model, ...) first.")
    return wrappers


def gap_total_epochs(model):
    """Epochs that ``fit`` needs to run the model's whole GaP schedule.

    Args:
        model: a model returned by `prune_gap` with ``epochs_per_step``.

    Returns:
        rounds * num_partitions * epochs_per_step + finetune_epochs.

    Example:
        >>> pruned.fit(ds, epochs=kg.gap_total_epochs(pruned), callbacks=[kg.GaPCallback()])
    """
    return gap_wrappers(model)[0].pruning_schedule.total_epochs()


def gap_partitions(model):
    """{partition index: [wrappers]} of a GaP model."""
    groups = {}
    for w in gap_wrappers(model):
        groups.setdefault(w.pruning_schedule.partition, []).append(w)
    return dict(sorted(groups.items()))
