"""`sparsity_report`: per-weight and total sparsity of a pruned or stripped model."""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_gap import inplace, registry
from keras_gap.wrapper import PruneLowMagnitude


@dataclasses.dataclass(frozen=True)
class WeightSparsity:
    """One row of a sparsity report."""

    layer: str
    weight: str
    shape: tuple
    params: int
    nonzero: int

    @property
    def sparsity(self):
        return 1.0 - self.nonzero / self.params if self.params else 0.0


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Sparsity of every prunable weight; print it or read ``rows``/``to_dict()``.

    ``groups`` holds the model's `keras_gap.ChannelGroup` list when asked for
    with ``sparsity_report(model, channel_groups=True)``.
    """

    rows: tuple
    groups: tuple = ()

    @property
    def params(self):
        return sum(r.params for r in self.rows)

    @property
    def nonzero(self):
        return sum(r.nonzero for r in self.rows)

    @property
    def sparsity(self):
        return 1.0 - self.nonzero / self.params if self.params else 0.0

    def to_dict(self):
        """Plain data: ``{"weights": [...], "total": {...}}`` (and
        ``"channel_groups"`` when the report has them)."""
        extra = {"channel_groups": [g.to_dict() for g in self.groups]} if self.groups else {}
        return {**extra,
            "weights": [dict(dataclasses.asdict(r), shape=list(r.shape),
                             sparsity=r.sparsity) for r in self.rows],
            "total": {"params": self.params, "nonzero": self.nonzero,
                      "sparsity": self.sparsity},
        }

    def __str__(self):
        header = ("layer", "weight", "shape", "params", "nonzero", "sparsity")
        lines = [(r.layer, r.weight, "x".join(map(str, r.shape)), str(r.params),
                  str(r.nonzero), f"{r.sparsity:.2%}") for r in self.rows]
        lines.append(("TOTAL", "", "", str(self.params), str(self.nonzero),
                      f"{self.sparsity:.2%}"))
        widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        rule = "  ".join("-" * w for w in widths)
        out = [fmt.format(*header), rule] + [fmt.format(*l) for l in lines[:-1]]
        out += [rule, fmt.format(*lines[-1])]
        if self.groups:
            removable = sum(g.removable for g in self.groups)
            out += ["", f"channel groups: {len(self.groups)} ({removable} removable)"]
            out += [str(g) for g in self.groups]
        return "\n".join(out)


def _row(layer_name, weight, values):
    values = np.asarray(values)
    return WeightSparsity(layer=layer_name, weight=weight.path,
                          shape=tuple(int(d) for d in weight.shape),
                          params=int(values.size), nonzero=int(np.count_nonzero(values)))


def _leaf_layers(model):
    if not isinstance(model, keras.layers.Layer):
        return [model]
    stack = [model] if not hasattr(model, "layers") else list(model.layers)
    out = []
    for layer in stack:
        if isinstance(layer, PruneLowMagnitude):
            out.append(layer)
        elif hasattr(layer, "layers"):
            out.extend(_leaf_layers(layer))
        elif not registry.is_supported(layer) and _sublayers(layer):
            # A composite layer (KerasHub's TransformerEncoder): its sublayers.
            out.extend(_leaf_layers_of_composite(layer))
        else:
            out.append(layer)
    return out


_sublayers = registry.sublayers


def _leaf_layers_of_composite(layer):
    out = []
    for sub in _sublayers(layer):
        if isinstance(sub, PruneLowMagnitude) or registry.is_supported(sub) \
                or not _sublayers(sub):
            out.append(sub)
        else:
            out.extend(_leaf_layers_of_composite(sub))
    return out


def sparsity_report(model, prune_depthwise=False, channel_groups=False):
    """Per prunable weight: layer, shape, parameters, non-zeros, sparsity.

    On a pruned model the effective weights (weight * mask) are counted; on a
    stripped or plain model the weights themselves.

    Args:
        model: a keras Model or layer (pruned or not).
        prune_depthwise: count DepthwiseConv kernels as prunable.
        channel_groups: also list the model's channel groups (the output
            channels removed together by ``structure="channel"`` and
            `keras_gap.materialize`; see `keras_gap.channel_groups`).

    Returns:
        A `SparsityReport` (``print()`` it for a table; ``.to_dict()`` for data;
        ``.sparsity`` for the total).

    Example:
        >>> print(kg.sparsity_report(kg.strip_pruning(pruned)))
    """
    rows = []
    # Pruned in place (KerasHub models): each wrapper stands for its layer.
    in_place = {id(w.layer): w for w in inplace.in_place_wrappers(model)}
    done = set()
    for layer in _leaf_layers(model):
        if isinstance(layer, PruneLowMagnitude) and getattr(layer, "in_place", False):
            continue  # reported where its layer is
        layer = in_place.get(id(layer), layer)
        if id(layer) in done:
            continue
        done.add(id(layer))
        if isinstance(layer, PruneLowMagnitude):
            for weight, mask in zip(layer.pruned_weights, layer.masks):
                values = ops.convert_to_numpy(weight) * ops.convert_to_numpy(mask)
                rows.append(_row(layer.layer.name, weight, values))
            continue
        if not layer.built:
            continue
        try:
            weights = registry.get_prunable_weights(layer, prune_depthwise)
        except ValueError:
            continue  # unknown layer with weights: not a prunable weight
        for weight in weights:
            rows.append(_row(layer.name, weight, ops.convert_to_numpy(weight)))
    groups = ()
    if channel_groups:
        from keras_gap.structured.graph import analyze  # sees through the wrappers
        groups = tuple(analyze(model).groups)
    return SparsityReport(rows=tuple(rows), groups=groups)
