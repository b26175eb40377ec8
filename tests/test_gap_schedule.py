"""GaPPruningSchedule and partitioning: the math, exactly."""

import pytest

import keras_gap as kg
from keras_gap.gap import partition as part

pytestmark = pytest.mark.core


def test_schedule_rotation_and_final_phase():
    k, t, rounds = 3, 10, 2
    scheds = [kg.GaPPruningSchedule(p, k, 0.9, rounds=rounds, steps_per_step=t)
              for p in range(k)]
    # tf-mot numbering: the first batch is step 1 = begin_step (boundary 0).
    for step in range(1, k * rounds * t + 25):
        j = (step - 1) // t
        grown = j % k if j < k * rounds else None
        for p, s in enumerate(scheds):
            should, sparsity = s(step)
            assert sparsity == (0.0 if p == grown else 0.9), (step, p)
            at_boundary = (step - 1) % t == 0 and j <= k * rounds
            involved = j == 0 or (j - 1) % k == p or grown == p
            assert should == (at_boundary and involved), (step, p)
    assert scheds[0].end_step == 1 + k * rounds * t
    assert scheds[0].total_steps() == k * rounds * t  # batches needed (no fine-tuning)
    # Fine-tuning: masks fixed forever after the last boundary.
    assert not any(s(k * rounds * t + 1000)[0] for s in scheds)


def test_schedule_only_touches_changing_partitions():
    s = kg.GaPPruningSchedule(2, 4, 0.8, rounds=1, steps_per_step=5)
    # boundary 1: p0 pruned back, p1 grown -> p2 untouched.
    assert s(6) == (False, 0.8)
    # boundary 2: p1 back, p2 grown
    assert s(11) == (True, 0.0)
    # boundary 3: p2 back, p3 grown
    assert s(16) == (True, 0.8)


def test_schedule_tensor_steps_match_python_steps():
    import keras
    s = kg.GaPPruningSchedule(1, 3, 0.75, rounds=2, steps_per_step=4, begin_step=2)
    for step in range(0, 40):
        should, sparsity = s(keras.ops.convert_to_tensor(step, "int32"))
        py_should, py_sparsity = s(step)
        assert bool(keras.ops.convert_to_numpy(should)) == py_should, step
        assert float(keras.ops.convert_to_numpy(sparsity)) == pytest.approx(py_sparsity)


def test_schedule_serialization_round_trip():
    s = kg.GaPPruningSchedule(1, 4, 0.9, rounds=3, epochs_per_step=2, finetune_epochs=4,
                              method="pgap", distribution="erk", seed=7)
    config = s.get_config()
    assert config["class_name"] == "GaPPruningSchedule"
    again = kg.GaPPruningSchedule.from_config(config["config"])
    assert again == s
    from keras_gap.schedules import deserialize_schedule
    assert deserialize_schedule(config) == s


def test_epoch_schedule_resolves_to_steps():
    s = kg.GaPPruningSchedule(0, 4, 0.9, rounds=3, epochs_per_step=2, finetune_epochs=4)
    assert s.total_epochs() == 3 * 4 * 2 + 4
    with pytest.raises(ValueError, match="not been resolved"):
        s(1)
    r = s.resolve(steps_per_epoch=50)
    assert r.steps_per_step == 100 and r.finetune_steps == 200
    assert r.total_steps() == 12 * 100 + 200


@pytest.mark.parametrize("kwargs, match", [
    (dict(partition=0, num_partitions=2, target_sparsity=1.0, steps_per_step=1), "target_sparsity"),
    (dict(partition=0, num_partitions=2, target_sparsity=-0.1, steps_per_step=1), "target_sparsity"),
    (dict(partition=2, num_partitions=2, target_sparsity=0.5, steps_per_step=1), "partition"),
    (dict(partition=0, num_partitions=2, target_sparsity=0.5, steps_per_step=0), "steps_per_step"),
    (dict(partition=0, num_partitions=2, target_sparsity=0.5, epochs_per_step=0), "epochs_per_step"),
    (dict(partition=0, num_partitions=2, target_sparsity=0.5), "steps_per_step"),
    (dict(partition=0, num_partitions=2, target_sparsity=0.5, steps_per_step=1, method="x"), "method"),
    (dict(partition=0, num_partitions=2, target_sparsity=0.5, steps_per_step=1, begin_step=0),
     "begin_step` must be >= 1"),
])
def test_schedule_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kg.GaPPruningSchedule(**kwargs)


def test_partition_sequential_and_balanced():
    names = ["a", "b", "c", "d", "e"]
    assert part.sequential(names, 2) == [["a", "b", "c"], ["d", "e"]]
    groups = part.balanced(names, [10, 10, 10, 10, 60], 2)
    assert groups == [["a", "b", "c", "d"], ["e"]]
    # Balanced minimizes the largest group: check against brute force.
    sizes = [5, 1, 7, 3, 9, 2, 4]
    names = list("abcdefg")
    best = part.balanced(names, sizes, 3)
    worst_group = max(sum(sizes[names.index(n)] for n in g) for g in best)
    import itertools
    brute = min(max(sum(sizes[a:b]) for a, b in zip((0,) + cuts, cuts + (7,)))
                for cuts in itertools.combinations(range(1, 7), 2))
    assert worst_group == brute
    assert [n for g in best for n in g] == names  # contiguous, forward order


def test_partition_random_is_seeded_and_complete():
    names = [f"l{i}" for i in range(9)]
    a = part.random_groups(names, 3, seed=1)
    assert a == part.random_groups(names, 3, seed=1)
    assert sorted(n for g in a for n in g) == sorted(names)
    assert all(len(g) == 3 for g in a)


@pytest.mark.parametrize("groups, match", [
    ([["a"], ["b"]], "misses"),
    ([["a", "b"], ["b", "c"]], "appears in partitions"),
    ([["a", "b"], ["c", "zzz"]], "not a prunable layer"),
    ([], "non-empty"),
])
def test_partition_explicit_errors(groups, match):
    with pytest.raises(ValueError, match=match):
        part.partition_layers(["a", "b", "c"], [1, 1, 1], 2, groups)


def test_too_many_partitions():
    with pytest.raises(ValueError, match="more than the 3 prunable layers"):
        part.partition_layers(["a", "b", "c"], [1, 1, 1], 4)
    with pytest.raises(ValueError, match="partitioning"):
        part.partition_layers(["a", "b"], [1, 1], 2, "bogus")
