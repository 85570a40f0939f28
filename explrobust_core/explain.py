"""Explanations: differentiable methods in plain torch, and captum's catalogue for display.

One call shape, like captum's ``attribute()``::

    attribution = attribute(model, images, "integrated_gradients", target="predicted", n_steps=64)

returns an *attribution* with the images' shape; :func:`explanation_maps` post-processes it into
``(N, H, W)`` maps (``metrics.attribution_to_map``). Methods tagged ``differentiable`` accept
``create_graph=True``: the result then carries the graph back to the input (and the weights), so
attacks and training can differentiate through it — on ReLU models use ``models.softplus_view``,
whose second derivatives do not vanish. Methods tagged ``display`` come from captum; their results
are detached and must never feed a loss.

All methods explain the score ``cfg.score`` of the target class (the logit by default, as
captum does) and batch over images and over IG steps / noise samples, bounded by
``internal_batch_size`` inputs per forward pass.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Literal, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .errors import ExplrobustError
from .kernels import fast_kernels
from .models import pool_before_relu
from .registry import Config, Registry

Target = Literal["true", "predicted"] | int | Sequence[int] | torch.Tensor
Score = Literal["logit", "log_softmax", "softmax"]


class ExplainerFn(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, cfg: Config,
                 create_graph: bool) -> torch.Tensor: ...


EXPLAINERS: Registry[ExplainerFn] = Registry("explanation method")


class NotDifferentiableError(ValueError, ExplrobustError):
    """A display-only method was asked for a differentiable result."""


# --------------------------------------------------------------------------- targets and scores


def resolve_target(model: nn.Module, x: torch.Tensor, target: Target, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The class index to explain per image, as a ``(N,)`` long tensor on ``x``'s device.

    ``"true"`` uses ``labels``; ``"predicted"`` the model's argmax; an int or a sequence is given.
    """
    n = x.shape[0]
    if isinstance(target, str):
        if target == "true":
            if labels is None:
                raise ValueError("target='true' needs the images' labels")
            t = torch.as_tensor(labels)
        elif target == "predicted":
            with torch.no_grad():
                t = model(x.detach()).argmax(1)
        else:
            raise ValueError(f"target must be 'true', 'predicted', a class index or one index per image, got {target!r}")
    elif isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long)
    else:
        t = torch.as_tensor(target)
    t = t.to(device=x.device, dtype=torch.long).reshape(-1)
    if t.numel() == 1 and n != 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"got {t.numel()} targets for {n} images")
    classes = getattr(getattr(model, "head", None), "out_features", None)  # ImageClassifier's linear head
    if t.numel() and (int(t.min()) < 0 or (classes is not None and int(t.max()) >= classes)):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ValueError(f"target class {bad} is out of range: the model has classes 0 to "
                         f"{classes - 1 if classes is not None else 'its last'}")
    return t


def _score(logits: torch.Tensor, target: torch.Tensor | None, score: Score) -> torch.Tensor:
    if target is None:  # the predicted class, read off this very forward pass (no pass of its own)
        target = logits.detach().argmax(1)
    if score == "log_softmax":
        logits = F.log_softmax(logits, dim=1)
    elif score == "softmax":
        logits = F.softmax(logits, dim=1)
    return logits.gather(1, target[:, None]).squeeze(1)


def _explainer_kernels(x: torch.Tensor, create_graph: bool):
    """The differentiable explainers' kernels (:mod:`~explrobust_core.kernels`). A map alone differentiates the
    input only: a one-channel first layer's input gradient is then a fold (faster than torch's CPU kernel; the
    same bits for any batch). With ``create_graph`` the caller may differentiate the map with respect to the
    weights (SEP's training loss), and every layer keeps torch's convolution."""
    return fast_kernels(first_order_input=None if create_graph else x, fold_one_channel=not create_graph)


def _prepare_input(x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """With create_graph the caller's graph is kept; otherwise work on a detached copy."""
    if create_graph:
        return x if x.requires_grad else x.detach().requires_grad_(True)
    return x.detach()


def _weighted_gradient_sum(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    n_points: int,
    make_points: Callable[[slice], tuple[torch.Tensor, torch.Tensor]],
    *,
    score: Score,
    internal_batch_size: int,
    create_graph: bool,
) -> torch.Tensor:
    """Σ_i m_i ⊙ ∇ₚ score(p_i) over ``n_points`` points per image, evaluated in chunks.

    ``make_points(slice)`` returns the chunk's points ``(k, N, C, H, W)`` (built from ``x`` so the
    graph reaches it) and multipliers broadcastable to that shape. Chunks hold at most
    ``internal_batch_size`` inputs (at least one point for every image).
    """
    n = x.shape[0]
    per_chunk = max(1, internal_batch_size // max(n, 1))
    total = torch.zeros_like(x)
    model = pool_before_relu(model)  # the same gradients bit for bit, less work (see there)
    with torch.enable_grad(), _explainer_kernels(x, create_graph):
        for start in range(0, n_points, per_chunk):
            points, multiplier = make_points(slice(start, min(n_points, start + per_chunk)))
            k = points.shape[0]
            flat = points.reshape(k * n, *x.shape[1:])
            if not create_graph:
                flat = flat.detach().requires_grad_(True)
            s = _score(model(flat), target.repeat(k), score).sum()
            (g,) = torch.autograd.grad(s, flat, create_graph=create_graph)
            total = total + (multiplier * g.reshape(k, *x.shape)).sum(0)
    return total


# --------------------------------------------------------------------------- configs


class GradientConfig(Config):
    score: Score = Field("logit", description="explain this output of the target class")


InputSpace = Literal["pixel", "model"]


class InputSpaceConfig(Config):
    space: InputSpace = Field(
        "pixel", description="'pixel': x ⊙ ∇ₓf, zero baseline = black image (captum's form); 'model': in the "
                             "normalised input z = (x − μ)/σ, z ⊙ ∇_z f = (x − μ) ⊙ ∇ₓf, zero baseline z = 0 "
                             "(the Dombrowski reference code's form)")


class GradientXInputConfig(GradientConfig, InputSpaceConfig):
    pass


class IntegrationRule(Config):
    n_steps: int = Field(50, ge=1, le=2048, description="points on the path from baseline to input")
    rule: Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"] = Field(
        "gausslegendre", description="quadrature rule (captum's names)")


class BaselineConfig(Config):
    baseline: Literal["zero", "blur", "uniform"] = Field("zero", description="reference input")
    blur_sigma: float = Field(5.0, gt=0, le=100, description="σ in pixels of the blurred baseline")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed for random baselines / noise")


class IntegratedGradientsConfig(GradientConfig, IntegrationRule, BaselineConfig, InputSpaceConfig):
    internal_batch_size: int = Field(512, ge=1, le=65536, description="inputs per forward pass (memory bound)")


class SmoothGradConfig(GradientConfig):
    n_samples: int = Field(25, ge=1, le=4096, description="noisy copies per image")
    stdev: float = Field(0.15, ge=0, le=10, description="σ of the Gaussian noise, in pixel units")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="noise seed")
    internal_batch_size: int = Field(512, ge=1, le=65536, description="inputs per forward pass (memory bound)")


class GradientShapConfig(GradientConfig, BaselineConfig):
    n_samples: int = Field(25, ge=1, le=4096, description="(baseline, noise, α) samples per image")
    stdev: float = Field(0.0, ge=0, le=10, description="σ of Gaussian noise added to the input (captum's stdevs)")
    internal_batch_size: int = Field(512, ge=1, le=65536, description="inputs per forward pass (memory bound)")


# --------------------------------------------------------------------------- differentiable methods


@EXPLAINERS.register("gradient", config=GradientConfig, tags=("differentiable",),
                     summary="Gradient (saliency): ∂score/∂x")
def gradient(model, x, target, cfg: GradientConfig, create_graph: bool) -> torch.Tensor:
    return _gradient_and_logits(model, x, target, cfg, create_graph)[0]


def _gradient_and_logits(model, x, target, cfg: GradientConfig, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """∂score/∂x and the logits of the same forward pass (with the graph when ``create_graph``)."""
    x = _prepare_input(x, create_graph)
    model = pool_before_relu(model)  # the same logits and gradients bit for bit, less work (see there)
    with torch.enable_grad(), _explainer_kernels(x, create_graph):
        inp = x if create_graph else x.detach().requires_grad_(True)
        logits = model(inp)
        (g,) = torch.autograd.grad(_score(logits, target, cfg.score).sum(), inp, create_graph=create_graph)
    return g, logits


def _model_space_origin(model: nn.Module, x: torch.Tensor, space: InputSpace) -> torch.Tensor | None:
    """The pixel image whose normalised input is z = 0 (the model's mean μ), or None in pixel space.

    In the model's input space z = (x − μ)/σ the chain rule gives ∇_z f = σ ⊙ ∇ₓf, so
    z ⊙ ∇_z f = (x − μ) ⊙ ∇ₓf: only μ is needed, σ cancels.
    """
    if space == "pixel":
        return None
    from .models import input_normalization

    mean, _ = input_normalization(model)
    return mean.to(device=x.device, dtype=x.dtype).expand_as(x)


@EXPLAINERS.register("gradient_x_input", config=GradientXInputConfig, tags=("differentiable",),
                     summary="Gradient × input, in pixel space (x ⊙ ∇ₓf) or the model's input space")
def gradient_x_input(model, x, target, cfg: GradientXInputConfig, create_graph: bool) -> torch.Tensor:
    return _gradient_x_input_and_logits(model, x, target, cfg, create_graph)[0]


def _gradient_x_input_and_logits(model, x, target, cfg: GradientXInputConfig, create_graph: bool):
    x = _prepare_input(x, create_graph)
    origin = _model_space_origin(model, x, cfg.space)
    grad, logits = _gradient_and_logits(model, x, target, cfg, create_graph)
    return (x if origin is None else x - origin) * grad, logits


def integration_rule(rule: str, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Path positions α ∈ [0, 1] and weights for ∫₀¹ g(α) dα, named as in captum.

    Left/right/middle Riemann and Gauss–Legendre match captum exactly. The trapezoid rule here is
    the textbook one (step 1/(n−1), weights sum to 1); captum 0.9 uses step 1/n with halved ends,
    so its trapezoid IG is ours × (n−1)/n and misses completeness by that factor.
    """
    if rule == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n_steps)
        alphas, weights = 0.5 * (nodes + 1), 0.5 * w
    elif rule == "riemann_trapezoid":
        if n_steps < 2:
            raise ValueError("riemann_trapezoid needs n_steps ≥ 2")
        alphas = np.linspace(0, 1, n_steps)
        weights = np.full(n_steps, 1.0 / (n_steps - 1))
        weights[[0, -1]] /= 2
    else:
        offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
        alphas = (np.arange(n_steps) + offset) / n_steps
        weights = np.full(n_steps, 1.0 / n_steps)
    return torch.tensor(alphas), torch.tensor(weights)


def make_baseline(x: torch.Tensor, cfg: BaselineConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    if cfg.baseline == "zero":
        return torch.zeros_like(x)
    if cfg.baseline == "blur":
        import kornia

        sigma = cfg.blur_sigma
        size = 2 * math.ceil(3 * sigma) + 1
        return kornia.filters.gaussian_blur2d(x, (size, size), (sigma, sigma), border_type="replicate")
    gen = generator or torch.Generator().manual_seed(cfg.seed)
    return torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)


@EXPLAINERS.register("integrated_gradients", config=IntegratedGradientsConfig, tags=("differentiable",),
                     summary="Integrated gradients (Sundararajan et al.): (x − x′) ⊙ ∫ ∇score(x′ + α(x − x′)) dα")
def integrated_gradients(model, x, target, cfg: IntegratedGradientsConfig, create_graph: bool) -> torch.Tensor:
    x = _prepare_input(x, create_graph)
    origin = _model_space_origin(model, x, cfg.space) if cfg.baseline == "zero" else None
    # other baselines are pixel images: (z − z′) ⊙ ∇_z = (x − x′) ⊙ ∇ₓ, the same in both spaces
    baseline = make_baseline(x, cfg) if origin is None else origin
    diff = x - baseline
    alphas, weights = (t.to(x.device, x.dtype) for t in integration_rule(cfg.rule, cfg.n_steps))
    shape = (-1,) + (1,) * x.ndim

    def points(s: slice):
        a = alphas[s].view(shape)
        return baseline[None] + a * diff[None], weights[s].view(shape)

    grad_integral = _weighted_gradient_sum(model, x, target, cfg.n_steps, points, score=cfg.score,
                                           internal_batch_size=cfg.internal_batch_size, create_graph=create_graph)
    return diff * grad_integral


@EXPLAINERS.register("smoothgrad", config=SmoothGradConfig, tags=("differentiable",),
                     summary="SmoothGrad (Smilkov et al.): mean gradient over Gaussian-noised copies")
def smoothgrad(model, x, target, cfg: SmoothGradConfig, create_graph: bool) -> torch.Tensor:
    x = _prepare_input(x, create_graph)
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = (torch.randn((cfg.n_samples, *x.shape), generator=gen, dtype=x.dtype) * cfg.stdev).to(x.device)
    weight = torch.tensor(1.0 / cfg.n_samples, dtype=x.dtype, device=x.device)
    return _weighted_gradient_sum(model, x, target, cfg.n_samples, lambda s: (x[None] + noise[s], weight),
                                  score=cfg.score, internal_batch_size=cfg.internal_batch_size, create_graph=create_graph)


@EXPLAINERS.register("gradient_shap", config=GradientShapConfig, tags=("differentiable",),
                     summary="GradientSHAP (Lundberg & Lee; captum's form): E[(x̃ − b) ⊙ ∇score(b + α(x̃ − b))]")
def gradient_shap(model, x, target, cfg: GradientShapConfig, create_graph: bool) -> torch.Tensor:
    """Expectation over baselines b, input noise (x̃ = x + ε) and α ~ U(0, 1), as captum defines it."""
    x = _prepare_input(x, create_graph)
    gen = torch.Generator().manual_seed(cfg.seed)
    s_shape = (cfg.n_samples, *x.shape)
    noise = (torch.randn(s_shape, generator=gen, dtype=x.dtype) * cfg.stdev).to(x.device)
    alphas = torch.rand((cfg.n_samples, x.shape[0]) + (1,) * (x.ndim - 1), generator=gen, dtype=x.dtype).to(x.device)
    if cfg.baseline == "uniform":  # a fresh random baseline per sample: a distribution of baselines
        baselines = torch.rand(s_shape, generator=gen, dtype=x.dtype).to(x.device)
    else:
        baselines = make_baseline(x, cfg)[None].expand(s_shape)

    def points(s: slice):
        delta = x[None] + noise[s] - baselines[s]
        return baselines[s] + alphas[s] * delta, delta / cfg.n_samples

    return _weighted_gradient_sum(model, x, target, cfg.n_samples, points, score=cfg.score,
                                  internal_batch_size=cfg.internal_batch_size, create_graph=create_graph)


# --------------------------------------------------------------------------- captum (display only)


class OcclusionConfig(Config):
    window: int = Field(4, ge=1, le=256, description="side of the square occluding patch, in pixels")
    stride: int = Field(2, ge=1, le=256, description="step between patches, in pixels")


def last_conv_layer(model: nn.Module) -> nn.Module:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("Grad-CAM needs a model with at least one Conv2d layer")
    return convs[-1]


def _captum_method(build: Callable[[nn.Module, torch.Tensor, torch.Tensor, Config], torch.Tensor]) -> ExplainerFn:
    def run(model, x, target, cfg, create_graph: bool) -> torch.Tensor:
        if create_graph:
            raise NotDifferentiableError("this captum method is for display only and cannot give a differentiable result")
        with torch.enable_grad(), warnings.catch_warnings():
            # captum announces its temporary hooks on every call; they are removed afterwards
            warnings.filterwarnings("ignore", message=r"Setting .*hooks", category=UserWarning)
            out = build(model, x.detach().clone().requires_grad_(True), target, cfg)
        return out.detach()

    return run


def _gradcam_to_input(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    from captum.attr import LayerAttribution

    up = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
    return up.expand_as(x) / x.shape[1]  # so the channel-summed map equals the CAM


def _register_captum() -> None:
    def simple(cls_name: str, **kw):
        def build(model, x, target, cfg):
            import captum.attr as ca

            return getattr(ca, cls_name)(model).attribute(x, target=target, **kw)

        return build

    def occlusion(model, x, target, cfg: OcclusionConfig):
        from captum.attr import Occlusion

        c, h, w = x.shape[1:]
        win = (c, min(cfg.window, h), min(cfg.window, w))
        return Occlusion(model).attribute(x, target=target, sliding_window_shapes=win,
                                          strides=(c, cfg.stride, cfg.stride), baselines=0.0)

    def grad_cam(model, x, target, cfg):
        from captum.attr import LayerGradCam

        cam = LayerGradCam(model, last_conv_layer(model)).attribute(x, target=target, relu_attributions=True)
        return _gradcam_to_input(cam, x)

    def guided_grad_cam(model, x, target, cfg):
        from captum.attr import GuidedGradCam

        return GuidedGradCam(model, last_conv_layer(model)).attribute(x, target=target)

    entries = [
        ("guided_backprop", simple("GuidedBackprop"), Config, "Guided backpropagation (captum)"),
        ("deconvolution", simple("Deconvolution"), Config, "Deconvolution (captum)"),
        ("deeplift", simple("DeepLift"), Config, "DeepLift, zero baseline (captum)"),
        ("occlusion", occlusion, OcclusionConfig, "Occlusion with square patches (captum)"),
        ("grad_cam", grad_cam, Config, "Grad-CAM on the last conv layer, upsampled (captum)"),
        ("guided_grad_cam", guided_grad_cam, Config, "Guided Grad-CAM on the last conv layer (captum)"),
    ]
    for name, build, cfg_cls, summary in entries:
        EXPLAINERS.add(name, _captum_method(build), config=cfg_cls, summary=summary + " — display only",
                       tags=("display", "captum"))


_register_captum()


# --------------------------------------------------------------------------- public entry points


def is_differentiable(method: str) -> bool:
    return "differentiable" in EXPLAINERS.get(method).tags


def attribute(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str = "gradient",
    *,
    target: Target = "predicted",
    labels: torch.Tensor | None = None,
    create_graph: bool = False,
    config: dict | Config | None = None,
    **options,
) -> torch.Tensor:
    """Attribution of ``method`` for ``inputs`` ``(N, C, H, W)`` in [0, 1]; same shape as the inputs.

    Options are validated by the method's config (``config`` and/or keyword options). The model is
    used as it is (call ``.eval()`` first for BatchNorm/Dropout models).

    Args:
        model: maps pixels in ``[0, 1]`` to logits; inputs: images ``(N, C, H, W)``.
        method: a registered explainer (``gradient``, ``integrated_gradients``, …; captum's for display).
        target: ``"predicted"``, ``"true"`` (with ``labels``) or class indices; create_graph: keep the graph
            to differentiate through the attribution (differentiable methods only).
        config / options: the method's options (e.g. ``n_steps`` for integrated gradients).

    Returns:
        The attribution, same shape as ``inputs``.

    Example:
        >>> a = attribute(model, x, "integrated_gradients", n_steps=32)
        >>> a.shape == x.shape
        True
    """
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(inputs.shape)}")
    entry = EXPLAINERS.get(method)
    if create_graph and "differentiable" not in entry.tags:
        raise NotDifferentiableError(
            f"{method!r} is display-only (captum) and cannot be differentiated; use one of "
            f"{', '.join(EXPLAINERS.names('differentiable'))}")
    cfg = entry.resolve(config, **options)
    if isinstance(target, str) and target == "predicted" and method in _WITH_LOGITS:
        return _WITH_LOGITS[method](model, inputs, None, cfg, create_graph)[0]  # one forward pass, not two
    t = resolve_target(model, inputs, target, labels)
    return entry.obj(model, inputs, t, cfg, create_graph)


# methods whose one forward pass is on the input itself, so that its logits come for free
_WITH_LOGITS = {"gradient": _gradient_and_logits, "gradient_x_input": _gradient_x_input_and_logits}


def attribute_with_logits(model: nn.Module, inputs: torch.Tensor, method: str, target: torch.Tensor | None, *,
                          create_graph: bool = False, config: dict | Config | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attribute` for a ``(N,)`` class-index ``target`` (None: the predicted class), plus the model's
    logits on ``inputs``.

    For gradient and gradient × input the logits are those of the attribution's own forward pass
    (one pass instead of two, three with ``target=None``; with ``create_graph`` they carry the graph,
    detached otherwise); other methods get one extra forward pass, under ``no_grad`` unless ``create_graph``.
    """
    entry = EXPLAINERS.get(method)
    cfg = entry.resolve(config)
    if method in _WITH_LOGITS:
        if inputs.ndim != 4:
            raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(inputs.shape)}")
        attr, logits = _WITH_LOGITS[method](model, inputs, target, cfg, create_graph)
        return attr, (logits if create_graph else logits.detach())
    attr = attribute(model, inputs, method, target="predicted" if target is None else target,
                     create_graph=create_graph, config=cfg)
    with torch.set_grad_enabled(create_graph):
        logits = model(inputs)
    return attr, logits


def explanation_maps(model: nn.Module, inputs: torch.Tensor, method: str = "gradient", *, normalize: str = "sum",
                     **kwargs) -> torch.Tensor:
    """``(N, H, W)`` maps: ``|attribution|`` summed over channels, sum-normalised by default.

    Args:
        model, inputs, method: as :func:`attribute` (its keyword options pass through ``kwargs``).
        normalize: ``"sum"`` (each map sums to 1, the SEP convention) or as :func:`metrics.attribution_to_map`.

    Returns:
        Maps ``(N, H, W)``.

    Example:
        >>> maps = explanation_maps(model, x, "gradient")
        >>> maps.shape, float(maps[0].sum())  # doctest: +SKIP
        (torch.Size([8, 28, 28]), 1.0)
    """
    from .metrics import attribution_to_map

    return attribution_to_map(attribute(model, inputs, method, **kwargs), normalize=normalize)


# --------------------------------------------------------------------------- many images


def inputs_per_image(method: str, config: dict | Config | None = None) -> int:
    """Model inputs one image's explanation costs: the integrated-gradients steps or the SmoothGrad /
    GradientSHAP samples, else 1 — what a memory-bounded batch divides its budget by."""
    cfg = config if isinstance(config, Config) else EXPLAINERS.get(method).make_config(dict(config or {}))
    return int(getattr(cfg, "n_steps", None) or getattr(cfg, "n_samples", None) or 1)


def explanation_maps_in_batches(model: nn.Module, images: torch.Tensor, method: str = "gradient", *,
                                target: Target = "predicted", labels: torch.Tensor | None = None,
                                normalize: str = "sum", batch_size: int | None = None,
                                progress: Callable[[int, int], None] | None = None,
                                config: dict | Config | None = None, **options) -> torch.Tensor:
    """:func:`explanation_maps` of many images, ``(N, H, W)`` on the CPU, in batches that fit the memory.

    The images may live on the CPU; each batch moves to the model's device. ``batch_size`` (images) defaults
    to :func:`batching.start_batch_size` (on the CPU a cap from the model's size, divided by the IG steps or
    noise samples per image); a batch that runs out of accelerator memory is halved and retried. The method's
    ``internal_batch_size`` (inputs per forward pass) is lowered to the same budget, never raised, and halved
    first when a batch runs out of memory.
    ``progress(done, total)`` is told the images done after every batch. Per-image targets (a sequence or a
    tensor) and ``labels`` are split with the images. Deterministic methods give the same maps for any
    batching; SmoothGrad, GradientSHAP and random baselines draw their noise per batch.
    """
    from .batching import map_batches, start_batch_size
    from .metrics import attribution_to_map

    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    entry = EXPLAINERS.get(method)
    values = dict(config.model_dump() if isinstance(config, Config) else (config or {}))
    cfg = entry.make_config({**values, **options})
    n = images.shape[0]
    if n == 0:
        return torch.zeros((0, *images.shape[2:]))
    per_image = inputs_per_image(method, cfg)
    size = batch_size or start_batch_size(model, images[0].numel(), per_image, n)
    budget = {"inputs": size * per_image}  # inputs per forward pass (IG, SmoothGrad, GradientSHAP)
    per_image_target = not isinstance(target, (str, int)) and not (isinstance(target, torch.Tensor) and target.ndim == 0)
    if per_image_target and len(target) != n:
        raise ValueError(f"got {len(target)} targets for {n} images")
    device = next(model.parameters()).device

    def explain(start: int, stop: int) -> torch.Tensor:
        x = images[start:stop].to(device)
        t = target[start:stop] if per_image_target else target
        y = None if labels is None else labels[start:stop]
        while True:  # out of memory: fewer inputs per forward pass first, then (map_batches) fewer images
            batch_cfg, inputs = cfg, stop - start
            if "internal_batch_size" in type(cfg).model_fields:
                inputs = max(stop - start, min(cfg.internal_batch_size, budget["inputs"]))
                batch_cfg = cfg.model_copy(update={"internal_batch_size": inputs})
            try:
                attr = attribute(model, x, method, target=t, labels=y, config=batch_cfg)
                break
            except torch.OutOfMemoryError:
                if inputs <= stop - start:
                    raise
                budget["inputs"] = inputs // 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        maps = attribution_to_map(attr, normalize=normalize).detach().cpu()
        if progress is not None:
            progress(stop, n)
        return maps

    return torch.cat(map_batches(explain, n, size))
