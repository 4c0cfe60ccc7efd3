"""Train a small model under a Tracker and check what it logged: shared by the model tests."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import ndtracker
from ndtracker import Tracker

B = 4  # batch size of every model here


def mlp(seed: int | None = 0, widths: tuple[int, ...] = (12, 32, 16, 3)) -> nn.Sequential:
    """Linear layers of these widths with ReLUs between (layers "0", "2", ...), seeded unless None."""
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(fan_in, fan_out)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def as_loss(output) -> torch.Tensor:
    if isinstance(output, dict):
        output = next(iter(output.values()))
    elif isinstance(output, (tuple, list)):
        output = output[0]
    elif dataclasses.is_dataclass(output):
        output = dataclasses.astuple(output)[0]
    if isinstance(output, nn.utils.rnn.PackedSequence):
        output = output.data
    return output.float().pow(2).mean()


def train(model, batch, log_dir, steps=2, **options):
    """Train ``steps`` steps under a Tracker; return the tracker and the logged frame."""
    options.setdefault("detect", False)
    own_hooks = hook_count(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3) if params else None
    with Tracker(model, every=1, log_dir=str(log_dir), **options) as tracker:
        for _ in range(steps):
            loss = as_loss(model(batch()))
            if loss.requires_grad:
                loss.backward()
            if opt:
                opt.step()
                opt.zero_grad()
            tracker.step(loss=loss)
    assert hook_count(model) <= own_hooks  # a lazy module drops its own pre-hook once initialized
    return tracker, ndtracker.load(log_dir)


def shapes(df, space="activation") -> dict[str, tuple[int, int]]:
    part = df[df.space == space].drop_duplicates("layer")
    return {row.layer: (row.rows, row.cols) for row in part.itertuples()}


def assert_all_ok(tracker, df, steps=2):
    assert (df.status == "ok").all(), df[df.status != "ok"][["layer", "space", "status"]]
    act = df[df.space == "activation"]
    assert set(act.layer) == set(tracker.layers)
    assert len(act) == steps * len(tracker.layers)
    assert (act.stable_rank >= 1 - 1e-9).all() and (act.stable_rank <= act[["rows", "cols"]].min(axis=1)).all()
