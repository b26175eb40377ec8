"""Per-layer sparsity distributions: uniform, ER and ERK (Erdos-Renyi-Kernel).

Shared by gradual pruning / FGGP (``prune_low_magnitude(..., distribution=)``)
and GaP. Given the prunable weights' shapes and an overall target sparsity,
`layer_sparsities` returns one sparsity per weight.

Conventions:

* The target is the sparsity over **all** weights in ``shapes``, kept-dense
  ones included: kept-dense weights get sparsity 0 and the others become
  sparser to compensate. (Weights you leave out of ``shapes`` do not count.)
* ``"uniform"``: every non-kept-dense weight gets the same sparsity (exactly
  the target when nothing is kept dense).
* ``"erk"``: the density of weight ``l`` is ``eps * (sum(shape)/prod(shape))
  ** erk_power_scale`` (Evci et al., RigL). ``"er"`` uses only the last two
  axes (for a Conv kernel [kh, kw, cin, cout]: ``(cin + cout) / (cin * cout)``;
  spatial axes ignored). ``eps`` is solved exactly; weights whose density
  would exceed 1 are made dense and ``eps`` is re-solved for the rest.
  Per-weight keep counts are then rounded by largest remainder so the
  overall count equals ``num_to_keep(total, target)`` (within one weight per
  layer in all cases).
* A dict ``{name: sparsity}`` gives the sparsities directly (the target is
  then ignored).
"""

import math

from keras_gap import masks as mask_lib

UNIFORM = "uniform"
ERK = "erk"
ER = "er"
_NAMES = (UNIFORM, ERK, ER)


def validate_distribution(distribution, names=None):
    """Checks a distribution argument; returns it normalised.

    Args:
        distribution: "uniform", "erk", "er" (any case) or a dict mapping
            weight names to sparsities in [0, 1).
        names: optional iterable of the valid weight names (checks a dict's
            keys).

    Returns:
        The lower-case name, or a new dict of float sparsities.

    Example:
        >>> validate_distribution("ERK")
        'erk'
    """
    if isinstance(distribution, str):
        value = distribution.lower()
        if value not in _NAMES:
            raise ValueError(
                f"Unknown sparsity distribution {distribution!r}. Expected one of "
                f"{list(_NAMES)} or a dict {{weight name: sparsity}}.")
        return value
    if isinstance(distribution, dict):
        out = {}
        for key, value in distribution.items():
            out[key] = mask_lib.validate_sparsity(
                value, name=f"distribution[{key!r}]")
        if names is not None:
            names = list(names)
            unknown = sorted(set(out) - set(names))
            if unknown:
                raise ValueError(
                    f"The sparsity distribution names unknown weights {unknown}; "
                    f"known weights: {names}.")
        return out
    raise ValueError(
        f"`distribution` must be one of {list(_NAMES)} or a dict {{weight name: "
        f"sparsity}}; received {distribution!r} of type {type(distribution).__name__}.")


def _raw_density(shape, distribution, power_scale):
    shape = [int(d) for d in shape]
    if distribution == ER and len(shape) >= 2:
        shape = shape[-2:]
    return (sum(shape) / math.prod(shape)) ** power_scale


def _sparsity_for_count(n, keep):
    """A float sparsity ``s`` with ``num_to_keep(n, s) == keep``."""
    if keep >= n:
        return 0.0
    s = 1.0 - keep / n
    for _ in range(64):  # float rounding: nudge s until the count is exact
        got = mask_lib.num_to_keep(n, s)
        if got == keep:
            return s
        s = math.nextafter(s, 0.0 if got < keep else 1.0)
    raise AssertionError(f"no sparsity keeps exactly {keep} of {n}")  # unreachable


def erk_densities(shapes, keep_budget, distribution=ERK, kept_dense=(),
                  erk_power_scale=1.0):
    """Solves the ERK/ER densities for a number of weights to keep.

    Args:
        shapes: ordered dict name -> shape.
        keep_budget: how many weights to keep over all of ``shapes``.
        distribution: "erk" or "er".
        kept_dense: names forced to density 1.
        erk_power_scale: exponent on the raw ERK ratio (1.0 is ERK; 0 is
            uniform).

    Returns:
        dict name -> real-valued density in [0, 1] (before rounding).
    """
    sizes = {k: int(math.prod(s)) for k, s in shapes.items()}
    dense = set(kept_dense)
    raw = {k: _raw_density(s, distribution, erk_power_scale)
           for k, s in shapes.items()}
    while True:
        free = [k for k in shapes if k not in dense]
        budget = keep_budget - sum(sizes[k] for k in dense)
        if not free:
            break
        eps = budget / sum(sizes[k] * raw[k] for k in free)
        over = [k for k in free if eps * raw[k] > 1.0]
        if not over:
            break
        dense.update(over)  # monotone: making these dense only raises eps
    return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}


def layer_sparsities(shapes, target_sparsity, distribution=UNIFORM, kept_dense=(),
                     erk_power_scale=1.0):
    """Per-weight sparsities that realise an overall target.

    Args:
        shapes: ordered dict mapping a weight name (e.g. ``variable.path``) to
            its shape.
        target_sparsity: float in [0, 1), the sparsity over all weights in
            ``shapes`` (kept-dense ones included).
        distribution: "uniform", "erk", "er", or a dict name -> sparsity.
        kept_dense: names that stay dense (sparsity 0), e.g. the first conv.
        erk_power_scale: exponent applied to ERK/ER raw densities.

    Returns:
        dict name -> float sparsity, in the order of ``shapes``. Counting kept
        weights with `keras_gap.masks.num_to_keep` per weight, the overall
        sparsity equals the target within one weight per layer (exactly for
        ERK/ER).

    Example:
        >>> layer_sparsities({"c1": (3, 3, 1, 8), "d1": (200, 10)}, 0.9,
        ...                  "erk", kept_dense=["c1"])
        {'c1': 0.0, 'd1': 0.9325}
    """
    if not isinstance(shapes, dict) or not shapes:
        raise ValueError("`shapes` must be a non-empty dict {weight name: shape}; "
                         f"received {shapes!r}.")
    for name, shape in shapes.items():
        try:
            dims = [int(d) for d in shape]
        except (TypeError, ValueError):
            raise ValueError(f"shape of {name!r} must be a tuple of ints; "
                             f"received {shape!r}.") from None
        if not dims or min(dims) < 1:
            raise ValueError(f"shape of {name!r} must have positive dims; "
                             f"received {shape!r}.")
    kept_dense = list(kept_dense or ())
    unknown = [k for k in kept_dense if k not in shapes]
    if unknown:
        raise ValueError(f"`kept_dense` names unknown weights {unknown}; known "
                         f"weights: {list(shapes)}.")
    distribution = validate_distribution(distribution, names=shapes)
    if isinstance(distribution, dict):
        missing = [k for k in shapes if k not in distribution and k not in kept_dense]
        if missing:
            raise ValueError(
                f"The sparsity distribution dict gives no sparsity for {missing}; "
                "give every weight a sparsity (kept-dense weights may be left out).")
        return {k: 0.0 if k in kept_dense else distribution[k] for k in shapes}

    target = mask_lib.validate_sparsity(target_sparsity, "target_sparsity")
    if erk_power_scale < 0:
        raise ValueError(f"`erk_power_scale` must be >= 0; received {erk_power_scale}.")
    sizes = {k: int(math.prod(s)) for k, s in shapes.items()}
    total = sum(sizes.values())
    keep_total = mask_lib.num_to_keep(total, target)
    dense_size = sum(sizes[k] for k in kept_dense)
    free = [k for k in shapes if k not in kept_dense]
    if dense_size > keep_total or (not free and dense_size != keep_total):
        raise ValueError(
            f"target_sparsity={target_sparsity} cannot be met: it keeps "
            f"{keep_total} of {total} weights, but the kept-dense weights "
            f"{kept_dense} alone hold {dense_size}. The highest reachable "
            f"sparsity is {1 - dense_size / total:.6f}; lower the target or keep "
            "fewer layers dense.")
    if distribution == UNIFORM and not kept_dense:
        return {k: target for k in shapes}

    if distribution == UNIFORM:
        free_size = total - dense_size
        densities = {k: 1.0 if k in kept_dense else (keep_total - dense_size) / free_size
                     for k in shapes}
    else:
        densities = erk_densities(shapes, keep_total, distribution, kept_dense,
                                  erk_power_scale)
    # Largest-remainder rounding: integer keep counts summing to keep_total.
    exact = {k: min(float(sizes[k]), densities[k] * sizes[k]) for k in shapes}
    counts = {k: int(math.floor(v)) for k, v in exact.items()}
    short = keep_total - sum(counts.values())
    order = sorted((k for k in free if counts[k] < sizes[k]),
                   key=lambda k: exact[k] - counts[k], reverse=True)
    for k in order[:max(short, 0)]:
        counts[k] += 1
    return {k: _sparsity_for_count(sizes[k], counts[k]) for k in shapes}


def random_masks(shapes, target_sparsity, distribution=ERK, kept_dense=(),
                 erk_power_scale=1.0, seed=None):
    """Exact-count random masks for a sparse start (e.g. 50% ERK).

    Args:
        shapes: ordered dict name -> shape.
        target_sparsity: overall sparsity, see `layer_sparsities`.
        distribution: "uniform", "erk", "er" or a dict.
        kept_dense: names kept dense.
        erk_power_scale: see `layer_sparsities`.
        seed: int or `keras.random.SeedGenerator`.

    Returns:
        dict name -> float32 mask tensor.

    Example:
        >>> m = random_masks({"d1": (784, 300), "d2": (300, 10)}, 0.5, "erk", seed=0)
    """
    import keras

    if seed is None or isinstance(seed, int):
        seed = keras.random.SeedGenerator(seed)
    sparsities = layer_sparsities(shapes, target_sparsity, distribution, kept_dense,
                                  erk_power_scale)
    return {k: mask_lib.random_mask(tuple(shapes[k]), sparsities[k], seed=seed)
            for k in shapes}
