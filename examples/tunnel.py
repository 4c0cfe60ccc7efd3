"""The tunnel effect: a deep MLP without residual connections vs the same MLP with them.

Masarczyk et al. (NeurIPS 2023) find that in deep networks the representation's rank collapses in
the deeper layers (the *tunnel*), that the tunnel forms early in training, and that linear-probe
accuracy stops improving where it starts. This script trains two deep MLPs (12 blocks of width
128 by default) on scikit-learn's digits, one plain (``x -> relu(Wx)``, He-initialised) and one
residual (``x -> x + relu(Wx) / sqrt(depth)``), tracks each block's output on a fixed, labelled
probe batch of held-out digits (``probe=(x, y)``: spectra, linear probes, class geometry and layer
similarity all on the same unseen examples), and prints where the tunnel starts (on
``effective_rank``), when it formed, where probe accuracy stops rising, the class geometry over
depth, and the CKA inside the tunnel vs before it.

Run: ``python examples/tunnel.py [--steps 800] [--depth 12] [--width 128] [--log-dir runs/tunnel]``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import ndtracker
from ndtracker.reports.science import cka_at, tunnel_formed


METRIC = "effective_rank"  # the closest of ours to the paper's numerical rank
METRICS = ("stable_rank", "effective_rank")
HELD_OUT = 128  # digits never trained on: the probe batch (as many as a training batch)
EVERY = 10  # steps between samples


class Block(nn.Module):
    """One layer of the MLP: ``relu(Wx)`` (He-initialised, so the plain net trains), or with
    ``residual`` ``x + relu(Wx) / sqrt(depth)`` (the branch scaled so the sum stays bounded)."""

    def __init__(self, width: int, residual: bool, depth: int) -> None:
        super().__init__()
        self.linear, self.residual, self.scale = nn.Linear(width, width), residual, depth**-0.5
        nn.init.kaiming_normal_(self.linear.weight, nonlinearity="relu")
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.linear(x))
        return x + self.scale * out if self.residual else out


def mlp(depth: int, width: int, residual: bool) -> nn.Sequential:
    blocks = [Block(width, residual, depth) for _ in range(depth)]
    return nn.Sequential(nn.Linear(64, width), *blocks, nn.Linear(width, 10))


def train(model: nn.Sequential, data, probe, steps: int, log_dir: Path, seed: int = 0) -> ndtracker.reports.Report:
    x, y = data
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    blocks = [name for name, module in model.named_children() if isinstance(module, Block)]
    shutil.rmtree(log_dir, ignore_errors=True)
    with ndtracker.Tracker(model, every=EVERY, log_dir=str(log_dir), layers=blocks, spaces="activation",
                           metrics=METRICS, probe=probe, linear_probes=True, similarity=True,
                           detect=False) as tracker:  # fmt: skip
        for _ in range(steps):
            index = torch.randint(0, x.shape[0], (128,), generator=generator)
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            loss.backward()
            opt.step()
            opt.zero_grad()
            tracker.step(loss=loss)
    return ndtracker.report(log_dir, metric=METRIC)


def describe(name: str, rep) -> None:
    tunnel = rep.tunnel[rep.tunnel.space == "activation"]
    last = tunnel.iloc[-1]
    print(f"\n== {name}", flush=True)
    print(f"loss {rep.loss[1][0]:.3f} -> {rep.loss[1][-1]:.3f}")
    profile = [s.values[-1] for s in rep.series]
    print(f"{METRIC} over depth at the last step:", " ".join(f"{v:.1f}" for v in profile))
    onsets = tunnel.onset_index.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    shown = [None if np.isnan(v) else int(v) + 1 for v in onsets[::10]]
    print(f"tunnel onset block over the run (every 10th sample, {10 * EVERY} steps apart): {shown}")
    if np.isnan(onsets[-1]):
        print("no tunnel at the last step")
    else:
        print(f"tunnel from block {int(last.onset_index) + 1} of {len(rep.layers)} (module {last.onset_layer!r}); "
              f"the tunnel formed by step {tunnel_formed(rep.tunnel)}")  # fmt: skip
    print(f"probe accuracy stops rising at block {last.probe_saturation_index + 1} (module "
          f"{last.probe_saturation_layer!r})")  # fmt: skip
    act = ndtracker.load(rep.run_dir, columns=["step", "layer", "space", "probe_accuracy"])
    final = act[act.step == act.step.max()].set_index("layer").probe_accuracy.reindex(list(rep.layers))
    print("probe accuracy over depth at the last step:", " ".join(f"{v:.2f}" for v in final))
    classes = ndtracker.load(rep.run_dir, table="classes")
    classes = classes[classes.step == classes.step.max()].set_index("layer").reindex(list(rep.layers))
    print(f"class geometry over depth at the last step (source: {', '.join(sorted(set(classes.source)))}):")
    print("  nc1:         ", " ".join(f"{v:.2f}" for v in classes.nc1))
    print("  ncc accuracy:", " ".join(f"{v:.2f}" for v in classes.ncc_accuracy))
    step = int(rep.similarity.step.max())
    cka = cka_at(rep.similarity, step, list(rep.layers))
    cut = len(rep.layers) // 2 if np.isnan(onsets[-1]) else int(onsets[-1])
    inside, before = cka[cut:, cut:], cka[:cut, :cut]
    print(f"mean CKA at step {step} among blocks {cut + 1}-{len(rep.layers)}: {np.nanmean(inside):.3f}, "
          f"among blocks 1-{cut}: {np.nanmean(before):.3f}")  # fmt: skip
    for row in rep.diagnostics.itertuples():
        print(f"diagnostic: {row.condition} at steps {row.first_step}-{row.last_step}: {row.meaning}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--log-dir", default="runs/tunnel")
    args = parser.parse_args(argv)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    x, y = (x - x.mean(0)) / (x.std(0) + 1e-3), torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    data, probe = (x[order[HELD_OUT:]], y[order[HELD_OUT:]]), (x[order[:HELD_OUT]], y[order[:HELD_OUT]])
    for residual in (False, True):
        torch.manual_seed(0)
        name = "residual" if residual else "plain"
        rep = train(mlp(args.depth, args.width, residual), data, probe, args.steps, Path(args.log_dir) / name)
        describe(f"{args.depth}-block MLP, {name}", rep)


if __name__ == "__main__":
    main()
