"""A probe batch, a dense start and alerts while training runs.

Trains the quickstart MLP with a fixed held-out probe batch (low-noise activation curves), every
step for the first 100 steps and every 5th after, and reacts to collapse phases while training
runs: Adam drives the layers' stable rank down in the first steps, and the tracker says so a few
dozen steps later, from ``tracker.step()``. (The ``ndtracker`` logger reports each collapse too,
at WARNING.) Run: ``python examples/probe_and_alerts.py``.
"""

from __future__ import annotations

import torch
from torch import nn

import ndtracker
from ndtracker.tracking import OnlineEvent

from quickstart import make_data


def main(log_dir: str = "runs/probe_and_alerts", steps: int = 600) -> None:
    x, y = make_data()
    probe, x, y = x[:256], x[256:], y[256:]  # held out: inputs only, no labels
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    collapsed: list[OnlineEvent] = []

    def on_event(event: OnlineEvent) -> None:  # called inside tracker.step(), on this thread
        if event.kind == "phase" and event.phase == "collapse":
            collapsed.append(event)

    tracker = ndtracker.Tracker(
        model, every=[(0, 1), (100, 5)], probe=probe, log_dir=log_dir, on_event=on_event
    )
    for step in range(steps):
        index = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tracker.step(loss=loss)
        while collapsed:  # here you could stop, lower the learning rate, page someone...
            event = collapsed.pop(0)
            print(f"-> at step {step}: layer {event.layer!r} ({event.space}) collapses from step {event.step}")
    tracker.close()
    print(f"next: ndtracker report {tracker.log_dir}")


if __name__ == "__main__":
    main()
