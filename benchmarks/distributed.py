"""Cost of a sample in a torch.distributed job: time per sample and bytes per collective.

Spawns 1, 2 and 4 gloo processes on this CPU; each trains an MLP (widths 256-512-512-256-10, a
batch of 256 rows per rank) under DDP and under FSDP2 ``fully_shard`` with ``Tracker(every=1)``,
and times ``tracker.step()`` on sampled steps (the measurement and its collectives; the training
step itself is not counted), median over the timed steps after two warm-up samples. Also prints
the bytes of each collective's buffer on one rank (``metadata`` all_gather, ``payload`` and
``results`` all_reduce) and, for the default options and for ``estimator="exact"`` with all four
metrics, the worst relative error of stable rank and participation ratio against a float64 SVD
of the full weights (FSDP2, world 2).

Run: ``python benchmarks/distributed.py`` (about two minutes on two cores) or ``--quick``.
Processes share the machine's cores, so world sizes above the core count measure contention too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import ndtracker

WIDTHS = (256, 512, 512, 256, 10)
ROWS = 256


def model() -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def wrap(net: nn.Sequential, kind: str, world: int) -> nn.Module:
    if kind == "ddp":
        return nn.parallel.DistributedDataParallel(net)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for layer in net:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(net, mesh=mesh)


def time_samples(kind: str, world: int, steps: int, folder: str, **options) -> tuple[float, dict]:
    """Median seconds of a sampled ``tracker.step()``, and the bytes of its collectives.

    ``kind="plain"``: the model unwrapped, in a process without torch.distributed (the baseline).
    """
    net = model() if kind == "plain" else wrap(model(), kind, world)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    tracker = ndtracker.Tracker(net, every=1, log_dir=folder, detect=False, **options)
    generator = torch.Generator().manual_seed(dist.get_rank() if dist.is_initialized() else 0)
    times = []
    for step in range(steps + 2):
        net(torch.randn(ROWS, WIDTHS[0], generator=generator)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        if dist.is_initialized():
            dist.barrier()
        start = time.perf_counter()
        tracker.step()
        times.append(time.perf_counter() - start)
    sent = {} if tracker._parallel is None else dict(tracker._parallel.sent)
    tracker.close()
    return statistics.median(times[2:]), sent


def full_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every Linear weight in full (``full_tensor`` is a collective: call it on every rank)."""
    weights = {}
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            w = module.weight
            weights[name] = (w.full_tensor() if hasattr(w, "full_tensor") else w).detach().double()
    return weights


def weight_errors(folder: str, weights: dict[str, torch.Tensor]) -> float:
    """Worst relative error of the logged weight metrics against a float64 SVD (rank 0)."""
    frame = ndtracker.load(folder)
    worst = 0.0
    for name, w in weights.items():
        lam = torch.linalg.svdvals(w).square()
        want = {"stable_rank": lam.sum() / lam[0], "participation_ratio": lam.sum() ** 2 / lam.square().sum()}
        row = frame[(frame.layer == name) & (frame.space == "weight")].iloc[-1]
        for metric, value in want.items():
            worst = max(worst, abs(row[metric] - float(value)) / float(value))
    return worst


def accuracy(world: int, folder: str, **options) -> float:
    net = wrap(model(), "fsdp2", world)
    tracker = ndtracker.Tracker(net, every=1, log_dir=folder, detect=False, spaces="weight", **options)
    tracker.step()
    tracker.close()
    weights = full_weights(net)
    worst = weight_errors(folder, weights) if dist.get_rank() == 0 else 0.0
    dist.barrier()
    return worst


def worker(rank: int, world: int, folder: str, steps: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world)
    warnings.simplefilter("ignore")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    figures = {}
    for kind in ("ddp", "fsdp2"):
        figures[kind] = time_samples(kind, world, steps, f"{folder}/{kind}")
    if world == 2:
        figures["error_default"] = accuracy(world, f"{folder}/default")
        exact = {"estimator": "exact", "metrics": ("stable_rank", "participation_ratio", "effective_rank", "energy90")}
        figures["error_exact"] = accuracy(world, f"{folder}/exact", **exact)
    dist.destroy_process_group()
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(figures, handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 timed samples instead of 8")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4], help="world sizes")
    args = parser.parse_args()
    steps = 3 if args.quick else 8
    print(f"MLP {'-'.join(map(str, WIDTHS))}, {ROWS} rows per rank, every=1, gloo on "
          f"{os.cpu_count()} CPU cores; median of {steps} sampled steps")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        seconds, _ = time_samples("plain", 1, steps, folder)
    print(f"no torch.distributed: {seconds * 1e3:7.1f} ms per sample")
    for world in args.worlds:
        with tempfile.TemporaryDirectory() as folder:
            out = f"{folder}/figures.json"
            mp.spawn(worker, args=(world, folder, steps, out), nprocs=world, join=True)
            with open(out) as handle:
                figures = json.load(handle)
        for kind in ("ddp", "fsdp2"):
            seconds, sent = figures[kind]
            parts = ", ".join(f"{name} {size / 1024:.1f} KiB" for name, size in sent.items())
            print(f"world {world} {kind:5s}: {seconds * 1e3:7.1f} ms per sample; buffers per rank: {parts}")
        if world == 2:
            print(f"worst relative error of weight stable rank / participation ratio vs float64 SVD "
                  f"(FSDP2, world 2): default options {figures['error_default']:.1e}, "
                  f"estimator='exact' {figures['error_exact']:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
