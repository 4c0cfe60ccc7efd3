"""The Hugging Face callback: one step per optimizer step, the Trainer's step axis and loss."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import ndtracker  # noqa: E402
from ndtracker.integrations.huggingface import TrackerCallback  # noqa: E402
from training_helpers import hook_count  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    """Random token sequences, each its own label (a language-modelling set with no download)."""

    def __init__(self, size: int = 32, length: int = 8) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (size, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    return transformers.GPT2LMHeadModel(config)


def make_trainer(tmp_path, *callbacks, **options) -> transformers.Trainer:
    options = {
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "max_steps": 4,
        "use_cpu": True, "save_strategy": "no", "disable_tqdm": True, "report_to": [],
        "logging_steps": 1, **options,
    }  # fmt: skip
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), **options)
    return transformers.Trainer(model=gpt2(), args=args, train_dataset=Tokens(), callbacks=list(callbacks))


def train(tmp_path, callback, **options) -> transformers.Trainer:
    trainer = make_trainer(tmp_path, callback, **options)
    trainer.train()
    return trainer


def test_one_step_per_optimizer_step_with_the_trainers_loss(tmp_path):
    callback = TrackerCallback(every=2, log_dir=str(tmp_path / "nd"), detect=False)
    trainer = train(tmp_path, callback, max_steps=5)
    frame = ndtracker.load(tmp_path / "nd")
    assert sorted(set(frame["step"])) == [0, 2, 4]  # 10 micro-batches, 5 optimizer steps
    logged = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
    assert sorted(logged) == [1, 2, 3, 4, 5]  # the Trainer reports step t once done, as t + 1
    for step, loss in frame.groupby("step")["loss"].first().items():
        assert loss == pytest.approx(logged[step + 1], rel=1e-9)
    assert "transformer.h.0.mlp.c_fc" in set(frame["layer"])
    assert callback.tracker.current_step == 5
    assert hook_count(trainer.model) == 0


def test_loss_is_null_when_the_step_was_not_logged_alone(tmp_path):
    callback = TrackerCallback(every=1, log_dir=str(tmp_path / "nd"), detect=False)
    train(tmp_path, callback, max_steps=4, logging_steps=2)
    losses = ndtracker.load(tmp_path / "nd").groupby("step")["loss"].first()
    assert list(losses.index) == [0, 1, 2, 3]
    assert losses.isna().all()  # each log averages two steps: not one step's loss


def test_resumed_training_continues_the_step_axis(tmp_path):
    train(tmp_path, TrackerCallback(every=2, log_dir=str(tmp_path / "nd"), detect=False),
          max_steps=2, save_strategy="steps", save_steps=2)  # fmt: skip
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert checkpoint.is_dir()
    callback = TrackerCallback(every=2, log_dir=str(tmp_path / "nd"), detect=False)
    make_trainer(tmp_path, callback, max_steps=4).train(resume_from_checkpoint=str(checkpoint))
    frame = ndtracker.load(tmp_path / "nd")
    steps_per_run = frame.groupby("run_id")["step"].agg(lambda s: sorted(set(s)))
    assert sorted(steps_per_run) == [[0], [2]]


def test_close_after_a_failed_train_flushes_and_unhooks(tmp_path):
    class Failing(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("boom")

    callback = TrackerCallback(every=1, log_dir=str(tmp_path / "nd"), detect=False)
    trainer = make_trainer(tmp_path, callback, Failing(), gradient_accumulation_steps=1)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    callback.close()
    assert hook_count(trainer.model) == 0
    assert sorted(set(ndtracker.load(tmp_path / "nd")["step"])) == [0, 1]


def test_options_are_checked_at_construction():
    with pytest.raises(TypeError, match="unknown Tracker option 'evry'"):
        TrackerCallback(evry=5)


def test_figures_go_to_the_trainers_tensorboard_and_mlflow_runs(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    callback = TrackerCallback(every=2, log_dir=str(tmp_path / "nd"), detect=False)
    tag = "ndtracker/weight/stable_rank/transformer.h.1.mlp.c_fc"
    try:
        train(tmp_path, callback, max_steps=3, report_to=["tensorboard", "mlflow"])
        client = MlflowClient()
        [run] = client.search_runs(client.search_experiments()[0].experiment_id)
        history = client.get_metric_history(run.info.run_id, tag)
    finally:
        mlflow.set_tracking_uri(None)
    frame = ndtracker.load(tmp_path / "nd")
    weight = frame[(frame.space == "weight") & (frame.layer == "transformer.h.1.mlp.c_fc")]
    expected = list(weight.sort_values("step")["stable_rank"])
    assert [m.step for m in history] == [0, 2]
    assert [m.value for m in history] == pytest.approx(expected)
    assert "loss" in run.data.metrics  # the Trainer's own figures are in the same run
    events = EventAccumulator(str(tmp_path / "out" / "runs" / "ndtracker"))
    events.Reload()
    assert [e.step for e in events.Scalars(tag)] == [0, 2]
    assert [e.value for e in events.Scalars(tag)] == pytest.approx(expected, rel=1e-6)


def test_report_false_adds_no_sink(tmp_path):
    pytest.importorskip("tensorboard")
    train(tmp_path, TrackerCallback(every=2, log_dir=str(tmp_path / "nd"), detect=False, report=False),
          max_steps=1, report_to=["tensorboard"])  # fmt: skip
    assert not (tmp_path / "out" / "runs" / "ndtracker").exists()
