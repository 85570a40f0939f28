"""The dashboard starts: an AppTest run of the script, and the real server in Debian's chromium."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def test_overview_lists_the_registries():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert [t.value for t in at.title] == ["explrobust"]
    assert [s.value for s in at.subheader][:6] == ["Datasets", "Architectures", "Explanation methods",
                                                   "Comparison metrics", "Attacks on predictions",
                                                   "Attacks on explanations"]
    explainers = at.dataframe[2].value
    assert {"integrated_gradients", "deeplift"} <= set(explainers["name"])
    zoo = at.dataframe[6].value
    assert {"natural", "pgd_at", "sep_pos", "sep_neg300"} <= set(zoo["name"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = open(tmp_path_factory.mktemp("server") / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("the streamlit server did not become healthy within 90 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.browser
def test_browser_renders_the_overview(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server)
            expect(page.get_by_role("heading", name="Explanation methods")).to_be_visible(timeout=90_000)
            page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=90_000)
            # six registries and the shipped zoo's table
            expect(page.get_by_test_id("stDataFrame")).to_have_count(7, timeout=60_000)
            expect(page.get_by_role("heading", name="Model zoo")).to_be_visible()
            page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
            page.get_by_role("link", name="Explorer").click()
            expect(page.get_by_test_id("stImage")).to_have_count(8, timeout=90_000)
            page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
            page.get_by_role("link", name="Model zoo").click()
            expect(page.get_by_role("heading", name="Model zoo")).to_be_visible(timeout=60_000)
            errors = page.locator("[data-testid='stException']").count()
            assert errors == 0
        finally:
            browser.close()


def test_zoo_and_explorer_pages():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("pages/zoo.py").run()
    assert not at.exception and at.title[0].value == "Model zoo"
    table = at.dataframe[0].value
    assert {"mnist5k/natural", "mnist5k/sep_pos"} <= set(table["model"])
    at.multiselect(key="zoo_selection_widget").set_value(["mnist5k/natural", "mnist5k/pgd_at"]).run()
    at.switch_page("pages/explorer.py").run()
    assert not at.exception
    # the Model zoo page's choice carries over: one row of overlays per model
    assert [s.value for s in at.subheader] == ["mnist5k/natural", "mnist5k/pgd_at"]
    assert len(at.get("image")) == 16
    at.radio[1].set_value("incorrect").run()  # filter: misclassified images only
    assert not at.exception and len(at.get("image")) > 0
    at.selectbox[0].set_value("occlusion").run()  # a captum display method
    assert not at.exception and len(at.get("image")) > 0
