"""On oversubscribed CPUs a measurement of small matrices runs on one intra-op thread; the caller's
setting comes back, and free CPUs keep it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ndtracker
from ndtracker import spectra
from ndtracker.spectra import Job, StreamingSpectrum, batch, threads

pytestmark = pytest.mark.skipif(not threads._openmp(), reason="the thread count is only changed under OpenMP")


@pytest.fixture
def two_threads(monkeypatch):
    """The caller's setting, two intra-op threads (whatever this machine has), on CPUs that are
    oversubscribed; the setting is restored after."""
    monkeypatch.setattr(threads, "_oversubscribed", lambda: True)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def spy_on(monkeypatch, module, name: str) -> list[int]:
    """Record the intra-op thread count each call of ``module.name`` sees."""
    seen: list[int] = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


def jobs(shape: tuple[int, int]) -> list[Job]:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    metrics = frozenset({"stable_rank"})
    return [Job(x, "randomized", metrics, StreamingSpectrum()), Job(x[:, :40], "exact", metrics)]


def test_small_matrices_are_measured_on_one_thread_and_the_setting_is_restored(two_threads, monkeypatch):
    seen = spy_on(monkeypatch, batch, "_measure_rows")
    results = spectra.measure_many(jobs((300, 200)))
    assert seen == [1]
    assert torch.get_num_threads() == 2
    assert all(r.stable_rank > 1 for r in results)


def test_one_large_cpu_matrix_keeps_the_callers_threads(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "ONE_THREAD_ELEMENTS", 300 * 200 - 1)  # (300, 200) is now "large"
    seen = spy_on(monkeypatch, batch, "_measure_rows")
    spectra.measure_many(jobs((300, 200)))
    assert seen == [2]


def test_free_cpus_keep_the_callers_threads(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "_oversubscribed", lambda: False)
    seen = spy_on(monkeypatch, batch, "_measure_rows")
    spectra.measure_many(jobs((300, 200)))
    assert seen == [2]


@pytest.mark.parametrize(
    ("load", "cpus", "expected"), [(3.5, 2, True), (2.9, 2, False), (2.0, 2, False), (0.1, 16, False), (25.0, 16, True)]
)
def test_oversubscribed_compares_the_load_average_with_the_cpus(monkeypatch, load, cpus, expected):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(threads, "_cpus", lambda: cpus)
    assert threads._oversubscribed() is expected


def test_no_load_average_means_not_oversubscribed(monkeypatch):
    def missing():
        raise OSError("no load average here")

    monkeypatch.setattr(threads.os, "getloadavg", missing)
    assert threads._oversubscribed() is False


def test_the_setting_is_restored_when_the_measurement_raises(two_threads, monkeypatch):
    def fail(*args, **kwargs):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")

    monkeypatch.setattr(batch, "_measure_rows", fail)
    with pytest.raises(RuntimeError, match="boom"):
        spectra.measure_many(jobs((300, 200)))
    assert torch.get_num_threads() == 2


def test_a_caller_on_one_thread_is_left_alone(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    try:
        spectra.measure(torch.randn(50, 30), estimator="exact", metrics={"stable_rank"})
    finally:
        monkeypatch.undo()
        torch.set_num_threads(before)
    assert calls == []


def test_a_tracked_loop_captures_and_measures_on_one_thread_and_trains_on_the_callers(two_threads, monkeypatch, tmp_path):
    captures = spy_on(monkeypatch, spectra.matrices, "_centred")
    measures = spy_on(monkeypatch, batch, "_measure_rows")
    seen_in_forward: list[int] = []
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))
    model[0].register_forward_hook(lambda *_: seen_in_forward.append(torch.get_num_threads()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with ndtracker.Tracker(model, every=2, log_dir=tmp_path, detect=False) as tracker:
        for _ in range(6):
            loss = model(torch.randn(64, 20)).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            tracker.step(loss=loss)
    assert captures and set(captures) == {1}
    assert measures and set(measures) == {1}
    assert set(seen_in_forward) == {2}  # the user's forward, hooks included, on the caller's threads
    assert torch.get_num_threads() == 2
