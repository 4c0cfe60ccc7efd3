"""The Tracker on real (small) architectures: what is tracked, the shapes measured, and clean exit.

Every model here trains for a few steps with ``every=1``; each test checks which layers are
tracked, the ``rows`` x ``cols`` of the measured matrices against the layout in DESIGN.md, that
every row is ``ok``, and that no hook is left on any module after ``close()``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from training_helpers import B, assert_all_ok, hook_count, mlp, shapes, train

import ndtracker
from ndtracker import spectra
from ndtracker import Tracker


# ------------------------------------------------------------------------------ models


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet(stages=(8,)) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, stages[0], 3, 1, 1, bias=False), nn.BatchNorm2d(stages[0]), nn.ReLU()]
    for i, width in enumerate(stages):
        layers.append(ResidualBlock(stages[max(i - 1, 0)], width, 1 if i == 0 else 2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(stages[-1], 10)]
    return nn.Sequential(*layers)


def images(size=8):
    return lambda: torch.randn(B, 3, size, size)


def test_mlp_with_the_default_detector(tmp_path):
    tracker, df = train(mlp(), lambda: torch.randn(32, 12), tmp_path, steps=3, detect=True)
    assert tracker.layers == ["0", "2", "4"]
    assert shapes(df) == {"0": (32, 32), "2": (32, 16), "4": (32, 3)}
    assert shapes(df, "weight") == {"0": (32, 12), "2": (16, 32), "4": (3, 16)}
    assert_all_ok(tracker, df, steps=3)


def test_cnn_with_batchnorm_and_a_residual_block(tmp_path):
    tracker, df = train(resnet(), images(), tmp_path)
    assert tracker.layers == ["0", "3.conv1", "3.conv2", "6"]  # batch norms are not tracked
    got = shapes(df)
    assert got["0"] == (B * 8 * 8, 8) and got["3.conv2"] == (B * 8 * 8, 8)  # positions x channels
    assert shapes(df, "weight")["3.conv1"] == (8, 8 * 3 * 3)
    assert_all_ok(tracker, df)


def test_resnet_with_downsampling_stages_and_conv_sample_layout(tmp_path):
    model = resnet((8, 16, 32))
    tracker, df = train(model, images(16), tmp_path, conv="sample")
    assert "4.shortcut.0" in tracker.layers and "5.shortcut.0" in tracker.layers
    got = shapes(df)
    assert got["4.conv1"] == (B, 16 * 8 * 8)  # samples x (C·H·W)
    assert got["5.shortcut.0"] == (B, 32 * 4 * 4)
    assert_all_ok(tracker, df)


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_both_layouts(tmp_path, batch_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
    model = nn.Sequential(nn.Linear(6, 16), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))
    shape = (B, 5, 6) if batch_first else (5, B, 6)
    tracker, df = train(model, lambda: torch.randn(*shape), tmp_path, detect=True)
    assert tracker.layers == ["0"] + [f"1.layers.{i}.{n}" for i in (0, 1) for n in ("self_attn", "linear1", "linear2")]
    got = shapes(df)
    assert got["1.layers.0.self_attn"] == (B * 5, 16) and got["1.layers.1.linear1"] == (B * 5, 32)
    assert shapes(df, "weight")["1.layers.0.self_attn"] == (48, 16)  # the q, k, v input projection
    assert_all_ok(tracker, df)


class CausalSelfAttention(nn.Module):
    """Causal attention with Linear projections and ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(x).split(d, -1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MaskedAttention(nn.Module):
    """Causal attention with ``nn.MultiheadAttention`` and an ``attn_mask``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        t = x.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]


class Block(nn.Module):
    def __init__(self, dim: int, attention: type):
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(dim), attention(dim, 2), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A decoder-only language model; the head shares the token embedding's weight."""

    def __init__(self, vocab=50, dim=16, context=8, depth=2, attention: type = CausalSelfAttention):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*[Block(dim, attention) for _ in range(depth)])
        self.ln_f, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.ln_f(self.blocks(x)))


def tokens():
    return torch.randint(0, 50, (B, 8))


def test_gpt_block_with_causal_sdpa(tmp_path):
    torch.manual_seed(0)
    tracker, df = train(GPT(), tokens, tmp_path, detect=True)
    block = ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.0", "blocks.0.mlp.2"]
    assert tracker.layers[:4] == block and tracker.layers[-1] == "head"  # embeddings are opt-in
    got = shapes(df)
    assert got["blocks.0.attn.qkv"] == (B * 8, 48) and got["head"] == (B * 8, 50)
    assert_all_ok(tracker, df)


def test_gpt_block_with_multihead_attention_and_attn_mask(tmp_path):
    torch.manual_seed(0)
    tracker, df = train(GPT(attention=MaskedAttention), tokens, tmp_path)
    assert "blocks.0.attn.attn" in tracker.layers
    assert not any("out_proj" in name for name in tracker.layers)  # measured as the attention module
    assert shapes(df)["blocks.0.attn.attn"] == (B * 8, 16)
    assert_all_ok(tracker, df)


def test_causal_mask_changes_nothing_in_the_layout_but_the_values(tmp_path):
    torch.manual_seed(0)
    model = CausalSelfAttention(16, 2)
    x = torch.randn(B, 8, 16)
    seen = {}
    model.proj.register_forward_hook(lambda m, a, out: seen.update(out=out.detach().clone()))
    with Tracker(model, every=1, log_dir=str(tmp_path), layers="proj", spaces="activation", detect=False) as tracker:
        model(x).sum().backward()
        tracker.step()
    out = seen["out"].reshape(-1, 16)
    expected = spectra.metrics_from_eigenvalues(torch.linalg.svdvals((out - out.mean(0)).double()) ** 2)
    assert ndtracker.load(tmp_path).stable_rank.item() == pytest.approx(expected[0].item(), rel=1e-4)


class ViT(nn.Module):
    def __init__(self, dim=16, patch=4, size=16):
        super().__init__()
        self.patchify = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        patches = self.patchify(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), patches], 1) + self.pos
        return self.head(self.encoder(x)[:, 0])


def test_vit_patch_model(tmp_path):
    torch.manual_seed(0)
    tracker, df = train(ViT(), images(16), tmp_path)
    assert tracker.layers[0] == "patchify" and tracker.layers[-1] == "head"
    got = shapes(df)
    assert got["patchify"] == (B * 4 * 4, 16)  # one row per patch
    assert got["encoder.layers.0.linear1"] == (B * 17, 32)  # patches and the class token
    assert shapes(df, "weight")["patchify"] == (16, 3 * 4 * 4)
    assert_all_ok(tracker, df)


# ------------------------------------------------------------------------------ layers and weights


def test_embeddings_are_opt_in(tmp_path):
    torch.manual_seed(0)
    tracker, df = train(GPT(), tokens, tmp_path, layers=[nn.Embedding, "head"])
    assert tracker.layers == ["tok", "pos", "head"]
    got = shapes(df)
    assert got["tok"] == (B * 8, 16) and got["pos"] == (8, 16)
    assert shapes(df, "weight")["tok"] == (50, 16)
    assert_all_ok(tracker, df)


def test_tied_weights_are_measured_once_and_logged_under_each_layer(tmp_path, monkeypatch):
    sizes = []
    measure_many = spectra.measure_many
    monkeypatch.setattr(spectra, "measure_many", lambda jobs: sizes.append(len(jobs)) or measure_many(jobs))
    torch.manual_seed(0)
    model = GPT()
    tracker, df = train(model, tokens, tmp_path, layers=["tok", "head"])
    # one shared weight when each step begins (at construction for step 0, with the activations of
    # the step before otherwise), two activations when it ends (issue 10's weight timing: was [3, 3])
    assert sizes == [1, 3, 3]
    weights = df[df.space == "weight"].pivot(index="step", columns="layer", values="stable_rank")
    assert (weights["tok"] == weights["head"]).all()


def test_weights_tied_after_the_tracker_was_built_are_the_ones_measured(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with Tracker(model, every=1, log_dir=str(tmp_path), spaces="weight", detect=False) as tracker:
        tracker.step()
        with torch.no_grad():
            model[2].weight = nn.Parameter(torch.diag(torch.arange(1.0, 9.0)))
        tracker.step()
        tracker.step()
    df = ndtracker.load(tmp_path).query("layer == '2'")
    expected = (torch.arange(1.0, 9.0) ** 2).sum().item() / 64
    # step 1's weights were measured as it began (when step() ended step 0, before the swap);
    # the swap shows from the next sampled step on (issue 10's weight timing: was iloc[1])
    assert df.stable_rank.iloc[1] != pytest.approx(expected, rel=1e-6)
    assert df.stable_rank.iloc[2] == pytest.approx(expected, rel=1e-6)


def test_lazy_modules_and_parametrized_weights(tmp_path):
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    blocks = [parametrizations.weight_norm(nn.Linear(8, 8)) for _ in range(3)]  # a new tensor per access
    model = nn.Sequential(nn.LazyLinear(8), *blocks)
    tracker, df = train(model, lambda: torch.randn(B, 5), tmp_path, detect=True)
    assert tracker.layers == ["0", "1", "2", "3"]
    assert shapes(df, "weight")["0"] == (8, 5)  # materialized by the first forward
    weights = df[(df.space == "weight") & (df.step == 1)].set_index("layer").stable_rank
    for name in ("1", "2", "3"):
        w = model.get_submodule(name).weight.detach().double()
        expected = spectra.metrics_from_eigenvalues(torch.linalg.svdvals(w) ** 2)[0].item()
        assert weights[name] == pytest.approx(expected, rel=1e-4)
    assert_all_ok(tracker, df)


def test_data_parallel_wrappers_are_tracked_under_the_model_s_own_names(tmp_path):
    torch.manual_seed(0)
    bare_tracker, bare = train(mlp(), lambda: torch.randn(B, 12), tmp_path / "bare")
    wrapped_tracker, wrapped = train(nn.DataParallel(mlp()), lambda: torch.randn(B, 12), tmp_path / "dp")
    assert wrapped_tracker.layers == bare_tracker.layers == ["0", "2", "4"]
    assert wrapped[["step", "layer", "space", "rows", "cols"]].equals(bare[["step", "layer", "space", "rows", "cols"]])


def test_distributed_data_parallel_on_one_process(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():  # pragma: no cover
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = mlp()
        tracker, df = train(nn.parallel.DistributedDataParallel(model), lambda: torch.randn(B, 12), tmp_path / "a")
    finally:
        dist.destroy_process_group()
    assert tracker.layers == ["0", "2", "4"]
    assert_all_ok(tracker, df)
    assert hook_count(model) == 0


def test_more_than_200_layers_are_capped_evenly(tmp_path):
    deep = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4, bias=False), nn.Tanh()) for _ in range(210)])
    for block in deep:
        nn.init.orthogonal_(block[0].weight, gain=1.5)  # keeps the signal alive through 210 layers
    tracker, df = train(deep, lambda: torch.randn(8, 4), tmp_path, steps=1)
    assert len(tracker.layers) == 64
    assert tracker.layers[0] == "0.0" and tracker.layers[-1] == "209.0"
    indices = [int(name.split(".")[0]) for name in tracker.layers]
    gaps = {b - a for a, b in zip(indices, indices[1:])}
    assert gaps <= {3, 4}  # 209 / 63 = 3.3: even spacing over depth
    assert len(df) == 2 * 64 and (df.status == "ok").all()
    assert len(Tracker(deep, max_layers=None, log_dir=str(tmp_path), detect=False).layers) == 210


def test_frozen_part_of_the_model(tmp_path):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))
    model = nn.Sequential(backbone, nn.ReLU(), nn.Linear(8, 3))
    backbone.requires_grad_(False)
    backbone.eval()  # a frozen backbone in eval mode inside a model that trains
    tracker, df = train(model, lambda: torch.randn(B, 6), tmp_path / "a")
    assert_all_ok(tracker, df)
    weights = df[(df.space == "weight") & (df.layer == "0.0")]
    assert weights.stable_rank.nunique() == 1  # frozen: the same weights at every step


def test_frozen_backbone_under_no_grad_needs_track_eval(tmp_path):
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = nn.Linear(6, 16).requires_grad_(False), nn.Linear(16, 3)

        def forward(self, x):
            with torch.no_grad():
                features = self.backbone(x)
            return self.head(features)

    with pytest.warns(RuntimeWarning, match="layer 'backbone' .*no training forward pass.*track_eval=True"):
        _, df = train(Net(), lambda: torch.randn(B, 6), tmp_path / "a")
    assert set(df[df.space == "activation"].layer) == {"head"}
    tracker, df = train(Net(), lambda: torch.randn(B, 6), tmp_path / "b", track_eval=True)
    assert_all_ok(tracker, df)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_model_in_another_dtype(tmp_path, dtype):
    model = resnet().to(dtype)
    seen = {}
    model[0].register_forward_hook(lambda m, a, out: seen.update(out=out.detach()))
    tracker, df = train(model, lambda: torch.randn(B, 3, 8, 8, dtype=dtype), tmp_path, steps=1)
    assert_all_ok(tracker, df, steps=1)
    out = seen["out"].double().permute(0, 2, 3, 1).reshape(-1, 8)  # positions x channels
    expected = spectra.metrics_from_eigenvalues(torch.linalg.svdvals(out - out.mean(0)) ** 2)[0].item()
    row = df[(df.layer == "0") & (df.space == "activation")]
    assert row.stable_rank.item() == pytest.approx(expected, rel=1e-4)


def test_model_converted_to_another_dtype_while_tracked(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Tracker(model, every=1, log_dir=str(tmp_path), detect=False) as tracker:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            model.to(dtype)
            model(torch.randn(16, 12, dtype=dtype)).float().pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            tracker.step()
    df = ndtracker.load(tmp_path)
    assert len(df) == 3 * 6 and (df.status == "ok").all()


# ------------------------------------------------------------------------------ property based


@settings(max_examples=12, deadline=None)
@given(
    widths=st.lists(st.integers(1, 24), min_size=2, max_size=4),
    batch=st.integers(1, 40),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    center=st.booleans(),
)
def test_random_mlps_log_one_row_per_layer_and_space(tmp_path_factory, widths, batch, dtype, center):
    torch.manual_seed(0)
    layers = [nn.Linear(a, b) for a, b in zip(widths, widths[1:])]
    model = nn.Sequential(*[m for layer in layers for m in (layer, nn.Tanh())]).to(dtype)
    log_dir = tmp_path_factory.mktemp("run")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: nothing non-finite, nothing failed
        metrics = ("stable_rank", "participation_ratio")
        with Tracker(model, every=1, log_dir=str(log_dir), center=center, detect=False, metrics=metrics) as tracker:
            model(torch.randn(batch, widths[0], dtype=dtype)).float().sum().backward()
            tracker.step()
    df = ndtracker.load(log_dir)
    act, weight = df[df.space == "activation"], df[df.space == "weight"]
    assert list(act.cols) == widths[1:] and (act.rows == batch).all()
    assert list(weight.rows) == widths[1:] and list(weight.cols) == widths[:-1]
    assert set(df.status) <= {"ok", "zero"}
    zero = df.status == "zero"  # only a centred single row, or a layer whose output is constant
    assert (~zero | (df.space == "activation")).all()
    ok = df[~zero]
    assert (ok.stable_rank >= 1 - 1e-6).all()
    assert (ok.stable_rank <= ok[["rows", "cols"]].min(axis=1) * (1 + 1e-6)).all()
    assert (ok.participation_ratio <= ok[["rows", "cols"]].min(axis=1) * (1 + 1e-6)).all()
    assert not math.isnan(ok.stable_rank.sum())
