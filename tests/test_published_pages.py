"""Published models on the dashboard and at ImageNet size: a RobustBench file uploaded in the browser and used
on the Explorer and the Attack lab over 32×32 colour PNGs; a torchvision ResNet-18 over 224×224 PNGs on both
pages and through the CLI; rank metrics on 224×224 maps within a memory bound."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_import import RefWRN, make_folder, randomize, save_pt

REPO = Path(__file__).resolve().parent.parent


def photo_folder(root: Path, size=(256, 320), per_class=1, classes=("cat", "dog")) -> Path:
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
                box = page.get_by_role("combobox", name=label, exact=True)
                tab.pick(box, value, lambda: value in box.input_value())  # the box shows the chosen option
                expect(box).to_have_value(re.compile(re.escape(value)))
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
            tab.pick(chooser, "imagefolder/rb_wrn", lambda: "imagefolder/rb_wrn" in chosen.inner_text(), attempts=4)
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


# --------------------------------------------------------------------------- a torchvision ResNet-18 at 224×224


def test_resnet18_at_224_on_the_explorer_and_the_attack_lab(resnet18_at_224, monkeypatch, one_torch_thread):
    """Both pages run the imported ResNet-18 on 224×224 images: the Explorer explains in capped batches and
    reports progress from the core after each; the Attack lab attacks and shows its table and maps."""
    from apptest_pages import by_label, open_page

    from explrobust_core import batching, browse
    from pages import ui

    monkeypatch.setattr(batching, "cpu_batch_cap", lambda model, numel: 1)  # one image per batch: see each one
    real, seen = browse.explain_images, []

    def spy(model, images, method, progress=None):
        def report(done, total):
            seen.append((done, total))
            progress(done, total)  # the page's bar

        return real(model, images, method, progress=report)

    monkeypatch.setattr(browse, "explain_images", spy)
    ui.refresh_checkpoints()
    try:
        at = open_page("explorer", "Explorer", ["imagefolder/rn18"])
        assert not at.exception and not at.error
        assert [s.value for s in at.subheader] == ["imagefolder/rn18"]
        assert len(at.get("image")) == 2 and seen == [(1, 2), (2, 2)]  # a cat and a dog, one batch each
        assert any("224×224" in c.value for c in at.caption)  # the upload box: the models' input size

        at = open_page("attack_lab", "Attack lab", ["imagefolder/rn18"])
        by_label(at.number_input, "steps").set_value(1)
        next(b for b in at.button if b.label == "Show me").click().run()
        assert not at.exception and not at.error
        row = at.dataframe[0].value.iloc[0]
        assert row["model"] == "imagefolder/rn18" and 0 <= row["top-k intersection"] <= 1
        assert len(at.get("image")) == 3  # preview, trajectory, panels with both maps
    finally:
        ui.refresh_checkpoints()


def test_cli_explain_and_attack_explanation_on_resnet18_at_224(resnet18_at_224, tmp_path):
    from explrobust_core.cli import main

    out = tmp_path / "out"
    ckpt = str(resnet18_at_224)
    assert main(["explain", "--checkpoint", ckpt, "--indices", "0,1", "--method", "integrated_gradients",
                 "--n-steps", "4", "--out", str(out), "--device", "cpu"]) == 0
    images = json.loads((out / "explain_integrated_gradients.json").read_text())["images"]
    maps = np.asarray([row["map"] for row in images])
    assert maps.shape == (2, 224, 224) and np.allclose(maps.sum((1, 2)), 1, atol=1e-4)
    assert main(["attack-explanation", "--checkpoint", ckpt, "--indices", "1", "--attack", "ifia", "--steps", "1",
                 "--k", "2000", "--eval-k", "2000", "--out", str(out), "--device", "cpu"]) == 0
    row = json.loads((out / "ifia.json").read_text())["per_image"]
    assert row["index"] == [1] and (out / "ifia_test_1.png").exists()
    assert row["attacked"] == [True] and row["final_pred"] == row["label"]  # one small step keeps the label
    assert 0 <= row["topk_intersection"][0] < 1 and -1 <= row["kendall_tau"][0] < 1  # the map moved


MEMORY_PROBE = """
import resource, sys, torch
from explrobust_core.metrics import kendall_tau, spearman_rho, topk_intersection
g = torch.Generator().manual_seed(0)
def maps(n):
    a = torch.rand(n, 224, 224, generator=g)
    b = a + 0.3 * torch.rand(n, 224, 224, generator=g)
    b[::2] = (b[::2] * 8).floor()  # heavy ties in every other map
    return a, b
a, b = maps(2)
kendall_tau(a, b), spearman_rho(a, b), topk_intersection(a, b, 1000)  # imports and first-call buffers
a, b = maps(16)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
values = torch.stack([kendall_tau(a, b), spearman_rho(a, b), topk_intersection(a, b, 1000)])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(grown * 1024, a.numel() * a.element_size(), bool(values.isfinite().all()))
"""


def test_rank_metrics_on_224x224_maps_stay_within_a_memory_bound():
    """Top-k intersection, Kendall τ and Spearman ρ of 16 pairs of 224×224 maps: the peak resident memory grows
    by less than 512 MB (a pairwise Kendall count would hold 50,176² ≈ 2.5·10⁹ pairs per map). Measured in a
    fresh process, whose peak is its own."""
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, timeout=600,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    grown, input_bytes, finite = out.stdout.split()
    assert finite == "True"
    assert int(grown) < 512 * 2**20, f"peak memory grew by {int(grown) / 2**20:.0f} MB for {int(input_bytes) / 2**20:.1f} MB of maps"
