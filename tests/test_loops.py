"""The Tracker in the training loops people write: which forward is measured, and when.

Accumulation, several forwards per step, eval and ``no_grad`` passes, autocast, ``torch.compile``,
activation checkpointing, resuming, and ``step()`` without a loss. The invariant behind most tests:
the logged activation figures are those of the first training forward of each sampled step,
checked against an SVD of what the layer returned in that forward.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import ndtracker
from ndtracker import spectra
from ndtracker import Tracker
from training_helpers import mlp


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def stable_rank_of(output: torch.Tensor) -> float:
    """The oracle: stable rank of the centred output, from a float64 SVD."""
    x = output.detach().double().reshape(-1, output.shape[-1])
    return spectra.metrics_from_eigenvalues(torch.linalg.svdvals(x - x.mean(0)) ** 2)[0].item()


class Recorder:
    """Record every output of one module, in order, with the grad mode and the module's mode."""

    def __init__(self, module: nn.Module):
        self.outputs: list[tuple[torch.Tensor, bool, bool]] = []
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.outputs.append((output.detach().clone(), torch.is_grad_enabled(), module.training))

    def remove(self) -> None:
        self.handle.remove()


def activation(df, layer: str = "2"):
    return df[(df.space == "activation") & (df.layer == layer)].set_index("step")


# ------------------------------------------------------------------------------ several forwards


def test_gradient_accumulation_measures_the_first_micro_batch(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    recorder = Recorder(model[2])
    firsts = []
    with Tracker(model, every=2, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(4):
            for size in (24, 8, 8, 8):
                (model(torch.randn(size, 12)).pow(2).mean() / 4).backward()
            firsts.append(recorder.outputs[-4][0])
            opt.step()
            opt.zero_grad()
            tracker.step()
    act = activation(ndtracker.load(tmp_path))
    assert list(act.index) == [0, 2] and (act.rows == 24).all()
    assert act.stable_rank[2] == pytest.approx(stable_rank_of(firsts[2]), rel=1e-4)


def test_two_views_per_step_measure_the_first_view(tmp_path):
    model = mlp()
    recorder = Recorder(model[2])
    with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(2):
            view_a, view_b = torch.randn(20, 12), torch.randn(10, 12)
            (model(view_a) - model(view_b).mean(0)).pow(2).mean().backward()
            tracker.step()
    act = activation(ndtracker.load(tmp_path))
    assert (act.rows == 20).all()
    assert act.stable_rank[1] == pytest.approx(stable_rank_of(recorder.outputs[2][0]), rel=1e-4)


def test_teacher_and_student(tmp_path):
    student = mlp()
    teacher = copy.deepcopy(student).requires_grad_(False)  # an EMA teacher, not tracked
    opt = torch.optim.SGD(student.parameters(), lr=0.01)
    with Tracker(student, every=1, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(3):
            x = torch.randn(16, 12)
            with torch.no_grad():
                target = teacher(x + 0.1 * torch.randn_like(x))
            (student(x) - target).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                for t, s in zip(teacher.parameters(), student.parameters()):
                    t.mul_(0.9).add_(0.1 * s)
            tracker.step()
    assert hook_count(teacher) == 0
    df = ndtracker.load(tmp_path)
    assert len(df) == 3 * 3 * 2 and (df.status == "ok").all()


@pytest.mark.filterwarnings("ignore:.*no training forward pass")
def test_teacher_inside_the_tracked_model_runs_without_grad_and_is_not_a_training_forward(tmp_path):
    class Distill(nn.Module):
        def __init__(self):
            super().__init__()
            self.student, self.teacher = mlp(0), mlp(1).requires_grad_(False)

        def forward(self, x):
            with torch.no_grad():
                target = self.teacher(x[:5])  # runs first, on another batch size
            return (self.student(x) - target.mean(0)).pow(2).mean()

    model = Distill()
    with pytest.warns(RuntimeWarning, match="layer 'teacher.0' .*no training forward pass"):
        with Tracker(model, every=1, log_dir=str(tmp_path / "a"), detect=False) as tracker:
            model(torch.randn(16, 12)).backward()
            tracker.step()
    act = ndtracker.load(tmp_path / "a").query("space == 'activation'")
    assert set(act.layer) == {"student.0", "student.2", "student.4"} and (act.rows == 16).all()
    with Tracker(model, every=1, log_dir=str(tmp_path / "b"), track_eval=True, detect=False) as tracker:
        model(torch.randn(16, 12)).backward()
        tracker.step()
    act = ndtracker.load(tmp_path / "b").query("space == 'activation'").set_index("layer")
    assert act.rows["teacher.0"] == 5 and act.rows["student.0"] == 16


# ------------------------------------------------------------------------------ eval and no_grad


def test_eval_passes_and_no_grad_inference_between_steps_are_ignored(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    recorder = Recorder(model[2])
    with Tracker(model, every=2, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(4):
            with torch.no_grad():
                model(torch.randn(3, 12))  # inference in train mode, without autograd
            with torch.inference_mode():
                model(torch.randn(4, 12))
            model.eval()
            model(torch.randn(5, 12))  # an eval pass with autograd on
            model.train()
            model(torch.randn(32, 12)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            model.eval()
            with torch.no_grad():
                model(torch.randn(7, 12))  # validation after the step
            model.train()
            tracker.step()
    act = activation(ndtracker.load(tmp_path))
    assert list(act.index) == [0, 2] and (act.rows == 32).all()
    training = [out for out, grad, mode in recorder.outputs if grad and mode]
    assert act.stable_rank[2] == pytest.approx(stable_rank_of(training[2]), rel=1e-4)


def test_track_eval_keeps_an_eval_capture_only_until_a_training_forward(tmp_path):
    model = mlp()
    with Tracker(model, every=1, log_dir=str(tmp_path), track_eval=True, detect=False) as tracker:
        model.eval()
        with torch.no_grad():
            model(torch.randn(5, 12))
        model.train()
        model(torch.randn(9, 12)).sum().backward()
        model(torch.randn(11, 12))
        tracker.step()  # step 0: the training forward replaced the eval capture
        model.eval()
        with torch.no_grad():
            model(torch.randn(5, 12))
            model(torch.randn(6, 12))
        tracker.step()  # step 1: eval only, its first forward
    act = activation(ndtracker.load(tmp_path))
    assert act.rows.to_dict() == {0: 9, 1: 5}


# ------------------------------------------------------------------------------ precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(tmp_path, dtype):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    recorder = Recorder(model[2])
    try:
        with torch.autocast("cpu", dtype=dtype):
            model(torch.randn(2, 12))
    except RuntimeError as error:  # pragma: no cover - older torch: CPU autocast is bf16 only
        pytest.skip(f"CPU autocast with {dtype} is not supported here: {error}")
    recorder.outputs.clear()
    with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
        for _ in range(2):
            with torch.autocast("cpu", dtype=dtype):
                loss = model(torch.randn(64, 12)).float().pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            tracker.step(loss=loss)
    assert recorder.outputs[0][0].dtype == dtype
    df = ndtracker.load(tmp_path)
    assert (df.status == "ok").all() and df.loss.notna().all()
    assert activation(df).stable_rank[1] == pytest.approx(stable_rank_of(recorder.outputs[1][0]), rel=1e-4)


def test_step_inside_autocast_measures_in_full_precision(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(160, 200)  # large enough for the randomized estimator
    recorder = Recorder(model)
    with Tracker(model, every=1, log_dir=str(tmp_path), spaces="activation", detect=False) as tracker:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the whole iteration under autocast
            x = torch.randn(400, 160) @ torch.randn(160, 160)
            model(x).float().pow(2).mean().backward()
            tracker.step()
    df = ndtracker.load(tmp_path)
    assert df.estimator.item() == "randomized" and df.status.item() == "ok"
    assert df.stable_rank.item() == pytest.approx(stable_rank_of(recorder.outputs[0][0]), rel=1e-3)


# ------------------------------------------------------------------------------ torch.compile


def compiled_run(model, log_dir, steps=7, **options):
    """Train under a Tracker; return it, its logs, and (hooks, compiled graphs) after each step."""
    torch.manual_seed(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    after_step = []
    with Tracker(model, every=2, log_dir=str(log_dir), detect=False, **options) as tracker:
        for _ in range(steps):
            model(torch.randn(10, 12)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            tracker.step()
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] if hasattr(torch, "_dynamo") else 0
            after_step.append((hook_count(model), graphs))
    return tracker, ndtracker.load(log_dir), after_step


def test_torch_compile_uses_permanent_gated_hooks(tmp_path):
    """Hooks added or removed after compilation are ignored or cost recompilations and graph
    breaks (it depends on the torch version), so hooks="auto" keeps them installed for a compiled
    model.

    The compiled code guards on the tracker's armed flag (two variants, no recompilation per
    step) and calls the capture, which the compiler does not trace, only on sampled steps. The
    ``aot_eager`` backend runs dynamo and AOTAutograd like the default one but skips Inductor's
    code generation, which takes about 45 s for this model on 2 CPU cores.
    """
    compile_fn = getattr(torch, "compile", None)
    if compile_fn is None:  # pragma: no cover
        pytest.skip("torch.compile is not available")
    _, eager, _ = compiled_run(mlp(), tmp_path / "eager")
    model = mlp()
    compiled = compile_fn(model, backend="aot_eager")
    torch._dynamo.reset()
    tracker, df, after_step = compiled_run(compiled, tmp_path / "compiled")
    assert tracker.layers == ["0", "2", "4"]  # the names of the model, not of the wrapper
    assert [hooks for hooks, _ in after_step] == [3] * 7 and hook_count(model) == 0
    graphs = [count for _, count in after_step]
    assert graphs[2] == graphs[-1]  # armed and disarmed variants compiled once, then reused
    assert sorted(df.step.unique()) == [0, 2, 4, 6]
    columns = ["step", "layer", "space", "rows", "cols"]
    assert df[columns].equals(eager[columns])
    assert df.stable_rank.to_numpy() == pytest.approx(eager.stable_rank.to_numpy(), rel=1e-4)


def test_model_compiled_in_place_after_the_tracker_needs_permanent_hooks(tmp_path):
    model = mlp()
    with Tracker(model, every=2, hooks="permanent", log_dir=str(tmp_path), detect=False) as tracker:
        model.compile(backend="eager")
        for _ in range(3):
            model(torch.randn(10, 12)).sum().backward()
            tracker.step()
    assert sorted(ndtracker.load(tmp_path).query("space == 'activation'").step.unique()) == [0, 2]
    with Tracker(model, log_dir=str(tmp_path), detect=False) as tracker:
        assert tracker._hook_mode == "permanent"  # hooks="auto" sees Module.compile() too


def test_a_model_compiled_and_run_before_the_tracker_still_gets_its_activations(tmp_path):
    model = mlp()
    compiled = torch.compile(model, backend="eager")
    compiled(torch.randn(10, 12)).sum().backward()  # a graph without hooks exists now
    with pytest.warns(UserWarning, match=r"compiled and run before the Tracker was built: ndtracker reset"):
        tracker = Tracker(compiled, every=1, log_dir=str(tmp_path), detect=False)
    with tracker:
        for _ in range(3):
            compiled(torch.randn(10, 12)).sum().backward()
            tracker.step()
    frame = ndtracker.load(tmp_path)
    assert sorted(frame.query("space == 'activation'").step.unique()) == [0, 1, 2]
    assert (frame.status == "ok").all()


def test_a_compiled_model_with_a_probe_and_a_schedule(tmp_path):
    """The probe runs through the user's (uncompiled) module in eval mode; the compiled training
    step is never hooked; weights and probe describe the state each sampled step began with."""
    model = mlp()
    compiled = torch.compile(model, backend="eager")
    torch._dynamo.reset()
    probe = torch.randn(20, 12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = {}
    with Tracker(compiled, every=[(0, 1), (2, 3)], probe=probe, log_dir=str(tmp_path), detect=False) as tracker:
        assert tracker._hook_mode == "permanent"
        for t in range(7):
            with torch.no_grad():
                out = model[:3](probe).double()  # the probe's output at layer "2", on this step's weights
            expected[t] = spectra.metrics_from_eigenvalues(torch.linalg.svdvals(out - out.mean(0)) ** 2)[0].item()
            compiled(torch.randn(10, 12)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            tracker.step()
    frame = ndtracker.load(tmp_path)
    act = frame[(frame.space == "activation") & (frame.layer == "2")]
    assert act.step.tolist() == [0, 1, 3, 6] and set(act.source) == {"probe"} and (act.rows == 20).all()
    for row in act.itertuples():
        assert row.stable_rank == pytest.approx(expected[row.step], rel=1e-4)


# ------------------------------------------------------------------------------ checkpointing


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool | None):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(12, 12)
        self.block = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.head, self.reentrant = nn.Linear(32, 3), reentrant

    def forward(self, x):
        x = self.stem(x)
        if self.reentrant is None:
            return self.head(self.block(x))
        return self.head(checkpoint(self.block, x, use_reentrant=self.reentrant))


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_adds_no_sample(tmp_path, reentrant):
    """Non-reentrant: the forward is captured, the recomputation comes second and is ignored.

    Reentrant: the forward runs without autograd, so the recomputation in backward, which
    returns the same values, is the first training forward.
    """
    frames = {}
    for name, mode in (("plain", None), ("checkpointed", reentrant)):
        model = Checkpointed(mode)
        recorder = Recorder(model.block[2])
        torch.manual_seed(1)
        with Tracker(model, every=1, log_dir=str(tmp_path / name), detect=False) as tracker:
            for _ in range(2):
                model(torch.randn(8, 12)).pow(2).mean().backward()
                tracker.step()
        recorder.remove()
        frames[name] = ndtracker.load(tmp_path / name)
        calls = len(recorder.outputs)
    assert calls == 4  # the checkpointed block ran twice per step: forward and recomputation
    plain, checked = frames["plain"], frames["checkpointed"]
    assert len(checked) == len(plain) == 2 * 4 * 2
    assert checked.stable_rank.to_numpy() == pytest.approx(plain.stable_rank.to_numpy(), rel=1e-5)


# ------------------------------------------------------------------------------ resuming and loss


def test_resuming_a_run_continues_the_step_axis_under_a_new_run_id(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def train(tracker, steps):
        for _ in range(steps):
            model(torch.randn(16, 12)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            tracker.step(loss=1.0)

    with Tracker(model, every=3, log_dir=str(tmp_path)) as first:
        train(first, 7)  # "crashes" after step 6
    state = copy.deepcopy((model.state_dict(), opt.state_dict()))
    model = mlp(seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.load_state_dict(state[0]), opt.load_state_dict(state[1])
    with Tracker(model, every=3, log_dir=str(tmp_path), start_step=7) as second:
        assert second.current_step == 7
        train(second, 6)
    df = ndtracker.load(tmp_path)
    assert first.run_id != second.run_id
    assert sorted(df[df.run_id == first.run_id].step.unique()) == [0, 3, 6]
    assert sorted(df[df.run_id == second.run_id].step.unique()) == [9, 12]
    assert list(df.run_id.unique()) == [first.run_id, second.run_id]  # oldest run first
    assert len(ndtracker.load(tmp_path, run_id=second.run_id)) == 2 * 3 * 2


def test_step_without_a_loss_and_with_each_kind_of_loss(tmp_path):
    model = mlp()
    losses = [None, 0.5, torch.tensor(2.0), torch.tensor(3.0, requires_grad=True) * 1, torch.tensor(float("nan"))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no training forward on purpose
        with Tracker(model, every=1, log_dir=str(tmp_path), spaces="weight", detect=False) as tracker:
            for loss in losses:
                tracker.step(loss=loss)
            tracker.step()
    loss = ndtracker.load(tmp_path).groupby("step").loss.first()
    assert loss.isna().tolist() == [True, False, False, False, True, True]
    assert loss[1:4].tolist() == [0.5, 2.0, 3.0]
