"""Published architectures and their parameter names: what a foreign checkpoint's keys mean here.

Every published CIFAR family is built as one of explrobust's own :class:`~.models.ImageClassifier`
architectures (``normalize → features → head``); an :class:`ArchSpec` carries the *written key
map* from the published parameter names to ours, as module-prefix pairs (longest prefix wins):

WRN-D-K, the "Standard" layout of RobustBench and TRADES (Zagoruyko & Komodakis), n = (D − 4) / 6
blocks per group → ``wideresnet`` (depth D, widen factor K)::

    conv1                 → features.0
    block{g}.layer.{j}    → features.{1 + (g − 1)·n + j}      (g = 1, 2, 3; j < n)
    ….convShortcut        → ….shortcut
    bn1 (top level)       → features.{1 + 3n}
    fc                    → head
    sub_block1.*          dropped (some authors build it; forward never calls it)

PreActResNet-18 (He et al., identity mappings; RobustBench's layout) → ``preact_resnet18``::

    conv1                 → features.0
    layer{s}.{j}          → features.{1 + 2(s − 1) + j}       (s = 1…4; j = 0, 1)
    bn (if present)       → features.9
    linear                → head

CIFAR ResNet-18 (He et al. with a 3×3 stem; RobustBench's ``ResNet18``) → ``resnet18``::

    conv1, bn1            → features.0, features.1
    layer{s}.{j}          → features.{3 + 2(s − 1) + j}
    linear                → head

torchvision / timm: any name X → net.X (architectures ``torchvision`` / ``timm``, a
:class:`~.models.WrappedClassifier` whose ``embed`` hooks the last linear layer).

Inside a block the names are the published ones (``bn1``, ``conv1``, ``bn2``, ``conv2``,
``shortcut.0``…), so only prefixes move. The published CIFAR models pool with a fixed 8×8 (WRN)
or 4×4 (ResNets) window, which equals our global average pool on 32×32 inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field
from torch import nn

from .models import ARCHITECTURES
from .registry import Config

# --------------------------------------------------------------------------- PreActResNet-18


class _PreActBlock(nn.Module):
    """He et al.'s pre-activation basic block: BN-ReLU-conv3×3-BN-ReLU-conv3×3 + shortcut; the 1×1
    projection shortcut (when the shape changes) takes the block's raw input (RobustBench's
    ``PreActBlock``) or its activated input (``shortcut_from="activation"``)."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut_from: str):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.from_activation = shortcut_from == "activation"
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        o = self.relu1(self.bn1(x))
        if hasattr(self, "shortcut"):
            shortcut = self.shortcut(o if self.from_activation else x)
        else:
            shortcut = x
        return self.conv2(self.relu2(self.bn2(self.conv1(o)))) + shortcut


class PreActResNet18Config(Config):
    base_width: int = Field(64, ge=4, le=256, description="channels of the first stage (doubles per stage)")
    bn_before_fc: bool = Field(False, description="a final BN-ReLU before pooling (some published variants)")
    shortcut_from: Literal["input", "activation"] = Field(
        "input", description="what the projection shortcut convolves: the block's input or its BN-ReLU")


@ARCHITECTURES.register("preact_resnet18", config=PreActResNet18Config,
                        summary="PreActResNet-18 (pre-activation, CIFAR stem), RobustBench's layout")
def preact_resnet18(cfg: PreActResNet18Config, in_channels: int, height: int, width: int, num_classes: int):
    """conv3×3(C→w), stages of 2 pre-activation blocks with widths w, 2w, 4w, 8w (strides 1, 2, 2, 2),
    [BN-ReLU], global average pool, FC(8w → classes)."""
    w = cfg.base_width
    layers: list[nn.Module] = [nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)]
    cin = w
    for i, cout in enumerate([w, 2 * w, 4 * w, 8 * w]):
        for j in range(2):
            layers.append(_PreActBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, cfg.shortcut_from))
            cin = cout
    if cfg.bn_before_fc:
        layers += [nn.BatchNorm2d(cin), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), nn.Linear(cin, num_classes)


# --------------------------------------------------------------------------- torchvision / timm


class LibraryModelConfig(Config):
    name: str = Field(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$",
                      description="the library's model name, e.g. resnet18")


@ARCHITECTURES.register("torchvision", config=LibraryModelConfig, tags=("library",),
                        summary="any torchvision.models classifier by name (weights from your file)")
def torchvision_model(cfg: LibraryModelConfig, in_channels: int, height: int, width: int, num_classes: int):
    import torchvision.models as tvm

    if cfg.name not in tvm.list_models():
        raise ValueError(f"torchvision has no model {cfg.name!r} (see torchvision.models.list_models())")
    if in_channels != 3:
        raise ValueError(f"torchvision models take 3 channels, the card says {in_channels}")
    return tvm.get_model(cfg.name, weights=None, num_classes=num_classes)


@ARCHITECTURES.register("timm", config=LibraryModelConfig, tags=("library",),
                        summary="any timm model by name (optional: needs timm)")
def timm_model(cfg: LibraryModelConfig, in_channels: int, height: int, width: int, num_classes: int):
    try:
        import timm
    except ImportError:
        raise ValueError("timm models need the optional package timm (pip install timm)") from None
    if not timm.is_model(cfg.name):
        raise ValueError(f"timm has no model {cfg.name!r} (see timm.list_models())")
    return timm.create_model(cfg.name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


# --------------------------------------------------------------------------- key maps


@dataclass(frozen=True)
class ArchSpec:
    """A published architecture: which explrobust architecture builds it and how its keys map."""

    label: str  # as given: wrn-28-10, preact-resnet18, resnet18, torchvision:resnet18
    architecture: str
    arch_config: dict[str, Any]
    prefixes: dict[str, str]  # published module prefix → ours ("" → "net." for whole-library models)
    dropped: tuple[str, ...] = field(default=())  # published module prefixes that are never used

    def _move(self, key: str, table: dict[str, str]) -> str:
        best = max((p for p in table if p == "" or key == p or key.startswith(p + ".")), key=len, default=None)
        if best is None:
            return key
        if best == "":
            return table[""] + key
        return table[best] + key[len(best):]

    def to_ours(self, key: str) -> str:
        return self._move(key, self.prefixes)

    def to_published(self, key: str) -> str:
        if "" in self.prefixes:  # library models: just the prefix
            return key.removeprefix(self.prefixes[""])
        return self._move(key, {v: k for k, v in self.prefixes.items()})

    def is_dropped(self, key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in self.dropped)


_WRN = re.compile(r"^wrn-(\d+)-(\d+)$")
CIFAR_ARCHS = ("wrn-28-10", "wrn-34-10", "wrn-34-20", "wrn-70-16", "preact-resnet18", "resnet18")


def arch_choices() -> list[str]:
    """The architectures offered in forms (any wrn-D-K with D = 6n + 4 is accepted too)."""
    return [*CIFAR_ARCHS, "torchvision:NAME", "timm:NAME"]


def resolve_arch(label: str, shapes: dict[str, tuple[int, ...]] | None = None) -> ArchSpec:
    """The :class:`ArchSpec` of ``label``; ``shapes`` (the file's tensor shapes by published name) settles
    what only the file can tell: PreActResNet-18 with or without its final ``bn``, and the first stage's
    width of the ResNet-18s (64 as published; any other width is the same layout, scaled)."""
    shapes = shapes or {}
    label = str(label).strip()
    width = {"base_width": int(shapes["conv1.weight"][0])} if len(shapes.get("conv1.weight", ())) == 4 else {}
    if match := _WRN.match(label):
        depth, k = int(match[1]), int(match[2])
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"{label}: a WideResNet's depth must be 6n + 4 (10, 16, 28, 34, 40, 70, …)")
        n = (depth - 4) // 6
        prefixes = {"conv1": "features.0", "bn1": f"features.{1 + 3 * n}", "fc": "head"}
        for g in range(1, 4):
            for j in range(n):
                ours = f"features.{1 + (g - 1) * n + j}"
                prefixes[f"block{g}.layer.{j}"] = ours
                prefixes[f"block{g}.layer.{j}.convShortcut"] = ours + ".shortcut"
        return ArchSpec(label, "wideresnet", {"depth": depth, "widen_factor": k}, prefixes, dropped=("sub_block1",))
    if label == "preact-resnet18":
        prefixes = {"conv1": "features.0", "linear": "head"}
        prefixes.update({f"layer{s}.{j}": f"features.{1 + 2 * (s - 1) + j}" for s in range(1, 5) for j in range(2)})
        bn = any(k.startswith("bn.") for k in shapes)
        if bn:
            prefixes["bn"] = "features.9"
        return ArchSpec(label, "preact_resnet18", {"bn_before_fc": bn, **width}, prefixes)
    if label == "resnet18":
        prefixes = {"conv1": "features.0", "bn1": "features.1", "linear": "head"}
        prefixes.update({f"layer{s}.{j}": f"features.{3 + 2 * (s - 1) + j}" for s in range(1, 5) for j in range(2)})
        return ArchSpec(label, "resnet18", width, prefixes)
    library, _, name = label.partition(":")
    if library in ("torchvision", "timm") and name:
        LibraryModelConfig(name=name)  # validates the name's characters
        return ArchSpec(label, library, {"name": name}, {"": "net."})
    raise ValueError(f"unknown architecture {label!r}; use one of {', '.join(arch_choices())} "
                     "(wrn-D-K for any WideResNet depth D and width K)")
