"""Time and accuracy of each estimator in ``ndtracker.spectra`` against ``torch.linalg.svdvals``.

For each shape and spectrum, a stream of new batches is drawn from one fixed distribution (as a
layer's activations are, sample after sample) and each batch, mean-centred as the tracker does, is
measured by:

- ``svdvals``: ``torch.linalg.svdvals`` of the float32 matrix (what a naive tracker runs; the
  speedups are against it);
- ``floor``: one pass over the matrix (``x.square().sum()``), the bandwidth floor;
- ``exact``: every eigenvalue of the float64 Gram of the smaller side (all four metrics);
- ``randomized cold``: the streaming estimator with no previous direction (a fresh state);
- ``randomized warm``: the same estimator on a stream that has seen earlier batches;
- ``auto``: what ``Tracker(estimator="auto")`` picks with the default metrics, warm.

Times are medians over interleaved rounds (each round one new batch, the methods in rotating
order), each call including its host transfer (``measure_many``), and the re-measurement when a
randomized estimate misses its tolerance. Errors are the worst relative error over the rounds of
each metric the method computes, against the float64 SVD of the same matrix. Accuracy targets (the
core issue): stable_rank and participation_ratio within 1e-3, effective_rank and energy90 within 2%.

Run: ``python benchmarks/estimators.py`` (a few minutes on 2 cores) or ``--quick``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ndtracker import spectra
from ndtracker.vocabulary import METRICS
from ndtracker.spectra import Job, StreamingSpectrum, measure_many

SHAPES = ((256, 512), (1024, 4096), (4096, 768), (128 * 32 * 32, 64), (128, 64 * 32 * 32))
SPECTRA = ("power", "flat")
DEFAULT = frozenset({"stable_rank", "participation_ratio"})
ALL = frozenset(METRICS)
TOLERANCES = {"stable_rank": 1e-3, "participation_ratio": 1e-3, "effective_rank": 0.02, "energy90": 0.02}
METHODS = ("svdvals", "floor", "exact", "randomized cold", "randomized warm", "auto")
SHORT = {"stable_rank": "SR", "participation_ratio": "PR", "effective_rank": "ER", "energy90": "E90"}


@dataclass
class Tally:
    """Times (seconds) and worst relative error per metric of one method on one case."""

    times: list[float] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)
    estimators: set[str] = field(default_factory=set)

    def add_errors(self, got: list[float], oracle: list[float], metrics: frozenset[str]) -> None:
        """Fold one row's relative errors (the metrics computed only) into the worst so far."""
        for i, name in enumerate(METRICS):
            if name in metrics:
                error = abs(got[i] - oracle[i]) / abs(oracle[i])
                self.errors[name] = max(self.errors.get(name, 0.0), error)


def stream(rows: int, cols: int, spectrum: str, seed: int = 0) -> Iterator[torch.Tensor]:
    """Yield centred ``rows x cols`` float32 batches from one fixed Gaussian distribution.

    ``power``: population singular values σᵢ ∝ i^-1/2 (eigenvalues ∝ 1/i, as measured on real
    activations); ``flat``: white (the sample spectrum is Marchenko–Pastur, as at random init).
    """
    g = torch.Generator().manual_seed(seed)
    latent = min(cols, 4 * rows, 2048)
    scale = torch.arange(1, latent + 1, dtype=torch.float32) ** -0.5
    scale = scale if spectrum == "power" else torch.ones(latent)
    if latent == cols:
        mixing = torch.linalg.qr(torch.randn(cols, cols, generator=g)).Q
    else:
        mixing = torch.randn(latent, cols, generator=g) / math.sqrt(cols)
    mixing = scale[:, None] * mixing
    while True:
        x = torch.randn(rows, latent, generator=g) @ mixing
        yield x - x.mean(dim=0, keepdim=True)


def oracle(x: torch.Tensor) -> list[float]:
    """The four metrics from the float64 singular values, straight from their definitions."""
    return spectra.metrics_from_eigenvalues(torch.linalg.svdvals(x.double()) ** 2).tolist()


def timed(run: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def method_runner(name: str, x: torch.Tensor, states: dict[str, StreamingSpectrum]):
    """A zero-argument call measuring ``x`` by method ``name``; returns (row, metrics, estimator)."""
    if name == "svdvals":
        return lambda: (torch.linalg.svdvals(x), None, None)
    if name == "floor":
        return lambda: (x.square().sum().item(), None, None)
    if name == "exact":
        return lambda: _job(Job(x, "exact", ALL, None))
    if name == "randomized cold":
        return lambda: _job(Job(x, "randomized", DEFAULT, StreamingSpectrum()))
    if name == "randomized warm":
        return lambda: _job(Job(x, "randomized", DEFAULT, states["warm"]))
    chosen = spectra.choose_estimator(tuple(x.shape), DEFAULT)
    return lambda: _job(Job(x, chosen, DEFAULT, states["auto"]))


def _job(job: Job):
    table, used = measure_many([job])
    return table[0], job.metrics, used[0]


def run_case(rows: int, cols: int, spectrum: str, rounds: int, warmup: int) -> dict[str, Tally]:
    """Interleaved rounds over one stream; returns the tally of each method."""
    batches = stream(rows, cols, spectrum)
    states = {"warm": StreamingSpectrum(), "auto": StreamingSpectrum()}
    for x in itertools.islice(batches, warmup):
        for name in ("randomized warm", "auto"):
            method_runner(name, x, states)()
    tallies = {name: Tally() for name in METHODS}
    for r in range(rounds):
        x = next(batches)
        expected = oracle(x)
        order = METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]
        for name in order:
            seconds, (row, metrics, estimator) = timed(method_runner(name, x, states))
            tallies[name].times.append(seconds)
            if metrics is not None:
                tallies[name].add_errors(row, expected, metrics)
                tallies[name].estimators.add(estimator)
    tallies["randomized warm"].estimators.add(f"depth {states['warm'].depth}")
    return tallies


def verdict(tally: Tally) -> str:
    """'ok' when every computed metric is within its accuracy target, else the misses."""
    misses = [SHORT[m] for m, e in tally.errors.items() if e > TOLERANCES[m]]
    return "ok" if not misses else "MISS " + ",".join(misses)


def print_case(shape: tuple[int, int], spectrum: str, tallies: dict[str, Tally]) -> float:
    """Print one case's rows; return the speedup of the warm stream over svdvals."""
    svd = statistics.median(tallies["svdvals"].times)
    floor = statistics.median(tallies["floor"].times)
    for name in METHODS:
        tally = tallies[name]
        ms = statistics.median(tally.times) * 1e3
        errors = " ".join(
            f"{SHORT[m]}={tally.errors[m]:.1e}" if m in tally.errors else f"{SHORT[m]}=   -   "
            for m in METRICS
        )
        accuracy = verdict(tally) if tally.errors else ""
        used = ",".join(sorted(tally.estimators))
        print(
            f"{shape[0]:>6}x{shape[1]:<6} {spectrum:5} {name:16} {ms:10.2f} {svd * 1e3 / ms:9.1f}x "
            f"{ms / (floor * 1e3):8.0f}x  {errors}  {accuracy:8} {used}"
        )
    return svd / statistics.median(tallies["randomized warm"].times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, fewer rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = SHAPES[:2] if args.quick else SHAPES
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times in ms (median)")
    print(
        f"{'shape':>13} {'spec':5} {'method':16} {'ms':>10} {'vs svdvals':>10} {'vs floor':>8}  "
        f"worst relative error vs float64 SVD            accuracy estimator"
    )
    speedups = {}
    for shape, spectrum in itertools.product(shapes, SPECTRA):
        big = shape[0] * shape[1] > 2_000_000
        rounds = args.rounds or (3 if args.quick else (5 if big else 9))
        tallies = run_case(*shape, spectrum, rounds, warmup=4 if args.quick else 16)
        speedups[shape, spectrum] = print_case(shape, spectrum, tallies)
    for spectrum in SPECTRA:
        factor = speedups.get(((1024, 4096), spectrum))
        if factor is not None:
            status = "met" if factor >= 10 else "NOT met"
            print(f"target: warm stream at 1024x4096 ({spectrum}) >= 10x svdvals: {factor:.1f}x, {status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
