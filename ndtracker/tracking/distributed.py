"""A Tracker inside a torch.distributed job: rank policy, parallel layout and exact global samples.

Every rank builds the same Tracker and calls ``step()``; on a sampled step every rank runs the
same collectives in the same order, whatever failed locally (a local failure travels as a flag and
zeros, never as a missing call):

1. activations (``activations="global"``): one ``all_gather`` of each layer's row count, width
   and feature offset (5 integers per layer and rank), so every rank plans the global batch alike;
2. one float64 ``all_reduce`` of every reduced matrix of the sample together (see
   :mod:`ndtracker.spectra.distributed`: the Gram of the unsplit side, or the blocks themselves
   where that Gram would be larger) plus one failure flag per matrix;
3. the matrices are measured by owner ranks (round robin) and one ``all_reduce`` of their result
   rows (9 numbers each) gives every rank the same figures.

Weights that are plain tensors (DDP, replicated) are measured by their owner as they are; DTensor
weights (FSDP2 ``fully_shard``, ``parallelize_module``) sharded by plain ``Shard``/``Replicate``
placements over a mesh spanning the job are reduced as blocks; other placements (FSDP2 over tensor
parallelism's ``_StridedShard``, ``Partial``) are gathered with ``DTensor.full_tensor()``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ndtracker import spectra, store
from ndtracker.spectra import Job, Result, StreamingSpectrum
from ndtracker.spectra import distributed as sharded
from ndtracker.spectra.exact import ROW_FIELDS
from ndtracker.tracking.layers import TrackedLayer
from ndtracker.tracking.options import Options
from ndtracker.tracking.sample import NO_FORWARD, measure_jobs
from ndtracker.vocabulary import ESTIMATORS

__all__ = ["Layout", "Parallel", "ACTIVATION_MODES", "check_ranks", "setup"]

Warn = Callable[[str, str, str], None]
ACTIVATION_MODES: tuple[str, ...] = ("global", "local")
_RESULT = len(ROW_FIELDS)  # result row: ROW_FIELDS, estimator code, measured flag
_NONE, _FAILED = -1, -2  # row counts that say "no capture" and "capture unusable" in the metadata


# ------------------------------------------------------------------------------ options, layout


def check_ranks(ranks: Any, world_size: int | None) -> int | str:
    """``ranks``: ``"all"`` or the rank (int) that writes the run."""
    if ranks == "all":
        return "all"
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 0:
        raise ValueError(f"ranks must be 'all' or the rank that writes the run (an int), got {ranks!r}")
    if world_size is not None and ranks >= world_size:
        raise ValueError(f"ranks={ranks} is not a rank of this job (world size {world_size})")
    return ranks


def check_activations(activations: Any) -> str:
    if activations not in ACTIVATION_MODES:
        raise ValueError(f"activations must be one of {ACTIVATION_MODES}, got {activations!r}")
    return activations


@dataclass(frozen=True)
class Layout:
    """Which ranks see the same data and which split a layer's features.

    Attributes:
        rank, world_size, backend: This process in the job.
        data_index: Per global rank, its data-parallel group (ranks of one group see one batch).
        tensor_index: Per global rank, its coordinate in the tensor-parallel group (0 without).
        tensor_dims: Names of the tensor-parallel mesh dimensions.
        wrappers: How the model is parallelised (``ddp``, ``fsdp2``, ``tensor_parallel``).
    """

    rank: int
    world_size: int
    backend: str
    data_index: tuple[int, ...]
    tensor_index: tuple[int, ...]
    tensor_dims: tuple[str, ...] = ()
    wrappers: tuple[str, ...] = ()

    @property
    def tensor_size(self) -> int:
        return max(self.tensor_index) + 1

    def info(self) -> dict[str, Any]:
        """The layout as JSON-ready values, for ``run.json``."""
        return {
            "world_size": self.world_size, "backend": self.backend, "wrappers": list(self.wrappers),
            "data_parallel": max(self.data_index) + 1, "tensor_parallel": self.tensor_size,
            "tensor_dims": list(self.tensor_dims),
        }  # fmt: skip


def detect_layout(model: nn.Module) -> Layout:
    """Read the job and the model's parallel layout (ranks without tensor parallelism: all data)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    data, tensor = list(range(world)), [0] * world
    mesh, tensor_dims = _tensor_parallel_mesh(model)
    if mesh is not None and tensor_dims:
        if mesh.size() != world:
            raise ValueError(f"the tensor-parallel mesh {mesh} does not span the job's {world} ranks; "
                             "ndtracker supports meshes over the whole job")  # fmt: skip
        names = list(mesh.mesh_dim_names)
        dims = [names.index(name) for name in tensor_dims]
        others = [i for i in range(len(names)) if i not in dims]
        size = math.prod(mesh.size(i) for i in dims)
        for group, members in enumerate(mesh.mesh.permute(*others, *dims).reshape(-1, size).tolist()):
            for coordinate, member in enumerate(members):
                data[member], tensor[member] = group, coordinate
    return Layout(rank, world, str(dist.get_backend()), tuple(data), tuple(tensor), tensor_dims,
                  _wrappers(model, bool(tensor_dims)))  # fmt: skip


def _tensor_parallel_mesh(model: nn.Module) -> tuple[Any, tuple[str, ...]]:
    """The mesh of the first ``parallelize_module``d parameter, and its tensor-parallel dims.

    FSDP2 over tensor parallelism moves parameters to the joint mesh: its dims named by the FSDP
    mesh are data dims, the others tensor dims (so name the mesh dims, as ``init_device_mesh``'s
    ``mesh_dim_names`` does).
    """
    for module in model.modules():
        if not getattr(module, "_distribute_module_applied", False):
            continue
        for parameter in module.parameters(recurse=False):
            if _is_dtensor(parameter):
                mesh = parameter.device_mesh
                names = mesh.mesh_dim_names or tuple(str(i) for i in range(mesh.ndim))
                data_dims = _fsdp_dim_names(model)
                return mesh, tuple(name for name in names if name not in data_dims)
    return None, ()


def _fsdp_dim_names(model: nn.Module) -> tuple[str, ...]:
    """Mesh dim names FSDP2 shards or replicates over (private FSDP state; empty if unreadable)."""
    for module in model.modules():
        try:
            group = module._get_fsdp_state()._fsdp_param_group  # type: ignore[operator]
            return tuple(group.mesh_info.mesh.mesh_dim_names or ())
        except Exception:  # not an FSDP2 module, or the private state moved
            continue
    return ()


def _wrappers(model: nn.Module, tensor_parallel: bool) -> tuple[str, ...]:
    found = []
    if isinstance(model, nn.parallel.DistributedDataParallel):
        found.append("ddp")
    if any(type(m).__name__.startswith("FSDP") and hasattr(m, "_get_fsdp_state") for m in model.modules()):
        found.append("fsdp2")
    if tensor_parallel:
        found.append("tensor_parallel")
    return tuple(found)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a layer output: a DTensor's local shard, a pending collective's result.

    Tensor-parallel layers return ``AsyncCollectiveTensor`` (waited for here) or, with
    ``use_local_output=False``, a DTensor (its shard: features split across ranks are measured
    whole by :class:`Parallel`).
    """
    if _is_dtensor(tensor):
        tensor = tensor.to_local()
    wait = getattr(tensor, "wait", None) if type(tensor) is not torch.Tensor else None
    return wait() if callable(wait) else tensor


def _is_dtensor(tensor: Any) -> bool:
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "placements")


def setup(model: nn.Module, ranks: Any, activations: Any) -> Parallel | None:
    """Check the distributed options; the job's :class:`Parallel` when torch.distributed is up."""
    activations = check_activations(activations)
    if not (dist.is_available() and dist.is_initialized()):
        check_ranks(ranks, None)
        return None
    return Parallel(detect_layout(model), check_ranks(ranks, dist.get_world_size()), activations)


# ------------------------------------------------------------------------------ the rank policy


class NullWriter:
    """The writer of a rank that does not write (``ranks=<int>``, another rank): keeps nothing."""

    def __init__(self, run_id: str, run_dir: str) -> None:
        self.run_id, self.run_dir = run_id, Path(run_dir)

    def append(self, rows: Any) -> None:
        pass

    def append_events(self, rows: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Parallel:
    """The distributed side of one Tracker: who writes, and how a sample is measured globally."""

    layout: Layout
    ranks: int | str
    activations: str
    device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        cuda = self.layout.backend == "nccl" and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

    @property
    def registrant(self) -> int:
        """The rank that registers the run in ``run.json`` (and writes it, unless ``ranks="all"``)."""
        return 0 if self.ranks == "all" else int(self.ranks)

    @property
    def writes(self) -> bool:
        return self.ranks == "all" or self.ranks == self.layout.rank

    def info(self) -> dict[str, Any]:
        """The job and options, for ``run.json``."""
        return {**self.layout.info(), "ranks": self.ranks, "activations": self.activations}

    def capture_options(self, options: Options) -> Options:
        """Global activations are captured uncentred: they are centred with the global mean."""
        return options if self.activations == "local" else dataclasses.replace(options, center=False)

    def open_writer(self, log_dir: str, run_info: dict[str, Any], writing: dict[str, Any]) -> Any:
        """Register the run on one rank, share its id, and open this rank's writer (or none).

        Raises:
            ValueError: On every rank, when the registering rank could not open ``log_dir``.
        """
        shared: list[Any] = [None, None, None]
        error: Exception | None = None
        writer: Any = None
        if self.layout.rank == self.registrant:
            try:
                writer = _writer(log_dir, run_info, writing, self.layout.rank)
                shared = [writer.run_id, str(writer.run_dir), None]
            except Exception as caught:
                error, shared = caught, [None, None, str(caught)]
        dist.broadcast_object_list(shared, src=self.registrant)
        if error is not None:
            raise error
        if shared[2] is not None:
            raise ValueError(f"rank {self.registrant} could not open the run: {shared[2]}")
        if writer is not None:
            return writer
        if self.ranks == "all":
            return _writer(shared[1], {}, writing, self.layout.rank, run_id=shared[0])
        return NullWriter(shared[0], shared[1])

    def measure(
        self, layers: list[TrackedLayer], options: Options, step: int, with_weights: bool, warn: Warn
    ) -> tuple[list[Job], list[tuple[str, str, int]], list[Result | None]]:
        """Measure a sample over the job: the jobs, keys and results :func:`log_row` expects."""
        return _Sample(self, options, step, warn).run(layers, with_weights)


def _writer(log_dir: str, run_info: dict[str, Any], writing: dict[str, Any], rank: int, run_id=None):
    path = store.validate_log_dir(log_dir)
    return store.RunWriter(
        path, run_info=run_info, flush_secs=writing["flush_secs"],
        max_buffer_rows=writing["max_buffer_rows"], rank=rank, run_id=run_id,
    )  # fmt: skip


# ------------------------------------------------------------------------------ one sample


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


class _Sample:
    """The collectives and measurements of one sampled step (see the module docstring)."""

    def __init__(self, parallel: Parallel, options: Options, step: int, warn: Warn) -> None:
        self.parallel, self.layout, self.options = parallel, parallel.layout, options
        self.step, self.warn, self.device = step, warn, parallel.device

    def run(self, layers: list[TrackedLayer], with_weights: bool):
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
        local = self.parallel.activations == "local"
        for layer in layers:
            if "activation" in self.options.spaces:
                slot = _Slot(layer, "activation", [layer.name], local=local)
                slot.dropped = local and layer.capture is None
                if slot.dropped:
                    self.warn(layer.name, "activation", NO_FORWARD)
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
        if not getattr(layer.module, "_distribute_module_applied", False) or not _is_dtensor(weight):
            return width, 0
        features = weight.shape[0]
        if width == features:
            return width, 0
        offset, length = sharded.chunk(features, self.layout.tensor_size, self.layout.tensor_index[self.layout.rank])
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
            self.warn(slot.layer.name, "activation", NO_FORWARD)
            return
        split = any(meta[r][4] for r in present)
        contributors = present if split else [r for r in present if self.layout.tensor_index[r] == 0]
        kept = self._kept_rows(meta, contributors)
        groups = sorted(kept)
        rows, cols = sum(len(kept[g]) for g in groups), max(meta[r][2] for r in present)
        slot.shape, slot.center = (rows, cols), self.options.center
        slot.route = sharded.choose_route(rows, cols, sum(bool(kept[g]) for g in groups) > 1, split, slot.center)
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
        if not _is_dtensor(weight):
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
            return sharded.Block(rows, cols, row_block[0], col_block[0], local.reshape(row_block[1], col_block[1]))

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
                if slot.gram is not None:
                    row = sharded.measure_gram(slot.gram, self.options.metrics).double().cpu()
                    rows[i] = torch.cat([row, torch.tensor([ESTIMATORS.index("exact"), 1.0], dtype=torch.float64)])
                else:
                    jobs.append(self._job(slot))
                    where.append(i)
            except Exception as error:
                self.warn(slot.names[0], slot.space, f"measurement failed: {error!r}")
        keys = [(slots[i].names[0], slots[i].space, k) for k, i in enumerate(where)]
        for i, result in zip(where, measure_jobs(jobs, keys, self.warn)):
            if result is not None:
                code = ESTIMATORS.index(result.estimator)
                rows[i] = torch.tensor([*_row_values(result), code, 1.0], dtype=torch.float64)
        return rows

    def _job(self, slot: _Slot) -> Job:
        matrix = slot.matrix
        state = slot.layer.streams.setdefault(slot.space, StreamingSpectrum())
        estimator = spectra.choose_estimator(tuple(matrix.shape), self.options.metrics, self.options.estimator)
        return Job(matrix.float() if matrix.dtype != torch.float32 else matrix, estimator, self.options.metrics, state)

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
