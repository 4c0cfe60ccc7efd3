"""Which modules a Tracker watches, and what it measures of each: output tensor and weight.

Layer selection (``layers=``), the default choice of modules, the cap with even spacing over depth,
the weight matrix of each module type, and the tensor to measure in tuple, dict, dataclass and
``PackedSequence`` outputs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ndtracker.spectra import StreamingSpectrum

LayerSpec = str | type | nn.Module
DEFAULT_MAX_LAYERS = 64

_CHANNELS_FIRST = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.modules.batchnorm._BatchNorm,
)  # fmt: skip
_LAYER_TYPES = (nn.Linear, nn.MultiheadAttention, nn.RNNBase, *_CHANNELS_FIRST[:6])
_NEVER_BY_DEFAULT = (nn.Embedding, nn.EmbeddingBag)


@dataclass
class TrackedLayer:
    """One tracked module, its weight, and its per-space streaming state.

    Attributes:
        name: Module name as in ``model.named_modules()``.
        module: The module.
        weight: The parameter measured as the weight space (see :func:`layer_weight`), or None.
        channels_first: Whether the module's outputs hold channels in dim 1 (convolutions).
        streams: Warm-start state per space.
        capture: The activation matrix captured on the current sampled step, if any.
    """

    name: str
    module: nn.Module
    weight: torch.Tensor | None
    channels_first: bool
    streams: dict[str, StreamingSpectrum] = field(default_factory=dict)
    capture: torch.Tensor | None = None

    def info(self) -> dict[str, Any]:
        """Name, type and weight shape, for the run's metadata."""
        shape = None if self.weight is None else list(self.weight.shape)
        return {"name": self.name, "type": type(self.module).__name__, "weight_shape": shape}


# ------------------------------------------------------------------------------ layer selection


def select_layers(
    model: nn.Module, spec: LayerSpec | Sequence[LayerSpec] | None, max_layers: int | None = None
) -> list[TrackedLayer]:
    """Resolve a ``layers=`` specification to tracked layers, in model order.

    Raises:
        ValueError: If an entry matches no module, or nothing trackable is found.
    """
    named = [(name, module) for name, module in model.named_modules() if name]
    if spec is None:
        chosen = _default_layers(named)
        chosen = evenly_spaced(chosen, max_layers) if max_layers else chosen
    else:
        chosen = _match_layers(model, named, spec)
    if not chosen:
        raise ValueError(
            f"no trackable layer in {type(model).__name__}: it has no Linear, Conv, attention or RNN "
            f"module and no leaf module with a 2-D weight; pass layers=[...] to choose modules"
        )
    return [_make_layer(name, module) for name, module in chosen]


def evenly_spaced(items: list, count: int) -> list:
    """Keep ``count`` items spread evenly from first to last (all of them if fewer)."""
    if count is None or len(items) <= count:
        return list(items)
    if count == 1:
        return [items[0]]
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def _default_layers(named: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    attention = [name for name, m in named if isinstance(m, nn.MultiheadAttention)]
    inside_attention = lambda name: any(name.startswith(a + ".") for a in attention)  # noqa: E731
    return [(n, m) for n, m in named if _is_layer(m) and not inside_attention(n)]


def _is_layer(module: nn.Module) -> bool:
    if isinstance(module, _NEVER_BY_DEFAULT):
        return False
    if isinstance(module, _LAYER_TYPES):
        return True
    weight = getattr(module, "weight", None)
    has_children = next(module.children(), None) is not None
    return isinstance(weight, torch.Tensor) and weight.dim() >= 2 and not has_children


def _match_layers(model: nn.Module, named, spec) -> list[tuple[str, nn.Module]]:
    entries = [spec] if isinstance(spec, (str, type, nn.Module)) else list(spec)
    if not entries:
        raise ValueError("layers must name at least one module, got an empty list")
    chosen: dict[str, nn.Module] = {}
    for entry in entries:
        matches = [(n, m) for n, m in named if _matches(entry, n, m)]
        if not matches:
            raise ValueError(_no_match_message(entry, model, named))
        chosen.update(matches)
    order = {name: i for i, (name, _) in enumerate(named)}
    return sorted(chosen.items(), key=lambda item: order[item[0]])


def _matches(entry: LayerSpec, name: str, module: nn.Module) -> bool:
    if isinstance(entry, str):
        return name == entry or fnmatch.fnmatchcase(name, entry)
    if isinstance(entry, type):
        return isinstance(module, entry)
    if isinstance(entry, nn.Module):
        return module is entry
    raise TypeError(
        f"layers entries must be names, glob patterns, module types or modules, got {entry!r}"
    )


def _no_match_message(entry: LayerSpec, model: nn.Module, named) -> str:
    shown = entry.__name__ if isinstance(entry, type) else entry
    if isinstance(entry, nn.Module):
        shown = f"a {type(entry).__name__} module"
    names = [n for n, _ in named][:8]
    return (
        f"layers entry {shown!r} matched no module of {type(model).__name__}; module names start "
        f"with: {names}"
    )


def _make_layer(name: str, module: nn.Module) -> TrackedLayer:
    return TrackedLayer(name, module, layer_weight(module), isinstance(module, _CHANNELS_FIRST))


def layer_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight matrix measured for a module (None if it has none).

    ``weight`` where present; for attention, the input projection (``in_proj_weight``, or
    ``q_proj_weight`` when q, k and v have separate projections); for RNN/LSTM/GRU, the last
    layer's hidden-to-hidden weight ``weight_hh_l{N-1}`` (the recurrent dynamics).
    """
    if isinstance(module, nn.MultiheadAttention):
        weight = module.in_proj_weight
        return weight if weight is not None else module.q_proj_weight
    if isinstance(module, nn.RNNBase):
        return getattr(module, f"weight_hh_l{module.num_layers - 1}")
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.dim() >= 1 else None


# ------------------------------------------------------------------------------ outputs


def first_tensor(output: Any, key: str | None = None) -> torch.Tensor | None:
    """The tensor to measure in a module's output.

    A tensor as is; a ``PackedSequence``'s data; the first tensor of a tuple or list (an LSTM's
    ``(output, (h, c))`` gives ``output``); for a mapping (Hugging Face outputs included), the
    value under ``key``, else the first tensor value; for a dataclass, its first tensor field.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, nn.utils.rnn.PackedSequence):
        return output.data
    if isinstance(output, Mapping):
        if key is not None and key in output:
            return first_tensor(output[key])
        return _first_of(output.values())
    if isinstance(output, (tuple, list)):
        return _first_of(output)
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return _first_of(getattr(output, f.name) for f in dataclasses.fields(output))
    return None


def _first_of(items: Iterable[Any]) -> torch.Tensor | None:
    for item in items:
        found = first_tensor(item)
        if found is not None:
            return found
    return None
