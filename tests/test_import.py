"""Imports of published checkpoints from local files (RobustBench, TRADES, Madry lab, torchvision, timm) and
models.wrap for any module.

Each layout's reference network is written here a second time, independently, from its published
description (Zagoruyko & Komodakis' WRN as RobustBench/TRADES name it; He et al.'s pre-activation and
CIFAR ResNet-18), with the published parameter names; torchvision's own resnet18 is its reference.
Random weights (BatchNorm statistics included) are saved in the layout, imported with one call, and the
imported model's logits must equal the reference's on the same jittered inputs.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from explrobust_core.cli import main
from explrobust_core.importers import import_file
from explrobust_core.models import WrappedClassifier, input_normalization, wrap
from explrobust_core.uploads import UploadError
from explrobust_core.zoo import ModelCard, load_checkpoint, read_card, save_checkpoint

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


# --------------------------------------------------------------------------- reference networks (test side)


def conv3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class RefWideBlock(nn.Module):
    """WRN basic block, pre-activation; the 1×1 'convShortcut' exists when widths differ and sees BN-ReLU(x)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv3(cout, cout)
        if cin != cout:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        skip = self.convShortcut(a) if hasattr(self, "convShortcut") else x
        return skip + self.conv2(F.relu(self.bn2(self.conv1(a))))


class RefGroup(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(*[RefWideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class RefWRN(nn.Module):
    def __init__(self, depth, k, classes=10, sub_block1=False):
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = conv3(3, 16)
        self.block1 = RefGroup(n, 16, 16 * k, 1)
        if sub_block1:  # some authors build it and never call it
            self.sub_block1 = RefGroup(n, 16, 16 * k, 1)
        self.block2 = RefGroup(n, 16 * k, 32 * k, 2)
        self.block3 = RefGroup(n, 32 * k, 64 * k, 2)
        self.bn1 = nn.BatchNorm2d(64 * k)
        self.fc = nn.Linear(64 * k, classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
        return self.fc(out.flatten(1))


class RefPreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv3(cout, cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False))

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + (self.shortcut(x) if hasattr(self, "shortcut") else x)


class RefBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = conv3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class RefResNet18(nn.Module):
    """CIFAR ResNet-18 (preact=False) or PreActResNet-18 (preact=True, optional final 'bn')."""

    def __init__(self, preact, bn_before_fc=False, classes=10, width=64):
        super().__init__()
        self.preact, widths = preact, [width, 2 * width, 4 * width, 8 * width]  # published: width 64
        block = RefPreActBlock if preact else RefBasicBlock
        self.conv1 = conv3(3, width)
        if not preact:
            self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for s, w in enumerate(widths, start=1):
            setattr(self, f"layer{s}", nn.Sequential(block(cin, w, 1 if s == 1 else 2), block(w, w, 1)))
            cin = w
        if bn_before_fc:
            self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, classes)

    def forward(self, x):
        out = self.conv1(x) if self.preact else F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if hasattr(self, "bn"):
            out = F.relu(self.bn(out))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters too, so a BN mapped to the wrong place shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.num_batches_tracked.fill_(7)
    return model.eval()


def inputs(n=2, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (0.1 + 0.8 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def assert_same_logits(ours, ref_logits, x):
    with torch.no_grad():
        got = ours(x)
    scale = max(1.0, float(ref_logits.abs().max()))
    assert float((got - ref_logits).abs().max()) <= 1e-5 * scale, (got, ref_logits)
    assert float(ref_logits.std()) > 1e-3  # not a degenerate comparison


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    path = tmp_path / "user_zoo"
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(path))
    return path


def save_pt(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def stored_files(zoo: Path) -> list[str]:
    return sorted(str(p.relative_to(zoo)) for p in zoo.rglob("*") if p.is_file() and p.name != ".lock") \
        if zoo.exists() else []


# --------------------------------------------------------------------------- equal logits per layout


@pytest.mark.parametrize("depth,k,sub_block1", [(10, 1, False), (16, 2, True)])
def test_robustbench_wrn_imports_with_equal_logits(tmp_path, zoo, depth, k, sub_block1):
    torch.manual_seed(depth)
    ref = randomize(RefWRN(depth, k, sub_block1=sub_block1))
    file = save_pt({"state_dict": {"module." + key: v for key, v in ref.state_dict().items()}}, tmp_path / "rb.pt")
    installed = import_file(file, layout="robustbench", arch=f"wrn-{depth}-{k}", dataset="cifar10", name="rb")
    model, card = load_checkpoint(installed.path, "cpu")
    assert card.source.layout == "robustbench" and card.source.arch == f"wrn-{depth}-{k}"
    assert card.mean == [0.0] * 3 and card.std == [1.0] * 3 and "[0, 1] pixels" in card.source.normalization
    assert card.architecture == "wideresnet" and card.input_shape == (3, 32, 32) and card.classes[0] == "airplane"
    x = inputs()
    with torch.no_grad():
        assert_same_logits(model, ref(x), x)
    assert any("sub_block1" in n for n in installed.notices) == sub_block1


def test_wrn_28_10_key_layout_and_logits(tmp_path, zoo):
    """The full-size WideResNet-28-10 of the leaderboard: every published key lands, logits equal."""
    torch.manual_seed(0)
    ref = randomize(RefWRN(28, 10))
    file = tmp_path / "wrn-28-10.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(file))
    installed = import_file(file, layout="robustbench", arch="wrn-28-10", dataset="cifar10", name="wrn2810")
    model, _ = load_checkpoint(installed.path, "cpu")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())  # 36.5 M
    x = inputs(n=2)
    with torch.no_grad():
        assert_same_logits(model, ref(x), x)


@pytest.mark.parametrize("label,make", [
    ("wrn-28-10", lambda: RefWRN(28, 10, sub_block1=True)), ("wrn-34-10", lambda: RefWRN(34, 10, sub_block1=True)),
    ("wrn-34-20", lambda: RefWRN(34, 20)), ("wrn-70-16", lambda: RefWRN(70, 16, classes=100)),
    ("preact-resnet18", lambda: RefResNet18(preact=True)), ("resnet18", lambda: RefResNet18(preact=False)),
])
def test_every_published_key_maps_onto_a_tensor_of_the_same_shape(label, make):
    """The leaderboard's full-size networks, built on the meta device (shapes only, no memory): the key map
    is a bijection between the published state dict (unused sub_block1 aside) and explrobust's."""
    from explrobust_core.published import resolve_arch
    from explrobust_core.zoo import expected_state

    with torch.device("meta"):
        ref = make()
    published = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    spec = resolve_arch(label, published)
    classes = [str(i) for i in range(ref.fc.out_features if hasattr(ref, "fc") else ref.linear.out_features)]
    card = ModelCard(name="layout", architecture=spec.architecture, arch_config=spec.arch_config, dataset="cifar10",
                     input_shape=(3, 32, 32), mean=[0.0] * 3, std=[1.0] * 3, classes=classes)
    ours = {k: tuple(v.shape) for k, v in expected_state(card).items() if not k.startswith("normalize.")}
    mapped = {spec.to_ours(k): shape for k, shape in published.items() if not spec.is_dropped(k)}
    assert mapped == ours
    assert {spec.to_published(k) for k in ours} == {k for k in published if not spec.is_dropped(k)}


def test_trades_wrn_drops_its_unused_sub_block(tmp_path, zoo):
    torch.manual_seed(3)
    ref = randomize(RefWRN(10, 2, classes=10, sub_block1=True))
    file = save_pt(ref.state_dict(), tmp_path / "model-wideres-epoch76.pt")
    installed = import_file(file, layout="trades", arch="wrn-10-2", dataset="cifar10", name="trades")
    model, card = load_checkpoint(installed.path, "cpu")
    assert card.source.layout == "trades"
    x = inputs()
    with torch.no_grad():
        assert_same_logits(model, ref(x), x)


@pytest.mark.parametrize("bn_before_fc,width", [(False, 64), (True, 8)])
def test_preact_resnet18_imports_with_equal_logits(tmp_path, zoo, bn_before_fc, width):
    torch.manual_seed(5)
    ref = randomize(RefResNet18(preact=True, bn_before_fc=bn_before_fc, width=width))
    file = save_pt({"model_state_dict": ref.state_dict()}, tmp_path / "preact.pth")
    installed = import_file(file, layout="robustbench", arch="preact-resnet18", dataset="cifar10", name="preact",
                            mean=CIFAR_MEAN, std=CIFAR_STD)
    model, card = load_checkpoint(installed.path, "cpu")
    assert card.arch_config == {"bn_before_fc": bn_before_fc, "base_width": width}
    assert card.source.normalization.startswith("given")
    x = inputs()
    with torch.no_grad():
        ref_logits = ref((x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
    assert_same_logits(model, ref_logits, x)


def test_madrylab_checkpoint_with_normaliser(tmp_path, zoo):
    """The robustness library: {'model': {module.model.*, module.attacker.model.*, module.normalizer.*}, …}."""
    torch.manual_seed(6)
    ref = randomize(RefResNet18(preact=False, width=8))  # the published layout at 1/8 of its width: fast
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    state = {}
    for key, value in ref.state_dict().items():
        state[f"module.model.{key}"] = value
        state[f"module.attacker.model.{key}"] = value.clone()
    for prefix in ("module.normalizer.", "module.attacker.normalize."):
        state[prefix + "new_mean"], state[prefix + "new_std"] = mean.view(3, 1, 1), std.view(3, 1, 1)
    file = save_pt({"model": state, "epoch": 150, "optimizer": {"lr": 0.1}}, tmp_path / "cifar_l2.pt")
    installed = import_file(file, layout="madrylab", arch="resnet18", dataset="cifar10", name="madry")
    model, card = load_checkpoint(installed.path, "cpu")
    assert card.mean == pytest.approx(mean.tolist()) and card.std == pytest.approx(std.tolist())
    assert "normaliser" in card.source.normalization
    assert input_normalization(model)[0].flatten().tolist() == pytest.approx(mean.tolist())
    x = inputs()
    with torch.no_grad():
        assert_same_logits(model, ref((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)), x)
    with pytest.raises(UploadError, match="contradict"):
        import_file(file, layout="madrylab", arch="resnet18", dataset="cifar10", name="madry2", mean=[0, 0, 0],
                    std=[1, 1, 1])


def test_torchvision_resnet18_imports_with_equal_logits(tmp_path, zoo):
    import torchvision

    torch.manual_seed(7)
    ref = randomize(torchvision.models.resnet18(num_classes=10))
    file = save_pt(ref.state_dict(), tmp_path / "resnet18_finetuned.pt")
    installed = import_file(file, layout="torchvision:resnet18", dataset="cifar10", name="tv18")
    model, card = load_checkpoint(installed.path, "cpu")
    assert isinstance(model, WrappedClassifier) and card.architecture == "torchvision"
    assert card.source.arch == "torchvision:resnet18" and "ImageNet" in card.source.normalization
    x = inputs()
    mean, std = torch.tensor(card.mean).view(1, 3, 1, 1), torch.tensor(card.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert_same_logits(model, ref((x - mean) / std), x)
        # Way3's penultimate features: the input of fc, through the hook
        features = torch.flatten(ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(
            ref.maxpool(ref.relu(ref.bn1(ref.conv1((x - mean) / std))))))))), 1)
        assert torch.allclose(model.embed(x), features, atol=1e-5)


def test_madrylab_imagenet_resnet_is_a_torchvision_one(tmp_path, zoo):
    """The robustness library's ImageNet ResNets use torchvision's names under its model./attacker. prefixes."""
    import torchvision

    torch.manual_seed(15)
    ref = randomize(torchvision.models.resnet18(num_classes=10))
    state = {f"module.model.{k}": v for k, v in ref.state_dict().items()}
    state["module.normalizer.new_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    state["module.normalizer.new_std"] = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    file = save_pt({"model": state, "epoch": 90}, tmp_path / "imagenet_l2_3_0.pt")
    installed = import_file(file, layout="madrylab", arch="torchvision:resnet18", dataset="cifar10", name="madry_in")
    model, card = load_checkpoint(installed.path, "cpu")
    assert card.architecture == "torchvision" and "normaliser" in card.source.normalization
    x = inputs()
    mean, std = state["module.normalizer.new_mean"][None], state["module.normalizer.new_std"][None]
    with torch.no_grad():
        assert_same_logits(model, ref((x - mean) / std), x)


def test_a_torchvision_model_without_a_linear_layer_imports(tmp_path, zoo):
    import torchvision

    torch.manual_seed(16)
    ref = torchvision.models.squeezenet1_1(num_classes=10).eval()  # classifies with a 1×1 conv
    file = save_pt(ref.state_dict(), tmp_path / "squeeze.pt")
    model, card = load_checkpoint(import_file(file, layout="torchvision:squeezenet1_1", dataset="cifar10",
                                              name="squeeze").path, "cpu")
    x = inputs()
    mean, std = torch.tensor(card.mean).view(1, 3, 1, 1), torch.tensor(card.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert_same_logits(model, ref((x - mean) / std), x)


def test_timm_layout(tmp_path, zoo):
    timm = pytest.importorskip("timm", reason="timm is an optional extra; its layout is tested where it is installed")
    torch.manual_seed(8)
    ref = randomize(timm.create_model("resnet18", pretrained=False, num_classes=10))
    file = save_pt(ref.state_dict(), tmp_path / "timm18.pt")
    installed = import_file(file, layout="timm:resnet18", dataset="cifar10", name="timm18")
    model, card = load_checkpoint(installed.path, "cpu")
    x = inputs()
    mean, std = torch.tensor(card.mean).view(1, 3, 1, 1), torch.tensor(card.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert_same_logits(model, ref((x - mean) / std), x)


# --------------------------------------------------------------------------- refusals


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_bad_files_are_refused_and_nothing_is_stored(tmp_path, zoo):
    torch.manual_seed(9)
    ref = randomize(RefWRN(10, 1))
    good = save_pt(ref.state_dict(), tmp_path / "good.pt")
    # wrong architecture: one block per group in the file, two expected
    with pytest.raises(UploadError, match=r"wrn-16-1 in the robustbench layout.*missing .*block1\.layer\.1\."):
        import_file(good, layout="robustbench", arch="wrn-16-1", dataset="cifar10", name="bad")
    # wrong width: shapes named in the published names
    with pytest.raises(UploadError, match=r"shape mismatches \(block1\.layer\.0\.bn2\.bias: \(16,\) vs \(32,\)"):
        import_file(good, layout="robustbench", arch="wrn-10-2", dataset="cifar10", name="bad")
    # wrong layout: a WRN file read as a torchvision ResNet-18
    with pytest.raises(UploadError, match=r"torchvision:resnet18 in the torchvision layout.*unexpected tensors"):
        import_file(good, layout="torchvision:resnet18", dataset="cifar10", name="bad")
    with pytest.raises(UploadError, match="no 'model.' tensors"):
        import_file(good, layout="madrylab", arch="wrn-10-1", dataset="cifar10", name="bad")
    # truncated
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UploadError, match="truncated|not a readable"):
        import_file(truncated, layout="robustbench", arch="wrn-10-1", dataset="cifar10", name="bad")
    # a pickle that would run os.system: refused by torch.load(weights_only=True), never executed
    evil = save_pt({"state_dict": ref.state_dict(), "hook": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UploadError, match="could run code"):
        import_file(evil, layout="robustbench", arch="wrn-10-1", dataset="cifar10", name="bad")
    raw = tmp_path / "raw.pkl.pt"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(UploadError, match="not a zip-format torch file"):
        import_file(raw, layout="robustbench", arch="wrn-10-1", dataset="cifar10", name="bad")
    with pytest.raises(UploadError, match="unknown architecture"):
        import_file(good, layout="robustbench", arch="vgg16", dataset="cifar10", name="bad")
    with pytest.raises(UploadError, match=r"takes 32×32 images, imagefolder gives 48×48; use --input-size 32"):
        import_file(good, layout="robustbench", arch="wrn-10-1", dataset="imagefolder", name="bad", input_size=48,
                    dataset_config={"root": str(make_folder(tmp_path / "pngs"))})
    with pytest.raises(UploadError, match=r"mean and std need 3 values"):
        import_file(good, layout="robustbench", arch="wrn-10-1", dataset="cifar10", name="bad", mean=[0.5], std=[0.5])
    with pytest.raises(UploadError, match="unknown layout"):
        import_file(good, layout="keras", arch="wrn-10-1", dataset="cifar10", name="bad")
    assert stored_files(zoo) == []


def test_cli_import_refuses_in_one_line(tmp_path, zoo, capsys):
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really")
    code = main(["zoo", "import", str(tmp_path / "junk.pt"), "--layout", "robustbench", "--arch", "wrn-10-1",
                 "--dataset", "cifar10", "--name", "junk"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("explrobust: error:") and err.count("\n") == 1
    assert stored_files(zoo) == []


# --------------------------------------------------------------------------- end to end on an image folder


def make_folder(root: Path, size=32, per_class=2, classes=("cat", "dog")):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_cli_import_then_explain_and_attack_on_an_image_folder(tmp_path, zoo, capsys):
    folder = make_folder(tmp_path / "pngs")
    torch.manual_seed(10)
    ref = randomize(RefWRN(10, 1, classes=2))
    file = save_pt(ref.state_dict(), tmp_path / "tiny_wrn.pt")
    assert main(["zoo", "import", str(file), "--layout", "robustbench", "--arch", "wrn-10-1", "--dataset",
                 "imagefolder", "--data-root", str(folder), "--input-size", "32", "--name", "tiny"]) == 0
    assert "imported wrn-10-1 (robustbench) as imagefolder/tiny" in capsys.readouterr().out
    ckpt = zoo / "imagefolder" / "tiny.safetensors"
    card = read_card(ckpt)
    assert card.classes == ["cat", "dog"] and card.dataset_config["root"] == str(folder)
    assert card.command.startswith("explrobust zoo import")
    out = tmp_path / "out"
    assert main(["explain", "--checkpoint", str(ckpt), "--indices", "0,3", "--method", "gradient", "--out", str(out),
                 "--device", "cpu"]) == 0
    result = json.loads((out / "explain_gradient.json").read_text())
    assert np.asarray(result["images"][0]["map"]).shape == (32, 32)
    assert main(["attack-explanation", "--checkpoint", str(ckpt), "--indices", "1", "--attack", "ifia", "--steps", "2",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "ifia.json").exists() and (out / "ifia_test_1.png").exists()


# --------------------------------------------------------------------------- wrap()


class TinyNet(nn.Module):
    """A user's own network: its own names, F.relu calls, no embed()."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2),
                                  nn.Flatten())
        self.classifier = nn.Linear(16, 3)

    def forward(self, x):
        return self.classifier(F.relu(self.body(x)))


def test_wrap_any_module_then_save_and_load(tmp_path):
    from explrobust_core.attacks.classification import run_classification_attack
    from explrobust_core.explain import explanation_maps

    torch.manual_seed(11)
    net = TinyNet().eval()
    model = wrap(net, mean=[0.5] * 3, std=[0.25] * 3, input_shape=(3, 16, 16), classes=["a", "b", "c"])
    x = inputs(n=3, size=16)
    with torch.no_grad():
        assert torch.allclose(model(x), net((x - 0.5) / 0.25), atol=1e-6)
        assert torch.allclose(model.embed(x), F.relu(net.body((x - 0.5) / 0.25)), atol=1e-6)
    maps = explanation_maps(model, x, "gradient", target=torch.tensor([0, 1, 2]))
    assert maps.shape[0] == 3 and bool(torch.isfinite(maps).all())
    result = run_classification_attack(model, x, torch.tensor([0, 1, 2]), "pgd", {"eps": 0.03, "steps": 2})
    assert "adversarial_accuracy" in result.summary
    # Way3's features (through the hook), an explanation attack (on the Softplus view) and a landscape
    from explrobust_core.attacks.explanation import run_explanation_attack
    from explrobust_core.landscape import input_landscape
    from explrobust_core.sampling import reference_features

    with torch.no_grad():
        assert torch.allclose(reference_features(model, x), F.relu(net.body((x - 0.5) / 0.25)), atol=1e-6)
    attacked = run_explanation_attack(model, x[:1], "ifia", steps=2)
    assert attacked.tensors["adversarial"].shape == (1, 3, 16, 16)
    land = input_landscape(model, x[:1], torch.tensor([0]), {"points": 3, "losses": ["ce"]})
    with torch.no_grad():
        ce = F.cross_entropy(net((x[:1] - 0.5) / 0.25), torch.tensor([0]))
    assert land.summary["ce"]["clean"] == pytest.approx(float(ce), rel=1e-5)
    with pytest.raises(ValueError, match=r"expected \(1, 4\)"):
        wrap(net, mean=[0.5] * 3, std=[0.25] * 3, input_shape=(3, 16, 16), classes=4)
    conv_only = wrap(nn.Sequential(nn.Conv2d(3, 2, 16), nn.Flatten()), mean=[0] * 3, std=[1] * 3,
                     input_shape=(3, 16, 16), classes=2)
    assert explanation_maps(conv_only, x, "gradient", target=torch.tensor([0, 1, 0])).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="no nn.Linear"):  # only Way3's features need a linear head
        conv_only.embed(x)
    named = wrap(nn.Sequential(nn.Conv2d(3, 2, 16), nn.Flatten()), mean=[0] * 3, std=[1] * 3, input_shape=(3, 16, 16),
                 classes=2, head="1")
    assert named.embed(x).shape == (3, 2)
    with pytest.raises(AttributeError):
        wrap(net, mean=[0.5] * 3, std=[0.25] * 3, input_shape=(3, 16, 16), classes=3, head="nowhere")


def test_save_checkpoint_stores_a_wrapped_torchvision_model(tmp_path):
    import torchvision

    torch.manual_seed(12)
    net = randomize(torchvision.models.resnet18(num_classes=4))
    model = wrap(net, mean=[0.4] * 3, std=[0.3] * 3, input_shape=(3, 32, 32), classes=4)
    card = ModelCard(name="mine", architecture="torchvision", arch_config={"name": "resnet18"}, dataset="imagefolder",
                     input_shape=(3, 32, 32), mean=[0.4] * 3, std=[0.3] * 3, classes=["a", "b", "c", "d"],
                     objective="other")
    path = save_checkpoint(model, card, tmp_path)
    loaded, _ = load_checkpoint(path, "cpu")
    x = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_models_of_two_folders_read_their_own(tmp_path):
    from explrobust_core.zoo import dataset_for_card, shared_dataset_options

    def card(name, root, size=32):
        return ModelCard(name=name, architecture="convnet", dataset="imagefolder", input_shape=(3, size, size),
                         mean=[0.5] * 3, std=[0.5] * 3, classes=["cat", "dog"], dataset_config={"root": str(root)})

    a, b = make_folder(tmp_path / "a"), make_folder(tmp_path / "b", size=20)
    cards = [card("a1", a), card("a2", a), card("b1", b, size=16)]
    assert shared_dataset_options("imagefolder", cards[:2]) == {"root": str(a), "image_size": 32}
    assert shared_dataset_options("imagefolder", cards, [cards[2]]) == {"root": str(b), "image_size": 16}
    with pytest.raises(ValueError, match="different options"):
        shared_dataset_options("imagefolder", cards, [cards[0], cards[2]])
    assert shared_dataset_options("digits", cards) == {}
    assert dataset_for_card(cards[2]).batch([0])[0].shape == (1, 3, 16, 16)  # 20×20 PNGs read at the card's size


def test_old_cards_still_parse():
    old = {"schema_version": 1, "name": "m", "architecture": "convnet", "dataset": "digits", "input_shape": [1, 8, 8],
           "mean": [0.3], "std": [0.3], "classes": ["0", "1"]}
    card = ModelCard.model_validate_json(json.dumps(old))
    assert card.source is None and card.dataset_config == {}


# --------------------------------------------------------------------------- the Model zoo page


def test_zoo_page_imports_a_robustbench_file_and_shows_its_source(tmp_path, zoo):
    import sys

    from streamlit.testing.v1 import AppTest

    repo = Path(__file__).resolve().parent.parent
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from pages import ui

    ui.refresh_checkpoints()  # the listing is cached for a few seconds; this test has its own user zoo
    torch.manual_seed(13)
    ref = randomize(RefWRN(10, 1))
    blob = io.BytesIO()
    torch.save({"state_dict": ref.state_dict()}, blob)
    at = AppTest.from_file(str(repo / "app.py"), default_timeout=180).run()
    at.switch_page("pages/zoo.py").run()

    def submit(arch: str):
        at.file_uploader(key="upload_weights").set_value(("rb_wrn.pt", blob.getvalue(), "application/octet-stream"))
        at.text_input(key="upload_name").input("rb_wrn")
        at.selectbox(key="upload_dataset").set_value("cifar10")
        at.selectbox(key="upload_layout").set_value("robustbench")
        at.text_input(key="upload_published_arch").input(arch)
        next(b for b in at.button if b.label == "Upload").click()
        return at.run()

    submit("wrn-16-1")  # the wrong depth: refused, the mismatch named, nothing stored
    assert not at.exception and any("Not uploaded" in e.value and "block1.layer.1" in e.value for e in at.error)
    assert stored_files(zoo) == []
    submit("wrn-10-1")
    assert not at.exception, at.exception
    assert any("Added cifar10/rb_wrn" in s.value for s in at.success)
    table = at.dataframe[0].value.set_index("model")
    assert table.loc["cifar10/rb_wrn", "source"] == "imported from robustbench"
    assert table.loc["cifar10/rb_wrn", "architecture"] == "wideresnet"
    model, _ = load_checkpoint(zoo / "cifar10" / "rb_wrn.safetensors", "cpu")
    x = inputs()
    with torch.no_grad():
        assert_same_logits(model, ref(x), x)


def test_imported_image_folder_model_on_every_page(tmp_path, zoo):
    """An imported WRN over a folder of 32×32 colour PNGs: every page reads the folder the card records and
    answers its default Show me (Clusters with k and pairs that fit 8 images)."""
    import sys

    repo = Path(__file__).resolve().parent.parent
    for path in (repo, repo / "tests"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from apptest_pages import by_label, open_page, show_me
    from pages import ui

    folder = make_folder(tmp_path / "pngs", per_class=4)
    torch.manual_seed(14)
    file = save_pt(randomize(RefWRN(10, 1, classes=2)).state_dict(), tmp_path / "tiny.pt")
    import_file(file, layout="robustbench", arch="wrn-10-1", dataset="imagefolder", name="tiny", input_size=32,
                dataset_config={"root": str(folder)})
    ui.refresh_checkpoints()
    at = open_page("explorer", "Explorer", ["imagefolder/tiny"])
    assert not at.exception and not at.error
    assert [s.value for s in at.subheader] == ["imagefolder/tiny"] and len(at.get("image")) == 8
    at = open_page("attack_lab", "Attack lab", ["imagefolder/tiny"])
    by_label(at.number_input, "steps").set_value(2)
    next(b for b in at.button if b.label == "Show me").click().run()
    assert not at.exception and not at.error
    assert list(at.dataframe[0].value["model"]) == ["imagefolder/tiny"]
    for page, title in (("classification", "Classification robustness"), ("landscape", "Loss landscape")):
        at = show_me(open_page(page, title, ["imagefolder/tiny"]))
        assert not at.error and at.get("image") and at.dataframe, page
    at = open_page("clusters", "Clusters", ["imagefolder/tiny"])
    by_label(at.slider, "Clusters k").set_value(2)
    by_label(at.number_input, "Pairs").set_value(10)
    at = show_me(at)
    assert not at.error and at.get("plotly_chart") and at.get("image")
    at = open_page("study", "Robustness study", ["imagefolder/tiny"])  # no evaluation of it yet: says so
    assert not at.exception and not at.error
