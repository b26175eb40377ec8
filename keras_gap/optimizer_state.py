"""Editing a Keras optimizer's per-weight state (momentum, Adam moments).

Masks change outside the compiled training step. The optimizer slots of
removed weights are zeroed when they are removed, so a regrown weight restarts
with zero slots (`keras_gap.MaskedOptimizer` keeps the weights themselves at
zero inside the step); GaP can also reset the slots of all weights
(``reset_optimizer="all"``) or restart the optimizer as a fresh one
(``"fresh"``, `restart`). Works for every built-in Keras 3 optimizer and the
wrappers around it (``inner_optimizer`` chains): slots are
found as the optimizer's per-variable lists (``_momentums``, ``_velocities``,
``momentums``, ...) at the variable's index.
"""

import keras
from keras import ops

from keras_gap.optimizer_wrappers import base_optimizer


def _base_optimizer(optimizer):
    return base_optimizer(optimizer)


def slot_variables(optimizer, variable):
    """The optimizer variables that hold per-entry state for ``variable``.

    Args:
        optimizer: a Keras 3 optimizer (or LossScaleOptimizer), or None.
        variable: a trainable model variable.

    Returns:
        A list of `keras.Variable` shaped like ``variable`` (empty when the
        optimizer is None, not built yet, or does not track ``variable``).

    Example:
        >>> [v.path for v in slot_variables(model.optimizer, kernel)]
        ['adam/dense_kernel_momentum', 'adam/dense_kernel_velocity']
    """
    opt = _base_optimizer(optimizer)
    if opt is None or not getattr(opt, "built", False):
        return []
    tracked = getattr(opt, "_trainable_variables", [])
    try:
        index = opt._get_variable_index(variable)
    except (KeyError, AttributeError):
        return []
    shape = tuple(variable.shape)
    found = []
    for value in vars(opt).values():
        if (isinstance(value, (list, tuple)) and value is not tracked
                and len(value) == len(tracked)):
            slot = value[index]
            if (isinstance(slot, keras.Variable) and slot is not variable
                    and tuple(slot.shape) == shape):
                found.append(slot)
    return found


def mask_slots(optimizer, variable, keep):
    """Multiplies every slot of ``variable`` by ``keep`` (1 keeps, 0 zeroes).

    Args:
        optimizer: a Keras optimizer or None.
        variable: the model variable whose slots to edit.
        keep: tensor shaped like ``variable``.

    Returns:
        Number of slot variables edited.
    """
    slots = slot_variables(optimizer, variable)
    for slot in slots:
        slot.assign(ops.multiply(slot, ops.cast(keep, slot.dtype)))
    return len(slots)


def reset_slots(optimizer, variable):
    """Zeroes every slot of ``variable``; returns how many were reset."""
    slots = slot_variables(optimizer, variable)
    for slot in slots:
        slot.assign(ops.zeros(tuple(slot.shape), slot.dtype))
    return len(slots)


def restart(optimizer, variables):
    """Puts ``optimizer`` in the state of a freshly built one for ``variables``.

    Every slot of every variable is zeroed and the step counter
    (``optimizer.iterations``) goes back to 0, so Adam's bias correction and
    any `keras.optimizers.schedules.LearningRateSchedule` start over: the next
    update is the one a new optimizer of the same config would make. Nadam's
    running momentum product is reset to 1. A `LossScaleOptimizer` keeps its
    current loss scale (restarting it would only cost skipped steps).

    Args:
        optimizer: a Keras 3 optimizer (or LossScaleOptimizer), or None.
        variables: the model's trainable variables.

    Returns:
        Number of slot variables reset.

    Example:
        >>> restart(model.optimizer, model.trainable_variables)
        >>> int(model.optimizer.iterations)
        0
    """
    opt = _base_optimizer(optimizer)
    if opt is None or not getattr(opt, "built", False):
        return 0
    count = sum(reset_slots(opt, v) for v in variables)
    opt.iterations.assign(0)
    if isinstance(getattr(opt, "_u_product", None), keras.Variable):  # Nadam
        opt._u_product.assign(1.0)
    return count
