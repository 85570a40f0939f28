"""Which way of picking victim–target pairs gives the steadier estimate of a model's mean L_e end?

The SEP paper picks its pairs by clustering (our Way3) and says this is steadier than random pairs (Way1) or
random pairs of different classes (Way2). To test that like for like:

* every seed **redraws the candidate pool** (a random subsample of the correctly classified candidates, the
  same pool for every Way), so Way3's victims — the images nearest the k-means centroids — change with the
  seed just as Way1/Way2's random victims do (with a fixed pool Way3 picks nearly the same images every time,
  and its "stability" would only say that it is deterministic);
* each Way's seed means are compared with a **large Way1 reference** (many random pairs over the whole pool),
  so a Way that is steady but off — biased toward easy or hard pairs — shows its bias;
* the **variance ratio** Way1/Way3 (and Way2/Way3) comes with an F-distribution confidence interval: with few
  seeds a ratio of 3 is not evidence (5 seeds: the 95 % interval of a ratio of 3.4 covers 1);
* with several models, the **ranking of the models** by mean L_e end is compared across seeds: a steadier
  Way ranks the zoo the same way more often.

Every unique pair is attacked once per model, whichever Ways and seeds drew it (the targeted attack treats
every image of a batch independently), so twenty seeds cost far less than twenty evaluations.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Callable, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from .attacks.explanation import TargetedConfig, run_explanation_attack
from .data import ImageDataset, spread_indices
from .models import device_of
from .registry import Config
from .results import Result

REFERENCE_SEED = 1_000_003  # the reference draw never coincides with a seed of the study


class WayStabilityConfig(Config):
    """Options of :func:`way_stability` (the ``compare-ways`` command), capped: every unique pair is attacked."""

    ways: list[Literal[1, 2, 3]] = Field([1, 2, 3], min_length=1, max_length=3, description="pair selections to compare")
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        list(range(20)), min_length=2, max_length=64, description="seeds: each redraws the pool and the pairs")
    n_pairs: int = Field(30, ge=2, le=1000, description="pairs per (way, seed)")
    n_candidates: int = Field(1000, ge=4, le=100_000, description="candidates, spread over the split "
                                                                   "(those every model classifies correctly are kept)")
    pool: Literal["subsample", "fixed"] = Field(
        "subsample", description="subsample: each seed draws its own pool of candidates (like for like); "
                                 "fixed: every seed uses all candidates (Way3 then barely changes)")
    pool_fraction: float = Field(0.5, gt=0.05, le=1.0, description="share of the candidates in each seed's pool")
    k: int = Field(10, ge=2, le=1000, description="Way3 clusters")
    reference_pairs: int = Field(300, ge=0, le=5000, description="random Way1 pairs over all candidates: the "
                                                                 "reference each Way's bias is measured against")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="confidence of the intervals")

    @field_validator("ways", "seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("give each value once")
        return v


def _correct_for_all(models: dict[str, nn.Module], dataset: ImageDataset, candidates: list[int]):
    from .evaluate import predictions

    keep = None
    for model in models.values():
        pred, labels = predictions(model, dataset, candidates, 256)
        ok = pred == labels
        keep = ok if keep is None else keep & ok
    return [candidates[i] for i in keep.nonzero().squeeze(1).tolist()]


def draw_pairs(cfg: WayStabilityConfig, labels: torch.Tensor, features: torch.Tensor | None,
               ) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """``{(way, seed): [(victim, target), …]}`` as indices into the kept candidates; each seed draws its pool
    first (``cfg.pool``), and Way3 clusters only that pool's features."""
    from .sampling import way1_pairs, way2_pairs, way3_pairs

    n = int(labels.numel())
    size = n if cfg.pool == "fixed" else max(cfg.k, min(n, round(cfg.pool_fraction * n)))
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for seed in cfg.seeds:
        pool = np.arange(n) if cfg.pool == "fixed" else np.sort(
            np.random.default_rng([seed, 7]).choice(n, size=size, replace=False))
        for way in cfg.ways:
            if way == 1:
                local = way1_pairs(len(pool), cfg.n_pairs, seed)
            elif way == 2:
                local = way2_pairs(labels[torch.as_tensor(pool)], cfg.n_pairs, seed)
            else:
                if features is None:
                    raise ValueError("Way3 needs the reference model's features")
                local = way3_pairs(features[torch.as_tensor(pool)], n_prototypes=cfg.n_pairs, k=cfg.k, seed=seed).pairs
            out[(way, seed)] = [(int(pool[v]), int(pool[t])) for v, t in local]
    return out


def _attack_pairs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pairs: list[tuple[int, int]],
                  attack: TargetedConfig, batch_size: int, device, tick: Callable[[], None]) -> dict[tuple[int, int], float]:
    """L_e end (×10⁻⁷) of every pair whose prediction the attack kept; others are left out."""
    out: dict[tuple[int, int], float] = {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        v = torch.tensor([p[0] for p in chunk])
        t = torch.tensor([p[1] for p in chunk])
        r = run_explanation_attack(model, x[v].to(device), "targeted", config=attack, labels=y[v].to(device),
                                   target_images=x[t].to(device))
        values = torch.as_tensor(r.per_image["explanation_loss_end_paper"], dtype=torch.float64).cpu()
        attacked = torch.as_tensor(r.per_image["attacked"], dtype=torch.bool).cpu()
        for pair, value, ok in zip(chunk, values.tolist(), attacked.tolist()):
            if ok:
                out[pair] = value
        tick()
    return out


def variance_ratio(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> dict[str, float | None]:
    """var(a)/var(b) with the F-distribution interval (normal seed means, independent draws)."""
    from scipy.stats import f

    va, vb = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    if vb == 0:
        return {"ratio": None, "ci_low": None, "ci_high": None}
    ratio, d1, d2, tail = va / vb, a.size - 1, b.size - 1, (1 - confidence) / 2
    return {"ratio": ratio, "ci_low": ratio / float(f.ppf(1 - tail, d1, d2)),
            "ci_high": ratio / float(f.ppf(tail, d1, d2))}


def _ranking_agreement(seed_means: dict[str, np.ndarray], reference: dict[str, float]) -> dict[str, Any]:
    """How often a seed ranks the models as the reference does, and the mean Kendall τ to that ranking."""
    from scipy.stats import kendalltau

    names = sorted(seed_means)
    ref = np.array([reference[n] for n in names])
    per_seed = np.stack([seed_means[n] for n in names], axis=1)  # (seeds, models)
    same = [bool((np.argsort(row) == np.argsort(ref)).all()) for row in per_seed]
    taus = [float(kendalltau(row, ref).statistic) for row in per_seed]
    return {"models": names, "same_ranking_share": float(np.mean(same)), "mean_kendall_tau": float(np.mean(taus))}


def way_stability(models: dict[str, nn.Module] | nn.Module, dataset: ImageDataset,
                  config: WayStabilityConfig | dict | None = None, *, attack: TargetedConfig | dict | None = None,
                  reference: nn.Module | None = None, batch_size: int = 64,
                  progress: Callable[[str, float], None] | None = None) -> Result:
    """Spread, bias and model ranking of the mean L_e end (×10⁻⁷) per Way over seeds (see the module docstring).

    Args:
        models: one model or ``{name: model}``; all are attacked on the same pairs.
        dataset: the split the candidates come from.
        config: a :class:`WayStabilityConfig` (or its values).
        attack: the targeted attack's config (:class:`~explrobust_core.attacks.explanation.TargetedConfig`).
        reference: the model whose penultimate features Way3 clusters (default: the first model).
    Returns:
        a ``way_stability`` :class:`~explrobust_core.results.Result`: ``summary[model][f"way{w}"]`` holds the
        mean, std and range of the seed means, their bias against the Way1 reference and the variance ratios;
        ``summary["ranking"]`` the agreement of the models' ranking across seeds; ``extra["runs"]`` every
        (model, way, seed) mean.
    """
    from .sampling import reference_features, way1_pairs

    started = time.perf_counter()
    cfg = config if isinstance(config, WayStabilityConfig) else WayStabilityConfig(**(config or {}))
    atk = attack if isinstance(attack, TargetedConfig) else TargetedConfig(**(attack or {}))
    models = models if isinstance(models, dict) else {"model": models}
    first = next(iter(models.values()))
    device = device_of(first)
    kept = _correct_for_all(models, dataset, spread_indices(len(dataset), cfg.n_candidates))
    if len(kept) < max(2 * cfg.k, 4):
        raise ValueError(f"only {len(kept)} candidates are classified correctly by every model; give more candidates")
    x, y = dataset.batch(kept)
    features = reference_features(reference or first, x) if 3 in cfg.ways else None
    draws = draw_pairs(cfg, y, features)
    ref_pairs = way1_pairs(len(kept), cfg.reference_pairs, REFERENCE_SEED) if cfg.reference_pairs else []
    unique = sorted({p for pairs in draws.values() for p in pairs} | set(ref_pairs))
    batches = -(-len(unique) // batch_size) * len(models)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress("way stability: attacking every unique pair", done[0] / batches)

    runs, summary = [], {}
    seed_means_by_way: dict[int, dict[str, np.ndarray]] = {w: {} for w in cfg.ways}
    reference_means: dict[str, float] = {}
    for name, model in models.items():
        le_end = _attack_pairs(model, x, y, unique, atk, batch_size, device, tick)
        ref_values = np.array([le_end[p] for p in ref_pairs if p in le_end])
        ref_mean = float(ref_values.mean()) if ref_values.size else None
        reference_means[name] = ref_mean if ref_mean is not None else float("nan")
        per_way: dict[str, Any] = {"reference": None if ref_mean is None else {
            "mean": ref_mean, "n_pairs": int(ref_values.size),
            "sem": float(ref_values.std(ddof=1) / np.sqrt(ref_values.size)) if ref_values.size > 1 else None}}
        means: dict[int, np.ndarray] = {}
        for way in cfg.ways:
            values = []
            for seed in cfg.seeds:
                got = [le_end[p] for p in draws[(way, seed)] if p in le_end]
                mean = float(np.mean(got)) if got else float("nan")
                values.append(mean)
                runs.append({"model": name, "way": way, "seed": seed, "mean_le_end_paper": mean, "n_pairs": len(got)})
            v = np.array(values)
            v = v[np.isfinite(v)]
            means[way] = v
            seed_means_by_way[way][name] = np.array(values)
            per_way[f"way{way}"] = {
                "mean": float(v.mean()), "std": float(v.std(ddof=1)), "range": float(v.max() - v.min()),
                "cv": float(v.std(ddof=1) / v.mean()) if v.mean() else None, "n_seeds": int(v.size),
                "bias": None if ref_mean is None else float(v.mean() - ref_mean),
                "relative_bias": None if not ref_mean else float((v.mean() - ref_mean) / ref_mean)}
        if 3 in means:
            for way in (1, 2):
                if way in means:
                    per_way[f"variance_ratio_way{way}_way3"] = variance_ratio(means[way], means[3], cfg.confidence)
        summary[name] = per_way
    if len(models) >= 2 and all(np.isfinite(list(reference_means.values()))):
        summary["ranking"] = {f"way{w}": _ranking_agreement(seed_means_by_way[w], reference_means) for w in cfg.ways}
    config_out = {**cfg.model_dump(mode="json"), "attack": atk.model_dump(mode="json"), "models": list(models),
                  "n_kept_candidates": len(kept), "n_unique_pairs": len(unique), "dataset": dataset.info.name}
    return Result(kind="way_stability", config=config_out, summary=summary, extra={"runs": runs},
                  seconds=time.perf_counter() - started)
