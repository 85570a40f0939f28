"""Attacks on explanations that keep the prediction: Ghorbani's IFIA and Dombrowski's targeted attack.

Both run batched over images, differentiate through a differentiable explainer
(``explain.EXPLAINERS`` tagged ``differentiable``) and, when the model has ReLU-family
activations, do so on its Softplus(β) view (second derivatives of ReLU vanish); every number they
report is measured on the original model. The result's config says which view was used.

Images for which no iterate keeps the original prediction are never silently scored as "perfectly
robust": they are counted, and by default (``unattackable="exclude"``) their metrics are NaN and
left out of the summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..cancellation import raise_if_cancelled
from ..explain import EXPLAINERS, attribute_with_logits
from ..kernels import fast_kernels
from ..metrics import (COMPARISONS, EXPLANATION_LOSS_UNIT, attribution_to_map, center_of_mass, center_of_mass_shift,
                       comparison_against, explanation_loss, higher_is_robust, in_paper_units, kendall_tau,
                       metric_label, spearman_rho, topk_intersection)
from ..models import beta_schedule, eval_mode, has_piecewise_linear_activations, pool_before_relu, softplus_view
from ..registry import Config, Registry
from ..results import Result, summarize

Measure = Literal["topk_intersection", "kendall_tau", "spearman_rho", "center_of_mass_shift"]
Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after every attack step (``total`` = steps × restarts) of the whole batch."""


class _ExplainerChoice(Config):
    explainer: str = Field("gradient", description="differentiable explanation method to attack")
    explainer_options: dict[str, Any] = Field(default_factory=dict, description="options of that method")
    unattackable: Literal["exclude", "count_as_robust"] = Field(
        "exclude", description="images where no iterate keeps the prediction: left out (NaN) or scored as unchanged")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed for random starts / random directions")

    @model_validator(mode="after")
    def _differentiable_explainer(self):
        entry = EXPLAINERS.get(self.explainer)
        if "differentiable" not in entry.tags:
            raise ValueError(f"explainer {self.explainer!r} is display-only; attacks need one of "
                             f"{', '.join(EXPLAINERS.names('differentiable'))}")
        entry.make_config(self.explainer_options)
        return self


class IFIAConfig(_ExplainerChoice):
    """Iterative feature-importance attack (Ghorbani et al.), as RAR runs it, batched."""

    objective: Literal["topk", "center_of_mass", "random"] = Field(
        "topk", description="move mass off the top-k pixels, move the centre of mass, or random sign steps")
    eps: float = Field(0.1, gt=0, le=1, description="L∞ budget in pixel units")
    steps: int = Field(100, ge=1, le=5000, description="iterations per restart")
    step_size: float = Field(0.01, gt=0, le=1, description="sign-step length in pixel units")
    k: int = Field(100, ge=1, le=1_000_000, description="size of the top-k mask the attack pushes mass out of")
    eval_k: int = Field(100, ge=1, le=1_000_000, description="k of the reported top-k intersection")
    measure: Measure = Field("kendall_tau", description="keeps the iterate that is worst by this measure")
    random_start: bool = Field(False, description="start from a uniform point of the ε-ball")
    restarts: int = Field(1, ge=1, le=50, description="independent runs; the worst iterate over all is kept")
    on_label_flip: Literal["continue", "rollback"] = Field(
        "continue", description="after an iterate changes the prediction: walk on from it (RAR) or step back")
    beta: float = Field(10.0, gt=0, le=1e4, description="softplus β of the view the gradients are taken on")
    report_explainer: str | None = Field(
        None, description="explanation method of the reported maps and metrics (ART's evaluation: integrated "
                          "gradients of the loss); default: the attacked method itself")
    report_explainer_options: dict[str, Any] = Field(default_factory=dict, description="options of that method")

    @model_validator(mode="after")
    def _restarts_need_randomness(self):
        if self.restarts > 1 and not self.random_start and self.objective != "random":
            raise ValueError("restarts > 1 repeat a deterministic run; set random_start or use objective='random'")
        if self.report_explainer is not None:
            EXPLAINERS.get(self.report_explainer).make_config(self.report_explainer_options)
        elif self.report_explainer_options:
            raise ValueError("report_explainer_options need a report_explainer")
        return self


class TargetedConfig(_ExplainerChoice):
    """Dombrowski et al.'s targeted manipulation: drive the map toward a target's, keep the output."""

    steps: int = Field(300, ge=1, le=20_000, description="Adam iterations (the paper: 1500)")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate on the input (pixel units; paper 2e-4)")
    expl_weight: float = Field(1e11, gt=0, description="weight of the map MSE to the target map")
    output_weight: float = Field(1e6, ge=0, description="weight of the softmax MSE to the original output")
    beta_start: float = Field(10.0, gt=0, le=1e4, description="softplus β at the first step")
    beta_end: float = Field(100.0, gt=0, le=1e4, description="softplus β at the last step (geometric growth)")
    eps: float | None = Field(None, gt=0, le=1, description="optional L∞ budget; none = unconstrained as the paper")
    record_every: int = Field(10, ge=1, le=10_000, description="record L_e, output drift and label every n steps")
    keep: Literal["best", "last"] = Field(
        "best", description="report the recorded iterate with the lowest L_e that keeps the label, or the last")

    @model_validator(mode="before")
    @classmethod
    def _reference_input_space(cls, data: Any) -> Any:
        """Gradient×input and zero-baseline IG maps default to the model's input space here, as the
        Dombrowski reference code computes them; ``explainer_options={"space": "pixel"}`` opts out.
        Written into the config, so every stored result says which space it used."""
        if not isinstance(data, dict):
            return data
        options = data.get("explainer_options") or {}
        if isinstance(options, dict) and "space" not in options and _has_space_option(data):
            data = {**data, "explainer_options": {**options, "space": "model"}}
        return data


# --------------------------------------------------------------------------- the registry

EXPLANATION_ATTACKS: Registry[Callable[..., Result]] = Registry("explanation attack")
"""Every explanation attack: ``fn(model, images, cfg, labels=None, [target_images=None,] progress=None) → Result``,
its config class, the tag :data:`NEEDS_TARGETS` when it attacks toward target images, and an
:class:`AttackInfo` as the entry's ``meta``. The CLI, ``EvaluationConfig``, the study and the Attack lab read
everything they need from here: a new attack is one function, its config and its info, registered below
(or from any module: a test registers a toy one)."""
# the tag of an attack that drives maps toward target images (its function takes ``target_images``)
NEEDS_TARGETS = "needs:targets"


@dataclass(frozen=True)
class ExplanationMeasure:
    """One number of an attack's evaluation summary, as the study correlates it with classification robustness."""

    key: str  # the study's name for it (its ``m_<key>`` column, ``explrobust study --measure``)
    label: str
    summary_key: str  # its key in ``summary["explanation"]`` (or "a/b": the ratio of two means)
    higher_is_robust: bool
    help: str


@dataclass(frozen=True)
class Column:
    """A per-image column of an attack's result as tables show it (``scale`` multiplies the shown value)."""

    key: str
    label: str
    scale: float = 1.0


@dataclass(frozen=True)
class AttackInfo:
    """What an explanation attack's entry carries besides its function and config (its ``meta``)."""

    summarised: tuple[str, ...] = ()  # per-image columns an evaluation summarises (mean, std, bootstrap CI)
    columns: tuple[Column, ...] = ()  # per-image columns the Attack lab's table shows, in order
    measures: tuple[ExplanationMeasure, ...] = ()  # what the study can correlate, with labels and directions
    curves: dict[str, str] = field(default_factory=dict)  # labels of recorded trajectory keys that are not metrics
    form_defaults: dict[str, Any] = field(default_factory=dict)  # the Attack lab's defaults, where not the config's
    # one phrase for a protocol: (this attack's settings, the whole evaluation config) → text
    describe: Callable[[dict[str, Any], dict[str, Any]], str] | None = None
    # stored settings from before an option existed: write out what they did (``stored_defaults``), and leave it
    # out of the protocol's hash again (``unhashed``) so that the ids of results stored before it stay the same
    stored_defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    unhashed: Callable[[dict[str, Any]], dict[str, Any]] | None = None


def attack_info(name: str) -> AttackInfo:
    """The :class:`AttackInfo` of attack ``name`` (an empty one for an entry registered without)."""
    meta = EXPLANATION_ATTACKS.get(name).meta
    return meta if isinstance(meta, AttackInfo) else AttackInfo()


def needs_targets(name: str) -> bool:
    """Whether explanation attack ``name`` attacks toward target images."""
    return NEEDS_TARGETS in EXPLANATION_ATTACKS.get(name).tags


def targeted_attacks() -> list[str]:
    """The registered explanation attacks that take target images."""
    return [n for n in EXPLANATION_ATTACKS.names() if needs_targets(n)]


def default_attack(targeted: bool) -> str:
    """The first registered attack that takes target images (``targeted``), or the first that does not."""
    found = [n for n in EXPLANATION_ATTACKS.names() if needs_targets(n) == targeted]
    if not found:
        raise ValueError(f"no {'targeted' if targeted else 'untargeted'} explanation attack is registered")
    return found[0]


def curve_label(name: str, key: str) -> str | None:
    """The label of trajectory key ``key`` that attack ``name`` records: a comparison metric's (to the original
    map) or one of the attack's own curves; None for a key that is not a curve (``step``, ``label_kept``, and
    ``explanation_loss``, which callers label by whether the attack has a target)."""
    if key in COMPARISONS:
        return f"{metric_label(key)} to the original map"
    return attack_info(name).curves.get(key)


def describe_attack(name: str, settings: dict[str, Any], evaluation: dict[str, Any]) -> str:
    """One phrase for attack ``name`` with ``settings`` in an evaluation protocol."""
    describe = attack_info(name).describe
    if describe is not None:
        return describe(settings, evaluation)
    return f"{name} on {evaluation.get('n_explanation_images', '?')} images"


def compared_with_original(key: str, metric: str, help: str, summary_key: str | None = None,
                           label: str | None = None) -> ExplanationMeasure:
    """A study measure that compares the attacked map with the original one by comparison ``metric``: its label
    and direction are the metric's (a similarity: higher is more robust)."""
    return ExplanationMeasure(key, label or metric_label(metric), summary_key or metric, higher_is_robust(metric), help)


# --------------------------------------------------------------------------- shared pieces


def attack_view(model: nn.Module, sample: torch.Tensor, beta: float) -> tuple[nn.Module, str]:
    """The network to differentiate through, and a note for the result's config.

    The Softplus view runs our Sequential classifiers' ``ReLU → MaxPool2d`` pairs pooling first
    (:func:`~explrobust_core.models.pool_before_relu`): Softplus is increasing, so max pooling commutes with it as
    with the ReLU, and the view is the same function with the Softplus and its two derivatives on a quarter of the
    values (the attack step 18 % faster on the zoo's ConvNet in an A/B run, bench/REPORT.md). Unlike the ReLU
    case it is not the same bit for bit: where two values of a window round to the same Softplus value, pooling
    first passes the gradient to the larger input rather than to the first (tests/test_models.py compares the
    two)."""
    if has_piecewise_linear_activations(model, sample):
        return softplus_view(pool_before_relu(model), beta), f"softplus_view(beta={beta:g}) of a ReLU-family model"
    return model, "the model itself (no ReLU-family activations)"


def _input_only_kernels(x: torch.Tensor, create_graph: bool):
    """The attacks' kernels: only the input is differentiated, once (a map) or twice (a gradient step)."""
    return fast_kernels(weight_gradients=False, first_order_input=None if create_graph else x)


def _maps(net: nn.Module, x: torch.Tensor, labels: torch.Tensor, cfg: _ExplainerChoice, create_graph: bool = False):
    # the explainer itself: ``labels`` are already one class index per image, and attribute()'s target checks
    # read them back to the host, a synchronisation on every step of the loops below
    entry = EXPLAINERS.get(cfg.explainer)
    with _input_only_kernels(x, create_graph):
        attr = entry.obj(net, x, labels, entry.make_config(cfg.explainer_options), create_graph)
    return attribution_to_map(attr)


def _maps_and_logits(net: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, cfg: _ExplainerChoice,
                     create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps and logits from one forward pass where the explainer allows it (gradient, gradient × input):
    the label check of a candidate then costs nothing extra. ``labels=None``: the maps of the predicted classes."""
    with _input_only_kernels(x, create_graph):
        attr, logits = attribute_with_logits(net, x, cfg.explainer, labels,
                                             create_graph=create_graph, config=cfg.explainer_options)
    maps = attribution_to_map(attr)
    return (maps, logits) if create_graph else (maps.detach(), logits.detach())


def _check_k(k: int, pixels: int, name: str) -> None:
    if k > pixels:
        raise ValueError(f"{name}={k} is larger than the map ({pixels} pixels)")


def _lower_is_stronger(measure: Measure, original: torch.Tensor, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The score the attack minimises, of a map against ``original``: the metric signed by its direction (a
    similarity as it is, a distance negated), so lower is always less robust. What depends on the original
    alone is computed once (:func:`~explrobust_core.metrics.comparison_against`)."""
    options = {"k": k} if "k" in COMPARISONS.get(measure).config.model_fields else {}
    against, sign = comparison_against(measure, original, **options), 1 if higher_is_robust(measure) else -1
    return lambda current: sign * against(current)


def _mask(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return flags.view(-1, *([1] * (like.ndim - 1)))


def _apply_policy(values: dict[str, torch.Tensor], attacked: torch.Tensor, policy: str) -> dict[str, torch.Tensor]:
    if policy == "count_as_robust":
        return values
    return {k: torch.where(attacked, v.to(torch.float64), torch.full_like(v, float("nan"), dtype=torch.float64))
            for k, v in values.items()}


def attack_summary(name: str, per_image: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Counts and metric summaries of an explanation attack from its per-image columns (those its entry's
    :attr:`AttackInfo.summarised` names)."""
    attacked = torch.as_tensor(per_image["attacked"]).bool()
    kept = torch.as_tensor(per_image["final_pred"]) == torch.as_tensor(per_image["label"])
    return {
        "n_images": int(attacked.numel()), "n_attacked": int(attacked.sum()),
        "n_unattackable": int((~attacked).sum()),
        "label_kept": float(kept.float().mean()) if kept.numel() else None,
        **{k: summarize(per_image[k], seed=seed) for k in attack_info(name).summarised},
    }


# --------------------------------------------------------------------------- IFIA (untargeted)


def _describe_ifia(a: dict[str, Any], evaluation: dict[str, Any]) -> str:
    return (f"IFIA {a.get('objective', 'topk')} on {a.get('explainer', '?')}, ε={a.get('eps', '?')}, "
            f"{a.get('steps', '?')} steps, {evaluation.get('n_explanation_images', '?')} images")


_IFIA_METRICS = ("topk_intersection", "kendall_tau", "spearman_rho", "center_of_mass_shift")
IFIA_INFO = AttackInfo(
    summarised=(*_IFIA_METRICS, "explanation_loss"),
    columns=(*(Column(m, metric_label(m)) for m in _IFIA_METRICS),
             Column("explanation_loss", "L_e (×10⁻⁷)", 1 / EXPLANATION_LOSS_UNIT)),
    measures=(
        compared_with_original("topk", "topk_intersection",
                               "share of the original top-k pixels still in the top-k after the untargeted attack"),
        compared_with_original("kendall", "kendall_tau", "rank correlation of the maps before and after the attack"),
        compared_with_original("spearman", "spearman_rho", "rank correlation of the maps before and after the attack"),
        compared_with_original("com_shift", "center_of_mass_shift",
                               "how far the map's centre of mass moved (lower = more robust)"),
        compared_with_original("ifia_le", "mse", "explanation loss between the original and the attacked map "
                                                 "(lower = more robust)", "explanation_loss", "map change L_e"),
    ),
    form_defaults={"measure": "topk_intersection"},  # the Attack lab's default objective is top-k: report its measure
    describe=_describe_ifia,
)


@EXPLANATION_ATTACKS.register("ifia", config=IFIAConfig, meta=IFIA_INFO,
                              summary="Untargeted (Ghorbani IFIA): top-k, centre of mass or random; label kept")
def ifia(model: nn.Module, images: torch.Tensor, cfg: IFIAConfig, labels: torch.Tensor | None = None,
         progress: Progress | None = None) -> Result:
    """Push each image's map away from its own, within an L∞ ε-ball, keeping the prediction.

    ``labels`` are the predictions to keep (default: the model's predictions on ``images``).
    Per image, the iterate kept is the one with the lowest ``measure`` score among those whose
    prediction equals the original, over all steps and restarts.

    ``extra["trajectory"]`` records every step's iterate, measured on the original model:
    ``step`` (0 = the clean image; restarts continue the count), the ``measure`` (its value, e.g. the
    centre-of-mass shift in pixels), ``explanation_loss`` to the original map and ``label_kept``;
    each is a list over steps of per-image lists. ``progress(done, total)`` is called after each step.
    """
    started = time.perf_counter()
    x = images.detach()
    pixels = x.shape[-2] * x.shape[-1]
    _check_k(cfg.k, pixels, "k")
    _check_k(cfg.eval_k, pixels, "eval_k")
    with eval_mode(model):
        net, view_note = attack_view(model, x, cfg.beta)
        given = None if labels is None else labels.to(x.device)
        # without labels the predictions to keep come from the original map's own forward pass
        original, clean_logits = _maps_and_logits(model, x, given, cfg)
        keep = clean_logits.argmax(1) if given is None else given
        mask = torch.zeros_like(original.flatten(1), dtype=torch.bool)
        mask.scatter_(1, original.flatten(1).topk(cfg.k, dim=1).indices, True)
        centre = center_of_mass(original)
        gen = torch.Generator().manual_seed(cfg.seed)

        best_score = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=torch.float64)
        best_x, best_map = x.clone(), original.clone()
        sign = 1.0 if higher_is_robust(cfg.measure) else -1.0  # a distance's score is minus the distance
        kept0 = clean_logits.argmax(1) == keep
        # recorded as float32 device tensors, read back once at the end (no per-step synchronisation)
        score_of = _lower_is_stronger(cfg.measure, original, cfg.k)
        rec_score = [sign * score_of(original).float()]
        rec_loss = [explanation_loss(original, original).float()]
        rec_kept = [kept0]
        total, done = cfg.steps * cfg.restarts, 0
        for _ in range(cfg.restarts):
            x_adv = x.clone()
            if cfg.random_start:
                x_adv = (x + (torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device) * 2 - 1) * cfg.eps).clamp(0, 1)
            for _ in range(cfg.steps):
                raise_if_cancelled("IFIA")
                if cfg.objective == "random":
                    direction = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
                else:
                    x_req = x_adv.detach().requires_grad_(True)
                    current = _maps(net, x_req, keep, cfg, create_graph=True)
                    if cfg.objective == "topk":
                        objective = (current.flatten(1) * mask).sum(1)  # mass left on the original top-k
                    else:
                        objective = -(center_of_mass(current) - centre).pow(2).sum(1)
                    (grad,) = torch.autograd.grad(objective.sum(), x_req)
                    direction = -grad
                with torch.no_grad():
                    candidate = (x + (x_adv + cfg.step_size * direction.sign() - x).clamp(-cfg.eps, cfg.eps)).clamp(0, 1)
                # one forward pass gives the candidate's label check and its map (on the original model)
                candidate_map, candidate_logits = _maps_and_logits(model, candidate, keep, cfg)
                kept = candidate_logits.argmax(1) == keep
                score = score_of(candidate_map).to(torch.float64)
                rec_score.append(sign * score.float())
                rec_loss.append(explanation_loss(original, candidate_map).float())
                rec_kept.append(kept)
                better = kept & (score < best_score)
                best_score = torch.where(better, score, best_score)
                best_x = torch.where(_mask(better, x), candidate, best_x)
                best_map = torch.where(_mask(better, best_map), candidate_map, best_map)
                if cfg.on_label_flip == "rollback":
                    x_adv = torch.where(_mask(kept, x), candidate, x_adv)
                else:
                    x_adv = candidate
                done += 1
                if progress is not None:
                    progress(done, total)

        attacked = torch.isfinite(best_score)
        # no pass over the kept iterates: their maps were computed when they were scored (a map is the same bits
        # in any batch), their prediction is the kept label, and an image never attacked keeps its clean ones
        final = best_map
        final_pred = torch.where(attacked, keep, clean_logits.argmax(1))
        if cfg.report_explainer is not None:  # the metrics compare maps of another method (ART's protocol)
            report = _ExplainerChoice.model_construct(explainer=cfg.report_explainer,
                                                      explainer_options=cfg.report_explainer_options)
            original, final = _maps(model, x, keep, report), _maps(model, best_x, keep, report)
    metrics = _apply_policy({
        "topk_intersection": topk_intersection(original, final, cfg.eval_k),
        "kendall_tau": kendall_tau(original, final),
        "spearman_rho": spearman_rho(original, final),
        "center_of_mass_shift": center_of_mass_shift(original, final),
        "explanation_loss": explanation_loss(original, final),
    }, attacked, cfg.unattackable)
    per_image = {"label": keep, "final_pred": final_pred, "attacked": attacked,
                 "linf": (best_x - x).flatten(1).abs().amax(1), **metrics}
    summary = attack_summary("ifia", per_image, cfg.seed)
    config = {"attack": "ifia", **cfg.model_dump(mode="json"), "attack_model": view_note}
    trajectory = {"step": list(range(len(rec_score))), cfg.measure: torch.stack(rec_score).tolist(),
                  "explanation_loss": torch.stack(rec_loss).tolist(), "label_kept": torch.stack(rec_kept).tolist()}
    return Result(kind="explanation_attack/ifia", config=config, per_image=per_image, summary=summary,
                  extra={"trajectory": trajectory},
                  tensors={"adversarial": best_x, "original_map": original, "attacked_map": final},
                  seconds=time.perf_counter() - started)


# --------------------------------------------------------------------------- targeted (Dombrowski)


def _describe_targeted(t: dict[str, Any], evaluation: dict[str, Any]) -> str:
    pairs = Path(str(evaluation["pairs_file"])).name if evaluation.get("pairs_file") else "fresh Way2 pairs"
    return (f"targeted attack on {t.get('explainer', '?')}, {t.get('steps', '?')} steps, "
            f"{evaluation.get('n_explanation_images', '?')} pairs ({pairs})")


def _has_space_option(settings: dict[str, Any]) -> bool:
    """Whether the settings' explainer has a ``space`` option (pixel or the model's input space)."""
    explainer = settings.get("explainer", "gradient")
    return (isinstance(explainer, str) and explainer in EXPLAINERS
            and "space" in EXPLAINERS.get(explainer).config.model_fields)


def _pixel_space_before_the_option(t: dict[str, Any]) -> dict[str, Any]:
    """Settings stored before maps defaulted to the model's input space were computed in pixel space."""
    options = t.get("explainer_options") or {}
    if _has_space_option(t) and "space" not in options:
        return {**t, "explainer_options": {**options, "space": "pixel"}}
    return t


def _pixel_space_unhashed(t: dict[str, Any]) -> dict[str, Any]:
    options = t.get("explainer_options") or {}
    if options.get("space") == "pixel":
        return {**t, "explainer_options": {k: v for k, v in options.items() if k != "space"}}
    return t


TARGETED_INFO = AttackInfo(
    summarised=("explanation_loss_start", "explanation_loss_end", "explanation_loss_start_paper",
                "explanation_loss_end_paper"),
    columns=(Column("explanation_loss_start_paper", "L_e start (×10⁻⁷)"),
             Column("explanation_loss_end_paper", "L_e end (×10⁻⁷)")),
    measures=(
        ExplanationMeasure("le_end", "L_e end ×10⁻⁷", "explanation_loss_end_paper", True,
                           "explanation loss to the target's map after the targeted attack (the paper's measure; "
                           "higher = the attack got less close = more robust)"),
        ExplanationMeasure("le_start", "L_e start ×10⁻⁷", "explanation_loss_start_paper", True,
                           "explanation loss to the target's map before the attack (how far apart the two maps "
                           "start)"),
        ExplanationMeasure("le_retained", "L_e end / L_e start",
                           "explanation_loss_end_paper/explanation_loss_start_paper", True,
                           "mean L_e end over mean L_e start: the fraction of the starting distance the attack left "
                           "(removes the effect of the starting distance the paper warns about)"),
    ),
    curves={"output_drift": "max |Δ softmax| to the original"},
    describe=_describe_targeted,
    stored_defaults=_pixel_space_before_the_option,
    unhashed=_pixel_space_unhashed,
)


@EXPLANATION_ATTACKS.register("targeted", config=TargetedConfig, tags=(NEEDS_TARGETS,), meta=TARGETED_INFO,
                              summary="Targeted (Dombrowski): map toward a target image's map, output kept")
def targeted(model: nn.Module, images: torch.Tensor, cfg: TargetedConfig, labels: torch.Tensor | None = None,
             target_images: torch.Tensor | None = None, progress: Progress | None = None) -> Result:
    """Minimise ``expl_weight·MSE(m(x'), m(x_t)) + output_weight·MSE(softmax f(x'), softmax f(x))``.

    Adam on the input with β grown geometrically from ``beta_start`` to ``beta_end`` on the
    softplus view; pixels clamped to [0, 1] (and to the ε-ball if ``eps``). L_e start/end and the
    recorded trajectory are measured on the original model; the target's map is its explanation
    for its own predicted class. ``progress(done, steps)`` is called after each Adam step.
    """
    if target_images is None or target_images.shape != images.shape:
        raise ValueError("the targeted attack needs one target image per victim image, of the same shape")
    started = time.perf_counter()
    x = images.detach()
    with eval_mode(model):
        net, view_note = attack_view(model, x, cfg.beta_start)
        with torch.no_grad():
            logits = model(x)
            keep = logits.argmax(1) if labels is None else labels.to(x.device)
            p0 = torch.softmax(logits, 1)
            target_pred = model(target_images).argmax(1)
        target_map = _maps(model, target_images.detach(), target_pred, cfg).detach()
        start_map = _maps(model, x, keep, cfg).detach()
        le_start = explanation_loss(start_map, target_map)

        x_adv = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([x_adv], lr=cfg.lr)
        betas = beta_schedule(cfg.beta_start, cfg.beta_end, cfg.steps)
        # recorded as device tensors and read back once at the end (no per-step synchronisation)
        trajectory: dict[str, list] = {"step": [], "explanation_loss": [], "output_drift": [], "label_kept": []}
        best_le = torch.full_like(le_start, float("inf"), dtype=torch.float64)
        best_x = x.clone()

        def record(step: int, candidate: torch.Tensor) -> None:
            nonlocal best_le, best_x
            candidate_map, logits = _maps_and_logits(model, candidate, keep, cfg)  # one forward pass
            probs = torch.softmax(logits, 1)
            le = explanation_loss(candidate_map, target_map).to(torch.float64)
            kept = probs.argmax(1) == keep
            trajectory["step"].append(step)
            trajectory["explanation_loss"].append(le)
            trajectory["output_drift"].append((probs - p0).abs().amax(1))
            trajectory["label_kept"].append(kept)
            better = kept & (le < best_le) if cfg.keep == "best" else torch.ones_like(kept)
            best_le = torch.where(better, le, best_le)
            best_x = torch.where(_mask(better, x), candidate, best_x)

        record(0, x)
        for step, beta in enumerate(betas, start=1):
            raise_if_cancelled("targeted attack")
            if hasattr(net, "beta"):
                net.beta = beta
            opt.zero_grad(set_to_none=True)
            maps, logits = _maps_and_logits(net, x_adv, keep, cfg, create_graph=True)  # one forward for both terms
            out = torch.softmax(logits, 1)
            loss = cfg.expl_weight * explanation_loss(maps, target_map) + cfg.output_weight * (out - p0).pow(2).mean(1)
            # per-image terms: Adam's elementwise steps keep the images independent; only the images get a
            # gradient (not the model's parameters, BatchNorm's included: a shared model stays clean)
            loss.sum().backward(inputs=[x_adv])
            opt.step()
            with torch.no_grad():
                if cfg.eps is not None:
                    x_adv.copy_(x + (x_adv - x).clamp(-cfg.eps, cfg.eps))
                x_adv.clamp_(0, 1)
            if step % cfg.record_every == 0 or step == cfg.steps:
                record(step, x_adv.detach().clone())
            if progress is not None:
                progress(step, cfg.steps)

        final = best_x
        kept_any = torch.stack(trajectory["label_kept"][1:]).any(0)  # any recorded step
        final_map, final_logits = _maps_and_logits(model, final, keep, cfg)
        final_pred = final_logits.argmax(1)
        le_end = explanation_loss(final_map, target_map)
        trajectory = {key: values if key == "step" else torch.stack(values).tolist()
                      for key, values in trajectory.items()}
    attacked = kept_any & (final_pred == keep)
    metrics = _apply_policy({"explanation_loss_end": le_end, "explanation_loss_end_paper": in_paper_units(le_end)},
                            attacked, cfg.unattackable)
    per_image = {
        "label": keep, "target_label": target_pred, "final_pred": final_pred, "attacked": attacked,
        "explanation_loss_start": le_start, "explanation_loss_start_paper": in_paper_units(le_start), **metrics,
        "linf": (final - x).flatten(1).abs().amax(1),
    }
    summary = attack_summary("targeted", per_image, cfg.seed)
    config = {"attack": "targeted", **cfg.model_dump(mode="json"), "attack_model": view_note}
    return Result(kind="explanation_attack/targeted", config=config, per_image=per_image, summary=summary,
                  extra={"trajectory": trajectory},
                  tensors={"adversarial": final, "original_map": start_map, "attacked_map": final_map,
                           "target_map": target_map}, seconds=time.perf_counter() - started)


def run_explanation_attack(model: nn.Module, images: torch.Tensor, name: str = "ifia", *,
                           config: dict | Config | None = None, labels: torch.Tensor | None = None,
                           target_images: torch.Tensor | None = None, progress: Progress | None = None,
                           batch_size: int | None = None, **options) -> Result:
    """Validate the config of attack ``name`` and run it on a batch (targets for ``targeted``), in batches that
    fit the memory.

    ``progress(done, total)``, if given, is called after every step of the attack (for progress bars); when the
    images run in several batches, ``total`` is images × steps and ``done`` counts image-steps.
    ``batch_size`` (images per run of the attack) defaults on the CPU to a cap from the model's size and the
    explainer's cost (:func:`batching.start_batch_size`) and on an accelerator to all images; a batch that runs
    out of accelerator memory is halved and retried (:func:`batching.map_batches`). Deterministic attacks give
    the same results for any batching; random starts and directions are drawn per batch.

    Args:
        model: pixels in ``[0, 1]`` → logits; images ``(N, C, H, W)``; name: ``ifia`` or ``targeted``.
        config / options: the attack's settings (explainer, ε, steps, …), validated; labels: the predictions
            to keep (default: the model's); target_images: the maps to drive toward (targeted attacks).

    Returns:
        A :class:`~explrobust_core.results.Result` with per-image metrics, a summary and the adversarial images.

    Example:
        >>> r = run_explanation_attack(model, x, "ifia", config={"eps": 0.1, "steps": 20})
        >>> r.summary["n_attacked"]  # doctest: +SKIP
    """
    entry = EXPLANATION_ATTACKS.get(name)
    cfg = entry.resolve(config, **options)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    targets_needed = NEEDS_TARGETS in entry.tags
    if not targets_needed and target_images is not None:
        raise ValueError(f"attack {name!r} is untargeted; use one of {', '.join(targeted_attacks())} to attack "
                         "toward target images")

    def attack(x, y, targets, report):
        if targets_needed:
            return entry.obj(model, x, cfg, labels=y, target_images=targets, progress=report)
        return entry.obj(model, x, cfg, labels=y, progress=report)

    if target_images is not None and target_images.shape != images.shape:
        raise ValueError("the targeted attack needs one target image per victim image, of the same shape")
    if images.shape[0] == 0:
        return attack(images, labels, target_images, progress)
    size = batch_size or _attack_batch_size(model, images, cfg)
    return _attack_in_batches(attack, images, labels, target_images, size, progress, cfg)


def _attack_batch_size(model: nn.Module, images: torch.Tensor, cfg: Config) -> int:
    """All images on an accelerator (halved there if they do not fit); on the CPU the model's cap divided by
    the explainer's inputs per image, twice: an attack step keeps the graph of the map's own backward pass."""
    from ..batching import start_batch_size
    from ..explain import inputs_per_image

    if next(model.parameters()).device.type != "cpu":
        return images.shape[0]
    explainer = getattr(cfg, "explainer", "gradient")
    cost = 2 * inputs_per_image(explainer, getattr(cfg, "explainer_options", None))
    return start_batch_size(model, images[0].numel(), cost, images.shape[0])


def _attack_in_batches(attack, images, labels, target_images, size: int, progress: Progress | None,
                       cfg: Config) -> Result:
    """``attack`` over ``[start, stop)`` batches of the images, joined into one result; a single batch's result
    is the attack's own. Progress counts steps in one batch, image-steps in several, and never moves backwards
    when a batch is retried smaller."""
    from ..batching import map_batches
    from ..results import concat_per_image

    started, n, shown = time.perf_counter(), images.shape[0], [0.0]

    def run(start: int, stop: int) -> Result:
        def report(done: int, total: int) -> None:
            whole = (done, total) if stop - start == n else (start * total + (stop - start) * done, n * total)
            if progress is not None and whole[0] / max(whole[1], 1) > shown[0]:
                shown[0] = whole[0] / max(whole[1], 1)
                progress(*whole)

        return attack(images[start:stop], None if labels is None else labels[start:stop],
                      None if target_images is None else target_images[start:stop], report)

    parts = map_batches(run, n, size)
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    per_image = concat_per_image(parts)
    kind = first.kind.rsplit("/", 1)[-1]
    summarised = kind in EXPLANATION_ATTACKS.names() and attack_info(kind).summarised
    summary = attack_summary(kind, per_image, getattr(cfg, "seed", 0)) if summarised else first.summary
    trajectory = first.extra.get("trajectory")
    extra = dict(first.extra)
    if trajectory is not None:  # per step: one list over all images
        extra["trajectory"] = {key: values if key == "step" else
                               [[v for part in parts for v in part.extra["trajectory"][key][i]]
                                for i in range(len(values))] for key, values in trajectory.items()}
    tensors = {key: None if value is None else torch.cat([part.tensors[key] for part in parts])
               for key, value in first.tensors.items()}
    return Result(kind=first.kind, config=first.config, per_image=per_image, summary=summary, extra=extra,
                  tensors=tensors, seconds=time.perf_counter() - started)
