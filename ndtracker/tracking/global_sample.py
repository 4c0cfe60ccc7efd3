"""One sampled step measured over a whole torch.distributed job, the same on every rank.

Every rank runs the same collectives in the same order, whatever failed locally (a local failure
travels as a flag and zeros, never as a missing call):

1. activations (``activations="global"``): one ``all_gather`` of each layer's row count, width
   and feature offset (5 int64 per layer and rank), so every rank plans the global batch alike;
2. one float64 ``all_reduce`` of every reduced matrix of the sample together (see
   :mod:`ndtracker.spectra.distributed`: the Gram of the unsplit side, or the blocks themselves
   where that Gram would be larger) plus one failure flag per matrix;
3. every matrix is measured by one owner rank (round robin over the sample's matrices), and one
   ``all_reduce`` of the result rows (9 float64 each) gives every rank the same figures.

Plain weights (DDP, replicated) are measured by their owner as they are; DTensor weights (FSDP2
``fully_shard``, ``parallelize_module``) sharded by plain ``Shard``/``Replicate`` placements over a
mesh spanning the job are reduced as blocks; other placements (FSDP2 over tensor parallelism's
``_StridedShard``, ``Partial``) are gathered by ``DTensor.full_tensor()`` (one more collective each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from ndtracker import spectra
from ndtracker.spectra import Job, Result, StreamingSpectrum
from ndtracker.spectra import distributed as sharded
from ndtracker.spectra.exact import ROW_FIELDS
from ndtracker.tracking.layers import TrackedLayer
from ndtracker.tracking.options import Options
from ndtracker.tracking.parallel_layout import Layout, is_dtensor
from ndtracker.tracking.sample import measure_jobs, no_forward_message
from ndtracker.vocabulary import ESTIMATORS

__all__ = ["GlobalSample"]

Warn = Callable[[str, str, str], None]
Key = tuple[str, str, int]
_RESULT = len(ROW_FIELDS)  # result row: ROW_FIELDS, estimator code, measured flag
_NONE, _FAILED = -1, -2  # row counts that say "no capture" and "capture unusable" in the metadata


@dataclass
class _Slot:
    """One matrix of the sample, logged under one or more layers (a tied weight)."""

    layer: TrackedLayer
    space: str
    names: list[str]
    shape: tuple[int, int] = (0, 0)
    local: bool = False  # measured by each rank on its own (activations="local")
    dropped: bool = False  # no rank captured it: no row
    failed: bool = False  # known on every rank
    route: sharded.Route | None = None  # reduced across ranks by this route
    center: bool = False
    take: Callable[[], sharded.Block] | None = None  # this rank's block (may raise)
    matrix: torch.Tensor | None = None  # what the owner measures as a matrix
    gram: torch.Tensor | None = None  # ... or as a Gram


class GlobalSample:
    """The collectives and measurements of one sampled step (see the module docstring).

    Args:
        layout: The job's layout.
        device: Where the collectives' buffers live (the CPU for gloo, this rank's GPU for NCCL).
        options: The Tracker's options.
        step: The sampled step (seeds the global row cap).
        local: Activations are measured per rank (``activations="local"``).
        warn: The Tracker's warn-once.

    Attributes:
        sent: Bytes of each collective's buffer on this rank (``metadata``, ``payload``,
            ``results``), after :meth:`run`.
    """

    def __init__(
        self, layout: Layout, device: torch.device, options: Options, step: int, local: bool, warn: Warn
    ) -> None:
        self.layout, self.device, self.options = layout, device, options
        self.step, self.local, self.warn = step, local, warn
        self.sent = {"metadata": 0, "payload": 0, "results": 0}

    def run(
        self, layers: list[TrackedLayer], with_weights: bool
    ) -> tuple[list[Job], list[Key], list[Result | None]]:
        """Measure the sample: per matrix a Job (its shape), per logged row a key, per Job a result."""
        slots = self._slots(layers, with_weights)
        self._plan_activations([s for s in slots if s.space == "activation" and not s.local])
        for slot in slots:
            if slot.space == "weight":
                self._plan_weight(slot)
        self._reduce([s for s in slots if s.route is not None and not s.failed])
        return self._measure([s for s in slots if not s.dropped])

    def _slots(self, layers: list[TrackedLayer], with_weights: bool) -> list[_Slot]:
        slots: list[_Slot] = []
        weights: dict[int, _Slot] = {}
        local = self.local
        for layer in layers:
            if "activation" in self.options.spaces:
                slot = _Slot(layer, "activation", [layer.name], local=local)
                slot.dropped = local and layer.capture is None
                if slot.dropped:
                    self.warn(layer.name, "activation", no_forward_message(self.options.hooks))
                slots.append(slot)
            weight = layer.weight if with_weights else None
            if weight is None:
                continue
            if id(weight) in weights:
                weights[id(weight)].names.append(layer.name)
            else:
                weights[id(weight)] = _Slot(layer, "weight", [layer.name])
                slots.append(weights[id(weight)])
        return slots

    # ------------------------------------------------------------------ activations

    def _plan_activations(self, slots: list[_Slot]) -> None:
        """Share every layer's row count and feature block, then plan each global batch alike."""
        if not slots:
            return
        local = torch.tensor([self._meta(slot.layer) for slot in slots], dtype=torch.int64)
        self.sent["metadata"] = local.numel() * local.element_size()
        table = [torch.empty_like(local, device=self.device) for _ in range(self.layout.world_size)]
        dist.all_gather(table, local.to(self.device))
        meta = torch.stack([t.cpu() for t in table])  # (world, slots, 5)
        for index, slot in enumerate(slots):
            self._plan_rows(slot, meta[:, index].tolist())

    def _meta(self, layer: TrackedLayer) -> list[int]:
        """``[rows, width, features, feature offset, split]`` of this rank's capture (never raises)."""
        if layer.capture is None:
            return [_NONE, 0, 0, 0, 0]
        try:
            rows, width = layer.capture.shape
            features, offset = self._feature_block(layer, width)
            return [rows, width, features, offset, int(features != width)]
        except Exception as error:
            self.warn(layer.name, "activation", f"capture unusable across ranks: {error!r}")
            return [_FAILED, 0, 0, 0, 0]

    def _feature_block(self, layer: TrackedLayer, width: int) -> tuple[int, int]:
        """The layer's full feature count and this rank's offset in it (tensor parallel: colwise)."""
        weight = layer.weight
        if not getattr(layer.module, "_distribute_module_applied", False) or not is_dtensor(weight):
            return width, 0
        features = weight.shape[0]
        if width == features:
            return width, 0
        coordinate = self.layout.tensor_index[self.layout.rank]
        offset, length = sharded.chunk(features, self.layout.tensor_size, coordinate)
        if length != width:
            raise ValueError(f"output width {width} is neither the {features} output features nor "
                             f"this rank's tensor-parallel share ({length})")  # fmt: skip
        return features, offset

    def _plan_rows(self, slot: _Slot, meta: list[list[int]]) -> None:
        """Route, global shape and this rank's block of one layer's global batch."""
        present = [r for r, m in enumerate(meta) if m[0] >= 0]
        if any(m[0] == _FAILED for m in meta):
            slot.failed, slot.shape = True, (0, 0)
            return
        if not present:
            slot.dropped = True
            self.warn(slot.layer.name, "activation", no_forward_message(self.options.hooks))
            return
        split = any(meta[r][4] for r in present)
        contributors = present if split else [r for r in present if self.layout.tensor_index[r] == 0]
        kept = self._kept_rows(meta, contributors)
        groups = sorted(kept)
        rows, cols = sum(len(kept[g]) for g in groups), max(meta[r][2] for r in present)
        slot.shape, slot.center = (rows, cols), self.options.center
        row_split = sum(bool(kept[g]) for g in groups) > 1
        slot.route = sharded.choose_route(rows, cols, row_split, split, slot.center)
        me, group = self.layout.rank, self.layout.data_index[self.layout.rank]
        if me not in contributors:
            slot.take = lambda: sharded.Block(rows, cols)
            return
        offset = sum(len(kept[g]) for g in groups if g < group)
        index, capture = torch.tensor(kept[group], dtype=torch.int64), slot.layer.capture
        slot.take = lambda: sharded.Block(rows, cols, offset, meta[me][3], capture[index.to(capture.device)])

    def _kept_rows(self, meta: list[list[int]], contributors: list[int]) -> dict[int, list[int]]:
        """Per data group, the local indices of its rows kept under the global ``max_rows`` cap.

        The cap draws uniformly from the global rows with a generator seeded by ``seed`` and the
        step, the same draw on every rank.
        """
        counts: dict[int, int] = {}
        for r in contributors:
            group = self.layout.data_index[r]
            counts[group] = max(counts.get(group, 0), meta[r][0])
        groups = sorted(counts)
        total, cap = sum(counts.values()), self.options.max_rows
        if cap is None or total <= cap:
            return {g: list(range(counts[g])) for g in groups}
        generator = torch.Generator().manual_seed(self.options.seed * 1_000_003 + self.step)
        chosen = torch.randperm(total, generator=generator)[:cap].sort().values.tolist()
        kept: dict[int, list[int]] = {g: [] for g in groups}
        starts, start = {}, 0
        for g in groups:
            starts[g], start = start, start + counts[g]
        for index in chosen:
            group = next(g for g in reversed(groups) if starts[g] <= index)
            kept[group].append(index - starts[group])
        return kept

    # ------------------------------------------------------------------ weights

    def _plan_weight(self, slot: _Slot) -> None:
        """Plain weights are measured as they are; DTensor weights are reduced or gathered."""
        weight = slot.layer.weight
        if not is_dtensor(weight):
            slot.matrix = spectra.weight_matrix(weight)
            slot.shape = tuple(slot.matrix.shape)
            return
        plan = _weight_plan(weight, self.layout.world_size)
        if plan is None:  # a placement the blocks do not cover: torch gathers it
            slot.matrix = spectra.weight_matrix(weight.full_tensor())
            slot.shape = tuple(slot.matrix.shape)
            return
        (rows, cols), row_block, col_block, contributes, (row_split, col_split) = plan
        slot.shape = (rows, cols)
        slot.route = sharded.choose_route(rows, cols, row_split, col_split, False)

        def take() -> sharded.Block:
            if not contributes:
                return sharded.Block(rows, cols)
            local = weight.to_local().detach()  # may be empty: reshape with explicit sizes
            if local.numel() != row_block[1] * col_block[1]:
                raise ValueError(f"local shard {tuple(local.shape)} is not the expected block "
                                 f"{(row_block[1], col_block[1])} of {(rows, cols)}")  # fmt: skip
            data = local.reshape(row_block[1], col_block[1])
            return sharded.Block(rows, cols, row_block[0], col_block[0], data)

        slot.take = take

    # ------------------------------------------------------------------ reduce and measure

    def _reduce(self, slots: list[_Slot]) -> None:
        """One all-reduce of every slot's payload and failure flag; conclude each on every rank."""
        if not slots:
            return
        payloads, flags = [], torch.zeros(len(slots), dtype=torch.float64, device=self.device)
        for index, slot in enumerate(slots):
            size = sharded.payload_size(slot.route, *slot.shape, slot.center)
            try:
                payload = sharded.contribution(slot.take(), slot.route, slot.center, self.device)
            except Exception as error:  # contribute zeros, flag the failure: never skip the call
                self.warn(slot.names[0], slot.space, f"could not prepare its share: {error!r}")
                payload, flags[index] = torch.zeros(size, dtype=torch.float64, device=self.device), 1.0
            payloads.append(payload)
        self.sent["payload"] = 8 * (sum(p.numel() for p in payloads) + flags.numel())
        *summed, flags = sharded.all_reduce_flat(payloads + [flags])
        for slot, payload, flag in zip(slots, summed, flags.tolist()):
            if flag > 0:
                slot.failed = True
                continue
            kind, value = sharded.conclude(payload, slot.route, *slot.shape, slot.center)
            slot.matrix, slot.gram = (value, None) if kind == "matrix" else (None, value)

    def _measure(self, slots: list[_Slot]):
        """Local slots on this rank; the others by their owner, shared by one all-reduce."""
        owned = [s for s in slots if not s.local and not s.failed]
        table = torch.zeros(len(owned), _RESULT + 2, dtype=torch.float64, device=self.device)
        mine = [i for i in range(len(owned)) if i % self.layout.world_size == self.layout.rank]
        for i, row in zip(mine, self._measure_own([owned[i] for i in mine])):
            table[i] = row
        if owned:
            self.sent["results"] = table.numel() * table.element_size()
            dist.all_reduce(table)
        shared = {id(s): row for s, row in zip(owned, table.tolist())}
        local = [s for s in slots if s.local]
        local_results = self._measure_local(local)
        jobs, keys, results = [], [], []
        for slot in slots:
            estimator, result = "exact", None
            if id(slot) in local_results:
                result = local_results[id(slot)]
            elif id(slot) in shared:
                row = shared[id(slot)]
                estimator = ESTIMATORS[int(row[_RESULT])]
                result = Result.from_row(row[:_RESULT], estimator) if row[_RESULT + 1] > 0 else None
            shape = tuple(slot.layer.capture.shape) if slot.local else slot.shape
            jobs.append(Job(torch.empty(shape, device="meta"), estimator, self.options.metrics))
            keys.extend((name, slot.space, len(jobs) - 1) for name in slot.names)
            results.append(result)
        return jobs, keys, results

    def _measure_own(self, slots: list[_Slot]) -> list[torch.Tensor]:
        """Result rows (ROW_FIELDS, estimator code, measured flag) of the slots this rank owns."""
        rows = [torch.zeros(_RESULT + 2, dtype=torch.float64) for _ in slots]
        jobs, where = [], []
        for i, slot in enumerate(slots):
            try:
                jobs.append(self._job(slot))
                where.append(i)
            except Exception as error:
                self.warn(slot.names[0], slot.space, f"measurement failed: {error!r}")
        keys = [(slots[i].names[0], slots[i].space, k) for k, i in enumerate(where)]
        try:
            results = measure_jobs(jobs, keys, self.warn)
        except Exception as error:  # the results all-reduce must still happen: these rows fail
            self.warn("*", "*", f"measurement failed: {error!r}")
            results = [None] * len(jobs)
        for i, result in zip(where, results):
            if result is not None:
                code = ESTIMATORS.index(result.estimator)
                rows[i] = torch.tensor([*_row_values(result), code, 1.0], dtype=torch.float64)
        return rows

    def _job(self, slot: _Slot) -> Job:
        """The slot's matrix, or its Gram (``gram=True``), as a job of the sample's one batch."""
        given = slot.gram is not None
        matrix = slot.gram if given else slot.matrix
        state = slot.layer.streams.setdefault(slot.space, StreamingSpectrum())
        metrics = self.options.metrics
        estimator = spectra.choose_estimator(tuple(matrix.shape), metrics, self.options.estimator)
        if not given and matrix.dtype != torch.float32:
            matrix = matrix.float()
        return Job(matrix, estimator, self.options.metrics, state, gram=given)

    def _measure_local(self, slots: list[_Slot]) -> dict[int, Result | None]:
        if not slots:
            return {}
        jobs = []
        for slot in slots:
            slot.matrix = slot.layer.capture
            jobs.append(self._job(slot))
        keys = [(s.names[0], s.space, k) for k, s in enumerate(slots)]
        return {id(s): r for s, r in zip(slots, measure_jobs(jobs, keys, self.warn))}


def _row_values(result: Result) -> list[float]:
    return [float(getattr(result, name)) for name in ROW_FIELDS]


def _weight_plan(weight: Any, world: int):
    """Shape, row block, column block and whether this rank adds its block, for a DTensor weight.

    None when a placement is not a plain ``Shard`` of the weight's first two dims or ``Replicate``,
    or the mesh does not span the job: such weights are gathered by torch instead.
    """
    from torch.distributed.tensor import Replicate, Shard

    mesh, shape = weight.device_mesh, tuple(weight.shape)
    if mesh.size() != world:
        return None
    flat = len(shape) <= 1
    rows, cols = (1, math.prod(shape)) if flat else (shape[0], math.prod(shape[1:]))
    row_block, col_block, contributes = (0, rows), (0, cols), True
    split = [False, False]  # from the placements alone, so every rank plans the same route
    coordinate = mesh.get_coordinate()
    for dim, placement in enumerate(weight.placements):
        axis = None if flat else 0 if placement.dim == 0 else 1 if placement.dim == 1 else None
        axis = 1 if flat and placement.dim == 0 else axis
        if type(placement) is Replicate:
            contributes = contributes and coordinate[dim] == 0
        elif type(placement) is not Shard or axis is None or split[axis]:
            return None
        elif axis == 0:
            row_block, split[0] = sharded.chunk(rows, mesh.size(dim), coordinate[dim]), True
        else:
            factor = 1 if flat else math.prod(shape[2:])
            offset, length = sharded.chunk(shape[placement.dim], mesh.size(dim), coordinate[dim])
            col_block, split[1] = (offset * factor, length * factor), True
    return (rows, cols), row_block, col_block, contributes, tuple(split)
