"""A large model: time per sample, step time and the extra peak memory of a sampled step.

The workload is shaped like GPT-2 small, built by hand on the CPU: 12 blocks, width 768, 12 heads,
sequence 256, batch 2 (512 token rows per capture), AdamW; the vocabulary is 8192 instead of
50257 so that a step fits the benchmark machine's time (the blocks, which are what is tracked, are
GPT-2 small's). Tracked arms sample every third step (see :func:`run_arm`).

Memory is measured deterministically, as live tensor bytes: a ``TorchDispatchMode`` sees every
tensor made during the step (forward, backward, optimizer, tracker), weakly referenced, and keeps
the running sum of their storages and its peak; the parameters and the optimizer's state, alive
before the step, are added to both arms alike. So "extra peak" is exactly the tensor bytes a
sampled step adds at its peak, independent of the allocator's caching (an RSS figure is not).

Arms: ``bare``; ``ours`` tracking the 48 Linear layers of the blocks (default metrics), with the
default bound on the bytes of captures a step holds (``HELD_BYTES``), the same tracking 24 of
them (6 blocks), and the 48 with the bound lifted (every capture held to ``tracker.step()``, as
before issue 17).

Times are medians over ``--cycles`` cycles of three steps after a warm-up cycle ("step s" is the
bare-like step of the cycle); the memory figure is two more steps under the meter. Run: ``python benchmarks/large_model.py`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import tempfile
import time
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import ndtracker
from ndtracker.tracking import capture

WIDTH, HEADS, DEPTH, CONTEXT, VOCAB, BATCH = 768, 12, 12, 256, 8192, 2
EVERY = 3  # every=3: weight, sampled and bare-like steps alternate (see run_arm)
WARMUP = 1  # cycles of EVERY steps before the timed ones (streams settle their Lanczos depth)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.attn = Attention()
        self.fc, self.proj = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class GPT2Small(nn.Module):
    """GPT-2 small's blocks (12 x width 768, 12 heads, context 256), a vocabulary of 8192."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(VOCAB, WIDTH), nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.Sequential(*(Block() for _ in range(DEPTH)))
        self.ln, self.head = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1]))
        return self.head(self.ln(self.blocks(x)))


class PeakBytes(TorchDispatchMode):
    """Live bytes of the tensors made inside the block (by storage), and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [bytes, tensors referring]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self._track(tensor)
        self.peak = max(self.peak, self.live)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._storages:
            self._storages[key] = [storage.nbytes(), 0]
            self.live += storage.nbytes()
        self._storages[key][1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[key]


def resident_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes alive before a step: parameters and the optimizer's state."""
    tensors = list(model.parameters())
    tensors += [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def step(model, optimizer, tracker, batch) -> float:
    """One training step; its seconds."""
    x, y = batch
    start = time.perf_counter()
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if tracker is not None:
        tracker.step(loss=loss)
    return time.perf_counter() - start


def run_arm(name, model, optimizer, batches, cycles, layers, held) -> dict[str, float]:
    """Timed cycles of EVERY steps, then the peak bytes of a sampled step under the meter.

    With ``every=3``, the ``tracker.step()`` of step ``3k - 1`` measures the weights of sample
    ``3k`` (at its start), step ``3k`` captures and measures the activations, and step ``3k + 1``
    is like a bare step (no hook is installed): so the three kinds of step alternate, and a load
    change hits them alike. Time per sample: the sampled and the weight steps minus twice the
    bare-like step (medians). The meter spans steps ``3k - 1`` and ``3k`` (their joint peak); the
    bare arm's meter spans two steps as well.
    """
    tracker, saved = None, capture.HELD_BYTES
    capture.HELD_BYTES = held
    times: dict[int, list[float]] = {0: [], 1: [], 2: []}
    with tempfile.TemporaryDirectory() as log_dir:
        try:
            if layers is not None:
                tracker = ndtracker.Tracker(model, every=EVERY, log_dir=log_dir, layers=layers, detect=False)
            last = EVERY * (WARMUP + cycles) - 1  # a weight step: 3k - 1
            for i in range(last):
                seconds = step(model, optimizer, tracker, batches[i % len(batches)])
                if i >= EVERY * WARMUP:
                    times[i % EVERY].append(seconds)
            gc.collect()
            with PeakBytes() as meter:  # steps 3k - 1 and 3k: the weights, then the activations
                for i in (last, last + 1):
                    step(model, optimizer, tracker, batches[i % len(batches)])
                gc.collect()
            tracked = len(tracker.layers) if tracker is not None else 0
        finally:
            if tracker is not None:
                tracker.close()
            capture.HELD_BYTES = saved
    median = {kind: statistics.median(values) for kind, values in times.items()}
    per_sample = median[0] + median[2] - 2 * median[1] if tracked else math.nan
    listed = {kind: ", ".join(f"{v:.2f}" for v in values) for kind, values in times.items()}
    print(f"  ({name}: sampled {listed[0]}; weights {listed[2]}; bare-like {listed[1]} s)", flush=True)
    resident = resident_bytes(model, optimizer)
    return {"name": name, "tracked": tracked, "step_s": median[1], "sample_s": per_sample,
            "peak": resident + meter.peak}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3, help="timed cycles of 3 steps per arm (after one warm-up cycle)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batches = [(lambda s: (s[:, :-1], s[:, 1:]))(torch.randint(VOCAB, (BATCH, CONTEXT + 1), generator=g))
               for _ in range(4)]  # fmt: skip
    model = GPT2Small()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = sum(p.numel() for p in model.parameters())
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"GPT-2-small-shaped: {DEPTH} blocks, width {WIDTH}, seq {CONTEXT}, batch {BATCH}, vocab {VOCAB}, "
          f"{params / 1e6:.1f}M parameters; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; load average {load}")  # fmt: skip
    names = ("attn.qkv", "attn.proj", "fc", "proj")
    all_blocks = [f"blocks.{i}.{name}" for i in range(DEPTH) for name in names]
    half = [f"blocks.{i}.{name}" for i in range(DEPTH // 2) for name in names]
    arms = [
        ("bare", None, capture.HELD_BYTES),
        ("ours, 48 layers", all_blocks, capture.HELD_BYTES),
        ("ours, 24 layers", half, capture.HELD_BYTES),
        ("ours, 48, unbounded", all_blocks, math.inf),
        ("bare again", None, capture.HELD_BYTES),
    ]
    results = [run_arm(name, model, optimizer, batches, args.cycles, layers, held) for name, layers, held in arms]
    bare_peak = results[0]["peak"]
    print(f"  {'arm':22} {'layers':>6} {'step s':>7} {'s/sample':>9} {'peak MiB':>9} {'extra MiB':>10} {'extra/bare':>10}")
    for r in results:
        extra, per_sample = r["peak"] - bare_peak, r["sample_s"]
        print(f"  {r['name']:22} {r['tracked']:6d} {r['step_s']:7.2f} {per_sample:9.2f} {r['peak'] / 2**20:9.1f} "
              f"{extra / 2**20:10.1f} {100 * extra / bare_peak:9.2f}%")  # fmt: skip
    ours = next(r for r in results if r["name"] == "ours, 48 layers")
    half_arm = next(r for r in results if r["name"] == "ours, 24 layers")
    extra, extra_half = ours["peak"] - bare_peak, half_arm["peak"] - bare_peak
    print(f"\ntargets: extra peak of a sampled step <= 10% of the bare step's: {100 * extra / bare_peak:.2f}% -> "
          f"{'met' if extra <= 0.1 * bare_peak else 'NOT met'}; 24 -> 48 tracked layers adds "
          f"{(extra - extra_half) / 2**20:.1f} MiB (bound HELD_BYTES = {capture.HELD_BYTES / 2**20:.0f} MiB)")  # fmt: skip
    print(f"finished {time.strftime('%H:%M')}; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
