"""Blocks of a matrix split across ranks, reduced as sums, give the whole matrix's spectrum.

The ranks are simulated: each block's contribution is formed as a rank would, the contributions
are summed as ``all_reduce`` would, and the concluded matrix or Gram is measured against a float64
SVD of the whole (centred) matrix.
"""

from __future__ import annotations

import pytest
import torch

from ndtracker import spectra
from ndtracker.spectra import distributed as sharded

ALL = frozenset(("stable_rank", "participation_ratio", "effective_rank", "energy90"))


def svd_metrics(matrix: torch.Tensor) -> tuple[float, float]:
    lam = torch.linalg.svdvals(matrix.double()).square()
    return float(lam.sum() / lam[0]), float(lam.sum() ** 2 / lam.square().sum())


def reduce(blocks: list[sharded.Block], route, center):
    total = sum(sharded.contribution(block, route, center, torch.device("cpu")) for block in blocks)
    return sharded.conclude(total, route, blocks[0].rows, blocks[0].cols, center)


def measured(kind: str, value: torch.Tensor, estimator: str = "exact") -> tuple[float, float]:
    job = spectra.Job(value if kind == "gram" else value.float(), estimator, ALL if estimator == "exact"
                      else frozenset(("stable_rank", "participation_ratio")), gram=kind == "gram")  # fmt: skip
    result = spectra.measure_many([job])[0]
    return result.stable_rank, result.participation_ratio


@pytest.mark.parametrize("route", ["gather", "columns"])
@pytest.mark.parametrize("center", [True, False])
def test_row_blocks_give_the_whole_matrix(route, center):
    matrix = torch.randn(11, 6, dtype=torch.float64) + 3.0
    pieces = [(0, 4), (4, 4), (8, 3), (11, 0)]  # uneven, one empty
    blocks = [sharded.Block(11, 6, start, 0, matrix[start : start + n]) for start, n in pieces]
    blocks.append(sharded.Block(11, 6))  # a replica that adds nothing
    kind, value = reduce(blocks, route, center)
    whole = matrix - matrix.mean(0) if center else matrix
    assert kind == ("matrix" if route == "gather" else "gram")
    assert measured(kind, value) == pytest.approx(svd_metrics(whole), rel=1e-6)


@pytest.mark.parametrize("route", ["gather", "rows"])
def test_column_blocks_give_the_whole_matrix(route):
    matrix = torch.randn(5, 9, dtype=torch.float64) - 2.0
    blocks = [sharded.Block(5, 9, 0, start, matrix[:, start : start + n]) for start, n in [(0, 5), (5, 4)]]
    kind, value = reduce(blocks, route, center=True)
    assert measured(kind, value) == pytest.approx(svd_metrics(matrix - matrix.mean(0)), rel=1e-6)


def test_a_gram_job_with_the_randomized_estimator_is_within_tolerance():
    matrix = torch.randn(300, 200) @ torch.diag(torch.linspace(1, 3, 200))
    got = measured("gram", (matrix.T @ matrix).double(), estimator="randomized")
    assert got == pytest.approx(svd_metrics(matrix), rel=1e-3)


def test_routes_take_the_smallest_valid_payload():
    assert sharded.choose_route(1000, 10, row_split=True, col_split=False, center=True) == "columns"
    assert sharded.choose_route(10, 1000, row_split=True, col_split=False, center=True) == "gather"
    assert sharded.choose_route(10, 1000, row_split=False, col_split=True, center=True) == "rows"
    assert sharded.choose_route(10, 1000, row_split=True, col_split=True, center=True) == "gather"
    assert sharded.payload_size("columns", 7, 4, center=True) == 4 * 5 // 2 + 4


@pytest.mark.parametrize("size, parts", [(7, 2), (5, 4), (1, 4), (16, 4), (0, 3)])
def test_chunks_match_torch_chunk(size, parts):
    expected = [len(piece) for piece in torch.arange(size).chunk(parts)] if size else []
    got = [sharded.chunk(size, parts, index) for index in range(parts)]
    assert [n for _, n in got if n] == expected
    assert all(offset + n <= size for offset, n in got)


def test_a_block_that_does_not_span_the_route_is_refused():
    block = sharded.Block(4, 6, 0, 2, torch.ones(4, 3))
    with pytest.raises(ValueError, match="columns route needs blocks spanning all 6 columns"):
        sharded.contribution(block, "columns", True, torch.device("cpu"))
