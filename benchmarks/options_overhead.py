"""Training-loop overhead of each opt-in measurement: bare vs default vs each option, side by side.

One workload (an MLP, 4 Linear layers of width 512 on batches of 256 synthetic rows, 10 classes,
SGD), trained by several *arms* in one process, each with its own copy of the same model:

- ``bare``: the loop alone; ``default``: ``Tracker(model, every=5)``;
- ``gradients``, ``probes``, ``similarity``: the default plus that option (``probes``: ``linear_probes=True``, passes the
  batch's labels to ``step``); ``all``: the three together.

Rounds are interleaved (each arm, in rotating order, runs its next 50 steps, each step timed);
after warm-up rounds the figures are medians over rounds of ``overhead`` (mean step time / bare
- 1) and ``ms/sample`` ((arm time - bare time) in the round / samples in the round), and the
extra cost of each option over ``default`` per sample. No figure is asserted anywhere.

Run: ``python benchmarks/options_overhead.py`` (about 3 minutes on 2 cores) or ``--quick``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from torch import nn

import ndtracker

EVERY = 5
STEPS_PER_ROUND = 50
ARMS: dict[str, dict] = {
    "bare": {}, "default": {}, "gradients": {"gradients": True}, "probes": {"linear_probes": True},
    "similarity": {"similarity": True}, "all": {"gradients": True, "linear_probes": True, "similarity": True},
}  # fmt: skip


class Arm:
    """One arm: its model, optimizer, tracker (None for bare) and step timings."""

    def __init__(self, name: str, model: nn.Module, folder: str) -> None:
        self.name, self.model = name, copy.deepcopy(model)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        options = ARMS[name]
        self.tracker = None if name == "bare" else ndtracker.Tracker(
            self.model, every=EVERY, log_dir=f"{folder}/{name}", detect=True, **options)  # fmt: skip
        self.labels = bool(options.get("linear_probes"))
        self.rounds: list[float] = []

    def run_round(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        start = time.perf_counter()
        for x, y in batches:
            loss = nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
            if self.tracker is not None:
                self.tracker.step(loss=loss, labels=y if self.labels else None)
        self.rounds.append(time.perf_counter() - start)


def workload(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))  # fmt: skip
    teacher = torch.randn(256, 10)
    batches = []
    for _ in range(STEPS_PER_ROUND):
        x = torch.randn(256, 256) * torch.linspace(1.0, 0.05, 256)
        batches.append((x, (x @ teacher).argmax(1)))
    return model, batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args(argv)
    rounds, warmup = (6, 1) if args.quick else (16, 2)
    torch.set_num_threads(1)
    model, batches = workload()
    with tempfile.TemporaryDirectory() as folder:
        arms = [Arm(name, model, folder) for name in ARMS]
        for index in range(rounds + warmup):
            for arm in arms[index % len(arms):] + arms[: index % len(arms)]:
                arm.run_round(batches)
        for arm in arms:
            if arm.tracker is not None:
                arm.tracker.close()
    samples = STEPS_PER_ROUND / EVERY
    bare = arms[0].rounds[warmup:]
    default_ms = None
    print(f"MLP 256-512-512-512-10, batch 256, every={EVERY}, {rounds} rounds of {STEPS_PER_ROUND} steps "
          f"(after {warmup} warm-up), torch threads 1\n")  # fmt: skip
    print(f"{'arm':<12} {'ms/step':>8} {'overhead':>9} {'ms/sample':>10} {'vs default':>11}")
    for arm in arms:
        times = arm.rounds[warmup:]
        overhead = statistics.median(t / b - 1 for t, b in zip(times, bare))
        per_sample = statistics.median((t - b) * 1000 / samples for t, b in zip(times, bare))
        default_ms = per_sample if arm.name == "default" else default_ms
        extra = "" if default_ms is None or arm.name in ("bare", "default") else f"{per_sample - default_ms:+.2f} ms"
        step_ms = statistics.median(times) * 1000 / STEPS_PER_ROUND
        print(f"{arm.name:<12} {step_ms:8.2f} {overhead:9.1%} {per_sample:10.2f} {extra:>11}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
