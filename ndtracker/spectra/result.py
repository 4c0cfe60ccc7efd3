"""The named record a measurement returns (the device computes a flat vector; the host names it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ndtracker.spectra.exact import ROW_FIELDS

__all__ = ["Result"]


@dataclass(frozen=True)
class Result:
    """One matrix measured: its four metrics, how far λ₁ can be trusted, and what the data was.

    Attributes:
        stable_rank, participation_ratio, effective_rank, energy90: The metrics (NaN when not
            asked for, or when the matrix is empty, all-zero or non-finite).
        lambda_error: Relative error estimate of λ₁: 0 for the exact estimator, the Lanczos
            residual bound for the streaming one, NaN when a float32 route could not be trusted.
        finite: Every entry of the matrix was finite.
        energy: Σλ = ‖X‖_F² (0 for an all-zero matrix).
        estimator: ``"exact"`` or ``"randomized"``: the estimator that produced these figures.
    """

    stable_rank: float
    participation_ratio: float
    effective_rank: float
    energy90: float
    lambda_error: float
    finite: bool
    energy: float
    estimator: str

    @classmethod
    def from_row(cls, row: Sequence[float], estimator: str) -> Result:
        """Name a host row laid out as :data:`ndtracker.spectra.exact.ROW_FIELDS`."""
        if len(row) != len(ROW_FIELDS):
            raise ValueError(f"a result row has {len(ROW_FIELDS)} fields {ROW_FIELDS}, got {len(row)}")
        values = dict(zip(ROW_FIELDS, (float(v) for v in row)))
        values["finite"] = values["finite"] >= 1
        return cls(**values, estimator=estimator)  # type: ignore[arg-type]

    @property
    def metrics(self) -> tuple[float, float, float, float]:
        """The four metrics, in :data:`ndtracker.vocabulary.METRICS` order."""
        return (self.stable_rank, self.participation_ratio, self.effective_rank, self.energy90)
