"""Scenarios run in each spawned process of the distributed tests, with their exact oracles.

Every scenario builds the same Tracker on every rank, trains a few steps, and on rank 0 compares
each logged row with a float64 SVD of the full weight (``full_tensor()``) or of the global batch
(every rank's captured output, gathered by the test itself with ``all_gather_object``, centred).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import ndtracker
from ndtracker.spectra import distributed as sharded
from ndtracker.store.layout import PART_NAME
from ndtracker.store.writer import RANK_SEQ_SPAN

ALL = ("stable_rank", "participation_ratio", "effective_rank", "energy90")
TOLERANCE = 1e-6


# ------------------------------------------------------------------------------ oracles


def spectrum_metrics(matrix: torch.Tensor) -> dict[str, float]:
    """The four metrics of a matrix from its float64 singular values."""
    sigma = torch.linalg.svdvals(matrix.double())
    lam = sigma.square()
    total = lam.sum()
    p = sigma / sigma.sum()
    p = p[p > 0]
    return {
        "stable_rank": float(total / lam[0]), "participation_ratio": float(total**2 / lam.square().sum()),
        "effective_rank": float(torch.exp(-(p * p.log()).sum())),
        "energy90": int((torch.cumsum(lam, 0) < 0.9 * total).sum() + 1),
    }  # fmt: skip


def assemble(pieces: list[tuple[int, int, torch.Tensor]], split: bool) -> torch.Tensor:
    """The global batch from (data group, tensor coordinate, local output) of every rank."""
    groups = sorted({g for g, _, _ in pieces})
    blocks = []
    for g in groups:
        members = sorted((t, out) for gg, t, out in pieces if gg == g)
        blocks.append(torch.cat([out for _, out in members], 1) if split else members[0][1])
    return torch.cat(blocks, 0)


class Recorder:
    """The oracle's own hooks: each layer's first training output of a step, flattened to rows."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(module, args, output):
            if torch.is_grad_enabled() and name not in self.outputs:
                self.outputs[name] = output.detach().reshape(-1, output.shape[-1]).double().clone()
        return hook

    def take(self) -> dict[str, torch.Tensor]:
        outputs, self.outputs = self.outputs, {}
        return outputs


def global_activation(local: torch.Tensor, layout, split: bool) -> torch.Tensor:
    """Every rank's output of one layer, assembled as the global batch and centred."""
    pieces = [None] * dist.get_world_size()
    dist.all_gather_object(pieces, (layout.data_index[layout.rank], layout.tensor_index[layout.rank], local))
    matrix = assemble(pieces, split)
    return matrix - matrix.mean(0, keepdim=True)


def full_weight(weight: torch.Tensor) -> torch.Tensor:
    w = weight.full_tensor() if hasattr(weight, "full_tensor") else weight
    return w.detach().double().reshape(w.shape[0], -1)


def check_rows(frame, expected: dict[tuple[int, str, str], dict[str, float]], metrics=ALL, tol=TOLERANCE):
    """Every expected (step, layer, space) is logged once with these metrics; returns the worst
    relative error of each metric but energy90 (which must be equal)."""
    worst = {name: 0.0 for name in metrics if name != "energy90"}
    for (step, layer, space), want in expected.items():
        got = frame[(frame.step == step) & (frame.layer == layer) & (frame.space == space)]
        assert len(got) == 1, (step, layer, space, len(got))
        row = got.iloc[0]
        assert row.status == "ok", (step, layer, space, row.status)
        for name in metrics:
            if name == "energy90":
                assert int(row[name]) == want[name], (step, layer, space, name, row[name], want[name])
                continue
            error = abs(row[name] - want[name]) / abs(want[name])
            worst[name] = max(worst[name], error)
            # effective rank weighs σ = √λ: the zero eigenvalues' float64 round-off shows at ~1e-7
            assert error <= (tol if name != "effective_rank" else 10 * tol), (step, layer, space, name, row[name])
    return worst


# ------------------------------------------------------------------------------ scenario runner


def run_scenarios(rank: int, world: int, folder: str, names: list[str]) -> None:
    """The spawned entry point: init gloo from a file, run the named scenarios, record figures."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world)
    warnings.simplefilter("ignore")
    figures = {}
    try:
        for name in names:
            figures[name] = SCENARIOS[name](rank, world, Path(folder) / name)
            dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        (Path(folder) / f"figures-{world}.json").write_text(json.dumps(figures))


def train_and_record(model, tracker, batches, recorder, layout, names, weights, split=(), opt=None, accumulate=None):
    """Train on ``batches`` (one per step); return the oracle's expected rows per step."""
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.05)
    expected = {}
    for step, batch in enumerate(batches):
        for name in weights:  # a step's weight row: the weights its forward uses (before its update)
            expected[(step, name, "weight")] = spectrum_metrics(full_weight(dict(model.named_modules())[name].weight))
        parts = [batch] if accumulate is None else accumulate(batch)
        for index, part in enumerate(parts):
            context = model.no_sync() if accumulate is not None and index < len(parts) - 1 else _null()
            with context:
                model(part).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        tracker.step()
        outputs = recorder.take()
        for name in names:
            matrix = global_activation(outputs[name], layout, name in split)
            expected[(step, name, "activation")] = spectrum_metrics(matrix)
    tracker.close()
    return expected


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def local_batches(rank: int, sizes: list[int], width: int, same: bool = False) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + (0 if same else rank))
    return [torch.randn(size, width, generator=generator) + 0.5 for size in sizes]


def fsdp_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 1))


def fsdp(rank, world, folder):
    """FSDP2 over uneven shards (16, 5 and 1 rows; rank 1 of 2 holds none of the last) and
    uneven batches; every route: gathered rows, column Grams, gathered and Gram weights."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = fsdp_model()
    mesh = init_device_mesh("cpu", (world,))
    for index in ("0", "2", "4"):
        fully_shard(dict(model.named_modules())[index], mesh=mesh)
    fully_shard(model, mesh=mesh)
    names = ["0", "2", "4"]
    tracker = ndtracker.Tracker(model, every=1, log_dir=str(folder), metrics=ALL, estimator="exact", detect=False)
    recorder = Recorder(model, names)
    layout = tracker._parallel.layout
    assert tracker.layers == names, tracker.layers
    batches = local_batches(rank, [5 - rank, 3 + 2 * rank], 6)
    expected = train_and_record(model, tracker, batches, recorder, layout, names, names)
    if rank != 0:
        return None
    frame = ndtracker.load(folder)
    assert set(frame["rank"].dropna()) == {0}
    info = json.loads((folder / "run.json").read_text())["runs"][0]["distributed"]
    assert info["world_size"] == world and info["backend"] == "gloo" and "fsdp2" in info["wrappers"], info
    seqs = [int(PART_NAME.match(p.name).group(2)) for p in (folder / "metrics").iterdir()]
    assert seqs and max(seqs) < RANK_SEQ_SPAN, seqs  # only rank 0's parts
    return check_rows(frame, expected)


def ddp(rank, world, folder):
    """DDP with gradient accumulation under ``no_sync``: the first micro-batch of every rank."""
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    model = nn.parallel.DistributedDataParallel(inner)
    names = ["module.0", "module.2"]
    tracker = ndtracker.Tracker(model, every=1, log_dir=str(folder), metrics=ALL, estimator="exact", detect=False)
    assert tracker.layers == ["0", "2"], tracker.layers
    recorder = Recorder(model, names)
    layout = tracker._parallel.layout
    batches = local_batches(rank, [8, 8], 6)
    expected = train_and_record(model, tracker, batches, recorder, layout, names, names,
                                accumulate=lambda b: list(b.split(4)))  # fmt: skip
    if rank != 0:
        return None
    expected = {(s, n.removeprefix("module."), sp): v for (s, n, sp), v in expected.items()}
    frame = ndtracker.load(folder)
    assert set(frame.rows[frame.space == "activation"]) == {4 * world}  # first micro-batches only
    return check_rows(frame, expected)


def tensor_parallel(rank, world, folder):
    """Colwise then rowwise Linear over all ranks; 4 rows (row Grams) then 12 rows (gathered)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    names = ["0", "2"]
    tracker = ndtracker.Tracker(model, every=1, log_dir=str(folder), metrics=ALL, estimator="exact", detect=False)
    layout = tracker._parallel.layout
    assert layout.tensor_size == world and set(layout.data_index) == {0}, layout
    recorder = Recorder(model, names)
    batches = local_batches(rank, [4, 12], 6, same=True)
    expected = train_and_record(model, tracker, batches, recorder, layout, names, names, split={"0"})
    if rank != 0:
        return None
    frame = ndtracker.load(folder)
    assert frame[(frame.layer == "0") & (frame.space == "activation")].cols.tolist() == [10, 10]
    return check_rows(frame, expected)


def mesh_2d(rank, world, folder):
    """A 2 x 2 (data x tensor) mesh: tensor parallel inside, FSDP2 across (weights by full_tensor)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))
    mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))
    parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    fully_shard(model, mesh=mesh["dp"])
    names = ["0", "2"]
    tracker = ndtracker.Tracker(model, every=1, log_dir=str(folder), metrics=ALL, estimator="exact", detect=False)
    layout = tracker._parallel.layout
    assert layout.tensor_dims == ("tp",) and len(set(layout.data_index)) == 2, layout
    recorder = Recorder(model, names)
    batches = local_batches(layout.data_index[rank], [3, 7], 6)
    expected = train_and_record(model, tracker, batches, recorder, layout, names, names, split={"0"})
    if rank != 0:
        return None
    return check_rows(ndtracker.load(folder), expected)


def all_ranks(rank, world, folder):
    """``ranks="all"``: one part stream per rank, one dataset; ``activations="local"`` per rank."""
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)))
    tracker = ndtracker.Tracker(model, every=1, log_dir=str(folder), ranks="all", activations="local",
                                metrics=ALL, estimator="exact", detect=False, flush_secs=0.05)  # fmt: skip
    recorder = Recorder(model, ["module.0", "module.2"])
    batches = local_batches(rank, [4 + rank, 6], 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    local = {}
    for step, batch in enumerate(batches):
        model(batch).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        tracker.step()
        tracker.flush()
        for name, out in recorder.take().items():
            local[(step, name.removeprefix("module."), "activation")] = spectrum_metrics(out - out.mean(0))
    tracker.close()
    dist.barrier()
    frame = ndtracker.load(folder)
    assert sorted(set(frame["rank"])) == list(range(world))
    mine = frame[frame["rank"] == rank]
    check_rows(mine, local)
    import duckdb
    import pyarrow.dataset as ds

    assert ds.dataset(str(folder / "metrics"), format="parquet").count_rows() == len(frame)
    count = duckdb.sql(f"select count(*), count(distinct rank) from '{folder}/metrics/*.parquet'").fetchall()[0]
    assert count == (len(frame), world), count
    weights = frame[frame.space == "weight"].sort_values(["step", "layer", "rank"])
    assert weights.groupby(["step", "layer"]).stable_rank.nunique().max() == 1
    return None


def failure(rank, world, folder):
    """Rank 1's share of weight "0" raises, and every measurement rank 1 owns raises: no hang;
    the same rows are NaN with status failed on every rank, the others are exact."""
    contribution, measure_many = sharded.contribution, ndtracker.spectra.measure_many

    def broken_contribution(block, *args):
        if block.rows == 16 and block.cols == 6:
            raise RuntimeError("injected")
        return contribution(block, *args)

    def broken_measure(*args):
        raise RuntimeError("injected")

    if rank == 1:
        sharded.contribution, ndtracker.spectra.measure_many = broken_contribution, broken_measure
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = fsdp_model()
        fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
        tracker = ndtracker.Tracker(model, every=1, log_dir=str(folder), ranks="all", metrics=ALL,
                                    estimator="exact", detect=False)  # fmt: skip
        for batch in local_batches(rank, [4, 4], 6):
            model(batch).pow(2).mean().backward()
            tracker.step()
        tracker.close()
    finally:
        sharded.contribution, ndtracker.spectra.measure_many = contribution, measure_many
    dist.barrier()
    frame = ndtracker.load(folder)
    failed = {r: set(map(tuple, part[part.status == "failed"][["step", "layer", "space"]].values.tolist()))
              for r, part in frame.groupby("rank")}  # fmt: skip
    assert len({frozenset(v) for v in failed.values()}) == 1, failed
    assert (0, "0", "weight") in failed[0] and len(failed[0]) > 2, failed
    assert frame[frame.status == "failed"].stable_rank.isna().all()
    assert set(frame.status) == {"ok", "failed"}
    return None


def labelled_probe(rank, world, folder):
    """A probe whose labels fail the check on rank 1 only: every rank raises (none waits forever);
    then a good labelled probe: rank 0 writes its class rows and probe accuracy, rank 1 nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(12, 6), torch.arange(12) % 3
    bad = (x, y[:5]) if rank == 1 else (x, y)
    try:
        ndtracker.Tracker(model, probe=bad, log_dir=str(folder / "bad"), detect=False)
    except ValueError as error:
        expected = "got 5 labels" if rank == 1 else "the check failed on rank 1 .*got 5 labels"
        assert re.search(expected, str(error)), str(error)
    else:
        raise AssertionError(f"rank {rank}: a probe failing on rank 1 did not raise")
    assert not (folder / "bad").exists()
    with ndtracker.Tracker(model, every=1, probe=(x, y), linear_probes=True, log_dir=str(folder / "good"),
                           detect=False) as tracker:  # fmt: skip
        for _ in range(2):
            model(torch.randn(4, 6)).sum().backward()
            tracker.step()
    dist.barrier()
    classes = ndtracker.load(folder / "good", table="classes")
    assert len(classes) == 2 * 2 and set(classes.source) == {"probe"} and set(classes.status) == {"ok"}
    assert ndtracker.load(folder / "good").query("space == 'activation'").probe_accuracy.notna().all()
    return None


SCENARIOS = {
    "labelled_probe": labelled_probe, "fsdp": fsdp, "ddp": ddp, "tensor_parallel": tensor_parallel, "mesh_2d": mesh_2d,
    "all_ranks": all_ranks, "failure": failure,
}  # fmt: skip
