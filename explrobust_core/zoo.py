"""Checkpoint store: safetensors weights + a validated JSON model card, side by side.

``<dir>/<name>.safetensors`` holds the weights, ``<dir>/<name>.json`` the card. Loading never
unpickles: safetensors, or ``torch.load(weights_only=True)`` when importing a foreign ``.pt``
state dict. Writes are atomic. Every failure is a :class:`CheckpointError` that says what is
wrong with which file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import pickle
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Iterator

import torch
from pydantic import (BaseModel, ConfigDict, Field, Strict, StrictInt, StrictStr, ValidationError, field_validator,
                      model_validator)
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .device import resolve_device
from .errors import ExplrobustError
from .io import atomic_write_bytes, atomic_write_json, check_name, library_versions, read_bounded, sha256_file
from .models import ARCHITECTURES, ImageClassifier, WrappedClassifier, build_model, device_of
from .registry import ConfigError, format_validation_error

def shipped_zoo_dir() -> Path:
    """The checkpoints that ship with explrobust (``models_zoo/`` beside the package)."""
    return Path(os.environ.get("EXPLROBUST_ZOO", Path(__file__).resolve().parent.parent / "models_zoo"))


def user_zoo_dir() -> Path:
    """Where user-trained and uploaded checkpoints go; never mixed with the shipped ones."""
    return Path(os.environ.get("EXPLROBUST_USER_ZOO", Path.home() / ".explrobust" / "user_zoo")).expanduser()


CARD_MAX_BYTES = 1 << 20  # a card is a few KB; anything this large is not a card
WEIGHTS_MAX_BYTES = 2 << 30  # refuse absurd uploads before reading them
MODEL_MAX_BYTES = 2 << 30  # a card may not describe a model larger than this (checked before allocating it)

Metric = float | int | str | bool | None | dict[str, Any] | list[Any]
_Number = Annotated[float, Strict()]  # an int or a float; never a bool or a numeric string
NORM_MIN, NORM_MAX = 1e-6, 1e6  # the normalisation a card may state (float32 keeps (x − mean) / std finite)


class CheckpointError(ValueError, ExplrobustError):
    """A checkpoint or card that cannot be used; the message names the file and the problem."""


class ImportSource(BaseModel):
    """Where an imported checkpoint came from (``explrobust zoo import`` / the upload form)."""

    model_config = ConfigDict(extra="forbid")

    layout: StrictStr = Field(..., max_length=64, description="robustbench, trades, madrylab, torchvision, timm, …")
    arch: StrictStr = Field(..., max_length=160, description="the published architecture, e.g. wrn-28-10")
    file: StrictStr = Field(..., max_length=255, description="the imported file's name")
    file_sha256: StrictStr = Field(..., pattern=r"^[0-9a-f]{64}$")
    normalization: StrictStr = Field(..., max_length=200,
                                     description="where mean/std came from (always applied inside the model now)")


class ModelCard(BaseModel):
    """Everything needed to rebuild, cite and compare a checkpoint."""

    model_config = ConfigDict(extra="forbid")

    # strict types: a card is untrusted JSON, and lax parsing would turn `true` or "32" into numbers
    schema_version: StrictInt = Field(1, ge=1, le=1)
    name: StrictStr = Field(..., description="file stem of the checkpoint")
    architecture: StrictStr
    arch_config: dict[str, Any] = Field(default_factory=dict)
    dataset: StrictStr = Field(..., min_length=1, max_length=64)
    input_shape: tuple[StrictInt, StrictInt, StrictInt]
    mean: list[_Number] = Field(..., max_length=16)
    std: list[_Number] = Field(..., max_length=16)
    classes: list[StrictStr] = Field(..., min_length=2, max_length=100_000)
    objective: StrictStr = Field("natural", max_length=64, description="training objective name")
    objective_config: dict[str, Any] = Field(default_factory=dict)
    seed: StrictInt | None = Field(None, ge=0, le=2**32 - 1)
    epochs: StrictInt | None = Field(None, ge=0, le=100_000)
    wall_time_s: _Number | None = Field(None, ge=0)
    versions: dict[StrictStr, StrictStr] = Field(default_factory=library_versions)
    metrics: dict[str, Metric] = Field(default_factory=dict)
    command: StrictStr | None = Field(None, max_length=4096, description="the exact command that rebuilt it")
    created: StrictStr = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               max_length=64)
    notes: StrictStr = Field("", max_length=10_000)
    weights_sha256: StrictStr | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    # optional (cards written before imports parse unchanged)
    source: ImportSource | None = Field(None, description="set when the model was imported from a foreign file")
    dataset_config: dict[str, Any] = Field(default_factory=dict, description="the dataset's options (folder root, …)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_name(v, "checkpoint name")

    @field_validator("architecture")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        ARCHITECTURES.get(v)  # raises with the list of valid names
        return v

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = v
        if not (1 <= c <= 16 and 1 <= h <= 4096 and 1 <= w <= 4096):
            raise ValueError(f"input_shape {v} is out of range (C ≤ 16, H, W ≤ 4096)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ModelCard":
        c = self.input_shape[0]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean and std need {c} values (one per channel), got {len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError("mean and std values must be finite numbers (no NaN or infinity)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        # checked as the model will hold them (float32): 1e-320 is positive in Python but 0 in float32,
        # and a normalised pixel (x − mean) / std must stay finite for x in [0, 1]
        if not all(abs(m) <= NORM_MAX for m in self.mean) or not all(NORM_MIN <= s <= NORM_MAX for s in self.std):
            raise ValueError(f"mean values must lie in [-{NORM_MAX:g}, {NORM_MAX:g}] and std values in "
                             f"[{NORM_MIN:g}, {NORM_MAX:g}] (the model normalises in float32)")
        arch = ARCHITECTURES.get(self.architecture).config
        try:  # strict: "32" or true are not a width
            arch.model_validate(self.arch_config, strict=True)
        except ValidationError as err:
            raise ValueError(format_validation_error(err, "arch_config")) from None
        if self.dataset_config:  # the options must be the dataset's own (typed, capped)
            from .data import DATASETS

            DATASETS.get(self.dataset).make_config(self.dataset_config)
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def card_origin(card: ModelCard, user: bool) -> str:
    """Shipped, trained here, uploaded, or imported from LAYOUT: for tables."""
    if card.source is not None:
        return f"imported from {card.source.layout}"
    if not user:
        return "shipped"
    return "trained here" if card.command else "uploaded"


def dataset_options(card: ModelCard) -> dict[str, Any]:
    """The options to load the card's dataset with: the card's own (an image folder's root), and for a
    dataset that resizes (image folders, GTSRB, …) the card's input size."""
    from .data import DATASETS

    config = dict(card.dataset_config)
    if "image_size" in DATASETS.get(card.dataset).config.model_fields and "image_size" not in config:
        config["image_size"] = card.input_shape[1]
    return config


def shared_dataset_options(name: str, cards: list[ModelCard], chosen: list[ModelCard] = ()) -> dict[str, Any]:
    """The options every card of dataset ``name`` reads it with; when they differ (two image folders), the
    ``chosen`` cards' — refused when those differ too."""
    found = {json.dumps(dataset_options(c), sort_keys=True) for c in cards if c.dataset == name}
    if len(found) > 1:
        found = {json.dumps(dataset_options(c), sort_keys=True) for c in chosen if c.dataset == name}
    if len(found) > 1:
        raise ValueError(f"the chosen models read {name} with different options ({'; '.join(sorted(found))}); "
                         "choose models of one folder and input size")
    return json.loads(found.pop()) if found else {}


def dataset_for_card(card: ModelCard, split: str = "test"):
    """The split of the card's dataset, loaded with :func:`dataset_options`, checked against the card's
    input shape."""
    from .data import load_dataset

    dataset = load_dataset(card.dataset, split, dataset_options(card) or None)
    if tuple(dataset.info.input_shape) != tuple(card.input_shape):
        raise ValueError(f"checkpoint {card.name!r} expects inputs {tuple(card.input_shape)}, dataset {card.dataset} "
                         f"gives {tuple(dataset.info.input_shape)}")
    return dataset


def card_from_json_text(text: str, source: str = "card") -> ModelCard:
    try:
        return ModelCard.model_validate_json(text)
    except ValidationError as err:
        raise CheckpointError(format_validation_error(err, f"model card {source}")) from None
    except (ConfigError, KeyError) as err:
        raise CheckpointError(f"invalid model card {source}: {err}") from None


def _build(card: ModelCard) -> ImageClassifier | WrappedClassifier:
    try:
        return build_model(card.architecture, input_shape=card.input_shape, num_classes=card.num_classes,
                           mean=card.mean, std=card.std, config=card.arch_config)
    except (ValueError, ConfigError) as err:
        raise CheckpointError(f"card {card.name!r} describes a model that cannot be built: {err}") from None


def expected_state(card: ModelCard) -> dict[str, torch.Tensor]:
    """The state dict ``card`` describes, built on the meta device: shapes and dtypes, no memory.

    Refuses a card whose model would be larger than :data:`MODEL_MAX_BYTES` (a few bytes of JSON
    must not make us allocate terabytes).
    """
    with torch.device("meta"):
        state = _build(card).state_dict()
    size = sum(t.numel() * t.element_size() for t in state.values())
    if size > MODEL_MAX_BYTES:
        raise CheckpointError(
            f"card {card.name!r} describes a model of {size / 2**30:.1f} GiB, over the {MODEL_MAX_BYTES / 2**30:.0f} GiB "
            "limit (check input_shape and arch_config)"
        )
    return state


def build_from_card(card: ModelCard) -> ImageClassifier | WrappedClassifier:
    expected_state(card)  # size check before any real allocation
    try:
        return _build(card)
    except RuntimeError as err:  # e.g. out of memory
        raise CheckpointError(f"card {card.name!r}: the model could not be allocated: {err}") from None


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class CheckpointPaths:
    weights: Path
    card: Path

    @classmethod
    def of(cls, path: str | os.PathLike) -> "CheckpointPaths":
        """Accept ``x.safetensors``, ``x.json`` or the bare stem ``x``."""
        p = Path(path)
        stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
        return cls(stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json"))


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    """A regular file of at most ``limit`` bytes (never a device, FIFO or directory; see :func:`read_bounded`)."""
    return read_bounded(path, limit, what, CheckpointError)


# --------------------------------------------------------------------------- save / load


def save_checkpoint(model: torch.nn.Module, card: ModelCard, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``<directory>/<card.name>.safetensors`` and its card atomically; return the weights path.

    Args:
        model: the trained model; card: its :class:`ModelCard` (``card.name`` names the files).
        directory: where to write; overwrite: replace an existing checkpoint of that name.

    Returns:
        The path of the weights file.

    Example:
        >>> path = save_checkpoint(model, card, "runs/my_zoo/mnist5k")  # runs/my_zoo/mnist5k/<name>.safetensors
    """
    paths = CheckpointPaths.of(Path(directory) / check_name(card.name, "checkpoint name"))
    if not overwrite and (paths.weights.exists() or paths.card.exists()):
        raise CheckpointError(f"checkpoint {paths.weights} exists already; choose another name or overwrite")
    expected = expected_state(card)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _check_state_matches(state, expected, source=f"model for card {card.name!r}", cast_floats=True)
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    _check_normalisation_matches(state, card, f"model for card {card.name!r}")
    smoke_test(model, card, f"model for card {card.name!r}")  # nothing that outputs NaN enters a zoo
    atomic_write_bytes(paths.weights, save_safetensors_bytes(state, metadata={"format": "explrobust"}))
    card = card.model_copy(update={"weights_sha256": sha256_file(paths.weights)})
    atomic_write_json(paths.card, card.model_dump(mode="json"))
    return paths.weights


def _check_state_matches(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str, *,
                         cast_floats: bool = False) -> None:
    """Same names, shapes and dtypes as ``expected``, and only finite values.

    ``cast_floats`` accepts another floating dtype where a floating tensor is expected (a foreign
    float16/float64 state dict; it is cast on import). Never an integer where a float is expected
    or the other way round: ``load_state_dict`` would silently convert it.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    common = sorted(set(state) & set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in common
             if state[k].shape != expected[k].shape]

    def dtype_ok(got: torch.dtype, want: torch.dtype) -> bool:
        return got == want or (cast_floats and got.is_floating_point and want.is_floating_point)

    dtypes = [f"{k}: {str(state[k].dtype).removeprefix('torch.')} vs {str(expected[k].dtype).removeprefix('torch.')}"
              for k in common if not dtype_ok(state[k].dtype, expected[k].dtype)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"shape mismatches ({'; '.join(wrong[:3])})")
    if dtypes:
        problems.append(f"dtype mismatches ({'; '.join(dtypes[:3])})")
    if problems:
        raise CheckpointError(f"the weights in {source} do not match the card's architecture: " + "; ".join(problems))
    not_finite = [k for k in common if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
    if not_finite:
        raise CheckpointError(f"the weights in {source} contain NaN or infinite values "
                              f"({len(not_finite)} tensors, e.g. {', '.join(not_finite[:3])})")


def _check_normalisation_matches(state: dict[str, torch.Tensor], card: ModelCard, source: str) -> None:
    """The weights' own ``normalize.mean``/``std`` buffers must say what the card says: the card is what
    tables and forms show, the buffers are what the model computes with (a card claiming mean 1e300
    beside weights that normalise with 0.1311 is a forgery or a mix-up)."""
    for key, stated in (("normalize.mean", card.mean), ("normalize.std", card.std)):
        if key not in state:
            continue
        held = state[key].detach().to(torch.float64).flatten().cpu()
        want = torch.tensor(stated, dtype=torch.float32).to(torch.float64)  # as the card's model would hold it
        if held.shape != want.shape or not torch.allclose(held, want, rtol=1e-5, atol=1e-7):
            raise CheckpointError(
                f"the weights in {source} normalise with {key.split('.')[1]} {[round(v, 6) for v in held.tolist()]} "
                f"but the card says {list(stated)}; fix the card's mean/std (or the weights)")


def smoke_test(model: torch.nn.Module, card: ModelCard, source: str) -> None:
    """One forward pass on a mid-grey image: finite logits, one per class, or the checkpoint is refused
    (a model that outputs NaN would otherwise pass every other check and poison every result)."""
    device = device_of(model)
    was_training = model.training
    try:
        with torch.no_grad():
            logits = model.eval()(torch.full((1, *card.input_shape), 0.5, device=device))
    finally:
        model.train(was_training)  # the caller's model is left as it was given
    if tuple(logits.shape) != (1, card.num_classes):
        raise CheckpointError(f"{source}: the model outputs shape {tuple(logits.shape)} for one image, "
                              f"the card promises (1, {card.num_classes})")
    if not bool(torch.isfinite(logits).all()):
        raise CheckpointError(f"{source}: the model outputs NaN or infinite logits on a plain grey image; refused")


def read_card(path: str | os.PathLike) -> ModelCard:
    paths = CheckpointPaths.of(path)
    text = _read_limited(paths.card, CARD_MAX_BYTES, "model card")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"model card {paths.card} is not UTF-8 text") from None
    card = card_from_json_text(decoded, str(paths.card))
    if card.name != paths.card.stem:
        raise CheckpointError(f"model card {paths.card} names {card.name!r}, but the file is {paths.card.stem!r}")
    return card


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "auto"
                    ) -> tuple[ImageClassifier | WrappedClassifier, ModelCard]:
    """Load weights + card, verify them against each other, return the model in eval mode.

    Args:
        path: the checkpoint's weights (``.safetensors``), its card (``.json``) or their common stem.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a torch device.

    Returns:
        ``(model, card)``: the model (pixels in ``[0, 1]`` → logits, normalisation inside) and its
        :class:`ModelCard`.

    Example:
        >>> model, card = load_checkpoint("models_zoo/mnist5k/natural.safetensors", "cpu")
        >>> card.dataset, card.input_shape
        ('mnist5k', (1, 28, 28))
    """
    paths = CheckpointPaths.of(path)
    card = read_card(paths.card)
    blob = _read_limited(paths.weights, WEIGHTS_MAX_BYTES, "weights file")
    if card.weights_sha256 is not None:
        digest = hashlib.sha256(blob).hexdigest()
        if digest != card.weights_sha256:
            raise CheckpointError(
                f"weights file {paths.weights} does not match its card's checksum (truncated, corrupted or replaced)"
            )
    state = _safetensors_state(blob, f"weights file {paths.weights}")
    _check_state_matches(state, expected_state(card), source=str(paths.weights))
    _check_normalisation_matches(state, card, str(paths.weights))
    model = build_from_card(card)
    model.load_state_dict(state)
    model = model.to(resolve_device(device)).eval()
    smoke_test(model, card, str(paths.weights))
    return model, card


@functools.lru_cache(maxsize=16)
def _load_cached(weights: str, mtime_ns: int, device: str) -> tuple[ImageClassifier, ModelCard]:
    return load_checkpoint(weights, device)


def load_checkpoint_cached(path: str | os.PathLike, device: str | torch.device = "auto"):
    """Like :func:`load_checkpoint`, cached per (checkpoint, modification time, device).

    Callers share the returned model: do not train it or change it in place.
    """
    paths = CheckpointPaths.of(path)
    try:
        mtime = paths.weights.stat().st_mtime_ns
    except FileNotFoundError:
        raise CheckpointError(f"weights file {paths.weights} does not exist") from None
    return _load_cached(str(paths.weights.resolve()), mtime, str(resolve_device(device)))


@dataclass(frozen=True)
class CheckpointEntry:
    path: Path
    card: ModelCard | None
    error: str | None = None


def list_checkpoints(*directories: str | os.PathLike) -> list[CheckpointEntry]:
    """Every ``*.json`` card under the directories (recursively), valid ones first.

    A broken card is listed with its error instead of hiding it or failing the whole listing.
    """
    found: list[CheckpointEntry] = []
    for directory in directories:
        root = Path(directory)
        if not root.is_dir():
            continue
        for card_path in sorted(root.rglob("*.json")):
            weights = card_path.with_suffix(".safetensors")
            if not weights.exists():
                continue
            try:
                found.append(CheckpointEntry(weights, read_card(card_path)))
            except CheckpointError as err:
                found.append(CheckpointEntry(weights, None, str(err)))
    return sorted(found, key=lambda e: (e.card is None, str(e.path)))


# --------------------------------------------------------------------------- foreign state dicts


def _safetensors_state(blob: bytes, source: str) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors_bytes(blob)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as err:
        raise CheckpointError(f"{source} is not a valid safetensors file: {err}") from None


FOREIGN_SUFFIXES = (".safetensors", ".pt", ".pth")


def _check_torch_zip(blob: bytes, source: str) -> None:
    """A ``torch.save`` file is a zip archive of uncompressed entries; refuse anything else before
    torch parses it: the old non-zip pickle format, compressed entries (a small file that would
    inflate to gigabytes) and entries that claim more data than the file holds."""
    if not blob.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            f"{source} is not a zip-format torch file; only torch.save's zip format (torch ≥ 1.6) or safetensors "
            "is accepted (re-save it with a recent torch, or export safetensors)"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as err:
        raise CheckpointError(f"{source} is not a readable torch file (truncated or another format?): {err}") from None
    total = 0
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise CheckpointError(f"{source} has a compressed entry ({info.filename!r}); torch.save never compresses, "
                                  "so it was not written by torch.save")
        total += info.file_size
        if info.header_offset + info.file_size > len(blob):
            raise CheckpointError(f"{source} is truncated: entry {info.filename!r} claims more data than the file holds")
    if total > len(blob):
        raise CheckpointError(f"{source} claims more data ({total} bytes) than the file holds ({len(blob)} bytes)")


def state_dict_from_bytes(blob: bytes, suffix: str, source: str = "state dict") -> dict[str, torch.Tensor]:
    """Parse a foreign state dict without running any pickled code.

    ``suffix`` ``.safetensors``: the safetensors parser; ``.pt``/``.pth``: a zip-format
    ``torch.save`` file (checked by :func:`_check_torch_zip`), read with
    ``torch.load(weights_only=True)``, which refuses any pickled object other than tensors and
    plain containers.
    """
    if len(blob) > WEIGHTS_MAX_BYTES:
        raise CheckpointError(f"{source} is {len(blob)} bytes, over the {WEIGHTS_MAX_BYTES}-byte limit")
    suffix = suffix.lower()
    if suffix not in FOREIGN_SUFFIXES:
        raise CheckpointError(f"{source}: unsupported file type {suffix!r}; use one of {', '.join(FOREIGN_SUFFIXES)}")
    if suffix == ".safetensors":
        return _safetensors_state(blob, source)
    _check_torch_zip(blob, source)
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused {source}: it contains pickled objects other than tensors and plain containers, which could run "
            f"code when loaded; export a plain state dict (model.state_dict()) or safetensors instead{_unpickler_reason(err)}"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError, AttributeError,
            zipfile.BadZipFile, MemoryError, OverflowError) as err:
        raise CheckpointError(f"{source} is not a readable torch file (truncated or another format?): "
                              f"{type(err).__name__}: {err}") from None
    for _ in range(3):  # common wrappers around a state dict, possibly nested ({"model": {"state_dict": …}})
        key = next((k for k in ("state_dict", "model_state_dict", "model")
                    if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{source} does not hold a state dict (a mapping of names to tensors)")
    return obj


def read_foreign_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.pt``/``.pth``/``.safetensors`` state dict without running any pickled code."""
    p = Path(path)
    return state_dict_from_bytes(_read_limited(p, WEIGHTS_MAX_BYTES, "state dict"), p.suffix, str(p))


def update_card_metrics(path: str | os.PathLike, metrics: dict[str, Metric]) -> ModelCard:
    """Merge measured metrics into a checkpoint's card (atomically; the weights are untouched)."""
    paths = CheckpointPaths.of(path)
    card = read_card(paths.card)
    updated = card.model_copy(update={"metrics": {**card.metrics, **metrics}})
    ModelCard.model_validate(updated.model_dump())  # the merged card must still be valid
    atomic_write_json(paths.card, updated.model_dump(mode="json"))
    return updated


def _unpickler_reason(err: Exception) -> str:
    """The line of torch's message that names the refused object (not its advice to disable the check)."""
    for line in str(err).splitlines():
        if "Unsupported" in line or "Unpickler error" in line:
            return f" ({line.strip()})"
    return ""


def import_state_dict(path: str | os.PathLike, card: ModelCard, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Convert a foreign state dict for ``card``'s architecture into a safetensors checkpoint.

    Accepts keys with a ``module.`` prefix (DataParallel) and state dicts without our
    ``normalize.*`` buffers (the card's mean/std fill them in).
    """
    return import_state(read_foreign_state_dict(path), card, directory, overwrite=overwrite, source=str(path))


def import_state(state: dict[str, torch.Tensor], card: ModelCard, directory: str | os.PathLike, *,
                 overwrite: bool = False, source: str = "state dict") -> Path:
    """:func:`import_state_dict` for a state dict already read (e.g. by :func:`state_dict_from_bytes`)."""
    return save_checkpoint(model_from_state(state, card, source), card, directory, overwrite=overwrite)


def model_from_state(state: dict[str, torch.Tensor], card: ModelCard, source: str = "state dict"
                     ) -> ImageClassifier | WrappedClassifier:
    """``card``'s model holding a foreign ``state`` (``module.`` prefixes dropped, missing ``normalize.*`` buffers
    filled from the card), after the same name/shape/dtype/finiteness checks as :func:`save_checkpoint`'s."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = expected_state(card)
    _check_state_matches({k: v for k, v in state.items() if not k.startswith("normalize.")},
                         {k: v for k, v in expected.items() if not k.startswith("normalize.")},
                         source=source, cast_floats=True)
    _check_normalisation_matches(state, card, source)
    model = build_from_card(card)
    real = model.state_dict()
    for key in ("normalize.mean", "normalize.std"):
        state.setdefault(key, real[key])
    _check_state_matches(state, expected, source=source, cast_floats=True)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model


# --------------------------------------------------------------------------- the user zoo: one way in
#
# Uploads, imports, finished training jobs and `explrobust train` all add their model with add_to_user_zoo: the
# same lock, the same refusals (the shipped zoo, a shipped model's name, an existing model, a symbolic link) and
# the same checks of the model itself (a valid card, finite weights matching it, finite logits), written
# atomically by save_checkpoint.


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def user_zoo_roots(zoo_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(user zoo, shipped zoo), resolved; refuses a user zoo inside the shipped one."""
    zoo = Path(zoo_dir if zoo_dir is not None else user_zoo_dir()).expanduser().resolve()
    shipped = shipped_zoo_dir().expanduser().resolve()
    if _inside(zoo, shipped):
        raise CheckpointError(f"the user zoo {zoo} lies inside the shipped zoo {shipped}; nothing is added there "
                              "(set EXPLROBUST_USER_ZOO elsewhere)")
    return zoo, shipped


def is_inside_user_zoo(path: str | os.PathLike, zoo_dir: str | os.PathLike | None = None) -> bool:
    """True when ``path`` really lies in the user zoo (links followed) and not in the shipped one."""
    zoo, shipped = user_zoo_roots(zoo_dir)
    real = Path(path).resolve()
    return _inside(real, zoo) and not _inside(real, shipped)


_USER_ZOO_THREAD_LOCK = threading.Lock()


@contextmanager
def user_zoo_lock(zoo: Path) -> Iterator[None]:
    """One writer at a time: across the dashboard's sessions (threads) and other processes (a job worker)."""
    zoo.mkdir(parents=True, exist_ok=True)
    with _USER_ZOO_THREAD_LOCK:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        with open(zoo / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def validated_card(card: ModelCard) -> ModelCard:
    """``card`` validated again (one built with ``model_construct`` skipped its checks), or a CheckpointError."""
    if not isinstance(card, ModelCard):
        raise CheckpointError(f"expected a validated ModelCard, got {type(card).__name__}")
    try:
        check_name(card.dataset, "dataset name")
        ModelCard.model_validate(card.model_dump())
        return card
    except ValidationError as err:
        raise CheckpointError(format_validation_error(err, "model card")) from None
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def user_zoo_folder(dataset: str, name: str, *, overwrite: bool = False,
                    zoo_dir: str | os.PathLike | None = None) -> Path:
    """The folder ``<user zoo>/<dataset>`` a model ``name`` may be added to, or a CheckpointError saying why not.

    Never the shipped zoo or a shipped model's name, never an existing model unless ``overwrite``, never through a
    symbolic link. A caller may ask before long work (training) to refuse early; :func:`add_to_user_zoo` asks again
    under the lock."""
    check_name(dataset, "dataset name")
    check_name(name, "checkpoint name")
    shipped_names = {e.card.name for e in list_checkpoints(shipped_zoo_dir()) if e.card is not None and e.card.dataset == dataset}
    if name in shipped_names:
        raise CheckpointError(f"{dataset}/{name} is a shipped model; choose another name")
    zoo, shipped = user_zoo_roots(zoo_dir)
    target = zoo / dataset
    real_target = target.resolve()
    if not _inside(real_target, zoo) or _inside(real_target, shipped):
        raise CheckpointError(f"{target} leads outside the user zoo ({real_target}); refusing to write there")
    paths = CheckpointPaths.of(target / name)
    if any(p.exists() or p.is_symlink() for p in (paths.weights, paths.card)) and not overwrite:
        raise CheckpointError(f"you already have a model {dataset}/{name}; delete it first, choose another "
                              "name, or ask to replace it")
    for p in (paths.weights, paths.card):
        if p.is_symlink():
            raise CheckpointError(f"{p} is a symbolic link; refusing to replace it")
    return target


def add_to_user_zoo(model: torch.nn.Module, card: ModelCard, *, overwrite: bool = False,
                    zoo_dir: str | os.PathLike | None = None) -> Path:
    """Add a model to the user zoo: the one way in, for uploads, imports, training jobs and ``explrobust train``.

    Under the user zoo's lock: the card is validated, the name checked (:func:`user_zoo_folder`: not shipped,
    not taken unless ``overwrite``, no symbolic link), and :func:`save_checkpoint` checks the weights against the
    card, runs one forward pass that must give finite logits, and writes weights and card atomically.

    Args:
        model: the model (any device; it is left as it was given).
        card: its :class:`ModelCard`; ``card.dataset`` and ``card.name`` say where it goes.
        overwrite: replace a user model of that name (never a shipped one).
        zoo_dir: the user zoo (default: :func:`user_zoo_dir`).

    Returns:
        The path of the weights, ``<user zoo>/<dataset>/<name>.safetensors`` (the card beside it).

    Raises:
        CheckpointError: any refusal above, in one line; nothing is written then.

    Example:
        >>> path = add_to_user_zoo(model, card.model_copy(update={"name": "my_copy"}))  # doctest: +SKIP
        >>> path.name  # doctest: +SKIP
        'my_copy.safetensors'
    """
    card = validated_card(card)
    zoo, _ = user_zoo_roots(zoo_dir)
    with user_zoo_lock(zoo):
        target = user_zoo_folder(card.dataset, card.name, overwrite=overwrite, zoo_dir=zoo_dir)
        return save_checkpoint(model, card, target, overwrite=overwrite)


def card_summary(card: ModelCard) -> dict[str, Any]:
    """A flat row for tables and `explrobust info`."""
    return {
        "name": card.name,
        "dataset": card.dataset,
        "architecture": card.architecture,
        "objective": card.objective,
        "epochs": card.epochs,
        **{k: v for k, v in card.metrics.items() if isinstance(v, (int, float, str))},
    }



def _objective_brief(card: ModelCard) -> str:
    cfg = card.objective_config
    keys = {"trades": ["beta"], "sep": ["lam", "explainer", "space"], "ig_norm": ["lam", "m"], "ig_sum_norm": ["lam", "m"],
            "art": ["gamma", "k_top"]}.get(card.objective, [])
    parts = [f"{k}={cfg[k]:g}" if isinstance(cfg.get(k), float) else f"{k}={cfg.get(k)}" for k in keys if k in cfg]
    if "eps" in cfg:
        parts.append(f"ε={cfg['eps']:g}")
    return card.objective + (f" ({', '.join(parts)})" if parts else "")


def zoo_table_markdown(entries: list[CheckpointEntry]) -> str:
    """A Markdown table of cards and their measured metrics (as stored by ``evaluate --write-card``)."""
    rows = ["| model | objective | clean acc | PGD acc ε=0.1 / 0.2 / 0.3 | L_e start ×10⁻⁷ | L_e end ×10⁻⁷ | train time |",
            "|---|---|---|---|---|---|---|"]
    for entry in entries:
        card = entry.card
        if card is None:
            continue
        summary = (card.metrics.get("evaluation") or {}).get("summary", {})
        pgd = {round(r["eps"], 4): r["accuracy"] for r in summary.get("pgd_accuracy", [])}
        expl = summary.get("explanation", {})

        def pct(v):
            return "–" if v is None else f"{100 * v:.1f}%"

        def paper(key):
            v = (expl.get(key) or {}).get("mean")
            return "–" if v is None else f"{v:.1f}"

        rows.append(f"| {card.name} | {_objective_brief(card)} | {pct(summary.get('clean_accuracy'))} | "
                    f"{' / '.join(pct(pgd.get(e)) for e in (0.1, 0.2, 0.3))} | {paper('explanation_loss_start_paper')} | "
                    f"{paper('explanation_loss_end_paper')} | {card.wall_time_s or 0:.0f} s |")
    return "\n".join(rows) + "\n"
