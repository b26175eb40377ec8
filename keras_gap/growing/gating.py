"""`add_gates`: the search space with a `Gate` on every channel group and residual block.

Which channels are gated comes from the one channel analysis
(`keras_gap.structured.analyze`): one gate per removable channel group, placed
after each producer of the group (after its BatchNormalization when the
producer feeds only that), so coupled channels share one score. Residual
blocks are the ``Add`` layers of the top-level graph with two inputs where
one input (the skip path) passes through fewer producers since the two paths
forked than the other (the residual branch); a block gate scales the branch.

`GateStructure` reads a gated model back (gates removed, the same analysis)
and gives each structure's cost share and the expected / sampled / hard
inference cost of the gated network: the numbers `GrowingCallback` logs and
the penalty weights.
"""

import keras
import numpy as np

from keras_gap.growing.gates import BLOCK, CHANNEL, EPOCH, ApplyGate, Budget, Gate
from keras_gap.structured import graph as graph_lib
from keras_gap.structured.flops import flops_report

L = keras.layers


# Graph helpers ---------------------------------------------------------------------------
def _functional(model, what="add_gates"):
    if not isinstance(model, keras.Model):
        raise ValueError(f"{what} expects a Sequential or Functional keras Model; received "
                         f"{model!r} of type {type(model).__name__}.")
    if not model.built:
        raise ValueError(f"{what}: model {model.name!r} is not built; give it a keras.Input "
                         "(or call model.build(shape)) first.")
    functional = getattr(model, "_functional", None) if isinstance(
        model, keras.Sequential) else model
    if not isinstance(functional, keras.Function):
        raise ValueError(
            f"{what}: model {model.name!r} ({type(model).__name__}) has no layer graph; "
            "growing needs a Sequential model built with an input shape or a Functional "
            "model.")
    return functional


def _new_inputs(functional):
    return [keras.Input(batch_shape=tuple(x.shape), dtype=x.dtype) for x in functional.inputs]


def _rebuild(functional, call_fn, name):
    """A new Functional model: ``functional``'s graph, each node run through ``call_fn``.

    ``call_fn(op, inputs, *args, **kwargs)`` also gets the new model inputs.
    """
    inputs = _new_inputs(functional)
    outputs = functional._run_through_graph(
        inputs, call_fn=lambda op, *a, **k: call_fn(op, inputs, *a, **k))
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=name)


def without_gates(op, inputs, *args, **kwargs):
    """A `_rebuild` call function that drops the gates (identity)."""
    if isinstance(op, Gate):
        return args[0]
    if isinstance(op, ApplyGate):
        return args[0][0]
    return op(*args, **kwargs)


def gates_of(model):
    """The `Gate` layers of a gated model, in graph order."""
    if not isinstance(model, keras.Model):
        return []
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, Gate)]


def find_blocks(traced):
    """Residual blocks of the top-level graph.

    Args:
        traced: the model's `keras_gap.structured.trace.Trace`.

    Returns:
        (blocks, unknown): blocks is a list of (Add layer, branch input index,
        set of ids of the branch's layers, nested models' layers included);
        unknown lists (Add layer, names of the layers feeding it) for Adds
        whose residual branch is ambiguous.
    """
    anc = {k: frozenset() for k in traced.model_inputs[id(traced.model)]}
    layers, producer = {}, {}
    blocks, unknown = [], []
    for call in traced.calls:
        op = call.layer
        layers[id(op)] = op
        ins = [anc.get(k, frozenset()) for k in call.in_keys]
        out = frozenset().union(*ins) | {id(op)}
        for k in call.out_keys:
            anc[k] = out
            producer[k] = op
        if not isinstance(op, L.Add) or call.model is not traced.model:
            continue
        feeding = [getattr(producer.get(k), "name", "?") for k in call.in_keys]
        if len(ins) != 2:
            unknown.append((op, feeding))
            continue
        only = [ins[0] - ins[1], ins[1] - ins[0]]
        counts = [sum(graph_lib.is_producer(layers[i]) for i in s) for s in only]
        if counts[0] == counts[1]:
            unknown.append((op, feeding))
            continue
        branch = int(counts[1] > counts[0])
        blocks.append((op, branch, set(only[branch])))
    return blocks, unknown


def _f0_is_zero(layer):
    act = getattr(layer, "activation", None)
    if act is None:
        return True
    value = keras.ops.convert_to_numpy(act(keras.ops.zeros((1, 1))))
    return bool(np.all(value == 0))


def _channel_sites(graph):
    """{group index: [(producer, layer the gate follows)]} for gateable groups, and why not."""
    traced = graph.trace
    top = {id(c.layer) for c in traced.calls if c.model is traced.model}
    calls, users, output_key = {}, {}, {}
    for call in traced.calls:
        calls[id(call.layer)] = calls.get(id(call.layer), 0) + 1
        output_key.setdefault(id(call.layer), call.out_keys[0] if call.out_keys else None)
        for k in call.in_keys:
            users.setdefault(k, []).append(call.layer)
    sites, skipped = {}, []
    for group in graph.groups:
        if not group.removable:
            continue
        chosen, reason = [], None
        for name in group.producers:
            layer = graph.by_name(name)
            if id(layer) not in top or calls.get(id(layer)) != 1:
                reason = f"{name!r} is inside a nested model or called more than once"
                break
            if not np.array_equal(graph.positions(layer, group.index),
                                  np.arange(group.size)):
                reason = f"{name!r} holds only part of the group's channels"
                break
            after = users.get(output_key[id(layer)], [])
            if (len(after) == 1 and isinstance(after[0], L.BatchNormalization)
                    and calls.get(id(after[0])) == 1 and id(after[0]) in top):
                chosen.append((layer, after[0]))
            elif _f0_is_zero(layer):
                chosen.append((layer, layer))
            else:
                reason = (f"{name!r} has an activation with f(0) != 0 and no "
                          "BatchNormalization after it")
                break
        if reason is None:
            sites[group.index] = chosen
        else:
            skipped.append((group.name, reason))
    return sites, skipped


def _stage_of(graph, add):
    for layer, _, out_keys in graph.steps:
        if layer is add:
            classes = graph.tensor_classes(out_keys[0])
            if classes is not None and (classes >= 0).any():
                return int(graph.class_group[classes[classes >= 0][0]])
    return ("add", add.name)


# add_gates -------------------------------------------------------------------------------
def add_gates(space, seed_channels=0.25, seed_blocks=None, target=None, initial_score=2.0,
              score_scale=10.0, seed=None):
    """The search space with growing gates on its channel groups and residual blocks.

    One `Gate` per removable channel group (`keras_gap.channel_groups`; coupled
    channels share one score) after each producer of the group (after its
    BatchNormalization when one follows), and, when ``seed_blocks`` is given,
    one per residual block (an ``Add`` whose one input is the skip path)
    scaling the residual branch. Each gate's values are computed once per
    step (a `Gate` layer) and applied by `ApplyGate` layers. The clone reuses ``space``'s layers (as
    `keras_gap.prune_low_magnitude` does), so training the gated model trains
    them. Train it with `GrowingCallback`, then `finalize` it.

    Seed: in every gated group the first ``round(seed_channels * size)``
    channels (at least one) start on (score ``+initial_score``), the others
    off (``-initial_score``); in every stage (residual blocks whose outputs
    share one channel group) the first ``seed_blocks`` blocks start on.

    Args:
        space: the largest network allowed: a built Sequential or Functional
            model (Conv / Dense producers, channels_last).
        seed_channels: fraction in (0, 1] of each group's channels on at the
            start.
        seed_blocks: blocks per stage on at the start (int >= 0), or None for
            no block gates.
        target: a `Budget` (``Budget(flops=0.5)`` or ``Budget(params=...)``),
            or None for no budget penalty.
        initial_score: magnitude of the seed scores (> 0); ``sigmoid(score)``
            is the starting probability of a seed channel being sampled on.
        score_scale: step-size multiplier of the scores (> 0): each score is
            ``score_scale`` times its trained variable, so Adam (whose step
            does not depend on the gradient's scale) moves scores that much
            faster than the weights; with SGD the factor is its square.
        seed: seed of the gate samples (None: random).

    Returns:
        A Functional model with `Gate` layers (uncompiled).

    Raises:
        ValueError: an argument out of range, a model with no gateable layer,
            or a residual ``Add`` whose branch cannot be identified while
            ``seed_blocks`` is given.

    Example:
        >>> gated = kg.growing.add_gates(space, seed_channels=0.25, seed_blocks=1,
        ...                              target=kg.growing.Budget(flops=0.5))
    """
    if isinstance(seed_channels, bool) or not isinstance(seed_channels, (int, float)) or not (
            0 < seed_channels <= 1):
        raise ValueError("`seed_channels` must be a fraction in (0, 1] of each layer's "
                         f"channels; received {seed_channels!r}.")
    if seed_blocks is not None and (isinstance(seed_blocks, bool) or not isinstance(
            seed_blocks, int) or seed_blocks < 0):
        raise ValueError("`seed_blocks` must be None (no block gates) or an int >= 0 "
                         f"(blocks per stage on at the start); received {seed_blocks!r}.")
    if target is not None and not isinstance(target, Budget):
        raise ValueError("`target` must be a keras_gap.growing.Budget (e.g. Budget(flops=0.5)) "
                         f"or None; received {target!r}.")
    for name, value in (("initial_score", initial_score), ("score_scale", score_scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"`{name}` must be a positive number; received {value!r}.")
    functional = _functional(space)
    if gates_of(space):
        raise ValueError(f"Model {space.name!r} already has growing gates; train it, or "
                         "finalize it first.")
    graph = graph_lib.analyze(space)
    sites, skipped = _channel_sites(graph)
    blocks = []
    if seed_blocks is not None:
        blocks, unknown = find_blocks(graph.trace)
        if unknown:
            add, feeding = unknown[0]
            raise ValueError(
                f"add_gates(seed_blocks={seed_blocks}): cannot identify the residual branch "
                f"of {add.name!r} (inputs from {feeding}): a block is an Add of two inputs "
                "where one (the skip path) passes through fewer Conv/Dense layers since "
                "they forked. Use seed_blocks=None for channel gates only.")
        if not blocks:
            names = [c.layer.name for c in graph.trace.calls
                     if c.model is graph.trace.model]
            raise ValueError(
                f"add_gates(seed_blocks={seed_blocks}): model {space.name!r} has no residual "
                f"block (an Add of a skip path and a branch); layers seen: {names}. Use "
                "seed_blocks=None for channel gates only.")
    if not sites and not blocks:
        why = "; ".join(f"{n}: {r}" for n, r in skipped[:4]) or (
            "no removable channel group (only channels that reach an output or a layer "
            "the analysis cannot see through)")
        raise ValueError(f"add_gates: model {space.name!r} has no gateable layer ({why}).")

    kind = None if target is None else target.kind
    value = None if target is None else target.value
    rng_seed = seed if seed is not None else int(np.random.randint(0, 2**31 - 1))
    after, channel_gates = {}, []
    for i, (g, chosen) in enumerate(sorted(sites.items())):
        group = graph.groups[g]
        gate = Gate(group.size, kind=CHANNEL, targets=[p.name for p, _ in chosen],
                    budget_kind=kind, budget=value, initial_score=initial_score,
                    score_scale=score_scale, seed=rng_seed + i, name=f"{group.name}_gate")
        channel_gates.append(gate)
        for _, layer in chosen:
            after[id(layer)] = gate
    on_add, block_gates, stages = {}, [], {}
    for j, (add, branch, _) in enumerate(blocks):
        gate = Gate(1, kind=BLOCK, targets=[add.name], branch=branch, budget_kind=kind,
                    budget=value, initial_score=initial_score, score_scale=score_scale,
                    seed=rng_seed + len(sites) + j, name=f"{add.name}_block_gate")
        on_add[id(add)] = (gate, branch)
        stage = stages.setdefault(_stage_of(graph, add), [])
        stage.append(gate)
        block_gates.append(gate)

    values = {}   # gate -> its values tensor, computed once from the model input

    def apply(gate, x, inputs, name):
        if id(gate) not in values:
            values[id(gate)] = gate(inputs[0])
        return ApplyGate(name=name)([x, values[id(gate)]])

    def call_fn(op, inputs, *args, **kwargs):
        if id(op) in on_add:
            gate, branch = on_add[id(op)]
            xs = list(args[0])
            xs[branch] = apply(gate, xs[branch], inputs, f"{op.name}_branch_gated")
            args = (xs,) + tuple(args[1:])
        out = op(*args, **kwargs)
        if id(op) in after:
            out = apply(after[id(op)], out, inputs, f"{op.name}_gated")
        return out

    gated = _rebuild(functional, call_fn, f"{space.name}_gated")
    for gate in channel_gates:
        n_on = min(gate.units, max(1, int(round(seed_channels * gate.units))))
        gate.set_scores(np.where(np.arange(gate.units) < n_on, initial_score,
                                 -initial_score).astype("float32"))
    for stage in stages.values():
        for k, gate in enumerate(stage):
            gate.set_scores(np.full((1,), initial_score if k < seed_blocks
                                    else -initial_score, "float32"))
    structure = GateStructure(gated)
    costs = structure.costs(kind or "flops")
    for gate, cost in zip(structure.gates, costs):
        gate.cost.assign(cost.astype("float32"))
    return gated


# Reading a gated model back --------------------------------------------------------------
def hard_gates(gate):
    """The inference gate values of ``gate`` as a numpy 0/1 array (top channel kept)."""
    s = np.asarray(keras.ops.convert_to_numpy(gate.scores()), dtype=np.float64)
    on = s > 0
    if gate.kind == CHANNEL and gate.units > 1:
        on |= s >= s.max()
    return on.astype(np.float64)


def soft_gates(gate):
    """``sigmoid(beta * s)`` of ``gate`` as numpy."""
    s = np.asarray(keras.ops.convert_to_numpy(gate.scores()), dtype=np.float64)
    beta = float(keras.ops.convert_to_numpy(gate.beta))
    return 1.0 / (1.0 + np.exp(-np.clip(beta * s, -60, 60)))


def sampled_gates(gate):
    """The last training sample of ``gate`` as numpy (ones before training)."""
    return np.asarray(keras.ops.convert_to_numpy(gate.sample), dtype=np.float64)


class GateStructure:
    """Costs of a gated model's structures, read from the model itself.

    The gates are taken out (a plain copy of the graph sharing the layers),
    the copy is analysed once (`keras_gap.structured.analyze`) and counted
    (`keras_gap.flops_report`). The inference cost of the gated network for
    gate probabilities ``p`` is ``sum_L C_L * in_L(p) * out_L(p) * prod(p_b)``
    over layers L: ``C_L`` the layer's MACs (or parameters), ``in_L`` /
    ``out_L`` the mean of ``p`` over the layer's input / output channels
    (1 for channels without a gate), and ``p_b`` the gates of the residual
    blocks whose branch holds L; divided by the same sum with every gate on.
    With 0/1 gates this is the cost of the finalized network.

    Args:
        gated: a model made by `add_gates` (or loaded from one).
    """

    def __init__(self, gated):
        self.gates = gates_of(gated)
        if not self.gates:
            raise ValueError(f"Model {getattr(gated, 'name', gated)!r} has no growing gates; "
                             "make it with keras_gap.growing.add_gates.")
        functional = _functional(gated, "growing")
        plain = _rebuild(functional, without_gates, f"{gated.name}_plain")
        graph = graph_lib.analyze(plain)
        report = flops_report(plain)
        offsets = np.cumsum([0] + [g.units for g in self.gates])
        self.size = int(offsets[-1])
        self.offsets = offsets
        group_offset = {}
        for gate, off in zip(self.gates, offsets):
            if gate.kind == CHANNEL:
                for g in graph.layer_groups(graph.by_name(gate.targets[0])):
                    group_offset[g] = int(off)
        # Global structure index of every class (-1: not gated).
        cls = np.full(len(graph.class_group), -1, dtype=np.int64)
        for c, (g, pos) in enumerate(zip(graph.class_group.tolist(),
                                         graph.class_position.tolist())):
            if g in group_offset:
                cls[c] = group_offset[g] + pos
        blocks, _ = find_blocks(graph.trace)
        by_add = {add.name: layers for add, _, layers in blocks}
        block_of = {}   # layer id -> structure indices of the blocks holding it
        for gate, off in zip(self.gates, offsets):
            if gate.kind == BLOCK:
                for lid in by_add.get(gate.targets[0], ()):
                    block_of.setdefault(lid, []).append(int(off))
        # Rows and analysed layers meet on their trace path ("backbone/dense").
        rows = {row.layer: row for row in report.rows}
        self.terms = []  # (macs, params, in index array, out index array, block indices)
        seen = set()
        for lid, layer in graph.layers.items():
            row = rows.get(graph.paths.get(lid))
            if row is None:
                continue
            seen.add(row.layer)
            maps = graph.maps.get(lid, {})
            idx = {k: (cls[np.where(m >= 0, m, 0)] * (m >= 0) - (m < 0))
                   if len(m) else np.zeros(0, np.int64) for k, m in maps.items()}
            self.terms.append((row.macs or 0, row.params, idx.get("in"), idx.get("out"),
                               block_of.get(lid, [])))
        for name, row in rows.items():   # layers the analysis did not trace
            if name not in seen:
                self.terms.append((row.macs or 0, row.params, None, None, []))
        self.total = {"flops": float(sum(t[0] for t in self.terms)),
                      "params": float(sum(t[1] for t in self.terms))}

    def costs(self, kind="flops"):
        """Per gate, each structure's share of the full network's cost (numpy arrays)."""
        col = 0 if kind == "flops" else 1
        cost = np.zeros(self.size)
        for term in self.terms:
            c, ins, outs, blocks = term[col], term[2], term[3], term[4]
            for idx in (ins, outs):
                if idx is not None and len(idx):
                    valid = idx >= 0
                    np.add.at(cost, idx[valid], c / len(idx))
            for b in blocks:
                cost[b] += c
        cost /= max(self.total[kind], 1e-12)
        return [cost[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def ratio(self, probs, kind="flops"):
        """Inference cost of the gated network at gate values ``probs`` / full cost.

        Args:
            probs: list of numpy arrays, one per gate (e.g. `hard_gates`).
            kind: "flops" or "params".
        """
        p = np.concatenate([np.asarray(x, np.float64) for x in probs] + [np.ones(1)])
        col = 0 if kind == "flops" else 1
        total = 0.0
        for term in self.terms:
            factor = 1.0
            for idx in (term[2], term[3]):
                if idx is not None and len(idx):
                    factor *= float(np.mean(p[idx]))   # index -1 is the trailing 1
            for b in term[4]:
                factor *= p[b]
            total += term[col] * factor
        return total / max(self.total[kind], 1e-12)

    def active(self, probs):
        """(active gated channels, active blocks) for 0/1 gate values."""
        channels = sum(int(np.sum(p > 0.5)) for g, p in zip(self.gates, probs)
                       if g.kind == CHANNEL)
        blocks = sum(int(np.sum(p > 0.5)) for g, p in zip(self.gates, probs)
                     if g.kind == BLOCK)
        return channels, blocks


def trained_epochs(gate):
    return int(round(float(keras.ops.convert_to_numpy(gate.schedule)[EPOCH])))
