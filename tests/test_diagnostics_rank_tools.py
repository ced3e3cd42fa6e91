"""Rank tools: C(r), greedy allocation (checked against exhaustive search) and κ_t."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from loralab.diagnostics.rank_tools import (
    GradientSubspaceTracker,
    captured_energy,
    cumulative_energy,
    gradient_subspace_overlap,
    greedy_rank_allocation,
    rank_for_energy,
)


def test_cumulative_energy_known_values() -> None:
    d = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    expected = torch.tensor([9 / 14, 13 / 14, 1.0], dtype=torch.float64)
    assert torch.allclose(cumulative_energy(d), expected)
    assert torch.allclose(cumulative_energy(torch.tensor([1.0, 3.0, 2.0])), expected)  # unsorted σ input
    assert torch.all(cumulative_energy(torch.zeros(3, 3)) == 0)


def test_rank_for_energy() -> None:
    d = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    assert rank_for_energy(d, 0.5) == 1
    assert rank_for_energy(d, 0.9) == 2  # 13/14 ≈ 0.93
    assert rank_for_energy(d, 1.0) == 3
    assert rank_for_energy(torch.zeros(2, 2), 0.9) == 0
    with pytest.raises(ValueError):
        rank_for_energy(d, 0.0)


def test_greedy_allocation_matches_exhaustive_search_for_equal_costs() -> None:
    g = torch.Generator().manual_seed(0)
    spectra = {f"l{i}": torch.sort(torch.rand(5, generator=g) * (i + 1), descending=True).values for i in range(3)}
    shapes = {k: (8, 8) for k in spectra}
    for n_ranks in (0, 2, 5, 9, 15):
        budget = 16 * n_ranks
        alloc = greedy_rank_allocation(spectra, shapes, budget)
        assert sum(alloc.values()) * 16 <= budget
        best = max(
            captured_energy(spectra, dict(zip(spectra, ranks)))
            for ranks in itertools.product(range(6), repeat=3)
            if sum(ranks) * 16 <= budget
        )
        assert captured_energy(spectra, alloc) == pytest.approx(best, rel=1e-12)


def test_greedy_allocation_unequal_costs_hand_example() -> None:
    spectra = {"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([4.0, 4.0])}
    shapes = {"a": (5, 5), "b": (10, 10)}  # cost per rank: 10 and 20; gains/param: a 0.9, 0.1; b 0.8, 0.8
    assert greedy_rank_allocation(spectra, shapes, 30) == {"a": 1, "b": 1}
    # b's first rank no longer fits after a's first: skip b, keep filling with a.
    assert greedy_rank_allocation(spectra, shapes, 25) == {"a": 2, "b": 0}
    assert greedy_rank_allocation(spectra, shapes, 1000, max_rank=1) == {"a": 1, "b": 1}


def test_greedy_allocation_normalized_objective() -> None:
    spectra = {"a": torch.tensor([10.0, 5.0]), "b": torch.tensor([0.2, 0.2])}
    shapes = {"a": (4, 4), "b": (4, 4)}
    assert greedy_rank_allocation(spectra, shapes, 16) == {"a": 2, "b": 0}
    assert greedy_rank_allocation(spectra, shapes, 16, normalize=True) == {"a": 1, "b": 1}


def test_gradient_subspace_overlap_and_tracker() -> None:
    e = torch.eye(6, dtype=torch.float64)
    g1 = torch.diag(torch.tensor([5.0, 4.0, 0.1, 0.1, 0.0, 0.0], dtype=torch.float64))
    g2 = torch.diag(torch.tensor([0.1, 0.1, 5.0, 4.0, 0.0, 0.0], dtype=torch.float64))
    assert gradient_subspace_overlap(g1, 3.0 * g1, 2) == pytest.approx(1.0)
    assert gradient_subspace_overlap(g1, g2, 2) == pytest.approx(0.0)
    assert gradient_subspace_overlap(g1, g2, 2, side="both") == pytest.approx(0.0)
    g3 = e[:, [0, 2]] @ torch.diag(torch.tensor([5.0, 4.0], dtype=torch.float64)) @ e[:, [0, 2]].T
    assert gradient_subspace_overlap(g1, g3, 2) == pytest.approx(0.5)
    tr = GradientSubspaceTracker(2)
    assert math.isnan(tr.update(g1))
    assert tr.update(g1) == pytest.approx(1.0)
    assert tr.update(g2) == pytest.approx(0.0)
    assert len(tr.history) == 3
    with pytest.raises(ValueError):
        GradientSubspaceTracker(2, side="up")
