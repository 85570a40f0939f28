"""Import published robust models from LOCAL files into the user zoo (nothing is ever downloaded).

A layout says how a foreign checkpoint is wrapped and named; an architecture (:mod:`.published`)
says which network it is and how its parameter names map onto explrobust's:

- ``robustbench``: RobustBench's "Standard" WideResNets (``wrn-28-10``, ``wrn-34-10``,
  ``wrn-34-20``, ``wrn-70-16``, any ``wrn-D-K``), ``preact-resnet18`` and the CIFAR ``resnet18``;
  models that take raw [0, 1] pixels (mean 0, std 1) unless the file carries ``mu``/``sigma``;
- ``trades``: the TRADES WideResNet (default ``wrn-34-10``), its unused ``sub_block1`` dropped;
- ``madrylab``: the ``robustness`` library's checkpoints — the ``model`` wrapper, the ``model.``
  network (its ``attacker.`` copy dropped) and the ``normalizer.new_mean``/``new_std`` buffers,
  which become the card's mean/std; the network is any CIFAR architecture above or
  ``torchvision:NAME`` (the ImageNet ResNets use torchvision's names);
- ``torchvision:NAME`` / ``timm:NAME``: the library's model built with ``weights=None`` /
  ``pretrained=False`` (timm is optional) and loaded from the file.

Every layout unwraps ``state_dict``/``model_state_dict``/``model`` wrappers and ``module.``
(DataParallel) prefixes. Files are safetensors, or ``.pt``/``.pth`` read only with
``torch.load(weights_only=True)`` (:func:`.zoo.state_dict_from_bytes`): a pickle that would run
code, a truncated file, a file that does not fit the architecture (the first missing, unexpected
and mis-shaped tensors named, in the published names) are refused before anything is written.
The imported model normalises inside (explrobust's ``Normalize``), takes pixels in [0, 1] and is
stored as safetensors + a card recording the source layout, architecture, file, and where its
normalisation came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from pydantic import ValidationError

from .data import DATASETS, known_info, load_dataset
from .io import check_name, read_bounded
from .published import ArchSpec, resolve_arch
from .registry import format_validation_error
from .zoo import (FOREIGN_SUFFIXES, WEIGHTS_MAX_BYTES, CheckpointError, ImportSource, ModelCard, build_from_card,
                  expected_state, state_dict_from_bytes)

LAYOUTS = ("robustbench", "trades", "madrylab", "torchvision", "timm")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
IMPORTED_OBJECTIVE = "other"  # trained elsewhere, with a method we do not know


@dataclass
class Prepared:
    """A checked, loaded model and its card, not yet written anywhere."""

    model: torch.nn.Module
    card: ModelCard
    notices: list[str] = field(default_factory=list)


def split_layout(layout: str, arch: str | None) -> tuple[str, str]:
    """(layout, architecture label): ``torchvision:resnet18`` → (torchvision, torchvision:resnet18)."""
    layout = str(layout).strip()
    base, _, name = layout.partition(":")
    if base not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of robustbench, trades, madrylab, torchvision:NAME, timm:NAME")
    if base in ("torchvision", "timm"):
        name = name or (arch or "").removeprefix(base + ":")
        if not name:
            raise ValueError(f"layout {base} needs the model's name: {base}:NAME (e.g. {base}:resnet18)")
        if arch and arch.removeprefix(base + ":") != name:
            raise ValueError(f"layout {layout} names {name!r} but --arch says {arch!r}")
        return base, f"{base}:{name}"
    if name:
        raise ValueError(f"layout {base} takes no ':NAME'; give the architecture with --arch")
    if not arch:
        if base == "trades":
            return base, "wrn-34-10"
        raise ValueError(f"layout {base} needs --arch (e.g. wrn-28-10, preact-resnet18, resnet18)")
    return base, arch.strip()


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        while key.startswith("module."):  # DataParallel, possibly twice
            key = key[len("module."):]
        out[key] = value
    return out


def _normaliser(mean: torch.Tensor, std: torch.Tensor, where: str) -> tuple[list[float], list[float]]:
    if mean.numel() != std.numel() or not mean.is_floating_point() or not std.is_floating_point():
        raise CheckpointError(f"the checkpoint's normaliser ({where}) has mean {tuple(mean.shape)} and std "
                              f"{tuple(std.shape)}; expected one float per channel")
    return [float(v) for v in mean.flatten()], [float(v) for v in std.flatten()]


def unwrap_layout(state: dict[str, torch.Tensor], layout: str, source: str
                  ) -> tuple[dict[str, torch.Tensor], tuple[list[float], list[float]] | None, list[str]]:
    """The network's own state dict in its published names, the normaliser the file carries (if any)
    and notices about what was dropped."""
    state, notices, norm = _strip_wrappers(state), [], None
    if layout == "madrylab":
        net = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        if not net:
            raise CheckpointError(f"{source} has no 'model.' tensors: not a robustness-library (madrylab) checkpoint "
                                  f"(its keys start with {', '.join(sorted({k.split('.')[0] for k in state})[:4])})")
        if "normalizer.new_mean" in state and "normalizer.new_std" in state:
            norm = _normaliser(state["normalizer.new_mean"], state["normalizer.new_std"], "normalizer.new_mean/new_std")
        others = [k for k in state if not k.startswith(("model.", "attacker.", "normalizer."))]
        if others:
            raise CheckpointError(f"{source}: unexpected tensors beside model./attacker./normalizer. "
                                  f"(e.g. {', '.join(sorted(others)[:3])})")
        dropped = sum(k.startswith("attacker.") for k in state)
        if dropped:
            notices.append(f"Dropped the {dropped} tensors of the attacker's copy of the network (attacker.*).")
        return net, norm, notices
    if layout == "robustbench" and "mu" in state and "sigma" in state:  # RobustBench models that normalise inside
        norm = _normaliser(state.pop("mu"), state.pop("sigma"), "mu/sigma")
    return state, norm, notices


def _dataset_facts(dataset: str, dataset_config: dict | None, input_size: int | None):
    """(input shape, classes, dataset mean/std, dataset options) of ``dataset`` at ``input_size``."""
    entry = DATASETS.get(dataset)
    config = dict(dataset_config or {})
    resizable = "image_size" in entry.config.model_fields
    if input_size is not None:
        if resizable:
            config["image_size"] = int(input_size)
    info = known_info(dataset)
    if info is None or (resizable and input_size is not None and input_size != info.input_shape[1]):
        info = load_dataset(dataset, "test", config).info  # a folder: its classes come from its sub-folders
    if input_size is not None and tuple(info.input_shape[1:]) != (input_size, input_size):
        raise ValueError(f"{dataset} images are {info.input_shape[1]}×{info.input_shape[2]}; it cannot be read at "
                         f"--input-size {input_size} (image folders and resizing datasets can)")
    return tuple(info.input_shape), list(info.classes), list(info.mean), list(info.std), config


def _choose_normalisation(layout: str, given: tuple[Sequence[float], Sequence[float]] | None,
                          held: tuple[list[float], list[float]] | None, dataset_norm, channels: int):
    """(mean, std, where they came from). Flags beat the layout's convention; flags that contradict
    the file's own normaliser are refused rather than silently preferred."""
    if given is not None:
        mean, std = [float(v) for v in given[0]], [float(v) for v in given[1]]
        if held is not None and not (torch.allclose(torch.tensor(mean), torch.tensor(held[0]), atol=1e-6)
                                     and torch.allclose(torch.tensor(std), torch.tensor(held[1]), atol=1e-6)):
            raise ValueError(f"--mean/--std {mean}/{std} contradict the checkpoint's own normaliser {held[0]}/{held[1]}; "
                             "leave them out")
        return mean, std, "given (--mean/--std)"
    if held is not None:
        return held[0], held[1], "from the checkpoint's normaliser buffers"
    if layout in ("robustbench", "trades"):
        return [0.0] * channels, [1.0] * channels, "none: the published model takes [0, 1] pixels (mean 0, std 1)"
    if layout in ("torchvision", "timm"):
        if channels != 3:
            raise ValueError(f"{layout} models take 3 channels; this dataset has {channels}")
        return list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet mean/std (the library's convention; none given)"
    return dataset_norm[0], dataset_norm[1], "the dataset's mean/std (none in the file, none given)"


def _fit(state: dict[str, torch.Tensor], spec: ArchSpec, card: ModelCard, source: str, notices: list[str]):
    """The state in our names, checked against the card's model; mismatches named in published names."""
    from .zoo import _check_state_matches

    dropped = sorted(k for k in state if spec.is_dropped(k))
    if dropped:
        notices.append(f"Dropped {len(dropped)} tensors the network never uses ({dropped[0].split('.')[0]}.*).")
    state = {k: v for k, v in state.items() if not spec.is_dropped(k)}
    expected = expected_state(card)
    published = {spec.to_published(k): v for k, v in expected.items() if not k.startswith("normalize.")}
    filled = [k for k in published if k.endswith(".num_batches_tracked") and k not in state]
    if filled and len(filled) < len(published):  # older torch wrote no counters; they only matter for training
        state.update({k: torch.zeros((), dtype=torch.long) for k in filled})
        notices.append(f"Filled {len(filled)} missing BatchNorm counters (num_batches_tracked) with 0.")
    try:
        _check_state_matches(state, published, source=source, cast_floats=True)
    except CheckpointError as err:
        raise CheckpointError(str(err).replace("the card's architecture", f"{spec.label} in the "
                                                                           f"{card.source.layout} layout")) from None
    return {spec.to_ours(k): v.to(expected[spec.to_ours(k)].dtype) for k, v in state.items()}


def prepare_import(state: dict[str, torch.Tensor], *, layout: str, dataset: str, name: str, arch: str | None = None,
                   file: str, file_sha256: str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   input_size: int | None = None, dataset_config: dict | None = None, notes: str = "",
                   command: str | None = None) -> Prepared:
    """Check a foreign state dict (already read without unpickling code) and build the model + card."""
    check_name(name, "model name")
    layout, label = split_layout(layout, arch)
    source = f"{file!r} ({layout} layout)"
    net, held, notices = unwrap_layout(state, layout, source)
    spec = resolve_arch(label, {k: tuple(v.shape) for k, v in net.items()})
    if (mean is None) != (std is None):
        raise ValueError("give both --mean and --std, or neither")
    shape, classes, dmean, dstd, dataset_config = _dataset_facts(dataset, dataset_config, input_size)
    if not label.startswith(("torchvision:", "timm:")) and tuple(shape[1:]) != (32, 32):
        # their fixed 8×8 / 4×4 average pool makes the published CIFAR networks 32×32-only
        raise ValueError(f"the published {label} takes 32×32 images, {dataset} gives {shape[1]}×{shape[2]}"
                         + ("; use --input-size 32" if "image_size" in DATASETS.get(dataset).config.model_fields else ""))
    mean_, std_, where = _choose_normalisation(layout, None if mean is None else (mean, std), held, (dmean, dstd), shape[0])
    try:
        card = ModelCard(name=name, architecture=spec.architecture, arch_config=spec.arch_config, dataset=dataset,
                         input_shape=shape, mean=mean_, std=std_, classes=classes, objective=IMPORTED_OBJECTIVE,
                         notes=notes, command=command, dataset_config=dataset_config,
                         source=ImportSource(layout=layout, arch=label, file=Path(file).name[:255],
                                             file_sha256=file_sha256, normalization=where))
    except ValidationError as err:  # e.g. --mean with the wrong number of channels: one line naming the field
        raise ValueError(format_validation_error(err, "model card")) from None
    ours = _fit(net, spec, card, source, notices)
    model = build_from_card(card)
    ours.update({k: v for k, v in model.state_dict().items() if k.startswith("normalize.")})
    model.load_state_dict(ours)
    return Prepared(model.eval(), card, notices)


def read_state(data: bytes, filename: str) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict from a file's bytes (safetensors, or torch's zip format with weights_only) + its SHA-256."""
    suffix = Path(filename).suffix.lower()
    if suffix not in FOREIGN_SUFFIXES:
        raise CheckpointError(f"{filename!r}: import a {', '.join(FOREIGN_SUFFIXES)} file, not "
                              f"{suffix or 'a file without extension'}")
    return state_dict_from_bytes(data, suffix, repr(Path(filename).name)), hashlib.sha256(data).hexdigest()


def import_bytes(data: bytes, filename: str, *, overwrite: bool = False, zoo_dir=None, **options):
    """Import a file's bytes into ``<user zoo>/<dataset>/<name>`` (see :func:`prepare_import` for the
    options); returns the uploads module's ``InstalledCheckpoint``. Nothing is written on any refusal."""
    from .uploads import InstalledCheckpoint, UploadError
    from .zoo import add_to_user_zoo, read_card

    try:
        state, digest = read_state(data, filename)
        prepared = prepare_import(state, file=filename, file_sha256=digest, **options)
    except (CheckpointError, ValueError, OSError) as err:  # OSError: a dataset folder that is not there
        raise UploadError(str(err)) from None
    try:
        path = add_to_user_zoo(prepared.model, prepared.card, overwrite=overwrite, zoo_dir=zoo_dir)
        return InstalledCheckpoint(path, read_card(path), prepared.notices)
    except CheckpointError as err:
        raise UploadError(str(err)) from None


def import_file(path: str | Path, **options):
    """:func:`import_bytes` for a local file (read with a size cap; never a device or a FIFO)."""
    p = Path(path)
    return import_bytes(read_bounded(p, WEIGHTS_MAX_BYTES, "checkpoint file", CheckpointError), p.name, **options)


# --------------------------------------------------------------------------- the upload form

OWN_LAYOUT = "explrobust (own names)"  # the form's first choice: a state dict in explrobust's own names


def form_layouts() -> list[str]:
    return [OWN_LAYOUT, *LAYOUTS]


def parse_floats(text: str | None, what: str) -> list[float] | None:
    """``"0.49, 0.48, 0.45"`` → floats; empty → None; anything else a clear error."""
    if text is None or not str(text).strip():
        return None
    try:
        return [float(v) for v in str(text).replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"{what} must be numbers separated by commas, got {str(text)[:80]!r}") from None


def import_upload(data: bytes, filename: str, *, layout: str, arch: str, dataset: str, name: str,
                  mean: str = "", std: str = "", notes: str = "", overwrite: bool = False, zoo_dir=None,
                  data_root: str = "", input_size: int | None = None):
    """The Model zoo page's import: the form's texts parsed, then :func:`import_bytes`. For the
    torchvision/timm layouts ``arch`` is the library's model name; ``data_root`` is the dataset's folder
    (an image folder's, recorded on the card), ``input_size`` the side images are read at (as the CLI's)."""
    from .uploads import CHECKPOINT_MAX_BYTES, UploadError

    if not isinstance(data, (bytes, bytearray)) or not data:
        raise UploadError("the uploaded file is empty")
    if len(data) > CHECKPOINT_MAX_BYTES:
        raise UploadError(f"the upload is {len(data):,} bytes, over the {CHECKPOINT_MAX_BYTES:,}-byte upload limit")
    arch = (arch or "").strip()
    if layout in ("torchvision", "timm"):
        layout, arch = f"{layout}:{arch.removeprefix(layout + ':')}" if arch else layout, None
    try:
        mean_, std_ = parse_floats(mean, "mean"), parse_floats(std, "std")
    except ValueError as err:
        raise UploadError(str(err)) from None
    root = (data_root or "").strip()
    if root and dataset in DATASETS and "root" not in DATASETS.get(dataset).config.model_fields:
        raise UploadError(f"{dataset} is embedded and reads no data root; leave the data root empty")
    return import_bytes(bytes(data), filename, layout=layout, arch=arch or None, dataset=dataset, name=name.strip(),
                        mean=mean_, std=std_, notes=notes or "", overwrite=overwrite, zoo_dir=zoo_dir,
                        dataset_config={"root": root} if root else None,
                        input_size=None if input_size is None else int(input_size))
