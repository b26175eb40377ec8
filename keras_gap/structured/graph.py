"""One channel analysis of a Keras model: which output channels go together.

This is the trace every structural tool of keras-gap reads (channel masks,
`keras_gap.materialize`, FLOPs counting), in the spirit of Torch-Pruning's
dependency graph (see docs/DESIGN.md). The Functional graph (nested
Functional / Sequential models included) is walked once; every tensor's last
axis (channels_last) is described by one integer id per channel:

* a *producer* (Dense, Conv1D/2D/3D, Conv*Transpose, SeparableConv's
  pointwise part) gives its output channels fresh ids;
* channel-wise layers (BatchNormalization, DepthwiseConv, activations,
  Dropout, pooling, GlobalPooling, padding, cropping, up-sampling) pass ids
  through; Flatten (and a flattening Reshape) repeats them per position;
  Concatenate on the channel axis concatenates them;
* the inputs of Add / Subtract / Multiply / Average / Maximum / Minimum are
  the same channels: their ids are joined (union-find);
* a layer it cannot see through (Lambda, a custom layer, LayerNormalization,
  Softmax, a Reshape that mixes channels, ...) *blocks* its input channels and
  starts fresh, non-removable ids; so do model inputs, and model outputs
  block the channels that reach them.

A `ChannelGroup` is one connected set of producers; its channels (``size``)
are the classes of joined ids. Removing channel ``k`` of a group removes it
from every producer, follower and consumer listed.

Wrappers (`keras_gap.PruneLowMagnitude`) are seen through: they count as the
layer they wrap (and keep its name).
"""

import dataclasses
import math

import keras
import numpy as np

from keras_gap import registry
from keras_gap.registry import trivial_einsum
from keras_gap.structured import trace as trace_lib
from keras_gap.structured.trace import unwrap

L = keras.layers

_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
_CONV_T = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_MERGE = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
_DROPOUT = tuple(getattr(L, n) for n in (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "Identity") if hasattr(L, n))
_ELEMENTWISE = (L.ReLU, L.LeakyReLU, L.ELU) + _DROPOUT
_POOL = tuple(getattr(L, n) for n in (
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
    "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "UpSampling1D",
    "UpSampling2D", "UpSampling3D", "Cropping1D", "Cropping2D", "Cropping3D")
    if hasattr(L, n))
_PADDING = (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)
# Activations that mix channels (not per channel).
_MIXING_ACTIVATIONS = ("softmax", "log_softmax")

# keras.ops used on symbolic tensors (``x + 3.0``, ``ops.relu6(x)``) are graph
# operations, not layers; these act element by element.
ELEMENTWISE_OPS = frozenset((
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power",
    "Negative", "Abs", "Absolute", "Sqrt", "Square", "Exp", "Log", "Tanh", "Sigmoid",
    "Relu", "Relu6", "HardSigmoid", "HardSilu", "HardSwish", "Silu", "Swish", "Gelu", "Elu",
    "Selu", "Softplus", "Softsign", "LeakyRelu", "Clip", "Cast", "Mish", "Celu"))

PRODUCER, FOLLOWER, CONSUMER = "producer", "follower", "consumer"


def is_producer(layer):
    """True for layers whose output channels the analysis can remove."""
    layer = unwrap(layer)
    if isinstance(layer, _DEPTHWISE):
        return False
    if isinstance(layer, L.EinsumDense):
        return trivial_einsum(layer)
    if isinstance(layer, _CONV + _CONV_T + _SEPARABLE):
        return (getattr(layer, "data_format", "channels_last") == "channels_last"
                and int(getattr(layer, "groups", 1) or 1) == 1)
    return isinstance(layer, L.Dense)


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") in ("channels_last", None)


def _bn_on_last_axis(layer, rank):
    axis = layer.axis if isinstance(layer.axis, int) else (
        layer.axis[0] if len(layer.axis) == 1 else None)
    return axis is not None and axis in (-1, rank - 1)


@dataclasses.dataclass
class ChannelGroup:
    """The unit of channel removal: coupled output channels and their users.

    Attributes:
        index: position in `channel_groups`' list.
        name: the first producer's name (``"<input>"`` style names for
            groups without one).
        size: number of channels of the group.
        producers: names of the layers whose output channels these are.
        followers: names of channel-wise layers with per-channel weights on
            these channels (BatchNormalization, DepthwiseConv).
        consumers: names of layers that read these channels on their input
            axis (their input weights lose the removed channels).
        removable: False when the channels reach a model output or input, or
            a layer the analysis cannot see through.
        blocked_by: tuple of (layer name, reason) pairs that make the group
            not removable.
        kind: "channels" (output channels of Dense / Conv layers), "heads"
            (attention heads; for grouped-query attention one KV head and the
            query heads sharing it) or "units" (hidden units of a
            transformer block's feed-forward network).
    """

    index: int
    name: str
    size: int
    producers: tuple
    followers: tuple
    consumers: tuple
    removable: bool
    blocked_by: tuple
    kind: str = "channels"

    def to_dict(self):
        """Plain data (JSON-serializable)."""
        out = dataclasses.asdict(self)
        out["producers"] = list(self.producers)
        out["followers"] = list(self.followers)
        out["consumers"] = list(self.consumers)
        out["blocked_by"] = [list(b) for b in self.blocked_by]
        return out

    def __str__(self):
        state = "removable" if self.removable else "kept: " + "; ".join(
            f"{n} ({r})" for n, r in self.blocked_by[:3]) + (
            f"; +{len(self.blocked_by) - 3} more" if len(self.blocked_by) > 3 else "")
        parts = [f"group {self.index} {self.name!r}: {self.size} {self.kind}, {state}",
                 f"  producers: {', '.join(self.producers) or '-'}"]
        if self.followers:
            parts.append(f"  followers: {', '.join(self.followers)}")
        parts.append(f"  consumers: {', '.join(self.consumers) or '-'}")
        return "\n".join(parts)


class _UnionFind:
    def __init__(self):
        self.parent = []

    def add(self, count):
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count)

    def find(self, i):
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


class ChannelGraph:
    """The result of one analysis; read by masks, materialize and FLOPs.

    Attributes:
        groups: list of `ChannelGroup`.
        layers: dict layer id -> the (unwrapped) layer.
        wrappers: dict layer id -> its `PruneLowMagnitude` wrapper, if any.
        maps: dict layer id -> {role: int array}. Roles: "out" (class of each
            output channel of a producer or follower, -1 where the channel
            is not tracked), "in" (class of each input position of a
            consumer's weights, e.g. each row of a Dense kernel after
            Flatten). Classes are global ints; `class_group` and
            `class_position` place them in their group.
        class_group: int array, group index of every class.
        class_position: int array, position of every class in its group.
        roles: dict layer id -> set of roles ("producer", "follower",
            "consumer").

    Example:
        >>> g = kg.structured.analyze(model)
        >>> [str(group) for group in g.groups]
    """

    def __init__(self, model, traced=None):
        self.model = model
        self.trace = traced if traced is not None else trace_lib.trace(model)
        self.layers, self.wrappers, self.roles = {}, {}, {}
        self.paths = {}       # layer id -> path of its first call ("backbone/dense")
        self._ids = {}        # layer id -> {"out"/"in": channel-id array}
        self._order = []      # layer ids in first-visit order
        self._chan = _UnionFind()
        self._chan_source = []
        self._src = _UnionFind()
        self._sources = []    # (kind, layer name, reason)
        self._blocks = []     # (channel ids, layer name, reason)
        self._producer_ids = {}
        self._names = {}      # layer id -> path, for layers inside composite layers
        self._kinds = {}      # producer layer id -> "heads" / "units"
        self._structures = set()   # (id(owner), kind) already registered
        # producer layer id -> (kind, owner, the traced layer holding it) for the
        # producers of attention heads and FFN units (`registry.structures`).
        self.structure_of = {}
        self.steps = []           # (layer, input keys, output keys), leaves in order
        self.tensor_ids = {}      # tensor key -> channel-id array (None: untracked)
        self.tensor_shapes = self.trace.shapes   # tensor key -> shape
        self.model_inputs = self.trace.model_inputs  # id(model) -> input keys
        self.step_arguments = []  # per step: (node.arguments, ids of its input tensors)
        self.output_keys = []
        self._walk()
        self._finish()

    # Ids -------------------------------------------------------------------------
    def _new_ids(self, count, kind, name, reason=None):
        src = self._src.add(1)[0]
        self._sources.append((kind, name, reason))
        ids = self._chan.add(count)
        self._chan_source.extend([src] * count)
        return ids

    def _join(self, a, b):
        for x, y in zip(a.tolist(), b.tolist()):
            self._chan.union(x, y)
            self._src.union(self._chan_source[x], self._chan_source[y])

    def _block(self, ids, name, reason):
        if ids is not None and len(ids):
            self._blocks.append((ids, name, reason))

    def _register(self, layer, wrapper, role, key=None, ids=None):
        lid = id(layer)
        if lid not in self.layers:
            self.layers[lid] = layer
            self._order.append(lid)
        if wrapper is not None:
            self.wrappers[lid] = wrapper
        self.roles.setdefault(lid, set()).add(role)
        if key is not None:
            store = self._ids.setdefault(lid, {})
            if key in store:
                if len(store[key]) == len(ids):
                    self._join(store[key], ids)
                else:
                    self._block(ids, layer.name, "called on inputs of different widths")
            else:
                store[key] = ids

    # Walking ---------------------------------------------------------------------
    def _walk(self):
        traced, model = self.trace, self.model
        if traced.kind != trace_lib.GRAPH:
            if isinstance(model, keras.Sequential):
                raise ValueError(
                    f"Sequential model {model.name!r} is not built with an input "
                    "shape; give it a keras.Input (or call model.build(shape)) "
                    "before analysing its channels.")
            raise ValueError(
                f"Model {model.name!r} ({type(model).__name__}) is not a Sequential "
                "or Functional model; channel analysis needs its layer graph.")
        for nested, _ in traced.models:
            if id(nested) not in traced.model_inputs:
                raise ValueError(
                    f"Model {nested.name!r} ({type(nested).__name__}) inside "
                    f"{model.name!r} is not a Sequential or Functional model; channel "
                    "analysis needs its layer graph.")
        for key in traced.model_inputs[id(model)]:
            self.tensor_ids[key] = self._input_ids(traced.shapes[key], model.name)
        for call in traced.calls:
            ins = [self.tensor_ids.get(k) for k in call.in_keys]
            outs = self._visit(call, ins)
            for key, ids in zip(call.out_keys, outs):
                self.tensor_ids[key] = ids
            self.paths.setdefault(id(call.layer), call.path)
            self.steps.append((call.layer, list(call.in_keys), list(call.out_keys)))
            self.step_arguments.append(
                (call.arguments, [id(x) for x in call.input_tensors]))
        self.output_keys = list(traced.output_keys)
        for key, op in zip(traced.output_keys, traced.output_layers):
            self._block(self.tensor_ids.get(key), op.name if op is not None else "output",
                        "reaches a model output")

    def _input_ids(self, shape, model_name):
        c = _last_dim(shape)
        if c is None:
            return None
        return self._new_ids(c, "input", f"{model_name} input", "model input")

    def _visit(self, call, ins):
        wrapper, layer = call.wrapper, call.layer
        in_shapes, out_shapes = list(call.in_shapes), list(call.out_shapes)
        x = ins[0] if ins else None
        rank = len(in_shapes[0]) if in_shapes else 0
        name = layer.name

        def through():
            self._register(layer, wrapper, FOLLOWER)
            return [x]

        if isinstance(layer, L.Layer) and not is_producer(layer):
            self._add_structures(call)

        if is_producer(layer):
            if x is not None:
                self._register(layer, wrapper, CONSUMER, "in", x)
            lid = id(layer)
            if lid not in self._producer_ids:
                self._producer_ids[lid] = self._new_ids(
                    int(out_shapes[0][-1]), "producer", name)
            self._register(layer, wrapper, PRODUCER, "out", self._producer_ids[lid])
            return [self._producer_ids[lid]]
        if x is None or any(i is None for i in ins):
            return self._blocker(layer, wrapper, ins, out_shapes,
                                 "input channels unknown")
        if isinstance(layer, _DEPTHWISE) and _channels_last(layer):
            out = np.repeat(x, int(layer.depth_multiplier))
            self._register(layer, wrapper, FOLLOWER, "out", out)
            return [out]
        if isinstance(layer, L.BatchNormalization):
            if not _bn_on_last_axis(layer, rank):
                return self._blocker(layer, wrapper, ins, out_shapes,
                                     "normalizes an axis other than the last")
            self._register(layer, wrapper, FOLLOWER, "out", x)
            return [x]
        if isinstance(layer, L.Activation):
            act = getattr(layer.activation, "__name__", str(layer.activation))
            if act in _MIXING_ACTIVATIONS:
                return self._blocker(layer, wrapper, ins, out_shapes,
                                     f"activation {act!r} mixes channels")
            return through()
        if isinstance(layer, _ELEMENTWISE):
            return through()
        if isinstance(layer, _POOL + _PADDING):
            if not _channels_last(layer):
                return self._blocker(layer, wrapper, ins, out_shapes, "channels_first")
            return through()
        if isinstance(layer, L.Flatten):
            if not _channels_last(layer):
                return self._blocker(layer, wrapper, ins, out_shapes, "channels_first")
            return self._tile(layer, wrapper, x, in_shapes[0], out_shapes[0])
        if isinstance(layer, L.Reshape):
            if in_shapes[0][-1] == out_shapes[0][-1] and len(x) > 1 and all(
                    d is not None for d in in_shapes[0][1:] + out_shapes[0][1:]):
                return through()
            if len(out_shapes[0]) == 2:
                return self._tile(layer, wrapper, x, in_shapes[0], out_shapes[0])
            return self._blocker(layer, wrapper, ins, out_shapes,
                                 "reshape changes the channel axis")
        if not isinstance(layer, keras.layers.Layer) and \
                type(layer).__name__ in ELEMENTWISE_OPS:
            widths = {len(i) for i in ins}
            if len(widths) != 1 or out_shapes[0][-1] != len(x):
                return self._blocker(layer, wrapper, ins, out_shapes,
                                     "operation broadcasts along the channel axis")
            for other in ins[1:]:
                self._join(ins[0], other)
            self._register(layer, wrapper, FOLLOWER)
            return [ins[0]]
        if isinstance(layer, _MERGE):
            if len({len(i) for i in ins}) != 1:
                return self._blocker(layer, wrapper, ins, out_shapes,
                                     "inputs broadcast along the channel axis")
            for other in ins[1:]:
                self._join(ins[0], other)
            self._register(layer, wrapper, FOLLOWER)
            return [ins[0]]
        if isinstance(layer, L.Concatenate):
            axis = layer.axis
            if axis in (-1, rank - 1):
                self._register(layer, wrapper, FOLLOWER)
                return [np.concatenate(ins)]
            if len({len(i) for i in ins}) != 1:
                return self._blocker(layer, wrapper, ins, out_shapes, "unequal widths")
            for other in ins[1:]:
                self._join(ins[0], other)
            self._register(layer, wrapper, FOLLOWER)
            return [ins[0]]
        reason = ("not seen through (Lambda)" if isinstance(layer, L.Lambda)
                  else f"{type(layer).__name__} is not seen through")
        return self._blocker(layer, wrapper, ins, out_shapes, reason)

    def _add_structures(self, call):
        """Attention heads and FFN units inside ``call.layer`` (`registry.structures`):
        each structure is a group of its own; the layer itself still blocks the
        channels of its inputs and outputs."""
        paths = _sub_paths(call.layer, call.path)
        for st in registry.structures(call.layer):
            key = (id(st.owner), st.kind, id(st.producers[0][0]))
            if key in self._structures:
                continue
            self._structures.add(key)
            owner_path = paths.get(id(st.owner), call.path)
            name = f"{owner_path}/{st.kind}"
            ids = self._new_ids(st.size, "producer", name)
            if st.kind == "heads" and isinstance(st.owner, L.MultiHeadAttention):
                # Keras' MultiHeadAttention is one layer to wrap: its heads are
                # its channels (`registry.channel_weights`).
                members = [(st.owner, 1, PRODUCER)]
            else:
                members = [(p, r, PRODUCER) for p, r in st.producers] + [
                    (c, r, CONSUMER) for c, r in st.consumers]
            for sub, repeat, role in members:
                lid = id(sub)
                if sub is not call.layer:
                    self._names.setdefault(lid, paths.get(lid, sub.name))
                wrapper = call.wrapper if sub is call.layer else self.trace.wrapper_of(sub)
                mapped = np.repeat(ids, repeat)
                if role == PRODUCER:
                    self._producer_ids.setdefault(lid, mapped)
                    self._kinds[lid] = st.kind
                    self.structure_of[lid] = (st.kind, st.owner, call.layer)
                    self._register(sub, wrapper, PRODUCER, "out", mapped)
                else:
                    self._register(sub, wrapper, CONSUMER, "in", mapped)
            if st.blocked:
                self._block(ids, name, st.blocked)

    def _tile(self, layer, wrapper, x, in_shape, out_shape):
        positions = in_shape[1:-1]
        if any(d is None for d in positions) or out_shape[-1] is None:
            return self._blocker(layer, wrapper, [x], [out_shape],
                                 "flattens unknown spatial dimensions")
        out = np.tile(x, int(math.prod(positions)))
        if len(out) != out_shape[-1]:
            return self._blocker(layer, wrapper, [x], [out_shape],
                                 "reshape changes the channel axis")
        self._register(layer, wrapper, FOLLOWER)
        return [out]

    def _blocker(self, layer, wrapper, ins, out_shapes, reason):
        self._register(layer, wrapper, "blocker")
        for ids in ins:
            self._block(ids, layer.name, reason)
        outs = []
        for shape in out_shapes:
            c = shape[-1] if shape else None
            outs.append(None if c is None else self._new_ids(
                int(c), "blocked", layer.name, reason))
        return outs

    # Groups ----------------------------------------------------------------------
    def _finish(self):
        n = len(self._chan.parent)
        roots = np.array([self._chan.find(i) for i in range(n)], dtype=np.int64)
        src_root = np.array([self._src.find(self._chan_source[i]) for i in range(n)],
                            dtype=np.int64)
        # Groups: components of sources that hold a producer, in producer order.
        group_of_src, groups_src = {}, []
        for lid in self._order:
            if lid in self._producer_ids:
                s = src_root[self._producer_ids[lid][0]]
                if s not in group_of_src:
                    group_of_src[s] = len(groups_src)
                    groups_src.append(s)
        blocked = {}
        for i, (kind, name, reason) in enumerate(self._sources):
            if kind != "producer":
                s = self._src.find(i)
                if s in group_of_src:
                    blocked.setdefault(s, []).append((name, reason))
        for ids, name, reason in self._blocks:
            for s in sorted({int(src_root[i]) for i in ids.tolist()}):
                if s in group_of_src:
                    entry = (name, reason)
                    if entry not in blocked.setdefault(s, []):
                        blocked[s].append(entry)
        # Classes: one per channel root inside a group, ordered by first id.
        class_of_root, class_group, class_pos, sizes = {}, [], [], [0] * len(groups_src)
        for i in range(n):
            r = roots[i]
            g = group_of_src.get(src_root[i])
            if g is None or r in class_of_root:
                continue
            class_of_root[r] = len(class_group)
            class_group.append(g)
            class_pos.append(sizes[g])
            sizes[g] += 1
        self.class_group = np.array(class_group, dtype=np.int64)
        self.class_position = np.array(class_pos, dtype=np.int64)
        lookup = np.full(max(n, 1), -1, dtype=np.int64)
        for r, c in class_of_root.items():
            lookup[r] = c
        self.id_class = lookup[roots] if n else np.zeros(0, dtype=np.int64)
        self.maps = {}
        members = [{PRODUCER: [], FOLLOWER: [], CONSUMER: []} for _ in groups_src]
        for lid in self._order:
            store = self._ids.get(lid, {})
            self.maps[lid] = {k: lookup[roots[v]] if len(v) else v.astype(np.int64)
                              for k, v in store.items()}
            name = self.name_of(lid)
            for key, role in (("out", None), ("in", CONSUMER)):
                if key not in self.maps[lid]:
                    continue
                if role is None:
                    role = PRODUCER if lid in self._producer_ids else FOLLOWER
                    if role == FOLLOWER and not getattr(self.layers[lid], "weights", None):
                        continue
                for g in sorted({int(self.class_group[c])
                                 for c in self.maps[lid][key].tolist() if c >= 0}):
                    if name not in members[g][role]:
                        members[g][role].append(name)
        kind_of = {}
        for lid in self._order:
            if lid in self._producer_ids:
                kind_of.setdefault(int(src_root[self._producer_ids[lid][0]]),
                                   self._kinds.get(lid, "channels"))
        self.groups = []
        for g, s in enumerate(groups_src):
            block = tuple(blocked.get(s, ()))
            kind = kind_of.get(int(s), "channels")
            first = members[g][PRODUCER][0] if members[g][PRODUCER] else f"group_{g}"
            if kind != "channels":
                first = self._sources[self._src_index_of(s)][1]
            self.groups.append(ChannelGroup(
                index=g, name=first,
                size=sizes[g], producers=tuple(members[g][PRODUCER]),
                followers=tuple(members[g][FOLLOWER]),
                consumers=tuple(members[g][CONSUMER]),
                removable=not block, blocked_by=block, kind=kind))

    def _src_index_of(self, root):
        """The first source (in creation order) of a source component."""
        for i in range(len(self._sources)):
            if self._src.find(i) == root:
                return i
        return root

    # Queries ---------------------------------------------------------------------
    def name_of(self, layer_or_id):
        """How groups name a layer: its name, or its path inside a composite layer
        (``"transformer_layer_0/self_attention/query"``)."""
        lid = layer_or_id if isinstance(layer_or_id, int) else id(unwrap(layer_or_id))
        return self._names.get(lid, self.layers[lid].name)

    def layer_groups(self, layer, key="out"):
        """Indices of the groups whose channels ``layer`` holds on ``key``."""
        m = self.maps.get(id(unwrap(layer)), {}).get(key)
        if m is None:
            return []
        return sorted({int(self.class_group[c]) for c in m.tolist() if c >= 0})

    def positions(self, layer, group, key="out"):
        """For ``layer``'s channels on ``key``: position in ``group`` or -1."""
        m = self.maps[id(unwrap(layer))][key]
        valid = m >= 0
        out = np.full(len(m), -1, dtype=np.int64)
        inside = valid.copy()
        inside[valid] = self.class_group[m[valid]] == group
        out[inside] = self.class_position[m[inside]]
        return out

    def channel_keep(self, layer, keep_by_group, key="out"):
        """Keep vector of ``layer``'s channels from per-group keep vectors.

        Args:
            layer: a layer of the analysed model.
            keep_by_group: dict group index -> bool/0-1 array of the group's size;
                groups missing from it keep all their channels.
            key: "out" or "in".

        Returns:
            float32 numpy array, one entry per channel of ``layer`` on ``key``.
        """
        m = self.maps[id(unwrap(layer))][key]
        keep = np.ones(len(m), dtype=np.float32)
        for i, c in enumerate(m.tolist()):
            if c >= 0:
                g = int(self.class_group[c])
                if g in keep_by_group:
                    keep[i] = float(keep_by_group[g][self.class_position[c]])
        return keep

    def tensor_classes(self, key):
        """Global class of every channel of a traced tensor (-1: in no group)."""
        ids = self.tensor_ids.get(key)
        return None if ids is None else self.id_class[ids]

    def by_name(self, name):
        """The analysed layer called ``name`` (first match; `name_of`) or None."""
        for lid, layer in self.layers.items():
            if self.name_of(lid) == name:
                return layer
        return None


def _sub_paths(layer, prefix):
    """{id(sublayer): path} of every sublayer of ``layer`` at any depth."""
    out = {id(layer): prefix}
    for sub in registry.sublayers(layer):
        if id(sub) not in out:
            out.update(_sub_paths(sub, f"{prefix}/{sub.name}"))
    return out


def _last_dim(shape):
    shape = tuple(getattr(shape, "shape", shape))
    if not shape or shape[-1] is None:
        return None
    return int(shape[-1])


def analyze(model):
    """Analyses a model's channels once (see the module docstring).

    Args:
        model: a built Sequential or Functional Keras model (pruned or not;
            nested models included).

    Returns:
        A `ChannelGraph`.

    Example:
        >>> graph = kg.structured.analyze(model)
        >>> graph.groups[0].producers
    """
    if not isinstance(model, keras.Model):
        raise ValueError("Channel analysis expects a Sequential or Functional keras "
                         f"Model; received {model!r} of type {type(model).__name__}.")
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built; build it (give it a "
                         "keras.Input or call it on data) before analysing its channels.")
    return ChannelGraph(model)


def channel_groups(model):
    """The model's channel groups: output channels removed together.

    Args:
        model: a built Sequential or Functional model (wrappers seen through).

    Returns:
        list of `ChannelGroup` (print one, or ``to_dict()`` it).

    Example:
        >>> for group in kg.channel_groups(model):
        ...     print(group)
    """
    return analyze(model).groups
