"""Dataset-level reports: clean accuracy, PGD accuracy over ε, explanation robustness.

The work runs in memory-bounded chunks of images; explanation attacks run on correctly
classified images only (as RAR does), and the misclassified ones are counted, not hidden.
Presets reproduce the RAR protocol per dataset (research/rar_art.md §1.4, §3.1) and ART's
CIFAR evaluation (§3.2, §4.5).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Callable, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from .attacks.classification import PGDConfig, run_classification_attack
from .attacks.explanation import IFIAConfig, TargetedConfig, attack_summary, run_explanation_attack
from .data import ImageDataset, spread_indices
from .models import eval_mode
from .registry import Config, ConfigError, format_validation_error
from .results import Result, concat_per_image
from .sampling import way2_pairs


class EvaluationConfig(Config):
    split: Literal["train", "test"] = Field("test", description="which split to evaluate on")
    n_images: int = Field(500, ge=1, le=100_000, description="images of the split to measure")
    subset: Literal["spread", "first"] = Field(
        "spread", description="which n images: spread evenly over the split (every class alike: the embedded "
                              "splits are sorted by class) or the first n (what results before this option used)")
    batch_size: int = Field(128, ge=1, le=4096, description="images per forward/attack batch (memory bound)")
    eps_list: list[float] = Field([0.1, 0.2, 0.3], min_length=0, max_length=64,
                                  description="PGD accuracy at each ε (pixel units)")
    pgd: PGDConfig = Field(default_factory=lambda: PGDConfig(eps=0.3, steps=40, step_size=0.01),
                           description="PGD settings; its ε is replaced by each value of eps_list")
    explanation_attack: Literal["ifia", "targeted", "none"] = Field("ifia", description="explanation attack to run")
    n_explanation_images: int = Field(100, ge=1, le=100_000,
                                      description="correctly classified images (or pairs) to attack")
    attack_batch_size: int = Field(64, ge=1, le=4096, description="images per explanation-attack batch")
    ifia: IFIAConfig = Field(default_factory=IFIAConfig, description="untargeted explanation attack settings")
    targeted: TargetedConfig = Field(default_factory=TargetedConfig, description="targeted attack settings")
    pairs_file: str | None = Field(None, description="stored victim/target pairs (Way1/2/3 JSON); default: "
                                                     "fresh Way2 pairs among correctly classified images")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed for pairs and bootstrap")


_IG100 = {"explainer": "integrated_gradients", "explainer_options": {"n_steps": 100, "rule": "riemann_right"}}

PRESETS: dict[str, dict[str, Any]] = {
    "rar_mnist": {"eps_list": [0.3], "pgd": {"eps": 0.3, "steps": 40, "step_size": 0.01},
                  "ifia": {**_IG100, "eps": 0.3, "steps": 100, "step_size": 0.01, "k": 200, "eval_k": 100,
                           "measure": "kendall_tau"}},
    "rar_fmnist": {"eps_list": [0.1], "pgd": {"eps": 0.1, "steps": 20, "step_size": 0.01},
                   "ifia": {**_IG100, "eps": 0.1, "steps": 100, "step_size": 0.01, "k": 100, "eval_k": 100,
                            "measure": "kendall_tau"}},
    "rar_gtsrb": {"eps_list": [8 / 255], "pgd": {"eps": 8 / 255, "steps": 7, "step_size": 2 / 255},
                  "ifia": {**_IG100, "eps": 8 / 255, "steps": 50, "step_size": 1 / 255, "k": 100, "eval_k": 100,
                           "measure": "kendall_tau"}},
    "rar_flower": {"eps_list": [8 / 255], "pgd": {"eps": 8 / 255, "steps": 7, "step_size": 2 / 255},
                   "ifia": {**_IG100, "eps": 8 / 255, "steps": 100, "step_size": 1 / 255, "k": 1000,
                            "eval_k": 1000, "measure": "kendall_tau"}},
    "art_cifar": {"eps_list": [8 / 255], "pgd": {"eps": 8 / 255, "steps": 40, "step_size": 2 / 255},
                  "ifia": {**_IG100, "eps": 8 / 255, "steps": 50, "step_size": 1 / 255, "k": 100, "eval_k": 100,
                           "measure": "kendall_tau", "random_start": True}},
}


# The SEP paper's MNIST protocol as the shipped zoo measures it: PGD-20 accuracy over ε, and Dombrowski's
# targeted attack on gradient×input maps in the model's input space (the reference code's form) for 200
# steps on the stored victim–target pairs (give them with pairs_file).
PRESETS["sep_mnist"] = {
    "n_images": 1000, "eps_list": [0.1, 0.2, 0.3], "pgd": {"eps": 0.3, "steps": 20, "step_size": 0.025},
    "explanation_attack": "targeted", "n_explanation_images": 150, "attack_batch_size": 75,
    "targeted": {"explainer": "gradient_x_input", "explainer_options": {"space": "model"}, "steps": 200,
                 "record_every": 50},
}


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_evaluation_config(preset: str | None = None, **overrides) -> EvaluationConfig:
    """A validated config: defaults, then the preset, then the overrides (nested dicts merge)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        values = PRESETS[preset]
    values = deep_merge(values, overrides)
    try:
        return EvaluationConfig(**values)
    except Exception as err:  # pydantic ValidationError → one readable line
        from pydantic import ValidationError

        if isinstance(err, ValidationError):
            raise ConfigError(format_validation_error(err, "evaluation config")) from None
        raise


# where each stage of evaluate_model's progress lies on one 0→1 bar: (start, span)
STAGES = {"clean accuracy": (0.0, 0.05), "PGD accuracy": (0.05, 0.4), "explanation attack": (0.45, 0.55)}


def overall_fraction(stage: str, fraction: float) -> float:
    """evaluate_model reports each stage from 0 to 1; this is the whole run's fraction."""
    start, span = STAGES.get(stage, (0.0, 1.0))
    return min(1.0, start + span * fraction)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def predictions(model: nn.Module, dataset: ImageDataset, indices: list[int], batch_size: int,
                device) -> tuple[torch.Tensor, torch.Tensor]:
    preds, labels = [], []
    with eval_mode(model), torch.no_grad():
        for rows in _chunks(len(indices), batch_size):
            x, y = dataset.batch([indices[r] for r in rows])
            preds.append(model(x.to(device)).argmax(1).cpu())
            labels.append(y)
    return torch.cat(preds), torch.cat(labels)


def _stored_pairs(model, dataset, cfg: EvaluationConfig, device, summary: dict[str, Any]):
    """The stored pairs whose victim the model classifies correctly (the others are counted)."""
    from .sampling import load_pairs

    stored = load_pairs(cfg.pairs_file, len(dataset))
    if stored.dataset != dataset.info.name or stored.split != cfg.split:
        raise ValueError(f"pair file {cfg.pairs_file} is for {stored.dataset}/{stored.split}, "
                         f"not {dataset.info.name}/{cfg.split}")
    victims = stored.victims[: cfg.n_explanation_images]
    pred, labels = [], []
    with eval_mode(model), torch.no_grad():
        for idx in _chunks(len(victims), cfg.batch_size):
            x, y = dataset.batch([victims[i] for i in idx])
            pred.append(model(x.to(device)).argmax(1).cpu())
            labels.append(y)
    ok = (torch.cat(pred) == torch.cat(labels)).tolist()
    summary["explanation_skipped_misclassified"] = ok.count(False)
    summary["pairs"] = {"file": cfg.pairs_file, "way": stored.way, "seed": stored.seed, "reference": stored.reference}
    kept = [p for p, good in zip(stored.pairs[: cfg.n_explanation_images], ok) if good]
    pairs = None if cfg.explanation_attack == "ifia" else kept
    return [v for v, _ in kept], pairs


def evaluate_model(model: nn.Module, dataset: ImageDataset, config: EvaluationConfig | dict | None = None,
                   progress: Callable[[str, float], None] | None = None) -> Result:
    """Clean accuracy, PGD accuracy for each ε, and explanation robustness of ``model`` on ``dataset``.

    Args:
        model: pixels in ``[0, 1]`` → logits; dataset: from :func:`load_dataset`.
        config: an :class:`EvaluationConfig` or its fields (``n_images``, ``eps_list``, ``pgd``, …).
        progress: ``progress(stage, fraction)`` while it runs.

    Returns:
        A :class:`~explrobust_core.results.Result` whose ``summary`` holds ``clean_accuracy``,
        ``pgd_accuracy`` (``[{"eps", "accuracy"}]``) and the explanation-attack numbers.

    Example:
        >>> config = {"n_images": 100, "eps_list": [0.1], "pgd": {"steps": 10}, "explanation_attack": "none"}
        >>> report = evaluate_model(model, load_dataset("mnist5k", "test"), config)
        >>> [row["eps"] for row in report.summary["pgd_accuracy"]]
        [0.1]
    """
    cfg = config if isinstance(config, EvaluationConfig) else make_evaluation_config(**(config or {}))
    started = time.perf_counter()
    device = next(model.parameters()).device
    report = progress or (lambda stage, fraction: None)
    n = min(cfg.n_images, len(dataset))
    indices = spread_indices(len(dataset), n) if cfg.subset == "spread" else list(range(n))
    pred, labels = predictions(model, dataset, indices, cfg.batch_size, device)
    correct = pred == labels
    summary: dict[str, Any] = {"n_images": n, "clean_accuracy": float(correct.float().mean())}
    report("clean accuracy", 1.0)

    curve = []
    for i, eps in enumerate(cfg.eps_list):
        still_correct = 0
        for rows in _chunks(n, cfg.batch_size):
            x, y = dataset.batch([indices[r] for r in rows])
            r = run_classification_attack(model, x.to(device), y.to(device), "pgd", cfg.pgd, eps=eps)
            still_correct += int((r.per_image["adv_pred"] == r.per_image["label"]).sum())
        curve.append({"eps": eps, "accuracy": still_correct / n})
        report("PGD accuracy", (i + 1) / len(cfg.eps_list))
    summary["pgd_accuracy"] = curve

    per_image: dict[str, Any] = {}
    if cfg.explanation_attack != "none":
        if cfg.pairs_file:
            victims, pairs = _stored_pairs(model, dataset, cfg, device, summary)
        else:
            chosen = torch.tensor(indices)[correct]  # dataset indices of the correctly classified images
            summary["explanation_skipped_misclassified"] = int((~correct).sum())
            if cfg.explanation_attack == "ifia":
                take = (spread_indices(len(chosen), cfg.n_explanation_images) if cfg.subset == "spread"
                        else list(range(min(len(chosen), cfg.n_explanation_images))))
                victims, pairs = chosen[take].tolist(), None
            elif labels[correct].unique().numel() < 2:  # a collapsed model: no pair of two classes to attack
                victims, pairs = [], []
                summary["explanation_note"] = (f"no explanation attack: the correctly classified images "
                                               f"({len(chosen)}) do not cover two classes")
            else:
                local = way2_pairs(labels[correct], cfg.n_explanation_images, seed=cfg.seed)
                pairs = [(int(chosen[v]), int(chosen[t])) for v, t in local]
                victims = [v for v, _ in pairs]
        parts = []
        for j, rows in enumerate(_chunks(len(victims), cfg.attack_batch_size)):
            x, y = dataset.batch([victims[r] for r in rows])
            targets = None if pairs is None else dataset.batch([pairs[r][1] for r in rows])[0].to(device)
            attack_cfg = cfg.ifia if cfg.explanation_attack == "ifia" else cfg.targeted
            parts.append(run_explanation_attack(model, x.to(device), cfg.explanation_attack, config=attack_cfg,
                                                labels=y.to(device), target_images=targets))
            report("explanation attack", min(1.0, (j + 1) * cfg.attack_batch_size / max(len(victims), 1)))
        per_image = {"index": torch.tensor(victims, dtype=torch.long), **concat_per_image(parts)}
        if pairs is not None:
            per_image["target_index"] = torch.tensor([t for _, t in pairs], dtype=torch.long)
        summary["explanation"] = attack_summary(cfg.explanation_attack, per_image, cfg.seed) if victims else {}
        summary["explanation_attack_model"] = parts[0].config["attack_model"] if parts else None
    return Result(kind="evaluation", config=cfg.model_dump(mode="json"), per_image=per_image, summary=summary,
                  seconds=time.perf_counter() - started)


class WayStabilityConfig(Config):
    """Options of :func:`way_stability` (the ``compare-ways`` command), capped: each (way, seed) runs an attack."""

    ways: list[Literal[1, 2, 3]] = Field([1, 2, 3], min_length=1, max_length=3, description="pair selections to compare")
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field([0, 1, 2], min_length=1, max_length=32,
                                                                  description="seeds the pairs are drawn with")
    n_pairs: int = Field(30, ge=1, le=1000, description="pairs per (way, seed)")
    n_candidates: int = Field(1000, ge=2, le=100_000, description="pairs index the first n correctly classified images")
    k: int = Field(10, ge=2, le=1000, description="Way3 clusters")

    @field_validator("ways", "seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("give each value once")
        return v


def way_stability(model: nn.Module, dataset: ImageDataset, *, ways: tuple[int, ...] = (1, 2, 3), seeds: tuple[int, ...] = (0, 1, 2),
                  n_pairs: int = 30, n_candidates: int = 1000, reference: nn.Module | None = None,
                  attack: TargetedConfig | dict | None = None, k: int = 10,
                  progress: Callable[[str, float], None] | None = None) -> Result:
    """How much does the mean L_e end move when the pairs are drawn again? Per Way, over seeds.

    The SEP paper claims Way3 gives a more stable estimate; this measures it: each (way, seed)
    samples pairs among the first ``n_candidates`` correctly classified images, runs the targeted
    attack, and records the mean L_e end; the spread per Way is the std and range over seeds.
    """
    from .sampling import sample_pairs

    started = time.perf_counter()
    cfg = attack if isinstance(attack, TargetedConfig) else TargetedConfig(**(attack or {}))
    device = next(model.parameters()).device
    candidates = spread_indices(len(dataset), n_candidates)  # every class alike (the splits are sorted)
    pred, labels = predictions(model, dataset, candidates, 256, device)
    keep = (pred == labels).nonzero().squeeze(1)
    x_all, y_all = dataset.batch([candidates[k] for k in keep.tolist()])
    rows, spread = [], {}
    total = len(ways) * len(seeds)
    for i, (way, seed) in enumerate((w, s) for w in ways for s in seeds):
        pairs = sample_pairs(way, dataset=dataset.info.name, labels=y_all, n_pairs=n_pairs, seed=seed,
                             model=reference or model, images=x_all, k=k)
        v, t = pairs.victims, pairs.targets
        r = run_explanation_attack(model, x_all[v].to(device), "targeted", config=cfg, labels=y_all[v].to(device),
                                   target_images=x_all[t].to(device))
        rows.append({"way": way, "seed": seed, "mean_le_end_paper": r.summary["explanation_loss_end_paper"]["mean"],
                     "mean_le_start_paper": r.summary["explanation_loss_start_paper"]["mean"]})
        if progress:
            progress("way stability", (i + 1) / total)
    import numpy as np

    for way in ways:
        values = np.array([r["mean_le_end_paper"] for r in rows if r["way"] == way and r["mean_le_end_paper"] is not None])
        spread[f"way{way}"] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                               "range": float(values.max() - values.min()), "cv": float(values.std(ddof=1) / values.mean())
                               if values.size > 1 and values.mean() else 0.0}
    return Result(kind="way_stability", config={"ways": list(ways), "seeds": list(seeds), "n_pairs": n_pairs,
                                                "n_candidates": len(candidates), "candidates": "spread", "k": k, "attack": cfg.model_dump(mode="json")},
                  summary=spread, extra={"runs": rows}, seconds=time.perf_counter() - started)
