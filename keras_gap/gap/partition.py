"""Splitting the prunable layers into GaP partitions.

Input: the prunable layers in forward order with their parameter counts.
Output: a list of K groups of layer names. Modes:

* ``"sequential"``: contiguous groups with (nearly) equal numbers of layers.
* ``"balanced"`` (default): contiguous groups whose parameter counts are as
  even as possible (minimizes the largest group; exact dynamic programme).
* ``"random"``: a seeded random assignment (the paper's ablation).
* an explicit list of lists of layer names.
"""

import random as _random

PARTITIONINGS = ("sequential", "balanced", "random")


def _check_k(num_layers, num_partitions):
    if not isinstance(num_partitions, int) or isinstance(num_partitions, bool) \
            or num_partitions < 1:
        raise ValueError(
            f"`num_partitions` must be a positive int; received {num_partitions!r}.")
    if num_partitions > num_layers:
        raise ValueError(
            f"num_partitions={num_partitions} is more than the {num_layers} prunable "
            "layers available to partition; every partition needs at least one "
            f"layer. Use num_partitions <= {num_layers}.")


def sequential(names, num_partitions):
    """Contiguous groups with equal layer counts (earlier groups get the extra)."""
    _check_k(len(names), num_partitions)
    base, extra = divmod(len(names), num_partitions)
    groups, start = [], 0
    for i in range(num_partitions):
        size = base + (1 if i < extra else 0)
        groups.append(list(names[start:start + size]))
        start += size
    return groups


def balanced(names, sizes, num_partitions):
    """Contiguous groups minimizing the largest group's parameter count.

    Args:
        names: layer names in forward order.
        sizes: their parameter counts.
        num_partitions: K.

    Returns:
        List of K non-empty lists of names.

    Example:
        >>> balanced(["a", "b", "c", "d"], [1, 1, 1, 9], 2)
        [['a', 'b', 'c'], ['d']]
    """
    n = len(names)
    _check_k(n, num_partitions)
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + int(s))
    inf = float("inf")
    # best[k][i]: minimal max-group size splitting the first i layers into k groups.
    best = [[inf] * (n + 1) for _ in range(num_partitions + 1)]
    cut = [[0] * (n + 1) for _ in range(num_partitions + 1)]
    best[0][0] = 0
    for k in range(1, num_partitions + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    groups, i = [], n
    for k in range(num_partitions, 0, -1):
        j = cut[k][i]
        groups.append(list(names[j:i]))
        i = j
    return groups[::-1]


def random_groups(names, num_partitions, seed=0):
    """Seeded random assignment into K non-empty groups (forward order kept inside)."""
    _check_k(len(names), num_partitions)
    order = list(range(len(names)))
    _random.Random(seed).shuffle(order)
    groups = [sorted(order[i::num_partitions]) for i in range(num_partitions)]
    return [[names[i] for i in g] for g in groups]


def explicit(names, groups):
    """Validates user-given groups: every prunable layer exactly once."""
    if not isinstance(groups, (list, tuple)) or not groups or not all(
            isinstance(g, (list, tuple)) and g for g in groups):
        raise ValueError("Explicit `partitioning` must be a non-empty list of non-empty "
                         f"lists of layer names; received {groups!r}.")
    known = set(names)
    seen = {}
    for i, group in enumerate(groups):
        for name in group:
            if name not in known:
                raise ValueError(
                    f"Partition {i} names layer {name!r}, which is not a prunable "
                    f"layer of the model. Prunable layers: {list(names)}.")
            if name in seen:
                raise ValueError(f"Layer {name!r} appears in partitions {seen[name]} "
                                 f"and {i}; each layer must be in exactly one.")
            seen[name] = i
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"Explicit partitioning misses prunable layers {missing}; "
                         "every prunable layer must be in exactly one partition "
                         "(keep layers dense with `keep_dense=` instead).")
    return [list(g) for g in groups]


def partition_layers(names, sizes, num_partitions, partitioning="balanced", seed=0):
    """Splits prunable layers into GaP partitions.

    Args:
        names: prunable layer names in forward order.
        sizes: parameter count of each layer's prunable weights.
        num_partitions: K (ignored for an explicit list: K = len(list)).
        partitioning: "sequential", "balanced", "random", or a list of
            lists of layer names.
        seed: seed for "random".

    Returns:
        A list of K lists of layer names.

    Example:
        >>> partition_layers(["c1", "c2", "d1"], [100, 900, 1000], 2)
        [['c1', 'c2'], ['d1']]
    """
    if not isinstance(partitioning, str):
        return explicit(names, partitioning)
    if partitioning == "sequential":
        return sequential(names, num_partitions)
    if partitioning == "balanced":
        return balanced(names, sizes, num_partitions)
    if partitioning == "random":
        return random_groups(names, num_partitions, seed)
    raise ValueError(f"`partitioning` must be one of {PARTITIONINGS} or a list of "
                     f"layer-name groups; received {partitioning!r}.")
