"""Pruning schedules with tf-mot's contract.

A schedule is called with the training step and returns
``(should_prune, sparsity)``: whether masks are recomputed at this step and the
sparsity they are recomputed to. ``get_config()`` returns
``{"class_name": ..., "config": {...}}`` and ``from_config(config)`` is
``cls(**config)``, exactly as in ``tfmot.sparsity.keras``.

Steps are numbered as in tf-mot: the first training batch is step 1 (the
callbacks call the schedule with ``pruning_step + 1`` before each batch), so
``begin_step=0`` and ``begin_step=1`` differ only in where the ``frequency``
grid starts: ``ConstantSparsity(0.5, begin_step=0, frequency=100)`` first
fires at step 100, ``begin_step=1`` at step 1.

Called with a Python int (what keras-gap's callbacks do) a schedule returns a
Python bool and float. Called with a tensor (what tf-mot's wrapper does) it
returns tensors, so keras-gap schedules also drive tf-mot training.
"""

import numbers

import keras
from keras import ops

from keras_gap.masks import validate_sparsity

_PACKAGE = "keras_gap"


def _is_python_step(step):
    return isinstance(step, numbers.Integral)


def validate_steps(begin_step, end_step, frequency, allow_negative_1=True):
    """Checks tf-mot's step arguments; raises ValueError naming the bad one."""
    for name, value in (("begin_step", begin_step), ("end_step", end_step),
                        ("frequency", frequency)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"`{name}` must be an int; received {value!r}.")
    if begin_step < 0:
        raise ValueError(f"`begin_step` must be >= 0; received {begin_step}.")
    if end_step == -1 and not allow_negative_1:
        raise ValueError("`end_step` must be >= `begin_step`; -1 (never end) "
                         "is not allowed for this schedule.")
    if end_step != -1 and end_step < begin_step:
        raise ValueError(
            f"`end_step` ({end_step}) must be >= `begin_step` ({begin_step})"
            + (", or -1 to prune forever." if allow_negative_1 else ".")
        )
    if frequency <= 0:
        raise ValueError(f"`frequency` must be > 0; received {frequency}.")
    if end_step == 0:
        import warnings
        warnings.warn(
            "end_step=0: this schedule never updates the masks, because the first "
            "training batch is step 1 (as in tf-mot). To prune once at the first batch "
            "use begin_step=1, end_step=1.", stacklevel=3)


class PruningSchedule:
    """Base class: when to update masks and to what sparsity.

    Subclasses implement ``__call__(step) -> (should_prune, sparsity)`` and
    ``get_config()``. They are registered for `.keras` serialization with
    ``keras.saving.register_keras_serializable``.

    Example:
        >>> class Every10(kg.PruningSchedule):
        ...     def __call__(self, step):
        ...         return step % 10 == 0, 0.5
        ...     def get_config(self):
        ...         return {"class_name": "Every10", "config": {}}
    """

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        """Builds a schedule from ``get_config()["config"]`` (tf-mot style)."""
        if "config" in config and "class_name" in config:
            config = config["config"]
        return cls(**config)

    # Helpers shared by subclasses -------------------------------------------------
    @staticmethod
    def _should_prune_in_step(step, begin_step, end_step, frequency):
        if _is_python_step(step):
            in_range = begin_step <= step and (end_step == -1 or step <= end_step)
            return bool(in_range and (step - begin_step) % frequency == 0)
        step = ops.cast(step, "int64")
        in_range = ops.greater_equal(step, begin_step)
        if end_step != -1:
            in_range = ops.logical_and(in_range, ops.less_equal(step, end_step))
        turn = ops.equal(ops.mod(step - begin_step, frequency), 0)
        return ops.logical_and(in_range, turn)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config()["config"].items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConstantSparsity(PruningSchedule):
    """Prunes to a constant sparsity every ``frequency`` steps.

    Args:
        target_sparsity: float in [0, 1).
        begin_step: first step at which masks are updated.
        end_step: last step at which masks may be updated; -1 for forever.
        frequency: masks are updated every ``frequency`` steps.

    Returns:
        Called with a step: ``(should_prune, target_sparsity)``.

    Example:
        >>> kg.ConstantSparsity(0.8, begin_step=0, frequency=100)(200)
        (True, 0.8)
    """

    def __init__(self, target_sparsity, begin_step, end_step=-1, frequency=100):
        self.target_sparsity = validate_sparsity(target_sparsity, "target_sparsity")
        validate_steps(begin_step, end_step, frequency)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)

    def __call__(self, step):
        should = self._should_prune_in_step(
            step, self.begin_step, self.end_step, self.frequency)
        if _is_python_step(step):
            return should, self.target_sparsity
        return should, ops.convert_to_tensor(self.target_sparsity, "float32")

    def get_config(self):
        return {"class_name": "ConstantSparsity", "config": {
            "target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
            "end_step": self.end_step, "frequency": self.frequency}}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PolynomialDecay(PruningSchedule):
    """Sparsity rises from ``initial_sparsity`` to ``final_sparsity`` polynomially.

    ``s(t) = s_f + (s_i - s_f) * (1 - p)^power`` with
    ``p = clip((t - begin_step) / (end_step - begin_step), 0, 1)``; ``power=3``
    is the cubic schedule of Zhu & Gupta (2017).

    Args:
        initial_sparsity: float in [0, 1).
        final_sparsity: float in [0, 1).
        begin_step: first update step.
        end_step: last update step (must be >= begin_step; -1 not allowed).
        power: exponent of the decay.
        frequency: masks are updated every ``frequency`` steps.

    Returns:
        Called with a step: ``(should_prune, sparsity_at_step)``.

    Example:
        >>> kg.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000)(1000)
        (True, 0.9)
    """

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step,
                 power=3, frequency=100):
        self.initial_sparsity = validate_sparsity(initial_sparsity, "initial_sparsity")
        self.final_sparsity = validate_sparsity(final_sparsity, "final_sparsity")
        validate_steps(begin_step, end_step, frequency, allow_negative_1=False)
        if power <= 0:
            raise ValueError(f"`power` must be > 0; received {power}.")
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.power = float(power) if not isinstance(power, int) else power
        self.frequency = int(frequency)

    def sparsity_at(self, step):
        """The sparsity at ``step`` (float for ints, tensor for tensors)."""
        span = max(self.end_step - self.begin_step, 1)
        if _is_python_step(step):
            p = min(1.0, max(0.0, (step - self.begin_step) / span))
        else:
            p = ops.clip(ops.cast(step - self.begin_step, "float32") / span, 0.0, 1.0)
        return (self.final_sparsity
                + (self.initial_sparsity - self.final_sparsity) * (1 - p) ** self.power)

    def __call__(self, step):
        should = self._should_prune_in_step(
            step, self.begin_step, self.end_step, self.frequency)
        return should, self.sparsity_at(step)

    def get_config(self):
        return {"class_name": "PolynomialDecay", "config": {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity, "begin_step": self.begin_step,
            "end_step": self.end_step, "power": self.power,
            "frequency": self.frequency}}


_BUILTIN = {"ConstantSparsity": ConstantSparsity, "PolynomialDecay": PolynomialDecay}


def register_schedule(cls):
    """Makes a schedule class resolvable by name in `deserialize_schedule`."""
    _BUILTIN[cls.__name__] = cls
    return keras.saving.register_keras_serializable(package=_PACKAGE)(cls)


def serialize_schedule(schedule):
    """Schedule -> ``{"class_name", "config"}`` (tf-mot's format)."""
    return schedule.get_config()


def deserialize_schedule(config):
    """``{"class_name", "config"}`` -> schedule; raises on an unknown name."""
    if isinstance(config, PruningSchedule):
        return config
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            "A pruning schedule config must be a dict with 'class_name' and "
            f"'config'; received {config!r}."
        )
    name = config["class_name"]
    cls = _BUILTIN.get(name) or keras.saving.get_registered_object(
        name, custom_objects=None) or keras.saving.get_registered_object(
        f"{_PACKAGE}>{name}")
    if cls is None:
        raise ValueError(
            f"Unknown pruning schedule {name!r}. Known: {sorted(_BUILTIN)}; "
            "register custom schedules with keras_gap.schedules.register_schedule."
        )
    return cls.from_config(config["config"])


class _ForeignScheduleAdapter(PruningSchedule):
    """Runs a tf-mot schedule object keras-gap has no native twin for."""

    def __init__(self, schedule):
        self._schedule = schedule

    def __call__(self, step):
        should, sparsity = self._schedule(step)
        if _is_python_step(step):
            return bool(ops.convert_to_numpy(should)), float(ops.convert_to_numpy(sparsity))
        return should, sparsity

    def get_config(self):
        return self._schedule.get_config()


def _is_tfmot_schedule(obj):
    return any(c.__module__.startswith("tensorflow_model_optimization")
               for c in type(obj).__mro__)


def get_schedule(schedule):
    """Accepts a keras-gap schedule, a tf-mot schedule or a config dict.

    tf-mot's ``ConstantSparsity`` and ``PolynomialDecay`` become their keras-gap
    twins (no tf-mot import needed); other tf-mot schedules are called as they
    are. Anything else is a clear error.

    Args:
        schedule: the object given as ``pruning_schedule``.

    Returns:
        A `PruningSchedule`.

    Example:
        >>> get_schedule(tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
        ConstantSparsity(target_sparsity=0.5, begin_step=0, end_step=-1, frequency=100)
    """
    if isinstance(schedule, PruningSchedule):
        return schedule
    if isinstance(schedule, dict):
        return deserialize_schedule(schedule)
    if _is_tfmot_schedule(schedule):
        config = schedule.get_config()
        if config.get("class_name") in ("ConstantSparsity", "PolynomialDecay"):
            return deserialize_schedule(config)
        return _ForeignScheduleAdapter(schedule)
    raise ValueError(
        f"Unknown pruning schedule object {schedule!r} of type "
        f"{type(schedule).__name__}. Expected a keras_gap.PruningSchedule "
        "(ConstantSparsity, PolynomialDecay, GaPPruningSchedule, ...), a "
        "tfmot.sparsity.keras.PruningSchedule, or a config dict."
    )
