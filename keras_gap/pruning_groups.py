"""Mask updates that need more than one wrapper at a time.

`keras_gap.UpdatePruningStep` sends a wrapper here instead of calling
``wrapper.update_masks`` when its pruning needs context beyond the wrapper:

* ``scope="global"``: all weights of a pruning group are ranked together;
* a non-uniform ``distribution`` (ERK, ER, dict): the schedule's sparsity is
  split over the group's weights with `keras_gap.distributions`;
* a criterion with ``needs_gradients`` (FGGP): the recorded gradients are
  passed to it.

A pruning group is the set of wrappers with the same ``pruning_group`` name
(`prune_low_magnitude` gives all wrappers of one call the same name). Its
members must share schedule, scope, distribution and criterion.
"""

import numpy as np

from keras_gap import distributions

DEFAULT_GROUP = "default"


def is_grouped(wrapper):
    """True when ``wrapper``'s masks are updated by this module."""
    return (getattr(wrapper, "scope", "layer") == "global"
            or getattr(wrapper, "distribution", "uniform") != "uniform"
            or getattr(wrapper.criterion, "needs_gradients", False))


def group_key(wrapper):
    return getattr(wrapper, "pruning_group", None) or DEFAULT_GROUP


def _signature(wrapper):
    criterion = wrapper.criterion
    return (type(criterion).__name__, repr(sorted(criterion.get_config().items())),
            wrapper.scope, repr(wrapper.distribution))


def build_groups(wrappers):
    """``{group name: [wrappers]}`` for the grouped wrappers; checks consistency.

    Args:
        wrappers: all `PruneLowMagnitude` layers of a model.

    Returns:
        dict group name -> list of wrappers (only grouped ones).
    """
    groups = {}
    for w in wrappers:
        if is_grouped(w):
            groups.setdefault(group_key(w), []).append(w)
    for name, members in groups.items():
        first = members[0]
        for w in members[1:]:
            if w.pruning_schedule != first.pruning_schedule:
                raise ValueError(
                    f"Pruning group {name!r}: layers {first.name!r} and {w.name!r} "
                    "have different pruning schedules; layers pruned together "
                    f"(scope={first.scope!r}, distribution={first.distribution!r}) "
                    "must share one schedule.")
            if _signature(w) != _signature(first):
                raise ValueError(
                    f"Pruning group {name!r}: layers {first.name!r} and {w.name!r} "
                    "differ in criterion, scope or distribution; give them "
                    "different pruning_group names or the same settings.")
        if first.scope == "global" and any(
                w.block_size != (1, 1) or w.sparsity_m_by_n is not None for w in members):
            raise ValueError(
                f"Pruning group {name!r}: scope='global' supports unstructured "
                "pruning only (block_size=(1, 1), no sparsity_m_by_n).")
    return groups


def update_group(members, sparsity, gradient_of=None):
    """Recomputes the masks of one pruning group at ``sparsity``.

    Args:
        members: the group's wrappers.
        sparsity: the schedule's sparsity (overall for the group).
        gradient_of: callable(variable) -> gradient tensor or None; required
            by criteria with ``needs_gradients``.

    Returns:
        dict wrapper name -> list of new masks.
    """
    first = members[0]
    criterion = first.criterion
    weights = [v for w in members for v in w.pruned_weights]
    masks = [m for w in members for m in w.masks]
    gradients = None
    if criterion.needs_gradients:
        if gradient_of is None:
            raise ValueError(f"Criterion {criterion!r} needs gradients; none available.")
        gradients = [gradient_of(v) for v in weights]
    if first.scope == "global":
        new = criterion.compute_global_masks(weights, masks, sparsity,
                                             gradients=gradients)
    else:
        if first.distribution == "uniform":
            per_weight = [sparsity] * len(weights)
        else:
            shapes = {v.path: tuple(v.shape) for v in weights}
            split = distributions.layer_sparsities(shapes, sparsity, first.distribution)
            per_weight = [split[v.path] for v in weights]
        new = []
        for i, (v, m, s) in enumerate(zip(weights, masks, per_weight)):
            owner = _owner(members, v)
            extra = {} if gradients is None else {"gradient": gradients[i]}
            new.append(criterion.compute_mask(
                weight=v, mask=m, sparsity=s, block_size=owner.block_size,
                block_pooling_type=owner.block_pooling_type,
                sparsity_m_by_n=owner.sparsity_m_by_n, variable_path=v.path,
                **extra))
    out, start = {}, 0
    for w in members:
        count = len(w.pruned_weights)
        w.set_masks(new[start:start + count])
        out[w.name] = new[start:start + count]
        start += count
    return out


def _owner(members, variable):
    for w in members:
        if any(v is variable for v in w.pruned_weights):
            return w
    raise AssertionError(variable.path)


class ChannelPlan:
    """Channel groups of a model's ``structure="channel"`` wrappers.

    Coupled channels (a residual ``Add``, a BatchNormalization or
    DepthwiseConv after a conv) must be removed together from every layer
    that holds them, so their masks are updated per channel group, never per
    wrapper. A group is pruned only when it is removable (see
    `keras_gap.channel_groups`) and every layer with per-channel weights on
    its channels is wrapped with ``structure="channel"``; other groups keep
    all their channels.

    Args:
        graph: the model's `keras_gap.structured.graph.ChannelGraph`.
        wrappers: the model's `PruneLowMagnitude` layers.

    Example:
        >>> plan = ChannelPlan(kg.structured.analyze(pruned), collect_wrappers(pruned))
        >>> plan.update(plan.groups_for(wrappers), {g: 0.5 for g in ...})
    """

    def __init__(self, graph, wrappers):
        from keras_gap import registry
        self.graph = graph
        self.wrappers = [w for w in wrappers if getattr(w, "structure", None) == "channel"]
        wrapped = {id(w.layer): w for w in self.wrappers}
        members = {}
        for lid, layer in graph.layers.items():
            if "out" not in graph.maps.get(lid, {}) or not layer.built \
                    or not registry.channel_weights(layer):
                continue
            for g in graph.layer_groups(layer):
                members.setdefault(g, []).append(lid)
        self.members, self.producers, self.skipped = {}, {}, {}
        for g, lids in members.items():
            group = graph.groups[g]
            missing = [graph.name_of(l) for l in lids if l not in wrapped]
            if not group.removable:
                self.skipped[g] = "not removable: " + ", ".join(
                    f"{n} ({r})" for n, r in group.blocked_by[:2])
            elif missing:
                self.skipped[g] = f"layers {missing} are not wrapped with structure='channel'"
            else:
                self.members[g] = [wrapped[l] for l in lids]
                self.producers[g] = [wrapped[l] for l in lids
                                     if graph.name_of(l) in group.producers]

    def groups_for(self, wrappers):
        """Prunable groups whose channels any of ``wrappers`` holds."""
        ids = {id(w) for w in wrappers}
        return [g for g, ws in self.members.items() if any(id(w) in ids for w in ws)]

    def groups_of_producers(self, wrappers):
        """Prunable groups with a producer among ``wrappers``."""
        ids = {id(w) for w in wrappers}
        return [g for g, ws in self.producers.items() if any(id(w) in ids for w in ws)]

    def keep(self, group):
        """Current keep vector of a group (read from its first producer)."""
        w = self.producers[group][0]
        pos = self.graph.positions(w.layer, group)
        keep = np.zeros(self.graph.groups[group].size, dtype=np.float32)
        sel = pos >= 0
        keep[pos[sel]] = w.channel_keep()[sel]
        return keep

    def select(self, group, sparsity, gradient_of=None):
        """New keep vector of ``group`` at ``sparsity`` by its criterion."""
        producers = self.producers[group]
        criterion = producers[0].criterion
        weights, masks, grads, maps, axes = [], [], [], [], []
        for w in producers:
            pos = self.graph.positions(w.layer, group)
            for i in w.scored_weights():
                weights.append(w.pruned_weights[i])
                masks.append(w.masks[i])
                axes.append(w.channel_axes[i])
                maps.append(pos)
                grads.append(None if gradient_of is None
                             else gradient_of(w.pruned_weights[i]))
        return np.asarray(criterion.select_channels(
            weights, masks, grads, maps, axes, sparsity,
            size=self.graph.groups[group].size), dtype=np.float32)

    def apply(self, keep_by_group):
        """Sets the masks of every member of the given groups.

        Args:
            keep_by_group: dict group index -> keep vector of the group's size.

        Returns:
            list of the wrappers whose masks changed.
        """
        touched = {}
        for g in keep_by_group:
            for w in self.members[g]:
                touched[id(w)] = w
        for w in touched.values():
            keep = w.channel_keep().astype(np.float32)
            for g, k in keep_by_group.items():
                pos = self.graph.positions(w.layer, g)
                sel = pos >= 0
                keep[sel] = np.asarray(k, dtype=np.float32)[pos[sel]]
            w.set_channel_keep(keep)
        return list(touched.values())

    def update(self, groups, sparsity_of, gradient_of=None):
        """Prunes ``groups`` (each at ``sparsity_of[g]``) by their criterion.

        Returns:
            list of the wrappers whose masks changed.
        """
        return self.apply({g: self.select(g, sparsity_of[g], gradient_of) for g in groups})

    def random(self, groups, sparsity_of, seed=0):
        """Exact-count random keep vectors (GaP's sparse start)."""
        from keras_gap import masks as mask_lib
        rng = np.random.default_rng(seed)
        return self.apply({g: mask_lib.channel_mask(
            rng.random(self.graph.groups[g].size).astype(np.float32), sparsity_of[g])
            for g in groups})


def channel_plan(model, wrappers):
    """A `ChannelPlan` for ``model`` when any wrapper uses channel structure, else None."""
    if not any(getattr(w, "structure", None) == "channel" for w in wrappers):
        return None
    from keras_gap.structured import graph as graph_lib  # sees through the wrappers
    try:
        graph = graph_lib.analyze(model)
    except ValueError as e:  # e.g. a subclassed model: no graph to read
        import warnings
        warnings.warn(f"structure='channel': {e} Each wrapped layer's channels are pruned on "
                      "their own; coupled channels (residual adds, BatchNormalization after "
                      "a conv) are not kept in step, so keras_gap.materialize may not "
                      "remove them.", stacklevel=3)
        return None
    return ChannelPlan(graph, wrappers)
