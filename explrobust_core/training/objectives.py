"""Training objectives, one registered function + one typed config each.

An objective maps ``(model, x, y, cfg, generator)`` to ``(loss, terms)``: the scalar to minimise
and a dict of its parts (floats, for logs). Inner maximisations run in eval mode (frozen BatchNorm
statistics, no dropout) and draw their randomness from ``generator`` so that a resumed run
repeats an uninterrupted one exactly. All losses are batch means unless a config says otherwise.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..attacks.classification import pgd_ascent, pgd_perturb
from ..explain import EXPLAINERS, InputSpace, attribute
from ..kernels import fast_kernels
from ..metrics import attribution_to_map, explanation_loss
from ..models import eval_mode, pool_before_relu, softplus_view
from ..registry import Config, Registry

Terms = dict[str, float]
ObjectiveFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, Any, torch.Generator], tuple[torch.Tensor, Terms]]
OBJECTIVES: Registry[ObjectiveFn] = Registry("training objective")


class NaturalConfig(Config):
    """Plain cross-entropy on clean images."""


class AdversarialConfig(Config):
    eps: float = Field(0.3, ge=0, le=1, description="L∞ budget of the training attack (pixel units)")
    steps: int = Field(10, ge=1, le=1000, description="PGD steps of the training attack")
    step_size: float | None = Field(None, gt=0, le=1, description="PGD step; default 2.5·ε/steps")


class TradesConfig(AdversarialConfig):
    beta: float = Field(6.0, ge=0, le=1000, description="weight of the KL robustness term (TRADES' β, the paper's α)")
    inner_attack: Literal["trades", "pgd"] = Field(
        "trades", description="inner maximisation: 'trades' as the TRADES reference code (start at x + 0.001·N(0, 1), "
                              "sign ascent on the KL, the last iterate); 'pgd' (uniform start, the first iterate "
                              "that misclassifies — what cards without this field were trained with)")


class SEPConfig(AdversarialConfig):
    """SEP's conventions are explicit fields, recorded in every card (see README, "SEP conventions")."""

    lam: float = Field(5e4, ge=-1e9, le=1e9,
                       description="weight λ of ‖m(x+ζ) − m(x)‖²: > 0 flattens (SEP_pos), < 0 sharpens (SEP_neg)")
    sigma: float = Field(0.1, ge=0, le=1, description="σ of the Gaussian noise ζ, pixel units")
    explainer: str = Field("gradient_x_input", description="differentiable explanation method of the maps")
    space: InputSpace = Field(
        "model", description="input space of gradient×input / zero-baseline IG maps: 'model' = (x − μ) ⊙ ∇ₓf as the "
                             "Dombrowski reference code, 'pixel' = x ⊙ ∇ₓf")
    clamp: bool = Field(True, description="clamp the noisy input x + ζ to [0, 1]")
    on: Literal["clean", "adversarial"] = Field("clean", description="regularise maps around x or around x+δ")
    reduction: Literal["mean", "sum"] = Field(
        "mean", description="the squared map difference: 'mean' over pixels (L_e's form) or 'sum' (×H·W)")
    softplus_beta: float | None = Field(None, gt=0, le=1e4,
                                        description="take maps on the Softplus(β) view (none: the ReLU model)")

    @model_validator(mode="after")
    def _differentiable(self) -> "SEPConfig":
        if "differentiable" not in EXPLAINERS.get(self.explainer).tags:
            raise ValueError(f"SEP needs a differentiable explainer, not {self.explainer!r}")
        return self

    def explainer_options(self) -> dict[str, Any]:
        """The input space reaches the explainer when that method has one (gradient×input, IG)."""
        return {"space": self.space} if "space" in EXPLAINERS.get(self.explainer).config.model_fields else {}


class IGNormConfig(AdversarialConfig):
    lam: float = Field(1.0, ge=0, le=1e6, description="weight of ‖IG(x, x′)‖₁ (RAR's lambda / beta)")
    m: int = Field(10, ge=1, le=200, description="IG points on the path x → x′ for the outer loss (RAR: 50)")
    approx_factor: int = Field(5, ge=1, le=200, description="the inner attack uses every approx_factor-th point")
    reduction: Literal["mean", "sum"] = Field(
        "mean", description="'sum' over the batch as RAR (gradient scale grows with batch size), or batch 'mean'")

    @model_validator(mode="after")
    def _factor(self) -> "IGNormConfig":
        if self.approx_factor > self.m:
            raise ValueError("approx_factor must not exceed m")
        return self


class ARTConfig(AdversarialConfig):
    gamma: float = Field(0.5, ge=0, le=100, description="weight of the triplet alignment loss (ART hard-codes 0.5)")
    k_top: int = Field(200, ge=1, le=10_000_000, description="input entries the training attack aligns on")
    beta: float = Field(50.0, gt=0, le=1e4, description="softplus β for the gradient terms")
    eps: float = Field(0.3, ge=0, le=1, description="L∞ budget of the top-k alignment attack")
    steps: int = Field(3, ge=1, le=1000, description="steps of the top-k alignment attack")


def _adversarial(model: nn.Module, x, y, cfg: AdversarialConfig, gen: torch.Generator) -> torch.Tensor:
    with eval_mode(model):
        x_adv, _ = pgd_perturb(model, x, y, eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size, generator=gen)
    return x_adv


@OBJECTIVES.register("natural", config=NaturalConfig, summary="Natural training: cross-entropy")
def natural(model, x, y, cfg, gen):
    loss = F.cross_entropy(model(x), y)
    return loss, {"ce": loss.item()}


@OBJECTIVES.register("pgd_at", config=AdversarialConfig, summary="PGD adversarial training (Madry et al., 'MAT')")
def pgd_at(model, x, y, cfg: AdversarialConfig, gen):
    loss = F.cross_entropy(pool_before_relu(model)(_adversarial(model, x, y, cfg, gen)), y)
    return loss, {"ce_adv": loss.item()}


@OBJECTIVES.register("trades", config=TradesConfig, summary="TRADES (Zhang et al.): CE + β·KL(f(x) ‖ f(x′))")
def trades(model, x, y, cfg: TradesConfig, gen):
    with eval_mode(model):
        with torch.no_grad():
            clean_prob = F.softmax(model(x), 1)

        def kl(logits, _labels):  # per image KL(p_clean ‖ p_adv), the inner maximisation
            return F.kl_div(F.log_softmax(logits, 1), clean_prob, reduction="none").sum(1)

        if cfg.inner_attack == "trades":
            noise = 0.001 * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
            x_adv = pgd_ascent(lambda z: kl(model(z), y), x, eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size,
                               start=(x + noise).clamp(0, 1))
        else:
            x_adv, _ = pgd_perturb(model, x, y, eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size, generator=gen,
                                   loss_fn=kl)
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    robust = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(logits, 1), reduction="batchmean")
    return ce + cfg.beta * robust, {"ce": ce.item(), "kl": robust.item()}


@OBJECTIVES.register("sep", config=SEPConfig,
                     summary="SEP: adversarial training + λ·‖m(x+ζ) − m(x)‖² on sum-normalised maps (λ ≷ 0)")
def sep(model, x, y, cfg: SEPConfig, gen):
    """Madry PGD-AT plus the explanation-stability term with Gaussian ζ (double backprop).

    The term is always computed, so λ = 0 is exactly plain adversarial training. Logged per batch:
    the term, λ·term, the adversarial cross-entropy and the term's upper bound — sum-normalised
    maps m, m′ ≥ 0 give Σ(m − m′)² ≤ Σm² + Σm′² ≤ 2, so 2/(H·W) with the mean reduction.
    """
    with fast_kernels():  # the same numbers, faster CPU pooling and no zeros sent through the forward graph
        return _sep(model, x, y, cfg, gen)


def _sep(model, x, y, cfg: SEPConfig, gen):
    x_adv = _adversarial(model, x, y, cfg, gen)
    ce = F.cross_entropy(pool_before_relu(model)(x_adv), y)  # the same loss and gradients, less work
    base = x if cfg.on == "clean" else x_adv
    zeta = torch.randn(base.shape, generator=gen, dtype=base.dtype).to(base.device) * cfg.sigma
    noisy = (base + zeta).clamp(0, 1) if cfg.clamp else base + zeta
    net = model if cfg.softplus_beta is None else softplus_view(model, cfg.softplus_beta)  # explainers pool first
    options = cfg.explainer_options()

    def maps(inp):
        return attribution_to_map(attribute(net, inp, cfg.explainer, target=y, create_graph=True, **options))

    per_image = explanation_loss(maps(noisy), maps(base))
    pixels = base.shape[-2] * base.shape[-1]
    stability = per_image.mean() * (pixels if cfg.reduction == "sum" else 1)
    bound = 2.0 * (1 if cfg.reduction == "sum" else 1 / pixels)
    weighted = cfg.lam * stability
    return ce + weighted, {"ce_adv": ce.item(), "explanation_stability": stability.item(),
                           "lam_x_stability": weighted.item(), "stability_bound": bound}


def loss_integrated_gradients(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                              alphas: torch.Tensor) -> torch.Tensor:
    """RAR's IG of the per-image CE loss along x → x′ (right Riemann points ``alphas``), differentiable."""
    k = alphas.numel()
    path = x[None] + alphas.view(-1, 1, 1, 1, 1) * (x_adv - x)[None]
    flat = path.reshape(k * x.shape[0], *x.shape[1:])
    if not flat.requires_grad:  # the outer loss: only the weights carry the graph
        flat = flat.detach().requires_grad_(True)
    ce = F.cross_entropy(model(flat), y.repeat(k), reduction="sum")  # sum: each point's own gradient
    (grads,) = torch.autograd.grad(ce, flat, create_graph=True)
    return (x_adv - x) * grads.reshape(k, *x.shape).mean(0)


def _ig_objective(sum_norm: bool):
    def objective(model, x, y, cfg: IGNormConfig, gen):
        fine = torch.arange(1, cfg.m + 1, dtype=x.dtype, device=x.device) / cfg.m
        coarse = fine[cfg.approx_factor - 1:: cfg.approx_factor]

        def inner(x_adv):  # per image: ‖IG_coarse‖₁, or CE(x′) + λ‖IG_coarse‖₁ for IG-SUM-NORM
            r = loss_integrated_gradients(model, x, x_adv, y, coarse).abs().flatten(1).sum(1)
            return F.cross_entropy(model(x_adv), y, reduction="none") + cfg.lam * r if sum_norm else r

        with eval_mode(model):
            x_adv = pgd_ascent(inner, x, eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size, generator=gen)
        reduce = torch.sum if cfg.reduction == "sum" else torch.mean
        ce = reduce(F.cross_entropy(model(x_adv if sum_norm else x), y, reduction="none"))
        r = loss_integrated_gradients(model, x, x_adv, y, fine).abs().flatten(1).sum(1)
        reg = reduce(r)
        return ce + cfg.lam * reg, {"ce_adv" if sum_norm else "ce": ce.item(), "ig_norm": reg.item()}

    return objective


OBJECTIVES.add("ig_norm", _ig_objective(False), config=IGNormConfig,
               summary="IG-NORM (RAR): CE(x) + λ‖IG(x, x′)‖₁, x′ maximising the IG norm")
OBJECTIVES.add("ig_sum_norm", _ig_objective(True), config=IGNormConfig,
               summary="IG-SUM-NORM (RAR): CE(x′) + β‖IG(x, x′)‖₁, x′ maximising both")


def _class_gradients(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """∇x of the true-class logit and of the highest other logit, per image, with create_graph."""
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    logits = net(x)
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    g_pos = torch.autograd.grad(true.sum(), x, create_graph=True)[0]
    g_neg = torch.autograd.grad(other.sum(), x, create_graph=True)[0]
    return g_pos, g_neg


def _cos_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)


@OBJECTIVES.register("art", config=ARTConfig,
                     summary="ART (Singh et al.): CE(x′) + γ·soft-margin triplet aligning gradients with the input")
def art(model, x, y, cfg: ARTConfig, gen):
    """Inputs and gradients both live in pixel space here (ART's code mixed normalised anchors with
    pixel-space gradients). The training attack's top-k set is fixed from the ReLU model's |∇x logit_y|."""
    smooth = softplus_view(model, cfg.beta)
    with eval_mode(model):
        x0 = x.detach().requires_grad_(True)
        g0 = torch.autograd.grad(model(x0).gather(1, y[:, None]).sum(), x0)[0].abs().flatten(1)
        k = min(cfg.k_top, g0.shape[1])
        mask = torch.zeros_like(g0).scatter_(1, g0.topk(k, dim=1).indices, 1.0).view_as(x)

        def alignment_loss(x_adv):  # the attack increases it: pull the true-class gradient off the input
            g_pos, g_neg = _class_gradients(smooth, x_adv, y)
            return F.softplus(_cos_distance(x_adv * mask, g_pos * mask) - _cos_distance(x_adv * mask, g_neg * mask))

        x_adv = pgd_ascent(alignment_loss, x, eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size, generator=gen)
    both = torch.cat([x, x_adv]).requires_grad_(True)
    yy = torch.cat([y, y])
    g_pos, g_neg = _class_gradients(smooth, both, yy)
    n = x.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(x.device)
    # batch-hard within each clean/adversarial pair
    d_ap = torch.maximum(_cos_distance(both, g_pos), _cos_distance(both, g_pos[partner]))
    d_an = torch.minimum(_cos_distance(both, g_neg), _cos_distance(both, g_neg[partner]))
    triplet = F.softplus(d_ap - d_an).mean()
    ce = F.cross_entropy(model(x_adv), y)
    return ce + cfg.gamma * triplet, {"ce_adv": ce.item(), "triplet": triplet.item()}
