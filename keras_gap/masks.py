"""Mask calculation: scores + sparsity + structure -> an exact-count binary mask.

This is the one place in keras-gap where masks are computed. Gradual pruning,
GaP's prune-back, random sparse initialization and FGGP all call into it.

Rules that hold for every function here:

* Counts are exact. For a tensor with ``n`` candidates and sparsity ``s`` the
  mask keeps exactly ``num_to_keep(n, s) = max(1, floor(n * (1 - s)))``
  candidates for ``s < 1`` (computed on the decimal value of ``s`` so that
  ``n=10, s=0.9`` keeps 1, not 0). At least one candidate is always kept, as
  in tf-mot: a tensor pruned to nothing would make its layer's output
  constant. Ties cannot keep extra weights: selection is by index (top-k), never
  by a threshold.
* Selection does not sort: the k-th largest score is found with numpy's
  introselect (O(n)) on the host. Mask updates run eagerly from callbacks,
  every ``frequency`` steps, never inside the compiled training step, so the
  host round trip is paid per update, not per step (measured in
  benchmarks/overhead.py: ``keras.ops.top_k`` on the TF CPU backend was as slow
  as a full sort for k ~ n/10).
* Pooling, N:M grouping and scoring use ``keras.ops``.
"""

import math
from fractions import Fraction

import keras
import numpy as np
from keras import ops

AVG = "AVG"
MAX = "MAX"
_POOLING_TYPES = (AVG, MAX)


def num_to_keep(num_elements, sparsity):
    """Number of elements a mask keeps for a given sparsity.

    Args:
        num_elements: int, number of candidate elements (weights or blocks).
        sparsity: float in [0, 1], the fraction to remove.

    Returns:
        int, ``floor(num_elements * (1 - sparsity))`` evaluated exactly on the
        decimal value of ``sparsity``, but at least 1 when ``num_elements > 0``
        and ``sparsity < 1`` (tf-mot's rule: 0.99 on a 10x8 kernel keeps 1
        weight, not 0). ``sparsity == 1`` keeps 0.

    Example:
        >>> num_to_keep(10, 0.9)
        1
        >>> num_to_keep(80, 0.99)
        1
    """
    s = Fraction(repr(float(sparsity)))
    keep = int(math.floor(num_elements * (1 - s)))
    return max(keep, 1) if num_elements > 0 and s < 1 else keep


def validate_sparsity(sparsity, name="sparsity", allow_one=False):
    """Raises ValueError unless ``sparsity`` is a number in [0, 1)."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a number in [0, 1); received {sparsity!r}."
        ) from None
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (0.0 <= value and upper_ok) or math.isnan(value):
        bound = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(
            f"`{name}` must be in {bound}; received {sparsity!r}."
        )
    return value


def validate_block_size(block_size):
    """Returns ``block_size`` as a tuple of two positive ints, or raises."""
    try:
        block = tuple(int(b) for b in block_size)
    except (TypeError, ValueError):
        raise ValueError(
            "`block_size` must be a pair of positive ints such as (1, 1) or "
            f"(4, 1); received {block_size!r}."
        ) from None
    if len(block) != 2 or min(block) < 1:
        raise ValueError(
            "`block_size` must be a pair of positive ints such as (1, 1) or "
            f"(4, 1); received {block_size!r}."
        )
    return block


def validate_m_by_n(sparsity_m_by_n):
    """Returns ``(m, n)`` validated, or None.

    ``sparsity_m_by_n=(M, N)`` means what it means in tf-mot: M zeros in every
    group of N consecutive input channels, so N - M are kept ((2, 4): 2 of 4
    kept; (1, 4): 3 of 4 kept). keras-gap before 0.9 read the pair as "M kept";
    the two agree on (2, 4) and (1, 2).
    """
    if sparsity_m_by_n is None:
        return None
    try:
        m, n = (int(v) for v in sparsity_m_by_n)
    except (TypeError, ValueError):
        raise ValueError(
            "`sparsity_m_by_n` must be a pair (M, N) of ints with 0 < M < N (M zeros "
            f"in every N, as in tf-mot), such as (2, 4); received {sparsity_m_by_n!r}."
        ) from None
    if not 0 < m < n:
        raise ValueError(
            "`sparsity_m_by_n` must be a pair (M, N) with 0 < M < N (M zeros in every "
            f"N consecutive input channels); received {sparsity_m_by_n!r}."
        )
    return (m, n)


def validate_pooling_type(block_pooling_type):
    if block_pooling_type not in _POOLING_TYPES:
        raise ValueError(
            "`block_pooling_type` must be one of "
            f"{_POOLING_TYPES}; received {block_pooling_type!r}."
        )
    return block_pooling_type


def topk_mask(scores, num_keep):
    """Mask with ones at exactly ``num_keep`` highest-scoring positions.

    Selection is O(n) (numpy's introselect finds the threshold value; no
    sort); ties at the threshold are broken by index, so the count is exact.

    Args:
        scores: tensor of any shape; higher means more important.
        num_keep: int, how many positions to keep (clipped to [0, size]).

    Returns:
        A float32 tensor shaped like ``scores`` with exactly ``num_keep`` ones.
        Among equal scores the lower flat index wins.

    Example:
        >>> topk_mask(keras.ops.array([3., 1., 2., 2.]), 2)  # -> [1, 0, 1, 0]
    """
    values = np.asarray(ops.convert_to_numpy(scores), dtype=np.float32)
    flat = values.reshape(-1)
    if np.isnan(flat).any():  # a NaN score never wins a place
        flat = np.where(np.isnan(flat), -np.inf, flat)
    n = flat.size
    num_keep = max(0, min(int(num_keep), n))
    if num_keep in (0, n):
        return ops.convert_to_tensor(np.full(values.shape, float(num_keep == n), np.float32))
    threshold = np.partition(flat, n - num_keep)[n - num_keep]
    keep = flat > threshold
    ties = np.flatnonzero(flat == threshold)[: num_keep - int(keep.sum())]
    keep[ties] = True
    return ops.convert_to_tensor(keep.reshape(values.shape).astype(np.float32))


def _as_matrix(shape):
    """Views a weight as [rows, cols]: all leading axes x the last axis."""
    return (int(math.prod(shape[:-1])), int(shape[-1]))


def _check_block(shape, block_size):
    if len(shape) < 2:
        raise ValueError(
            f"block_size={block_size} needs a weight of rank >= 2; the "
            f"weight has shape {tuple(shape)}. Use block_size=(1, 1) here."
        )
    rows, cols = _as_matrix(shape)
    if rows % block_size[0] or cols % block_size[1]:
        raise ValueError(
            f"block_size={block_size} does not divide the weight of shape "
            f"{tuple(shape)} (seen as a [{rows}, {cols}] matrix: leading axes "
            "x last axis). Choose a block that divides both."
        )


def block_mask(scores, sparsity, block_size=(1, 1), block_pooling_type=AVG):
    """Exact-count mask over blocks of a weight's score tensor.

    The weight is viewed as a [rows, cols] matrix (all leading axes by the last
    axis: Dense [in, out], Conv [kh*kw*cin, cout]); scores are pooled over each
    ``block_size`` block (AVG or MAX) and whole blocks are kept or removed.
    ``block_size=(4, 1)`` on a Dense kernel is the 1x4 block TFLite's sparse
    FULLY_CONNECTED kernel runs natively.

    Args:
        scores: tensor of importance scores, the weight's shape.
        sparsity: float in [0, 1), fraction of blocks to remove.
        block_size: pair of ints; (1, 1) is unstructured.
        block_pooling_type: "AVG" or "MAX".

    Returns:
        float32 mask shaped like ``scores``.

    Example:
        >>> m = block_mask(keras.ops.abs(w), 0.9, block_size=(4, 1))
    """
    block_size = validate_block_size(block_size)
    shape = tuple(int(d) for d in ops.shape(scores))
    if block_size == (1, 1):
        return topk_mask(scores, num_to_keep(int(math.prod(shape)), sparsity))
    validate_pooling_type(block_pooling_type)
    _check_block(shape, block_size)
    rows, cols = _as_matrix(shape)
    br, bc = block_size
    grid = ops.reshape(
        ops.cast(scores, "float32"), (rows // br, br, cols // bc, bc)
    )
    pool = ops.mean if block_pooling_type == AVG else ops.max
    pooled = pool(grid, axis=(1, 3))
    keep = topk_mask(pooled, num_to_keep(int(math.prod(pooled.shape)), sparsity))
    keep = ops.repeat(ops.repeat(keep, br, axis=0), bc, axis=1)
    return ops.reshape(keep, shape)


def n_by_m_mask(scores, sparsity_m_by_n, partial=True):
    """Zeroes the M lowest scores in each group of N along the input axis
    (tf-mot's ``sparsity_m_by_n=(M, N)``: N - M kept per group).

    Groups run along axis -2 (input channels: Dense [in, out], Conv
    [kh, kw, cin, cout]), the layout TFLite and TensorRT use for 2:4. When
    that axis is not a multiple of N the last group is partial and, as in
    tf-mot (which pads it with zeros), keeps ``min(N - M, size)`` entries.

    Args:
        scores: tensor of rank >= 2.
        sparsity_m_by_n: (M, N) with 0 < M < N; M zeros in every N.
        partial: allow a partial last group (default, tf-mot); False raises
            when the input axis is not a multiple of N.

    Returns:
        float32 mask shaped like ``scores`` with exactly N - M ones in each
        full group.

    Example:
        >>> m = n_by_m_mask(keras.ops.abs(kernel), (2, 4))
    """
    zeros, n = validate_m_by_n(sparsity_m_by_n)
    keep = n - zeros
    shape = tuple(int(d) for d in ops.shape(scores))
    if len(shape) < 2 or (not partial and shape[-2] % n):
        raise ValueError(
            f"sparsity_m_by_n={sparsity_m_by_n} needs a weight of rank >= 2"
            + ("" if partial else f" whose input-channel axis (-2) is divisible by "
               f"N={n}") + f"; the weight has shape {shape}."
        )
    # Move the input axis last, pad it to a multiple of N with scores that are
    # never kept, and split it into groups of N.
    perm = list(range(len(shape)))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    moved = ops.transpose(ops.cast(scores, "float32"), perm)
    channels = shape[-2]
    pad = -channels % n
    if pad:
        moved = ops.pad(moved, [(0, 0)] * (len(shape) - 1) + [(0, pad)],
                        constant_values=float("-inf"))
    padded_shape = tuple(moved.shape)
    groups = ops.reshape(moved, (-1, n))
    _, idx = ops.top_k(groups, keep, sorted=False)
    mask = ops.sum(ops.one_hot(idx, n, dtype="float32"), axis=1)
    mask = ops.reshape(mask, padded_shape)
    if pad:
        mask = mask[..., :channels]
    return ops.transpose(mask, perm)


def compute_mask(scores, sparsity, block_size=(1, 1), block_pooling_type=AVG,
                 sparsity_m_by_n=None):
    """Mask for one weight: N:M if given, else (block) top-k at ``sparsity``.

    Args:
        scores: importance scores shaped like the weight.
        sparsity: float in [0, 1); ignored when ``sparsity_m_by_n`` is set.
        block_size: see `block_mask`.
        block_pooling_type: see `block_mask`.
        sparsity_m_by_n: see `n_by_m_mask`.

    Returns:
        float32 mask shaped like ``scores``.

    Example:
        >>> compute_mask(keras.ops.abs(w), 0.8)
    """
    if sparsity_m_by_n is not None:
        return n_by_m_mask(scores, sparsity_m_by_n)
    return block_mask(scores, sparsity, block_size, block_pooling_type)


def per_output_mask(scores, sparsity):
    """Keeps the highest scores of each output separately: ``num_to_keep(rows,
    sparsity)`` entries in every column of a ``[inputs, outputs]`` matrix (the
    comparison group of Wanda, Sun et al. 2023: one output's incoming weights).

    Args:
        scores: array ``[inputs, outputs]``; higher means more important.
        sparsity: float in [0, 1).

    Returns:
        float32 numpy mask shaped like ``scores``; ties broken by lower row index.

    Example:
        >>> per_output_mask(np.abs(w) * norms[:, None], 0.5)
    """
    scores = np.asarray(ops.convert_to_numpy(scores), dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"per_output_mask needs a [inputs, outputs] matrix; received shape "
                         f"{scores.shape}.")
    keep = num_to_keep(scores.shape[0], validate_sparsity(sparsity))
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=0, kind="stable")
    mask = np.zeros(scores.shape, np.float32)
    np.put_along_axis(mask, order[:keep], 1.0, axis=0)
    return mask


def random_mask(shape, sparsity, seed=None, block_size=(1, 1)):
    """Exact-count uniformly random mask (GaP's and ERK's sparse start).

    Args:
        shape: the weight's shape.
        sparsity: float in [0, 1).
        seed: int or `keras.random.SeedGenerator` for reproducibility.
        block_size: random over whole blocks when not (1, 1).

    Returns:
        float32 mask with exactly ``num_to_keep`` ones (blocks).

    Example:
        >>> random_mask((784, 300), 0.9, seed=0)
    """
    scores = keras.random.uniform(tuple(shape), seed=seed)
    return block_mask(scores, sparsity, block_size, MAX)


def mask_sparsity(mask):
    """Fraction of zeros in a mask (float)."""
    mask = ops.convert_to_numpy(mask)
    return float(1.0 - mask.mean()) if mask.size else 0.0


def global_topk_masks(scores_list, sparsity):
    """Exact-count masks ranked jointly across several tensors (global scope).

    The tensors are flattened and concatenated; exactly
    ``num_to_keep(total_size, sparsity)`` highest scores are kept overall, so
    per-tensor sparsities follow from the ranking (a tensor may end up denser
    or sparser than ``sparsity``).

    Args:
        scores_list: list of score tensors (any shapes); higher means keep.
        sparsity: float in [0, 1), the overall fraction to remove.

    Returns:
        List of float32 masks, one per entry of ``scores_list``, with their
        shapes; the total number of ones is exactly
        ``num_to_keep(sum of sizes, sparsity)``.

    Example:
        >>> m1, m2 = global_topk_masks([ops.abs(k1), ops.abs(k2)], 0.9)
    """
    scores_list = list(scores_list)
    if not scores_list:
        raise ValueError("`scores_list` must hold at least one score tensor; "
                         "received an empty list.")
    validate_sparsity(sparsity)
    total = sum(int(math.prod(ops.shape(s))) for s in scores_list)
    return joint_topk_masks(scores_list, num_to_keep(total, sparsity))


def joint_topk_masks(scores_list, num_keep):
    """Keeps exactly ``num_keep`` highest scores ranked jointly across tensors.

    When ``num_keep`` allows it (at least one per non-empty tensor), every
    tensor keeps at least its highest score (the `num_to_keep` rule: no
    tensor is pruned to nothing); the rest are ranked jointly. The total is
    exactly ``num_keep`` either way.

    Args:
        scores_list: non-empty list of score tensors (any shapes).
        num_keep: int, total number of ones over all masks.

    Returns:
        List of float32 masks shaped like the entries of ``scores_list``.

    Example:
        >>> m1, m2 = joint_topk_masks([ops.abs(k1), ops.abs(k2)], 1000)
    """
    shapes = [tuple(int(d) for d in ops.shape(s)) for s in scores_list]
    flat = np.concatenate([np.asarray(ops.convert_to_numpy(s), np.float32).reshape(-1)
                           for s in scores_list])
    sizes = [int(math.prod(shape)) for shape in shapes]
    if num_keep >= sum(1 for n in sizes if n):
        starts = np.cumsum([0] + sizes[:-1])
        for start, n in zip(starts, sizes):
            if n:
                piece = flat[start:start + n]
                best = int(np.argmax(np.where(np.isnan(piece), -np.inf, piece)))
                flat[start + best] = np.inf
    return split_flat(topk_mask(flat, num_keep), shapes)


def split_flat(flat, shapes):
    """Splits a flat tensor into consecutive pieces reshaped to ``shapes``.

    Args:
        flat: 1-D tensor whose length is the sum of the shapes' sizes.
        shapes: list of shapes.

    Returns:
        List of tensors, one per shape.
    """
    out, start = [], 0
    for shape in shapes:
        size = int(math.prod(shape))
        out.append(ops.reshape(flat[start:start + size], shape))
        start += size
    return out


# Channel structure -------------------------------------------------------------
def _channel_axes(shape, axis):
    rank = len(shape)
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    axes = tuple(sorted(a % rank for a in axes))
    if axes != tuple(range(axes[0], axes[0] + len(axes))):
        raise ValueError(f"Channel axes {axis} of a weight of shape {tuple(shape)} must "
                         "be consecutive.")
    return axes


def channel_scores(scores, axis=-1):
    """Sums a score tensor over every axis but the channel axis.

    With ``scores = |w|`` this is the L1 norm of each output channel (a Conv
    filter, a Dense unit). ``axis`` may be a tuple of consecutive axes whose
    row-major flattening is the channel index (a DepthwiseConv kernel
    [kh, kw, cin, m] has output channel ``c * m + j`` on axes (-2, -1)).

    Args:
        scores: tensor shaped like the weight.
        axis: int or tuple of consecutive ints.

    Returns:
        float32 numpy vector, one score per channel.

    Example:
        >>> channel_scores(keras.ops.abs(conv.kernel))  # L1 per filter
    """
    values = np.asarray(ops.convert_to_numpy(scores), dtype=np.float32)
    axes = _channel_axes(values.shape, axis)
    moved = np.moveaxis(values, axes, tuple(range(values.ndim - len(axes), values.ndim)))
    channels = int(math.prod(values.shape[a] for a in axes))
    return moved.reshape(-1, channels).sum(axis=0)


def channel_mask(scores, sparsity):
    """Keep vector over channels: exact count, at least one channel kept.

    Args:
        scores: vector of per-channel scores (higher = keep).
        sparsity: float in [0, 1), fraction of channels to remove.

    Returns:
        float32 tensor of 0/1, ``max(1, num_to_keep(n, sparsity))`` ones.

    Example:
        >>> channel_mask(channel_scores(ops.abs(kernel)), 0.5)
    """
    sparsity = validate_sparsity(sparsity)
    n = int(np.asarray(ops.convert_to_numpy(scores)).size)
    return topk_mask(scores, max(1, num_to_keep(n, sparsity)) if n else 0)


def pool_channel_scores(score_vectors, class_maps, size):
    """Pools per-channel scores of several layers into one group's channels.

    Args:
        score_vectors: list of per-channel score vectors (one per layer).
        class_maps: list of int arrays, same lengths: the group position of
            each channel, -1 for channels outside the group.
        size: number of channels of the group.

    Returns:
        float32 numpy vector of length ``size``: the sum over layers.

    Example:
        >>> pool_channel_scores([s1, s2], [np.arange(8), np.arange(8)], 8)
    """
    pooled = np.zeros(int(size), dtype=np.float32)
    for vec, where in zip(score_vectors, class_maps):
        vec = np.asarray(ops.convert_to_numpy(vec), dtype=np.float32).reshape(-1)
        where = np.asarray(where).reshape(-1)
        inside = where >= 0
        np.add.at(pooled, where[inside], vec[inside])
    return pooled


def expand_channel_mask(keep, shape, axis=-1):
    """Broadcasts a per-channel keep vector to a weight's full mask.

    Args:
        keep: vector of 0/1, one entry per channel.
        shape: the weight's shape.
        axis: channel axis (int) or consecutive axes (tuple), see
            `channel_scores`.

    Returns:
        float32 tensor of ``shape``.

    Example:
        >>> expand_channel_mask([1, 0, 1], (3, 3, 16, 3))  # conv kernel, 3 filters
    """
    shape = tuple(int(d) for d in shape)
    axes = _channel_axes(shape, axis)
    keep = np.asarray(ops.convert_to_numpy(keep), dtype=np.float32).reshape(-1)
    channel_shape = tuple(shape[a] for a in axes)
    if keep.size != math.prod(channel_shape):
        raise ValueError(f"A keep vector of {keep.size} channels does not fit a weight "
                         f"of shape {shape} with channel axes {axes}.")
    view = [1] * len(shape)
    for a in axes:
        view[a] = shape[a]
    full = np.broadcast_to(keep.reshape(view), shape).astype(np.float32)
    return ops.convert_to_tensor(full)
