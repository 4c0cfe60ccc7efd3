"""Condensation of a layer's neurons: how many distinct input-weight directions they share.

A neuron's input-weight vector is its row of the weight reshaped to ``(out, in·k·k)``, with its
bias appended as one more input coordinate. Each row is normalised to unit length, so only its
direction counts, not its norm; ``Ŵ`` is the matrix of unit rows and ``K = ŴŴᵀ`` the cosine
matrix of the ``m`` neurons:

================  ===============================================================================
column            definition
================  ===============================================================================
``condensation``  fraction of the pairs of distinct neurons with |cos| ≥ 0.9 (K's off-diagonal
                  entries); 1 when every neuron lies on one line, 0 when no two are close
``directions``    participation ratio of K, (tr K)² / ‖K‖_F² = m² / ‖ŴᵀŴ‖_F²: the effective
                  number of distinct directions, 1 for duplicated neurons, m for orthogonal ones
================  ===============================================================================

Antiparallel neurons count as one direction (|cos| = 1). A neuron whose row and bias are all zero
has no direction: it is left out of both figures (NaN when fewer than two, or no, neurons are left). Above :data:`MAX_NEURONS` neurons, the fraction
of pairs is estimated on that many neurons drawn uniformly (seeded); ``directions`` always uses
every neuron (from the Gram of the smaller side). Reference: Luo, Xu, Ma & Zhang (2021), "Phase
diagram for two-layer ReLU neural networks at infinite-width limit"; Zhou et al. (2022),
"Towards understanding the condensation of neural networks at initial training".
"""

from __future__ import annotations

import torch

__all__ = ["THRESHOLD", "MAX_NEURONS", "input_directions", "condensation_tensor", "condensation"]

THRESHOLD = 0.9
MAX_NEURONS = 4096


def input_directions(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The unit input-weight vectors of the neurons: ``(out, in·k·k [+1])``.

    A neuron whose row and bias are all zero keeps an all-zero row (no boolean indexing, so no
    host synchronisation): it has cosine 0 with every neuron and with itself.

    Args:
        weight: A layer weight, ``(out, ...)``; a 1-D weight is one neuron.
        bias: ``(out,)`` or None; appended as the last input coordinate.
    """
    w = weight.detach()
    w = w.reshape(1, -1) if w.dim() <= 1 else w.reshape(w.shape[0], -1)
    dtype = torch.float64 if w.device.type == "cpu" else torch.float32
    w = w.to(dtype)
    if bias is not None and bias.dim() == 1 and bias.shape[0] == w.shape[0]:
        w = torch.cat([w, bias.detach().to(dtype)[:, None]], dim=1)
    tiny = torch.finfo(dtype).tiny
    w = w / w.abs().amax(1, keepdim=True).clamp_min(tiny)  # no float32 overflow in the norm
    return w / w.norm(dim=1, keepdim=True).clamp_min(tiny)


def condensation_tensor(
    weight: torch.Tensor, bias: torch.Tensor | None = None, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Enqueue ``[condensation, directions]`` on the weight's device; no host synchronisation.

    Fewer than two neurons with a direction give NaN for ``condensation``; none gives NaN for both.

    Args:
        weight: A layer weight, ``(out, ...)``.
        bias: ``(out,)`` or None.
        generator: Seeds the neuron subsample above :data:`MAX_NEURONS` neurons.
    """
    unit = input_directions(weight, bias)
    side = unit.T @ unit if unit.shape[1] < unit.shape[0] else unit @ unit.T
    count = unit.square().sum(1).round().sum()  # neurons with a direction (unit rows)
    directions = count.square() / side.square().sum()
    if unit.shape[0] > MAX_NEURONS:
        index = torch.randperm(unit.shape[0], generator=generator, device=unit.device)[:MAX_NEURONS]
        unit = unit.index_select(0, index)
        count = unit.square().sum(1).round().sum()
    close = ((unit @ unit.T).abs() >= THRESHOLD).sum() - count
    return torch.stack([close / (count * (count - 1)), directions])


def condensation(weight: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[float, float]:
    """``(condensation, directions)`` of one layer, as floats.

    Example:
        >>> import torch
        >>> [round(v, 6) for v in condensation(torch.ones(4, 3))]  # four copies of one neuron
        [1.0, 1.0]
        >>> [round(v, 6) for v in condensation(torch.eye(3))]  # three orthogonal neurons
        [0.0, 3.0]
    """
    with torch.no_grad():
        values = condensation_tensor(weight, bias).cpu().tolist()
    return values[0], values[1]
