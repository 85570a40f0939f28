"""Figure export: the buttons deliver real PNG/PDF/CSV/JSON files and the page zip holds them all."""

from __future__ import annotations

import io
import json
import zipfile

import pytest


@pytest.mark.browser
def test_study_page_exports_its_figures_as_files_and_one_zip(browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page.page
    browser_page.open("Robustness study")
    expect(page.get_by_test_id("stImage").first).to_be_visible(timeout=120_000)
    browser_page.wait_idle()

    with page.expect_download(timeout=120_000) as first:
        page.get_by_test_id("stDownloadButton").filter(has_text="PDF").first.click()
    pdf = (tmp_path / "one.pdf")
    first.value.save_as(pdf)
    assert first.value.suggested_filename.endswith(".pdf") and pdf.read_bytes().startswith(b"%PDF")

    zip_button = page.get_by_role("button", name="Export all")
    zip_button.scroll_into_view_if_needed()
    with page.expect_download(timeout=120_000) as whole:
        zip_button.click()
    path = tmp_path / "page.zip"
    whole.value.save_as(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        stems = {n.rsplit(".", 1)[0] for n in names if n.endswith(".png")}
        assert stems, names
        for stem in stems:  # every figure in both formats, rendered for real
            assert zf.read(f"{stem}.png").startswith(b"\x89PNG") and zf.read(f"{stem}.pdf").startswith(b"%PDF")
        tables = [n for n in names if n.endswith(".csv")]
        assert tables
        for name in tables:
            assert zf.read(name).decode().count("\n") >= 2  # a header and at least one row
            json.loads(zf.read(name[:-4] + ".json"))
    assert whole.value.suggested_filename == "explrobust-study.zip"
    browser_page.assert_no_exception()
