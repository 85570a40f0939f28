"""Accuracy against ε: one classification attack at each ε of a grid, on one set of images.

The one implementation of the curve: the dashboard's Classification page uses it, and ``evaluate`` and
``explrobust attack-classifier --eps-list`` compute the same numbers (their ``[{"eps", "accuracy"}]`` rows
are :meth:`AccuracyCurve.rows`). ε = 0 is the clean accuracy (no attack runs there).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .attacks.classification import CLASSIFICATION_ATTACKS, minimal_flip_eps, run_classification_attack
from .batching import map_batches
from .models import device_of, eval_mode
from .registry import Config

NEEDS = "needs:"  # an entry tag naming the optional package an attack imports (e.g. needs:pyautoattack)


def attack_installed(name: str) -> bool:
    """Whether classification attack ``name`` can run here (its optional package, if any, is installed)."""
    tags = CLASSIFICATION_ATTACKS.get(name).tags
    return all(importlib.util.find_spec(t[len(NEEDS):]) is not None for t in tags if t.startswith(NEEDS))


def installed_attacks() -> list[str]:
    """The registered classification attacks that can run here."""
    return [name for name in CLASSIFICATION_ATTACKS.names() if attack_installed(name)]


class DatasetImages:
    """Images ``indices`` of ``dataset`` as :func:`accuracy_vs_eps` takes them, read a batch at a time when sliced:
    an evaluation of many (or large) images holds one batch in memory, not all of them."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return self.dataset.batch(self.indices[rows])[0]


@dataclass
class AccuracyCurve:
    """Accuracy at each ε, with per-image predictions and the first few adversarial examples per ε."""

    eps: list[float]
    accuracy: list[float]
    labels: list[int]
    clean_pred: list[int]
    clean_conf: list[float]
    adv_pred: list[list[int]]  # per ε, per image
    examples: list[torch.Tensor] = field(default_factory=list)  # per ε: the first ``keep`` adversarial images
    example_conf: list[list[float]] = field(default_factory=list)  # their top softmax probability
    min_eps: list[float] | None = None  # per image: the smallest flipping ε found by PGD bisection (inf: none)

    def rows(self, exact: bool = False) -> list[dict[str, float]]:
        """``[{"eps": ε, "accuracy": a}, …]``, the shape evaluation reports store; ``exact``: each accuracy as
        correct / n in double precision (as evaluation reports always stored it) rather than a float32 mean."""
        if exact:
            n = len(self.labels)
            return [{"eps": e, "accuracy": sum(p == t for p, t in zip(pred, self.labels)) / n if n else float("nan")}
                    for e, pred in zip(self.eps, self.adv_pred)]
        return [{"eps": e, "accuracy": a} for e, a in zip(self.eps, self.accuracy)]


def accuracy_vs_eps(model: nn.Module, images: torch.Tensor | DatasetImages, labels: torch.Tensor,
                    eps_grid: Sequence[float], attack: str = "pgd", config: dict | Config | None = None, *,
                    batch_size: int = 256,
                    keep: int = 0, flip_iterations: int | None = None, flip_config: dict | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    on_eps: Callable[[AccuracyCurve], None] | None = None) -> AccuracyCurve:
    """Attack ``images`` with classification attack ``attack`` at every ε of ``eps_grid``.

    Args:
        model: maps ``[0, 1]`` pixels to logits; images ``(N, C, H, W)`` on any device (or a
            :class:`DatasetImages`, read a batch at a time) and their labels ``(N,)``.
        eps_grid: budgets in pixel units (ε = 0: the clean predictions); every ε is validated first.
        config: the attack's config without ``eps`` (e.g. PGD's norm, steps, restarts).
        batch_size: images per attack call (bounds memory); keep: adversarial examples kept per ε.
        flip_iterations: also find each image's minimal flipping ε by PGD bisection up to the largest ε
            (``flip_config``: PGD's settings), to ``max ε / 2^flip_iterations``.
        progress: ``progress(done, total)`` after every batch.
        on_eps: ``on_eps(curve)`` after every ε with the curve so far (its first ε filled in): a caller can
            show the first points while the rest are computed. The curve is the one returned: do not modify it.

    Returns:
        An :class:`AccuracyCurve`.

    Example:
        >>> from explrobust_core import load_checkpoint, load_dataset
        >>> model, _ = load_checkpoint("models_zoo/mnist5k/pgd_at.safetensors")
        >>> x, y = load_dataset("mnist5k", "test").batch(range(0, 1000, 20))
        >>> curve = accuracy_vs_eps(model, x, y, [0.0, 0.1, 0.3], "pgd", {"steps": 10})
        >>> curve.rows()[0]["eps"], len(curve.accuracy)
        (0.0, 3)
    """
    entry = CLASSIFICATION_ATTACKS.get(attack)
    grid = [float(e) for e in eps_grid]
    for eps in grid:  # a clear message before anything runs
        if eps < 0:
            raise ValueError(f"ε must be ≥ 0, got {eps:g}")
        if eps > 0:
            entry.resolve(config, eps=eps)
    device = device_of(model)
    n, y_all = len(images), labels.cpu()
    batches = math.ceil(n / max(batch_size, 1))
    total, done = len(grid) * batches + (batches if flip_iterations else 0), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(min(done, total), total)  # a batch halved for memory makes more, smaller steps

    def on_device(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return images[start:stop].to(device), y_all[start:stop].to(device)

    def clean(start: int, stop: int) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(model(on_device(start, stop)[0]), 1).cpu()

    with eval_mode(model):  # a batch that runs out of accelerator memory is halved (map_batches)
        clean_probs = torch.cat(map_batches(clean, n, batch_size))
    clean_pred = clean_probs.argmax(1)
    curve = AccuracyCurve(eps=grid, accuracy=[], labels=y_all.tolist(), clean_pred=clean_pred.tolist(),
                          clean_conf=clean_probs.amax(1).tolist(), adv_pred=[])
    for eps in grid:
        def attacked(start: int, stop: int, eps: float = eps) -> tuple[torch.Tensor, torch.Tensor]:
            if eps == 0:  # no attack: the clean predictions (and the clean images as examples)
                pred, adversarial = clean_pred[start:stop], images[start:min(stop, start + keep)].cpu()
            else:
                r = run_classification_attack(model, *on_device(start, stop), attack, config, eps=eps)
                pred, adversarial = r.per_image["adv_pred"].cpu(), r.tensors["adversarial"][:keep].cpu()
            tick()
            return pred, adversarial

        parts = map_batches(attacked, n, batch_size)
        pred = torch.cat([p for p, _ in parts]) if parts else torch.zeros(0, dtype=torch.long)
        curve.accuracy.append(float((pred == y_all).float().mean()))
        curve.adv_pred.append(pred.tolist())
        if keep:
            kept = torch.cat([a for _, a in parts])[:keep]
            with torch.no_grad(), eval_mode(model):
                curve.example_conf.append(torch.softmax(model(kept.to(device)), 1).amax(1).cpu().tolist())
            curve.examples.append(kept)
        if on_eps is not None:
            on_eps(curve)
    if flip_iterations:
        def flips(start: int, stop: int) -> torch.Tensor:
            out = minimal_flip_eps(model, *on_device(start, stop), eps_max=max(grid), iterations=flip_iterations,
                                   config=flip_config).cpu()
            tick()
            return out

        curve.min_eps = torch.cat(map_batches(flips, n, batch_size)).tolist()
    return curve


def stored_accuracy_curve(weights: str | Path, norm: str = "linf", attack: str = "pgd") -> dict | None:
    """The accuracy-vs-ε curve a stored evaluation of this checkpoint recorded (``<stem>.eval.json`` beside the
    weights, as ``models_zoo/build.sh`` writes it), made by ``attack`` with ``norm``: ``{"attack", "eps": [0, …],
    "accuracy": [clean, …], "n_images", "steps", "restarts"}`` (``steps``/``restarts``: PGD's; None for another
    attack); ``None`` when there is none, or it used another attack or norm."""
    from .io import read_json_object
    from .study import result_files_beside

    files = result_files_beside(Path(weights))
    if not files:
        return None
    try:
        report = read_json_object(files[0], what="stored evaluation")
    except (OSError, ValueError):
        return None
    summary, config = report.get("summary") or {}, report.get("config") or {}
    # the curve keeps its key (pgd_accuracy) whichever attack made it; the summary and the config name the attack
    made_by = summary.get("classification_attack") or config.get("classification_attack") or "pgd"
    settings = config.get(made_by) or {}
    rows = summary.get("pgd_accuracy")
    if (made_by != attack or not isinstance(settings, dict) or str(settings.get("norm", "linf")).lower() != norm
            or not isinstance(rows, list) or summary.get("clean_accuracy") is None):
        return None
    try:
        points = dict(sorted((float(r["eps"]), float(r["accuracy"])) for r in rows))
    except (KeyError, TypeError, ValueError):  # a hand-edited or foreign file: no stored curve
        return None
    points.setdefault(0.0, float(summary["clean_accuracy"]))  # ε = 0 is the clean accuracy, unless a row holds it
    eps = sorted(points)
    pgd = made_by == "pgd"
    return {"attack": made_by, "eps": eps, "accuracy": [points[e] for e in eps], "n_images": summary.get("n_images"),
            "steps": settings.get("steps") if pgd else None, "restarts": settings.get("restarts", 1) if pgd else None}
