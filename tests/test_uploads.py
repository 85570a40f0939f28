"""Uploads: images validated for a model's input (explorer), checkpoints into the user zoo (Model zoo
page), deletes of user models only, and per-session isolation of what a browser uploads."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from explrobust_core import uploads
from explrobust_core.uploads import (IMAGE_MAX_PIXELS, UploadError, card_from_form, check_image_tensor,
                                     delete_user_checkpoint, install_checkpoint, is_user_checkpoint, load_image)
from explrobust_core.zoo import build_from_card, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parent.parent
SMALL = {"width1": 4, "width2": 4, "hidden": 8}


def png(mode="L", size=(28, 28), color=0, fmt="PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=isinstance(array, np.ndarray) and array.dtype == object)
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(w: int, h: int, rows: int | None = None) -> bytes:
    """A grayscale PNG of w×h black pixels: a few KB that decode to w·h bytes (only the first
    ``rows`` rows are written when given: the header alone is what size checks read)."""
    z = zlib.compressobj(9)
    rows = b"".join(z.compress(b"\0" * (w + 1)) for _ in range(h if rows is None else rows)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- images


def test_a_plain_image_for_the_model_needs_no_notice():
    img = np.zeros((28, 28), np.uint8)
    img[10:18, 12:16] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    out = load_image(buf.getvalue(), (1, 28, 28))
    assert out.notices == [] and out.tensor.shape == (1, 1, 28, 28) and out.tensor.dtype == torch.float32
    assert torch.equal(out.tensor[0, 0], torch.from_numpy(img / 255.0).float())


@pytest.mark.parametrize("mode,color,shape,expected,notice", [
    ("RGB", (255, 0, 0), (1, 28, 28), 0.299, "grayscale"),  # ITU-R 601-2 luma of pure red
    ("L", 128, (3, 32, 32), 128 / 255, "repeated on 3 channels"),
    ("RGBA", (0, 0, 0, 0), (1, 28, 28), 1.0, "white background"),  # fully transparent → white
    ("LA", (0, 0), (3, 32, 32), 1.0, "white background"),
    ("1", 1, (1, 28, 28), 1.0, "1-bit"),
    ("I;16", 65535, (1, 28, 28), 1.0, "divided by 65535"),
    ("I;16", 200, (1, 28, 28), 200 / 65535, "divided by 65535"),  # a dark 16-bit image stays dark
    ("P", 0, (3, 28, 28), None, "RGB"),
])
def test_modes_are_converted_with_a_notice(mode, color, shape, expected, notice):
    out = load_image(png(mode, (shape[2], shape[1]), color), shape)
    assert out.tensor.shape == (1, *shape)
    assert any(notice in n for n in out.notices), out.notices
    if expected is not None:
        assert torch.allclose(out.tensor, torch.full_like(out.tensor, expected), atol=2 / 255)
    assert out.tensor.min() >= 0 and out.tensor.max() <= 1


def test_other_sizes_are_resized_with_a_notice_that_names_both_sizes():
    out = load_image(png("L", (56, 56), 200), (1, 28, 28))
    assert out.tensor.shape == (1, 1, 28, 28) and out.original_size == (56, 56)
    assert any("56×56 to 28×28" in n for n in out.notices) and not any("stretched" in n for n in out.notices)
    wide = load_image(png("RGB", (300, 100), (0, 0, 255), fmt="JPEG"), (3, 32, 32))
    assert any("300×100 to 32×32" in n and "stretched" in n for n in wide.notices), wide.notices
    small = load_image(png("L", (5, 5), 255), (1, 28, 28))  # upscaling works too
    assert small.tensor.shape == (1, 1, 28, 28) and torch.allclose(small.tensor, torch.ones_like(small.tensor))


def test_animations_exif_and_brightness_hints():
    frames = [Image.new("L", (28, 28), v) for v in (255, 0)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    gif = load_image(buf.getvalue(), (1, 28, 28))
    assert any("first one" in n for n in gif.notices) and float(gif.tensor.mean()) > 0.9
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: a 40×20 photo is upright 20×40
    buf = io.BytesIO()
    Image.new("L", (40, 20), 255).save(buf, "JPEG", exif=exif.tobytes())
    photo = load_image(buf.getvalue(), (1, 28, 28))
    assert any("EXIF" in n for n in photo.notices) and any("20×40 to 28×28" in n for n in photo.notices)
    bright = load_image(png("L", (28, 28), 250), (1, 28, 28), dataset_mean=[0.13])
    assert any("try inverting" in n for n in bright.notices)
    inverted = load_image(png("L", (28, 28), 255), (1, 28, 28), invert=True, dataset_mean=[0.13])
    assert float(inverted.tensor.max()) == 0 and any("inverted" in n for n in inverted.notices)


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"hello, not an image", "not an image in an accepted format"),
    (b"%PDF-1.7\n1 0 obj <<>> endobj", "not an image in an accepted format"),
    (b"PK\x03\x04" + b"\0" * 100, "not an image in an accepted format"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "not an image|corrupt"),
])
def test_non_images_are_refused(data, message):
    with pytest.raises(UploadError, match=message):
        load_image(data, (1, 28, 28))


def test_formats_outside_the_allow_list_never_reach_their_decoder():
    """EPS would make Pillow run Ghostscript; Pillow identifies the file, we refuse it."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n%%EndComments\nshowpage\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"  # control: Pillow alone would take it
    with pytest.raises(UploadError, match="not an image in an accepted format"):
        load_image(eps, (1, 28, 28))


def test_corrupt_and_truncated_images_are_refused():
    good = png("RGB", (64, 64), (10, 20, 30))
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "PNG")
    detailed = buf.getvalue()
    broken_crc = bytearray(detailed)
    broken_crc[len(detailed) // 2] ^= 0xFF
    for data in (detailed[: len(detailed) // 2], bytes(broken_crc), good[:60]):
        with pytest.raises(UploadError, match="corrupt|truncated|not an image"):
            load_image(data, (1, 28, 28))


def _png_with_rows(width: int, height: int, rows: int, interlace: int = 0) -> bytes:
    """A well-formed PNG (valid chunks and CRCs) whose pixel data holds only ``rows`` of its ``height`` rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\0" + bytes([128]) * width for _ in range(rows))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_a_png_whose_pixel_data_stops_early_is_refused_not_filled_with_black():
    short = _png_with_rows(200, 200, 50)
    assert np.asarray(Image.open(io.BytesIO(short))).mean() < 128  # control: Pillow decodes it, silently black
    with pytest.raises(UploadError, match="truncated PNG: .* about 50 of 200 rows"):
        load_image(short, (1, 28, 28))
    complete = load_image(_png_with_rows(200, 200, 200), (1, 28, 28)).tensor
    assert torch.allclose(complete, torch.full_like(complete, 128 / 255))
    for mode in ("L", "RGB", "RGBA", "P", "I;16", "1", "LA"):  # Pillow's own PNGs, every bit depth, pass
        buf = io.BytesIO()
        Image.new(mode, (30, 20)).save(buf, "PNG")
        load_image(buf.getvalue(), (1, 28, 28))


def test_huge_images_are_refused_from_the_header_before_decoding(monkeypatch):
    side = int(IMAGE_MAX_PIXELS ** 0.5) + 8  # just over our cap, well under Pillow's own bomb limit
    bomb = bomb_png(side, side)
    assert len(bomb) < 200_000 and side * side < Image.MAX_IMAGE_PIXELS
    from PIL import ImageFile

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(UploadError, match="pixel limit"):
        load_image(bomb, (1, 28, 28))
    monkeypatch.undo()
    assert Image.open(io.BytesIO(bomb)).size == (side, side)  # control: a real image, only too large
    with pytest.raises(UploadError, match="decompression bomb|pixel limit"):  # Pillow's limit, past ours
        load_image(bomb_png(20_000, 20_000, rows=4), (1, 28, 28))


@pytest.mark.parametrize("size", [(1, 1), (1, 50), (3, 3)])
def test_tiny_images_are_refused(size):
    with pytest.raises(UploadError, match="at least"):
        load_image(png("L", size), (1, 28, 28))


def test_oversized_files_and_unsupported_models(monkeypatch):
    monkeypatch.setattr(uploads, "IMAGE_MAX_BYTES", 1000)
    with pytest.raises(UploadError, match="over the 1,000-byte limit"):
        load_image(b"\0" * 1001, (1, 28, 28))
    monkeypatch.undo()
    with pytest.raises(UploadError, match="4 input channels"):
        load_image(png(), (4, 28, 28))


def test_arrays_nan_inf_and_pickles_are_refused(tmp_path):
    for bad in (np.nan, np.inf, -np.inf):
        arr = np.zeros((28, 28), np.float32)
        arr[3, 4] = bad
        with pytest.raises(UploadError, match="NaN or infinite"):
            load_image(npy(arr), (1, 28, 28))
    with pytest.raises(UploadError, match=r"values in \[-0.5"):
        load_image(npy(np.full((28, 28), -0.5)), (1, 28, 28))
    with pytest.raises(UploadError, match="dtype"):
        load_image(npy(np.zeros((28, 28), np.complex64)), (1, 28, 28))
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = np.empty(2, dtype=object)
    evil[:] = [Payload(), Payload()]
    with pytest.raises(UploadError, match="pickled Python objects"):
        load_image(npy(evil), (1, 28, 28))
    assert not marker.exists()
    np.load(io.BytesIO(npy(evil)), allow_pickle=True)  # control: the same bytes run code when unpickled
    assert marker.exists()


def test_arrays_in_every_layout_are_adapted():
    rgb = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)
    assert torch.allclose(load_image(npy(rgb), (3, 28, 28)).tensor[0], torch.from_numpy(rgb))
    hwc = load_image(npy(np.moveaxis(rgb, 0, -1)), (3, 28, 28))
    assert torch.allclose(hwc.tensor[0], torch.from_numpy(rgb))
    gray = load_image(npy(rgb), (1, 28, 28))
    assert any("grayscale" in n for n in gray.notices) and gray.tensor.shape == (1, 1, 28, 28)
    ints = load_image(npy(np.full((8, 8), 255, np.uint8)), (1, 8, 8))
    assert torch.equal(ints.tensor, torch.ones(1, 1, 8, 8))
    resized = load_image(npy(np.ones((16, 16))), (1, 8, 8))
    assert any("16×16 to 8×8" in n for n in resized.notices)


def test_check_image_tensor():
    ok = torch.rand(1, 28, 28)
    assert check_image_tensor(ok, (1, 28, 28)).shape == (1, 1, 28, 28)
    for bad, message in [(torch.full((1, 28, 28), float("nan")), "NaN"), (torch.full((1, 28, 28), float("inf")), "NaN"),
                         (torch.ones(1, 28, 28) * 2, "outside"), (torch.ones(1, 28, 28, dtype=torch.int64), "floating"),
                         (torch.rand(3, 28, 28), "expects"), (torch.rand(2, 1, 28, 28), "must be"), ([0.5], "tensor")]:
        with pytest.raises(UploadError, match=message):
            check_image_tensor(bad, (1, 28, 28))


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture
def zoos(tmp_path, monkeypatch):
    """A private user zoo and a private 'shipped' zoo holding digits/shipped_one."""
    user, shipped = tmp_path / "user_zoo", tmp_path / "shipped_zoo"
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(user))
    monkeypatch.setenv("EXPLROBUST_ZOO", str(shipped))
    card = digits_card("shipped_one")
    save_checkpoint(build_from_card(card), card, shipped / "digits")
    return user, shipped


def digits_card(name="mine", **kw):
    return card_from_form(name=name, dataset="digits", architecture="convnet", arch_config=SMALL, **kw)


def weights_of(card, kind=".safetensors", seed=0) -> tuple[bytes, torch.nn.Module]:
    torch.manual_seed(seed)
    model = build_from_card(card)
    if kind == ".safetensors":
        from safetensors.torch import save

        return save(model.state_dict()), model
    buf = io.BytesIO()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, buf)
    return buf.getvalue(), model


@pytest.mark.parametrize("kind", [".safetensors", ".pt"])
def test_an_uploaded_checkpoint_lands_in_the_user_zoo_and_loads(zoos, kind):
    user, shipped = zoos
    before = sorted(p.name for p in shipped.rglob("*"))
    card = digits_card(objective="pgd_at", objective_config='{"eps": 0.2}', epochs=3, notes="from a colleague")
    blob, model = weights_of(card, kind)
    installed = install_checkpoint(blob, f"weights{kind}", card)
    assert installed.path == user / "digits" / "mine.safetensors"
    assert is_user_checkpoint(installed.path)
    loaded, stored = load_checkpoint(installed.path, "cpu")
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    assert stored.objective_config["eps"] == 0.2 and stored.notes == "from a colleague" and stored.weights_sha256
    assert sorted(p.name for p in shipped.rglob("*")) == before  # nothing written into the shipped zoo
    assert not [p for p in (user / "digits").iterdir() if p.name.endswith(".tmp")]


def test_an_existing_user_model_is_not_silently_overwritten(zoos):
    card = digits_card()
    first, _ = weights_of(card, seed=0)
    path = install_checkpoint(first, "a.safetensors", card).path
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    second, model2 = weights_of(card, seed=1)
    with pytest.raises(UploadError, match="already have a model digits/mine"):
        install_checkpoint(second, "b.safetensors", card)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    install_checkpoint(second, "b.safetensors", card, overwrite=True)  # only when asked
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(load_checkpoint(path, "cpu")[0](x), model2.eval()(x))


def test_uploads_are_refused_with_clear_reasons(zoos, tmp_path):
    user, _ = zoos
    card = digits_card()
    blob, _ = weights_of(card)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = io.BytesIO()
    torch.save({"w": torch.zeros(1), "x": Payload()}, evil)
    wrong_arch, _ = weights_of(digits_card().model_copy(update={"arch_config": {"width1": 8, "width2": 4, "hidden": 8}}))
    cases = [
        (dict(data=evil.getvalue(), filename="evil.pt"), "refused"),
        (dict(data=blob, filename="weights.exe"), "upload a .safetensors"),
        (dict(data=blob, filename="weights"), "without extension"),
        (dict(data=b"", filename="w.safetensors"), "empty"),
        (dict(data=blob[:100], filename="w.safetensors"), "not a valid safetensors"),
        (dict(data=wrong_arch, filename="w.safetensors"), "shape mismatches"),
        (dict(data=blob, filename="w.pt"), "not a zip-format torch file"),
        (dict(data=blob, filename="w.safetensors", card=digits_card("shipped_one")), "shipped model"),
        (dict(data=blob, filename="w.safetensors",
              card=card.model_copy(update={"input_shape": (1, 28, 28), "mean": [0.1], "std": [0.3]})), "input shape"),
        (dict(data=blob, filename="w.safetensors", card=card.model_copy(update={"classes": ["a", "b"]})), "classes"),
    ]
    for kw, message in cases:
        kw.setdefault("card", card)
        with pytest.raises(UploadError, match=message):
            install_checkpoint(**kw)
    assert not marker.exists()
    assert not list(user.rglob("*.safetensors"))


def test_the_upload_size_cap(zoos, monkeypatch):
    monkeypatch.setattr(uploads, "CHECKPOINT_MAX_BYTES", 1000)
    with pytest.raises(UploadError, match="over the 1,000-byte upload limit"):
        install_checkpoint(b"\0" * 1001, "w.safetensors", digits_card())


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x\n", "", "/abs"])
def test_upload_names_cannot_leave_the_user_zoo(zoos, name, tmp_path):
    with pytest.raises(UploadError, match="invalid model name"):
        digits_card(name)
    card = digits_card()
    sneaky = card.model_construct(**{**card.model_dump(), "name": name})  # bypassing the card's validation
    blob, _ = weights_of(card)
    with pytest.raises(UploadError, match="invalid checkpoint name"):
        install_checkpoint(blob, "w.safetensors", sneaky)
    assert not [p for p in tmp_path.rglob("*.safetensors") if "shipped_zoo" not in str(p)]


def test_links_and_misplaced_zoos_are_refused(zoos, tmp_path, monkeypatch):
    user, shipped = zoos
    card = digits_card()
    blob, _ = weights_of(card)
    user.mkdir(parents=True)
    (user / "digits").symlink_to(shipped / "digits")  # a link that would make uploads land in the shipped zoo
    with pytest.raises(UploadError, match="leads outside the user zoo"):
        install_checkpoint(blob, "w.safetensors", card)
    assert not (shipped / "digits" / "mine.safetensors").exists()
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(shipped / "digits" / "mine"))
    with pytest.raises(UploadError, match="inside the shipped zoo"):
        install_checkpoint(blob, "w.safetensors", card)


def test_delete_only_user_models(zoos, tmp_path):
    user, shipped = zoos
    card = digits_card()
    blob, _ = weights_of(card)
    path = install_checkpoint(blob, "w.safetensors", card).path
    (path.with_name("mine.eval.json")).write_text("{}")
    shipped_weights = shipped / "digits" / "shipped_one.safetensors"
    outside = tmp_path / "elsewhere" / "victim.safetensors"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    outside.with_suffix(".json").write_text("{}")
    link = user / "digits" / "victim.safetensors"
    link.symlink_to(outside)
    for target, message in [(shipped_weights, "shipped model"), (outside, "not in the user zoo"),
                            (link, "not in the user zoo"), (user / "digits" / "../../shipped_zoo/digits/shipped_one",
                                                            "shipped model"),
                            (user / "digits" / "nothing.safetensors", "no user model")]:
        with pytest.raises(UploadError, match=message):
            delete_user_checkpoint(target)
    assert shipped_weights.exists() and outside.exists() and link.is_symlink()
    assert not is_user_checkpoint(shipped_weights) and not is_user_checkpoint(link)
    deleted = delete_user_checkpoint(path)
    assert sorted(p.name for p in deleted) == ["mine.eval.json", "mine.json", "mine.safetensors"]
    assert not path.exists() and shipped_weights.exists()


def test_card_forms():
    card = digits_card(objective="trades", objective_config={"beta": 3})
    assert card.input_shape == (1, 8, 8) and card.objective_config["beta"] == 3 and "eps" in card.objective_config
    with pytest.raises(UploadError, match="architecture options is not valid JSON"):
        card_from_form(name="x", dataset="digits", architecture="convnet", arch_config="{width1: 4")
    with pytest.raises(UploadError, match="must be a JSON object"):
        card_from_form(name="x", dataset="digits", architecture="convnet", arch_config="[1, 2]")
    with pytest.raises(UploadError, match="width1"):
        card_from_form(name="x", dataset="digits", architecture="convnet", arch_config='{"width1": "wide"}')
    with pytest.raises(UploadError, match="beta"):
        digits_card(objective="trades", objective_config={"beta": -1})
    with pytest.raises(UploadError, match="unknown dataset"):
        card_from_form(name="x", dataset="nope", architecture="convnet")
    with pytest.raises(UploadError, match="upload a card JSON"):
        card_from_form(name="x", dataset="imagefolder", architecture="convnet")
    other = digits_card(objective="other", objective_config='{"method": "from a paper"}')
    assert other.objective == "other"
    # a full card JSON (e.g. one `explrobust train` wrote): its name and dataset are the form's, its checksum dropped
    source = json.dumps({**card.model_dump(mode="json"), "name": "old", "weights_sha256": "0" * 64})
    from_json = card_from_form(name="renamed", dataset="digits", card_json=source.encode())
    assert from_json.name == "renamed" and from_json.weights_sha256 is None and from_json.objective == "trades"
    with pytest.raises(UploadError, match="model card"):
        card_from_form(name="x", dataset="digits", card_json=b'{"architecture": 5}')
    with pytest.raises(UploadError, match="UTF-8"):
        card_from_form(name="x", dataset="digits", card_json=b"\xff\xfe")


# --------------------------------------------------------------------------- pages


def _app():
    from streamlit.testing.v1 import AppTest

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from pages import ui

    ui.refresh_checkpoints()  # the listing is cached for a few seconds; this test has its own user zoo
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=180).run()


def _captions(at) -> list[str]:
    return [img.caption for el in at.get("image") for img in el.proto.imgs]


def _fill_upload_form(at, name: str, blob: bytes, filename: str):
    at.file_uploader(key="upload_weights").set_value((filename, blob, "application/octet-stream"))
    at.text_input(key="upload_name").input(name)
    at.selectbox(key="upload_dataset").set_value("digits")
    at.selectbox(key="upload_architecture").set_value("convnet")
    at.text_area(key="upload_arch_options").input(json.dumps(SMALL))
    next(b for b in at.button if b.label == "Upload").click()
    return at.run()


def test_zoo_page_uploads_and_deletes_a_user_model(tmp_path, monkeypatch):
    user = tmp_path / "user_zoo"
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(user))
    blob, _ = weights_of(digits_card("page_model"))
    at = _app().switch_page("pages/zoo.py").run()
    assert not at.exception and not [e for e in at.expander if e.label == "Delete one of your models" and
                                     any(s.key == "delete_choice" for s in at.selectbox)]
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = io.BytesIO()
    torch.save({"w": Payload()}, evil)
    _fill_upload_form(at, "evil_model", evil.getvalue(), "evil.pt")
    assert not at.exception and any("Not uploaded" in e.value and "refused" in e.value for e in at.error)
    assert not marker.exists() and not list(user.rglob("*.safetensors"))

    _fill_upload_form(at, "page_model", blob, "page_model.safetensors")
    assert not at.exception, at.exception
    assert any("Added digits/page_model" in s.value for s in at.success)
    table = at.dataframe[0].value
    assert table.set_index("model").loc["digits/page_model", "source"] == "uploaded"
    assert set(table.loc[table["source"] != "shipped", "model"]) == {"digits/page_model"}
    assert (user / "digits" / "page_model.safetensors").exists()

    # the same name again, from a fresh page (under AppTest every run of a switched-to page draws app.py's
    # navigation again, and that loses a repeated submission of the same form): refused
    at = _app().switch_page("pages/zoo.py").run()
    _fill_upload_form(at, "page_model", blob, "page_model.safetensors")
    assert any("already have a model" in e.value for e in at.error)

    assert at.selectbox(key="delete_choice").options == ["digits/page_model"]  # shipped models are not offered
    assert at.button(key="delete_button").disabled
    at.checkbox(key="delete_confirm").check().run()
    at.button(key="delete_button").click().run()
    assert not at.exception and any("Deleted digits/page_model" in s.value for s in at.success)
    assert not (user / "digits" / "page_model.safetensors").exists()
    assert "digits/page_model" not in set(at.dataframe[0].value["model"])


def test_explorer_explains_an_uploaded_image_like_the_dataset_images(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(tmp_path / "user_zoo"))
    at = _app().switch_page("pages/explorer.py").run()
    n_models, n_images = len(at.subheader), len(at.get("image"))
    assert n_models >= 1 and n_images == 8 * n_models
    big_colour = png("RGB", (90, 60), (255, 255, 255))
    at.file_uploader(key="explorer_upload").set_value(("mine.png", big_colour, "image/png")).run()
    assert not at.exception
    notices = [i.value for i in at.info]
    assert any("grayscale" in n for n in notices) and any("90×60 to 28×28" in n for n in notices)
    assert len(at.get("image")) == n_images + n_models + 1  # one column per model row, plus the preview
    assert sum(c.startswith("your image →") for c in _captions(at)) == n_models
    at.file_uploader(key="explorer_upload").set_value(("bad.png", b"not an image at all", "image/png")).run()
    assert not at.exception and any("cannot be used" in e.value for e in at.error)
    assert len(at.get("image")) == n_images


def test_two_sessions_never_see_each_others_selection_or_upload(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(tmp_path / "user_zoo"))
    first, second = _app(), _app()
    first.switch_page("pages/zoo.py").run()
    first.multiselect(key="zoo_selection_widget").set_value(["mnist5k/natural", "mnist5k/pgd_at"]).run()
    first.switch_page("pages/explorer.py").run()
    first.file_uploader(key="explorer_upload").set_value(("first.png", png("L", (28, 28), 255), "image/png")).run()
    second.switch_page("pages/explorer.py").run()
    assert not first.exception and not second.exception
    assert [s.value for s in first.subheader] == ["mnist5k/natural", "mnist5k/pgd_at"]
    assert [s.value for s in second.subheader] == ["mnist5k/natural"]  # the default, not the other's choice
    assert sum(c.startswith("your image") for c in _captions(first)) == 2
    assert not any(c.startswith("your image") for c in _captions(second))
    assert second.file_uploader(key="explorer_upload").value is None
    second.file_uploader(key="explorer_upload").set_value(("second.png", png("L", (28, 28), 0), "image/png")).run()
    first.run()
    assert any("first.png" in c for c in _captions(first)) and not any("second.png" in c for c in _captions(first))
    assert any("second.png" in c for c in _captions(second)) and not any("first.png" in c for c in _captions(second))
    assert "selected_models" not in second.session_state


def test_an_npy_header_declaring_a_huge_array_is_refused_before_loading():
    import numpy as np

    from explrobust_core.uploads import UploadError, load_image

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1, 200_000, 200_000)})
    assert header.getvalue().startswith(b"\x93NUMPY")  # magic + header: 160 GB of float32 declared in ~128 bytes
    with pytest.raises(UploadError, match="declares"):
        load_image(header.getvalue() + b"\x00" * 64, (1, 28, 28), name="bomb.npy")
