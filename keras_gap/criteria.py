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
    """Base class. Subclasses override `scores` (higher = keep)."""

    registered_name = None

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

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}()"


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
