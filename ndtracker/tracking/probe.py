"""A fixed probe batch: the same inputs measured at every sample, for low-noise activation curves.

``Tracker(model, probe=...)`` takes the model's inputs in one of four forms:

- a tensor ``x``: the model is called as ``model(x)``;
- a tuple ``(x1, x2)``: ``model(x1, x2)`` (positional inputs; a one-input model may also take
  ``(x,)``);
- a dict ``{"input_ids": ids, "attention_mask": mask}``: ``model(**inputs)``;
- :class:`Probe` ``(args, kwargs)``: ``model(*args, **kwargs)``, for positional and keyword inputs
  together.

Labels are never needed (the probe measures activations, not a loss): pass the inputs only. A
tuple taken from a data loader, ``(inputs, labels)``, would be two positional inputs; the check at
construction says so when the model cannot take them.

On a sampled step the probe runs under ``torch.no_grad()`` with every module in eval mode (each
module's ``training`` flag is restored exactly afterwards, without calling ``train()``), with its
tensors on the model's device and its floating-point tensors in the model's floating-point dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn

__all__ = ["Probe", "ProbeRunner", "ProbeSpec", "as_probe"]

FORMS = (
    "pass probe=x for one positional input, probe=(x1, x2) for several, probe={'name': x} for "
    "keyword inputs or probe=ndtracker.tracking.Probe(args, kwargs) for both; labels are not needed"
)


@dataclass(frozen=True)
class Probe:
    """The inputs of a fixed probe batch: ``model(*args, **kwargs)``.

    Attributes:
        args: Positional inputs.
        kwargs: Keyword inputs.

    Example:
        >>> import torch
        >>> probe = Probe((torch.zeros(4, 8),), {"mask": torch.ones(4, dtype=torch.bool)})
        >>> len(probe.args), sorted(probe.kwargs)
        (1, ['mask'])
    """

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def map_tensors(self, convert: Any) -> Probe:
        """A probe whose tensors (nested in tuples, lists and dicts too) went through ``convert``."""
        return Probe(_mapped(self.args, convert), _mapped(dict(self.kwargs), convert))

    def describe(self) -> dict[str, Any]:
        """The shapes of the probe's inputs (a tensor as its shape), for ``run.json``."""
        shape = lambda t: list(t.shape)  # noqa: E731
        return {"args": _described(self.args, shape), "kwargs": _described(dict(self.kwargs), shape)}

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the probe."""
        found: list[torch.Tensor] = []
        self.map_tensors(lambda t: found.append(t) or t)
        return found


ProbeSpec = Union[torch.Tensor, tuple, Mapping[str, Any], Probe]


def as_probe(value: Any) -> Probe | None:
    """The ``probe=`` option as a :class:`Probe` (None stays None).

    Raises:
        ValueError: ``value`` holds no tensor, or is not one of the accepted forms.
    """
    if value is None:
        return None
    if isinstance(value, Probe):
        probe = Probe(tuple(value.args), dict(value.kwargs))
    elif isinstance(value, torch.Tensor):
        probe = Probe((value,))
    elif isinstance(value, tuple):
        probe = Probe(value)
    elif isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        probe = Probe((), dict(value))
    else:
        raise ValueError(f"probe must be a tensor, a tuple, a dict of keyword inputs or a Probe, got "
                         f"a {type(value).__name__}; {FORMS}")  # fmt: skip
    if not probe.tensors():
        raise ValueError(f"probe holds no tensor, got {value!r}; {FORMS}")
    return probe


class ProbeRunner:
    """Run a probe through a model, keeping its tensors on the model's device between runs.

    Args:
        model: The (unwrapped) model.
        probe: The checked probe.
    """

    def __init__(self, model: nn.Module, probe: Probe) -> None:
        self._model, self._probe = model, probe
        self._placed: tuple[tuple, Probe] | None = None  # (device and dtype, probe moved there)

    def describe(self) -> dict[str, Any]:
        """The shapes of the probe's inputs, for ``run.json``."""
        return self._probe.describe()

    def run(self) -> None:
        """Run the probe in eval mode without autograd; restore every module's training flag.

        The output is dropped: the Tracker's hooks take what they measure during the forward.
        """
        model = self._model
        flags = [(module, module.training) for module in model.modules()]
        inputs = self._inputs()
        try:
            model.eval()
            with torch.no_grad():
                model(*inputs.args, **inputs.kwargs)
        finally:
            for module, training in flags:
                module.training = training

    def _inputs(self) -> Probe:
        reference = next(self._model.parameters(), None)
        if reference is None:
            reference = next(self._model.buffers(), None)
        if reference is None:
            return self._probe
        key = (reference.device, reference.dtype)
        if self._placed is None or self._placed[0] != key:
            self._placed = (key, self._probe.map_tensors(_converter(reference)))
        return self._placed[1]


def _converter(reference: torch.Tensor) -> Any:
    """A tensor converter to ``reference``'s device, and its dtype for floating-point tensors."""

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        floating = tensor.is_floating_point() and reference.is_floating_point()
        return tensor.to(device=reference.device, dtype=reference.dtype if floating else tensor.dtype)

    return convert


def _mapped(value: Any, convert: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return convert(value)
    if isinstance(value, dict):
        return {key: _mapped(item, convert) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        items = [_mapped(item, convert) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def _described(value: Any, shape: Any) -> Any:
    """``value`` as JSON-ready text: tensors as their shapes, other leaves as their type's name."""
    if isinstance(value, torch.Tensor):
        return shape(value)
    if isinstance(value, dict):
        return {str(key): _described(item, shape) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_described(item, shape) for item in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__
