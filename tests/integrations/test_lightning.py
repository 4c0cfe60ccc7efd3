"""The Lightning callback: one step per optimizer step, the trainer's step axis and loss, resume."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional as F

pl = pytest.importorskip("lightning.pytorch")

import ndtracker  # noqa: E402
from ndtracker.integrations.lightning import TrackerCallback  # noqa: E402
from training_helpers import hook_count, mlp  # noqa: E402


class Classifier(pl.LightningModule):
    """An MLP that records (global step, loss) of every training batch."""

    def __init__(self, fail_at: int | None = None, interrupt: bool = False) -> None:
        super().__init__()
        self.net = mlp()
        self.batch_losses: list[tuple[int, float]] = []
        self.fail_at, self.interrupt = fail_at, interrupt

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and self.trainer.global_step == self.fail_at:
            raise KeyboardInterrupt if self.interrupt else RuntimeError("boom")
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        self.batch_losses.append((self.trainer.global_step, loss.item()))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(batches: int = 24) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4 * batches, 12, generator=generator)
    y = torch.randint(0, 3, (4 * batches,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def trainer(callback, max_steps: int, **options) -> pl.Trainer:
    options = {"logger": False, "enable_checkpointing": False, "devices": 1, **options}
    return pl.Trainer(
        accelerator="cpu", max_steps=max_steps, callbacks=[callback],
        enable_progress_bar=False, enable_model_summary=False, **options,
    )  # fmt: skip


def step_losses(module: Classifier) -> dict[int, float]:
    """The mean loss of each optimizer step's batches (what the step's backward used)."""
    by_step: dict[int, list[float]] = {}
    for step, loss in module.batch_losses:
        by_step.setdefault(step, []).append(loss)
    return {step: sum(losses) / len(losses) for step, losses in by_step.items()}


def test_one_step_per_optimizer_step_with_the_trainers_loss(tmp_path):
    module = Classifier()
    callback = TrackerCallback(every=2, log_dir=str(tmp_path / "nd"), detect=False)
    trainer(callback, max_steps=6, accumulate_grad_batches=2).fit(module, loader())
    frame = ndtracker.load(tmp_path / "nd")
    assert sorted(set(frame["step"])) == [0, 2, 4]  # 12 batches, 6 optimizer steps
    assert set(frame["layer"]) == {"net.0", "net.2", "net.4"}
    expected = step_losses(module)
    batches_per_step = [[s for s, _ in module.batch_losses].count(step) for step in range(6)]
    assert batches_per_step == [2] * 6
    for step, loss in frame.groupby("step")["loss"].first().items():
        assert loss == pytest.approx(expected[step], rel=1e-6)
    assert callback.tracker.current_step == 6
    assert hook_count(module) == 0


def test_a_warning_inside_fit_points_at_the_users_fit_line(tmp_path, monkeypatch):
    """A measurement that fails inside ``trainer.fit()`` warns at the user's line, not at a frame
    of Lightning's loop."""
    def broken(jobs):
        raise RuntimeError("no measurement today")

    monkeypatch.setattr(ndtracker.spectra, "measure_many", broken)
    callback = TrackerCallback(every=2, log_dir=str(tmp_path / "nd"), detect=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(callback, max_steps=4).fit(Classifier(), loader())
    ours = [w for w in caught if str(w.message).startswith("ndtracker") and "measurement failed" in str(w.message)]
    assert ours and {w.filename for w in ours} == {__file__}


def test_figures_go_to_the_trainers_loggers(tmp_path):
    logger = pl.loggers.CSVLogger(tmp_path / "csv", name="", version="")
    callback = TrackerCallback(every=2, log_dir=str(tmp_path / "nd"), detect=False)
    trainer(callback, max_steps=4, logger=logger, log_every_n_steps=1).fit(Classifier(), loader())
    import pandas as pd

    logged = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    tag = "ndtracker/weight/stable_rank/net.2"
    rows = logged.dropna(subset=[tag])
    frame = ndtracker.load(tmp_path / "nd")
    weight = frame[(frame.space == "weight") & (frame.layer == "net.2")].set_index("step")["stable_rank"]
    assert list(rows["step"]) == [0, 2]
    assert list(rows[tag]) == pytest.approx(list(weight.loc[[0, 2]]))
    assert set(logged.dropna(subset=["train_loss"])["step"]) == {0, 1, 2, 3}  # the same axis


def test_report_false_leaves_the_loggers_alone(tmp_path):
    logger = pl.loggers.CSVLogger(tmp_path / "csv", name="", version="")
    callback = TrackerCallback(every=1, log_dir=str(tmp_path / "nd"), detect=False, report=False)
    trainer(callback, max_steps=2, logger=logger, log_every_n_steps=1).fit(Classifier(), loader())
    assert "ndtracker" not in (tmp_path / "csv" / "metrics.csv").read_text()


@pytest.mark.parametrize("interrupt", [False, True])
def test_closed_when_fit_fails_or_is_interrupted(tmp_path, interrupt):
    module = Classifier(fail_at=3, interrupt=interrupt)
    callback = TrackerCallback(every=1, log_dir=str(tmp_path), detect=False, flush_secs=3600)
    with pytest.raises(SystemExit if interrupt else RuntimeError):
        trainer(callback, max_steps=6).fit(module, loader())
    assert hook_count(module) == 0
    assert sorted(set(ndtracker.load(tmp_path)["step"])) == [0, 1, 2]  # flushed by close


def test_resumed_fit_continues_the_step_axis_and_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default log_dir is relative
    checkpoints = pl.callbacks.ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    first = TrackerCallback(every=2, detect=False)
    pl.Trainer(
        accelerator="cpu", devices=1, max_steps=4, callbacks=[first, checkpoints], logger=False,
        enable_progress_bar=False, enable_model_summary=False, accumulate_grad_batches=2,
    ).fit(Classifier(), loader())  # fmt: skip
    [checkpoint] = (tmp_path / "ckpt").glob("*.ckpt")
    second = TrackerCallback(every=2, detect=False)
    trainer(second, max_steps=8, accumulate_grad_batches=2).fit(Classifier(), loader(), ckpt_path=checkpoint)
    assert second.tracker.log_dir == first.tracker.log_dir
    frame = ndtracker.load(first.tracker.log_dir)
    steps_per_run = frame.groupby("run_id")["step"].agg(lambda s: sorted(set(s)))
    assert sorted(steps_per_run) == [[0, 2], [4, 6]]


def test_options_are_checked_at_construction():
    with pytest.raises(TypeError, match="unknown Tracker option 'evry'"):
        TrackerCallback(evry=5)
    with pytest.raises(TypeError, match="start_step"):
        TrackerCallback(start_step=3)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_on_two_cpu_processes(tmp_path):
    """Lightning strategy="ddp_spawn" on 2 CPU processes: one run, rank 0 writes, steps as on one device."""
    callback = TrackerCallback(every=2, log_dir=str(tmp_path / "nd"), detect=False)
    trainer(
        callback, max_steps=6, accumulate_grad_batches=2, devices=2, strategy="ddp_spawn"
    ).fit(Classifier(), loader())  # fmt: skip
    frame = ndtracker.load(tmp_path / "nd")
    assert frame["run_id"].nunique() == 1
    assert sorted(set(frame["step"])) == [0, 2, 4]  # each rank's 6 optimizer steps, sampled every 2
    assert set(frame["rank"]) == {0}  # only rank 0 wrote
    [run] = json.loads((tmp_path / "nd" / "run.json").read_text())["runs"]
    assert run["distributed"]["world_size"] == 2
    for space in ("weight", "activation"):
        rows = frame[frame.space == space]
        assert set(rows["layer"]) == {"net.0", "net.2", "net.4"}, space
        assert np.isfinite(rows["stable_rank"].to_numpy(float)).all(), space
