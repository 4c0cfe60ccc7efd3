"""Matrices to spectra to metrics: pure torch, on the tensor's own device.

Definitions (singular values σ₁ ≥ σ₂ ≥ … of the matrix, λᵢ = σᵢ²):

=======================  ==========================================  =================================
metric                   formula                                     note
=======================  ==========================================  =================================
``stable_rank``          Σλ / λ₁ = ‖X‖_F² / ‖X‖₂²                    needs λ₁ and the total only
``participation_ratio``  (Σλ)² / Σλ² = ‖X‖_F⁴ / ‖XᵀX‖_F²            on eigenvalues, not on σ
``effective_rank``       exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ / Σσ             Roy & Vetterli 2007
``energy90``             min k with Σ_{i≤k} λᵢ ≥ 0.9 Σλ              an integer
=======================  ==========================================  =================================

The modules: :mod:`~ndtracker.spectra.matrices` (layer outputs and weights to 2-D matrices),
:mod:`~ndtracker.spectra.exact` (Gram eigenvalues), :mod:`~ndtracker.spectra.lanczos` (the
streaming estimator), :mod:`~ndtracker.spectra.batch` (a sample's matrices in one batch),
:mod:`~ndtracker.spectra.stacked` (same-shape matrices as one stack),
:mod:`~ndtracker.spectra.result` (the named record), :mod:`~ndtracker.spectra.precision` and
:mod:`~ndtracker.spectra.threads` (how a measurement runs).
This package knows nothing of the Tracker, of files or of detection.
"""

from __future__ import annotations

from ndtracker.spectra.batch import SMALL_SIDE, Job, choose_estimator, measure, measure_many
from ndtracker.spectra.exact import exact_spectrum, gram_matrix, metrics_from_eigenvalues, symmetric_product
from ndtracker.spectra.lanczos import TOLERANCE, StreamingSpectrum
from ndtracker.spectra.matrices import ConvLayout, activation_matrix, subsample_rows, weight_matrix
from ndtracker.spectra.precision import full_precision
from ndtracker.spectra.result import Result
from ndtracker.spectra.threads import one_thread

__all__ = [
    "TOLERANCE", "SMALL_SIDE", "Job", "Result", "StreamingSpectrum", "ConvLayout",
    "measure_many", "measure", "choose_estimator", "full_precision", "one_thread",
    "activation_matrix", "subsample_rows", "weight_matrix", "metrics_from_eigenvalues",
    "exact_spectrum", "gram_matrix", "symmetric_product",
]  # fmt: skip
