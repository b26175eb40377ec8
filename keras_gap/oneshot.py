"""One-shot pruning of a trained model with a little calibration data.

For a model that is already trained (a KerasHub preset, a fine-tuned BERT, your
own Functional model), `prune` sets a fraction of each Dense / EinsumDense
kernel to zero in one pass, without a gradient step:

* ``"magnitude"``: the smallest |W| of each layer;
* ``"wanda"`` (Sun et al., 2023): the smallest |W_ij| * ||X_i||_2 among the
  weights of each output j, where ||X_i|| is the norm of input feature i over
  every calibration token;
* ``"sparsegpt"`` (Frantar & Alistarh, 2023): the optimal-brain-surgeon
  update GPTQ uses, with a mask instead of rounding: columns are pruned left
  to right (in blocks of ``block_size``, the mask of a block chosen by
  w^2 / [H^-1]_ii^2) and the error of each pruned weight is spread over the
  weights still to come, with H = X^T X + damping.

How the activations are captured (the pattern of Keras' GPTQ): the layers are
processed group by group in definition order, a group being one transformer
block (any composite layer) or the model-level layers outside blocks. For
each group the model runs forward over the calibration batches while each
layer of the group adds its inputs to running statistics (per-feature sums of
squares and X^T X, float64), then the group's layers are pruned, and the next
group sees the already pruned ones, as in the papers. Memory is bounded by the
statistics of one group (d_in x d_in per layer), never by stored activations;
the cost is one forward pass over the calibration data per group. Padding
tokens are counted like any other.

The model's weights are changed in place and the model is returned plain
(no wrappers, its class kept); prune it further or fine-tune it with
`prune_low_magnitude` + ``ConstantSparsity(s, begin_step=1, end_step=1)``,
whose one mask update at the first training step keeps exactly the zeros made
here (the magnitude of a zero is the lowest; tested).

Example:
    >>> pruned, report = kg.oneshot.prune(model, calib_x, method="wanda", sparsity=0.5)
    >>> print(report)
"""

import dataclasses
import time
import warnings

import keras
import numpy as np
from keras import ops

from keras_gap import inplace, registry
from keras_gap import masks as mask_lib

__all__ = ["METHODS", "OneShotReport", "prune"]

METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclasses.dataclass(frozen=True)
class OneShotLayer:
    """One pruned layer: its path, kernel shape, sparsity reached and the
    relative output error on the calibration data,
    ``||(W - W') X|| ^ 2 / ||W X|| ^ 2`` (from X^T X); with ``structure="channel"``
    a row is a channel group (``shape``: its size) and ``error`` is nan."""

    path: str
    shape: tuple
    sparsity: float
    error: float


@dataclasses.dataclass(frozen=True)
class OneShotReport:
    """What `prune` did: ``layers`` (pruned), ``skipped`` ((path, reason)),
    ``method``, ``samples`` (calibration examples), ``seconds``."""

    method: str
    layers: tuple
    skipped: tuple
    samples: int
    seconds: float

    @property
    def sparsity(self):
        """Zeros over the weights of the pruned kernels."""
        total = sum(int(np.prod(r.shape)) for r in self.layers)
        zeros = sum(r.sparsity * int(np.prod(r.shape)) for r in self.layers)
        return zeros / total if total else 0.0

    def to_dict(self):
        return {"method": self.method, "samples": self.samples, "seconds": self.seconds,
                "sparsity": self.sparsity,
                "layers": [dict(dataclasses.asdict(r), shape=list(r.shape))
                           for r in self.layers],
                "skipped": [list(s) for s in self.skipped]}

    def __str__(self):
        width = max([len(r.path) for r in self.layers] + [5])
        grouped = self.method.endswith("(channel)")   # rows are channel groups
        lines = [f"one-shot {self.method}: {len(self.layers)} "
                 f"{'groups' if grouped else 'layers'}, sparsity "
                 f"{self.sparsity:.2%}, {self.samples} calibration samples, "
                 f"{self.seconds:.1f} s",
                 f"{'group' if grouped else 'layer':<{width}}  "
                 f"{'members' if grouped else 'kernel':<14}  sparsity  rel. output error"]
        for r in self.layers:
            error = "n/a" if np.isnan(r.error) else f"{r.error:.4g}"
            lines.append(f"{r.path:<{width}}  {'x'.join(map(str, r.shape)):<14}  "
                         f"{r.sparsity:7.2%}  {error}")
        for path, reason in self.skipped:
            lines.append(f"skipped {path}: {reason}")
        return "\n".join(lines)


# --- Which layers, and how their kernel meets their input ---------------------------------
def _is_target(layer):
    return (isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
            and layer.built and getattr(layer, "kernel", None) is not None)


def _contraction(layer):
    """(number of kernel axes contracted with the input's last axes) or a reason."""
    if isinstance(layer, keras.layers.Dense):
        return 1
    equation = layer.equation.replace(" ", "")
    try:
        operands, output = equation.split("->")
        x_spec, k_spec = operands.split(",")
    except ValueError:
        return f"EinsumDense equation {layer.equation!r} is not 'x,k->y'"
    if "." in equation:
        return f"EinsumDense equation {layer.equation!r} uses an ellipsis"
    summed = [c for c in k_spec if c in x_spec and c not in output]
    n = len(summed)
    if not n or k_spec[:n] != "".join(summed) or x_spec[-n:] != "".join(summed):
        return (f"EinsumDense equation {layer.equation!r}: the summed axes are not the "
                "kernel's leading and the input's trailing axes")
    return n


def _matrix(kernel, n):
    """Kernel as [inputs, outputs] (its n leading axes flattened)."""
    shape = kernel.shape
    return kernel.reshape(int(np.prod(shape[:n])), -1)


# --- The three criteria --------------------------------------------------------------------
def _nm_zeros(size, m_by_n):
    """How many of a group of ``size`` inputs are zeroed (tf-mot's partial rule)."""
    zeros, n = m_by_n
    return size - min(n - zeros, size)


def _magnitude(w, stats, sparsity, m_by_n):
    return w * _mask(np.abs(w), sparsity, m_by_n, per_output=False)


def _wanda(w, stats, sparsity, m_by_n):
    norms = np.sqrt(stats.sumsq)
    return w * _mask(np.abs(w) * norms[:, None], sparsity, m_by_n, per_output=True)


def _mask(scores, sparsity, m_by_n, per_output):
    if m_by_n is not None:
        return np.asarray(ops.convert_to_numpy(mask_lib.n_by_m_mask(scores, m_by_n)))
    if per_output:
        return mask_lib.per_output_mask(scores, sparsity)
    return np.asarray(ops.convert_to_numpy(mask_lib.topk_mask(
        scores, mask_lib.num_to_keep(scores.size, sparsity))))


def _sparsegpt(w, stats, sparsity, m_by_n, block_size=128, damp=0.01):
    """SparseGPT on ``w`` [inputs, outputs]; returns the pruned, updated weights."""
    weight = w.T.astype(np.float64).copy()        # [outputs, inputs], the papers' layout
    h = stats.gram.copy()
    cols = h.shape[0]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0
    h[np.diag_indices(cols)] += damp * float(np.mean(np.diag(h)))
    # Upper Cholesky factor of H^-1 (GPTQ's numerically stable form).
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    if m_by_n is not None and block_size % m_by_n[1]:
        block_size = max(m_by_n[1], block_size - block_size % m_by_n[1])
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = weight[:, i1:i2].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = np.diag(hinv1)
        pruned = np.zeros(w1.shape, bool)
        if m_by_n is None:
            score = w1 ** 2 / d[None, :] ** 2
            keep = mask_lib.num_to_keep(score.size, sparsity)
            kept = np.asarray(ops.convert_to_numpy(mask_lib.topk_mask(score, keep))) > 0
            pruned = ~kept
        for i in range(i2 - i1):
            if m_by_n is not None and i % m_by_n[1] == 0:
                group = slice(i, min(i + m_by_n[1], i2 - i1))
                score = w1[:, group] ** 2 / d[group][None, :] ** 2
                k = _nm_zeros(score.shape[1], m_by_n)
                if k:
                    lowest = np.argsort(score, axis=1, kind="stable")[:, :k]
                    np.put_along_axis(pruned[:, group], lowest, True, axis=1)
            column = w1[:, i]
            q = np.where(pruned[:, i], 0.0, column)
            q1[:, i] = q
            err = (column - q) / d[i]
            w1[:, i:] -= np.outer(err, hinv1[i, i:])
            err1[:, i] = err
        weight[:, i1:i2] = q1
        weight[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return weight.T


_PRUNERS = {"magnitude": _magnitude, "wanda": _wanda, "sparsegpt": _sparsegpt}


# --- Activation statistics -----------------------------------------------------------------
class _Stats:
    """Running sums of one layer's inputs, flattened to [tokens, features]."""

    def __init__(self, n, gram=True):
        self.n = n                   # contracted axes
        self.sumsq = None            # [features]
        self.gram = None             # [features, features] (X^T X)
        self.with_gram = gram

    def add(self, x):
        x = np.asarray(ops.convert_to_numpy(x), dtype=np.float64)
        features = int(np.prod(x.shape[x.ndim - self.n:]))
        x = x.reshape(-1, features)
        if self.sumsq is None:
            self.sumsq = np.zeros(features)
            if self.with_gram:
                self.gram = np.zeros((features, features))
        self.sumsq += np.sum(x * x, axis=0)
        if self.with_gram:
            self.gram += x.T @ x


def _recording(layer, stats):
    """Replaces ``layer.call`` on the instance; returns a function that undoes it."""
    def wrap(call):
        def recorded(*args, **kwargs):
            stats.add(args[0] if args else kwargs["inputs"])
            return call(*args, **kwargs)
        return recorded
    return registry.replace_call(layer, wrap)


# --- Calibration data ----------------------------------------------------------------------
def _batches(data, batch_size):
    """Calibration batches (checked once against the model by `_check_inputs`)."""
    if isinstance(data, dict):
        arrays = {k: np.asarray(v) for k, v in data.items()}
        n = {k: len(v) for k, v in arrays.items()}
        if len(set(n.values())) != 1:
            raise ValueError(f"calibration_data: the arrays have different lengths {n}.")
        count = next(iter(n.values()))
    else:
        arrays = np.asarray(data)
        count = len(arrays)
    if count < 1:
        raise ValueError("calibration_data is empty; pass at least one example.")
    for start in range(0, count, batch_size):
        if isinstance(arrays, dict):
            yield {k: v[start:start + batch_size] for k, v in arrays.items()}
        else:
            yield arrays[start:start + batch_size]


def _kind(dtype):
    dtype = np.dtype(keras.backend.standardize_dtype(dtype)) if not isinstance(
        dtype, np.dtype) else dtype
    return "float" if np.issubdtype(dtype, np.floating) else "int"


def _check_one(name, spec, array):
    shape = tuple(spec.shape)
    bad = (array.ndim != len(shape) or any(
        d is not None and d != a for d, a in zip(shape[1:], array.shape[1:])))
    if bad:
        raise ValueError(f"calibration_data{name}: shape {array.shape} does not fit the "
                         f"model's input {name or ''} of shape {shape}.")
    if _kind(spec.dtype) != _kind(array.dtype) and array.dtype != bool:
        raise ValueError(f"calibration_data{name}: dtype {array.dtype} does not fit the "
                         f"model's input{name} of dtype {spec.dtype} (shape {shape}).")


def _check_inputs(model, arrays):
    try:
        spec = model.input
    except (AttributeError, ValueError):  # a Sequential model never called yet
        specs = getattr(model, "inputs", None) or []
        spec = specs[0] if len(specs) == 1 else None
    if spec is None:
        return
    if isinstance(spec, dict):
        if not isinstance(arrays, dict) or set(arrays) != set(spec):
            got = sorted(arrays) if isinstance(arrays, dict) else f"an array {arrays.shape}"
            raise ValueError(f"calibration_data: model {model.name!r} takes inputs "
                             f"{ {k: tuple(v.shape) for k, v in spec.items()} }; received {got}.")
        for key, s in spec.items():
            _check_one(f"[{key!r}]", s, arrays[key])
    elif isinstance(spec, (list, tuple)):
        raise ValueError(f"calibration_data: model {model.name!r} has {len(spec)} "
                         "positional inputs; pass a model with one input or named inputs.")
    else:
        if isinstance(arrays, dict):
            raise ValueError(f"calibration_data: model {model.name!r} takes one input of "
                             f"shape {tuple(spec.shape)}; received a dict {sorted(arrays)}.")
        _check_one("", spec, arrays)


# --- The entry point -----------------------------------------------------------------------
def prune(model, calibration_data, method="wanda", sparsity=0.5, sparsity_m_by_n=None,
          structure=None, keep_dense=(), batch_size=8, block_size=128, damp=0.01,
          verbose=1):
    """Prunes a trained model in one shot; its weights are changed in place.

    Args:
        model: a built Keras model: Sequential, Functional, or a Functional
            subclass (KerasHub task or backbone). Every Dense and EinsumDense
            kernel at any depth is pruned (attention projections and FFN layers
            inside transformer blocks included); embeddings and norms are not.
        calibration_data: inputs only (no labels), as the model takes them: an
            array, or a dict of arrays for named inputs (KerasHub:
            ``{"token_ids", "padding_mask", ...}``). A few hundred sequences
            is typical; ignored by ``"magnitude"`` except for its error column.
        method: "magnitude", "wanda" or "sparsegpt".
        sparsity: fraction of each kernel to zero (unstructured).
        sparsity_m_by_n: ``(M, N)``: M zeros in every N consecutive inputs of
            each output (tf-mot's meaning; (2, 4) for 2:4), instead of
            ``sparsity``.
        structure: None (weights) or "channel": whole channel groups
            (`kg.channel_groups`: attention heads, GQA key/value groups, FFN
            units, Dense / Conv output channels), ``sparsity`` of each
            removable group removed, scored by "magnitude" (L1 norm of the
            group's producer weights) or "wanda" (sum over the consumers'
            input rows of |W| x ||X||, the structured Wanda of FLAP / LLM-Pruner
            baselines); the removed members are zeroed in every layer holding
            them, so `kg.materialize` can then take them out. One forward pass
            over the calibration data; report rows are groups (``error`` nan).
        keep_dense: layer paths or names to leave dense.
        batch_size: calibration batch size.
        block_size: SparseGPT's column block.
        damp: SparseGPT's damping, a fraction of the mean diagonal of X^T X.
        verbose: 1 shows a progress bar over the groups.

    Returns:
        ``(model, report)``: the same model object, pruned, and a
        `OneShotReport` (layers pruned with sparsity and relative output
        error; layers skipped with the reason).

    Raises:
        ValueError: unknown method, bad sparsity, structure="channel" with
            SparseGPT or N:M, calibration data that does
            not fit the model's inputs (both shapes named), a ``keep_dense``
            name not in the model, a model that still holds pruning wrappers.

    Example:
        >>> lm, report = kg.oneshot.prune(lm, {"token_ids": ids, "padding_mask": mask},
        ...                               method="sparsegpt", sparsity_m_by_n=(2, 4))
        >>> print(report)
    """
    from keras_gap.wrapper import collect_wrappers
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; received {method!r}.")
    if structure not in (None, "unstructured", "channel"):
        raise ValueError(f"`structure` must be None (weights) or 'channel' (whole heads, "
                         f"FFN units and channels); received {structure!r}.")
    if structure == "channel" and (method == "sparsegpt" or sparsity_m_by_n is not None):
        raise ValueError("oneshot.prune(structure='channel') scores whole heads, FFN units "
                         "and channels with method='magnitude' or 'wanda' at a `sparsity`; "
                         f"received method={method!r}, sparsity_m_by_n={sparsity_m_by_n!r}. "
                         "SparseGPT and N:M prune single weights: use structure=None.")
    if sparsity_m_by_n is not None:
        sparsity_m_by_n = tuple(int(v) for v in mask_lib.validate_m_by_n(sparsity_m_by_n))
    else:
        sparsity = mask_lib.validate_sparsity(sparsity)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f"oneshot.prune needs a built keras Model; received {model!r}.")
    if collect_wrappers(model) or inplace.in_place_wrappers(model):
        raise ValueError(f"Model {model.name!r} holds pruning wrappers; strip it first "
                         "(kg.strip_pruning) and prune the plain model.")
    _check_inputs(model, {k: np.asarray(v) for k, v in calibration_data.items()}
                  if isinstance(calibration_data, dict) else np.asarray(calibration_data))
    start = time.time()
    if structure == "channel":
        return _prune_channels(model, calibration_data, method, sparsity, keep_dense,
                               batch_size, verbose, start)
    unknown = []
    leaves = inplace.prunable_paths(model, unknown=unknown, is_leaf=_is_target)
    names = {p for p, _, _ in leaves} | {layer.name for _, layer, _ in leaves}
    missing = [k for k in keep_dense if k not in names]
    if missing:
        raise ValueError(f"`keep_dense` names layers that are not in the model: {missing}. "
                         f"Layers one-shot pruning handles: {[p for p, _, _ in leaves]}.")
    skipped = [(u.split(" (")[0], f"{u.split(' (')[1][:-1]}: one-shot pruning handles "
                "Dense and EinsumDense kernels") for u in unknown]
    work = []
    for path, layer, block in leaves:
        if path in keep_dense or layer.name in keep_dense:
            skipped.append((path, "keep_dense"))
            continue
        n = _contraction(layer)
        if isinstance(n, str):
            skipped.append((path, n))
            continue
        work.append((path, layer, block, n))
    if not work:
        raise ValueError(f"Model {model.name!r} has no Dense or EinsumDense kernel to prune "
                         f"(skipped: {skipped}).")
    groups = list(dict.fromkeys(block for _, _, block, _ in work))
    rows, samples = [], 0
    bar = keras.utils.Progbar(len(groups), unit_name="group") if verbose else None
    for g, group in enumerate(groups):
        members = [(p, layer, n) for p, layer, block, n in work if block == group]
        stats = {p: _Stats(n) for p, _, n in members}
        undo = [_recording(layer, stats[p]) for p, layer, _ in members]
        try:
            samples = 0
            for batch in _batches(calibration_data, batch_size):
                model(batch, training=False)
                samples += len(next(iter(batch.values())) if isinstance(batch, dict)
                               else batch)
        finally:
            for u in undo:
                u()
        for path, layer, n in members:
            kernel = np.asarray(ops.convert_to_numpy(layer.kernel), dtype=np.float64)
            w = _matrix(kernel, n)
            s = stats[path]
            if s.sumsq is None or s.sumsq.shape[0] != w.shape[0]:
                skipped.append((path, "not called by the model on the calibration data"))
                continue
            kwargs = {"block_size": block_size, "damp": damp} if method == "sparsegpt" else {}
            new = _PRUNERS[method](w, s, sparsity, sparsity_m_by_n, **kwargs)
            delta = new - w
            base = float(np.sum(w * (s.gram @ w)))
            error = float(np.sum(delta * (s.gram @ delta))) / base if base > 0 else 0.0
            layer.kernel.assign(new.reshape(kernel.shape).astype(layer.kernel.dtype))
            rows.append(OneShotLayer(path, tuple(kernel.shape),
                                     float(np.mean(new == 0)), error))
        if bar is not None:
            bar.update(g + 1)
    if sparsity_m_by_n is not None:
        for path, layer, _, n in work:
            if int(np.prod(layer.kernel.shape[:n])) % sparsity_m_by_n[1]:
                warnings.warn(f"oneshot.prune: layer {path!r} has {layer.kernel.shape} "
                              f"inputs, not a multiple of N={sparsity_m_by_n[1]}; its last "
                              "group is partial (pruned as tf-mot does).", stacklevel=2)
    return model, OneShotReport(method, tuple(rows), tuple(skipped), samples,
                                time.time() - start)


# --- Whole heads, FFN units and channels ---------------------------------------------------
def _prune_channels(model, calibration_data, method, sparsity, keep_dense, batch_size,
                    verbose, start):
    """``structure="channel"``: one score per member of every removable channel group,
    the lowest ``sparsity`` of each group zeroed in every layer that holds it."""
    from keras_gap.structured import graph as graph_lib
    graph = graph_lib.analyze(model)
    names = {graph.name_of(lid) for lid in graph.layers} | {
        layer.name for layer in graph.layers.values()}
    missing = [k for k in keep_dense if k not in names]
    if missing:
        raise ValueError(f"`keep_dense` names layers that are not in the model: {missing}. "
                         f"Layers of its channel groups: {sorted(names)}.")

    def holders(g, key):
        lids = [lid for lid, m in graph.maps.items() if key in m
                and (graph.positions(graph.layers[lid], g, key) >= 0).any()]
        return [(lid, graph.layers[lid]) for lid in lids]

    skipped, work = [], []
    for group in graph.groups:
        if not group.removable:
            skipped.append((group.name, "not removable: " + "; ".join(
                f"{n} ({r})" for n, r in group.blocked_by[:2])))
            continue
        producers = [(lid, layer) for lid, layer in holders(group.index, "out")
                     if registry.channel_weights(layer)]
        kept = [graph.name_of(lid) for lid, layer in producers
                if graph.name_of(lid) in keep_dense or layer.name in keep_dense]
        if kept:
            skipped.append((group.name, f"keep_dense: {kept}"))
            continue
        consumers = []
        if method == "wanda":
            consumers = [(layer, graph.positions(layer, group.index, "in"))
                         for _, layer in holders(group.index, "in")]
            for _, layer in producers:   # Keras MHA: its heads meet its own output_dense
                if isinstance(layer, keras.layers.MultiHeadAttention):
                    consumers.append((layer.output_dense,
                                      graph.positions(layer, group.index)))
            bad = [graph.name_of(layer) if id(layer) in graph.layers else layer.name
                   for layer, _ in consumers
                   if not _is_target(layer) or isinstance(_contraction(layer), str)]
            if bad or not consumers:
                skipped.append((group.name, f"wanda needs Dense / EinsumDense consumers; "
                                f"{bad or 'none'} read these channels"))
                continue
        work.append((group, producers, consumers))
    if not work:
        raise ValueError(f"Model {model.name!r} has no removable channel group to prune "
                         f"(skipped: {skipped}).")

    stats = {}
    if method == "wanda":
        for _, _, consumers in work:
            for layer, _ in consumers:
                stats.setdefault(id(layer), (layer, _Stats(_contraction(layer), gram=False)))
        undo = [_recording(layer, st) for layer, st in stats.values()]
        samples = 0
        try:
            bar = keras.utils.Progbar(-(-_count(calibration_data) // batch_size),
                                      unit_name="batch") if verbose else None
            for i, batch in enumerate(_batches(calibration_data, batch_size)):
                model(batch, training=False)
                samples += len(next(iter(batch.values())) if isinstance(batch, dict)
                               else batch)
                if bar is not None:
                    bar.update(i + 1)
        finally:
            for u in undo:
                u()
    else:
        samples = 0

    keep_by_group, rows = {}, []
    for group, producers, consumers in work:
        if method == "magnitude":
            vectors, maps = [], []
            for _, layer in producers:
                pos = graph.positions(layer, group.index)
                for variable, axis in registry.channel_weights(layer):
                    vectors.append(mask_lib.channel_scores(ops.abs(variable), axis))
                    maps.append(pos)
            scores = mask_lib.pool_channel_scores(vectors, maps, group.size)
        else:
            scores = np.zeros(group.size)
            for layer, pos in consumers:
                n = _contraction(layer)
                st = stats[id(layer)][1]
                w = _matrix(np.asarray(ops.convert_to_numpy(layer.kernel), np.float64), n)
                if st.sumsq is None:
                    continue   # never called on the calibration data: adds nothing
                per_row = np.abs(w).sum(axis=1) * np.sqrt(st.sumsq)
                if per_row.size != pos.size:   # group axis leads: [members, rest]
                    per_row = per_row.reshape(pos.size, -1).sum(axis=1)
                inside = pos >= 0
                np.add.at(scores, pos[inside], per_row[inside])
        keep = np.asarray(ops.convert_to_numpy(mask_lib.channel_mask(
            scores.astype(np.float32), sparsity)), dtype=np.float32)
        keep_by_group[group.index] = keep
        rows.append(OneShotLayer(group.name, (group.size,), float(1.0 - keep.mean()),
                                 float("nan")))
    for lid, layer in graph.layers.items():
        if "out" not in graph.maps.get(lid, {}):
            continue
        keep = graph.channel_keep(layer, keep_by_group)
        if keep.all():
            continue
        for variable, axis in registry.channel_weights(layer):
            mask = mask_lib.expand_channel_mask(keep, variable.shape, axis)
            variable.assign(ops.cast(variable * ops.cast(mask, variable.dtype),
                                     variable.dtype))
    return model, OneShotReport(method + " (channel)", tuple(rows), tuple(skipped), samples,
                                time.time() - start)


def _count(data):
    if isinstance(data, dict):
        return len(next(iter(data.values())))
    return len(data)
