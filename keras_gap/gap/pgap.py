"""P-GaP's copy bookkeeping: snapshot, restore and merge of model variables.

Pure functions over lists of numpy arrays so that the per-copy work can run
anywhere (sequentially in one fit today, on K workers with a distributed
engine later): a copy is ``snapshot(model)`` after training with its
partition grown; `merge_copies` builds the round's merged model from them.
"""

import numpy as np
from keras import ops


def _tracked_variables(model, wrappers):
    """Model variables P-GaP copies (everything but the step counters)."""
    skip = {id(w.pruning_step) for w in wrappers}
    return [v for v in model.variables if id(v) not in skip]


def snapshot(model, wrappers):
    """Values of the model's variables (numpy), in a fixed order.

    Args:
        model: the model being trained.
        wrappers: its pruning wrappers (their step counters are not copied).

    Returns:
        A list of numpy arrays.
    """
    return [np.array(ops.convert_to_numpy(v)) for v in _tracked_variables(model, wrappers)]


def restore(model, wrappers, values):
    """Assigns a `snapshot` back to the model's variables."""
    variables = _tracked_variables(model, wrappers)
    if len(variables) != len(values):
        raise ValueError(f"Snapshot has {len(values)} values for {len(variables)} variables.")
    for v, value in zip(variables, values):
        v.assign(value)
    for w in wrappers:  # masks were assigned directly: observers re-read them
        w.mask_version += 1


def partition_indices(model, wrappers, partitions):
    """{partition: set of snapshot indices of its pruned weights and masks}."""
    index = {id(v): i for i, v in enumerate(_tracked_variables(model, wrappers))}
    return {p: {index[id(v)] for w in ws for v in list(w.pruned_weights) + list(w.masks)}
            for p, ws in partitions.items()}


def merge_copies(copies, owned, base=None):
    """Merges P-GaP copies: partition p's variables from copy p, the rest averaged.

    Args:
        copies: {partition p: snapshot of copy p (trained with p grown)}.
        owned: {partition p: set of snapshot indices belonging to p}.
        base: optional snapshot for partitions that have no copy (a run resumed
            in the middle of a round); without it every partition needs a copy.

    Returns:
        The merged snapshot (list of numpy arrays).

    Example:
        >>> merged = merge_copies({0: snap0, 1: snap1}, {0: {0, 1}, 1: {2, 3}})
    """
    if not copies:
        raise ValueError("P-GaP merge needs at least one trained copy.")
    missing = sorted(set(owned) - set(copies))
    if missing and base is None:
        raise ValueError(f"P-GaP merge needs one copy per partition {sorted(owned)}; "
                         f"got copies for {sorted(copies)}.")
    sources = dict(copies)
    for p in missing:
        sources[p] = base
    owner = {i: p for p, idx in owned.items() for i in idx}
    first = next(iter(copies.values()))
    merged = []
    for i in range(len(first)):
        if i in owner:
            merged.append(sources[owner[i]][i])
        elif np.issubdtype(first[i].dtype, np.floating):
            merged.append(np.mean([c[i] for c in copies.values()], axis=0).astype(first[i].dtype))
        else:
            merged.append(first[i])
    return merged
