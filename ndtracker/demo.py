"""Train a small tracked model whose layers visibly change dimension, then report on it.

The task is a classic of learning dynamics: a student MLP (tanh, three hidden layers of 64, weights
started small) learns a linear teacher ``y = T x`` whose four singular values are 6, 3, 1.5 and
0.75. From a small initialisation a network picks up the teacher's directions one at a time,
strongest first ("saddle to saddle"): the loss falls in steps, and at each step the layers'
effective dimensionality jumps. The random initial weights first collapse onto the first direction,
then expand by one direction per loss drop, then stabilise. Inputs are fresh Gaussian batches from a
seeded generator, so nothing is downloaded and every run is the same.

``ndtracker demo --out DIR`` runs :func:`main`. This module imports torch; the CLI imports it only
for the ``demo`` verb.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from ndtracker.reports import report
from ndtracker.reports.terminal import progress_bar
from ndtracker.tracking import Tracker
from ndtracker.vocabulary import METRICS



@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo run; the defaults take about 10 s on two CPU cores.

    Attributes:
        steps: Optimizer steps.
        every: Sample every this many steps.
        features: Input and output width of the teacher.
        hidden: Width of the student's hidden layers.
        modes: The teacher's singular values, strongest first.
        init_scale: Factor on PyTorch's default initial weights (small: learning in steps).
        batch: Samples per batch.
        lr: SGD learning rate (momentum 0.9).
        seed: Seed of the teacher, the student and the data.
    """

    steps: int = 1500
    every: int = 5
    features: int = 32
    hidden: int = 64
    modes: tuple[float, ...] = (6.0, 3.0, 1.5, 0.75)
    init_scale: float = 0.1
    batch: int = 256
    lr: float = 0.01
    seed: int = 0


def main(out: str | Path, *, steps: int | None = None, console: Console | None = None) -> int:
    """Train the demo model with tracking, write its run and HTML report under ``out``, summarise.

    Args:
        out: Directory for the run (``run.json``, ``metrics/``, ``events/``) and ``report.html``.
        steps: Optimizer steps (default 1500).
        console: Where to print the summary (default: stdout).

    Returns:
        0 (the CLI's exit code).
    """
    console = console or Console()
    config = DemoConfig() if steps is None else DemoConfig(steps=steps)
    out = Path(out)
    console.print(f"ndtracker demo: {describe(config)}", markup=False)
    started = time.perf_counter()
    run_id = train(config, out)
    console.print(f"trained and tracked in {time.perf_counter() - started:.1f} s\n")
    rep = report(out, run_id=run_id, progress=True)
    rep.render(console)
    rep.to_html(out / "report.html", progress=True)
    lines = {
        "run logs": f"{out}  (run {run_id})", "load them": f"ndtracker.load({str(out)!r})",
        "HTML report": str(out / "report.html"), "again": f"ndtracker report {out} --html FILE",
    }  # fmt: skip
    console.print()
    for name, value in lines.items():
        console.print(f"{name + ':':<13}{value}", markup=False)
    return 0


def describe(config: DemoConfig) -> str:
    """Say in one line what the demo trains.

    Args:
        config: The demo's settings.

    Returns:
        A one-line description.
    """
    widths = "-".join(str(w) for w in [config.features] + [config.hidden] * 3 + [config.features])
    modes = ", ".join(f"{m:g}" for m in config.modes)
    return (
        f"a tanh MLP {widths} (small init) learns a linear teacher with singular values {modes}; "
        f"{config.steps} steps, tracked every {config.every}"
    )


def train(config: DemoConfig, out: Path) -> str:
    """Train the student with a Tracker attached, and return the run id.

    Runs on one CPU thread (restored afterwards): a model this small only loses time synchronising
    threads, several times over on a busy machine.

    Args:
        config: The demo's settings.
        out: The Tracker's ``log_dir``.

    Returns:
        The run id the Tracker wrote.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(config, out)
    finally:
        torch.set_num_threads(threads)


def _train(config: DemoConfig, out: Path) -> str:
    generator = torch.Generator().manual_seed(config.seed)
    teacher = make_teacher(config, generator)
    model = make_student(config, generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    tracker = Tracker(model, every=config.every, log_dir=str(out), metrics=METRICS)
    with tracker, progress_bar(True) as bar:
        task = bar.add_task("training", total=config.steps)
        for _ in range(config.steps):
            loss = train_step(model, optimizer, teacher, config, generator)
            tracker.step(loss=loss)
            bar.update(task, advance=1)
    return tracker.run_id


def make_teacher(config: DemoConfig, generator: torch.Generator) -> torch.Tensor:
    """Draw the teacher ``T = U diag(modes) Vᵀ`` with random orthonormal ``U`` and ``V``.

    Args:
        config: The demo's settings.
        generator: Source of randomness.

    Returns:
        The teacher matrix, shape (features, features), rank ``len(config.modes)``.
    """
    k, n = len(config.modes), config.features
    left, _ = torch.linalg.qr(torch.randn(n, n, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(n, n, generator=generator))
    return left[:, :k] @ torch.diag(torch.tensor(config.modes)) @ right[:, :k].T


def make_student(config: DemoConfig, generator: torch.Generator) -> nn.Sequential:
    """Build the student MLP with small initial weights and zero biases.

    Args:
        config: The demo's settings.
        generator: Source of randomness for the initial weights.

    Returns:
        ``fc1, tanh1, fc2, tanh2, fc3, tanh3, fc4`` (the ``fc`` layers are the tracked ones).
    """
    widths = [config.features] + [config.hidden] * 3 + [config.features]
    layers: dict[str, nn.Module] = {}
    for depth, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        layers[f"fc{depth}"] = small_linear(fan_in, fan_out, config.init_scale, generator)
        if depth < len(widths) - 1:
            layers[f"tanh{depth}"] = nn.Tanh()
    return nn.Sequential(OrderedDict(layers))


def small_linear(fan_in: int, fan_out: int, scale: float, generator: torch.Generator) -> nn.Linear:
    """Make a Linear layer with PyTorch's default weight range times ``scale`` and zero bias.

    Args:
        fan_in: Input features.
        fan_out: Output features.
        scale: Factor on the default bound ``1 / sqrt(fan_in)``.
        generator: Source of randomness.

    Returns:
        The layer.
    """
    linear = nn.Linear(fan_in, fan_out)
    bound = scale / fan_in**0.5
    with torch.no_grad():
        linear.weight.copy_((torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound)
        linear.bias.zero_()
    return linear


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    teacher: torch.Tensor,
    config: DemoConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Take one SGD step on a fresh batch of the teacher's task.

    Args:
        model: The student.
        optimizer: Its optimizer.
        teacher: The teacher matrix, shape (features, features).
        config: The demo's settings.
        generator: Source of the batch.

    Returns:
        The batch's loss (squared error summed over outputs, mean over samples), detached.
    """
    inputs = torch.randn(config.batch, config.features, generator=generator)
    noise = 0.05 * torch.randn(config.batch, config.features, generator=generator)
    loss = (model(inputs) - (inputs @ teacher.T + noise)).pow(2).sum(dim=1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()
