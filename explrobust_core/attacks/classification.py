"""Attacks on predictions: FGSM and PGD (L∞ / L2), batched, with per-image success tracking.

Shape as torchattacks: an attack takes ``(images, labels)`` in pixel space [0, 1] and returns
adversarial images; :func:`run_classification_attack` wraps that into a :class:`Result`.
:func:`pgd_perturb` is the one implementation that adversarial training and TRADES reuse.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..cancellation import raise_if_cancelled
from ..kernels import fast_kernels
from ..models import eval_mode, lean_forward, pool_before_relu
from ..registry import Config, ConfigError, MissingExtraError, Registry
from ..results import Result

Norm = Literal["linf", "l2"]
LossName = Literal["ce", "cw"]


class FGSMConfig(Config):
    eps: float = Field(0.1, ge=0, le=100, description="perturbation budget in pixel units ([0,1] images)")
    norm: Norm = Field("linf", description="threat model: L∞ (sign step) or L2 (normalised gradient step)")
    loss: LossName = Field("ce", description="cross-entropy or Carlini–Wagner margin")
    targeted: bool = Field(False, description="labels are target classes to reach, not true classes to leave")


class PGDConfig(FGSMConfig):
    steps: int = Field(40, ge=1, le=10_000, description="iterations per restart")
    step_size: float | None = Field(None, gt=0, le=100, description="step length; default 2.5·ε/steps (Madry et al.)")
    random_start: bool = Field(True, description="start from a uniform point of the ε-ball")
    restarts: int = Field(1, ge=1, le=100, description="independent random restarts; images already broken are kept")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed for the random starts")

    @model_validator(mode="after")
    def _restarts_need_random_start(self) -> "PGDConfig":
        if self.restarts > 1 and not self.random_start:
            raise ValueError("restarts > 1 repeat the same deterministic run without random_start")
        return self


CLASSIFICATION_ATTACKS: Registry[Callable[..., torch.Tensor]] = Registry("classification attack")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Carlini–Wagner margin per image: max_{j≠y} z_j − z_y (positive once misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, loss: LossName, targeted: bool) -> torch.Tensor:
    """Per-image loss that the attack *increases*."""
    value = F.cross_entropy(logits, labels, reduction="none") if loss == "ce" else margin_loss(logits, labels)
    return -value if targeted else value


def _per_image(value: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]).reshape(-1, *([1] * (x.ndim - 1))) if t.ndim == 0 else t.reshape(-1, *([1] * (x.ndim - 1)))


def _l2(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (v.ndim - 1)))


def project(delta: torch.Tensor, eps: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Project perturbations onto the ε-ball (``eps`` broadcast per image)."""
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, eps), -eps)
    return delta * torch.clamp(eps / _l2(delta), max=1.0)


def random_start(x: torch.Tensor, eps: torch.Tensor, norm: Norm, generator: torch.Generator) -> torch.Tensor:
    """A uniform point of the L∞ ball, or a uniform point of the L2 ball."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return (2 * u - 1) * eps
    direction = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    radius = torch.rand((x.shape[0],), generator=generator, dtype=x.dtype).to(x.device) ** (1.0 / x[0].numel())
    return direction / _l2(direction) * radius.reshape(-1, *([1] * (x.ndim - 1))) * eps


def success_of(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    pred = logits.argmax(1)
    return pred == labels if targeted else pred != labels


def pgd_perturb(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    steps: int,
    step_size: float | torch.Tensor | None = None,
    norm: Norm = "linf",
    loss: LossName = "ce",
    targeted: bool = False,
    random_init: bool = True,
    generator: torch.Generator | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    keep: Literal["last_success", "final"] = "last_success",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One PGD run. Returns ``(x_adv, success)``.

    ``x_adv`` is, per image, the last iterate that met the goal (misclassified, or the target
    reached) if any did, else the final iterate; ``keep="final"`` returns the final iterate always
    (as captum's PGD does; ``success`` still says whether any iterate met the goal).
    ``eps``/``step_size`` may be per-image tensors.
    ``loss_fn(logits, labels) → per-image loss to increase`` overrides ``loss``/``targeted``
    (TRADES passes its KL term). Runs in the model's current mode; callers use ``eval_mode``.
    """
    model = pool_before_relu(model)  # the same logits and gradients, less work (the zoo's ConvNet)
    eps_t = _per_image(eps, x)
    step_t = _per_image(2.5 * eps_t / steps if step_size is None else step_size, x)
    objective = loss_fn or (lambda z, y: attack_loss(z, y, loss, targeted))
    gen = generator or torch.Generator().manual_seed(0)
    x = x.detach()
    delta = random_start(x, eps_t, norm, gen) if random_init else torch.zeros_like(x)
    x_adv = (x + delta).clamp(0, 1)
    best = x_adv.clone()
    succeeded = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for step in range(steps + 1):
        raise_if_cancelled("PGD")
        x_adv.requires_grad_(True)
        # explrobust's kernels: the same iterates, faster CPU pooling (a no-op inside a training step's own)
        with torch.enable_grad(), fast_kernels(first_order_input=x_adv):
            logits = model(x_adv)
            now = success_of(logits.detach(), labels, targeted)
            best = torch.where(_per_image(now, x).bool(), x_adv.detach(), best)
            succeeded |= now
            if step == steps:
                break
            (grad,) = torch.autograd.grad(objective(logits, labels).sum(), x_adv)
        with torch.no_grad():
            direction = grad.sign() if norm == "linf" else grad / _l2(grad)
            delta = project(x_adv + step_t * direction - x, eps_t, norm)
            x_adv = (x + delta).clamp(0, 1)
    x_adv = x_adv.detach()
    if keep == "final":
        return x_adv, succeeded
    return torch.where(_per_image(succeeded, x).bool(), best, x_adv), succeeded


def pgd_ascent(
    objective: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float | None = None,
    norm: Norm = "linf",
    random_init: bool = True,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Projected sign-gradient ascent of any per-image ``objective(x_adv)``; returns the last iterate.

    For training-time inner maximisations (IG-NORM's attribution norm, ART's alignment loss, TRADES' KL),
    where no success tracking is needed. ``start``: the first iterate (e.g. TRADES' x + 0.001·N(0, 1)),
    instead of a uniform random start (``random_init``) or ``x`` itself.
    """
    eps_t = _per_image(eps, x)
    step_t = _per_image(2.5 * eps / steps if step_size is None else step_size, x)
    x = x.detach()
    if start is not None:
        x_adv = (x + project(start.detach() - x, eps_t, norm)).clamp(0, 1)
    else:
        delta = random_start(x, eps_t, norm, generator or torch.Generator().manual_seed(0)) if random_init else 0
        x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        raise_if_cancelled("PGD ascent")
        x_adv.requires_grad_(True)
        with torch.enable_grad(), fast_kernels():  # the same numbers, faster (objectives may differentiate twice)
            (grad,) = torch.autograd.grad(objective(x_adv).sum(), x_adv)
        with torch.no_grad():
            direction = grad.sign() if norm == "linf" else grad / _l2(grad)
            x_adv = (x + project(x_adv + step_t * direction - x, eps_t, norm)).clamp(0, 1)
    return x_adv.detach()


@CLASSIFICATION_ATTACKS.register("fgsm", config=FGSMConfig, summary="Fast gradient sign method (one step of size ε)")
def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: FGSMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    return pgd_perturb(model, images, labels, eps=cfg.eps, steps=1, step_size=cfg.eps, norm=cfg.norm, loss=cfg.loss,
                       targeted=cfg.targeted, random_init=False)


@CLASSIFICATION_ATTACKS.register("pgd", config=PGDConfig, summary="Projected gradient descent (Madry et al.), L∞ or L2, restarts")
def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: PGDConfig) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(cfg.seed)
    x_adv, success = pgd_perturb(model, images, labels, eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size,
                                 norm=cfg.norm, loss=cfg.loss, targeted=cfg.targeted, random_init=cfg.random_start,
                                 generator=gen)
    for _ in range(cfg.restarts - 1):
        todo = (~success).nonzero().squeeze(1)
        if todo.numel() == 0:
            break  # restarts only for the images still standing
        again, ok = pgd_perturb(model, images[todo], labels[todo], eps=cfg.eps, steps=cfg.steps,
                                step_size=cfg.step_size, norm=cfg.norm, loss=cfg.loss, targeted=cfg.targeted,
                                random_init=True, generator=gen)
        x_adv[todo] = torch.where(ok.view(-1, *([1] * (images.ndim - 1))), again, x_adv[todo])
        success[todo] = ok
    return x_adv, success


class AutoAttackConfig(Config):
    eps: float = Field(0.3, gt=0, le=100, description="perturbation budget in pixel units")
    norm: Literal["Linf", "L2", "L1"] = Field("Linf", description="threat model")
    version: Literal["standard", "plus", "rand", "custom"] = Field("standard", description="AutoAttack suite")
    attacks: list[Literal["apgd-ce", "apgd-t", "fab", "fab-t", "square", "apgd-dlr"]] | None = Field(
        None, description="with version 'custom': which attacks to run, e.g. [\"apgd-ce\"]")
    batch_size: int = Field(250, ge=1, le=10_000, description="images per internal batch")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the attacks' randomness")

    @model_validator(mode="after")
    def _custom_needs_attacks(self) -> "AutoAttackConfig":
        if (self.version == "custom") != (self.attacks is not None):
            raise ValueError("give 'attacks' exactly when version is 'custom'")
        return self


@CLASSIFICATION_ATTACKS.register("autoattack", config=AutoAttackConfig, tags=("needs:pyautoattack",),
                                 summary="AutoAttack (Croce & Hein) via the optional pyautoattack package")
def autoattack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: AutoAttackConfig):
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise MissingExtraError("AutoAttack is optional: pip install 'explrobust[autoattack]' "
                                "(the pyautoattack package)") from None
    runner = AutoAttack(model, attacks=cfg.attacks, device=images.device, eps=cfg.eps, norm=cfg.norm, seed=cfg.seed,
                        version=cfg.version)
    runner.verbose = False
    x_adv, _ = runner.run_standard_evaluation(images.detach(), labels, batch_size=cfg.batch_size)
    with torch.no_grad():
        success = model(x_adv).argmax(1) != labels
    return x_adv.detach(), success


def run_classification_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    name: str = "pgd",
    config: dict | Config | None = None,
    **options,
) -> Result:
    """Attack a batch; per image: clean/adversarial prediction, success, perturbation norms.

    ``labels`` are the true classes (or the target classes when ``targeted``). Adversarial
    accuracy counts images that are still classified correctly after the attack.

    Args:
        model: pixels in ``[0, 1]`` → logits; images ``(N, C, H, W)``; labels ``(N,)`` on the same device.
        name: ``pgd``, ``fgsm`` or ``autoattack`` (an optional extra); config / options: the attack's
            settings (``eps``, ``norm``, ``steps``, …), validated.

    Returns:
        A :class:`~explrobust_core.results.Result`: ``per_image`` (predictions, success, norms), ``summary``
        (clean and adversarial accuracy) and ``tensors["adversarial"]``.

    Example:
        >>> r = run_classification_attack(model, x, y, "pgd", eps=0.3, steps=20)
        >>> r.summary["adversarial_accuracy"] <= r.summary["clean_accuracy"]
        True
    """
    entry = CLASSIFICATION_ATTACKS.get(name)
    cfg = entry.resolve(config, **options)
    started = time.perf_counter()
    labels = labels.to(images.device)
    with eval_mode(model):
        x_adv, success = entry.obj(model, images, labels, cfg)
        with torch.no_grad():
            clean_pred, adv_pred = lean_forward(model, images).argmax(1), lean_forward(model, x_adv).argmax(1)
    delta = (x_adv - images).flatten(1)
    per_image = {
        "label": labels, "clean_pred": clean_pred, "adv_pred": adv_pred, "success": success,
        "linf": delta.abs().amax(1), "l2": delta.norm(dim=1),
    }
    n = images.shape[0]
    summary = {"n": n, "success_rate": float(success.float().mean()) if n else None}
    if not getattr(cfg, "targeted", False):
        summary["clean_accuracy"] = float((clean_pred == labels).float().mean()) if n else None
        summary["adversarial_accuracy"] = float((adv_pred == labels).float().mean()) if n else None
    return Result(kind=f"classification_attack/{name}", config={"attack": name, **cfg.model_dump(mode="json")},
                  per_image=per_image, summary=summary, tensors={"adversarial": x_adv},
                  seconds=time.perf_counter() - started)


def minimal_flip_eps(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps_max: float,
    iterations: int = 8,
    config: dict | PGDConfig | None = None,
) -> torch.Tensor:
    """Per image, the smallest ε (to within eps_max / 2^iterations) at which PGD flips it.

    A batched bisection: every image moves its own [lo, hi] bracket each round. Images that are
    misclassified already get 0; images PGD cannot flip at ``eps_max`` get ``inf``.
    """
    entry = CLASSIFICATION_ATTACKS.get("pgd")
    cfg = entry.make_config(config)
    if not (isinstance(eps_max, (int, float)) and math.isfinite(eps_max) and eps_max > 0):
        raise ConfigError(f"eps_max must be a finite number > 0, got {eps_max!r}")
    # validated like any other ε (model_copy(update=…) would skip the config's checks)
    at_max = entry.resolve(cfg, eps=eps_max)
    labels = labels.to(images.device)
    with eval_mode(model):
        with torch.no_grad():
            wrong = model(images).argmax(1) != labels
        _, flips = pgd(model, images, labels, at_max)
        lo = torch.zeros(images.shape[0], dtype=images.dtype, device=images.device)
        hi = torch.full_like(lo, eps_max)
        for _ in range(iterations):
            raise_if_cancelled("minimal ε bisection")
            mid = (lo + hi) / 2
            _, ok = pgd_perturb(model, images, labels, eps=mid, steps=cfg.steps,
                                step_size=None if cfg.step_size is None else cfg.step_size * mid / eps_max,
                                norm=cfg.norm, loss=cfg.loss, random_init=cfg.random_start,
                                generator=torch.Generator().manual_seed(cfg.seed))
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
    out = torch.where(flips, hi, torch.full_like(hi, float("inf")))
    return torch.where(wrong, torch.zeros_like(out), out)
