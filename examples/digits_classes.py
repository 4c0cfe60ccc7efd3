"""Class manifolds of a digits classifier: they shrink and untangle, and the last layers collapse.

An MLP (64 → 128 → 128 → 64 → 10, ReLU) learns scikit-learn's 8x8 digits (1 797 images, 10
classes) with full-batch Adam (1 400 training images a step) until its training loss is near
zero. Every 50th step the Tracker measures, from the batch's labels, each layer's class
geometry (``ndtracker.load(log_dir, table="classes")``): NC1
(within- over between-class variability), class-manifold radius and dimension, centre and axes
alignment, nearest-class-centre accuracy. As the network learns, the radius and dimension of the
class manifolds fall (more so the deeper the layer), nearest-centre accuracy rises, and the last
layer's NC1 collapses by two orders of magnitude; in this short run the hidden layers' NC1 stays
near 1 (neural collapse of hidden layers needs a long terminal phase of training).

Run: ``python examples/digits_classes.py [log_dir]``; then ``ndtracker report <log_dir>`` and
open the HTML page for the class-geometry section.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import ndtracker

STEPS, EVERY = 2000, 50


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test], y[test]


def network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def train(log_dir: Path) -> float:
    x, y, x_test, y_test = data()
    model = network()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with ndtracker.Tracker(model, every=EVERY, log_dir=str(log_dir), detect=False) as tracker:
        for _ in range(STEPS):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            tracker.step(loss=loss, labels=y)
    with torch.no_grad():
        return float((model(x_test).argmax(1) == y_test).float().mean())


def main(log_dir: Path) -> None:
    accuracy = train(log_dir)
    table = ndtracker.load(log_dir, table="classes")
    steps = sorted(table.step.unique())
    loss = ndtracker.load(log_dir).groupby("step")["loss"].first()
    print(f"test accuracy {accuracy:.3f}; training loss {loss.iloc[0]:.3f} -> {loss.iloc[-1]:.2e}; "
          f"{len(steps)} samples, steps {steps[0]}-{steps[-1]}")
    columns = ["nc1", "radius", "dimension", "center_alignment", "axes_alignment", "ncc_accuracy"]
    for step in (steps[0], steps[len(steps) // 8], steps[len(steps) // 2], steps[-1]):
        rows = table[table.step == step].set_index("layer")[columns]
        print(f"\nstep {step}")
        print(rows.to_string(float_format=lambda v: f"{v:8.3f}"))
    for column in ("radius", "dimension", "nc1"):
        first = table[table.step == steps[0]][column].to_numpy()
        last = table[table.step == steps[-1]][column].to_numpy()
        print(f"\n{column:9s} per layer, first sample: {np.array2string(first, precision=3)}; "
              f"last: {np.array2string(last, precision=3)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="digits-")))
