"""Exact spectra of a matrix split across processes: blocks, Gram reductions, one all-reduce.

A global matrix ``M`` (``rows x cols``) lies in blocks over the ranks of a job: each rank holds
one block (possibly empty) at a row and column offset, or contributes nothing (a replica of a
block another rank already contributes). Three exact routes turn the blocks into what the spectral
metrics need, each a plain sum over ranks, so all of a sample's matrices travel together in one
float64 ``all_reduce`` (:func:`all_reduce_flat`):

========  ====================================  =================================  ===============
route     each rank adds                        valid when                         gives
========  ====================================  =================================  ===============
gather    its block into a zero ``rows x cols``  always                             ``M``
columns   ``XᵀX`` and column sums                every block spans all columns      ``MᵀM``, ``Σ``
rows      ``XXᵀ``                                every block spans all rows         ``MMᵀ``
========  ====================================  =================================  ===============

:func:`choose_route` takes the smallest valid payload; a Gram travels as its upper triangle
(``n(n+1)/2`` numbers). Centring uses the global mean: the
columns route gives ``MᵀM − n·μμᵀ`` (float64, so the cancellation costs ~1e-16 relative per
unit of (mean/spread)²), the rows route ``H·MMᵀ·H`` with ``H = I − 11ᵀ/n``, the gather route
centres ``M`` itself. A Gram is measured as a ``Job(gram, ..., gram=True)`` of
:func:`ndtracker.spectra.measure_many` (either estimator), a gathered ``M`` as any matrix.
This module knows nothing of models, trackers or files; it takes a process group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist


__all__ = [
    "Block", "Route", "chunk", "choose_route", "payload_size", "contribution", "conclude",
    "all_reduce_flat",
]  # fmt: skip

Route = Literal["gather", "columns", "rows"]


@dataclass(frozen=True)
class Block:
    """This rank's share of a global matrix.

    Attributes:
        rows, cols: The global matrix's shape.
        row_offset, col_offset: Where this rank's block starts in it.
        data: The block (``r x c``, any float dtype), or None when this rank adds nothing.
    """

    rows: int
    cols: int
    row_offset: int = 0
    col_offset: int = 0
    data: torch.Tensor | None = None


def chunk(size: int, parts: int, index: int) -> tuple[int, int]:
    """Offset and length of piece ``index`` of ``size`` split in ``parts`` as ``torch.chunk`` does.

    Pieces hold ``ceil(size / parts)`` items, the last ones fewer or none (the layout of
    ``Shard(dim)`` placements, FSDP2 and tensor parallelism included).
    """
    step = -(-size // parts) if parts else size
    offset = min(index * step, size)
    return offset, min(step, size - offset)


def payload_size(route: Route, rows: int, cols: int, center: bool) -> int:
    """Float64 numbers a route adds to the reduction buffer (a Gram travels as its upper triangle)."""
    if route == "gather":
        return rows * cols
    if route == "columns":
        return _triangle(cols) + (cols if center else 0)
    return _triangle(rows)


def _triangle(side: int) -> int:
    return side * (side + 1) // 2


def _upper(side: int, device: torch.device) -> torch.Tensor:
    """The boolean mask of a ``side x side`` matrix's upper triangle, diagonal included."""
    return torch.ones(side, side, dtype=torch.bool, device=device).triu()


def _packed(gram: torch.Tensor) -> torch.Tensor:
    return gram[_upper(gram.shape[0], gram.device)]


def _unpacked(packed: torch.Tensor, side: int) -> torch.Tensor:
    upper = torch.zeros(side, side, dtype=packed.dtype, device=packed.device)
    upper[_upper(side, packed.device)] = packed
    return upper + upper.T - torch.diag(upper.diagonal())


def choose_route(rows: int, cols: int, row_split: bool, col_split: bool, center: bool) -> Route:
    """The valid route with the smallest payload (``gather`` on ties: it keeps the estimator).

    Args:
        rows, cols: The global matrix's shape.
        row_split: Blocks hold different rows (then ``rows`` is not valid).
        col_split: Blocks hold different columns (then ``columns`` is not valid).
        center: Column sums travel with the columns route.
    """
    routes: list[Route] = ["gather"]
    if not col_split:
        routes.append("columns")
    if not row_split:
        routes.append("rows")
    return min(routes, key=lambda route: payload_size(route, rows, cols, center))


def contribution(block: Block, route: Route, center: bool, device: torch.device) -> torch.Tensor:
    """This rank's flat float64 payload for ``route`` (zeros when it adds nothing)."""
    size = payload_size(route, block.rows, block.cols, center)
    out = torch.zeros(size, dtype=torch.float64, device=device)
    x = block.data
    if x is None or x.numel() == 0:
        return out
    x = x.to(device=device, dtype=torch.float64)
    r, c = x.shape
    if route == "gather":
        view = out.view(block.rows, block.cols)
        view[block.row_offset : block.row_offset + r, block.col_offset : block.col_offset + c] = x
    elif route == "columns":
        _check_span(c, block.cols, "columns")
        out[: _triangle(c)] = _packed(x.T @ x)
        if center:
            out[_triangle(c) :] = x.sum(0)
    else:
        _check_span(r, block.rows, "rows")
        out.copy_(_packed(x @ x.T))
    return out


def _check_span(local: int, total: int, route: str) -> None:
    if local != total:
        raise ValueError(f"the {route} route needs blocks spanning all {total} {route}, got {local}")


def conclude(
    summed: torch.Tensor, route: Route, rows: int, cols: int, center: bool
) -> tuple[Literal["matrix", "gram"], torch.Tensor]:
    """Turn a summed payload into the matrix to measure or its (centred) Gram.

    Returns:
        ``("matrix", M)`` for the gather route (``rows x cols``, centred when asked), else
        ``("gram", G)``: ``G`` has the non-zero eigenvalues of the centred ``MᵀM``.
    """
    if route == "gather":
        matrix = summed.view(rows, cols)
        if center and rows:
            matrix = matrix - matrix.mean(0, keepdim=True)
        return "matrix", matrix
    if route == "columns":
        gram = _unpacked(summed[: _triangle(cols)], cols)
        if center and rows:
            sums = summed[_triangle(cols) :]
            gram = gram - torch.outer(sums, sums) / rows
        return "gram", gram
    gram = _unpacked(summed, rows)
    if center and rows:
        gram = gram - gram.mean(0, keepdim=True) - gram.mean(1, keepdim=True) + gram.mean()
        gram = (gram + gram.T) / 2  # the double centring's round-off is not quite symmetric
    return "gram", gram


def all_reduce_flat(
    parts: list[torch.Tensor], group: dist.ProcessGroup | None = None
) -> list[torch.Tensor]:
    """Sum flat tensors over the ranks of ``group`` with one ``all_reduce``; same sizes back.

    Every rank must pass tensors of the same sizes, in the same order. Nothing is sent for an
    empty list.
    """
    if not parts:
        return []
    buffer = torch.cat(parts)
    dist.all_reduce(buffer, group=group)
    return list(buffer.split([part.numel() for part in parts]))

