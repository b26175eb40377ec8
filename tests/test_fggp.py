"""FGGP criterion, global scope, gradient recording and end-to-end pruning."""

import gzip
import os

import numpy as np
import pytest

import keras
from keras import ops

import keras_gap as kg
from keras_gap import criteria
from keras_gap import gradients as grad_lib
from keras_gap import masks as mask_lib
from keras_gap.callbacks import overall_sparsity
from keras_gap.wrapper import collect_wrappers

pytestmark = pytest.mark.core

FASHION = "/usr/share/datasets/fashion-mnist"


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def t(x):
    return ops.convert_to_tensor(np.asarray(x, "float32"))


# Eight weights chosen so that the three rules disagree (k = 2, rate = 0.5):
#   magnitude only removes the smallest |w|     -> {0, 1}
#   gradient only removes the smallest |g|      -> {2, 3}
#   FGGP: candidates = 4 smallest |g| {2,3,4,5}; of those smallest |w| -> {4, 5}
W = [0.1, -0.2, 5.0, -6.0, 1.0, -1.1, 7.0, 8.0]
G = [9.0, -8.0, 0.01, 0.02, -0.5, 0.6, 0.7, -0.8]


def removed(mask):
    return set(np.flatnonzero(np_(mask) == 0).tolist())


def test_fggp_differs_from_magnitude_and_gradient_only():
    w, g, m = t(W), t(G), ops.ones((8,))
    fggp = criteria.FGGP(rate=0.5).compute_mask(weight=w, mask=m, sparsity=0.25,
                                                gradient=g)
    magnitude = criteria.Magnitude().compute_mask(weight=w, mask=m, sparsity=0.25)
    gradient_only = mask_lib.compute_mask(ops.abs(g), 0.25)  # keep large |g|
    assert removed(magnitude) == {0, 1}
    assert removed(gradient_only) == {2, 3}
    assert removed(fggp) == {4, 5}


def test_rate_one_is_magnitude_among_active():
    w, g = t(W), t(G)
    m = criteria.FGGP(rate=1.0).compute_mask(weight=w, mask=ops.ones((8,)),
                                             sparsity=0.25, gradient=g)
    assert removed(m) == {0, 1}


def test_inactive_weights_are_not_candidates_and_never_return():
    w, g = t(W), t(G)
    mask = t([1, 1, 0, 0, 1, 1, 1, 1])  # 2 and 3 already removed
    # 6 active; sparsity 0.5 -> keep 4 -> k = 2; candidates = 3 smallest |g|
    # among active {4 (0.5), 5 (0.6), 6 (0.7)}; smallest |w| of those: {4, 5}.
    new = criteria.FGGP(0.5).compute_mask(weight=w, mask=mask, sparsity=0.5, gradient=g)
    assert removed(new) == {2, 3, 4, 5}
    # A lower target never regrows: the mask stays as it is.
    same = criteria.FGGP(0.5).compute_mask(weight=w, mask=mask, sparsity=0.1, gradient=g)
    np.testing.assert_array_equal(np_(same), np_(mask))


def test_exact_counts_and_monotone_masks_over_a_cubic_schedule():
    rng = np.random.default_rng(0)
    w = t(rng.normal(size=(40, 25)))
    mask = ops.ones((40, 25))
    schedule = kg.PolynomialDecay(0.0, 0.95, begin_step=0, end_step=100, power=3,
                                  frequency=10)
    crit = criteria.FGGP(rate=0.5)
    for step in range(0, 101, 10):
        should, s = schedule(step)
        assert should
        assert s == pytest.approx(0.95 + (0.0 - 0.95) * (1 - step / 100) ** 3)
        g = t(rng.normal(size=(40, 25)))
        new = crit.compute_mask(weight=w, mask=mask, sparsity=s, gradient=g)
        assert int(np_(new).sum()) == mask_lib.num_to_keep(1000, s)
        assert np.all(np_(new) <= np_(mask))  # no regrowth
        mask = new
    assert schedule(101) == (False, pytest.approx(0.95))


def test_global_scope_concentrates_pruning_layer_scope_does_not():
    rng = np.random.default_rng(1)
    small = t(rng.normal(0, 0.01, size=(20, 10)))  # tiny weights
    large = t(rng.uniform(1.0, 2.0, size=(20, 10)) * rng.choice([-1, 1], size=(20, 10)))
    g = [t(rng.normal(size=(20, 10))) for _ in range(2)]
    ones = [ops.ones((20, 10))] * 2
    crit = criteria.FGGP(rate=0.6)
    glob = crit.compute_global_masks([small, large], ones, 0.5, gradients=g)
    assert sum(int(np_(m).sum()) for m in glob) == mask_lib.num_to_keep(400, 0.5)
    # numpy reference of the rule over the concatenation
    wf = np.concatenate([np_(small).ravel(), np_(large).ravel()])
    gf = np.concatenate([np_(x).ravel() for x in g])
    cand = np.argsort(np.abs(gf))[:240]  # floor(0.6 * 400)
    gone = cand[np.argsort(np.abs(wf[cand]))[:200]]
    want = np.ones(400)
    want[gone] = 0
    np.testing.assert_array_equal(np.concatenate([np_(m).ravel() for m in glob]), want)
    assert np_(glob[0]).sum() < 100 < np_(glob[1]).sum()  # the small tensor loses more
    layer = [crit.compute_mask(weight=w, mask=o, sparsity=0.5, gradient=gg)
             for w, o, gg in zip([small, large], ones, g)]
    assert [int(np_(m).sum()) for m in layer] == [100, 100]
    # the default (magnitude) global rule: the small tensor goes first, down to
    # the one weight every tensor keeps (masks.num_to_keep's rule)
    mag = criteria.Magnitude().compute_global_masks([small, large], ones, 0.5)
    assert [int(np_(m).sum()) for m in mag] == [1, 199]


def test_bad_inputs_give_clear_errors():
    for rate in (0, 0.0, -0.1, 1.5, "x", None):
        with pytest.raises(ValueError, match=r"rate.*\(0, 1\]"):
            criteria.FGGP(rate=rate)
    with pytest.raises(ValueError, match=r"k=6 .*floor\(0.5 \* 8\) = 4.*larger rate"):
        criteria.FGGP(0.5).compute_mask(weight=t(W), mask=ops.ones((8,)), sparsity=0.75,
                                        gradient=t(G))
    with pytest.raises(ValueError, match="Unknown pruning criterion 'fgpp'"):
        criteria.get("fgpp")
    with pytest.raises(ValueError, match="no loss gradient"):
        criteria.FGGP().compute_mask(weight=t(W), mask=ops.ones((8,)), sparsity=0.25)
    with pytest.raises(ValueError, match="single weights only"):
        criteria.FGGP().compute_mask(weight=ops.ones((4, 4)), mask=ops.ones((4, 4)),
                                     sparsity=0.5, block_size=(2, 1))
    with pytest.raises(ValueError, match="unstructured"):
        kg.prune_low_magnitude(_mlp(), criterion="fggp", block_size=(4, 1))
    with pytest.raises(ValueError, match="gradient_batches"):
        criteria.FGGP(gradient_batches=0)


def test_registry_and_serialization_round_trip(tmp_path):
    assert isinstance(criteria.get("fggp"), criteria.FGGP)
    crit = criteria.FGGP(rate=0.3, gradient_batches=2)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(crit))
    assert isinstance(again, criteria.FGGP) and again.rate == 0.3
    assert again.gradient_batches == 2
    pruned = kg.prune_low_magnitude(_mlp(), criterion=crit, scope="global",
                                    distribution="erk")
    path = str(tmp_path / "m.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    w = collect_wrappers(loaded)[0]
    assert (w.scope, w.distribution, type(w.criterion)) == ("global", "erk", criteria.FGGP)
    assert w.pruning_group == collect_wrappers(pruned)[0].pruning_group


def _mlp(dim=16, classes=3):
    return keras.Sequential([
        keras.Input((dim,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(classes),
    ])


def _blobs(n=256, dim=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(classes, dim))
    y = rng.integers(0, classes, size=n).astype("int32")
    return (centers[y] + rng.normal(size=(n, dim))).astype("float32"), y


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_recorded_gradient_equals_a_separate_gradient_computation():
    x, y = _blobs(n=64)
    model = _mlp()
    kernels = [model.layers[0].kernel, model.layers[2].kernel]
    expected = grad_lib.compute_gradients(model, x, y, LOSS, variables=kernels)
    rec = grad_lib.GradientRecorder(keras.optimizers.SGD(0.0), variables=kernels)
    model.compile(rec, LOSS)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
    assert rec.recorded_batches == 1
    for v, e in zip(kernels, expected):
        np.testing.assert_allclose(np_(rec.gradient(v)), np_(e), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="does not record"):
        rec.gradient(model.layers[1].kernel)


def test_gradient_averaging_over_the_last_batches():
    x, y = _blobs(n=96)
    model = _mlp()
    k = model.layers[0].kernel
    per_batch = [np_(grad_lib.compute_gradients(model, x[i:i + 32], y[i:i + 32], LOSS,
                                                variables=[k])[0]) for i in (0, 32, 64)]
    rec = grad_lib.GradientRecorder("sgd", variables=[k.path], num_batches=2)
    rec.inner_optimizer.learning_rate = 0.0
    model.compile(rec, LOSS)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert rec.recorded_batches == 3
    np.testing.assert_allclose(np_(rec.gradient(k)), (per_batch[1] + per_batch[2]) / 2,
                               rtol=1e-4, atol=1e-6)


def _check_masked_zero(model):
    for w in collect_wrappers(model):
        for v, m in zip(w.pruned_weights, w.masks):
            assert np.all(np_(v)[np_(m) == 0] == 0)


@pytest.mark.parametrize("scope,distribution", [("global", "uniform"), ("layer", "erk")])
def test_fit_fggp_reaches_exact_target_and_stops_at_end_step(scope, distribution):
    x, y = _blobs(n=256)
    schedule = kg.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=16, frequency=2)
    pruned = kg.prune_low_magnitude(_mlp(), pruning_schedule=schedule,
                                    criterion=criteria.FGGP(0.5), scope=scope,
                                    distribution=distribution)
    opt = keras.optimizers.Adam(1e-2)
    pruned.compile(opt, LOSS, metrics=["accuracy"])
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(logs["sparsity"])

    history = pruned.fit(x, y, batch_size=32, epochs=4, verbose=0,
                         callbacks=[kg.UpdatePruningStep(), Watch()])
    wrappers = collect_wrappers(pruned)
    total = sum(n for w in wrappers for n, _ in w.mask_counts())
    kept = sum(nz for w in wrappers for _, nz in w.mask_counts())
    if scope == "global":
        assert kept == mask_lib.num_to_keep(total, 0.9)
    else:
        assert abs(kept - mask_lib.num_to_keep(total, 0.9)) <= len(wrappers)
    # last update at step 16, the 16th batch (tf-mot numbering: the first batch is step 1)
    assert seen[15] == seen[-1] and seen[14] < seen[15]
    assert pruned.optimizer is opt  # the temporary recorder was removed
    assert history.history["accuracy"][-1] > 0.8
    _check_masked_zero(pruned)


def test_fit_from_50_percent_erk_start():
    x, y = _blobs(n=256)
    schedule = kg.PolynomialDecay(0.5, 0.9, begin_step=0, end_step=16, frequency=4)
    pruned = kg.prune_low_magnitude(_mlp(), pruning_schedule=schedule,
                                    criterion="fggp", scope="global",
                                    initial_mask="erk_random", initial_sparsity=0.5,
                                    seed=0)
    start = [np_(m).copy() for w in collect_wrappers(pruned) for m in w.masks]
    assert overall_sparsity(collect_wrappers(pruned)) == pytest.approx(0.5, abs=0.01)
    pruned.compile("adam", LOSS)
    pruned.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[kg.UpdatePruningStep()])
    end = [np_(m) for w in collect_wrappers(pruned) for m in w.masks]
    assert all(np.all(e <= s) for e, s in zip(end, start))  # removed never return
    assert overall_sparsity(collect_wrappers(pruned)) == pytest.approx(0.9, abs=1e-3)
    _check_masked_zero(pruned)


def test_custom_registered_criterion_in_global_scope():
    @criteria.register("test_neg_magnitude")
    class NegMagnitude(criteria.Criterion):
        def scores(self, weight, mask, **kwargs):
            return -ops.abs(ops.convert_to_tensor(weight))

    x, y = _blobs(n=64)
    pruned = kg.prune_low_magnitude(
        _mlp(), pruning_schedule=kg.ConstantSparsity(0.5, begin_step=1, frequency=1000),
        criterion="test_neg_magnitude", scope="global")
    before = [np_(w.pruned_weights[0]).copy() for w in collect_wrappers(pruned)]
    pruned.compile(keras.optimizers.SGD(0.0), LOSS)
    pruned.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[kg.UpdatePruningStep()])
    flat = np.concatenate([b.ravel() for b in before])
    keep = np.concatenate([np_(m).ravel() for w in collect_wrappers(pruned) for m in w.masks])
    assert keep.sum() == mask_lib.num_to_keep(flat.size, 0.5)
    assert np.abs(flat[keep == 1]).max() <= np.abs(flat[keep == 0]).min()


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST IDX files not installed")
def test_fashion_mnist_fggp_end_to_end():
    x = _read_idx(f"{FASHION}/train-images-idx3-ubyte.gz")[:3000].reshape(-1, 784)
    y = _read_idx(f"{FASHION}/train-labels-idx1-ubyte.gz")[:3000].astype("int32")
    xt = _read_idx(f"{FASHION}/t10k-images-idx3-ubyte.gz")[:1000].reshape(-1, 784)
    yt = _read_idx(f"{FASHION}/t10k-labels-idx1-ubyte.gz")[:1000].astype("int32")
    x, xt = x.astype("float32") / 255.0, xt.astype("float32") / 255.0
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(10)])
    pruned = kg.prune_low_magnitude(
        model, pruning_schedule=kg.PolynomialDecay(0.0, 0.95, 0, 140, frequency=10),
        criterion=criteria.FGGP(rate=0.5), scope="global")
    pruned.compile(keras.optimizers.Adam(2e-3), LOSS, metrics=["accuracy"])
    pruned.fit(x, y, batch_size=64, epochs=4, verbose=0, callbacks=[kg.UpdatePruningStep()])
    wrappers = collect_wrappers(pruned)
    total = sum(n for w in wrappers for n, _ in w.mask_counts())
    assert sum(nz for w in wrappers for _, nz in w.mask_counts()) == \
        mask_lib.num_to_keep(total, 0.95)
    stripped = kg.strip_pruning(pruned)
    stripped.compile("adam", LOSS, metrics=["accuracy"])
    _, acc = stripped.evaluate(xt, yt, verbose=0)
    assert acc > 0.7  # chance is 0.1
