"""Measure a whole sample's matrices together: one batch, one host transfer, named results.

Two estimators, both built on the Gram matrix of the smaller side (``XXᵀ`` or ``XᵀX``):

* ``exact`` (:mod:`ndtracker.spectra.exact`): eigenvalues of the Gram, all of them (float64) when a
  full-spectrum metric is asked for, else only the top one of a float32 Gram.
* ``randomized`` (:mod:`ndtracker.spectra.lanczos`, streaming): Σλ and Σλ² from the float32 Gram,
  λ₁ by a Lanczos iteration warm-started from the previous sample's top direction;
  ``stable_rank`` and ``participation_ratio`` only.

:func:`measure_many` measures the matrices of a whole sample together, with one host transfer, and
redoes exactly any randomized result whose λ₁ error estimate misses :data:`TOLERANCE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ndtracker.spectra.exact import HOST_SIDE, ROW_FIELDS, empty_row, exact_gram, given_gram, row_from_gram
from ndtracker.spectra.lanczos import TOLERANCE, Krylov, StreamingSpectrum, group_key, prepare, prepare_gram, run
from ndtracker.spectra.result import Result
from ndtracker.spectra.stacked import StackedGrams, StackedLanczos, chunks, run_stack, stack_key
from ndtracker.spectra.threads import one_thread
from ndtracker.vocabulary import ESTIMATORS, FULL_SPECTRUM, METRICS, Estimator

__all__ = ["SMALL_SIDE", "Job", "choose_estimator", "measure_many", "measure"]

_ERROR = ROW_FIELDS.index("lambda_error")

SMALL_SIDE = 96  # Grams this small are cheaper to eigendecompose than to iterate on


def choose_estimator(
    shape: tuple[int, int], metrics: frozenset[str] | set[str], requested: str = "auto"
) -> Estimator:
    """Pick the estimator for a matrix of this shape (``requested="auto"``) or check a request.

    ``auto`` takes ``exact`` when a full-spectrum metric is wanted or the smaller side is at most
    :data:`SMALL_SIDE` (an eigendecomposition that small costs less than the iteration), and
    ``randomized`` otherwise. An explicit ``randomized`` on a tiny matrix is honoured.
    """
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if FULL_SPECTRUM & set(metrics) or min(shape) <= SMALL_SIDE:
        return "exact"
    return "randomized"


@dataclass
class Job:
    """One matrix to measure in a batch (see :func:`measure_many`).

    With ``gram=True``, ``matrix`` is not the matrix but its Gram (``XᵀX`` or ``XXᵀ``, symmetric
    positive semi-definite, any float dtype), as a reduction across processes gives it
    (:mod:`ndtracker.spectra.distributed`): it is measured as the spectrum of ``X``.
    """

    matrix: torch.Tensor
    estimator: Estimator
    metrics: frozenset[str]
    state: StreamingSpectrum | None = None
    gram: bool = False


def measure_many(jobs: list[Job]) -> list[Result]:
    """Measure a batch of matrices with one host transfer (two if a stream missed its tolerance).

    Randomized streams whose Grams have the same small size share one batched Lanczos run (at
    these sizes the cost is in the number of tensor operations, not in the arithmetic). The small
    eigenproblems (Rayleigh–Ritz, Grams of at most :data:`HOST_SIDE`) are solved on the host after
    the transfer, so on a GPU the sample synchronises once, not once per layer. Results whose λ₁
    error estimate exceeds :data:`TOLERANCE`, or is NaN (a float32 route could not be trusted:
    non-finite entries, or magnitudes out of float32's range), are measured again (:func:`_redo`:
    a second transfer, for those rows only), and every stream tunes its Lanczos depth from its
    error (:meth:`StreamingSpectrum.adapt`). So every figure returned is within the tolerance, and
    misses stay rare once a stream has settled. CPU work runs on one intra-op thread while the
    CPUs are oversubscribed and the matrices small (:mod:`ndtracker.spectra.threads`: threads
    only add waits there).

    Returns:
        One :class:`Result` per job, in order, each naming the estimator that produced it.

    Raises:
        ValueError: On a job with an unknown estimator, or with a full-spectrum metric and
            ``"randomized"``.
    """
    if not jobs:
        return []
    with one_thread(job.matrix for job in jobs):
        table = _measure_rows(jobs)
        used = [j.estimator for j in jobs]
        redo = [i for i, row in enumerate(table) if not row[_ERROR] <= TOLERANCE]  # NaN included
        for i, job in enumerate(jobs):
            if job.state is not None and job.estimator == "randomized":
                job.state.adapt(table[i][_ERROR])
                job.state.fallbacks += int(i in redo)
        if redo:
            _redo(jobs, redo, table, used)
    return [Result.from_row(row, estimator) for row, estimator in zip(table, used)]


def _redo(jobs: list[Job], redo: list[int], table: list[list[float]], used: list[str]) -> None:
    """Measure again, in place, the rows that missed the tolerance or could not be trusted.

    A stream that missed by a finite margin first runs again at the depth :meth:`adapt` just
    doubled, warm-started from the direction it just found: a few milliseconds, where the exact
    float64 eigendecomposition that settles anything still missed (and every untrusted row)
    costs tens at a 512-wide Gram.
    """
    deeper = [i for i in redo if math.isfinite(table[i][_ERROR]) and jobs[i].state is not None]
    if deeper:
        for i, row in zip(deeper, _measure_rows([jobs[i] for i in deeper])):
            table[i] = row if row[_ERROR] <= TOLERANCE else table[i]
    exact = [i for i in redo if not table[i][_ERROR] <= TOLERANCE]
    if exact:
        again = [Job(jobs[i].matrix, "exact", jobs[i].metrics, gram=jobs[i].gram) for i in exact]
        for i, row in zip(exact, _measure_rows(again, wide=True)):
            table[i], used[i] = row, "exact"


def measure(
    matrix: torch.Tensor,
    *,
    estimator: Estimator,
    metrics: frozenset[str] | set[str] = frozenset(METRICS),
    state: StreamingSpectrum | None = None,
) -> Result:
    """Measure one matrix: metrics, λ₁ error estimate, finiteness flag and total energy.

    Unlike :func:`measure_many`, a randomized result that misses :data:`TOLERANCE` is returned as
    it is (its error estimate says so) and the stream's depth is not tuned.

    Args:
        matrix: 2-D float tensor ``(rows, features)``.
        estimator: ``"exact"`` or ``"randomized"`` (the latter for ``stable_rank`` and
            ``participation_ratio`` only).
        metrics: The metrics wanted; the others come back NaN.
        state: The stream's warm-start state (``randomized`` only); updated in place.

    Returns:
        The :class:`Result`: the four metrics, the relative error estimate of λ₁ (0 for exact; NaN
        when the float32 route cannot be trusted), whether every entry was finite, and Σλ (0 for
        an all-zero matrix).

    Raises:
        ValueError: On an unknown estimator or a full-spectrum metric with ``"randomized"``.
    """
    with one_thread([matrix]):
        row = _measure_rows([Job(matrix, estimator, frozenset(metrics), state)])[0]
    return Result.from_row(row, estimator)


def _check(job: Job) -> None:
    if job.estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {job.estimator!r}")
    if job.estimator == "randomized" and FULL_SPECTRUM & set(job.metrics):
        raise ValueError(
            f"estimator='randomized' gives stable_rank and participation_ratio only, got metrics "
            f"{sorted(job.metrics)}; use estimator='exact' for effective_rank and energy90"
        )


@dataclass
class _DeviceRow:
    """A result row computed on the device (empty matrices, exact Grams above HOST_SIDE)."""

    parts: list[torch.Tensor]

    def conclude(self, parts: list[torch.Tensor]) -> list[list[float]]:
        return [parts[0].tolist()]


@dataclass
class _HostGram:
    """A small exact Gram, decomposed on the host after the transfer, in the dtype it was formed in
    (so round-off is judged by the precision the Gram really has)."""

    parts: list[torch.Tensor]
    metrics: frozenset[str]
    wide: bool

    def conclude(self, parts: list[torch.Tensor]) -> list[list[float]]:
        gram = parts[0].to(self.parts[0].dtype)
        return [row_from_gram(gram, self.metrics, self.wide).tolist()]


def _measure_rows(jobs: list[Job], wide: bool = False) -> list[list[float]]:
    """Each job's result row: device work for all jobs, one transfer, then the host's share.

    Matrices of one shape measured by a moments-only route are stacked and measured by one batched
    run (:mod:`ndtracker.spectra.stacked`). Randomized Grams of one small size are formed into one
    batch buffer and share a Lanczos run;
    a job whose Gram is too large to batch runs at once, and no Gram is kept past its run, so at
    most one large Gram is alive at a time (the batched ones are at most :data:`BATCH_SIDE`
    square). ``wide`` makes the exact estimator work in float64 whatever the metrics (for
    re-measurements).
    """
    for job in jobs:
        _check(job)
    pending: list[tuple[list[int], _DeviceRow | _HostGram | Krylov | StackedGrams | StackedLanczos]] = []
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    stacks: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    for i, job in enumerate(jobs):
        x = job.matrix.float()
        if not wide and (key := stack_key(x, job.estimator, job.metrics, job.state, job.gram)) is not None:
            stacks.setdefault(key, []).append((i, x))
        elif x.shape[0] == 0 or x.shape[1] == 0:
            pending.append(([i], _DeviceRow([empty_row(x)])))
        elif job.estimator == "exact":
            pending.append(([i], _exact_pending(job.matrix if job.gram else x, job.metrics, wide, job.gram)))
        elif (key := group_key(x, job.metrics)) is None or job.gram and "participation_ratio" not in job.metrics:
            pending.append(([i], run([_prepare(job, x, _state(job))])))
        else:
            groups.setdefault(key, []).append((i, x))
    for (side, device, metrics), members in groups.items():
        grams = torch.empty(len(members), side, side, device=device, dtype=torch.float32)
        prepared = [_prepare(jobs[i], x, _state(jobs[i]), out) for (i, x), out in zip(members, grams)]
        pending.append(([i for i, _ in members], run(prepared, grams)))
    for key, members in stacks.items():
        for chunk in chunks(members, key[1]):
            states = [_state(jobs[i]) for i, _ in chunk]
            pending.append(([i for i, _ in chunk], run_stack(key, [x for _, x in chunk], states)))
    rows: list[list[float]] = [[]] * len(jobs)
    for (indices, item), parts in zip(pending, _to_host([item.parts for _, item in pending])):
        for i, row in zip(indices, item.conclude(parts)):
            rows[i] = row
    return rows


def _prepare(job: Job, x: torch.Tensor, state: StreamingSpectrum, out: torch.Tensor | None = None):
    """A randomized job up to its Lanczos run, from its matrix or from its (float32) Gram."""
    if job.gram:
        return prepare_gram(x, job.metrics, state, out)
    return prepare(x, job.metrics, state, out)


def _state(job: Job) -> StreamingSpectrum:
    """The job's stream state, or a fresh one for a job measured without a stream."""
    return job.state if job.state is not None else StreamingSpectrum()


def _exact_pending(
    x: torch.Tensor, metrics: frozenset[str], wide: bool, given: bool = False
) -> _DeviceRow | _HostGram:
    gram = given_gram(x, metrics, wide) if given else exact_gram(x, metrics, wide)
    if gram.shape[0] <= HOST_SIDE:
        return _HostGram([gram], metrics, wide)
    return _DeviceRow([row_from_gram(gram, metrics, wide)])


def _to_host(batches: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Move every tensor to the host with one transfer per device; same nesting and shapes.

    Each device's tensors travel as one flat buffer in float64 (float32 from MPS, which has no
    float64), and come back as views of it on the CPU.
    """
    flat = [t for batch in batches for t in batch]
    host: list[torch.Tensor | None] = [None] * len(flat)
    by_device: dict[torch.device, list[int]] = {}
    for k, tensor in enumerate(flat):
        by_device.setdefault(tensor.device, []).append(k)
    for device, ks in by_device.items():
        dtype = torch.float32 if device.type == "mps" else torch.float64
        buffer = torch.cat([flat[k].reshape(-1).to(dtype) for k in ks]).cpu()
        for k, piece in zip(ks, buffer.split([flat[k].numel() for k in ks])):
            host[k] = piece.view(flat[k].shape)
    out, k = [], 0
    for batch in batches:
        out.append(host[k : k + len(batch)])
        k += len(batch)
    return out  # type: ignore[return-value]
