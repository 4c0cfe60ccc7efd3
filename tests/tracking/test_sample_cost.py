"""What a sample costs, counted deterministically: tensor operations and bytes held (never time).

* A sample's operations (aten ops dispatched during the ``tracker.step()`` calls of a sample,
  counted by a ``TorchDispatchMode``) do not grow with the number of same-shape layers: they are
  stacked and measured by one batched run.
* The bytes a sampled step holds from its forward to ``tracker.step()`` (live tensors created
  during the forward, weakly referenced) do not grow with the number of tracked layers beyond a
  small constant: past ``HELD_BYTES`` the captures are measured in the hook and dropped.
"""

from __future__ import annotations

import collections
import copy
import gc
import weakref

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import ndtracker
from ndtracker import Tracker
from ndtracker.tracking import capture


class Operations(TorchDispatchMode):
    """Count every aten operation dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


class LiveTensors(TorchDispatchMode):
    """Weak references to every tensor made inside the block; :meth:`live_bytes` sums their storages."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.made += [weakref.ref(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        return out

    def live_bytes(self) -> int:
        gc.collect()
        storages = {}
        for ref in self.made:
            tensor = ref()
            if tensor is not None and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())


class Parallel(nn.Module):
    """``count`` identical same-shape Linear layers on one input, summed (identical spectra)."""

    def __init__(self, count: int, width: int) -> None:
        super().__init__()
        first = nn.Linear(width, width)
        self.layers = nn.ModuleList([first] + [copy.deepcopy(first) for _ in range(count - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(layer(x) for layer in self.layers)


def sample_operations(count: int, width: int, rows: int, tmp_path, **options) -> collections.Counter:
    """Operations of the ``tracker.step()`` calls over two samples (warm), every=2."""
    torch.manual_seed(0)
    model, x = Parallel(count, width), torch.randn(rows, width)
    total: collections.Counter = collections.Counter()
    with Tracker(model, every=2, log_dir=str(tmp_path / str(count)), detect=False, **options) as tracker:
        for step in range(6):
            model(x).square().mean().backward()
            with Operations() as operations:
                tracker.step()
            if step >= 2:  # the first sample starts cold; the next ones are warm
                total += operations.counts
    assert len(ndtracker.load(tmp_path / str(count))) == 2 * count * 3  # every row was logged
    return total


@pytest.mark.parametrize(("width", "rows", "route"), [(48, 64, "exact"), (160, 256, "randomized")])
def test_a_sample_s_operations_do_not_grow_with_same_shape_layers(tmp_path, width, rows, route):
    two = sample_operations(2, width, rows, tmp_path)
    eight = sample_operations(8, width, rows, tmp_path)
    estimators = set(ndtracker.load(tmp_path / "8").estimator)
    assert estimators == {route}
    assert sum(two.values()) == sum(eight.values()), (eight - two).most_common(5)


def test_without_stacking_the_operations_would_grow(tmp_path):
    """The counter sees the estimator's operations: unstackable jobs (full spectrum) grow with layers."""
    two = sample_operations(2, 48, 64, tmp_path, metrics=("effective_rank",))
    eight = sample_operations(8, 48, 64, tmp_path, metrics=("effective_rank",))
    assert sum(eight.values()) > sum(two.values()) + 6 * 5


def held_bytes(count: int, width: int, rows: int, tmp_path, sampled: bool) -> int:
    """Bytes of tensors made by a forward and still alive before ``tracker.step()``."""
    torch.manual_seed(0)
    model, x = Parallel(count, width), torch.randn(rows, width)
    every = 2 if sampled else 1000
    with Tracker(model, every=every, log_dir=str(tmp_path / f"{count}{sampled}"), detect=False) as tracker:
        for _ in range(2):  # step 0 is sampled (every=2) or not (every=1000: step 0 only)
            model(x).square().mean().backward()
            tracker.step()
        with LiveTensors() as live:
            loss = model(x).square().mean()  # step 2: sampled with every=2, not with every=1000
        held = live.live_bytes()
        loss.backward()
        tracker.step()
    return held


def test_bytes_held_between_forward_and_step_do_not_grow_with_tracked_layers(tmp_path, monkeypatch):
    monkeypatch.setattr(capture, "HELD_BYTES", 3 * 256 * 256 * 4)  # three captures
    one_capture = 256 * 256 * 4
    extra = {
        count: held_bytes(count, 256, 256, tmp_path, True) - held_bytes(count, 256, 256, tmp_path, False)
        for count in (5, 17)  # four captures are measured at once; one is left held
    }
    assert extra[5] >= one_capture  # the held capture: the measure sees it
    assert abs(extra[17] - extra[5]) <= 64 * 1024, extra  # 12 more layers: a few result bytes each
    assert extra[17] <= capture.HELD_BYTES + one_capture


def test_without_the_bound_captures_held_grow_with_tracked_layers(tmp_path):
    """The default bound is far above these captures: they are all held, and the measure shows it."""
    extra = {
        count: held_bytes(count, 256, 256, tmp_path, True) - held_bytes(count, 256, 256, tmp_path, False)
        for count in (4, 16)
    }
    assert extra[16] - extra[4] >= 12 * 256 * 256 * 4


def test_captures_measured_in_the_hook_give_the_same_rows(tmp_path, monkeypatch):
    """Measuring early changes when, not what: the rows equal those of a sample measured at its end."""
    frames = {}
    for name, bound in (("late", capture.HELD_BYTES), ("early", 1)):
        monkeypatch.setattr(capture, "HELD_BYTES", bound)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 32))
        data = torch.randn(6, 200, 64, generator=torch.Generator().manual_seed(1))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with Tracker(model, every=2, log_dir=str(tmp_path / name), detect=False, metrics=("stable_rank", "participation_ratio")) as tracker:
            for x in data:
                model(x).square().mean().backward()
                opt.step()
                opt.zero_grad()
                tracker.step()
        frames[name] = ndtracker.load(tmp_path / name).sort_values(["step", "layer", "space"]).reset_index(drop=True)
    late, early = frames["late"], frames["early"]
    assert len(late) == len(early) == 3 * 3 * 2
    for column in ("stable_rank", "participation_ratio"):
        assert early[column].tolist() == pytest.approx(late[column].tolist(), rel=1e-3)
    assert (early.status == "ok").all()
