"""The fused evaluator's one-pass kernel against the slow, obvious references: a stable sort for
the top k, a plain count for the ranks (exact ties included)."""

import numpy as np
import pytest
import torch

from cdrlib.fused import select_and_rank
from cdrlib.metrics import TIES_COUNTED_DIRECTLY, ranks_from_scores


def reference(scores: torch.Tensor, relevant: torch.Tensor, k: int):
    """Top k by a stable sort of −scores (equal values by column); each relevant item's rank =
    #(larger) + #(equal with a smaller column), counted entry by entry."""
    order = torch.argsort(-scores, dim=1, stable=True)[:, :k]
    ranks = []
    for row, rel in zip(scores.tolist(), relevant.tolist(), strict=True):
        r = [
            sum(y > row[j] or (y == row[j] and i < j) for i, y in enumerate(row))
            for j in range(len(row))
            if rel[j]
        ]
        ranks.append(sorted(r))
    return torch.gather(scores, 1, order), order, ranks


def packed(relevant: torch.Tensor):
    n_rel = relevant.sum(1)
    cols = torch.zeros(len(relevant), max(int(n_rel.max()), 1), dtype=torch.int64)
    for r, row in enumerate(relevant):
        c = row.nonzero().flatten()
        cols[r, : len(c)] = c
    return cols, n_rel


def check(scores, relevant, k):
    values, columns, rr = select_and_rank(scores, packed(relevant), k)
    want_values, want_columns, want_ranks = reference(scores, relevant, k)
    assert torch.equal(columns, want_columns)
    assert torch.equal(values, want_values)
    for row, want in zip(rr.ranks.tolist(), want_ranks, strict=True):
        assert row[: len(want)] == want
        assert all(x == float("inf") for x in row[len(want) :])
    assert torch.equal(rr.n_rel, relevant.sum(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [None, 2, 7, 1000])
def test_equals_the_references(dtype, levels):
    """Continuous scores, and scores on a few levels (many exact ties, among relevant items and
    across the k-th place); every k from 1 to G."""
    g = torch.Generator().manual_seed(levels or 0)
    for trial in range(12):
        r, n = 4, 60
        s = torch.randn(r, n, generator=g, dtype=dtype)
        if levels:
            s = torch.randint(0, levels, (r, n), generator=g).to(dtype)
        relevant = torch.rand(r, n, generator=g) < [0.02, 0.2, 0.5, 0.9][trial % 4]
        for k in (1, 7, n):
            check(s, relevant, k)


def test_signed_zeros_rows_without_relevant_items_and_all_equal_relevant_scores():
    s = torch.tensor(
        [[0.0, -0.0, 1.0, -0.0, 0.0], [3.0, 1.0, 2.0, 1.0, 0.5], [2.0, 2.0, 2.0, 1.0, 5.0]]
    )
    relevant = torch.tensor(
        [[True, True, False, True, False], [False] * 5, [True, True, True, False, False]]
    )
    for k in range(1, 6):
        check(s, relevant, k)


def test_a_sample_threshold_that_lets_too_few_through_is_lowered():
    """Ascending rows put the sample's large entries where the strided sample may miss the best
    ones: the rescan path must still return the exact top k."""
    s = torch.cat([torch.arange(500.0), torch.full((1,), 1000.0)]).unsqueeze(0).repeat(3, 1)
    s[1] = s[1].flip(0)
    s[2, ::7] = 2000.0  # many equal best values on the sample's stride
    relevant = torch.zeros_like(s, dtype=torch.bool)
    relevant[:, ::50] = True
    for k in (1, 16, 100, 400, 501):
        check(s, relevant, k)


def test_rows_with_many_ties_take_the_general_path():
    """More tied relevant items than are counted directly: the row's ranks come from
    ranks_from_scores (a stable sort), and equal the references."""
    n = 3 * TIES_COUNTED_DIRECTLY
    s = torch.zeros(2, n)
    s[1, ::3] = 1.0
    relevant = torch.ones(2, n, dtype=torch.bool)
    check(s, relevant, 5)
    values, columns, rr = select_and_rank(s, packed(relevant), 5)
    assert torch.equal(rr.ranks, ranks_from_scores(s, relevant).ranks)


def test_large_random_rows_equal_ranks_from_scores():
    """A realistic chunk (float32 products of unit vectors, a few hundred relevant items per row)
    against the library's sort-based path."""
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(40, 32, generator=g), dim=1)
    y = torch.nn.functional.normalize(torch.randn(5000, 32, generator=g), dim=1)
    s = x @ y.T
    relevant = torch.rand(40, 5000, generator=g) < 0.05
    values, columns, rr = select_and_rank(s, packed(relevant), 100)
    order = torch.argsort(-s, dim=1, stable=True)[:, :100]
    assert torch.equal(columns, order)
    assert torch.equal(rr.ranks, ranks_from_scores(s, relevant).ranks)
    assert np.isfinite(rr.ranks.numpy()[relevant.sum(1).numpy() > 0, 0]).all()


def test_refuses_what_its_kernel_cannot_take():
    s = torch.randn(3, 10)
    relevant = packed(torch.rand(3, 10) < 0.5)
    with pytest.raises(ValueError, match="float32 or float64 scores on the CPU"):
        select_and_rank(s.half(), relevant, 2)
    with pytest.raises(ValueError, match="1 ≤ k ≤ G"):
        select_and_rank(s, relevant, 11)
