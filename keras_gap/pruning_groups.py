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
