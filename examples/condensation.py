"""Condensation: a two-layer network from a small initialisation aligns its neurons; a standard one does not.

A tanh network with 5 inputs and 200 hidden neurons fits a two-neuron teacher on 80 points by
full-batch gradient descent. From a small initialisation (weights ~ N(0, (1e-3)²), learning rate
0.5) the hidden neurons' input-weight vectors (bias included) condense onto one or two shared
directions early in training, so the wide layer acts as a narrow one; from PyTorch's default
initialisation (learning rate 0.05: 0.2 and above diverge at this width) they stay spread out. The Tracker logs
``condensation`` (fraction of neuron pairs with |cos| >= 0.9) and ``directions`` (effective number
of distinct directions) on the weight rows.

Run: ``python examples/condensation.py [log_dir]``; then ``ndtracker report <log_dir>/small``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import ndtracker

STEPS, EVERY, WIDTH, INPUTS = 2000, 100, 200, 5
LEARNING_RATES = {"small": 0.5, "standard": 0.05}


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(80, INPUTS, generator=generator)
    teacher = torch.randn(2, INPUTS, generator=generator)
    y = torch.tanh(x @ teacher[0]) - torch.tanh(x @ teacher[1])
    return x, y[:, None]


def network(small: bool, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(INPUTS, WIDTH), nn.Tanh(), nn.Linear(WIDTH, 1, bias=False))
    if small:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, 1e-3)
    return model


def train(name: str, log_dir: Path) -> None:
    x, y = data()
    model = network(name == "small")
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATES[name])
    with ndtracker.Tracker(model, every=EVERY, log_dir=str(log_dir), condensation=True, detect=False) as tracker:
        for _ in range(STEPS):
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            tracker.step(loss=loss)


def main(root: Path) -> None:
    for name in LEARNING_RATES:
        train(name, root / name)
        frame = ndtracker.load(root / name)
        hidden = frame[(frame.layer == "0") & (frame.space == "weight")]
        print(f"{name} initialisation: hidden layer ({WIDTH} neurons), loss {frame.loss.iloc[-1]:.2e} at the end")
        print("   step  condensation  directions")
        for step in (0, 100, 200, 500, 1000, STEPS - EVERY):
            row = hidden[hidden.step == step].iloc[0]
            print(f"  {step:5d}  {row.condensation:12.3f}  {row.directions:10.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="condensation-")))
