import copy

import numpy as np
import pytest
import torch
from scipy.stats import f

from explrobust_core.way_stability import WayStabilityConfig, draw_pairs, variance_ratio, way_stability


def _blobs(n: int = 200, k: int = 5, seed: int = 0):
    """Well separated clusters: Way3's prototypes are the images nearest each centroid."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, 8, generator=g) * 10
    labels = torch.arange(n) % k
    return centres[labels] + torch.randn(n, 8, generator=g), labels


def test_each_seed_redraws_the_pool_so_way3_victims_change():
    features, labels = _blobs()
    cfg = dict(ways=[3], seeds=[0, 1, 2, 3], n_pairs=10, k=5, reference_pairs=0)
    sub = draw_pairs(WayStabilityConfig(**cfg, pool="subsample"), labels, features)
    fixed = draw_pairs(WayStabilityConfig(**cfg, pool="fixed"), labels, features)

    def victims(draws, seed):
        return {v for v, _ in draws[(3, seed)]}

    # a fixed pool: k-means on the same features picks (nearly) the same prototypes whatever the seed
    fixed_overlap = np.mean([len(victims(fixed, 0) & victims(fixed, s)) / 10 for s in (1, 2, 3)])
    sub_overlap = np.mean([len(victims(sub, 0) & victims(sub, s)) / 10 for s in (1, 2, 3)])
    assert fixed_overlap >= 0.8
    assert sub_overlap <= 0.5
    # each seed's pairs stay inside its own pool, and the pools differ between seeds
    pools = [np.sort(np.random.default_rng([s, 7]).choice(200, size=100, replace=False)) for s in (0, 1)]
    for seed, pool in zip((0, 1), pools):
        assert {i for p in sub[(3, seed)] for i in p} <= set(pool.tolist())
    assert not np.array_equal(pools[0], pools[1])


def test_variance_ratio_interval_is_the_f_interval():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 2, 20), rng.normal(0, 1, 12)
    got = variance_ratio(a, b, 0.9)
    ratio = a.var(ddof=1) / b.var(ddof=1)
    assert got["ratio"] == pytest.approx(ratio, rel=1e-12)
    assert got["ci_low"] == pytest.approx(ratio / f.ppf(0.95, 19, 11), rel=1e-12)
    assert got["ci_high"] == pytest.approx(ratio / f.ppf(0.05, 19, 11), rel=1e-12)
    assert got["ci_low"] < ratio < got["ci_high"]


def test_refused_configs_name_the_field():
    with pytest.raises(ValueError, match="seeds"):
        WayStabilityConfig(seeds=[0])  # one seed has no spread
    with pytest.raises(ValueError, match="pool_fraction"):
        WayStabilityConfig(pool_fraction=0.0)


def test_two_models_share_pairs_and_report_bias_and_ranking(mnist_convnet, mnist_test, monkeypatch):
    other = copy.deepcopy(mnist_convnet)
    with torch.no_grad():  # a second, different model: the same net with its logits' scale halved
        last = [m for m in other.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(0.5)
        last.bias.mul_(0.5)
    cfg = WayStabilityConfig(ways=[1, 3], seeds=[0, 1, 2], n_pairs=4, n_candidates=80, k=3, reference_pairs=6)
    from explrobust_core import way_stability as ws

    attacked, real = [], ws.run_explanation_attack

    def counting(model, images, *args, **kwargs):
        attacked.append(images.shape[0])
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(ws, "run_explanation_attack", counting)
    r = way_stability({"a": mnist_convnet, "b": other}, mnist_test, cfg, attack={"steps": 2})
    for name in ("a", "b"):
        s = r.summary[name]
        runs = [row for row in r.extra["runs"] if row["model"] == name and row["way"] == 1]
        assert len(runs) == 3
        seed_means = np.array([row["mean_le_end_paper"] for row in runs])
        assert s["way1"]["mean"] == pytest.approx(seed_means.mean(), rel=1e-9)
        assert s["way1"]["std"] == pytest.approx(seed_means.std(ddof=1), rel=1e-9)
        assert s["way1"]["bias"] == pytest.approx(s["way1"]["mean"] - s["reference"]["mean"], rel=1e-9, abs=1e-12)
        assert "variance_ratio_way1_way3" in s
    assert set(r.summary["ranking"]) == {"way1", "way3"}
    assert 0 <= r.summary["ranking"]["way1"]["same_ranking_share"] <= 1
    # every unique pair is attacked once per model, however many draws share it
    assert sum(attacked) == 2 * r.config["n_unique_pairs"]
