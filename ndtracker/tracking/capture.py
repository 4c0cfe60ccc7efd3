"""Forward hooks on the tracked layers and the capped float32 copy each keeps of a sampled step.

The hooks are installed only around sampled steps (``hooks="sampled"``) or for good, gated by one
flag (``hooks="permanent"``, for ``torch.compile``); they never monkeypatch ``forward`` and never
use global module hooks. A capture never raises into the user's forward: a failure is warned
about once per layer and the layer skipped for that sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ndtracker import spectra
from ndtracker.spectra.classes import example_matrix
from ndtracker.tracking.distributed import local_tensor
from ndtracker.tracking.layers import TrackedLayer, first_tensor
from ndtracker.spectra import full_precision, one_thread
from ndtracker.spectra.similarity import DEFAULT_ROWS, example_matrix as first_examples
from ndtracker.tracking.options import Options

Warn = Callable[[str, str, str], None]

HELD_BYTES = 64 * 2**20
"""Bytes of captures a sampled step may hold; past them, the held captures are measured at once.

A capture (up to ``max_rows`` float32 rows of a layer's output) would otherwise live from its
forward to :meth:`~ndtracker.Tracker.step`, across the backward pass, when training memory
peaks: for a transformer with tens of wide layers, gigabytes. Measured in the hook, in one batch
(same-shape layers stacked), the captures shrink to a result row each, so the extra memory of a
sampled step is bounded by this constant (plus the batch's transient copies), whatever the number
of tracked layers. Small models never reach it: their sample is measured in one batch at the
step's end, with one host transfer; a large one spends one transfer per measured batch.
"""

NO_TENSOR = (
    "its output (a {}) holds no tensor; pass output_key='<key or attribute>' to name the one to "
    "measure, or layers=[...] to leave this layer out"
)


class Capturer:
    """The hooks of one Tracker and the captures of the sampled step in progress.

    Args:
        model: The (unwrapped) model, whose training flag counts as the layers' own.
        layers: The tracked layers; their ``capture`` receives the matrices.
        options: The Tracker's checked options (``hooks``, ``conv``, ``max_rows``, ``center``,
            ``track_eval``, ``output_key``, ``seed`` and ``spaces`` are read).
        warn: ``warn(layer, space, message)``, the Tracker's warn-once.
    """

    def __init__(
        self, model: nn.Module, layers: list[TrackedLayer], options: Options, warn: Warn
    ) -> None:
        self.armed = False
        self.probing = False  # capture the probe's forward, whatever its mode
        self._model, self._layers, self._options, self._warn = model, layers, options, warn
        self._handles: list[Any] = []
        self._generators: dict[torch.device, torch.Generator] = {}
        self._hooked = "activation" in options.spaces
        self.examples = False  # capture one row per example of >2-D outputs (labels expected)
        self.example_indices: dict[int, torch.Tensor] = {}  # batch size -> kept examples (host)
        self._draws: dict[int, torch.Tensor] = {}  # row count -> rows kept, shared by the sample's layers
        self._host_generator = torch.Generator().manual_seed(options.seed)
        self.measure_early: Callable[[list[TrackedLayer]], None] | None = None  # set by the sampler
        self._held: list[TrackedLayer] = []  # final captures not measured yet
        self._held_bytes = 0
        self.on_forward = opaque_to_compiler(self.capture_forward, options.hooks)
        if options.hooks == "permanent":
            self.install()

    def arm(self, probing: bool = False) -> None:
        """Make the hooks capture during this step (installing them first with sampled hooks).

        Args:
            probing: Capture the first forward of each layer whatever its mode (the probe's
                forward runs in eval mode under ``torch.no_grad()``).
        """
        self.armed, self.probing = True, probing
        if self._options.hooks == "sampled":
            self.install()

    def disarm(self) -> None:
        """Stop capturing and drop every capture (removing the hooks with sampled hooks)."""
        self.armed = self.probing = False
        self._held, self._held_bytes = [], 0
        self.example_indices.clear()
        self._draws.clear()
        for layer in self._layers:
            layer.clear()
        if self._options.hooks == "sampled":
            self.remove()

    def install(self) -> None:
        """Register one forward hook per tracked layer (none when activations are not measured)."""
        if not self._hooked or self._handles:
            return
        for layer in self._layers:
            self._handles.append(layer.module.register_forward_hook(ActivationHook(self, layer)))

    def remove(self) -> None:
        """Remove every hook this capturer added."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def capture_forward(self, layer: TrackedLayer, module: nn.Module, output: Any) -> None:
        """Capture this forward's output unless the step already holds a better one (never raises).

        The first training forward wins; with ``track_eval``, an eval or ``no_grad`` forward is
        kept until a training forward replaces it. While probing, the first forward wins.
        """
        if self.probing:
            if layer.capture is None and layer.measured is None:
                self._capture(layer, output, False)
            return
        if layer.captured_in_training:
            return
        training = torch.is_grad_enabled() and (module.training or self._model.training)
        if training or (self._options.track_eval and layer.capture is None):
            self._capture(layer, output, training)

    def _capture(self, layer: TrackedLayer, output: Any, training: bool) -> None:
        """Keep the layer's output as a capped float32 matrix (never raises)."""
        try:
            tensor = first_tensor(output, self._options.output_key)
            if tensor is None:
                self._warn(layer.name, "activation", NO_TENSOR.format(type(output).__name__))
                return
            tensor = local_tensor(tensor)  # a DTensor's shard, a pending collective's result
            with torch.no_grad(), full_precision([tensor.device.type]), one_thread([tensor]):
                self._capture_tensor(layer, tensor)
            layer.captured_in_training = training
        except Exception as error:  # a monitor never stops training
            self._warn(layer.name, "activation", f"capture failed: {error!r}")
            return
        if training or self.probing:  # final: no later forward replaces it
            self._hold(layer)

    def _hold(self, layer: TrackedLayer) -> None:
        """Count a final capture; past :data:`HELD_BYTES`, measure every held capture now."""
        if self.measure_early is None or layer.capture is None:
            return
        self._held.append(layer)
        self._held_bytes += layer.capture.numel() * layer.capture.element_size()
        if self._held_bytes > HELD_BYTES:
            held, self._held, self._held_bytes = self._held, [], 0
            self.measure_early(held)  # never raises (a failure is a NaN row, warned about)
            if not (self.examples or self._options.similarity or self._options.linear_probes):
                for layer in held:  # a 2-D capture doubles as the example rows no feature reads
                    layer.examples, layer.batch = None, 0

    def _capture_tensor(self, layer: TrackedLayer, tensor: torch.Tensor) -> None:
        """The activation capture and, for the class geometry, the example rows.

        An output of at most two dims has one row per example: its capture is its example matrix,
        and (once labels are expected) it is subsampled with the sample's shared example index,
        so the labels can be subsampled identically. A sequence or convolution output is averaged
        over its tokens or positions into example rows, only once labels are expected.
        """
        batch = tensor.shape[0] if tensor.dim() else 0
        index = self._example_index(batch, tensor.device) if self.examples else None
        if tensor.dim() <= 2:
            source = tensor if index is None else tensor.index_select(0, index)
            layer.capture = own_copy(self._matrix(layer, source), tensor)
            whole = index is not None or self._options.max_rows is None or batch <= self._options.max_rows
            layer.examples, layer.batch = (layer.capture, batch) if whole and batch else (None, 0)
            if not self.examples and (self._options.similarity or self._options.linear_probes):
                self._first_examples(layer, tensor, batch)  # uncentred, at most DEFAULT_ROWS
            return
        layer.capture = own_copy(self._matrix(layer, tensor), tensor)
        if self.examples:
            layer.examples = example_matrix(tensor, channels_first=layer.channels_first, index=index)
            layer.batch = batch
        elif self._options.similarity or self._options.linear_probes:
            self._first_examples(layer, tensor, batch)

    def _first_examples(self, layer: TrackedLayer, tensor: torch.Tensor, batch: int) -> None:
        """Similarity's and the probes' rows before labels are expected: the first examples.

        Once labels are expected, those features read the class geometry's rows (the shared
        example index; the tracker subsamples the probes' labels the same way).
        """
        rows = first_examples(tensor, channels_first=layer.channels_first, rows=DEFAULT_ROWS)
        layer.examples = own_copy(rows, tensor)
        layer.batch = batch if rows.shape[0] == batch else 0

    def _example_index(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """The examples kept from a batch of this size (shared by every layer), or None for all."""
        cap = self._options.max_rows
        if cap is None or batch <= cap:
            return None
        if batch not in self.example_indices:
            self.example_indices[batch] = torch.randperm(batch, generator=self._host_generator)[:cap]
        return self.example_indices[batch].to(device, non_blocking=True)

    def _matrix(self, layer: TrackedLayer, tensor: torch.Tensor) -> torch.Tensor:
        options = self._options
        return spectra.activation_matrix(
            tensor,
            channels_first=layer.channels_first,
            conv=options.conv,  # type: ignore[arg-type]
            max_rows=options.max_rows,
            center=options.center,
            generator=self._generator(tensor.device),
            draws=self._draws,
        )

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._options.seed)
        return self._generators[device]


class ActivationHook:
    """The forward hook of one tracked layer: hand the output over while the capturer is armed.

    Only ``capturer.armed`` is read before the hand-over, so a ``torch.compile``d model guards on
    that flag (one compiled variant per value, no recompilation per step) and runs the capture,
    opaque to the compiler, only on sampled steps. A pickled or deep-copied hook is inert: a model
    saved or copied while hooks are installed stays picklable and the copy never feeds the tracker.
    """

    def __init__(self, capturer: Capturer | None, layer: TrackedLayer | None) -> None:
        self._capturer, self._layer = capturer, layer

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        capturer = self._capturer
        if capturer is not None and capturer.armed:
            capturer.on_forward(self._layer, module, output)

    def __reduce__(self) -> tuple[type, tuple[None, None]]:
        return (ActivationHook, (None, None))


def opaque_to_compiler(function: Any, hook_mode: str) -> Any:
    """Wrap the capture so ``torch.compile`` calls it as is instead of tracing it (permanent hooks)."""
    if hook_mode != "permanent":
        return function
    return torch.compiler.disable(function)


def own_copy(matrix: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Return ``matrix``, copied if it shares memory with the layer output.

    A view of the output (``center=False``, float32, no subsample) would keep the whole output
    alive until the step ends and would see later in-place changes (``ReLU(inplace=True)``).
    """
    if matrix.untyped_storage().data_ptr() == output.untyped_storage().data_ptr():
        return matrix.clone()
    return matrix
