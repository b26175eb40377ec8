"""`StepLR`: a learning-rate schedule that restarts at every GaP step.

The GaP paper launches every GaP step as a fresh run with its own learning
rate schedule (warmup, then decay). `GaPCallback(step_lr=StepLR(...))` sets the
optimizer's learning rate before every batch from the position in the current
*phase*: a GaP step (``steps_per_step`` batches) or the final fine-tuning phase
(its own length), so the schedule starts over at every boundary and spans the
whole fine-tuning phase once.
"""

import math
import numbers

import keras

SHAPES = ("cosine", "linear", "constant")


@keras.saving.register_keras_serializable(package="keras_gap")
class StepLR:
    """Warmup-then-decay learning rate, restarted at every GaP boundary.

    Within a phase of ``length`` batches, batch ``i`` (0-based) gets
    ``peak * (i + 1) / w`` during the first ``w = round(warmup * length)``
    batches, then decays from ``peak`` to ``alpha * peak`` by ``shape``.

    Args:
        peak: learning rate at the end of warmup (> 0).
        warmup: fraction of each phase spent warming up, in [0, 1).
        shape: decay after warmup: "cosine", "linear" or "constant".
        alpha: learning rate at the end of a phase, as a fraction of ``peak``
            (as in `keras.optimizers.schedules.CosineDecay`), in [0, 1].

    Returns:
        A callable ``(i, length) -> learning rate`` (a Python float).

    Example:
        >>> lr = kg.gap.StepLR(peak=2e-3, warmup=0.1, shape="cosine")
        >>> lr(0, 100), lr(10, 100), lr(99, 100) < 1e-5
        (0.0002, 0.002, True)
        >>> cb = kg.GaPCallback(reset_optimizer="fresh", step_lr=lr)
    """

    def __init__(self, peak, warmup=0.0, shape="cosine", alpha=0.0):
        if (not isinstance(peak, numbers.Real) or isinstance(peak, bool)
                or not math.isfinite(peak) or peak <= 0):
            raise ValueError(f"`peak` must be a learning rate > 0; received {peak!r}.")
        if not isinstance(warmup, numbers.Real) or not 0.0 <= warmup < 1.0:
            raise ValueError("`warmup` is the fraction of each phase spent warming up, "
                             f"in [0, 1); received {warmup!r}.")
        if shape not in SHAPES:
            raise ValueError(f"`shape` must be one of {SHAPES}; received {shape!r}.")
        if not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
            raise ValueError("`alpha` is the final learning rate as a fraction of `peak`, "
                             f"in [0, 1]; received {alpha!r}.")
        self.peak = float(peak)
        self.warmup = float(warmup)
        self.shape = shape
        self.alpha = float(alpha)

    def __call__(self, i, length):
        """Learning rate of batch ``i`` (0-based) of a phase of ``length`` batches."""
        length = max(int(length), 1)
        i = min(max(int(i), 0), length - 1)
        warm = int(round(self.warmup * length))
        if i < warm:
            return self.peak * (i + 1) / warm
        if self.shape == "constant":
            return self.peak
        decay_steps = length - warm
        progress = (i - warm) / decay_steps
        if self.shape == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            factor = 1.0 - progress
        return self.peak * (self.alpha + (1.0 - self.alpha) * factor)

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "shape": self.shape,
                "alpha": self.alpha}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return (f"StepLR(peak={self.peak}, warmup={self.warmup}, shape={self.shape!r}, "
                f"alpha={self.alpha})")
