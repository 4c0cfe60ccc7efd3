"""Spectra against a float64 SVD oracle, on planted spectra; invariances; shaping; faults."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ndtracker import spectra
from ndtracker.spectra import Job, Result, StreamingSpectrum, batch, lanczos, measure, measure_many
from ndtracker.vocabulary import METRICS

ALL = frozenset(METRICS)
MOMENTS = frozenset({"stable_rank", "participation_ratio"})
SHAPES = [(256, 512), (300, 200), (1024, 256)]


def oracle(x: torch.Tensor) -> torch.Tensor:
    """The four metrics straight from their definitions on float64 singular values."""
    s = torch.linalg.svdvals(x.double())
    lam = s**2
    p = s / s.sum()
    p = p[p > 0]
    energy90 = int((torch.cumsum(lam, 0) < 0.9 * lam.sum()).sum()) + 1
    return torch.tensor(
        [lam.sum() / lam[0], lam.sum() ** 2 / (lam**2).sum(), torch.exp(-(p * p.log()).sum()), energy90],
        dtype=torch.float64,
    )


def planted(rows: int, cols: int, sigma: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A float32 matrix with exactly the singular values ``sigma`` (random singular vectors)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(rows, len(sigma), generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(cols, len(sigma), generator=g, dtype=torch.float64)).Q
    return ((u * sigma) @ v.T).float()


def spectrum(kind: str, rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "flat":
        return 1 + 0.01 * torch.rand(rank, generator=g, dtype=torch.float64)
    if kind == "power":
        return torch.arange(1, rank + 1, dtype=torch.float64) ** -1.0
    if kind == "deficient":
        return torch.cat([0.5 + torch.rand(rank // 4, generator=g, dtype=torch.float64), torch.zeros(rank - rank // 4, dtype=torch.float64)])
    if kind == "spiked":
        return torch.cat([torch.tensor([30.0, 10.0, 5.0], dtype=torch.float64), torch.ones(rank - 3, dtype=torch.float64) * 0.1])
    raise AssertionError(kind)


def metrics_of(result: Result) -> torch.Tensor:
    return torch.tensor(result.metrics, dtype=torch.float64)


def assert_close_to_oracle(values, expected, metrics=ALL) -> None:
    got = metrics_of(values) if isinstance(values, Result) else torch.as_tensor(values[:4], dtype=torch.float64)
    tolerances = {"stable_rank": 1e-3, "participation_ratio": 1e-3, "effective_rank": 0.02, "energy90": 0.02}
    for i, name in enumerate(METRICS):
        if name in metrics:
            rel = abs(got[i] - expected[i]) / expected[i]
            assert rel <= tolerances[name], f"{name}: got {got[i]:.6g}, oracle {expected[i]:.6g}"
        else:
            assert math.isnan(got[i]), f"{name} was not asked for but came back {got[i]}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["flat", "power", "deficient", "spiked"])
def test_exact_matches_svd_oracle(shape, kind):
    x = planted(*shape, spectrum(kind, min(shape)))
    result = measure(x, estimator="exact")
    assert_close_to_oracle(result, oracle(x))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["flat", "power", "deficient", "spiked", "gaussian"])
def test_randomized_stream_matches_oracle_sample_after_sample(shape, kind):
    """A stream of new batches from one distribution: cold start, then warm starts."""
    rows, cols = shape
    if kind == "gaussian":
        mixing = torch.eye(cols)
    else:
        mixing = planted(cols, cols, spectrum(kind, cols), seed=2)
    state = StreamingSpectrum()
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        x = torch.randn(rows, cols, generator=g) @ mixing
        x = x - x.mean(0)
        table = measure_many([Job(x, "randomized", MOMENTS, state)])
        assert table[0].estimator in ("randomized", "exact")
        assert_close_to_oracle(table[0], oracle(x), MOMENTS)


def test_randomized_without_participation_ratio_skips_the_gram():
    x = planted(512, 600, spectrum("spiked", 512))
    state = StreamingSpectrum()
    table = measure_many([Job(x, "randomized", frozenset({"stable_rank"}), state)])
    assert_close_to_oracle(table[0], oracle(x), {"stable_rank"})
    assert state.basis is not None and state.basis.shape == (600, lanczos.KRYLOV_BLOCK)


def test_randomized_refuses_full_spectrum_metrics():
    with pytest.raises(ValueError, match="estimator='randomized' gives stable_rank"):
        measure(torch.randn(10, 10), estimator="randomized", metrics=ALL)
    with pytest.raises(ValueError, match="estimator must be one of"):
        measure(torch.randn(10, 10), estimator="svd")


def test_choose_estimator_by_metrics_and_size():
    assert spectra.choose_estimator((1024, 4096), MOMENTS) == "randomized"
    assert spectra.choose_estimator((1024, 4096), ALL) == "exact"
    assert spectra.choose_estimator((4096, 64), MOMENTS) == "exact"
    assert spectra.choose_estimator((4096, 64), MOMENTS, "randomized") == "randomized"


@pytest.mark.parametrize("estimator,metrics", [("exact", ALL), ("randomized", MOMENTS)])
def test_invariant_to_scale_rotation_and_row_permutation(estimator, metrics):
    x = planted(300, 400, spectrum("power", 300))
    base = metrics_of(measure(x, estimator=estimator, metrics=metrics))
    q = torch.linalg.qr(torch.randn(400, 400, dtype=torch.float64)).Q.float()
    variants = [x * 1e6, x * 1e-6, x @ q, x[torch.randperm(300)]]
    for variant in variants:
        got = metrics_of(measure(variant, estimator=estimator, metrics=metrics))
        torch.testing.assert_close(got, base, rtol=2e-4, atol=0, equal_nan=True)


def test_huge_magnitudes_do_not_overflow():
    x = planted(200, 300, spectrum("power", 200)) * 1e30
    result = measure(x, estimator="exact")
    assert torch.isfinite(metrics_of(result)).all()
    assert_close_to_oracle(result, oracle(x.double() / 1e30))


def test_nonfinite_and_zero_and_empty_are_flagged_not_raised():
    bad = torch.randn(50, 40)
    bad[3, 4] = math.nan
    result = measure(bad, estimator="exact")
    assert not result.finite  # the finite flag
    zero = measure(torch.zeros(50, 40), estimator="exact")
    assert zero.energy == 0.0 and torch.isnan(metrics_of(zero)).all()
    empty = measure(torch.zeros(0, 40), estimator="exact")
    assert torch.isnan(metrics_of(empty)).all()


def test_known_values():
    """A flat spectrum of rank 16: the ranks are 16, and 90% of the energy needs 15 directions."""
    x = planted(64, 64, torch.ones(16, dtype=torch.float64))
    result = measure(x, estimator="exact")
    expected = torch.tensor([16.0, 16.0, 16.0, 15.0], dtype=torch.float64)
    torch.testing.assert_close(metrics_of(result), expected, rtol=1e-5, atol=0)


def test_activation_matrix_layouts():
    conv = torch.randn(2, 3, 4, 5)
    channel = spectra.activation_matrix(conv, channels_first=True, center=False)
    assert channel.shape == (2 * 4 * 5, 3)
    assert torch.equal(channel[0], conv[0, :, 0, 0])
    sample = spectra.activation_matrix(conv, channels_first=True, conv="sample", center=False)
    assert sample.shape == (2, 60)
    tokens = spectra.activation_matrix(torch.randn(4, 7, 9), center=False)
    assert tokens.shape == (28, 9)
    assert spectra.activation_matrix(torch.randn(5), center=False).shape == (5, 1)


def test_activation_matrix_centres_caps_and_casts():
    x = torch.randn(1000, 8, dtype=torch.bfloat16) + 5
    g = torch.Generator().manual_seed(0)
    m = spectra.activation_matrix(x, max_rows=100, generator=g)
    assert m.dtype == torch.float32 and m.shape == (100, 8)
    torch.testing.assert_close(m.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    g2 = torch.Generator().manual_seed(0)
    again = spectra.activation_matrix(x, max_rows=100, generator=g2)
    assert torch.equal(m, again)


def test_weight_matrix_reshapes_conv_kernels():
    assert spectra.weight_matrix(torch.randn(16, 3, 5, 5)).shape == (16, 75)
    assert spectra.weight_matrix(torch.randn(7)).shape == (1, 7)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 120),
    cols=st.integers(1, 120),
    rank=st.integers(1, 120),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**16),
)
def test_property_exact_matches_oracle_on_random_shapes(rows, cols, rank, dtype, seed):
    rank = min(rank, rows, cols)
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, rank, generator=g) @ torch.randn(rank, cols, generator=g)).to(dtype)
    result = measure(x.float(), estimator="exact")
    expected = oracle(x.float())
    assert_close_to_oracle(result, expected)
    sr, pr, er, e90 = result.metrics
    assert 1 - 1e-6 <= sr <= pr + 1e-6 <= rank + 1e-3  # 1 <= stable rank <= participation ratio <= rank
    assert 1 <= e90 <= rank


@pytest.mark.parametrize("rows", [1, 10, 191, 512, 515, 800])
@pytest.mark.parametrize("cols", [37, 600])
def test_symmetric_product_equals_the_plain_product(rows, cols):
    """Plain below 512 x 512, from upper blocks above (uneven ones at 515 and 800 rows)."""
    a = torch.randn(rows, cols, dtype=torch.float64, generator=torch.Generator().manual_seed(rows))
    torch.testing.assert_close(spectra.symmetric_product(a), a @ a.T, rtol=1e-12, atol=1e-12)
    batch = torch.full((2, rows, rows), math.nan, dtype=torch.float64)
    assert spectra.symmetric_product(a, out=batch[1]).data_ptr() == batch[1].data_ptr()
    torch.testing.assert_close(batch[1], a @ a.T, rtol=1e-12, atol=1e-12)
    assert batch[0].isnan().all()  # the other slot is untouched


def test_small_eigenproblems_wait_for_the_one_host_transfer(monkeypatch):
    """Every eigensolver of a sample of small Grams runs after its single transfer to the host
    (on a GPU the solver's error check is a synchronisation, so none may run per layer)."""
    events: list[str] = []
    for name in ("eigh", "eigvalsh"):
        solver = getattr(torch.linalg, name)
        monkeypatch.setattr(torch.linalg, name, lambda *a, _f=solver, **k: events.append("solve") or _f(*a, **k))
    to_host = batch._to_host
    monkeypatch.setattr(batch, "_to_host", lambda batches: events.append("transfer") or to_host(batches))
    power = spectrum("power", 120)
    jobs = [
        Job(planted(120, 300, power, seed=1), "randomized", MOMENTS, StreamingSpectrum()),
        Job(planted(300, 120, power, seed=2), "randomized", MOMENTS, StreamingSpectrum()),  # batched
        Job(planted(120, 200, power, seed=3), "randomized", frozenset({"stable_rank"}), StreamingSpectrum()),
        Job(planted(100, 40, spectrum("power", 40), seed=4), "exact", MOMENTS),
        Job(planted(100, 40, spectrum("deficient", 40), seed=5), "exact", ALL),
    ]
    table = measure_many(jobs)
    assert [r.estimator for r in table] == [job.estimator for job in jobs]  # nothing was redone
    assert events[0] == "transfer" and events.count("transfer") == 1 and "solve" in events
    for job, row in zip(jobs, table):
        assert_close_to_oracle(row, oracle(job.matrix), job.metrics)


def test_gram_matrix_takes_the_smaller_side():
    x = torch.randn(30, 50)
    gram, row_side = spectra.gram_matrix(x)
    assert gram.shape == (30, 30) and row_side
    gram, row_side = spectra.gram_matrix(x.T)
    assert gram.shape == (30, 30) and not row_side


@pytest.mark.parametrize("cols", [1, 2, 5])
def test_randomized_on_fewer_features_than_lanczos_steps(cols):
    x = planted(40, cols, torch.linspace(1, 2, cols, dtype=torch.float64))
    result = measure(x, estimator="randomized", metrics=MOMENTS)
    assert_close_to_oracle(result, oracle(x), MOMENTS)


def test_randomized_flags_nonfinite_without_raising():
    bad = planted(120, 150, spectrum("power", 120))
    bad[7, 9] = math.inf
    state = StreamingSpectrum()
    table = measure_many([Job(bad, "randomized", MOMENTS, state)])
    assert not table[0].finite and table[0].estimator == "exact"  # flagged, and redone exactly
    good = planted(120, 150, spectrum("power", 120))
    table = measure_many([Job(good, "randomized", MOMENTS, state)])  # the stream recovers
    assert_close_to_oracle(table[0], oracle(good), MOMENTS)
    assert table[0].estimator == "randomized"


def test_warm_stable_rank_never_undershoots_the_oracle():
    """θ₁ ≤ λ₁ for a Ritz value, so stable rank = Σλ/θ₁ is never below the truth (no ghosts)."""
    mixing = planted(300, 300, spectrum("spiked", 300), seed=2)
    state, g = StreamingSpectrum(), torch.Generator().manual_seed(5)
    for _ in range(25):
        x = torch.randn(200, 300, generator=g) @ mixing
        table = measure_many([Job(x, "randomized", MOMENTS, state)])
        if table[0].estimator == "randomized":
            assert table[0].stable_rank >= oracle(x)[0] * (1 - 1e-5)
    assert state.depth <= 4  # a warm, well-separated stream needs few Lanczos steps


def test_flat_stream_settles_with_few_misses():
    """A white stream (new top direction every batch) deepens once, then rarely misses."""
    state, g = StreamingSpectrum(), torch.Generator().manual_seed(6)
    for _ in range(40):
        x = torch.randn(200, 260, generator=g)
        table = measure_many([Job(x - x.mean(0), "randomized", MOMENTS, state)])
        assert_close_to_oracle(table[0], oracle(x - x.mean(0)), MOMENTS)
    assert state.fallbacks <= 4 and state.depth <= lanczos.MAX_DEPTH


@pytest.mark.parametrize("kind", ["flat", "power", "deficient", "spiked"])
def test_exact_with_moment_metrics_only_matches_oracle(kind):
    """Without a full-spectrum metric the exact route reads only λ₁ off the spectrum."""
    x = planted(150, 220, spectrum(kind, 150))
    for metrics in (MOMENTS, frozenset({"stable_rank"}), frozenset({"participation_ratio"})):
        assert_close_to_oracle(measure(x, estimator="exact", metrics=metrics), oracle(x), metrics)


def test_streams_measured_together_match_streams_measured_alone():
    """Jobs whose Grams share a size run one batched Lanczos iteration; results do not change."""
    shapes = [(200, 300), (300, 200), (200, 200), (150, 600)]
    matrices = [planted(r, c, spectrum("power", min(r, c)), seed=i) for i, (r, c) in enumerate(shapes)]
    together = measure_many([Job(x, "randomized", MOMENTS, StreamingSpectrum()) for x in matrices])
    for x, row in zip(matrices, together):
        alone = measure_many([Job(x, "randomized", MOMENTS, StreamingSpectrum())])
        torch.testing.assert_close(torch.tensor(row.metrics[:2]), torch.tensor(alone[0].metrics[:2]), rtol=1e-6, atol=0)
        assert_close_to_oracle(row, oracle(x), MOMENTS)


def test_capped_channel_rows_are_the_rows_of_the_full_layout():
    """Picking conv positions before copying gives the rows (and order) of flatten-then-subsample."""
    conv = torch.randn(6, 5, 7, 9)
    full = conv.flatten(2).transpose(1, 2).flatten(0, 1)
    for max_rows in (None, 50, 377, 1000):
        got = spectra.activation_matrix(
            conv, channels_first=True, max_rows=max_rows, center=False,
            generator=torch.Generator().manual_seed(3),
        )  # fmt: skip
        expected = spectra.subsample_rows(full, max_rows, torch.Generator().manual_seed(3))
        assert torch.equal(got, expected)


def test_outputs_of_one_row_count_share_one_draw_of_rows():
    """With a ``draws`` dict, every output with the same row count keeps the same rows (a conv
    layout and a flat one alike); another row count draws its own, and the dict records both."""
    index = torch.arange(6 * 7 * 9, dtype=torch.float32)
    conv = index.view(6, 7, 9).unsqueeze(1).expand(6, 3, 7, 9)  # each row's value is its position
    flat = index.view(-1, 1).expand(-1, 4)
    other = torch.arange(40, dtype=torch.float32).view(40, 1)
    draws: dict[int, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(5)
    options = {"max_rows": 30, "center": False, "generator": generator, "draws": draws}
    first = spectra.activation_matrix(conv, channels_first=True, **options)
    second = spectra.activation_matrix(flat, **options)
    small = spectra.activation_matrix(other, **options)
    assert torch.equal(first[:, 0], second[:, 0])
    assert first[:, 0].unique().numel() == 30  # without replacement
    assert sorted(draws) == [40, 6 * 7 * 9] and small[:, 0].unique().numel() == 30
    again = spectra.activation_matrix(flat, max_rows=30, center=False, generator=generator, draws={})
    assert not torch.equal(again[:, 0], second[:, 0])  # a new sample draws anew


@pytest.mark.parametrize("rows", [1, 6, 7, 255])
def test_centring_makes_constant_columns_exactly_zero(rows):
    constant = torch.randn(1, 5).expand(rows, 5)
    assert torch.equal(spectra.activation_matrix(constant), torch.zeros(rows, 5))


def test_centring_does_not_overflow_near_the_float32_limit():
    huge = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * 1e37 + 1e37
    assert torch.isfinite(spectra.activation_matrix(huge)).all()
    beyond = torch.randn(4, 8, dtype=torch.float64) * 1e300  # scaled before the float32 cast
    matrix = spectra.activation_matrix(beyond)
    assert torch.isfinite(matrix).all()
    expected = oracle((beyond - beyond.mean(0)) / 1e300)  # the oracle's squares would overflow
    assert_close_to_oracle(measure(matrix, estimator="exact"), expected)


def test_a_missed_tolerance_is_redone_deeper_then_exactly_and_stays_accurate(monkeypatch):
    """A stream forced far too shallow misses; the deeper warm retry or the exact redo fixes it."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 400, generator=g)
    x = x - x.mean(0)
    expected = oracle(x)
    calls: list[list[str]] = []
    measure_rows = batch._measure_rows
    monkeypatch.setattr(
        batch, "_measure_rows", lambda jobs, wide=False: calls.append([j.estimator for j in jobs]) or measure_rows(jobs, wide)
    )
    state = StreamingSpectrum(depth=1)
    table = measure_many([Job(x, "randomized", MOMENTS, state)])
    assert_close_to_oracle(table[0], expected, MOMENTS)
    assert table[0].lambda_error <= spectra.TOLERANCE and state.fallbacks == 1
    assert calls[:2] == [["randomized"], ["randomized"]]  # the first run, then the deeper one
    assert table[0].estimator == ("exact" if len(calls) == 3 else "randomized")


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), torch.float64), ((8, 0), torch.float64), ((8, 6), torch.float32), ((8, 9), torch.float32), ((7, 5), torch.float32)],
)
def test_lambda_one_in_float64_only_where_it_is_fast(monkeypatch, capability, expected):
    """Data-centre GPUs (half-rate float64) keep float64 for λ₁; consumer ones (1/32-1/64) don't."""
    from ndtracker.spectra import exact

    exact._fast_float64_cuda.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    try:
        assert exact.top_dtype(torch.device("cuda", 0)) == expected
    finally:
        exact._fast_float64_cuda.cache_clear()
    assert exact.top_dtype(torch.device("cpu")) == torch.float64
    assert exact.top_dtype(torch.device("mps")) == torch.float32


@pytest.mark.parametrize("kind", ["flat", "power", "spiked", "deficient"])
@pytest.mark.parametrize("shape", [(150, 220), (40, 300)])  # a device Gram, and a host one
def test_float32_routes_keep_the_moment_metrics_accurate(monkeypatch, kind, shape):
    """Without fast float64 (λ₁ in float32) or without any (MPS: the whole exact route in float32,
    scaled), stable rank and participation ratio stay within 1e-3, even where a float32 Gram
    cannot resolve a spectrum's small tail (they come from the trace and ‖G‖_F, not from it)."""
    from ndtracker.spectra import exact

    x = planted(*shape, spectrum(kind, min(shape)))
    expected = oracle(x)
    monkeypatch.setattr(exact, "top_dtype", lambda device: torch.float32)
    assert_close_to_oracle(measure(x, estimator="exact", metrics=MOMENTS), expected, MOMENTS)
    monkeypatch.setattr(exact, "full_spectrum_dtype", lambda device: torch.float32)
    values = measure(x, estimator="exact").metrics
    assert_close_to_oracle(list(values[:2]) + [math.nan, math.nan], expected, MOMENTS)
