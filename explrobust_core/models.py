"""Architecture registry, Normalize-inside-the-model, and the Softplus(β) view of any model.

Every model takes pixel-space inputs ``(N, C, H, W)`` in [0, 1]: normalisation is its first
layer, so ε, attack steps and landscape axes are in pixel units for every dataset. Each model is
an :class:`ImageClassifier` = ``normalize → features → head``; ``embed(x)`` gives the
penultimate features (used by Way3 clustering).

Activations are separate ``nn.ReLU`` instances, never reused and never in-place, so captum's
hook-based methods (DeepLift, guided backprop) work on every architecture.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from torch.overrides import TorchFunctionMode

from . import kernels
from .registry import Config, Registry

ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("architecture")


class Normalize(nn.Module):
    """(x − mean) / std per channel; mean/std are buffers so they travel with the checkpoint."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def input_normalization(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(1, C, 1, 1)`` mean and std of the model's own :class:`Normalize` layer (the first one).

    Explanations "in the model's input space" need them; a model without a Normalize layer is
    refused rather than silently taken as unnormalised.
    """
    for module in model.modules():
        if isinstance(module, Normalize):
            return module.mean, module.std
    raise ValueError("this model has no Normalize layer, so its input space is unknown; "
                     "use space='pixel' or wrap it with its mean and std")


class ImageClassifier(nn.Module):
    """normalize → features (to a flat penultimate vector) → linear head."""

    def __init__(self, normalize: Normalize, features: nn.Module, head: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.features = features
        self.head = head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def pool_before_relu(model: nn.Module) -> nn.Module:
    """A view of ``model`` whose ``ReLU → MaxPool2d`` layer pairs run as ``MaxPool2d → ReLU``: the same numbers,
    with the ReLU and its backward on a quarter of the values.

    Max pooling commutes with ReLU: both are monotone, so max(relu(a)) == relu(max(a)) in floating point too, and the
    window's first maximum carries the gradient either way (where it is ≤ 0 the ReLU stops it in both orders). The
    logits, the input gradients and the parameter gradients are therefore the model's bit for bit
    (tests/test_models.py). PGD on the zoo's ConvNet is about 16 % faster this way (one CPU thread).

    Only :class:`ImageClassifier` models whose ``features`` are an ``nn.Sequential`` are rewritten (the zoo's
    ConvNet and RAR CNN); any other model is returned as it is. The view shares every module and parameter with
    ``model``, which is not changed. It is for PGD, predictions, training steps and the differentiable explainers
    (``explain.py`` applies it to every model they are given). It is not for rules that
    treat the ReLU and pooling modules one by one (captum's DeepLift), nor for hooks on the ReLU modules.
    """
    if not isinstance(model, ImageClassifier) or not isinstance(model.features, nn.Sequential):
        return model
    layers, i, swapped = list(model.features), 0, False
    while i < len(layers) - 1:
        relu, pool = layers[i], layers[i + 1]
        if type(relu) is nn.ReLU and type(pool) is nn.MaxPool2d and not pool.return_indices:
            layers[i], layers[i + 1] = pool, relu
            swapped, i = True, i + 2
        else:
            i += 1
    if not swapped:
        return model
    view = ImageClassifier(model.normalize, nn.Sequential(*layers), model.head)
    # the flags of the containers only (their shared children keep their own): set without .train(), which recurses
    view.training, view.features.training = model.training, model.features.training
    return view


def lean_forward(model: nn.Module, x: torch.Tensor, embed: bool = False) -> torch.Tensor:
    """``model(x)`` (``model.embed(x)`` with ``embed``) for reading, not differentiating: through
    :func:`pool_before_relu` and the fast CPU pooling (:func:`~explrobust_core.kernels.fast_kernels`), the same
    numbers bit for bit with less work. Predictions, features and attack outcomes use it; the caller sets
    ``no_grad`` and eval mode."""
    net = pool_before_relu(model)
    with kernels.fast_kernels(first_order_input=x):
        return net.embed(x) if embed else net(x)


class WrappedClassifier(nn.Module):
    """Any classifier module behind explrobust's :class:`Normalize`: ``normalize → net``.

    ``embed(x)`` is the input of the final linear layer (``head``, a dotted module name inside
    ``net``), caught by a forward pre-hook, so models without an ``embed`` of their own (torchvision,
    timm, your own network) get penultimate features for Way3 clustering without any surgery.
    """

    def __init__(self, normalize: Normalize, net: nn.Module, head: str | None = None):
        super().__init__()
        self.normalize = normalize
        self.net = net
        # None: no linear layer (SqueezeNet classifies with a conv); such a model works everywhere but Way3
        self.head_name = head if head is not None else final_linear_name(net)
        if self.head_name is not None:
            net.get_submodule(self.head_name)  # a wrong name fails here, not at the first embed
        # in-place activations overwrite tensors autograd (second-order attacks, captum's hooks) still needs
        for module in net.modules():
            if isinstance(getattr(module, "inplace", None), bool):
                module.inplace = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_name is None:
            raise ValueError("this model has no nn.Linear layer to take penultimate features from; wrap it with "
                             "head='name' (the module whose input is the feature vector)")
        caught: list[torch.Tensor] = []

        def catch(_module, inputs):
            caught.append(inputs[0])

        handle = self.net.get_submodule(self.head_name).register_forward_pre_hook(catch)
        try:
            self.net(self.normalize(x))
        finally:
            handle.remove()
        if not caught:
            raise RuntimeError(f"the layer {self.head_name!r} was not called in the forward pass; name the "
                               "classification layer with head=…")
        return caught[-1].flatten(1)


def final_linear_name(net: nn.Module) -> str | None:
    """The dotted name of the last ``nn.Linear`` registered in ``net`` (the classification layer of
    torchvision's and timm's classifiers); None when there is none."""
    names = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def wrap(module: nn.Module, *, mean: Sequence[float], std: Sequence[float], input_shape: Sequence[int],
         classes: Sequence[str] | int, head: str | None = None) -> "WrappedClassifier":
    """Make any ``nn.Module`` classifier usable by every explrobust function.

    ``module`` takes *normalised* inputs (as it was trained); the returned model takes pixels in
    [0, 1] and normalises with ``mean``/``std`` itself, so attack budgets stay in pixel units. It is
    checked with one forward pass on ``input_shape`` (C, H, W): the output must be one logit per
    class. ``head`` names the final classification layer (default: the last ``nn.Linear``); its
    input is ``embed(x)`` (a model without one works everywhere but in Way3's feature clustering). ``classes`` is a list of names or their number. The wrapper is in eval
    mode; the module is shared, not copied.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"wrap() needs a torch.nn.Module, got {type(module).__name__}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    if len(mean) != shape[0]:
        raise ValueError(f"mean/std have {len(mean)} channels but the input has {shape[0]}")
    n_classes = classes if isinstance(classes, int) else len(classes)
    if n_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
    model = WrappedClassifier(Normalize(mean, std), module, head)
    device = device_of(module)
    model = model.to(device).eval()
    with torch.no_grad():
        out = model(torch.full((1, *shape), 0.5, device=device))
    if tuple(out.shape) != (1, n_classes):
        raise ValueError(f"the module outputs shape {tuple(out.shape)} for one {shape} image; expected "
                         f"(1, {n_classes}), one logit per class")
    return model


# --------------------------------------------------------------------------- architectures


class ConvNetConfig(Config):
    width1: int = Field(32, ge=1, le=1024, description="channels of the first 3×3 conv")
    width2: int = Field(64, ge=1, le=1024, description="channels of the second 3×3 conv")
    hidden: int = Field(128, ge=1, le=8192, description="units of the hidden fully connected layer")


@ARCHITECTURES.register("convnet", config=ConvNetConfig, summary="Small ConvNet (2 conv + 2 FC), fast on CPU")
def convnet(cfg: ConvNetConfig, in_channels: int, height: int, width: int, num_classes: int):
    """Small ConvNet: conv3×3(C→w1, pad 1)–ReLU–maxpool2 – conv3×3(w1→w2, pad 1)–ReLU–maxpool2 –
    flatten – FC(w2·⌊H/4⌋·⌊W/4⌋ → hidden)–ReLU – FC(hidden → classes)."""
    flat = cfg.width2 * (height // 4) * (width // 4)
    if flat == 0:
        raise ValueError(f"convnet needs inputs of at least 4×4 pixels, got {height}×{width}")
    features = nn.Sequential(
        nn.Conv2d(in_channels, cfg.width1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(cfg.width1, cfg.width2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, cfg.hidden), nn.ReLU(),
    )
    return features, nn.Linear(cfg.hidden, num_classes)


class RarCNNConfig(Config):
    hidden: int = Field(1024, ge=1, le=8192, description="units of the fully connected layer")


@ARCHITECTURES.register("rar_cnn", config=RarCNNConfig, summary="RAR's MNIST CNN (conv5×5-32, conv5×5-64, fc1024)")
def rar_cnn(cfg: RarCNNConfig, in_channels: int, height: int, width: int, num_classes: int):
    """RAR's MNIST CNN: conv5×5(C→32, same)–ReLU–maxpool2 – conv5×5(32→64, same)–ReLU–maxpool2 –
    flatten – FC(64·⌊H/4⌋·⌊W/4⌋ → 1024)–ReLU – FC(1024 → classes)."""
    flat = 64 * (height // 4) * (width // 4)
    if flat == 0:
        raise ValueError(f"rar_cnn needs inputs of at least 4×4 pixels, got {height}×{width}")
    features = nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, cfg.hidden), nn.ReLU(),
    )
    return features, nn.Linear(cfg.hidden, num_classes)


class _BasicBlock(nn.Module):
    """ResNet basic block (post-activation): conv-BN-ReLU-conv-BN + shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18Config(Config):
    base_width: int = Field(64, ge=4, le=256, description="channels of the first stage (doubles per stage)")


@ARCHITECTURES.register("resnet18", config=ResNet18Config, summary="ResNet-18 with the CIFAR stem (3×3 conv, no max-pool)")
def resnet18(cfg: ResNet18Config, in_channels: int, height: int, width: int, num_classes: int):
    """ResNet-18, CIFAR stem: conv3×3(C→w)-BN-ReLU, stages of 2 basic blocks with widths
    w, 2w, 4w, 8w (strides 1, 2, 2, 2), global average pool, FC(8w → classes)."""
    w = cfg.base_width
    layers: list[nn.Module] = [nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
    cin = w
    for i, cout in enumerate([w, 2 * w, 4 * w, 8 * w]):
        for j in range(2):
            layers.append(_BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), nn.Linear(cin, num_classes)


class _WideBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3×3-BN-ReLU-(dropout)-conv3×3 + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = self.relu1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(o)))))
        return o + shortcut


class WideResNetConfig(Config):
    depth: int = Field(28, ge=10, le=100, description="total depth; must be 6n+4 (28 → WRN-28, 40 → WRN-40)")
    widen_factor: int = Field(10, ge=1, le=20, description="width multiplier k (WRN-28-10, WRN-40-2, …)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout between the two convs of a block")

    @field_validator("depth")
    @classmethod
    def _six_n_plus_four(cls, depth: int) -> int:  # refused with the config's other checks, before any building
        if (depth - 4) % 6:
            raise ValueError(f"wideresnet depth must be 6n+4 (e.g. 16, 28, 40), got {depth}")
        return depth


@ARCHITECTURES.register("wideresnet", config=WideResNetConfig, summary="WideResNet(depth, width): WRN-28-10, WRN-40-2, …")
def wideresnet(cfg: WideResNetConfig, in_channels: int, height: int, width: int, num_classes: int):
    """WideResNet (Zagoruyko & Komodakis): conv3×3(C→16), three groups of (depth−4)/6 pre-activation
    blocks with widths 16k, 32k, 64k (strides 1, 2, 2), BN-ReLU, global average pool, FC."""
    n, k = (cfg.depth - 4) // 6, cfg.widen_factor
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)]
    cin = 16
    for i, cout in enumerate([16 * k, 32 * k, 64 * k]):
        for j in range(n):
            layers.append(_WideBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, cfg.dropout))
            cin = cout
    layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), nn.Linear(cin, num_classes)


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand–ReLU6 – 3×3 depthwise–ReLU6 – 1×1 project (linear)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Config(Config):
    width_mult: float = Field(1.0, gt=0.0, le=2.0, description="channel multiplier")


# (expansion, channels, repeats, stride) — the paper's table; the first two strides are 1 here
# (the CIFAR variant) so 28×28 and 32×32 inputs are not reduced to 1×1 too early.
_MOBILENET_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


@ARCHITECTURES.register("mobilenetv2", config=MobileNetV2Config, summary="MobileNetV2 (CIFAR stem, stride-1 first conv)")
def mobilenetv2(cfg: MobileNetV2Config, in_channels: int, height: int, width: int, num_classes: int):
    """MobileNetV2 (Sandler et al.) with a stride-1 3×3 stem conv(C→32·m) for small images, the
    paper's inverted-residual table, 1×1 conv to 1280, global average pool, FC(1280 → classes)."""

    def ch(c: int) -> int:
        return max(8, int(math.ceil(c * cfg.width_mult / 8) * 8))

    cin = ch(32)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6()]
    for t, c, n, s in _MOBILENET_SETTINGS:
        for j in range(n):
            layers.append(_InvertedResidual(cin, ch(c), s if j == 0 else 1, t))
            cin = ch(c)
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), nn.Linear(1280, num_classes)


def build_model(
    arch: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    config: dict[str, Any] | Config | None = None,
) -> ImageClassifier | WrappedClassifier:
    """Build a registered architecture for ``input_shape = (C, H, W)`` with Normalize first.

    An architecture's builder returns ``(features, head)`` (an :class:`ImageClassifier`) or one
    whole classifier module (a :class:`WrappedClassifier`).

    Args:
        arch: a registered architecture (``convnet``, ``resnet18``, …); input_shape: ``(C, H, W)``.
        num_classes: outputs; mean, std: per-channel normalisation (the model's first layer); config: options.

    Returns:
        An untrained model taking pixels in ``[0, 1]``.

    Example:
        >>> model = build_model("convnet", input_shape=(1, 28, 28), num_classes=10, mean=[0.13], std=[0.31])
    """
    entry = ARCHITECTURES.get(arch)
    cfg = entry.make_config(config)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    c, h, w = (int(v) for v in input_shape)
    if len(mean) != c:
        raise ValueError(f"mean/std have {len(mean)} channels but the input has {c}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    built = entry.obj(cfg, c, h, w, num_classes)
    if isinstance(built, nn.Module):  # a whole classifier (torchvision, timm): wrapped, features by a hook
        return WrappedClassifier(Normalize(mean, std), built)
    features, head = built
    return ImageClassifier(Normalize(mean, std), features, head)


# --------------------------------------------------------------------------- softplus view


def _smooth_relu(x: torch.Tensor, beta: float) -> torch.Tensor:
    return kernels.smooth_relu(x, beta)  # F.softplus(x, beta=beta) with a cheaper double backward


def _smooth_hardtanh(x: torch.Tensor, lo: float, hi: float, beta: float) -> torch.Tensor:
    # clamp(x, lo, hi) = lo + relu(x − lo) − relu(x − hi), each relu made smooth
    return lo + F.softplus(x - lo, beta=beta) - F.softplus(x - hi, beta=beta)


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


class _SoftplusActivations:
    """Routes ReLU-family calls to smooth Softplus(β) versions (inside a :class:`kernels.FastKernels` mode).

    Intercepting at the function level (not by swapping modules) makes it work for any model,
    including ones that call ``F.relu`` or ``x.relu()`` directly, and leaves the parameters alone.
    """

    def __init__(self, beta: float):
        self.beta = beta

    def replace(self, func, args: tuple, kwargs: dict):
        if func in _RELU_FUNCS:
            return _smooth_relu(args[0], self.beta)
        if func is F.relu6:
            return _smooth_hardtanh(args[0], 0.0, 6.0, self.beta)
        if func is F.hardtanh:
            lo = _arg(args, kwargs, 1, "min_val", -1.0)
            hi = _arg(args, kwargs, 2, "max_val", 1.0)
            return _smooth_hardtanh(args[0], lo, hi, self.beta)
        if func is F.leaky_relu:
            slope = _arg(args, kwargs, 1, "negative_slope", 0.01)
            return slope * args[0] + (1 - slope) * _smooth_relu(args[0], self.beta)
        return NotImplemented


def _softplus_mode(beta: float):
    """The view's smooth activations, in the active FastKernels context when there is one (an attack's: one
    mode instead of two on every operation), else in a mode of their own (with the fast CPU pooling)."""
    outer = kernels.active()
    if outer is not None and outer.activations is None:
        return outer.replacing_activations(_SoftplusActivations(beta))
    return kernels.FastKernels(activations=_SoftplusActivations(beta))


_RELU_FUNCS = kernels.RELU_FUNCS


class SoftplusView(nn.Module):
    """A view of ``model`` whose ReLUs act as Softplus(β); it *is* the same module, no copy.

    Second derivatives of ReLU networks vanish almost everywhere, so explanation attacks and
    second-order regularisers differentiate through this view (Dombrowski et al. grow β from 10
    to 100) and report results on the original model. ``view.beta`` may be changed in place; as
    β → ∞ the view converges to the original model.
    """

    def __init__(self, model: nn.Module, beta: float = 10.0):
        super().__init__()
        self.model = model
        self.beta = beta

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"softplus beta must be a positive finite number, got {value}")
        self._beta = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _softplus_mode(self._beta):
            return self.model(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        with _softplus_mode(self._beta):
            return self.model.embed(x)


def softplus_view(model: nn.Module, beta: float = 10.0) -> SoftplusView:
    """The weight-sharing Softplus(β) view of ``model`` (see :class:`SoftplusView`)."""
    return SoftplusView(model, beta)


def beta_schedule(start: float, end: float, steps: int) -> list[float]:
    """Geometric β growth from ``start`` to ``end`` over ``steps`` steps (Dombrowski: 10 → 100)."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if steps == 1:
        return [float(end)]
    ratio = (end / start) ** (1.0 / (steps - 1))
    return [float(start * ratio**i) for i in range(steps)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def device_of(model: nn.Module) -> torch.device:
    """The device a model computes on: that of its first parameter (else its first buffer; else the CPU).

    Args:
        model: any module.

    Returns:
        A ``torch.device``; inputs moved there meet the model's weights.

    Example:
        >>> device_of(nn.Linear(2, 2))
        device(type='cpu')
    """
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def class_probabilities(model: nn.Module, images: torch.Tensor | Any, batch_size: int | None = None, *,
                        indices: Sequence[int] | None = None,
                        progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Softmax class probabilities (see :func:`_per_image_outputs`), a CPU float tensor ``(N, K)``.

    Example:
        >>> probs = class_probabilities(model, x, batch_size=4)
        >>> probs.shape[0] == x.shape[0], bool(torch.allclose(probs.sum(1), torch.ones(len(x))))
        (True, True)
    """
    return _per_image_outputs(model, images, lambda logits: torch.softmax(logits, 1), batch_size,
                              indices=indices, progress=progress)


def _per_image_outputs(model: nn.Module, images: torch.Tensor | Any, of_logits: Callable[[torch.Tensor], torch.Tensor],
                       batch_size: int | None = None, *, indices: Sequence[int] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``of_logits(logits)`` of every image, in batches on the model's device, without gradients, in eval mode.

    A batch that runs out of accelerator memory is halved and retried (:func:`~explrobust_core.batching.map_batches`).

    Args:
        model: pixels in ``[0, 1]`` → logits.
        images: an image tensor ``(N, C, H, W)`` (on any device), or a dataset (``len``, ``info`` and ``batch(indices)``).
        batch_size: images per forward pass on the first try (default: on the CPU a cap from the model's size, on an
            accelerator a generous start; :func:`~explrobust_core.batching.start_batch_size`).
        indices: the images to classify (default: all of them, in order).
        progress: ``progress(done, total)`` after each batch.

    Returns:
        ``of_logits``' outputs joined on the CPU, one row per image (``len(indices)`` rows); ``(0, 0)`` for no images.
    """
    from .batching import map_batches, start_batch_size

    device = device_of(model)
    chosen = list(range(len(images))) if indices is None else list(indices)
    if not chosen:
        return torch.zeros(0, 0)
    if isinstance(images, torch.Tensor):  # a tensor is sliced (no copy) unless indices pick its images
        def batch(start: int, stop: int) -> torch.Tensor:
            return images[start:stop] if indices is None else images[chosen[start:stop]]
        numel = images[0].numel()
    else:
        def batch(start: int, stop: int) -> torch.Tensor:
            return images.batch(chosen[start:stop])[0]
        info = getattr(images, "info", None)  # datasets know their input shape; anything else shows one image
        numel = int(torch.Size(info.input_shape).numel()) if info is not None else batch(0, 1)[0].numel()

    def classify(start: int, stop: int) -> torch.Tensor:
        out = of_logits(lean_forward(model, batch(start, stop).to(device))).cpu()
        if progress is not None:
            progress(stop, len(chosen))
        return out

    size = batch_size or start_batch_size(model, numel, items=len(chosen))
    with eval_mode(model), torch.no_grad():
        return torch.cat(map_batches(classify, len(chosen), size))


def predict(model: nn.Module, images: torch.Tensor | Any, batch_size: int | None = None, *,
            indices: Sequence[int] | None = None, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The predicted class of every image (the logits' arg-max; see :func:`_per_image_outputs`), a CPU
    ``LongTensor`` ``(N,)``.

    Example:
        >>> pred = predict(model, x, batch_size=4)
        >>> pred.shape == y.shape, pred.dtype
        (True, torch.int64)
    """
    pred = _per_image_outputs(model, images, lambda logits: logits.argmax(1), batch_size,
                              indices=indices, progress=progress)
    return pred if pred.ndim == 1 else torch.zeros(0, dtype=torch.long)


class eval_mode:
    """Context manager: the model in eval mode inside, its previous mode restored after.

    Attacks run in eval mode (BatchNorm statistics frozen, no dropout) even when called from a
    training loop.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> nn.Module:
        self.was_training = self.model.training
        return self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)


_PIECEWISE_LINEAR = _RELU_FUNCS | {F.relu6, F.hardtanh, F.leaky_relu}


class _ActivationProbe(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _PIECEWISE_LINEAR:
            self.seen = True
        return func(*args, **(kwargs or {}))


def has_piecewise_linear_activations(model: nn.Module, sample: torch.Tensor) -> bool:
    """True if a forward pass on ``sample`` calls a ReLU-family function (second derivatives vanish).

    Observed on a real forward pass, so models that call ``F.relu`` directly are caught too.
    """
    if isinstance(model, SoftplusView):
        return False
    probe = _ActivationProbe()
    with torch.no_grad(), probe:
        model(sample[:1])
    return probe.seen


from . import published as _published  # noqa: E402,F401  registers the published architectures (needs the above)
