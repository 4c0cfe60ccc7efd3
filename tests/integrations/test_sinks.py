"""Sinks: what they receive, the warn-once fan-out, and the TensorBoard, W&B and MLflow backends."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import ndtracker
from ndtracker.tracking import Tracker
from ndtracker.tracking.sinks import SinkFanout, check_sinks, scalars
from training_helpers import mlp


class Recorder:
    def __init__(self) -> None:
        self.writes: list[tuple[int, list[dict]]] = []
        self.closed = 0

    def write(self, step, rows):
        self.writes.append((step, rows))

    def close(self):
        self.closed += 1


class Broken(Recorder):
    def write(self, step, rows):
        raise OSError("disk on fire")

    def close(self):
        raise OSError("still on fire")


def run(log_dir, sinks, steps: int = 4, every: int = 2, **options):
    """Train the MLP ``steps`` steps under a Tracker with these sinks; return the logged frame."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Tracker(model, every=every, log_dir=str(log_dir), detect=False, sinks=sinks, **options) as tracker:
        for _ in range(steps):
            loss = model(torch.randn(8, 12)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            tracker.step(loss=loss)
    return ndtracker.load(log_dir)


def expected_scalars(frame, step: int) -> dict[str, float]:
    return scalars(frame[frame.step == step].to_dict("records"))


def test_a_sink_receives_each_samples_rows_as_logged(tmp_path):
    recorder = Recorder()
    frame = run(tmp_path, [recorder], metrics=["stable_rank", "effective_rank"])
    assert [step for step, _ in recorder.writes] == [0, 2]
    for step, rows in recorder.writes:
        logged = frame[frame.step == step].sort_values(["layer", "space"])
        received = sorted(rows, key=lambda row: (row["layer"], row["space"]))
        assert [row["stable_rank"] for row in received] == pytest.approx(list(logged["stable_rank"]))
        assert {row["step"] for row in rows} == {step}
    assert recorder.closed == 1


def test_scalars_names_finite_metric_values_by_space_metric_and_layer():
    rows = [
        {"layer": "enc.fc1", "space": "activation", "stable_rank": 3.0, "participation_ratio": math.nan,
         "effective_rank": None, "energy90": 4},
        {"layer": "enc.fc1", "space": "weight", "stable_rank": 1.5},
    ]  # fmt: skip
    assert scalars(rows) == {
        "ndtracker/activation/stable_rank/enc.fc1": 3.0,
        "ndtracker/activation/energy90/enc.fc1": 4.0,
        "ndtracker/weight/stable_rank/enc.fc1": 1.5,
    }


def test_a_failing_sink_is_warned_once_and_the_parquet_log_is_complete(tmp_path):
    recorder = Recorder()
    with pytest.warns(RuntimeWarning, match="sink Broken failed at step 0: OSError") as caught:
        frame = run(tmp_path, [Broken(), recorder], steps=6)
    sink_warnings = [w for w in caught if "sink Broken" in str(w.message)]
    assert len(sink_warnings) == 1  # not again at step 2, 4, nor at close
    assert sorted(set(frame["step"])) == [0, 2, 4]
    assert [step for step, _ in recorder.writes] == [0, 2, 4]  # the others still get everything


def test_sinks_are_checked_at_construction():
    with pytest.raises(TypeError, match="lacks one"):
        Tracker(mlp(), sinks=[object()], log_dir=None)
    with pytest.raises(TypeError, match="sinks must be a list"):
        check_sinks("tensorboard")
    assert len(SinkFanout(None)) == 0 and len(SinkFanout(Recorder())) == 1


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ndtracker.integrations.tensorboard import TensorBoardSink

    frame = run(tmp_path / "nd", [TensorBoardSink(tmp_path / "tb")])
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tag = "ndtracker/activation/stable_rank/2"
    assert tag in events.Tags()["scalars"]
    for step in (0, 2):
        tags = events.Tags()["scalars"]
        written = {t: e.value for t in tags for e in events.Scalars(t) if e.step == step}
        expected = expected_scalars(frame, step)
        assert written == pytest.approx(expected, rel=1e-6)


def test_mlflow_metric_history_reads_back(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store (MLflow 3 prefers a database)
    from mlflow.tracking import MlflowClient

    from ndtracker.integrations.mlflow import MlflowSink

    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        with mlflow.start_run() as active:
            frame = run(tmp_path / "nd", [MlflowSink()])
        history = MlflowClient().get_metric_history(active.info.run_id, "ndtracker/weight/stable_rank/4")
        assert [m.step for m in history] == [0, 2]
        expected = [expected_scalars(frame, step)["ndtracker/weight/stable_rank/4"] for step in (0, 2)]
        assert [m.value for m in history] == pytest.approx(expected)
        own = MlflowSink()  # no active run: it starts one and ends it at close
        own.write(7, frame[frame.step == 0].to_dict("records"))
        own.close()
        assert mlflow.active_run() is None
        assert MlflowClient().get_run(own.run_id).info.status == "FINISHED"
        own_history = MlflowClient().get_metric_history(own.run_id, "ndtracker/weight/stable_rank/4")
        assert [m.step for m in own_history] == [7]
    finally:
        mlflow.set_tracking_uri(None)


def test_wandb_offline_run_reads_back(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from ndtracker.integrations.wandb import STEP_METRIC, WandbSink

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    sink = WandbSink()  # no active run: it starts one and finishes it at close
    run_dir = sink.run.dir
    frame = run(tmp_path / "nd", [sink])
    assert wandb.run is None
    history = read_offline_history(run_dir)
    logged = [row for row in history if STEP_METRIC in row]
    assert [row[STEP_METRIC] for row in logged] == [0, 2]
    for row in logged:
        expected = expected_scalars(frame, row[STEP_METRIC])
        assert {k: v for k, v in row.items() if k in expected} == pytest.approx(expected)


def read_offline_history(run_dir: str) -> list[dict]:
    """The history rows of an offline run, read from its ``.wandb`` file (a LevelDB-format log)."""
    from wandb.proto import wandb_internal_pb2

    [path] = Path(run_dir).parent.glob("*.wandb")
    rows = []
    for data in leveldb_records(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})  # fmt: skip
    return rows


def leveldb_records(data: bytes, block: int = 32768):
    """Records of a LevelDB log after W&B's 7-byte header: chunks with a 7-byte header each
    (CRC, little-endian length, type: 1 full, 2 first, 3 middle, 4 last), in 32 KiB blocks whose
    tails shorter than a header are padding."""
    assert data[:4] == b":W&B"
    position, pieces = 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        pieces += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            yield pieces
            pieces = b""
