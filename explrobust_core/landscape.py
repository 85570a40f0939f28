"""Input loss landscapes (1D/2D) for the classification loss and the explanation loss, and curvature.

A landscape evaluates ``loss(x + a·d₁ [+ b·d₂])`` on a grid of (a, b) in pixel units. Directions
have unit L∞ norm per pixel where they are sign vectors, so a = ε is an L∞ step of ε:

* ``random`` — a Rademacher (±1) vector, the paper's random direction;
* ``adversarial`` — sign of ∇ₓ CE (the FGSM direction);
* ``explanation`` — sign of the gradient that moves map mass off the top-k pixels (the first
  step of the top-k explanation attack, on the Softplus view).

In 2D, d₂ is a random direction made orthogonal to d₁ (per image, in L2) and scaled to d₁'s L2
norm. Grid points are not clipped to [0, 1]: clipping would bend the directions. The explanation
loss is measured either as the change from the clean map, L_e(m(x'), m(x)), or as the distance to
a target image's map, L_e(m(x'), m(x_t)). The whole grid of all images runs in memory-bounded
batches; the number of points per image is odd so the centre is exactly the clean input.

Curvature summaries (mean |Δloss| in an L∞ ball, Hutchinson trace, top Hessian eigenvalue by power
iteration) use Hessian-vector products on the Softplus view, where the ReLU Hessian does not vanish.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from .explain import EXPLAINERS, attribute, explanation_maps
from .metrics import attribution_to_map, explanation_loss
from .models import device_of, eval_mode, softplus_view
from .registry import Config, resolve_config
from .results import Result

LossName = Literal["ce", "explanation_change", "explanation_target"]


class LandscapeConfig(Config):
    dims: Literal[1, 2] = Field(1, description="a 1D curve or a 2D surface")
    direction: Literal["random", "adversarial", "explanation"] = Field(
        "random", description="the first axis (in 2D the second axis is random, orthogonalised)")
    radius: float = Field(0.3, gt=0, le=2, description="axes run over [−radius, radius] in pixel units")
    points: int = Field(41, ge=3, le=101, description="grid points per axis (odd: the centre is the clean input)")
    losses: list[LossName] = Field(["ce", "explanation_change"], min_length=1, max_length=3, description="losses to evaluate")
    explainer: str = Field("gradient_x_input", description="explanation method of the explanation losses")
    explainer_options: dict[str, Any] = Field(default_factory=dict, description="options of that method")
    k: int = Field(100, ge=1, le=1_000_000, description="top-k size of the explanation direction")
    beta: float = Field(10.0, gt=0, le=1e4, description="softplus β for the explanation direction")
    batch_size: int = Field(1024, ge=1, le=65536, description="grid points per forward pass (memory bound)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the random direction")

    @model_validator(mode="after")
    def _checks(self) -> "LandscapeConfig":
        if self.points % 2 == 0:
            raise ValueError("points must be odd so that the grid's centre is the clean input")
        if "differentiable" not in EXPLAINERS.get(self.explainer).tags:
            raise ValueError(f"explainer {self.explainer!r} is display-only; use a differentiable one")
        EXPLAINERS.get(self.explainer).make_config(self.explainer_options)
        return self


class CurvatureConfig(Config):
    """Options of :func:`curvature_summary` (the ``curvature`` command): capped like every other config."""

    radius: float = Field(0.1, gt=0, le=2, description="L∞ radius of the mean |Δloss|")
    beta: float = Field(10.0, gt=0, le=1e4, description="softplus β of the view the Hessian is taken on")
    explainer: str = Field("gradient_x_input", description="explanation method of the explanation loss")
    n_samples: int = Field(32, ge=1, le=1024, description="random probes (mean |Δloss| and Hutchinson)")
    iterations: int = Field(30, ge=1, le=1000, description="power-iteration steps of the top eigenvalue")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the probes")

    @model_validator(mode="after")
    def _differentiable(self) -> "CurvatureConfig":
        if "differentiable" not in EXPLAINERS.get(self.explainer).tags:
            raise ValueError(f"explainer {self.explainer!r} is display-only; use a differentiable one")
        return self


# --------------------------------------------------------------------------- directions


def random_direction(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    signs = torch.randint(0, 2, x.shape, generator=generator, dtype=torch.int64).to(x.device)
    return (2 * signs - 1).to(x.dtype)


def adversarial_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    return g.sign()


def explanation_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LandscapeConfig) -> torch.Tensor:
    """−sign ∇ₓ (map mass on the clean top-k pixels), on the Softplus view."""
    with torch.no_grad():
        clean = _landscape_maps(model, x, y, cfg)
    k = min(cfg.k, clean[0].numel())
    mask = torch.zeros_like(clean.flatten(1)).scatter_(1, clean.flatten(1).topk(k, 1).indices, 1.0)
    xr = x.detach().requires_grad_(True)
    smooth = softplus_view(model, cfg.beta)
    m = attribution_to_map(attribute(smooth, xr, cfg.explainer, target=y, create_graph=True,
                                     config=cfg.explainer_options))
    (g,) = torch.autograd.grad((m.flatten(1) * mask).sum(), xr)
    return -g.sign()


def orthogonal_like(d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """d₂ minus its projection on d₁, scaled to d₁'s L2 norm (per image)."""
    a, b = d1.flatten(1), d2.flatten(1)
    b = b - (a * b).sum(1, keepdim=True) / (a * a).sum(1, keepdim=True).clamp_min(1e-12) * a
    b = b * a.norm(dim=1, keepdim=True) / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return b.view_as(d2)


def directions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LandscapeConfig) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.direction == "random":
        first = random_direction(x, gen)
    elif cfg.direction == "adversarial":
        first = adversarial_direction(model, x, y)
    else:
        first = explanation_direction(model, x, y, cfg)
    if cfg.dims == 1:
        return [first]
    return [first, orthogonal_like(first, random_direction(x, gen))]


# --------------------------------------------------------------------------- grid evaluation


def _landscape_maps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LandscapeConfig) -> torch.Tensor:
    """The landscape's explainer's maps of class ``y``, detached (a grid point is never differentiated)."""
    return explanation_maps(model, x, cfg.explainer, target=y, config=cfg.explainer_options).detach()


def grid_axes(cfg: LandscapeConfig, dtype=torch.float32) -> torch.Tensor:
    return torch.linspace(-cfg.radius, cfg.radius, cfg.points, dtype=dtype)


def share_outside_unit_box(x: torch.Tensor, dirs: list[torch.Tensor], cfg: LandscapeConfig) -> torch.Tensor:
    """Per image, the share of grid points x + Σ cᵢ·dᵢ with a pixel outside [0, 1]: the grid is not clipped (that
    would bend the directions), so this says how much of a landscape lies outside the valid images."""
    axis = grid_axes(cfg, x.dtype).to(x.device)
    coeffs = axis[:, None] if cfg.dims == 1 else torch.cartesian_prod(axis, axis)  # (G, dims)
    flat = x.flatten(1)
    basis = torch.stack([d.flatten(1) for d in dirs], 1)  # (N, dims, P)
    outside = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for chunk in coeffs.split(256):
        points = flat[:, None, :] + torch.einsum("gk,nkp->ngp", chunk, basis)
        outside += ((points < 0) | (points > 1)).any(2).sum(1)
    return outside / coeffs.shape[0]


def _grid_losses(model, x, y, dirs, cfg: LandscapeConfig, clean_maps, target_maps) -> dict[str, torch.Tensor]:
    """Every loss at every grid point of every image, in chunks of ``batch_size`` points."""
    axis = grid_axes(cfg, x.dtype).to(x.device)
    coeffs = axis[:, None] if cfg.dims == 1 else torch.cartesian_prod(axis, axis)  # (G, dims)
    g, n = coeffs.shape[0], x.shape[0]
    out = {name: torch.empty(n * g, dtype=torch.float64, device=x.device) for name in cfg.losses}
    for start in range(0, n * g, cfg.batch_size):
        rows = torch.arange(start, min(n * g, start + cfg.batch_size), device=x.device)
        img, pt = rows // g, rows % g
        shift = sum(coeffs[pt, j].view(-1, *([1] * (x.ndim - 1))) * dirs[j][img] for j in range(cfg.dims))
        points = x[img] + shift
        need_maps = any(name != "ce" for name in cfg.losses)
        with torch.no_grad():
            logits = model(points)
        maps = _landscape_maps(model, points, y[img], cfg) if need_maps else None
        for name in cfg.losses:
            if name == "ce":
                value = F.cross_entropy(logits, y[img], reduction="none")
            elif name == "explanation_change":
                value = explanation_loss(maps, clean_maps[img])
            else:
                value = explanation_loss(maps, target_maps[img])
            out[name][rows] = value.detach().to(torch.float64)
    shape = (n, cfg.points) if cfg.dims == 1 else (n, cfg.points, cfg.points)
    return {name: v.view(shape) for name, v in out.items()}


def plane_coordinates(x: torch.Tensor, points: torch.Tensor, dirs: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares (a, b) of ``points − x`` in the span of the directions, per image (e.g. attack ends)."""
    basis = torch.stack([d.flatten(1) for d in dirs], dim=2).to(torch.float64)  # (N, D, dims)
    delta = (points - x).flatten(1).to(torch.float64)[:, :, None]
    return torch.linalg.lstsq(basis, delta).solution.squeeze(2)


def input_landscape(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: LandscapeConfig | dict | None = None,
                    *, target_images: torch.Tensor | None = None, attack_points: torch.Tensor | None = None,
                    **options) -> Result:
    """The landscape of each image and its mean over the images (``extra["mean"]``).

    Args:
        model: pixels in ``[0, 1]`` → logits; images ``(N, C, H, W)``, labels ``(N,)``.
        config / options: a :class:`LandscapeConfig` (dims, direction, radius, points, losses, explainer, …).
        target_images: one per image, for the ``explanation_target`` loss; attack_points: perturbed images to
            project into the plotted axes.

    Returns:
        A :class:`~explrobust_core.results.Result`: ``extra["axis"]``, ``extra["mean"]`` (loss → grid) and the
        per-image grids.

    Example:
        >>> r = input_landscape(model, x[:4], y[:4], dims=1, direction="adversarial", radius=0.3, points=21)
        >>> len(r.extra["axis"])
        21
    """
    cfg = resolve_config(LandscapeConfig, config, **options)
    if "explanation_target" in cfg.losses and (target_images is None or target_images.shape != images.shape):
        raise ValueError("the explanation_target loss needs one target image per image")
    started = time.perf_counter()
    x, y = images.detach(), labels.to(images.device)
    with eval_mode(model):
        dirs = directions(model, x, y, cfg)
        clean_maps = _landscape_maps(model, x, y, cfg) if any(n != "ce" for n in cfg.losses) else None
        target_maps = None
        if target_images is not None:
            with torch.no_grad():
                t_pred = model(target_images).argmax(1)
            target_maps = _landscape_maps(model, target_images.detach(), t_pred, cfg)
        grids = _grid_losses(model, x, y, dirs, cfg, clean_maps, target_maps)
    centre = cfg.points // 2
    clean = {name: (v[:, centre] if cfg.dims == 1 else v[:, centre, centre]) for name, v in grids.items()}
    extra: dict[str, Any] = {
        "axis": grid_axes(cfg).tolist(),
        "mean": {name: v.mean(0) for name, v in grids.items()},
        "grids": grids,
        "direction_linf": [d.flatten(1).abs().amax(1) for d in dirs],
        "direction_l2": [d.flatten(1).norm(dim=1) for d in dirs],
    }
    if attack_points is not None:
        extra["attack_coordinates"] = plane_coordinates(x, attack_points, dirs)
    outside = share_outside_unit_box(x, dirs, cfg)
    extra["share_outside_unit_box"] = float(outside.mean())
    per_image = {"label": y, "share_outside_unit_box": outside, **{f"clean_{name}": v for name, v in clean.items()},
                 **{f"mean_abs_delta_{name}": (v - _expand(clean[name], v)).abs().flatten(1).mean(1)
                    for name, v in grids.items()}}
    summary = {name: {"clean": float(clean[name].mean()), "mean_abs_delta": float(per_image[f"mean_abs_delta_{name}"].mean()),
                      "max": float(grids[name].flatten(1).amax(1).mean())} for name in grids}
    return Result(kind=f"landscape/{cfg.dims}d", config=cfg.model_dump(mode="json"), per_image=per_image,
                  summary=summary, extra=extra, tensors={"directions": torch.stack(dirs, 1)},
                  seconds=time.perf_counter() - started)


def _expand(clean: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return clean.view(-1, *([1] * (grid.ndim - 1)))


# --------------------------------------------------------------------------- curvature


LossFn = Callable[[torch.Tensor], torch.Tensor]


def ce_loss_fn(model: nn.Module, labels: torch.Tensor) -> LossFn:
    """Per-image cross-entropy as a function of the input rows (labels repeat over samples)."""
    return lambda x: F.cross_entropy(model(x), labels.repeat(x.shape[0] // labels.shape[0]), reduction="none")


def explanation_change_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, explainer: str = "gradient_x_input",
                          **options) -> LossFn:
    """Per-image L_e(m(x'), m(x)) as a differentiable function of x' (maps with create_graph)."""
    clean = attribution_to_map(attribute(model, images, explainer, target=labels, config=options)).detach()

    def fn(x: torch.Tensor) -> torch.Tensor:
        reps = x.shape[0] // labels.shape[0]
        m = attribution_to_map(attribute(model, x, explainer, target=labels.repeat(reps), create_graph=True, config=options))
        return explanation_loss(m, clean.repeat(reps, 1, 1))

    return fn


def _hvp(loss_fn: LossFn, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss_fn(xr).sum(), xr, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), xr)
    return hv


def hutchinson_trace(loss_fn: LossFn, x: torch.Tensor, n_samples: int = 64, *, seed: int = 0,
                     batch_size: int = 256) -> torch.Tensor:
    """E[vᵀHv] with Rademacher v, per image: an unbiased estimate of the input Hessian's trace.

    Images and samples are stacked into batches of rows (row = sample·N + image); ``loss_fn``
    maps rows to per-row losses, so each row's Hessian is its own block.
    """
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    total = torch.zeros(n, dtype=torch.float64, device=x.device)
    per_chunk = max(1, batch_size // n)
    for start in range(0, n_samples, per_chunk):
        s = min(per_chunk, n_samples - start)
        rows = x.repeat(s, *([1] * (x.ndim - 1)))
        v = (2 * torch.randint(0, 2, rows.shape, generator=gen) - 1).to(x.dtype).to(x.device)
        quad = (v * _hvp(loss_fn, rows, v)).flatten(1).sum(1).to(torch.float64)
        total += quad.view(s, n).sum(0)
    return total / n_samples


def top_eigenvalue(loss_fn: LossFn, x: torch.Tensor, iterations: int = 50, *, seed: int = 0,
                   tol: float = 1e-6) -> torch.Tensor:
    """The input Hessian's largest-magnitude eigenvalue per image, by power iteration on HVPs."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    v = v / v.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))
    eig = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(iterations):
        hv = _hvp(loss_fn, x, v)
        new = (v * hv).flatten(1).sum(1).to(torch.float64)  # Rayleigh quotient (‖v‖ = 1)
        norm = hv.flatten(1).norm(dim=1).clamp_min(1e-30)
        v = hv / norm.view(-1, *([1] * (x.ndim - 1)))
        done = bool(((new - eig).abs() <= tol * new.abs().clamp_min(1e-12)).all())
        eig = new
        if done:
            break
    return eig


def mean_abs_delta(loss_fn: LossFn, x: torch.Tensor, radius: float, n_samples: int = 32, *, seed: int = 0,
                   batch_size: int = 1024) -> torch.Tensor:
    """Mean |loss(x+δ) − loss(x)| over δ uniform in the L∞ ball of ``radius``, per image."""
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    with torch.no_grad():
        base = loss_fn(x).to(torch.float64)
    total = torch.zeros(n, dtype=torch.float64, device=x.device)
    per_chunk = max(1, batch_size // n)
    for start in range(0, n_samples, per_chunk):
        s = min(per_chunk, n_samples - start)
        rows = x.repeat(s, *([1] * (x.ndim - 1)))
        delta = ((torch.rand(rows.shape, generator=gen, dtype=x.dtype) * 2 - 1) * radius).to(x.device)
        values = loss_fn(rows + delta).detach().to(torch.float64).view(s, n)
        total += (values - base).abs().sum(0)
    return total / n_samples


def curvature_summary(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, radius: float = 0.1,
                      beta: float = 10.0, explainer: str = "gradient_x_input", n_samples: int = 32,
                      iterations: int = 30, seed: int = 0) -> Result:
    """Mean |Δloss|, Hutchinson trace and top eigenvalue for CE and the explanation-change loss."""
    started = time.perf_counter()
    x, y = images.detach(), labels.to(images.device)
    with eval_mode(model):
        smooth = softplus_view(model, beta)
        per_image: dict[str, Any] = {"label": y}
        for name, fn in (("ce", ce_loss_fn(smooth, y)), ("explanation_change", explanation_change_fn(smooth, x, y, explainer))):
            per_image[f"{name}_mean_abs_delta"] = mean_abs_delta(fn, x, radius, n_samples, seed=seed)
            per_image[f"{name}_hessian_trace"] = hutchinson_trace(fn, x, n_samples, seed=seed)
            per_image[f"{name}_top_eigenvalue"] = top_eigenvalue(fn, x, iterations, seed=seed)
    summary = {k: float(v.mean()) for k, v in per_image.items() if k != "label"}
    return Result(kind="curvature", config={"radius": radius, "beta": beta, "explainer": explainer,
                                            "n_samples": n_samples, "iterations": iterations, "seed": seed},
                  per_image=per_image, summary=summary, seconds=time.perf_counter() - started)


# --------------------------------------------------------------------------- attack endpoints and one-call report


def attack_endpoints(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, landscape: Result,
                     endpoints: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Where attack endpoints lie relative to a landscape computed on ``images``.

    Per attack and image: ``coordinates`` (the least-squares position in the landscape's line or
    plane, in its axis units), ``in_plane`` (the share ‖projection‖/‖perturbation‖ of the
    perturbation that lies in it: near 1 means the marker is where the attack really went), and
    the endpoint's true losses ``ce`` and ``explanation_change`` (L_e to the clean map).
    """
    cfg = LandscapeConfig(**landscape.config)
    dirs = list(landscape.tensors["directions"].unbind(1))
    x, y = images.detach(), labels.to(images.device)
    out: dict[str, dict[str, torch.Tensor]] = {}
    with eval_mode(model):
        clean_maps = _landscape_maps(model, x, y, cfg)
        for name, points in endpoints.items():
            points = points.detach().to(x.device)
            coords = plane_coordinates(x, points, dirs)
            basis = torch.stack([d.flatten(1) for d in dirs], dim=2).to(torch.float64)
            projected = (basis @ coords[:, :, None]).squeeze(2)
            delta = (points - x).flatten(1).to(torch.float64)
            with torch.no_grad():
                ce = F.cross_entropy(model(points), y, reduction="none")
            change = explanation_loss(_landscape_maps(model, points, y, cfg), clean_maps)
            out[name] = {"coordinates": coords, "in_plane": projected.norm(dim=1) / delta.norm(dim=1).clamp_min(1e-12),
                         "ce": ce.detach().to(torch.float64), "explanation_change": change.detach().to(torch.float64)}
    return out


def landscape_report(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     config: LandscapeConfig | dict | None = None, *, dims: tuple[int, ...] = (1, 2),
                     points_2d: int | None = None, target_images: torch.Tensor | None = None, attack_eps: float = 0.1,
                     pgd_steps: int = 20, ifia_steps: int = 0, curvature: bool = True, curvature_samples: int = 16,
                     curvature_iterations: int = 20, on_view: Callable[[str, dict[str, Any]], None] | None = None,
                     **options) -> Result:
    """Everything the loss-landscape view shows for one model, in one result.

    The 1D curves (``config.points`` per axis) and the 2D surfaces (``points_2d`` per axis) share the
    first direction (same seed), so the 1D curve is the b = 0 line of the surface. Attack endpoints
    (PGD L∞ at ``attack_eps`` when ``pgd_steps`` > 0, the IFIA top-k explanation attack when
    ``ifia_steps`` > 0) are projected into each view; curvature numbers use ``attack_eps`` as radius.
    ``extra[f"{d}d"]`` holds ``axis``, ``mean`` (loss → grid averaged over the images), ``grids``
    (per image) and ``endpoints``; ``summary`` the clean losses, endpoint losses and curvature.
    ``on_view("1d" | "2d", view)`` is called as soon as each of those views is done (the 1D curves come before
    the 2D surface and the curvature numbers): a caller can show them while the rest is computed.
    """
    from .attacks.classification import pgd_perturb
    from .attacks.explanation import run_explanation_attack

    base = resolve_config(LandscapeConfig, config, **options)
    if not dims or any(d not in (1, 2) for d in dims):
        raise ValueError(f"dims must be a non-empty subset of (1, 2), got {dims}")
    cfgs = {d: resolve_config(LandscapeConfig, base, dims=d,
                              points=base.points if d == 1 or points_2d is None else points_2d) for d in dims}
    if not 0 < attack_eps <= 1:
        raise ValueError(f"attack_eps must be in (0, 1], got {attack_eps}")
    started = time.perf_counter()
    x, y = images.detach(), labels.to(images.device)
    ends: dict[str, torch.Tensor] = {}
    with eval_mode(model):
        if pgd_steps > 0:
            ends["PGD"], _ = pgd_perturb(model, x, y, eps=attack_eps, steps=pgd_steps, random_init=False)
        if ifia_steps > 0:
            ifia = run_explanation_attack(model, x, "ifia", eps=attack_eps, steps=ifia_steps,
                                          step_size=2.5 * attack_eps / ifia_steps, k=min(base.k, x[0, 0].numel()),
                                          eval_k=min(base.k, x[0, 0].numel()), measure="topk_intersection",
                                          explainer=base.explainer, explainer_options=base.explainer_options,
                                          beta=base.beta, seed=base.seed)
            ends["IFIA"] = ifia.tensors["adversarial"]
    extra: dict[str, Any] = {}
    per_image: dict[str, Any] = {"label": y}
    for d, cfg in cfgs.items():
        r = input_landscape(model, x, y, cfg, target_images=target_images)
        view = {"axis": r.extra["axis"], "mean": r.extra["mean"], "grids": r.extra["grids"], "clean": r.summary}
        view["endpoints"] = attack_endpoints(model, x, y, r, ends) if ends else {}
        extra[f"{d}d"] = view
        if on_view is not None:
            on_view(f"{d}d", view)
        for name, v in r.per_image.items():
            if name.startswith("clean_"):
                per_image[name] = v
    first = extra[f"{dims[0]}d"]
    summary: dict[str, Any] = {name: float(v.mean()) for name, v in per_image.items() if name.startswith("clean_")}
    for name, e in first["endpoints"].items():
        per_image.update({f"{name}_ce": e["ce"], f"{name}_explanation_change": e["explanation_change"]})
        summary[name] = {"ce": float(e["ce"].mean()), "explanation_change": float(e["explanation_change"].mean()),
                         **{f"in_plane_{k}": float(extra[k]["endpoints"][name]["in_plane"].mean()) for k in extra}}
    if curvature:
        c = curvature_summary(model, x, y, radius=attack_eps, beta=base.beta, explainer=base.explainer,
                              n_samples=curvature_samples, iterations=curvature_iterations, seed=base.seed)
        summary["curvature"] = c.summary
        per_image.update({f"curvature_{k}": v for k, v in c.per_image.items() if k != "label"})
    return Result(kind="landscape/report", config={**base.model_dump(mode="json"), "dims": list(dims),
                                                   "points_2d": cfgs[2].points if 2 in cfgs else None,
                                                   "attack_eps": attack_eps, "pgd_steps": pgd_steps,
                                                   "ifia_steps": ifia_steps, "curvature": curvature,
                                                   "curvature_samples": curvature_samples,
                                                   "curvature_iterations": curvature_iterations},
                  per_image=per_image, summary=summary, extra=extra, tensors=ends,
                  seconds=time.perf_counter() - started)


def landscape_of_images(model: nn.Module, data, first: int, count: int, config: LandscapeConfig | dict, *,
                        target: int | None = None, **report_options) -> dict[str, Any]:
    """:func:`landscape_report` over images ``first … first + count − 1`` of dataset ``data`` (toward image
    ``target``'s map for the target loss), with the first image's predictions at the clean point and at each
    attack endpoint. Returns ``report`` (the result as a dict), ``label``, ``preds`` and ``images`` (CPU)."""
    if first < 0 or count < 1 or first + count > len(data):
        raise ValueError(f"the split has {len(data)} images; images {first}…{first + count - 1} do not all exist")
    if target is not None and not 0 <= target < len(data):
        raise ValueError(f"target image {target} does not exist ({len(data)} images)")
    device = device_of(model)
    x, y = (t.to(device) for t in data.batch(range(first, first + count)))
    targets = data.batch([target] * count)[0].to(device) if target is not None else None
    report = landscape_report(model, x, y, config, target_images=targets, **report_options)
    shown = {"clean": x[:1], **{name: t[:1] for name, t in report.tensors.items()}}
    with torch.no_grad():
        preds = {name: int(model(t).argmax(1)[0]) for name, t in shown.items()}
    return {"report": report.to_dict(), "label": int(y[0]), "preds": preds,
            "images": {name: t[0].cpu() for name, t in shown.items()}}
