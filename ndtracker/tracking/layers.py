"""Which modules a Tracker watches, and what it measures of each: output tensor and weight.

Layer selection (``layers=``), the default choice of modules, the cap (whole repeated blocks, evenly
spaced over depth),
the weight matrix of each module type (looked up at each sample: tied, replaced, parametrized and
lazy weights included), the tensor to measure in tuple, dict, dataclass, ``PackedSequence`` and
other outputs, and how to see through ``torch.compile`` and data-parallel wrappers.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    """One tracked module, its per-space streaming state and the capture of the current sample.

    Attributes:
        name: Module name as in ``model.named_modules()``.
        module: The module.
        channels_first: Whether the module's outputs hold channels in dim 1 (convolutions).
        streams: Warm-start state per space.
        capture: The activation matrix captured on the current sampled step, if any.
        captured_in_training: Whether ``capture`` comes from a training forward (an eval-mode
            capture, taken with ``track_eval``, gives way to a later training forward).
        examples: The same forward's output as one row per example, or None: for the class
            geometry (with labels) the activations' rows (the shared example index), else, for
            ``similarity`` or ``linear_probes``, the first examples (see
            :func:`ndtracker.spectra.similarity.example_matrix`); ``batch`` is its batch size
            before any row subsample (0 when the rows are not the whole batch's).
        measured: The capture already measured in the forward hook, as ``(job, result)`` (the
            job's matrix a shape-only ``meta`` tensor), when the sample's captures outgrew the
            bytes a sample may hold (see :data:`ndtracker.tracking.capture.HELD_BYTES`); the
            capture itself is then dropped.
    """

    name: str
    module: nn.Module
    channels_first: bool
    streams: dict[str, StreamingSpectrum] = field(default_factory=dict)
    capture: torch.Tensor | None = None
    captured_in_training: bool = False
    root: Any = field(default=None, repr=False)  # weakref.ref to the model, to see a replacement
    examples: torch.Tensor | None = None
    batch: int = 0
    measured: tuple[Any, Any] | None = None  # (spectra.Job, spectra.Result | None)

    @property
    def weight(self) -> torch.Tensor | None:
        """The parameter measured as the weight space (see :func:`layer_weight`), or None.

        Looked up on every call, so a parameter replaced after the Tracker was built (weights tied
        later, ``model.to(...)`` with swapped tensors) is the one measured. None, too, once the
        module was replaced in the model (its orphaned weight no longer trains) and for a complex
        weight (see :func:`unmeasured_weight`).
        """
        return None if self.unmeasured_weight() else layer_weight(self.module)

    def unmeasured_weight(self) -> str | None:
        """Why this layer's weight is not measured (replaced module, complex weight), or None."""
        model = self.root() if self.root is not None else None
        if model is not None and _submodule(model, self.name) is not self.module:
            return (f"layer {self.name!r} was replaced in the model after the Tracker was built; "
                    "its old module is no longer measured (build a new Tracker to track the new one)")
        weight = layer_weight(self.module)
        if weight is not None and weight.is_complex():
            return f"its weight is complex ({weight.dtype}); complex weights are not measured"
        return None

    def clear(self) -> None:
        """Drop the capture of the current sample."""
        self.capture, self.captured_in_training, self.measured = None, False, None
        self.examples, self.batch = None, 0

    def info(self) -> dict[str, Any]:
        """Name, type and weight shape, for the run's metadata."""
        shape = None if self.weight is None else list(self.weight.shape)
        return {"name": self.name, "type": type(self.module).__name__, "weight_shape": shape}


# ------------------------------------------------------------------------------ layer selection


def select_layers(
    model: nn.Module,
    spec: LayerSpec | Sequence[LayerSpec] | None,
    max_layers: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[TrackedLayer]:
    """Resolve a ``layers=`` specification to tracked layers, in model order.

    The model itself counts too (named ``""``, as in ``named_modules()``), so a bare
    ``nn.Linear`` or ``nn.LSTM`` can be tracked; glob patterns never match it. The default
    selection is capped at ``max_layers`` by :func:`cap_layers`, and ``warn`` is told what was left out.

    Raises:
        ValueError: If an entry matches no module, or nothing trackable is found.
    """
    named = list(model.named_modules())
    if spec is None:
        chosen, note = cap_layers(_default_layers(named), max_layers)
        if note and warn is not None:
            warn(note)
    else:
        chosen = _match_layers(model, named, spec)
    if not chosen:
        raise ValueError(
            f"no trackable layer in {type(model).__name__}: it has no Linear, Conv, attention or RNN "
            f"module and no leaf module with a 2-D weight; pass layers=[...] to choose modules"
        )
    return [_make_layer(name, module, model) for name, module in chosen]


def cap_layers(chosen: list[tuple[str, Any]], max_layers: int | None) -> tuple[list[tuple[str, Any]], str | None]:
    """Keep at most ``max_layers`` of the default layers, whole repeated blocks at a time.

    A *block* is a layer's path up to its first numeric component (``encoder.layer.3`` of
    ``encoder.layer.3.attention.self.query``): the repeated units of a deep model. Layers outside
    any block (stems, heads, poolers) are all kept; then as many blocks as fit, evenly spaced over
    depth, each with all of its layers, so every kept block is measured the same way. When not even
    that fits, the layers themselves are spaced evenly.

    Returns:
        The kept layers in model order, and a note saying what was left out (None if nothing).
    """
    if max_layers is None or len(chosen) <= max_layers:
        return list(chosen), None
    keys = [_block_of(name) for name, _ in chosen]
    blocks = list(dict.fromkeys(key for key in keys if key is not None))
    sizes = {block: keys.count(block) for block in blocks}
    budget = max_layers - keys.count(None)
    kept_blocks = _fitting_blocks(blocks, sizes, budget)
    if kept_blocks:
        kept = [item for item, key in zip(chosen, keys) if key is None or key in kept_blocks]
        how = f"{len(kept_blocks)} of {len(blocks)} repeated blocks, whole and evenly spaced over depth"
    else:
        kept, how = evenly_spaced(list(chosen), max_layers), "evenly spaced over depth"
    note = (
        f"tracking {len(kept)} of {len(chosen)} layers (max_layers={max_layers}): {how}; pass "
        f"max_layers=None to track all {len(chosen)}, or layers=[...] to choose"
    )
    return kept, note


def _block_of(name: str) -> str | None:
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return None


def _fitting_blocks(blocks: list[str], sizes: dict[str, int], budget: int) -> set[str]:
    for count in range(len(blocks), 0, -1):
        picked = evenly_spaced(blocks, count)
        if sum(sizes[block] for block in picked) <= budget:
            return set(picked)
    return set()


def evenly_spaced(items: list, count: int) -> list:
    """Keep ``count`` items spread evenly from first to last (all of them if fewer)."""
    if count is None or len(items) <= count:
        return list(items)
    if count == 1:
        return [items[0]]
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def _default_layers(named: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    inside = [f"{name}." if name else "" for name, m in named if isinstance(m, nn.MultiheadAttention)]
    return [(n, m) for n, m in named if _is_layer(m) and not _starts_with_any(n, inside)]


def _starts_with_any(name: str, prefixes: list[str]) -> bool:
    """Whether ``name`` lies inside a module named by one of ``prefixes`` (``""``: the root)."""
    return any(name.startswith(prefix) and name != prefix.rstrip(".") for prefix in prefixes)


def _is_layer(module: nn.Module) -> bool:
    if isinstance(module, _NEVER_BY_DEFAULT):
        return False
    if isinstance(module, _LAYER_TYPES):
        return True
    weight = _materialized(getattr(module, "weight", None))
    has_children = next(module.children(), None) is not None
    return weight is not None and weight.dim() >= 2 and not has_children


def _match_layers(model: nn.Module, named, spec) -> list[tuple[str, nn.Module]]:
    if isinstance(spec, (str, type, nn.Module)):
        entries = [spec]
    elif isinstance(spec, Iterable):
        entries = list(spec)
    else:
        raise TypeError(f"layers must be a name, a glob pattern, a module type, a module or a list of "
                        f"them, got {spec!r}")  # fmt: skip
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
        return name == entry or (name != "" and fnmatch.fnmatchcase(name, entry))
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
    names = [n for n, _ in named if n][:8]
    return (
        f"layers entry {shown!r} matched no module of {type(model).__name__}; module names start "
        f"with: {names}"
    )


def _make_layer(name: str, module: nn.Module, model: nn.Module) -> TrackedLayer:
    return TrackedLayer(name, module, isinstance(module, _CHANNELS_FIRST), root=weakref.ref(model))


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def warn_unmeasured(layers: list[TrackedLayer], warn) -> None:
    """Warn (once per layer, through ``warn``) about each layer whose weight is not measured."""
    for layer in layers:
        why = layer.unmeasured_weight()
        if why:
            warn(layer.name, "weight", why)


def layer_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias that goes with :func:`layer_weight` (one entry per output neuron), or None."""
    if isinstance(module, nn.MultiheadAttention):
        bias = module.in_proj_bias
    elif isinstance(module, nn.RNNBase):
        bias = getattr(module, f"bias_hh_l{module.num_layers - 1}", None)
    else:
        bias = getattr(module, "bias", None)
    bias = _materialized(bias)
    return bias if bias is not None and bias.dim() == 1 else None


def layer_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight matrix measured for a module (None if it has none).

    ``weight`` where present; for attention, the input projection (``in_proj_weight``, or
    ``q_proj_weight`` when q, k and v have separate projections); for RNN/LSTM/GRU, the last
    layer's hidden-to-hidden weight ``weight_hh_l{N-1}`` (the recurrent dynamics). None too for a
    lazy module's weight before its first forward.
    """
    if isinstance(module, nn.MultiheadAttention):
        weight = module.in_proj_weight
        weight = weight if weight is not None else module.q_proj_weight
    elif isinstance(module, nn.RNNBase):
        weight = getattr(module, f"weight_hh_l{module.num_layers - 1}")
    else:
        weight = getattr(module, "weight", None)
    weight = _materialized(weight)
    return weight if weight is not None and weight.dim() >= 1 else None


def _materialized(weight: Any) -> torch.Tensor | None:
    """``weight`` if it is a tensor with data (not a lazy module's placeholder), else None."""
    if not isinstance(weight, torch.Tensor) or nn.parameter.is_lazy(weight):
        return None
    return weight


# ------------------------------------------------------------------------------ outputs


def first_tensor(output: Any, key: str | None = None) -> torch.Tensor | None:
    """The tensor to measure in a module's output.

    A tensor as is; a ``PackedSequence``'s data; the first tensor of a tuple or list (an LSTM's
    ``(output, (h, c))`` gives ``output``); for a mapping (Hugging Face outputs included), the
    value under ``key``, else the first tensor value; for a dataclass, its field ``key``, else its
    first tensor field; for any other object, its attribute ``key``. None when nothing matches.
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
    if key is not None and hasattr(output, key):
        return first_tensor(getattr(output, key))
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return _first_of(getattr(output, f.name) for f in dataclasses.fields(output))
    return None


def _first_of(items: Iterable[Any]) -> torch.Tensor | None:
    for item in items:
        found = first_tensor(item)
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------------------ wrappers

_PARALLEL_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrapped(model: nn.Module) -> nn.Module:
    """The user's own model inside ``torch.compile`` and (Distributed)DataParallel wrappers.

    Layer names then read as in the user's model (no ``_orig_mod.`` or ``module.`` prefix), the
    same with and without the wrappers; the hooks go on the same module objects either way.
    """
    while True:
        inner = getattr(model, "_orig_mod", None) if type(model).__name__ == "OptimizedModule" else None
        if inner is None and isinstance(model, _PARALLEL_WRAPPERS):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def recompile_with_hooks(model: nn.Module, warn: Callable[[str], None]) -> None:
    """Make a compiled model that already ran see the hooks just installed on it.

    ``torch.compile`` does not guard its graphs on module hooks, so a graph compiled before the
    Tracker existed keeps running without them (and no activation is captured). When the model is
    compiled and something was compiled already, the compiler's in-process caches are reset
    (``torch.compiler.reset()``: the model, and any other compiled code, compiles once more on its
    next call), and ``warn`` says so.
    """
    if not is_compiled(model) or not _anything_compiled():
        return
    torch.compiler.reset()
    warn(
        "the model was compiled and run before the Tracker was built: ndtracker reset "
        "torch.compile's caches (torch.compiler.reset()) so that it recompiles with the tracker's "
        "hooks on its next call; build the Tracker before the first forward to avoid this"
    )


def _anything_compiled() -> bool:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - a torch without dynamo
        return False
    return counters["stats"]["unique_graphs"] > 0


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` or one of its submodules went through ``torch.compile`` / ``Module.compile``."""
    return any(
        type(module).__name__ == "OptimizedModule" or getattr(module, "_compiled_call_impl", None) is not None
        for module in model.modules()
    )
