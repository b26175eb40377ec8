"""keras_gap.masks: exact counts, ties, block and N:M structure, errors."""

import numpy as np
import pytest
from keras import ops

from keras_gap import masks
from pruning_testlib import np_

pytestmark = pytest.mark.core


@pytest.mark.parametrize("n, sparsity, expected", [
    (10, 0.9, 1), (10, 0.5, 5), (10, 0.0, 10), (100, 0.99, 1), (7, 0.5, 3),
    (1000, 0.9, 100), (784 * 300, 0.9, 23520), (64, 0.9, 6),
    (10, 0.7, 3), (1, 0.0, 1), (0, 0.5, 0),
    # at least one kept (tf-mot): floor would give 0
    (3, 0.7, 1), (80, 0.99, 1), (1, 0.5, 1), (5, 1.0, 0),
])
def test_num_to_keep_is_exact_floor_of_the_decimal_value(n, sparsity, expected):
    assert masks.num_to_keep(n, sparsity) == expected, (n, sparsity)


@pytest.mark.parametrize("shape", [(4,), (10,), (6, 7), (3, 3, 4, 8)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.95])
def test_all_equal_scores_keep_exactly_k(shape, sparsity):
    n = int(np.prod(shape))
    k = masks.num_to_keep(n, sparsity)
    mask = np_(masks.topk_mask(ops.ones(shape), k))
    assert mask.shape == shape
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert int(mask.sum()) == k, f"ties kept {int(mask.sum())} entries, expected {k}"


def test_ties_never_keep_extra_weights_in_block_mask():
    mask = np_(masks.block_mask(ops.ones((8, 4)), 0.75))
    assert int(mask.sum()) == 8


@pytest.mark.parametrize("num_keep", [0, 1, 5, 31, 50, 99, 100])
def test_topk_mask_matches_a_sort_based_reference(num_keep):
    rng = np.random.default_rng(num_keep)
    scores = rng.permutation(100).astype("float32").reshape(10, 10)  # no ties
    mask = np_(masks.topk_mask(ops.convert_to_tensor(scores), num_keep))
    expected = np.zeros(100, "float32")
    if num_keep:
        expected[np.argsort(-scores.ravel())[:num_keep]] = 1
    np.testing.assert_array_equal(mask.ravel(), expected,
                                  err_msg=f"num_keep={num_keep}")


def test_topk_mask_documented_example_and_tie_order():
    mask = np_(masks.topk_mask(ops.convert_to_tensor([3.0, 1.0, 2.0, 2.0]), 2))
    assert mask.sum() == 2 and mask[0] == 1 and mask[1] == 0
    assert mask[2] + mask[3] == 1


def test_topk_mask_clips_num_keep():
    assert np_(masks.topk_mask(ops.ones((3, 3)), 100)).sum() == 9
    assert np_(masks.topk_mask(ops.ones((3, 3)), -4)).sum() == 0


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_unstructured_block_mask_keeps_largest_magnitudes(sparsity):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 12)).astype("float32")
    mask = np_(masks.compute_mask(ops.abs(w), sparsity))
    k = masks.num_to_keep(w.size, sparsity)
    assert int(mask.sum()) == k
    if 0 < k < w.size:
        assert np.abs(w)[mask == 1].min() > np.abs(w)[mask == 0].max()


@pytest.mark.parametrize("block", [(4, 1), (16, 1), (2, 2), (1, 4)])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_block_mask_on_dense_kernel(block, sparsity):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(64, 32)).astype("float32")  # Dense [in, out]
    mask = np_(masks.block_mask(ops.abs(w), sparsity, block_size=block))
    br, bc = block
    blocks = mask.reshape(64 // br, br, 32 // bc, bc)
    per_block = blocks.sum(axis=(1, 3))
    assert set(np.unique(per_block)) <= {0.0, br * bc}, \
        "every block must be kept or removed as a whole"
    num_blocks = (64 // br) * (32 // bc)
    assert int((per_block > 0).sum()) == masks.num_to_keep(num_blocks, sparsity)
    # The kept blocks are the ones with the largest mean |w| (AVG default).
    pooled = np.abs(w).reshape(64 // br, br, 32 // bc, bc).mean(axis=(1, 3))
    kept = per_block > 0
    assert pooled[kept].min() >= pooled[~kept].max()


def test_block_mask_on_conv_kernel_uses_leading_axes_as_rows():
    w = np.random.default_rng(2).normal(size=(3, 3, 4, 8)).astype("float32")
    mask = np_(masks.block_mask(ops.abs(w), 0.5, block_size=(4, 1)))
    rows = mask.reshape(36, 8).reshape(9, 4, 8)
    assert set(np.unique(rows.sum(axis=1))) <= {0.0, 4.0}
    assert int(mask.sum()) == 4 * masks.num_to_keep(72, 0.5)


def test_avg_and_max_pooling_choose_different_blocks():
    # Column of 4 rows, blocks of (2, 1): block A = [10, 0] (avg 5, max 10),
    # block B = [6, 6] (avg 6, max 6). Keeping one block:
    scores = ops.convert_to_tensor(np.array([[10.0], [0.0], [6.0], [6.0]], "float32"))
    avg = np_(masks.block_mask(scores, 0.5, (2, 1), "AVG")).ravel()
    mx = np_(masks.block_mask(scores, 0.5, (2, 1), "MAX")).ravel()
    np.testing.assert_array_equal(avg, [0, 0, 1, 1], err_msg="AVG keeps block B")
    np.testing.assert_array_equal(mx, [1, 1, 0, 0], err_msg="MAX keeps block A")


_NM_CASES = [(shape, m_n)
             for shape in [(8, 6), (16, 3), (3, 3, 8, 4), (5, 8, 2), (2, 2, 2, 4, 3),
                           (7, 3), (3, 3, 6, 2)]          # the last two: partial groups
             for m_n in [(2, 4), (1, 4), (3, 4), (1, 2), (4, 8)]]


@pytest.mark.parametrize("shape, m_n", _NM_CASES)
def test_n_by_m_zeroes_m_per_group_along_input_axis(shape, m_n):
    """(M, N): M zeros in every N along axis -2 (tf-mot); a partial last group of
    g entries keeps min(N - M, g) (tf-mot pads it with zeros)."""
    zeros, n = m_n
    rng = np.random.default_rng(3)
    scores = rng.normal(size=shape).astype("float32")
    mask = np_(masks.n_by_m_mask(ops.convert_to_tensor(scores), m_n))
    assert mask.shape == shape
    moved = np.moveaxis(mask, -2, -1)  # input axis last
    s_moved = np.moveaxis(scores, -2, -1)
    c = shape[-2]
    for start in range(0, c, n):
        group, s_group = moved[..., start:start + n], s_moved[..., start:start + n]
        size = group.shape[-1]
        np.testing.assert_array_equal(group.sum(-1), min(n - zeros, size),
                                      err_msg=f"{m_n} group at {start} of {c}")
        # The kept entries are the largest of each group.
        kept_min = np.where(group == 1, s_group, np.inf).min(-1)
        removed_max = np.where(group == 0, s_group, -np.inf).max(-1)
        assert np.all(kept_min >= removed_max)


def test_n_by_m_with_ties_keeps_exactly_n():
    mask = np_(masks.n_by_m_mask(ops.ones((8, 5)), (2, 4)))
    np.testing.assert_array_equal(mask.reshape(2, 4, 5).sum(1), 2)


def test_compute_mask_prefers_n_by_m_over_sparsity():
    mask = np_(masks.compute_mask(ops.ones((8, 2)), 0.9, sparsity_m_by_n=(2, 4)))
    assert mask.sum() == 8


@pytest.mark.parametrize("shape, sparsity", [((30, 20), 0.9), ((7,), 0.5), ((3, 3, 2, 4), 0.25)])
def test_random_mask_exact_count_and_seeded(shape, sparsity):
    a = np_(masks.random_mask(shape, sparsity, seed=7))
    b = np_(masks.random_mask(shape, sparsity, seed=7))
    c = np_(masks.random_mask(shape, sparsity, seed=8))
    n = int(np.prod(shape))
    assert a.shape == shape and int(a.sum()) == masks.num_to_keep(n, sparsity)
    np.testing.assert_array_equal(a, b, err_msg="same seed, same mask")
    if 0 < a.sum() < n and n > 10:
        assert not np.array_equal(a, c), "different seeds should differ"


def test_random_block_mask():
    mask = np_(masks.random_mask((16, 4), 0.5, seed=0, block_size=(4, 1)))
    per_block = mask.reshape(4, 4, 4).sum(1)
    assert set(np.unique(per_block)) <= {0.0, 4.0} and (per_block > 0).sum() == 8


def test_mask_sparsity():
    assert masks.mask_sparsity(np.array([1, 0, 0, 0], "float32")) == 0.75


# Errors ---------------------------------------------------------------------
@pytest.mark.parametrize("block", [(3, 1), (1, 5), (7, 7)])
def test_block_that_does_not_divide_is_an_error(block):
    with pytest.raises(ValueError, match="does not divide"):
        masks.block_mask(ops.ones((8, 4)), 0.5, block_size=block)


def test_block_on_rank_1_weight_is_an_error():
    with pytest.raises(ValueError, match="rank >= 2"):
        masks.block_mask(ops.ones((16,)), 0.5, block_size=(4, 1))


@pytest.mark.parametrize("block", [(0, 1), (-4, 1), (4,), (1, 1, 1), "ab", None, 4])
def test_malformed_block_size_is_an_error(block):
    with pytest.raises(ValueError, match="block_size"):
        masks.validate_block_size(block)


def test_unknown_pooling_type_is_an_error():
    with pytest.raises(ValueError, match="block_pooling_type"):
        masks.block_mask(ops.ones((8, 4)), 0.5, (4, 1), "MEDIAN")


@pytest.mark.parametrize("n_m", [(2, 2), (4, 2), (0, 4), (-1, 4), (2,), "2:4", None])
def test_invalid_n_by_m_is_an_error(n_m):
    if n_m is None:
        assert masks.validate_m_by_n(None) is None
        return
    with pytest.raises(ValueError, match="sparsity_m_by_n"):
        masks.n_by_m_mask(ops.ones((8, 4)), n_m)


@pytest.mark.parametrize("shape", [(6, 4), (3, 3, 6, 8)])
def test_n_by_m_without_partial_groups_needs_input_axis_divisible_by_n(shape):
    with pytest.raises(ValueError, match="divisible by N=4"):
        masks.n_by_m_mask(ops.ones(shape), (2, 4), partial=False)
    assert np_(masks.n_by_m_mask(ops.ones(shape), (2, 4))).shape == shape  # partial: fine


def test_n_by_m_needs_rank_2():
    with pytest.raises(ValueError, match="rank >= 2"):
        masks.n_by_m_mask(ops.ones((8,)), (2, 4))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "half", None])
def test_validate_sparsity_rejects_values_outside_0_1(bad):
    with pytest.raises(ValueError, match="sparsity"):
        masks.validate_sparsity(bad)
