"""A fixed probe batch: the same inputs measured at every sample, for low-noise activation curves.

``Tracker(model, probe=...)`` takes the probe batch in one of these forms:

- a tensor ``x``: the model is called as ``model(x)``;
- a dict ``{"input_ids": ids, "attention_mask": mask}``: ``model(**inputs)``;
- a pair ``(inputs, labels)``, as a data loader yields a batch (a tuple or a two-item list):
  ``inputs`` is a tensor, a dict of keyword inputs or a tuple of positional inputs, and
  ``labels`` one integer class index per example;
- :class:`Probe` ``(args=..., kwargs=..., labels=...)``: ``model(*args, **kwargs)``, the general
  form (several positional inputs, positional and keyword inputs together, labels optional).

A tuple is always read as ``(inputs, labels)``: several positional inputs are passed as
``Probe(args=(x1, x2))`` (or ``((x1, x2), labels)``), so a probe is never ambiguous. The labels
are checked at construction: a 1-D tensor, array or list of non-negative integers (a ``(B, 1)``
column is taken as 1-D), one per example of the probe batch (its inputs' first dimension).

Labels are optional: without them the probe gives the activation spectra; with them it also
gives, on the same probe batch, the class geometry (the ``classes`` table) and, with
``linear_probes=True``, each layer's linear-probe accuracy.

On a sampled step the probe runs under ``torch.no_grad()`` with every module in eval mode (each
module's ``training`` flag is restored exactly afterwards, without calling ``train()``), with its
tensors on the model's device and its floating-point tensors in the model's floating-point dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from torch import nn

__all__ = ["Probe", "ProbeRunner", "ProbeSpec", "as_probe"]

FORMS = (
    "pass probe=x for one input, probe={'name': x} for keyword inputs, probe=(inputs, labels) for "
    "a labelled batch, or probe=ndtracker.Probe(args=(x1, x2), kwargs={...}, labels=y) for several "
    "positional inputs"
)
SEVERAL_INPUTS = "to pass several positional inputs, use probe=ndtracker.Probe(args=(x1, x2))"


@dataclass(frozen=True)
class Probe:
    """A fixed probe batch: the inputs of ``model(*args, **kwargs)`` and, optionally, their labels.

    Attributes:
        args: Positional inputs.
        kwargs: Keyword inputs.
        labels: One integer class index per example (a 1-D tensor, array or list), or None. They
            give the class geometry and the linear probes on the probe batch.

    Example:
        >>> import torch
        >>> probe = Probe(args=(torch.zeros(4, 8),), kwargs={"mask": torch.ones(4, dtype=torch.bool)},
        ...               labels=torch.tensor([0, 1, 0, 1]))
        >>> len(probe.args), sorted(probe.kwargs), probe.labels.tolist()
        (1, ['mask'], [0, 1, 0, 1])
    """

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    labels: Any = None

    def map_tensors(self, convert: Any) -> Probe:
        """A probe whose input tensors (nested in tuples, lists and dicts too) went through ``convert``."""
        return Probe(_mapped(self.args, convert), _mapped(dict(self.kwargs), convert), self.labels)

    def describe(self) -> dict[str, Any]:
        """The shapes of the probe's inputs (a tensor as its shape) and labels, for ``run.json``."""
        shape = lambda t: list(t.shape)  # noqa: E731
        described = {"args": _described(self.args, shape), "kwargs": _described(dict(self.kwargs), shape)}
        return described | ({} if self.labels is None else {"labels": shape(self.labels)})

    def tensors(self) -> list[torch.Tensor]:
        """Every input tensor of the probe (the labels are not an input)."""
        found: list[torch.Tensor] = []
        self.map_tensors(lambda t: found.append(t) or t)
        return found

    @property
    def batch(self) -> int | None:
        """The probe's batch size: the first dimension of its first input tensor (None if 0-d)."""
        first = next((t for t in self.tensors() if t.dim()), None)
        return None if first is None else int(first.shape[0])


ProbeSpec = Union[torch.Tensor, tuple, list, Mapping[str, Any], Probe]


def as_probe(value: Any) -> Probe | None:
    """The ``probe=`` option as a checked :class:`Probe` (None stays None).

    Raises:
        ValueError: ``value`` is not one of the accepted forms, holds no input tensor, or its
            labels are not one non-negative integer class index per example.
    """
    if value is None:
        return None
    if isinstance(value, Probe):
        probe = Probe(tuple(value.args), dict(value.kwargs), value.labels)
    elif isinstance(value, (tuple, list)):
        probe = _pair(value)
    else:
        probe = _inputs(value, "probe")
    if not probe.tensors():
        raise ValueError(f"probe holds no tensor, got {value!r}; {FORMS}")
    if probe.labels is None:
        return probe
    return Probe(probe.args, probe.kwargs, check_labels(probe.labels, probe.batch, value))


def _pair(value: tuple | list) -> Probe:
    """``(inputs, labels)``, as a data loader's batch; anything else says how to pass several inputs."""
    if len(value) != 2:
        items = f"{len(value)} item" + ("" if len(value) == 1 else "s")
        raise ValueError(f"probe={_brief(value)} is a {type(value).__name__} of {items}; a tuple is read as "
                         f"(inputs, labels), as a data loader's batch; {SEVERAL_INPUTS}")  # fmt: skip
    inputs, labels = value
    if isinstance(inputs, (tuple, list)):
        probe = Probe(tuple(inputs))
    else:
        probe = _inputs(inputs, "probe[0] (the inputs of (inputs, labels))")
    if labels is None:
        raise ValueError(f"probe={_brief(value)}: the labels of (inputs, labels) are None; pass probe=inputs "
                         "without labels")  # fmt: skip
    if probe.labels is not None:
        raise ValueError("probe=(Probe(..., labels=...), labels) gives labels twice; pass them once")
    return Probe(probe.args, probe.kwargs, labels)


def _inputs(value: Any, name: str) -> Probe:
    if isinstance(value, Probe):
        return value
    if isinstance(value, torch.Tensor):
        return Probe((value,))
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return Probe((), dict(value))
    raise ValueError(f"{name} must be a tensor, a dict of keyword inputs, an (inputs, labels) pair or a "
                     f"Probe, got a {type(value).__name__}; {FORMS}")  # fmt: skip


def check_labels(labels: Any, batch: int | None, given: Any) -> torch.Tensor:
    """The probe's labels as a 1-D int64 CPU tensor, one non-negative class index per example.

    Raises:
        ValueError: The labels are not integers, not 1-D, negative, or not ``batch`` of them.
    """
    try:
        array = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    except Exception as error:
        raise ValueError(f"probe labels must be integer class indices, got {labels!r} ({error})") from error
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    problem = _label_problem(array, batch)
    if problem is not None:
        raise ValueError(
            f"probe={_brief(given)}: the labels must be one integer class index per example of the "
            f"probe batch ({batch} examples), got {problem}; {SEVERAL_INPUTS}"
        )
    return torch.from_numpy(array.astype(np.int64))


def _label_problem(array: np.ndarray, batch: int | None) -> str | None:
    """What is wrong with the labels, or None."""
    kind = f"{array.dtype} of shape {array.shape}"
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_):
        return f"a {kind}"
    if batch is not None and array.shape[0] != batch:
        return f"{array.shape[0]} labels"
    if array.size and array.min() < 0:
        return f"a negative label ({int(array.min())})"
    return None


def _brief(value: Any) -> str:
    """A short description of what was passed: tensors as their dtype and shape."""
    if isinstance(value, torch.Tensor):
        return f"tensor({str(value.dtype).removeprefix('torch.')}, shape={tuple(value.shape)})"
    if isinstance(value, np.ndarray):
        return f"array({value.dtype}, shape={value.shape})"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_brief(item) for item in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, Probe):
        return "Probe(...)"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key!r}: {_brief(item)}" for key, item in list(value.items())[:4]) + "}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
        """The shapes of the probe's inputs (and labels), for ``run.json``."""
        return self._probe.describe()

    @property
    def labels(self) -> torch.Tensor | None:
        """The probe's checked labels (a 1-D int64 CPU tensor), or None."""
        return self._probe.labels

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
