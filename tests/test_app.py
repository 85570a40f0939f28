"""The dashboard starts: an AppTest run of the script, and the real server in Debian's chromium."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_overview_lists_the_registries():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert [t.value for t in at.title] == ["explrobust"]
    assert [s.value for s in at.subheader][:7] == ["Datasets", "Architectures", "Explanation methods",
                                                   "Comparison metrics", "Attacks on predictions",
                                                   "Attacks on explanations", "Training objectives"]
    explainers = at.dataframe[2].value
    assert {"integrated_gradients", "deeplift"} <= set(explainers["name"])
    assert {"natural", "pgd_at", "trades", "sep"} <= set(at.dataframe[6].value["name"])
    zoo = at.dataframe[7].value
    assert {"natural", "pgd_at", "sep_pos", "sep_neg"} <= set(zoo["name"])


@pytest.mark.browser
def test_browser_renders_overview_zoo_and_explorer(browser_page):
    from playwright.sync_api import expect

    page = browser_page.page
    page.goto(browser_page.url)
    expect(page.get_by_role("heading", name="Explanation methods")).to_be_visible(timeout=90_000)
    browser_page.wait_idle()
    # seven registries (training objectives included) and the shipped zoo's table
    expect(page.get_by_test_id("stDataFrame")).to_have_count(8, timeout=60_000)
    expect(page.get_by_role("heading", name="Model zoo")).to_be_visible()
    browser_page.assert_no_exception()
    browser_page.screenshot("overview")
    browser_page.open("Explorer")
    expect(page.get_by_test_id("stImage")).to_have_count(8, timeout=90_000)
    browser_page.assert_no_exception()
    browser_page.screenshot("explorer")
    browser_page.open("Model zoo")
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=60_000)
    browser_page.assert_no_exception()
    browser_page.screenshot("zoo")


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


@pytest.mark.browser
def test_browser_deep_link_first_on_a_fresh_server_shows_the_real_navigation(tmp_path, chromium):
    """A bookmarked page opened before anything else on a fresh server: Streamlit's legacy folder-based
    navigation (listing the files of pages/, "app" and "ui" among them) must not be what the user sees."""
    from playwright.sync_api import expect

    from conftest import streamlit_server

    with streamlit_server(tmp_path, tmp_path / "runs") as url:
        context = chromium.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.goto(f"{url}/attack_lab")  # the server's very first request
            expect(page.get_by_role("heading", name="Attack lab").first).to_be_visible(timeout=120_000)
            nav = page.get_by_test_id("stSidebarNav")
            expect(nav.get_by_text("Robustness study")).to_be_visible(timeout=60_000)  # app.py's sections
            expect(nav.get_by_text("Explore", exact=True)).to_be_visible()
            links = [t.strip().lower() for t in nav.get_by_role("link").all_inner_texts()]
            assert not {"app", "ui"} & set(links), links
            assert page.url.endswith("/attack_lab")
        finally:
            context.close()


def test_the_file_watcher_does_not_walk_the_checkout():
    """watchdog (Streamlit's default) watches the app's folder recursively, a .venv inside it included; our
    config turns the watcher off (no walk, and no scan of every module's path after a run that imported one)."""
    import subprocess
    import sys

    code = ("import streamlit.config as c; c.get_config_options(force_reparse=True); "
            "from streamlit.watcher.path_watcher import get_default_path_watcher_class as w; print(w().__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "NoOpPathWatcher", out.stderr[-2000:]
