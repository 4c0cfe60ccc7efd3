"""Training-loop overhead of the class geometry (labels) and condensation options.

Arms, each with its own copy of the same model and optimizer, trained on the same batches:

- ``bare``: the training loop alone (and ``bare again``: the noise floor of the run);
- ``default``: ``Tracker(model, every=E)``, no labels;
- ``labels``: the same with ``tracker.step(loss=loss, labels=y)``;
- ``condensation``: ``Tracker(..., condensation=True)``, no labels;
- ``both``: labels and condensation.

Rounds are interleaved (each arm runs its next ``--steps`` steps in rotating order); after a warm-up
round, figures are medians over rounds of the per-round ratio to ``bare`` (``overhead``) and of
(arm time - bare time) / samples (``ms/sample``). Workloads: an MLP on 64 features (batch 256,
10 classes) and a small CNN (batch 64, 3x16x16 inputs, 10 classes; its conv outputs are pooled
into example rows when labels are given).

With ``--device cuda`` it also counts the host synchronisations of one sample of each arm
(``torch.cuda.set_sync_debug_mode``), labels on the host.

Run: ``python benchmarks/classes_overhead.py`` (a few minutes on 2 cores; ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn

import ndtracker

ARMS = ("bare", "bare again", "default", "labels", "condensation", "both")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 16 * 16, 10),
    )  # fmt: skip


WORKLOADS = {"mlp": (mlp, (256, 64)), "cnn": (cnn, (64, 3, 16, 16))}


class Arm:
    """One training loop, with or without a Tracker and its options."""

    def __init__(self, name: str, model: nn.Module, every: int, device: str) -> None:
        self.name, self.model = name, copy.deepcopy(model).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-2)
        self.labels = name in ("labels", "both")
        self.tracker = None
        if not name.startswith("bare"):
            self.tracker = ndtracker.Tracker(
                self.model, every=every, log_dir=tempfile.mkdtemp(prefix="bench-classes-"), detect=False,
                condensation=name in ("condensation", "both"), flush_secs=60,
            )  # fmt: skip

    def run(self, batches, device: str) -> float:
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        for x, y in batches:
            loss = nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
            if self.tracker is not None:
                self.tracker.step(loss=loss, labels=y.cpu() if self.labels else None)
        sync()
        return time.perf_counter() - start

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()


def batches(shape, steps: int, device: str, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=generator).to(device),
             torch.randint(0, 10, (shape[0],), generator=generator).to(device)) for _ in range(steps)]  # fmt: skip


def measure(workload: str, rounds: int, steps: int, every: int, device: str) -> dict[str, tuple[float, float]]:
    build, shape = WORKLOADS[workload]
    torch.manual_seed(0)
    arms = [Arm(name, build(), every, device) for name in ARMS]
    times: dict[str, list[float]] = {name: [] for name in ARMS}
    for round_ in range(rounds + 1):
        data = batches(shape, steps, device, round_)
        order = arms[round_ % len(arms):] + arms[: round_ % len(arms)]
        for arm in order:
            elapsed = arm.run(data, device)
            if round_:  # round 0 warms up
                times[arm.name].append(elapsed)
    for arm in arms:
        arm.close()
    samples = steps / every
    out = {}
    for name in ARMS:
        ratios = [t / b - 1 for t, b in zip(times[name], times["bare"])]
        per_sample = [(t - b) / samples * 1e3 for t, b in zip(times[name], times["bare"])]
        out[name] = (statistics.median(ratios), statistics.median(per_sample))
    return out


def count_syncs(device: str) -> None:
    """Host synchronisations of one sampled step of each arm (CUDA only)."""
    for workload, (build, shape) in WORKLOADS.items():
        for name in ARMS[2:]:
            arm = Arm(name, build(), 1, device)
            data = batches(shape, 2, device, 0)
            arm.run(data[:1], device)  # first sample: warm-up (and labels seen)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    arm.run(data[1:], device)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            arm.close()
            syncs = [w for w in caught if "synchroniz" in str(w.message)]
            print(f"{workload:4s} {name:13s} synchronisations in one sampled step: {len(syncs)}")
            for w in syncs[:6]:
                print("      ", str(w.message).splitlines()[0][:110], "@", w.filename.split("/")[-1], w.lineno)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args()
    rounds, steps = (3, 20) if args.quick else (8, 50)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"device {args.device}, every={args.every}, {rounds} rounds of {steps} steps, torch {torch.__version__}")
    for workload in WORKLOADS:
        figures = measure(workload, rounds, steps, args.every, args.device)
        print(f"\n{workload}: arm            overhead   ms/sample")
        for name, (overhead, per_sample) in figures.items():
            print(f"     {name:16s} {overhead:+8.1%}  {per_sample:9.2f}")
    if args.device == "cuda":
        print()
        count_syncs(args.device)


if __name__ == "__main__":
    main()
