"""Published models on the dashboard and at ImageNet size: a RobustBench file uploaded in the browser and used
on the Explorer and the Attack lab over 32×32 colour PNGs; a torchvision ResNet-18 over 224×224 PNGs on both
pages and through the CLI; rank metrics on 224×224 maps within a memory bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_import import RefWRN, make_folder, randomize, save_pt

REPO = Path(__file__).resolve().parent.parent


def photo_folder(root: Path, size=(256, 300), per_class=1, classes=("cat", "dog")) -> Path:
    """Colour PNGs larger than 224 and not square: read at 224 by short-side resize and centre crop."""
    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                smooth = rng.random((size[0] // 16, size[1] // 16, 3))  # blobs, not pixel noise: real gradients
                img = np.kron(smooth, np.ones((16, 16, 1))) * 200 + rng.integers(0, 55, (*size, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture
def resnet18_at_224(tmp_path, monkeypatch):
    """A torchvision ResNet-18 (random weights, 2 classes) imported over a folder of 224×224 PNGs."""
    import torchvision

    from explrobust_core.importers import import_file

    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(tmp_path / "user_zoo"))
    folder = photo_folder(tmp_path / "photos")
    torch.manual_seed(21)
    file = save_pt(randomize(torchvision.models.resnet18(num_classes=2)).state_dict(), tmp_path / "resnet18.pt")
    installed = import_file(file, layout="torchvision:resnet18", dataset="imagefolder", name="rn18", input_size=224,
                            dataset_config={"root": str(folder)})
    return installed.path


# --------------------------------------------------------------------------- the browser


@pytest.mark.browser
def test_browser_uploads_a_robustbench_file_and_uses_it_on_the_explorer_and_the_attack_lab(tmp_path, chromium):
    from playwright.sync_api import expect

    from conftest import BrowserPage, streamlit_server

    folder = make_folder(tmp_path / "pngs", per_class=4)  # 8 test images, 32×32 colour
    torch.manual_seed(31)
    file = save_pt({"state_dict": randomize(RefWRN(10, 1, classes=2)).state_dict()}, tmp_path / "rb_wrn.pt")
    runs = tmp_path / "runs"
    with streamlit_server(tmp_path, runs) as url:  # its own user zoo: other browser tests see no extra model
        context = chromium.new_context(viewport={"width": 1400, "height": 1000})
        try:
            tab = BrowserPage(context.new_page(), url)
            page = tab.page
            tab.open("Model zoo")
            page.get_by_text("Upload a checkpoint").click()
            page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(str(file))
            page.get_by_role("textbox", name="Name").fill("rb_wrn")
            for label, value in (("Dataset", "imagefolder"), ("Layout of the file", "robustbench")):
                box = page.get_by_role("combobox", name=label)
                box.click()
                box.fill(value)
                box.press("Enter")
            page.get_by_role("textbox", name="Published architecture").fill("wrn-10-1")
            page.get_by_role("textbox", name="Data root (optional)").fill(str(folder))
            page.get_by_role("spinbutton", name="Input size (optional)").fill("32")
            page.get_by_test_id("stBaseButton-secondaryFormSubmit").filter(has_text="Upload").click()
            expect(page.get_by_text("Added imagefolder/rb_wrn")).to_be_visible(timeout=120_000)
            tab.wait_idle()
            expect(page.get_by_test_id("stDataFrame").first).to_contain_text("imported from robustbench")
            assert (runs / "zoo" / "imagefolder" / "rb_wrn.safetensors").is_file()
            # choose it instead of the default model: Backspace drops the default's tag, then pick ours
            chosen = page.get_by_test_id("stMultiSelect").filter(has_text="Models to compare on every page")
            chooser = chosen.get_by_role("combobox")
            chooser.click()
            chooser.press("Backspace")
            expect(chosen).not_to_contain_text("mnist5k/natural", timeout=30_000)
            tab.wait_idle()
            chooser.click()
            page.get_by_role("option", name="imagefolder/rb_wrn", exact=True).click()
            chooser.press("Escape")
            expect(chosen).to_contain_text("imagefolder/rb_wrn", timeout=30_000)
            tab.wait_idle()
            tab.assert_no_exception()

            tab.open("Explorer")
            expect(page.get_by_role("heading", name="imagefolder/rb_wrn")).to_be_visible(timeout=120_000)
            expect(page.get_by_test_id("stImage")).to_have_count(8, timeout=120_000)  # 8 overlays of the folder
            tab.assert_no_exception()
            tab.screenshot("published_explorer")

            tab.open("Attack lab")
            page.get_by_role("spinbutton", name="steps", exact=True).fill("2")
            page.get_by_role("button", name="Show me").click()
            tab.wait_idle()
            table = page.get_by_test_id("stDataFrame").first
            expect(table).to_contain_text("imagefolder/rb_wrn", timeout=180_000)
            # the image's preview, the trajectory and the panels of images and maps, all drawn
            expect(page.get_by_test_id("stImage")).to_have_count(3, timeout=60_000)
            page.wait_for_function("Array.from(document.querySelectorAll('[data-testid=stImage] img'))"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=60_000)
            assert page.locator("[data-testid='stAlertContentError']").count() == 0
            tab.assert_no_exception()
            tab.screenshot("published_attack_lab")
        finally:
            context.close()
