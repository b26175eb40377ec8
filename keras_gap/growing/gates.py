"""The gate layer of growing networks and the `Budget` it is trained toward.

A `Gate` holds one trainable score ``s`` per structure: per channel of a
channel group (coupled channels share one score) or one per residual block.
Its value multiplies the activations of the structure:

* training: a binary sample ``q ~ Bernoulli(sigmoid(beta * s))`` in the
  forward pass, with the gradient of the soft value ``sigmoid(beta * s)``
  (straight-through: ``soft + stop_gradient(q - soft)``);
* inference: the hard gate ``s > 0``;
* frozen (``GrowingCallback(freeze_fraction=...)``, the last part of the
  schedule): the hard gate in training too, with no gradient to the scores
  and no penalty (the architecture is fixed, the weights train on).

A channel gate always keeps its highest-scoring channel on (a layer never
loses all its channels). ``beta`` (temperature) and ``penalty`` (lambda) are
non-trainable variables that `GrowingCallback` assigns between epochs, so the
compiled training step (JAX's stateless one included) reads their current
values; the schedule's position (epoch, planned epochs, training cost so far)
lives in the ``schedule`` variable, so a model saved mid-training resumes the
same schedule.

A gate is computed once per step (a `Gate` layer fed the model input, whose
output is the vector of gate values) and applied by `ApplyGate` layers at
every place it acts (each producer of a coupled group), so coupled channels
are on or off together and the penalty is added once.
"""

import dataclasses

import keras
from keras import ops

SCORE_NAME = "gate_score"
CHANNEL, BLOCK = "channel", "block"
# schedule variable layout
EPOCH, TOTAL_EPOCHS, TRAIN_COST, TRAIN_EPOCHS, PENALTY_INTEGRAL = range(5)


@dataclasses.dataclass(frozen=True)
class Budget:
    """The inference cost a growing network is trained toward.

    Give exactly one of ``flops`` (inference MACs of one example) or
    ``params`` (parameters), as a fraction of the full search space.

    Args:
        flops: target MACs ratio in (0, 1].
        params: target parameter ratio in (0, 1].

    Returns:
        A frozen value object (``kind`` is "flops" or "params", ``value`` the
        ratio).

    Example:
        >>> kg.growing.Budget(flops=0.5)
        Budget(flops=0.5, params=None)
    """

    flops: float = None
    params: float = None

    def __post_init__(self):
        given = [(k, v) for k, v in (("flops", self.flops), ("params", self.params))
                 if v is not None]
        if len(given) != 1:
            raise ValueError("Budget takes exactly one of `flops=` or `params=`; received "
                             f"flops={self.flops!r}, params={self.params!r}.")
        kind, value = given[0]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 < value <= 1):
            raise ValueError(f"Budget({kind}=...) must be a fraction in (0, 1] of the full "
                             f"space; received {value!r}.")

    @property
    def kind(self):
        return "flops" if self.flops is not None else "params"

    @property
    def value(self):
        return float(self.flops if self.flops is not None else self.params)


@keras.saving.register_keras_serializable(package="keras_gap")
class Gate(keras.layers.Layer):
    """Learned binary gates of channels (or a residual branch): their values.

    Made by `keras_gap.growing.add_gates`; you rarely build one yourself.

    Args:
        units: number of scores (channels of the group; 1 for a block).
        kind: "channel" or "block".
        targets: names of the gated layers, one per site (channel gates: the
            producers; block gates: the residual ``Add``).
        branch: block gates: which input of the ``Add`` is the residual branch.
        budget_kind: "flops", "params" or None (no budget, no penalty).
        budget: the target ratio (see `Budget`).
        initial_score: magnitude of the seed scores; rounds clip scores to it.
        score_scale: the score is ``score_scale`` times the trained variable,
            so an Adam-like optimizer moves scores ``score_scale`` times
            faster than other weights (their own step size).
        seed: seed of the gate samples.
        **kwargs: Layer arguments (name, dtype).

    Returns:
        A Keras layer: ``gate(model_input)`` is the vector of gate values
        (``units``,), applied with `ApplyGate`.

    Example:
        >>> gate = kg.growing.Gate(8, targets=["conv"])
        >>> values = gate(keras.ops.ones((2, 3)), training=False)   # shape (8,)
    """

    def __init__(self, units, kind=CHANNEL, targets=(), branch=None, budget_kind=None,
                 budget=None, initial_score=2.0, score_scale=1.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"Gate `units` must be a positive int; received {units!r}.")
        if kind not in (CHANNEL, BLOCK):
            raise ValueError(f"Gate `kind` must be 'channel' or 'block'; received {kind!r}.")
        self.units = units
        self.kind = kind
        self.targets = list(targets)
        self.branch = branch
        self.budget_kind = budget_kind
        self.budget = budget
        self.initial_score = float(initial_score)
        self.score_scale = float(score_scale)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape=None):
        self.score = self.add_weight(name=SCORE_NAME, shape=(self.units,),
                                     initializer="zeros", trainable=True)
        self.beta = self.add_weight(name="beta", shape=(), initializer="ones",
                                    trainable=False)
        self.penalty = self.add_weight(name="penalty", shape=(), initializer="zeros",
                                       trainable=False)
        self.cost = self.add_weight(name="cost", shape=(self.units,), initializer="zeros",
                                    trainable=False)
        self.sample = self.add_weight(name="sample", shape=(self.units,),
                                      initializer="ones", trainable=False)
        self.schedule = self.add_weight(name="schedule", shape=(5,), initializer="zeros",
                                        trainable=False)
        self.frozen = self.add_weight(name="frozen", shape=(), initializer="zeros",
                                      trainable=False)
        self.built = True

    def _top(self, s):
        """1 for the highest-scoring channel(s) of a channel gate."""
        if self.kind != CHANNEL or self.units == 1:
            return ops.zeros_like(s)
        return ops.cast(s >= ops.max(s), s.dtype)

    def scores(self):
        """The scores ``s`` (``score_scale`` times the variable) as a tensor."""
        return ops.cast(self.score, "float32") * self.score_scale

    def set_scores(self, values):
        """Assigns the scores ``s`` (numpy or tensor of shape (units,))."""
        self.score.assign(ops.cast(ops.convert_to_tensor(values), "float32")
                          / self.score_scale)

    def soft_gate(self):
        """``sigmoid(beta * s)`` as a tensor (the probability of being on)."""
        return ops.sigmoid(ops.cast(self.beta, "float32") * self.scores())

    def call(self, inputs, training=None):
        s = self.scores()
        fixed = ops.maximum(ops.cast(s > 0, "float32"), self._top(s))
        if not training:
            return fixed
        soft = self.soft_gate()
        u = keras.random.uniform((self.units,), seed=self.seed_generator)
        sampled = ops.maximum(ops.cast(u < soft, "float32"), self._top(s))
        # Frozen (the last part of a schedule with `freeze_fraction`): the hard gates,
        # no sampling, no gradient to the scores, no penalty.
        live = 1.0 - ops.cast(self.frozen, "float32")
        hard = live * sampled + (1.0 - live) * fixed
        self.sample.assign(hard)
        if self.budget_kind is not None:
            self.add_loss(live * ops.cast(self.penalty, "float32")
                          * ops.sum(ops.cast(self.cost, "float32") * soft))
        soft = live * soft
        return soft + ops.stop_gradient(hard - soft)

    def compute_output_shape(self, input_shape):
        return (self.units,)

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor((self.units,), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, kind=self.kind, targets=list(self.targets),
                      branch=self.branch, budget_kind=self.budget_kind, budget=self.budget,
                      initial_score=self.initial_score, score_scale=self.score_scale,
                      seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="keras_gap")
class ApplyGate(keras.layers.Layer):
    """Multiplies the last axis of ``x`` by gate values: ``ApplyGate()([x, gate])``.

    Args:
        **kwargs: Layer arguments (name, dtype).

    Returns:
        A Keras layer without weights.

    Example:
        >>> y = kg.growing.ApplyGate()([x, gate(model_input)])
    """

    def call(self, inputs):
        x, gate = inputs
        return x * ops.cast(gate, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape[0]
