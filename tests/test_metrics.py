"""Tests for explrobust_core.metrics: against scipy/numpy, hand cases, naive references, properties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explrobust_core import metrics as M
from explrobust_core.registry import ConfigError, UnknownNameError

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def scipy_per_image(fn, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns NaN
        for x, y in zip(a.reshape(a.shape[0], -1).double().numpy(), b.reshape(b.shape[0], -1).double().numpy()):
            out.append(fn(x, y)[0])
    return np.asarray(out, dtype=np.float64)


def assert_matches(ours: torch.Tensor, ref: np.ndarray, atol: float = 1e-6) -> None:
    ours = ours.double().numpy()
    assert ours.shape == ref.shape
    # NaN exactly where the reference has NaN
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=0, atol=atol)


def kendall_ref(a, b):
    return scipy_per_image(scipy.stats.kendalltau, a, b)


def spearman_ref(a, b):
    return scipy_per_image(scipy.stats.spearmanr, a, b)


def mnist_like(gen: torch.Generator, n: int, side: int = 28) -> torch.Tensor:
    """Maps with a zero background and a blob of (partly quantised) values."""
    m = torch.zeros(n, side, side)
    q = side // 4
    m[:, q : side - q, q : side - q] = torch.rand(n, side - 2 * q, side - 2 * q, generator=gen)
    m[:, q : side // 2, q : side // 2] = (m[:, q : side // 2, q : side // 2] * 3).floor()  # ties
    return m


# --------------------------------------------------------------------------------------------
# Kendall and Spearman against scipy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn,ref", [(M.kendall_tau, kendall_ref), (M.spearman_rho, spearman_ref)])
def test_rank_correlations_random_maps(fn, ref):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(6, 12, 12, generator=g), torch.rand(6, 12, 12, generator=g)
    b[1] = a[1] + 0.3 * b[1]  # a correlated pair
    b[2] = -a[2]  # perfectly anti-ordered
    assert_matches(fn(a, b), ref(a, b))
    assert fn(a, b)[2].item() == pytest.approx(-1.0, abs=1e-12)
    assert_matches(fn(a.double(), b.double()), ref(a, b), atol=1e-12)


@pytest.mark.parametrize("fn,ref", [(M.kendall_tau, kendall_ref), (M.spearman_rho, spearman_ref)])
def test_rank_correlations_many_ties(fn, ref):
    g = torch.Generator().manual_seed(1)
    # quantised values: heavy ties in both maps
    a = (torch.rand(5, 10, 10, generator=g) * 4).floor()
    b = (torch.rand(5, 10, 10, generator=g) * 3).floor()
    b[0] = a[0]  # identical with ties → exactly 1
    assert_matches(fn(a, b), ref(a, b))
    assert fn(a, b)[0].item() == pytest.approx(1.0, abs=1e-12)
    # mostly exact zeros (MNIST backgrounds)
    z1 = torch.rand(5, 10, 10, generator=g) * (torch.rand(5, 10, 10, generator=g) > 0.8)
    z2 = torch.rand(5, 10, 10, generator=g) * (torch.rand(5, 10, 10, generator=g) > 0.7)
    assert_matches(fn(z1, z2), ref(z1, z2))


@pytest.mark.parametrize("fn,ref", [(M.kendall_tau, kendall_ref), (M.spearman_rho, spearman_ref)])
def test_rank_correlations_28x28_varying_batch(fn, ref):
    g = torch.Generator().manual_seed(2)
    a = mnist_like(g, 7)
    b = mnist_like(g, 7)
    b[0] = a[0] + 0.05 * torch.rand(28, 28, generator=g)  # perturbed version of a
    b[1] = torch.zeros(28, 28)  # constant → NaN
    a[2] = torch.full((28, 28), 0.5)  # constant → NaN
    b[3] = a[3]
    b[4] = a[4].flip(-1)
    b[5] = torch.rand(28, 28, generator=g)  # no ties vs. many ties
    expected = ref(a, b)
    assert np.isnan(expected[1]) and np.isnan(expected[2])  # the reference does give NaN there
    assert_matches(fn(a, b), expected)


def test_kendall_chunking_is_exact():
    g = torch.Generator().manual_seed(3)
    a, b = mnist_like(g, 4, side=12), (torch.rand(4, 12, 12, generator=g) * 5).floor()
    full = M.kendall_tau(a, b)
    for budget in (1, 7, 144, 1000, 10**9):
        torch.testing.assert_close(M.kendall_tau(a, b, max_elements=budget), full, rtol=0, atol=0)
    assert_matches(full, kendall_ref(a, b))


def test_rank_correlations_nan_cases_and_single_pixel():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    b = torch.tensor([[3.0, 3.0, 3.0], [1.0, 2.0, 3.0]])
    for fn in (M.kendall_tau, M.spearman_rho, M.pearson):
        assert torch.isnan(fn(a, b)).all()
    one = torch.tensor([[[0.3]]])
    assert torch.isnan(M.kendall_tau(one, one)).all()
    assert torch.isnan(M.spearman_rho(one, one)).all()
    # a map with a NaN: NaN, as scipy (which propagates it); the other rows are untouched
    c, d = torch.rand(3, 10, generator=torch.Generator().manual_seed(6)), torch.rand(3, 10)
    c[1, 4] = float("nan")
    for fn, ref in ((M.kendall_tau, kendall_ref), (M.spearman_rho, spearman_ref)):
        r = fn(c, d)
        assert torch.isnan(r[1]) and not torch.isnan(r[[0, 2]]).any()
        assert np.isnan(ref(c[1:2], d[1:2])[0])


def test_average_ranks_match_scipy_rankdata():
    v = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0, 0.0, 0.0, 5.0]])
    np.testing.assert_allclose(M.average_ranks(v)[0].numpy(), scipy.stats.rankdata(v[0].numpy()))


def test_average_ranks_cpu_sort_path_equals_the_searchsorted_path():
    # float32 and integer maps on the CPU take the packed-key sort; float64 (and maps with a NaN) the torch sort and
    # searchsorted: the same values in both dtypes must get the same ranks, ±0, ±inf and heavy ties included
    g = torch.Generator().manual_seed(4)
    v = (torch.rand(6, 300, generator=g) * 7).floor() - 3
    v[0] = torch.rand(300, generator=g)
    v[1, ::4], v[1, 1::4], v[2, ::3], v[2, 1::3] = -0.0, 0.0, float("inf"), -float("inf")
    fast = M.average_ranks(v)
    assert torch.equal(fast, M.average_ranks(v.double()))
    np.testing.assert_array_equal(fast.numpy(), scipy.stats.rankdata(v.numpy(), axis=1))
    assert torch.equal(M.average_ranks((v[3:] + 3).to(torch.uint8)), fast[3:])  # rows of small integers


# --------------------------------------------------------------------------------------------
# top-k intersection
# --------------------------------------------------------------------------------------------


def test_topk_hand_cases():
    a = torch.tensor([[[9.0, 8.0], [1.0, 0.0]]])
    assert M.topk_intersection(a, a, 2).item() == 1.0
    disjoint = torch.tensor([[[0.0, 1.0], [9.0, 8.0]]])
    assert M.topk_intersection(a, disjoint, 2).item() == 0.0
    half = torch.tensor([[[9.0, 0.0], [8.0, 1.0]]])  # top-2 {0, 2} vs {0, 1}
    assert M.topk_intersection(a, half, 2).item() == 0.5
    assert M.topk_intersection(a, half, 4).item() == 1.0  # k = all pixels


def test_topk_batched_and_validation():
    a = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(3, 1)
    b = torch.stack(
        [
            a[0],
            torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
            torch.tensor([5.0, 0.0, 4.0, 1.0, 3.0, 2.0]),  # top-3 {0, 2, 4} vs {0, 1, 2}
        ]
    )
    out = M.topk_intersection(a, b, 3)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0, 2 / 3]))
    for k in (0, 7, 2.5):
        with pytest.raises(ValueError):
            M.topk_intersection(a, b, k)


def test_topk_ties_broken_by_index():
    zeros = torch.zeros(1, 4, 4)
    other = torch.zeros(1, 4, 4)
    assert M.topk_intersection(zeros, other, 5).item() == 1.0  # same deterministic tie order


# --------------------------------------------------------------------------------------------
# map post-processing and the explanation loss
# --------------------------------------------------------------------------------------------


def test_attribution_to_map():
    attr = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]], [[-1.0, 0.5], [0.0, 0.5]]]])  # (1, 2, 2, 2)
    raw = M.attribution_to_map(attr, normalize="none")
    torch.testing.assert_close(raw, torch.tensor([[[2.0, 2.5], [0.0, 3.5]]]))
    m = M.attribution_to_map(attr)
    torch.testing.assert_close(m, raw / 8.0)
    g = torch.Generator().manual_seed(4)
    batch = torch.randn(5, 3, 7, 6, generator=g)
    batch[2] = 0.0
    mb = M.attribution_to_map(batch)
    assert mb.shape == (5, 7, 6)
    assert not torch.isnan(mb).any()
    torch.testing.assert_close(mb.sum(dim=(1, 2)), torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))
    assert (mb[2] == 0).all()
    with pytest.raises(ValueError):
        M.attribution_to_map(batch, normalize="max")


def test_explanation_loss_by_hand():
    a = torch.tensor([[[0.5, 0.5], [0.0, 0.0]], [[0.25, 0.25], [0.25, 0.25]]])
    b = torch.tensor([[[0.0, 0.5], [0.5, 0.0]], [[0.25, 0.25], [0.25, 0.25]]])
    loss = M.explanation_loss(a, b)
    torch.testing.assert_close(loss, torch.tensor([(0.25 + 0.25) / 4, 0.0]))
    torch.testing.assert_close(M.mse(a, b), loss)
    assert M.in_paper_units(3e-7) == pytest.approx(3.0)
    assert M.EXPLANATION_LOSS_UNIT == 1e-7
    torch.testing.assert_close(M.in_paper_units(loss), loss * 1e7)


def test_gradcheck_map_and_explanation_loss():
    g = torch.Generator().manual_seed(5)
    # keep entries away from 0, where |·| has a kink
    sign = torch.where(torch.rand(2, 2, 3, 3, generator=g) > 0.5, 1.0, -1.0).double()
    attr = (sign * (0.2 + torch.rand(2, 2, 3, 3, generator=g).double())).requires_grad_()
    target = M.attribution_to_map(torch.rand(2, 2, 3, 3, generator=g).double() + 0.1)

    def f(x):
        return M.explanation_loss(M.attribution_to_map(x), target)

    assert torch.autograd.gradcheck(f, (attr,))


def test_gradcheck_differentiable_comparisons():
    g = torch.Generator().manual_seed(6)
    a = (torch.rand(2, 3, 4, generator=g).double() + 0.1).requires_grad_()
    b = torch.rand(2, 3, 4, generator=g).double() + 0.1
    for fn in (M.pearson, M.cosine_similarity, M.mse, M.center_of_mass_shift, M.ssim):
        assert torch.autograd.gradcheck(lambda x: fn(x, b), (a,)), fn.__name__
    assert torch.autograd.gradcheck(M.center_of_mass, (a,))


def test_undefined_rows_do_not_poison_gradients():
    a = torch.rand(3, 4, 4)
    a[1] = 0.0  # constant/zero map: undefined for pearson, cosine and the centre of mass
    a.requires_grad_()
    b = torch.rand(3, 4, 4)
    for fn in (M.pearson, M.cosine_similarity, M.center_of_mass_shift):
        out = fn(a, b)
        assert torch.isnan(out[1]) and not torch.isnan(out[[0, 2]]).any()
        (grad,) = torch.autograd.grad(out[[0, 2]].sum(), a)
        assert torch.isfinite(grad).all(), fn.__name__


# --------------------------------------------------------------------------------------------
# pearson, cosine, centre of mass, SSIM
# --------------------------------------------------------------------------------------------


def test_pearson_and_cosine_vs_numpy():
    g = torch.Generator().manual_seed(7)
    a, b = torch.rand(4, 5, 6, generator=g), torch.rand(4, 5, 6, generator=g)
    b[0] = 2 * a[0] + 1
    for i in range(4):
        x, y = a[i].flatten().double().numpy(), b[i].flatten().double().numpy()
        assert M.pearson(a, b)[i].item() == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-6)
        cos = x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
        assert M.cosine_similarity(a, b)[i].item() == pytest.approx(cos, abs=1e-6)
    assert M.pearson(a, b)[0].item() == pytest.approx(1.0, abs=1e-6)
    assert torch.isnan(M.cosine_similarity(torch.zeros(1, 3), torch.ones(1, 3))).all()
    assert M.cosine_similarity(torch.ones(1, 3), torch.ones(1, 3)).item() == pytest.approx(1.0)


def test_center_of_mass_hand_cases():
    m = torch.zeros(3, 5, 7)
    m[0, 1, 4] = 2.0  # one hot pixel
    m[1, 0, 0] = m[1, 4, 6] = 1.0  # symmetric mass → geometric centre
    m[2] = 1.0  # uniform
    com = M.center_of_mass(m)
    torch.testing.assert_close(com, torch.tensor([[1.0, 4.0], [2.0, 3.0], [2.0, 3.0]]))
    assert torch.isnan(M.center_of_mass(torch.zeros(1, 3, 3))).all()
    other = torch.zeros(3, 5, 7)
    other[:, 4, 0] = 1.0  # centre (4, 0)
    shift = M.center_of_mass_shift(m, other)
    torch.testing.assert_close(shift, torch.tensor([5.0, math.hypot(2, 3), math.hypot(2, 3)]))
    assert M.center_of_mass_shift(m, m).eq(0).all()


def test_ssim():
    g = torch.Generator().manual_seed(8)
    a, b = torch.rand(3, 16, 16, generator=g), torch.rand(3, 16, 16, generator=g)
    torch.testing.assert_close(M.ssim(a, a), torch.ones(3))
    torch.testing.assert_close(M.ssim(a, 5 * a), torch.ones(3))  # each map scaled by its own max
    s = M.ssim(a, b)
    assert (s < 1).all() and (s > -1).all()
    # tiny and odd sizes: the window shrinks to fit
    for shape in ((2, 1, 1), (2, 2, 5), (2, 4, 3), (2, 28, 28)):
        x = torch.rand(*shape, generator=g)
        torch.testing.assert_close(M.ssim(x, x), torch.ones(2))
        assert torch.isfinite(M.ssim(x, torch.zeros(shape))).all()
    assert M._ssim_window(28, 28) == 11 and M._ssim_window(4, 9) == 3 and M._ssim_window(1, 5) == 1


# --------------------------------------------------------------------------------------------
# registry and compare_maps
# --------------------------------------------------------------------------------------------


def test_registry_and_compare_maps():
    names = set(M.COMPARISONS.names())
    assert names == {
        "topk_intersection", "kendall_tau", "spearman_rho", "pearson",
        "cosine_similarity", "mse", "center_of_mass_shift", "ssim",
    }
    for entry in M.COMPARISONS:
        assert len(entry.tags & {"similarity", "distance"}) == 1, entry.name
        assert entry.summary
    assert set(M.COMPARISONS.names("distance")) == {"mse", "center_of_mass_shift"}
    assert M.COMPARISONS.describe()  # JSON schemas build

    g = torch.Generator().manual_seed(9)
    a, b = torch.rand(2, 6, 6, generator=g), torch.rand(2, 6, 6, generator=g)
    torch.testing.assert_close(compare := M.compare_maps("topk_intersection", a, b, k=5), M.topk_intersection(a, b, 5))
    assert compare.shape == (2,)
    torch.testing.assert_close(M.compare_maps("kendall_tau", a, b), M.kendall_tau(a, b))
    with pytest.raises(ConfigError):
        M.compare_maps("topk_intersection", a, b, k=0)
    with pytest.raises(ConfigError):
        M.compare_maps("pearson", a, b, k=3)  # extra field forbidden
    with pytest.raises(UnknownNameError):
        M.compare_maps("nope", a, b)


# --------------------------------------------------------------------------------------------
# stability metrics
# --------------------------------------------------------------------------------------------


class TinyGradExplainer:
    """Gradient of the target logit of a tiny fixed model; counts calls and rows seen."""

    def __init__(self):
        g = torch.Generator().manual_seed(10)
        self.w1 = torch.randn(2 * 4 * 4, 8, generator=g, dtype=torch.float64)
        self.w2 = torch.randn(8, 3, generator=g, dtype=torch.float64)
        self.calls = []

    def __call__(self, x, targets=None):
        self.calls.append(x.shape[0])
        x = x.detach().requires_grad_()
        logits = torch.tanh(x.flatten(1) @ self.w1) @ self.w2
        t = torch.zeros(x.shape[0], dtype=torch.long) if targets is None else targets
        (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), x)
        return grad


def naive_stability(explain, x, pert, targets=None, clamp=(0.0, 1.0)):
    """Per image and per sample, in Python: (abs sensitivities, relative ones, lipschitz ratios)."""
    n, s = pert.shape[:2]
    absd = np.zeros((n, s))
    rel = np.zeros((n, s))
    lip = np.zeros((n, s))
    for i in range(n):
        xi = x[i : i + 1]
        ti = None if targets is None else targets[i : i + 1]
        e0 = explain(xi, ti) if ti is not None else explain(xi)
        for j in range(s):
            xp = (xi + pert[i, j][None]).clamp(*clamp)
            ep = explain(xp, ti) if ti is not None else explain(xp)
            d = torch.linalg.norm((ep - e0).flatten()).item()
            absd[i, j] = d
            rel[i, j] = d / torch.linalg.norm(e0.flatten()).item()
            lip[i, j] = d / torch.linalg.norm((xp - xi).flatten()).item()
    return absd, rel, lip


@pytest.mark.parametrize("use_targets", [False, True])
def test_stability_matches_naive_reference(use_targets):
    g = torch.Generator().manual_seed(11)
    explain = TinyGradExplainer()
    x = torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64)
    x[0, 0, 0] = 0.0  # some pixels on the clamp boundary
    x[1, 1, 1] = 1.0
    pert = 0.05 * torch.randn(3, 4, 2, 4, 4, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 2, 1]) if use_targets else None
    absd, rel, lip = naive_stability(explain, x, pert, targets)
    kw = dict(perturbations=pert, targets=targets, batch_size=5)
    np.testing.assert_allclose(M.max_sensitivity(explain, x, **kw).numpy(), rel.max(1), rtol=1e-10)
    np.testing.assert_allclose(M.avg_sensitivity(explain, x, **kw).numpy(), rel.mean(1), rtol=1e-10)
    np.testing.assert_allclose(
        M.max_sensitivity(explain, x, relative=False, **kw).numpy(), absd.max(1), rtol=1e-10
    )
    np.testing.assert_allclose(
        M.avg_sensitivity(explain, x, relative=False, **kw).numpy(), absd.mean(1), rtol=1e-10
    )
    np.testing.assert_allclose(M.local_lipschitz(explain, x, **kw).numpy(), lip.max(1), rtol=1e-10)
    # batched: the explainer saw chunks of ≤ batch_size rows, not one call per image
    explain.calls.clear()
    M.max_sensitivity(explain, x, **kw)
    assert explain.calls == [3, 5, 5, 2]
    # the result does not depend on the chunk size
    for bs in (1, 4, 100):
        np.testing.assert_allclose(
            M.local_lipschitz(explain, x, perturbations=pert, targets=targets, batch_size=bs).numpy(),
            lip.max(1), rtol=1e-10,
        )


def test_stability_linear_explainer_analytic():
    x = 0.25 + 0.5 * torch.rand(2, 1, 3, 3, dtype=torch.float64)  # interior: no clamping at radius 0.02
    double = lambda v: 2.0 * v  # noqa: E731
    r, d = 0.02, 9
    corner = r * torch.where(torch.rand(2, 3, 1, 3, 3) > 0.5, 1.0, -1.0).double()  # L∞-ball corners
    absolute = M.max_sensitivity(double, x, perturbations=corner, relative=False)
    torch.testing.assert_close(absolute, torch.full((2,), 2 * r * math.sqrt(d), dtype=torch.float64))
    relative = M.avg_sensitivity(double, x, perturbations=corner)
    torch.testing.assert_close(relative, r * math.sqrt(d) / x.flatten(1).norm(dim=1))
    # Lipschitz constant of e(x) = 2x is 2 for any step, clamped or not
    torch.testing.assert_close(M.local_lipschitz(double, x, std=0.5, seed=0), torch.full((2,), 2.0, dtype=torch.float64))
    zero_x = torch.zeros(2, 1, 3, 3, dtype=torch.float64)  # half of every Gaussian step is clamped away
    torch.testing.assert_close(M.local_lipschitz(double, zero_x, seed=0), torch.full((2,), 2.0, dtype=torch.float64))


def test_stability_random_perturbations_in_range_and_reproducible():
    seen = []

    def record(v):
        seen.append(v.clone())
        return v.flatten(1) * 3.0

    x = torch.full((4, 1, 5, 5), 0.5)
    M.max_sensitivity(record, x, radius=0.02, n_samples=6, seed=1, batch_size=7)
    pert = torch.cat(seen[1:]) - 0.5  # seen[0] is the clean batch
    assert pert.shape == (24, 1, 5, 5)
    assert pert.abs().max() <= 0.02 + 1e-7 and pert.abs().max() > 0.015

    g = torch.Generator().manual_seed(12)
    x = torch.rand(4, 2, 5, 5, generator=g)
    explain = lambda v: torch.sin(4 * v) * v  # noqa: E731
    for fn in (M.max_sensitivity, M.avg_sensitivity, M.local_lipschitz):
        r1 = fn(explain, x, n_samples=5, seed=3, batch_size=6)
        r2 = fn(explain, x, n_samples=5, seed=3, batch_size=6)
        r3 = fn(explain, x, n_samples=5, seed=4, batch_size=6)
        r4 = fn(explain, x, n_samples=5, generator=torch.Generator().manual_seed(3), batch_size=6)
        assert r1.shape == (4,) and torch.isfinite(r1).all() and (r1 > 0).all()
        torch.testing.assert_close(r1, r2, rtol=0, atol=0)
        torch.testing.assert_close(r1, r4, rtol=0, atol=0)
        assert not torch.equal(r1, r3)
    assert (M.max_sensitivity(explain, x, seed=0) >= M.avg_sensitivity(explain, x, seed=0)).all()


def test_stability_validation_and_zero_explanations():
    x = torch.rand(2, 1, 3, 3)
    with pytest.raises(ValueError):
        M.max_sensitivity(lambda v: v, x, perturbations=torch.zeros(2, 3, 1, 4, 4))
    with pytest.raises(ValueError):
        M.max_sensitivity(lambda v: v[:1], x)
    with pytest.raises(ValueError):
        M.local_lipschitz(lambda v: v, x, seed=0, generator=torch.Generator())
    zero = lambda v: torch.zeros_like(v)  # noqa: E731
    assert torch.isnan(M.max_sensitivity(zero, x, seed=0)).all()  # relative change of 0 is undefined
    assert (M.max_sensitivity(zero, x, seed=0, relative=False) == 0).all()
    assert (M.local_lipschitz(zero, x, seed=0) == 0).all()


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def map_pairs(draw):
    n = draw(st.integers(1, 3))
    h = draw(st.integers(1, 6))
    w = draw(st.integers(1, 6))
    # a small value set: ties, exact zeros, constant maps are all likely
    values = st.one_of(st.sampled_from([0.0, 0.0, 0.25, 1.0, 3.0]), st.floats(0, 10, allow_nan=False))
    kind = draw(st.sampled_from(["mixed", "constant", "zeros"]))

    def one():
        if kind == "constant":
            return [[[draw(values)] * w] * h for _ in range(n)]
        if kind == "zeros":
            return [[[0.0] * w] * h for _ in range(n)]
        return [[[draw(values) for _ in range(w)] for _ in range(h)] for _ in range(n)]

    return torch.tensor(one()), torch.tensor([[[draw(values) for _ in range(w)] for _ in range(h)] for _ in range(n)])


@FAST
@given(map_pairs(), st.data())
def test_property_comparisons(pair, data):
    a, b = pair
    n, h, w = a.shape
    const = lambda m: (m.flatten(1) == m.flatten(1)[:, :1]).all(1)  # noqa: E731
    undefined = const(a) | const(b)
    for fn in (M.kendall_tau, M.spearman_rho, M.pearson):
        r = fn(a, b)
        assert r.shape == (n,)
        assert torch.equal(torch.isnan(r), undefined), fn.__name__  # NaN exactly where undefined
        assert (r[~undefined].abs() <= 1).all()
    assert_matches(M.kendall_tau(a, b), kendall_ref(a, b))
    assert_matches(M.spearman_rho(a, b), spearman_ref(a, b))
    k = data.draw(st.integers(1, h * w))
    inter = M.topk_intersection(a, b, k)
    assert ((inter >= 0) & (inter <= 1)).all()
    assert (M.topk_intersection(a, a, k) == 1).all()
    zero = lambda m: (m.flatten(1) == 0).all(1)  # noqa: E731
    cos = M.cosine_similarity(a, b)
    assert torch.equal(torch.isnan(cos), zero(a) | zero(b))
    assert (cos[~torch.isnan(cos)].abs() <= 1).all()
    s = M.ssim(a, b)
    assert torch.isfinite(s).all() and (s.abs() <= 1 + 1e-5).all()
    assert torch.allclose(M.ssim(b, b), torch.ones(n))
    shift = M.center_of_mass_shift(a, b)
    assert torch.equal(torch.isnan(shift), zero(a) | zero(b))
    assert (shift[~torch.isnan(shift)] <= math.hypot(h - 1, w - 1) + 1e-5).all()
    assert (M.mse(a, b) >= 0).all()


@FAST
@given(map_pairs())
def test_property_maps_and_loss(pair):
    a, b = pair
    attr = torch.stack([a, -b], dim=1)  # (N, 2, H, W), signed
    m = M.attribution_to_map(attr)
    assert not torch.isnan(m).any() and (m >= 0).all()
    sums = m.sum(dim=(1, 2))
    nonzero = (attr != 0).flatten(1).any(1)
    torch.testing.assert_close(sums[nonzero], torch.ones(int(nonzero.sum())))
    assert (sums[~nonzero] == 0).all()
    loss = M.explanation_loss(m, M.attribution_to_map(a[:, None]))
    assert torch.isfinite(loss).all() and (loss >= 0).all() and (loss <= 1).all()


def test_integer_maps():
    a = torch.tensor([[0, 3, 1, 2, 2]], dtype=torch.uint8)
    b = torch.tensor([[4, 0, 1, 1, 3]], dtype=torch.uint8)
    assert_matches(M.kendall_tau(a, b), kendall_ref(a, b))
    assert_matches(M.spearman_rho(a, b), spearman_ref(a, b))


# --------------------------------------------------------------------------------------------
# Kendall: the O(P log P) pieces
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2, 3, 7, 8, 9, 64, 100, 257])
def test_strict_inversion_count_both_backends_vs_brute_force(p):
    g = torch.Generator().manual_seed(p)
    bits = max(1, (p - 1).bit_length())
    rows = torch.stack([
        torch.randint(0, p, (p,), generator=g),  # many repeats
        torch.randperm(p, generator=g),  # a permutation
        torch.arange(p).flip(0),  # reversed: every pair inverted
        torch.zeros(p, dtype=torch.int64),  # all tied: none
    ])
    brute = torch.tensor([int((r[:, None] > r[None, :]).triu(1).sum()) for r in rows])
    assert torch.equal(M._strict_inversions_numpy(rows, bits), brute)
    assert torch.equal(M._strict_inversions_torch(rows, bits), brute)


def test_kendall_224x224_batch_matches_scipy():
    g = torch.Generator().manual_seed(7)
    a = mnist_like(g, 3, side=224)
    b = a + 0.2 * torch.rand(3, 224, 224, generator=g)
    b[1] = (torch.rand(224, 224, generator=g) * 6).floor()  # heavy ties, independent
    b[2, :100] = 0.0  # a large tied block
    assert_matches(M.kendall_tau(a, b), kendall_ref(a, b))


def test_kendall_signed_zero_and_float16_ties():
    # −0.0 == +0.0: one tie, whatever the bit pattern; float16 values go through the packed keys
    a = torch.tensor([[0.0, -0.0, 1.0, 2.0, -1.0]])
    b = torch.tensor([[1.0, 2.0, 2.0, 0.0, 3.0]])
    assert_matches(M.kendall_tau(a, b), kendall_ref(a, b))
    h = (torch.rand(4, 50, generator=torch.Generator().manual_seed(0)) * 8).floor().half()
    tau_half = M.kendall_tau(h, h.flip(0))
    assert tau_half.dtype == torch.float16  # the result comes back in the maps' dtype: half precision
    assert_matches(tau_half, kendall_ref(h.float(), h.flip(0).float()), atol=1e-3)
    assert_matches(M.kendall_tau(a.double(), b.double()), kendall_ref(a, b), atol=1e-12)


def test_kendall_nan_in_a_map_gives_nan_for_that_image_only():
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(3, 30, generator=g), torch.rand(3, 30, generator=g)
    a[1, 5] = float("nan")
    tau = M.kendall_tau(a, b)
    assert torch.isnan(tau[1]) and torch.isfinite(tau[[0, 2]]).all()
    assert_matches(tau[[0, 2]], kendall_ref(a[[0, 2]], b[[0, 2]]))


def test_topk_mask_equals_the_stable_sort_selection():
    g = torch.Generator().manual_seed(5)
    v = (torch.rand(6, 200, generator=g) * 5).floor()  # heavy ties at every k-th value
    v[0] = 0.0
    for k in (1, 3, 40, 199, 200):
        ref = torch.zeros_like(v, dtype=torch.bool)
        ref.scatter_(1, torch.sort(v, dim=1, descending=True, stable=True).indices[:, :k], True)
        assert torch.equal(M.topk_mask(v, k), ref), k
    flags = v[:2] > 2  # bool maps: no topk kernel, converted
    assert torch.equal(M.topk_mask(flags, 30), M.topk_mask(flags.to(torch.uint8), 30))
    assert M.topk_intersection(flags, flags, 30).eq(1).all()


def test_every_comparison_metric_has_a_label_and_exactly_one_direction():
    """Labels and directions live in the registry entry only (IFIA's objective, the Attack lab and the study read
    them from there)."""
    from explrobust_core.metrics import COMPARISONS, MetricInfo, higher_is_robust, metric_label

    for entry in COMPARISONS:
        assert isinstance(entry.meta, MetricInfo) and metric_label(entry.name) == entry.meta.label
        assert higher_is_robust(entry.name) == ("similarity" in entry.tags) != ("distance" in entry.tags)
    assert higher_is_robust("kendall_tau") and not higher_is_robust("center_of_mass_shift")


@pytest.mark.parametrize("name", ["kendall_tau", "topk_intersection", "spearman_rho"])
def test_comparison_against_a_fixed_reference_equals_the_comparison(name):
    # an attack scores every step's maps against the original through comparison_against: Kendall's prepared
    # ranks (a few rows per chunk here) must give exactly the comparison's values, ties and NaN rows included
    g = torch.Generator().manual_seed(5)
    ref = mnist_like(g, 7, side=12)
    ref[1] = 0.5  # constant: NaN
    options = {"k": 10} if name == "topk_intersection" else {"max_elements": 300} if name == "kendall_tau" else {}
    against = M.comparison_against(name, ref, **options)
    fn = M.COMPARISONS.get(name).obj
    for _ in range(3):
        other = (torch.rand(7, 12, 12, generator=g) * 5).floor()
        torch.testing.assert_close(against(other), fn(ref, other, **options), rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="differ in shape"):
        against(torch.rand(7, 144))
