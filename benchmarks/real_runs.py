"""Build the real-run corpus of ``tests/detect/corpus/``: small models trained on CPU under a Tracker.

Each run trains a real model for a few thousand steps with ``Tracker(model, every=5)`` and stores
its logged series, one ``.npz`` per run: ``steps`` (the sampled steps) and one float32 array per
``<layer>|<space>|<metric>`` (``stable_rank`` and ``participation_ratio``), NaN where a sample is
missing. The detector tests read these files only; they never train.

Runs (seeded, deterministic up to the platform's float arithmetic):

- ``mlp_sgd``: MLP 64-256-256-256-10 on scikit-learn's digits, SGD momentum 0.9, lr 0.05,
  batch 64, 3000 steps (the issue's first finding: an early activation collapse).
- ``mlp_adam``: MLP 64-512-512-512-10 on digits, Adam lr 1e-3, batch 64, 8000 steps (hidden
  weight stable rank falls from about 130).
- ``cnn``: a two-conv CNN on the 8x8 digits images, SGD momentum, 3000 steps.
- ``transformer``: a two-layer transformer encoder that sorts sequences of 8 tokens from 16,
  Adam, 3000 steps.
- ``demo``: the run of ``ndtracker demo`` (a tanh MLP learning a low-rank teacher, 1500 steps):
  the README's example output.

Run: ``python benchmarks/real_runs.py [--out tests/detect/corpus] [--only mlp_sgd ...]`` (a few
minutes on two cores).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

import ndtracker
import ndtracker.demo
from ndtracker import Tracker

METRICS = ("stable_rank", "participation_ratio")
OUT = Path(__file__).resolve().parents[1] / "tests" / "detect" / "corpus"


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits (1797 images of 8x8), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.data / 16.0, dtype=torch.float32), torch.tensor(data.target)


def mlp(widths: list[int]) -> nn.Module:
    """ReLU MLP with the given layer widths."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions on 8x8 images, then a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x.view(-1, 1, 8, 8)))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


class SortingTransformer(nn.Module):
    """A two-layer transformer encoder that outputs, at each position, the sorted sequence's token."""

    def __init__(self, vocab: int = 16, length: int = 8, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.1)
        layer = nn.TransformerEncoderLayer(width, 4, 128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.position))


Batch = Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def digits_batches(size: int = 64) -> Batch:
    x, y = digits()

    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.randint(0, x.shape[0], (size,), generator=generator)
        return x[pick], y[pick]

    return batch


def sorting_batches(size: int = 64, vocab: int = 16, length: int = 8) -> Batch:
    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.randint(0, vocab, (size, length), generator=generator)
        return tokens, tokens.sort(dim=1).values

    return batch


def train(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, steps: int, log_dir: str) -> None:
    """Train under a Tracker (every=5, no online detection); the logs land in ``log_dir``."""
    generator = torch.Generator().manual_seed(1)
    loss_fn = nn.CrossEntropyLoss()
    with Tracker(model, every=5, log_dir=log_dir, detect=False) as tracker:
        for _ in range(steps):
            x, y = batch(generator)
            out = model(x)
            loss = loss_fn(out.reshape(-1, out.shape[-1]), y.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tracker.step(loss=loss)


def run(name: str, seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, Batch, int]:
    """The model, optimizer, batches and steps of one named run."""
    torch.manual_seed(seed)
    if name == "mlp_sgd":
        model = mlp([64, 256, 256, 256, 10])
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), digits_batches(), 3000
    if name == "mlp_adam":
        model = mlp([64, 512, 512, 512, 10])
        return model, torch.optim.Adam(model.parameters(), lr=1e-3), digits_batches(), 8000
    if name == "cnn":
        model = SmallCNN()
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), digits_batches(), 3000
    if name == "transformer":
        model = SortingTransformer()
        return model, torch.optim.Adam(model.parameters(), lr=1e-3), sorting_batches(), 3000
    raise ValueError(f"unknown run {name!r}; known: mlp_sgd, mlp_adam, cnn, transformer")


def series_of(log_dir: str) -> dict[str, np.ndarray]:
    """The logged series as ``{"steps": ..., "<layer>|<space>|<metric>": float32}``."""
    frame = ndtracker.load(log_dir)
    steps = np.sort(frame["step"].unique())
    out: dict[str, np.ndarray] = {"steps": steps.astype(np.int64)}
    for (layer, space), part in frame.groupby(["layer", "space"], sort=True):
        part = part.set_index("step").reindex(steps)
        for metric in METRICS:
            out[f"{layer}|{space}|{metric}"] = part[metric].to_numpy(dtype=np.float32)
    return out


def build(name: str, out: Path) -> Path:
    """Train one run and store its series as ``out/<name>.npz`` (``demo``: ``ndtracker demo``'s run)."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as log_dir:
        if name == "demo":
            with open(os.devnull, "w") as sink:
                ndtracker.demo.main(log_dir, console=Console(file=sink))
        else:
            model, optimizer, batch, steps = run(name)
            train(model, optimizer, batch, steps, log_dir)
        series = series_of(log_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.npz"
    np.savez_compressed(path, **series)
    print(f"{name}: {len(series) - 1} series x {series['steps'].size} samples, "
          f"{path.stat().st_size / 1024:.0f} KiB, {time.perf_counter() - started:.0f} s")  # fmt: skip
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", nargs="*", default=["mlp_sgd", "mlp_adam", "cnn", "transformer", "demo"])
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    for name in args.only:
        build(name, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
