"""`GaPEngine`: the public GaP step API that GaPCallback and the Ray runner drive."""

import os
import re

import numpy as np
import pytest

import keras_gap as kg
from pruning_testlib import blobs, compile_model, masked_nonzeros, mlp, np_

TARGET = 0.75


def _pruned(method="cgap", partitions=2):
    model = mlp(hidden=32)
    pruned = kg.prune_gap(model, target_sparsity=TARGET, num_partitions=partitions,
                          steps_per_step=4, rounds=1, method=method, seed=3)
    return compile_model(pruned)


def _mask_density(wrapper):
    return float(np.mean(np.concatenate([np_(m).ravel() for m in wrapper.masks])))


@pytest.mark.core
def test_engine_steps_through_cgap_by_hand():
    pruned = _pruned()
    engine = kg.gap.GaPEngine(pruned, reset_optimizer="all")
    assert sorted(engine.partitions) == [0, 1] and engine.grown is None
    engine.initialize()
    assert engine.grown == 0
    dense = {p: [_mask_density(w) for w in ws] for p, ws in engine.partitions.items()}
    assert dense[0] == [1.0] * len(dense[0])
    assert all(d == pytest.approx(1 - TARGET, abs=0.01) for d in dense[1])
    assert engine.sparse_part_sparsity(0) == pytest.approx(TARGET, abs=0.01)

    assert engine.step(1) == 1  # partition 0 pruned back, 1 grown
    sp = engine.partition_sparsities()
    assert sp[0] == pytest.approx(TARGET, abs=0.01) and sp[1] == 0.0
    for w in engine.partitions[0]:  # pruned weights are exactly zero
        assert sum(masked_nonzeros(w)) == 0

    assert engine.step(engine.schedule.num_gap_steps) is None  # fine-tuning: all sparse
    assert engine.grown is None
    assert engine.sparsity() == pytest.approx(TARGET, abs=0.01)


@pytest.mark.core
def test_engine_pgap_merge_takes_each_partition_from_its_copy():
    from keras_gap.gap import pgap
    pruned = _pruned(method="pgap")
    engine = kg.gap.GaPEngine(pruned)
    engine.initialize()
    base = [np.array(v) for v in engine.round_base]
    copies = {}
    for p in (0, 1):  # two "trained" copies: every float value shifted by p + 1
        pgap.restore(pruned, engine.wrappers, base)
        engine.grow(p)
        copies[p] = [v + (p + 1) if np.issubdtype(v.dtype, np.floating) else v
                     for v in pgap.snapshot(pruned, engine.wrappers)]
    merged = engine.merge_round(copies, prune=False)
    owned = pgap.partition_indices(pruned, engine.wrappers, engine.partitions)
    for p, indices in owned.items():
        for i in indices:
            np.testing.assert_array_equal(merged[i], copies[p][i])
    shared = [i for i in range(len(merged)) if not any(i in ix for ix in owned.values())
              and np.issubdtype(merged[i].dtype, np.floating)]
    assert shared, "the MLP's biases are shared by the copies"
    for i in shared:  # averaged: base + mean(1, 2)
        np.testing.assert_allclose(merged[i], base[i] + 1.5, rtol=1e-6)
    engine.merge_round(copies)  # and pruned back: every layer at the target
    assert engine.sparsity() == pytest.approx(TARGET, abs=0.01) and engine.grown is None


@pytest.mark.core
def test_gap_callback_drives_an_engine():
    x, y = blobs(n=64)
    pruned = _pruned()
    callback = kg.GaPCallback(verbose=0)
    pruned.fit(x, y, batch_size=16, epochs=4,
               verbose=0, callbacks=[callback])
    assert isinstance(callback.engine, kg.gap.GaPEngine)
    assert callback.engine.grown is None
    assert callback.engine.sparsity() == pytest.approx(TARGET, abs=0.01)


def test_callback_and_runner_use_only_the_public_step_api():
    """The Ray runner and its round logic call the engine's public methods, not a
    callback's private ones (the seam issue 23 named)."""
    root = os.path.join(os.path.dirname(__file__), "..", "keras_gap", "gap")
    private = re.compile(r"\.(_initialize|_grow|_prune_back|_reset_all_slots|_pgap_snapshot"
                         r"|_cgap_boundary|_pgap_boundary)\b")
    for name in ("ray_runner.py", "rounds.py", "callback.py"):
        with open(os.path.join(root, name), encoding="utf-8") as f:
            hits = [line for line in f if private.search(line)]
        assert not hits, (name, hits)


@pytest.mark.core
def test_engine_bad_input():
    pruned = _pruned()
    with pytest.raises(ValueError, match="reset_optimizer.*'sometimes'"):
        kg.gap.GaPEngine(pruned, reset_optimizer="sometimes")
    engine = kg.gap.GaPEngine(pruned)
    with pytest.raises(ValueError, match=r"GaP step must be in \[0, 2\]; received 7"):
        engine.step(7)
    with pytest.raises(ValueError, match=r"No GaP partition 5.*\[0, 1\]"):
        engine.grow(5)
