"""Validating what users upload: images to explain, and checkpoints for the user zoo.

Nothing here trusts the upload. Images are decoded by Pillow restricted to a few formats, with a
pixel cap checked from the header before any pixel is decoded; ``.npy`` arrays are read with
``allow_pickle=False``. Checkpoints are parsed without unpickling code (:mod:`.zoo`), checked
against a validated :class:`~explrobust_core.zoo.ModelCard`, and written atomically into the
*user* zoo only; the shipped zoo is never written or deleted. Every refusal is an
:class:`UploadError` whose message says what is wrong; what was adapted on the way (resized,
converted, …) comes back as plain-language notices.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pydantic import ValidationError

from .data import DATASETS, known_info
from .errors import ExplrobustError
from .io import check_name
from .registry import ConfigError, format_validation_error
from .zoo import (CARD_MAX_BYTES, FOREIGN_SUFFIXES, CheckpointError, CheckpointPaths, ModelCard, add_to_user_zoo,
                  card_from_json_text, is_inside_user_zoo, model_from_state, read_card, state_dict_from_bytes,
                  user_zoo_folder, user_zoo_lock, user_zoo_roots, validated_card)


class UploadError(ValueError, ExplrobustError):
    """An upload that cannot be used; the message says why in plain words."""


# --------------------------------------------------------------------------- images

IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")  # Pillow decoders we let untrusted bytes reach
IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "bmp", "gif", "webp", "npy")  # for st.file_uploader(type=…)
IMAGE_MAX_BYTES = 20 << 20
IMAGE_MAX_PIXELS = 4096 * 4096  # checked on the header, before decoding
IMAGE_MIN_SIDE = 4  # a 1×1 or 2×3 "image" carries nothing to explain
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


@dataclass
class UploadedImage:
    """A validated image in pixel space, ready for the model."""

    tensor: torch.Tensor  # (1, C, H, W) float32 in [0, 1]
    notices: list[str]
    original_size: tuple[int, int]  # (width, height) as uploaded
    original_mode: str  # Pillow mode, or "array <dtype>" for .npy
    name: str = "upload"


def check_image_tensor(x: torch.Tensor, input_shape: Sequence[int] | None = None, what: str = "image") -> torch.Tensor:
    """A pixel-space image ``(C, H, W)`` or ``(1, C, H, W)``: floating, finite, in [0, 1], of the
    expected shape. Returns it as ``(1, C, H, W)`` float32; refuses anything else."""
    if not isinstance(x, torch.Tensor):
        raise UploadError(f"{what} must be a tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise UploadError(f"{what} must be (C, H, W) or (1, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise UploadError(f"{what} must hold floating-point pixels, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise UploadError(f"{what} contains NaN or infinite values")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise UploadError(f"{what} has values outside [0, 1] (pixel space): range [{float(x.min()):g}, {float(x.max()):g}]")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise UploadError(f"{what} has shape {tuple(x.shape[1:])}, the model expects {tuple(input_shape)}")
    return x.to(torch.float32)


def _target(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise UploadError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    c, h, w = (int(v) for v in input_shape)
    if c not in (1, 3):
        raise UploadError(f"models with {c} input channels cannot take uploaded images (only 1 or 3)")
    return c, h, w


def _size_notice(w0: int, h0: int, w: int, h: int) -> str | None:
    if (w0, h0) == (w, h):
        return None
    text = f"Resized from {w0}×{h0} to {w}×{h} pixels, the model's input size"
    if abs(w0 / h0 - w / h) > 0.01 * (w / h):
        text += " (the aspect ratio changed: the image is stretched)"
    return text + "."


def _check_size(w: int, h: int, name: str) -> None:
    if w * h > IMAGE_MAX_PIXELS:
        raise UploadError(f"{name} is {w}×{h} = {w * h:,} pixels, over the {IMAGE_MAX_PIXELS:,}-pixel limit; "
                          "shrink it first")
    if min(w, h) < IMAGE_MIN_SIDE:
        raise UploadError(f"{name} is only {w}×{h} pixels; it needs at least {IMAGE_MIN_SIDE} pixels on each side")


def _decode_pil(data: bytes, name: str, c: int, h: int, w: int) -> tuple[torch.Tensor, list[str], tuple[int, int], str]:
    from PIL import Image, ImageOps

    notices: list[str] = []
    try:
        # Pillow refuses > 2×MAX_IMAGE_PIXELS itself (DecompressionBombError); our own, lower cap
        # follows from the header below. (No warnings filters: they are process-wide, not per session.)
        im = Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS))
    except Image.UnidentifiedImageError:
        raise UploadError(f"{name} is not an image in an accepted format ({', '.join(IMAGE_FORMATS)}, or a .npy "
                          "array)") from None
    except Image.DecompressionBombError as err:
        raise UploadError(f"{name} is refused as a decompression bomb: {err}") from None
    except Exception as err:  # noqa: BLE001 - untrusted bytes: any parser failure is a corrupt file
        raise UploadError(f"{name} is a corrupt image: {type(err).__name__}: {err}") from None
    with im:
        w0, h0 = im.size
        _check_size(w0, h0, name)  # from the header: nothing has been decoded yet
        if im.format == "PNG":
            _check_png_pixel_data(data, name)
        mode0 = im.mode
        try:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
                notices.append("The image has several frames (an animation?); the first one is used.")
            orientation = im.getexif().get(0x0112, 1)
            w1, h1 = (h0, w0) if orientation in (5, 6, 7, 8) else (w0, h0)  # the size once upright
            if im.format == "JPEG":
                im.draft(None, (w, h) if (w1, h1) == (w0, h0) else (h, w))  # decode at a reduced scale where it can
            im.load()
            if orientation not in (1, None):
                im = ImageOps.exif_transpose(im)
                notices.append("Rotated as the photo's EXIF orientation says.")
            im, more = _to_channels(im, c)
            notices += more
            if (w1, h1) != (w, h):
                notices.append(_size_notice(w1, h1, w, h) or "")
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
            arr = np.asarray(im, dtype=np.float32) / (1.0 if im.mode == "F" else 255.0)
        except UploadError:
            raise
        except Exception as err:  # noqa: BLE001 - truncated data, broken chunks, decoder errors
            raise UploadError(f"{name} is a corrupt or truncated image: {type(err).__name__}: {err}") from None
    x = torch.from_numpy(np.ascontiguousarray(arr)).reshape(h, w, -1).permute(2, 0, 1)
    if c == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.contiguous(), [n for n in notices if n], (w0, h0), mode0


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type → samples per pixel


def _png_scanline_bytes(width: int, height: int, bits: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines a complete PNG image decompresses to (per Adam7 pass when interlaced)."""
    def size(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)
    if not interlaced:
        return size(width, height)
    passes = [(0, 8, 0, 8), (4, 8, 0, 8), (0, 4, 4, 8), (2, 4, 0, 4), (0, 2, 2, 4), (1, 2, 0, 2), (0, 1, 1, 2)]
    return sum(size((width - x0 + dx - 1) // dx if width > x0 else 0, (height - y0 + dy - 1) // dy if height > y0 else 0)
               for x0, dx, y0, dy in passes)


def _check_png_pixel_data(data: bytes, name: str) -> None:
    """Refuse a PNG whose pixel data (IDAT) ends before the last row: Pillow fills the missing rows with
    black without a word, and a half-black digit would be explained as if it were the upload."""
    import struct
    import zlib

    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    expected = _png_scanline_bytes(width, height, depth * _PNG_CHANNELS.get(colour, 1), interlace == 1)
    inflate, got, pos = zlib.decompressobj(), 0, 8
    while pos + 8 <= len(data):  # chunks: length, type, data, crc (Pillow has checked them already)
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            try:  # bounded: never inflate more than a complete image holds
                got += len(inflate.decompress(data[pos + 8:pos + 8 + length], max(expected - got, 0) + 1))
            except zlib.error as err:
                raise UploadError(f"{name} is a corrupt PNG: its pixel data does not inflate ({err})") from None
        if kind == b"IEND" or got >= expected:
            break
        pos += 12 + length
    if got < expected:
        rows = got * height // expected if expected else 0
        raise UploadError(f"{name} is a truncated PNG: its pixel data covers about {rows} of {height} rows "
                          "(the rest would be filled with black); upload the complete file")


def _to_channels(im, c: int):
    """Pillow image → mode ``L``/``F`` (c = 1) or ``RGB`` (c = 3), transparency composited on white."""
    from PIL import Image

    notices = []
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16-bit or 32-bit grayscale
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise UploadError("the image contains NaN or infinite values")
        if mode.startswith("I;16"):
            top = 65535.0  # a 16-bit image: its full range, however dark the picture is
        else:  # 32-bit integers or floats: guess the range from the values, and say so
            top = 1.0 if mode == "F" and arr.max() <= 1 else (255.0 if arr.max() <= 255 else 65535.0)
        im = Image.fromarray(np.clip(arr / top, 0, 1).astype(np.float32), "F")
        notices.append(f"{mode} pixels (more than 8 bits) divided by {top:g} to pixel space [0, 1].")
        if c == 3:
            notices.append("Grayscale image repeated on 3 channels (the model expects colour).")
        return im, notices
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba).convert("RGB")
        notices.append("The image has transparency; it was placed on a white background.")
    colour = im.mode not in ("L", "1", "I", "F")
    if c == 1:
        if colour:
            source = "a palette image" if mode == "P" else f"colour ({mode})"
            notices.append(f"Converted from {source} to grayscale: the model takes one channel.")
        elif im.mode == "1":
            notices.append("Black-and-white (1-bit) image converted to grayscale.")
        return im.convert("L"), notices
    if not colour:
        notices.append("Grayscale image repeated on 3 channels (the model expects colour).")
    elif im.mode != "RGB" and not has_alpha:
        notices.append(f"Converted from {mode} to RGB.")
    return im.convert("RGB"), notices


def _decode_npy(data: bytes, name: str, c: int, h: int, w: int) -> tuple[torch.Tensor, list[str], tuple[int, int], str]:
    notices: list[str] = []
    try:  # the header first: a few bytes must not declare an array that np.load would allocate
        stream = io.BytesIO(data)
        version = np.lib.format.read_magic(stream)
        declared, _, _ = (np.lib.format.read_array_header_1_0(stream) if version == (1, 0)
                          else np.lib.format.read_array_header_2_0(stream))
    except Exception as err:  # noqa: BLE001 - untrusted bytes
        raise UploadError(f"{name} is not a readable .npy array: {type(err).__name__}: {err}") from None
    if math.prod(declared) > 4 * IMAGE_MAX_PIXELS:
        raise UploadError(f"{name} declares {math.prod(declared):,} values (shape {declared}), over the "
                          f"{4 * IMAGE_MAX_PIXELS:,}-value limit for an image")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise UploadError(f"refused {name}: it is an array of pickled Python objects, which could run code "
                              "when loaded; save a plain numeric array") from None
        raise UploadError(f"{name} is not a readable .npy array: {err}") from None
    except Exception as err:  # noqa: BLE001 - untrusted bytes
        raise UploadError(f"{name} is not a readable .npy array: {type(err).__name__}: {err}") from None
    if not isinstance(arr, np.ndarray):
        raise UploadError(f"{name} holds several arrays (.npz?); upload one .npy array")
    if arr.dtype.kind not in "biuf":
        raise UploadError(f"{name} has dtype {arr.dtype}; pixels must be booleans, integers or real numbers")
    shape = arr.shape
    while arr.ndim > 2 and arr.shape[0] == 1 and arr.ndim > 3:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[0] not in (1, 3, 4) and arr.shape[-1] in (1, 3, 4):
        arr = np.moveaxis(arr, -1, 0)  # (H, W, C) → (C, H, W)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3, 4):
        raise UploadError(f"{name} has shape {shape}; expected (H, W), (C, H, W) or (H, W, C) with C = 1, 3 or 4")
    h0, w0 = arr.shape[1:]
    _check_size(w0, h0, name)
    with np.errstate(all="ignore"):  # out-of-range values become inf and are refused just below
        x = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float64 if arr.dtype.kind == "f" else np.float32))
    if not bool(torch.isfinite(x).all()):
        raise UploadError(f"{name} contains NaN or infinite values")
    if arr.dtype.kind in "iu" and x.numel() and float(x.max()) > 1:
        top = 255.0 if float(x.max()) <= 255 else 65535.0
        x = x / top
        notices.append(f"Integer pixels divided by {top:g} to pixel space [0, 1].")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise UploadError(f"{name} has values in [{float(x.min()):g}, {float(x.max()):g}]; pixel space is [0, 1]")
    x = x.to(torch.float32)
    if x.shape[0] == 4:
        x = x[:3] * x[3:] + (1 - x[3:])  # composite on white, as for images
        notices.append("The array has an alpha channel; it was placed on a white background.")
    if c == 1 and x.shape[0] == 3:
        x = sum(wt * x[i] for i, wt in enumerate(_LUMA)).unsqueeze(0)
        notices.append("Converted from colour to grayscale: the model takes one channel.")
    elif c == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
        notices.append("Grayscale array repeated on 3 channels (the model expects colour).")
    if (w0, h0) != (w, h):
        notices.append(_size_notice(w0, h0, w, h) or "")
        x = torch.nn.functional.interpolate(x[None], size=(h, w), mode="bilinear", antialias=True,
                                            align_corners=False)[0].clamp(0, 1)
    return x.contiguous(), [n for n in notices if n], (w0, h0), f"array {arr.dtype}"


def _upload_bytes(data, label: str, limit: int, what: str) -> bytes:
    """The uploaded file's bytes, refused when not bytes, empty or over ``limit``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UploadError(f"{label}: expected the file's bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise UploadError(f"{label} is empty")
    if len(data) > limit:
        raise UploadError(f"{label} is {len(data):,} bytes, over the {limit:,}-byte {what}")
    return data


def load_image(data: bytes, input_shape: Sequence[int], *, name: str = "upload", invert: bool = False,
               dataset_mean: Sequence[float] | None = None) -> UploadedImage:
    """Validate uploaded bytes as one image for a model with ``input_shape = (C, H, W)``.

    Accepts PNG, JPEG, BMP, GIF, WebP, or a ``.npy`` array (read without pickle). Converts the
    colour mode and resizes to the model's input with a notice each time; ``invert`` flips
    intensities (a dark-on-light drawing for a light-on-dark dataset such as MNIST). With
    ``dataset_mean`` a notice says when the image is much brighter or darker than the dataset's.
    Raises :class:`UploadError` for anything it cannot use.
    """
    c, h, w = _target(input_shape)
    label = repr(str(name)[:80])
    data = _upload_bytes(data, label, IMAGE_MAX_BYTES, "limit for images")
    if data.startswith(b"\x93NUMPY"):
        x, notices, size, mode = _decode_npy(data, label, c, h, w)
    else:
        x, notices, size, mode = _decode_pil(data, label, c, h, w)
    x = check_image_tensor(x, (c, h, w), label)
    if invert:
        x = 1 - x
        notices.append("Intensities inverted (dark ↔ light).")
    elif dataset_mean is not None and len(dataset_mean):
        mean_img, mean_data = float(x.mean()), float(np.mean(dataset_mean))
        if abs(mean_img - mean_data) > 0.35:
            notices.append(f"This image is much {'brighter' if mean_img > mean_data else 'darker'} (mean {mean_img:.2f}) "
                           f"than the dataset's images (mean {mean_data:.2f}); if it is dark-on-light where they are "
                           "light-on-dark, try inverting it.")
    return UploadedImage(x, notices, size, mode, str(name))


# --------------------------------------------------------------------------- checkpoints

CHECKPOINT_MAX_BYTES = 512 << 20  # an upload; the dashboard's own limit (server.maxUploadSize) is lower
JSON_FIELD_MAX_BYTES = 64 << 10
OTHER_OBJECTIVE = "other"  # a model trained elsewhere, with an objective we do not have


@dataclass
class InstalledCheckpoint:
    path: Path
    card: ModelCard
    notices: list[str] = field(default_factory=list)


def parse_json_object(text: str | None, what: str) -> dict[str, Any]:
    """A JSON object typed into a form (``""`` → ``{}``), with a size cap and a clear error."""
    if text is None or not str(text).strip():
        return {}
    if len(text) > JSON_FIELD_MAX_BYTES:
        raise UploadError(f"{what} is {len(text):,} characters, over the {JSON_FIELD_MAX_BYTES:,} limit")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise UploadError(f"{what} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise UploadError(f"{what} must be a JSON object ({{\"key\": value, …}}), got {type(value).__name__}")
    return value


def _objectives():
    from .training.objectives import OBJECTIVES

    return OBJECTIVES


def objective_names() -> list[str]:
    return [*_objectives().names(), OTHER_OBJECTIVE]


def card_from_form(*, name: str, dataset: str, architecture: str | None = None, arch_config: dict | str | None = None,
                   objective: str = "natural", objective_config: dict | str | None = None, epochs: int | None = None,
                   seed: int | None = None, notes: str = "", card_json: bytes | str | None = None) -> ModelCard:
    """A validated card for an uploaded checkpoint.

    Either from an uploaded card JSON (``card_json``, its ``name`` and ``dataset`` replaced by the
    form's) or from the form's fields, with input shape, classes and mean/std taken from the
    dataset. A folder dataset has no fixed shape or classes: it needs a card JSON.
    """
    try:
        check_name(name, "model name")
    except ValueError as err:
        raise UploadError(str(err)) from None
    try:
        DATASETS.get(dataset)
    except ValueError as err:
        raise UploadError(str(err)) from None
    if card_json is not None:
        if len(card_json) > CARD_MAX_BYTES:
            raise UploadError(f"the card is {len(card_json):,} bytes, over the {CARD_MAX_BYTES:,}-byte limit")
        try:
            text = card_json.decode("utf-8") if isinstance(card_json, (bytes, bytearray)) else str(card_json)
        except UnicodeDecodeError:
            raise UploadError("the card is not UTF-8 text") from None
        try:
            values = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as err:
            raise UploadError(f"the card is not valid JSON: {err}") from None
        if not isinstance(values, dict):
            raise UploadError("the card must be a JSON object")
        values.update(name=name, dataset=dataset, weights_sha256=None)
        try:
            return card_from_json_text(json.dumps(values), "uploaded card")
        except CheckpointError as err:
            raise UploadError(str(err)) from None
    info = known_info(dataset)
    if info is None:
        raise UploadError(f"the input size and classes of {dataset!r} depend on its folder: upload a card JSON too")
    arch_cfg = parse_json_object(arch_config, "architecture options") if not isinstance(arch_config, dict) else arch_config
    obj_cfg = parse_json_object(objective_config, "objective options") if not isinstance(objective_config, dict) \
        else objective_config
    if objective != OTHER_OBJECTIVE:
        try:
            obj_cfg = _objectives().get(objective).make_config(obj_cfg).model_dump(mode="json")
        except (ConfigError, ValueError) as err:
            raise UploadError(str(err)) from None
    try:
        return ModelCard(name=name, architecture=architecture or "", arch_config=arch_cfg, dataset=dataset,
                         input_shape=info.input_shape, mean=info.mean, std=info.std, classes=info.classes,
                         objective=objective, objective_config=obj_cfg, epochs=epochs, seed=seed, notes=notes or "",
                         command=None)
    except ValidationError as err:
        raise UploadError(format_validation_error(err, "model card")) from None


def check_card_fits_dataset(card: ModelCard) -> list[str]:
    """Refuse a card whose input shape or number of classes cannot be the dataset's."""
    try:
        DATASETS.get(card.dataset)
    except ValueError as err:
        raise UploadError(f"card {card.name!r}: {err}") from None
    info = known_info(card.dataset)
    if info is None:
        return [f"{card.dataset!r} is a folder dataset: its shape and classes are checked when it is loaded."]
    if tuple(card.input_shape) != tuple(info.input_shape):  # the dashboard loads every dataset at its default size
        raise UploadError(f"card {card.name!r} says input shape {tuple(card.input_shape)}, but {card.dataset} images are "
                          f"{tuple(info.input_shape)}")
    if card.num_classes != info.num_classes:
        raise UploadError(f"card {card.name!r} lists {card.num_classes} classes, but {card.dataset} has {info.num_classes}")
    return []


def install_checkpoint(data: bytes, filename: str, card: ModelCard, *, overwrite: bool = False,
                       zoo_dir: str | Path | None = None) -> InstalledCheckpoint:
    """Validate an uploaded state dict (``.safetensors``, or a ``.pt``/``.pth`` state dict read with
    ``torch.load(weights_only=True)``) against ``card`` and add it to the user zoo
    (:func:`~explrobust_core.zoo.add_to_user_zoo`: ``<user zoo>/<dataset>/<name>.safetensors`` + card, atomically).
    Never overwrites silently (``overwrite`` must be asked for), never writes into the shipped zoo, never reuses a
    shipped model's name. Every refusal is an :class:`UploadError`.
    """
    notices: list[str] = []
    label = repr(str(filename)[:120])
    try:
        card = validated_card(card)
    except CheckpointError as err:
        raise UploadError(str(err)) from None
    suffix = Path(str(filename)).suffix.lower()
    if suffix not in FOREIGN_SUFFIXES:
        raise UploadError(f"{label}: upload a {', '.join(FOREIGN_SUFFIXES)} file (a safetensors file or a torch "
                          f"state dict), not {suffix or 'a file without extension'}")
    data = _upload_bytes(data, label, CHECKPOINT_MAX_BYTES, "upload limit")
    notices += check_card_fits_dataset(card)
    source = f"uploaded file {label}"
    try:
        user_zoo_folder(card.dataset, card.name, overwrite=overwrite, zoo_dir=zoo_dir)  # a taken name: before parsing
        model = model_from_state(state_dict_from_bytes(data, suffix, source), card, source)
        path = add_to_user_zoo(model, card, overwrite=overwrite, zoo_dir=zoo_dir)
        stored = read_card(path)
    except CheckpointError as err:
        raise UploadError(str(err)) from None
    if card.metrics:
        notices.append("The card's metrics were copied from the upload, not measured here.")
    return InstalledCheckpoint(path, stored, notices)


def is_user_checkpoint(path: str | Path, zoo_dir: str | Path | None = None) -> bool:
    """True when ``path`` (weights or card) really lies in the user zoo, links followed."""
    try:
        return is_inside_user_zoo(CheckpointPaths.of(path).weights, zoo_dir)
    except CheckpointError:
        return False


def delete_user_checkpoint(path: str | Path, *, zoo_dir: str | Path | None = None) -> list[Path]:
    """Delete a user-zoo checkpoint (weights, card, and its ``.eval.json`` if any).

    Refuses shipped checkpoints and anything outside the user zoo, symbolic links included.
    Returns the deleted files.
    """
    paths = CheckpointPaths.of(path)
    try:
        check_name(paths.weights.stem, "model name")
    except ValueError as err:
        raise UploadError(str(err)) from None
    try:
        zoo, shipped = user_zoo_roots(zoo_dir)
    except CheckpointError as err:
        raise UploadError(str(err)) from None
    files = [paths.weights, paths.card, paths.weights.with_name(paths.weights.stem + ".eval.json")]
    for p in files:
        if not (p.exists() or p.is_symlink()):
            continue
        real = p.resolve()
        if p.is_symlink() or not is_inside_user_zoo(p, zoo):
            where = "a shipped model" if shipped in (real, *real.parents) else "not in the user zoo"
            raise UploadError(f"refused to delete {p}: {where} ({real}); only your own uploaded or trained models "
                              "can be deleted")
    present = [p for p in files if p.exists()]
    if not present:
        raise UploadError(f"there is no user model at {paths.weights}")
    deleted = []
    with user_zoo_lock(zoo):
        for p in present:
            p.unlink(missing_ok=True)
            deleted.append(p)
    return deleted
