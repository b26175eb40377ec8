"""Pruning criteria: what scores decide which weights a mask update removes.

A criterion turns (weight, current mask, target sparsity, structure) into a
new mask. The default `Magnitude` keeps the largest |w|; `Random` keeps a
uniformly random exact-count subset. Criteria are shared by gradual pruning
(`prune_low_magnitude`) and GaP's prune-back. New criteria subclass
`Criterion`, override `scores` (or `compute_mask`), and call `register`.

Example:
    >>> @kg.criteria.register("neg_magnitude")
    ... class NegMagnitude(kg.criteria.Criterion):
    ...     def scores(self, weight, mask, **kwargs):
    ...         return -keras.ops.abs(weight)
"""

import keras
from keras import ops

from keras_gap import masks as mask_lib

_PACKAGE = "keras_gap"
_REGISTRY = {}


def register(name):
    """Class decorator: registers a `Criterion` under ``name`` (and for .keras)."""
    def decorate(cls):
        _REGISTRY[name] = cls
        cls.registered_name = name
        return keras.saving.register_keras_serializable(package=_PACKAGE)(cls)
    return decorate


def get(criterion):
    """A `Criterion` from a name, a Criterion instance or a config dict.

    Args:
        criterion: "magnitude", "random", any registered name, or an object.

    Returns:
        A `Criterion` instance.

    Example:
        >>> kg.criteria.get("magnitude")
    """
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, str):
        if criterion not in _REGISTRY:
            raise ValueError(
                f"Unknown pruning criterion {criterion!r}. Known: "
                f"{sorted(_REGISTRY)}; add one with keras_gap.criteria.register.")
        return _REGISTRY[criterion]()
    if isinstance(criterion, dict):
        return keras.saving.deserialize_keras_object(criterion)
    raise ValueError(
        f"`criterion` must be a name {sorted(_REGISTRY)} or a "
        f"keras_gap.criteria.Criterion; received {criterion!r}.")


class Criterion:
    """Base class. Subclasses override `scores` (higher = keep).

    Class attributes read by `keras_gap.UpdatePruningStep`:
    ``needs_gradients`` (True: the callback records the loss gradient of the
    pruned weights with `keras_gap.gradients.GradientRecorder` and passes it
    as ``gradient=`` / ``gradients=``) and ``gradient_batches`` (how many
    recent batches the recorded gradient averages).
    """

    registered_name = None
    needs_gradients = False
    gradient_batches = 1

    def scores(self, weight, mask, **kwargs):
        raise NotImplementedError

    def compute_mask(self, weight, mask, sparsity, block_size=(1, 1),
                     block_pooling_type="AVG", sparsity_m_by_n=None,
                     scores=None, **kwargs):
        """New mask for ``weight`` at ``sparsity`` with the given structure.

        Args:
            weight: the weight variable or tensor.
            mask: its current mask.
            sparsity: float in [0, 1).
            block_size, block_pooling_type, sparsity_m_by_n: structure, see
                `keras_gap.masks.compute_mask`.
            scores: precomputed scores (skip `self.scores`).
            **kwargs: extra context (e.g. ``variable_path``).

        Returns:
            float32 mask tensor shaped like ``weight``.
        """
        if scores is None:
            scores = self.scores(weight, mask, **kwargs)
        return mask_lib.compute_mask(scores, sparsity, block_size,
                                     block_pooling_type, sparsity_m_by_n)

    def compute_global_masks(self, weights, masks, sparsity, gradients=None,
                             **kwargs):
        """New masks for several weights ranked together (``scope="global"``).

        The default ranks ``self.scores`` of all weights jointly and keeps
        exactly ``num_to_keep(total, sparsity)`` (unstructured only).

        Args:
            weights: list of weight variables or tensors.
            masks: their current masks.
            sparsity: overall float in [0, 1).
            gradients: optional list of gradients (one per weight).
            **kwargs: extra context passed to `scores`.

        Returns:
            List of float32 masks.

        Example:
            >>> kg.criteria.Magnitude().compute_global_masks([k1, k2], [m1, m2], 0.9)
        """
        scores = []
        for i, (weight, mask) in enumerate(zip(weights, masks)):
            extra = dict(kwargs)
            if gradients is not None:
                extra["gradient"] = gradients[i]
            scores.append(self.scores(weight, mask, **extra))
        return mask_lib.global_topk_masks(scores, sparsity)

    def channel_weight_scores(self, weight, mask, **kwargs):
        """Per-weight scores that `select_channels` sums per channel."""
        return self.scores(weight, mask, **kwargs)

    def select_channels(self, weights, masks, gradients, class_maps, axes, sparsity,
                        size=None):
        """Keep vector over one channel group (``structure="channel"``).

        The criterion's scores of every weight are summed per output channel
        (L1 norm per filter for "magnitude") and pooled over the group's
        members; exactly ``max(1, num_to_keep(size, sparsity))`` channels stay.

        Args:
            weights: the group members' scored weights (kernels).
            masks: their current masks.
            gradients: list of gradients or Nones (for FGGP).
            class_maps: per weight, the group position of each output channel
                (-1: not in this group).
            axes: per weight, its channel axis (see `keras_gap.masks.channel_scores`).
            sparsity: float in [0, 1), fraction of the group's channels removed.
            size: number of channels of the group (default: from the maps).

        Returns:
            float32 keep vector of length ``size``.

        Example:
            >>> kg.criteria.Magnitude().select_channels([k], [m], [None], [np.arange(8)], [-1], 0.5)
        """
        size = _group_size(class_maps, size)
        vectors = [mask_lib.channel_scores(self.channel_weight_scores(w, m), a)
                   for w, m, a in zip(weights, masks, axes)]
        return mask_lib.channel_mask(mask_lib.pool_channel_scores(vectors, class_maps, size),
                                     sparsity)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}()"


def _group_size(class_maps, size):
    if size is not None:
        return int(size)
    return max((int(max(m.max(), -1)) for m in class_maps if len(m)), default=-1) + 1


@register("magnitude")
class Magnitude(Criterion):
    """Keeps the weights of largest magnitude |w| (the default)."""

    def scores(self, weight, mask, **kwargs):
        return ops.abs(ops.convert_to_tensor(weight))


@register("random")
class Random(Criterion):
    """Keeps an exact-count uniformly random subset (a control baseline).

    Args:
        seed: int seed for reproducibility.
    """

    def __init__(self, seed=None):
        self.seed = seed
        self._generator = keras.random.SeedGenerator(seed)

    def scores(self, weight, mask, **kwargs):
        return keras.random.uniform(tuple(weight.shape), seed=self._generator)

    def get_config(self):
        return {"seed": self.seed}


def _flat(x):
    return ops.reshape(ops.cast(ops.convert_to_tensor(x), "float32"), (-1,))


def fggp_masks(weights, masks, gradients, sparsity, rate=0.5):
    """The FGGP rule over one tensor or jointly over several (global scope).

    With ``n`` entries in total and ``a`` still active (mask 1):
    ``k = a - num_to_keep(n, sparsity)`` weights are removed now. Candidates
    are the ``floor(rate * a)`` active weights with the smallest |gradient|;
    among them the ``k`` with the smallest |w| are removed. Masked-out
    entries never return (``k <= 0`` leaves the masks unchanged).

    Args:
        weights: list of weight tensors/variables.
        masks: list of current masks (1 = active), same shapes.
        gradients: list of gradients of the loss w.r.t. the weights.
        sparsity: float in [0, 1), target sparsity over all entries.
        rate: float in (0, 1], candidate fraction of the active weights.

    Returns:
        List of float32 masks; exactly ``num_to_keep(n, sparsity)`` ones in
        total whenever ``k > 0``.

    Example:
        >>> fggp_masks([w], [m], [g], 0.9, rate=0.5)
    """
    rate = _validate_rate(rate)
    sparsity = mask_lib.validate_sparsity(sparsity)
    shapes = [tuple(int(d) for d in ops.shape(w)) for w in weights]
    w = ops.concatenate([_flat(x) for x in weights], axis=0)
    m = ops.concatenate([_flat(x) for x in masks], axis=0)
    n = int(w.shape[0])
    active = int(ops.convert_to_numpy(ops.sum(ops.cast(m > 0, "int32"))))
    k = active - mask_lib.num_to_keep(n, sparsity)
    m = ops.cast(m > 0, "float32")
    if k <= 0:
        return mask_lib.split_flat(m, shapes)
    if gradients is None or any(g is None for g in gradients):
        raise ValueError(
            f"FGGP must remove {k} weights but has no loss gradient for them. "
            "Train with keras_gap.UpdatePruningStep (it records gradients through "
            "keras_gap.gradients.GradientRecorder; none exists before the first "
            "training batch, so start a schedule that prunes at step 0 at "
            "begin_step >= 1), or pass gradient=/gradients= computed with "
            "keras_gap.gradients.compute_gradients.")
    g = ops.concatenate([_flat(x) for x in gradients], axis=0)
    num_candidates = mask_lib.num_to_keep(active, 1.0 - rate) if rate < 1 else active
    if k > num_candidates:
        raise ValueError(
            f"FGGP must remove k={k} weights at this update (sparsity {sparsity} "
            f"of {n} weights, {active} still active) but its candidate set holds "
            f"only floor(rate * active) = floor({rate} * {active}) = "
            f"{num_candidates}. Use a larger rate (k needs rate >= "
            f"{k / active:.4f}) or more frequent updates (a higher schedule "
            "frequency / smaller sparsity steps).")
    inf = ops.convert_to_tensor(float("inf"), "float32")
    grad_score = ops.where(m > 0, ops.abs(g), inf)
    # Candidates: the num_candidates smallest |g| among active entries.
    _, cand = ops.top_k(-grad_score, num_candidates, sorted=False)
    # Among candidates: remove the k smallest |w|.
    cand_w = ops.take(ops.abs(w), cand)
    _, pick = ops.top_k(-cand_w, k, sorted=False)
    removed = ops.take(cand, pick)
    removed = ops.reshape(ops.cast(removed, "int32"), (-1, 1))
    hit = ops.scatter(removed, ops.ones((k,), "float32"), (n,))
    return mask_lib.split_flat(m * (1.0 - hit), shapes)


def _validate_rate(rate):
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"FGGP `rate` must be a number in (0, 1]; received {rate!r}.") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"FGGP `rate` must be in (0, 1]; received {rate!r}.")
    return value


@register("fggp")
class FGGP(Criterion):
    """Fixed-rate gradient-first, magnitude-next gradual pruning (Zhu et al. 2024).

    At an update that must remove ``k`` weights, the candidates are the
    fraction ``rate`` of still-active weights with the smallest |gradient| (the
    loss gradient of the most recent training batch, or the mean over the last
    ``gradient_batches`` batches); the ``k`` candidates with the smallest |w|
    are removed. Removed weights never return. Works per tensor
    (``scope="layer"``) or over all pruned weights (``scope="global"``);
    unstructured only.

    Args:
        rate: float in (0, 1], candidate fraction (fixed, default 0.5).
        gradient_batches: int >= 1, average the gradient over this many most
            recent batches (1: the current minibatch, as in the paper).

    Example:
        >>> pruned = kg.prune_low_magnitude(model, pruning_schedule=
        ...     kg.PolynomialDecay(0.0, 0.95, 0, 8000, frequency=500),
        ...     criterion=kg.criteria.FGGP(rate=0.5), scope="global")
    """

    needs_gradients = True

    def __init__(self, rate=0.5, gradient_batches=1):
        self.rate = _validate_rate(rate)
        if (not isinstance(gradient_batches, int) or isinstance(gradient_batches, bool)
                or gradient_batches < 1):
            raise ValueError("FGGP `gradient_batches` must be an int >= 1; received "
                             f"{gradient_batches!r}.")
        self.gradient_batches = gradient_batches

    def scores(self, weight, mask, **kwargs):
        raise NotImplementedError(
            "FGGP has no single score: it selects by |gradient| then |w|. Use "
            "compute_mask / compute_global_masks (or keras_gap.criteria.fggp_masks).")

    @staticmethod
    def _check_structure(block_size, sparsity_m_by_n):
        if sparsity_m_by_n is not None or tuple(block_size) != (1, 1):
            raise ValueError(
                "FGGP prunes single weights only; received block_size="
                f"{tuple(block_size)}, sparsity_m_by_n={sparsity_m_by_n}. Use "
                "block_size=(1, 1) and no sparsity_m_by_n, or the magnitude criterion.")

    def compute_mask(self, weight, mask, sparsity, block_size=(1, 1),
                     block_pooling_type="AVG", sparsity_m_by_n=None,
                     scores=None, gradient=None, **kwargs):
        """FGGP mask for one tensor; ``gradient`` is required.

        With precomputed ``scores`` it falls back to plain top-k on them.
        """
        self._check_structure(block_size, sparsity_m_by_n)
        if scores is not None:
            return mask_lib.compute_mask(scores, sparsity)
        return fggp_masks([weight], [mask], [gradient], sparsity, self.rate)[0]

    def compute_global_masks(self, weights, masks, sparsity, gradients=None,
                             **kwargs):
        return fggp_masks(weights, masks, gradients, sparsity, self.rate)

    def channel_weight_scores(self, weight, mask, **kwargs):
        return ops.abs(ops.convert_to_tensor(weight))

    def select_channels(self, weights, masks, gradients, class_maps, axes, sparsity,
                        size=None):
        """FGGP over whole channels: the rule of `fggp_masks` applied to the
        group's channels, with |w| and |gradient| summed per channel."""
        import numpy as np
        size = _group_size(class_maps, size)
        pool = mask_lib.pool_channel_scores
        magnitude = pool([mask_lib.channel_scores(ops.abs(w), a)
                          for w, a in zip(weights, axes)], class_maps, size)
        active = pool([mask_lib.channel_scores(m, a) for m, a in zip(masks, axes)],
                      class_maps, size) > 0
        grads = None
        if not any(g is None for g in gradients):
            grads = [pool([mask_lib.channel_scores(ops.abs(g), a)
                           for g, a in zip(gradients, axes)], class_maps, size)]
        sparsity = mask_lib.validate_sparsity(sparsity)
        if mask_lib.num_to_keep(size, sparsity) < 1:  # keep at least one channel
            sparsity = 1.0 - 1.0 / size
        keep = fggp_masks([magnitude], [active.astype(np.float32)], grads, sparsity,
                          self.rate)[0]
        return ops.convert_to_numpy(keep)

    def get_config(self):
        return {"rate": self.rate, "gradient_batches": self.gradient_batches}

    def __repr__(self):
        return f"FGGP(rate={self.rate}, gradient_batches={self.gradient_batches})"
