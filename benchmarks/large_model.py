"""A large model: time per sample, step time and the extra peak memory of a sampled step.

The workload is shaped like GPT-2 small, built by hand on the CPU: 12 blocks, width 768, 12 heads,
sequence 256, batch 2 (512 token rows per capture), AdamW; the vocabulary is 8192 instead of
50257 so that a step fits the benchmark machine's time (the blocks, which are what is tracked, are
GPT-2 small's). Every step of a tracked arm is sampled (``every=1``): the figures are those of a
sampled step.

Memory is measured deterministically, as live tensor bytes: a ``TorchDispatchMode`` sees every
tensor made during the step (forward, backward, optimizer, tracker), weakly referenced, and keeps
the running sum of their storages and its peak; the parameters and the optimizer's state, alive
before the step, are added to both arms alike. So "extra peak" is exactly the tensor bytes a
sampled step adds at its peak, independent of the allocator's caching (an RSS figure is not).

Arms: ``bare``; ``ours`` tracking the 48 Linear layers of the blocks (default metrics), with the
default bound on the bytes of captures a step holds (``HELD_BYTES``), the same tracking 24 of
them (6 blocks), and the 48 with the bound lifted (every capture held to ``tracker.step()``, as
before issue 17).

Run: ``python benchmarks/large_model.py`` (about 5 minutes on 2 cores), ``--steps N`` per arm.
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


def step(model, optimizer, tracker, batch) -> tuple[float, int]:
    """One training step; its seconds and the peak of the tensor bytes it made."""
    x, y = batch
    gc.collect()
    with PeakBytes() as meter:
        start = time.perf_counter()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if tracker is not None:
            tracker.step(loss=loss)
        seconds = time.perf_counter() - start
        del loss
        gc.collect()
    return seconds, meter.peak


def run_arm(name, model, optimizer, batches, steps, layers, held) -> dict[str, float]:
    """``steps`` steps of one arm (the first one a warm-up); medians of time and peak bytes."""
    tracker, saved = None, capture.HELD_BYTES
    capture.HELD_BYTES = held
    with tempfile.TemporaryDirectory() as log_dir:
        try:
            if layers is not None:
                tracker = ndtracker.Tracker(model, every=1, log_dir=log_dir, layers=layers, detect=False)
            figures = [step(model, optimizer, tracker, batches[i % len(batches)]) for i in range(steps + 1)][1:]
            tracked = len(tracker.layers) if tracker is not None else 0
        finally:
            if tracker is not None:
                tracker.close()
            capture.HELD_BYTES = saved
    resident = resident_bytes(model, optimizer)
    return {
        "name": name, "tracked": tracked,
        "step_s": statistics.median(s for s, _ in figures),
        "peak": resident + statistics.median(p for _, p in figures),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="measured steps per arm (after one warm-up)")
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
    results = [run_arm(name, model, optimizer, batches, args.steps, layers, held) for name, layers, held in arms]
    bare = statistics.fmean(r["step_s"] for r in results if r["name"].startswith("bare"))
    bare_peak = results[0]["peak"]
    print(f"  {'arm':22} {'layers':>6} {'step s':>7} {'s/sample':>9} {'peak MiB':>9} {'extra MiB':>10} {'extra/bare':>10}")
    for r in results:
        extra = r["peak"] - bare_peak
        per_sample = r["step_s"] - bare if r["tracked"] else math.nan
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
