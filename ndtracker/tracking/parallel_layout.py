"""The parallel layout of a torch.distributed job: which ranks see the same batch, which split features.

Read once, when the Tracker is built: without tensor parallelism every rank is its own data group
(DDP, FSDP2, HSDP); with ``parallelize_module`` the tensor-parallel mesh dims group ranks that see
one batch (under FSDP2 over tensor parallelism, the dims FSDP shards over are data dims).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch import nn

__all__ = ["Layout", "detect_layout", "is_dtensor"]


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
            if is_dtensor(parameter):
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


def is_dtensor(tensor: Any) -> bool:
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "placements")
