"""Quickstart: the three ndtracker lines in a small, real training loop.

Trains an MLP on the scikit-learn-free "two moons in 32 dimensions" task for a few hundred steps,
logs every 5th step, then prints what was logged. Run: ``python examples/quickstart.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import ndtracker


def make_data(n: int = 4096, dim: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved half-moons embedded at random in ``dim`` dimensions, plus noise."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g) * math.pi
    label = torch.randint(0, 2, (n,), generator=g)
    plane = torch.stack([torch.cos(angle) + label, torch.sin(angle) * (1 - 2 * label.float()) + 0.5 * label], 1)
    embed = torch.randn(2, dim, generator=g)
    x = plane @ embed + 0.1 * torch.randn(n, dim, generator=g)
    return x, label


def main(log_dir: str = "runs/quickstart", steps: int = 400) -> None:
    x, y = make_data()
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    tracker = ndtracker.Tracker(model, every=5, log_dir=log_dir)  # 1: attach
    for step in range(steps):
        index = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tracker.step(loss=loss)  # 2: count the step
    tracker.close()  # 3: flush and detach

    df = ndtracker.load(log_dir)
    print(df.groupby(["layer", "space"]).stable_rank.agg(["first", "last", "min", "max"]))
    print(f"\n{len(df)} rows in {tracker.log_dir}; next: ndtracker report {tracker.log_dir}")


if __name__ == "__main__":
    main()
