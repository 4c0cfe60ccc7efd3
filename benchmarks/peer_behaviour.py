"""Behaviour of ndtracker and of the peer (``ndt`` 2.0.0) side by side, one row per claim.

Runs ``ndtracker.Tracker`` and the peer's ``ndt.HighFrequencyTracker`` (documented API and defaults:
``HighFrequencyTracker(model, sampling_frequency=N)``, ``tracker.log(step, loss.item())`` after each
optimizer step, ``detect_jumps()`` / ``export_to_csv`` at the end) on small synthetic models:

0. decompositions: linear-algebra calls per measured matrix (counted by wrapping ``torch.linalg``).
1. LSTM and GRU (modules returning tuples): does training run, rows for the recurrent layer.
2. bfloat16 and float16 models: rows per layer, finite values, error vs a float64 SVD oracle.
3. participation ratio of a matrix with a planted spectrum vs (Σλ)²/Σλ², λ = σ² (DESIGN.md), and vs
   the peer's formula, read from ``ndt/core/estimators.py``: ``1 / Σ(σᵢ/Σσ)²`` = (Σσ)²/Σσ².
4. step labels (training steps or sample indices) and reported jump positions on a planted jump.
5. memory: Python heap growth (tracemalloc) per 1000 steps, and what each holds in memory.
6. crash safety: what is on disk after a SIGKILL of a child process mid-run.

The peer is imported from ``.bench/peer`` (never installed); its failures are caught and shown.
Run: ``python benchmarks/peer_behaviour.py`` (about 5 minutes on two cores) or ``--quick`` (2).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

import ndtracker

PEER = Path(__file__).resolve().parents[1] / ".bench" / "peer"
EVERY = 5
COUNTED = ("svd", "svdvals", "eigh", "eigvalsh")


def import_peer():
    """Import the peer from .bench/peer (never installed into the venv)."""
    if str(PEER) not in sys.path:
        sys.path.insert(0, str(PEER))
    import ndt  # noqa: PLC0415

    return ndt


PEER_LOG = logging.handlers.BufferingHandler(10**6)  # the peer logs failed measurements



def mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Three Linear layers, 32 -> 64 -> 64 -> 8."""
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).to(dtype)


class RecurrentNet(nn.Module):
    """A recurrent layer (output: a tuple) and a linear head on the last time step."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn, self.head = cell(8, 16, batch_first=True), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def planted_net() -> nn.Module:
    """A frozen diagonal 0/1 layer ``planted`` (activation rank set by `plant`), a trained head."""
    model = nn.Sequential(OrderedDict(planted=nn.Linear(32, 32, bias=False), head=nn.Linear(32, 8)))
    model.planted.weight.requires_grad_(False)
    return plant(model, 4)


def plant(model: nn.Module, rank: int) -> nn.Module:
    """Make ``model.planted`` keep the first ``rank`` input coordinates."""
    model.planted.weight.copy_(torch.diag((torch.arange(32) < rank).float()))
    return model


def train(model: nn.Module, steps: int, in_shape: tuple[int, ...], tick, before=None) -> None:
    """SGD on a random regression task; ``tick(step, loss)`` after each optimizer step."""
    dtype = next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3)
    for step in range(steps):
        if before is not None:
            before(step)
        x = torch.randn(in_shape, generator=gen).to(dtype)
        loss = (model(x) - torch.randn(in_shape[0], 8, generator=gen).to(dtype)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        tick(step, loss)


def ours(model: nn.Module, log_dir: str | Path, every: int = EVERY, **options):
    """Our tracker and its per-step call."""
    tracker = ndtracker.Tracker(model, every=every, log_dir=str(log_dir), **options)
    return tracker, lambda step, loss: tracker.step(loss=loss)


def peer(model: nn.Module, every: int = EVERY, **options):
    """The peer's tracker and its per-step call, as in its docstring."""
    tracker = import_peer().HighFrequencyTracker(model, sampling_frequency=every, **options)
    return tracker, lambda step, loss: tracker.log(step, loss.item())


def failure(error: BaseException) -> str:
    """An exception as ``Type: first line``."""
    return f"{type(error).__name__}: {str(error).splitlines()[0][:90]}"



def counted_calls(run) -> dict[str, int]:
    """Calls of torch.linalg decompositions made while ``run()`` runs."""
    counts, originals = dict.fromkeys(COUNTED, 0), {n: getattr(torch.linalg, n) for n in COUNTED}

    def wrap(name):
        def counting(*args, **kwargs):
            counts[name] += 1
            return originals[name](*args, **kwargs)
        return counting

    try:
        for name in COUNTED:
            setattr(torch.linalg, name, wrap(name))
        run()
    finally:
        for name, original in originals.items():
            setattr(torch.linalg, name, original)
    return {name: count for name, count in counts.items() if count}


def claim_decompositions(tmp: Path, steps: int) -> list[tuple[str, str, str]]:
    texts = []
    for make, what in ((lambda m: ours(m, tmp / "dec"), "activations + weights"),
                       (peer, "activations; torch.linalg.svd: U and V too")):  # fmt: skip
        model = mlp()
        tracker, tick = make(model)
        calls = counted_calls(lambda: train(model, steps, (64, 32), tick))
        texts.append(f"{calls} for {logged(tracker)} matrices ({what})")
        tracker.close()
    return [("0. decompositions, MLP (3 layers), 20 steps", *texts)]


def logged(tracker) -> int:
    """Rows a tracker has logged so far: in the peer's memory, or in our run directory."""
    if hasattr(tracker, "metrics_history"):
        return sum(map(len, tracker.metrics_history.values()))
    tracker.flush()
    return len(ndtracker.load(tracker.log_dir))


def claim_recurrent(tmp: Path, steps: int) -> list[tuple[str, str, str]]:
    rows = []
    for cell in (nn.LSTM, nn.GRU):
        model = RecurrentNet(cell)
        tracker, tick = ours(model, tmp / cell.__name__)
        train(model, steps, (32, 10, 8), tick)
        tracker.close()
        frame = ndtracker.load(tmp / cell.__name__)
        rnn = frame[frame.layer == "rnn"]
        ok = int((rnn.status == "ok").sum())
        ours_text = f"runs; rnn rows: {len(rnn)} ({ok} ok, {rnn.space.nunique()} spaces)"
        rows.append((f"1. {cell.__name__} (tuple output)", ours_text, peer_recurrent(cell, steps)))
    return rows


def peer_recurrent(cell: type[nn.Module], steps: int) -> str:
    model = RecurrentNet(cell)
    tracker, tick = peer(model)
    train(model, steps, (32, 10, 8), tick)
    tracked = ", ".join(tracker.layer_names)
    tracker.close()
    model = RecurrentNet(cell)
    try:
        tracker, tick = peer(model, layers=[model.rnn], layer_names=["rnn"])
        train(model, steps, (32, 10, 8), tick)
        explicit = f"runs, rnn rows: {len(tracker.metrics_history['rnn'])}"
    except Exception as error:
        explicit = f"crashes at the first forward: {failure(error)}"
    tracker.close()
    return f"default: runs, tracks only {tracked}, rnn rows: 0; layers=[rnn]: {explicit}"


def oracle(matrix: torch.Tensor) -> tuple[float, float]:
    """stable_rank and participation_ratio of the centred matrix from a float64 SVD."""
    x = matrix.double()
    lam = torch.linalg.svdvals(x - x.mean(0)) ** 2
    return (lam.sum() / lam[0]).item(), (lam.sum() ** 2 / (lam**2).sum()).item()


def claim_low_precision(tmp: Path, steps: int) -> list[tuple[str, str, str]]:
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).split(".")[1]
        model, captured = mlp(dtype), {}
        for k in ("0", "2", "4"):  # the step-0 output of each layer, for the oracle
            model.get_submodule(k).register_forward_hook(
                lambda m, i, out, k=k: None if k in captured else captured.update({k: out.detach().clone()}))
        tracker, tick = ours(model, tmp / name, spaces="activation")
        train(model, steps, (64, 32), tick)
        tracker.close()
        frame = ndtracker.load(tmp / name)
        first = frame[frame.step == 0].set_index("layer")
        errors = [abs(first.loc[k, m] / v - 1) for k, out in captured.items()
                  for m, v in zip(("stable_rank", "participation_ratio"), oracle(out))]
        finite = frame[["stable_rank", "participation_ratio"]].map(math.isfinite).all(axis=1)
        per_layer = frame.groupby("layer").size().to_dict()
        rows.append((f"2. {name} MLP, {steps} steps", f"rows/layer {per_layer}, {int(finite.sum())}"
                     f"/{len(frame)} finite; step 0 vs float64 SVD: max rel err {max(errors):.1e}",
                     peer_low_precision(dtype, steps)))
    return rows


def peer_low_precision(dtype: torch.dtype, steps: int) -> str:
    model, before = mlp(dtype), len(PEER_LOG.buffer)
    tracker, tick = peer(model)
    try:
        train(model, steps, (64, 32), tick)
    except Exception as error:
        return f"crashes: {failure(error)}"
    per_layer = {n: len(v) for n, v in tracker.metrics_history.items()}
    logged = [record.getMessage() for record in PEER_LOG.buffer[before:]]
    tracker.close()
    note = f"; {len(logged)} errors logged, e.g. '{logged[0].split(': ', 1)[1][:60]}'" if logged else ""
    return f"rows/layer {per_layer}{note}"


def planted_matrix(rows: int = 512, cols: int = 64, ratio: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """A matrix with zero column means and singular values ratio**i (so centring changes nothing)."""
    gen = torch.Generator().manual_seed(1)
    basis = torch.cat([torch.ones(rows, 1), torch.randn(rows, cols, generator=gen)], 1).double()
    left = torch.linalg.qr(basis)[0][:, 1:]
    right = torch.linalg.qr(torch.randn(cols, cols, generator=gen).double())[0]
    sigma = ratio ** torch.arange(cols, dtype=torch.float64)
    return (left * sigma) @ right.T, sigma


def claim_participation(tmp: Path) -> list[tuple[str, str, str]]:
    x, sigma = planted_matrix()
    lam = sigma**2
    standard = (lam.sum() ** 2 / (lam**2).sum()).item()
    on_sigma = (sigma.sum() ** 2 / (sigma**2).sum()).item()
    model = nn.Sequential(nn.Linear(64, 64, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(64))
    tracker, _ = ours(model, tmp / "pr", every=1, spaces="activation")
    model(x.float())
    tracker.step()
    tracker.close()
    mine = ndtracker.load(tmp / "pr").participation_ratio.iloc[0]
    peer_t, _ = peer(model, every=1)
    model(x.float())
    peer_t.log(0, 0.0)
    theirs = peer_t.metrics_history["Linear_0"][0].participation_ratio
    peer_t.close()
    direct = import_peer().participation_ratio(x.float())
    return [("3. participation ratio, σᵢ = 0.8^i (512x64)",
             f"{mine:.4f} (standard (Σλ)²/Σλ² = {standard:.4f})",
             f"tracker {theirs:.4f}, ndt.participation_ratio {direct:.4f} "
             f"(= its (Σσ)²/Σσ² {on_sigma:.4f}; standard {standard:.4f})")]


def claim_steps(tmp: Path, steps: int) -> list[tuple[str, str, str]]:
    jump = steps // 2
    trackers = []
    for make in (lambda m: ours(m, tmp / "steps", layers="planted", spaces="activation"),
                 lambda m: peer(m, layers=[m.planted], layer_names=["planted"])):  # fmt: skip
        model = planted_net()
        tracker, tick = make(model)
        train(model, steps, (128, 32), tick, before=lambda s: s == jump and plant(model, 16))
        trackers.append(tracker)
        tracker.close()
    frame, events = (ndtracker.load(tmp / "steps", events=e) for e in (False, True))
    ours_jumps = events[events.kind == "jump"].step.tolist()
    peer_steps = [m.step for m in trackers[1].metrics_history["planted"]]
    peer_jumps = [j.step for j in trackers[1].detect_jumps()["planted"]]
    return [
        ("4a. recorded steps (every=5)", _head(frame.step.tolist()),
         f"{_head(peer_steps)} (the step passed to log())"),
        (f"4b. jumps found, planted at step {jump} (sample {jump // EVERY})",
         f"{len(ours_jumps)} at steps {_head(ours_jumps)}",
         f"{len(peer_jumps)} at 'step' {_head(peer_jumps)} (sample indices, not steps)"),
    ]


def _head(values: list, n: int = 5) -> str:
    """The first ``n`` values as a short list."""
    more = ", ...]" if len(values) > n else "]"
    return "[" + ", ".join(str(int(v)) for v in values[:n]) + more


def heap_growth(make, steps: int, warm: int = 500) -> tuple[float, float, str]:
    """Python heap growth in KiB per 1000 steps over the first and the last third of the run
    after ``warm`` steps (ours flushed first: rows waiting for the next flush don't count)."""
    model, marks = mlp(), {}
    tracker, tick = make(model)
    third = (steps - 1 - warm) // 3
    points = (warm, warm + third, steps - 1 - third, steps - 1)

    def measured(step, loss):
        tick(step, loss)
        if step == warm:
            tracemalloc.start()
        if step in points:
            getattr(tracker, "flush", lambda: None)()
            marks[step] = tracemalloc.get_traced_memory()[0] / 1024

    train(model, steps, (64, 32), measured)
    tracemalloc.stop()
    peer_side = hasattr(tracker, "metrics_history")
    held = f"{logged(tracker)} " + ("metric objects in memory" if peer_side else "rows on disk, none held")
    tracker.close()
    early, late = (marks[points[i + 1]] - marks[points[i]] for i in (0, 2))
    return early / third * 1000, late / third * 1000, held


def claim_memory(tmp: Path, steps: int) -> list[tuple[str, str, str]]:
    texts = []
    for make in (lambda m: ours(m, tmp / "mem", every=1), lambda m: peer(m, every=1)):
        early, late, held = heap_growth(make, steps)
        texts.append(f"{early:+.0f} KiB/1000 steps in the first third, {late:+.0f} in the last; {held}")
    return [(f"5. Python heap, {steps} steps, MLP, every=1", *texts)]


def child(kind: str, folder: Path) -> None:
    """Train until killed; write progress every 100 steps (the peer exports only at the end)."""
    model = mlp()
    tracker, tick = ours(model, folder / "log") if kind == "ours" else peer(model)

    def ticking(step, loss):
        tick(step, loss)
        if step % 100 == 0:
            (folder / "progress").write_text(str(step))

    train(model, 10**8, (64, 32), ticking)
    if kind == "peer":
        import_peer().export_to_csv(tracker.get_results(), str(folder / "log" / "results.csv"))
    tracker.close()


def claim_crash(tmp: Path, seconds: float) -> list[tuple[str, str, str]]:
    texts = []
    for kind in ("ours", "peer"):
        folder = tmp / f"crash-{kind}"
        (folder / "log").mkdir(parents=True)
        proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(folder)])
        deadline = time.time() + 120
        while not (folder / "progress").exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(seconds)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        reached = int((folder / "progress").read_text() or 0)
        files = [p for p in (folder / "log").rglob("*") if p.is_file()]
        text = f"killed near step {reached}: {len(files)} files"
        if kind == "ours" and files:
            frame = ndtracker.load(folder / "log")
            text += f", {len(frame)} rows readable, up to step {frame.step.max()}"
        texts.append(text)
    return [(f"6. SIGKILL {seconds:g} s into a run", *texts)]



def table(rows: list[tuple[str, str, str]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| claim | ndtracker | peer (ndt 2.0.0) |", "|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (about a minute)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        return child(args.child[0], Path(args.child[1]))
    peer_logger = logging.getLogger("ndt")
    peer_logger.addHandler(PEER_LOG)
    peer_logger.propagate = False
    import_peer()
    quick = args.quick
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp, rows = Path(root), []
        for name, run in [
            ("decompositions", lambda: claim_decompositions(tmp, 20)),
            ("recurrent", lambda: claim_recurrent(tmp, 20)),
            ("low precision", lambda: claim_low_precision(tmp, 20)),
            ("participation ratio", lambda: claim_participation(tmp)),
            ("steps", lambda: claim_steps(tmp, 1000 if quick else 2000)),
            ("memory", lambda: claim_memory(tmp, 6000 if quick else 15000)),
            ("crash", lambda: claim_crash(tmp, 7 if quick else 12)),
        ]:
            start = time.perf_counter()
            rows += run()
            print(f"  {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
