"""Shared fixtures: tiny models on the embedded digits, trained for a few seconds."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

os.environ.setdefault("EXPLROBUST_USER_ZOO", "/nonexistent-explrobust-user-zoo")
torch.set_num_threads(2)


def fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int = 3, seed: int = 0):
    """A few epochs of plain Adam on the whole set: enough for a non-trivial, real model."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(images.shape[0])
        for start in range(0, images.shape[0], 128):
            idx = perm[start:start + 128]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits_train():
    from explrobust_core.data import load_dataset

    return load_dataset("digits", "train")


@pytest.fixture(scope="session")
def digits_test():
    from explrobust_core.data import load_dataset

    return load_dataset("digits", "test")


@pytest.fixture(scope="session")
def digits_convnet(digits_train):
    from explrobust_core.models import build_model

    info = digits_train.info
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=info.input_shape, num_classes=info.num_classes,
                        mean=info.mean, std=info.std)
    return fit(model, digits_train.images, digits_train.labels)


@pytest.fixture(scope="session")
def mnist_test():
    from explrobust_core.data import load_dataset

    return load_dataset("mnist5k", "test")


@pytest.fixture(scope="session")
def mnist_convnet():
    """A real natural model: the ConvNet trained for 2 epochs on the 4,000 mnist5k training digits."""
    from explrobust_core.data import load_dataset
    from explrobust_core.models import build_model

    train = load_dataset("mnist5k", "train")
    info = train.info
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=info.input_shape, num_classes=10, mean=info.mean, std=info.std)
    return fit(model, train.images, train.labels, epochs=2)


# --- the real dashboard server and Debian's chromium, for the browser tests -------------------------

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
# screenshots are kept as test artefacts here (CI can collect the folder)
ARTIFACTS = Path(os.environ.get("EXPLROBUST_TEST_ARTIFACTS", REPO / "test-artifacts"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server_runs_dir(tmp_path_factory) -> Path:
    """The runs directory (jobs, user zoo) of the test server: never the developer's own."""
    return tmp_path_factory.mktemp("server_runs")


@contextlib.contextmanager
def streamlit_server(log_dir: Path, runs_dir: Path):
    """The real streamlit server on a free localhost port; yields its URL once healthy."""
    port = _free_port()
    log_path = log_dir / "streamlit.log"
    log = open(log_path, "w")
    env = dict(os.environ, EXPLROBUST_RUNS=str(runs_dir), EXPLROBUST_USER_ZOO=str(runs_dir / "zoo"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
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
            pytest.fail(f"the streamlit server did not become healthy within 90 s; log: {log_path.read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory, server_runs_dir):
    """The real streamlit server on a free localhost port, for the whole session."""
    with streamlit_server(tmp_path_factory.mktemp("server"), server_runs_dir) as url:
        yield url


@pytest.fixture(scope="session")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


class BrowserPage:
    """One browser tab on the dashboard: open a page through the navigation, wait for runs, screenshot."""

    def __init__(self, page, url: str):
        self.page, self.url = page, url

    def wait_idle(self, timeout_ms: int = 180_000) -> None:
        """Wait until the script run finished (the running indicator is gone)."""
        # the app root says whether a script run is in progress (the status widget is hidden in minimal toolbar mode)
        self.page.wait_for_function(
            "() => { const app = document.querySelector(\"[data-testid='stApp']\");"
            " return app !== null && app.getAttribute('data-test-script-state') !== 'running'; }",
            timeout=timeout_ms)

    def open(self, title: str, timeout_ms: int = 120_000) -> None:
        """Start at the root (a cold server's first request must not be a deep link) and click the page."""
        from playwright.sync_api import expect

        if not self.page.url.startswith(self.url):
            self.page.goto(self.url)
            expect(self.page.get_by_role("heading", name="explrobust")).to_be_visible(timeout=timeout_ms)
            self.wait_idle(timeout_ms)
        self.page.get_by_role("link", name=title).click()
        expect(self.page.get_by_role("heading", name=title).first).to_be_visible(timeout=timeout_ms)
        self.wait_idle(timeout_ms)

    def pick(self, box, option, shows, attempts: int = 3) -> None:
        """Choose ``option`` (a locator's text) in the select or multiselect ``box`` until ``shows()`` says it took.

        A pick can be lost: an Enter before the filtered list is drawn, a list closed by a rerun of the page. So
        type the text (the list then holds that option however long it is), click the option itself, wait for the
        run, and pick again while ``shows()`` is false."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

        for _ in range(attempts):
            box.click()
            box.fill(option)
            try:
                self.page.get_by_role("option").filter(has_text=option).first.click(timeout=15_000)
            except PlaywrightTimeoutError:
                pass
            box.press("Escape")
            self.wait_idle()
            if shows():
                return

    def assert_no_exception(self) -> None:
        shown = self.page.locator("[data-testid='stException']")
        assert shown.count() == 0, shown.first.inner_text()

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        # streamlit scrolls inside its main container, so a "full page" shot would stop at the viewport:
        # grow the viewport to the content for the shot
        size = self.page.viewport_size
        height = self.page.evaluate(
            "() => { const m = document.querySelector(\"[data-testid='stMain']\") || document.body;"
            " return m.scrollHeight; }")
        self.page.set_viewport_size({"width": size["width"], "height": min(max(int(height), size["height"]), 10_000)})
        try:
            self.page.screenshot(path=str(path), full_page=True)
        finally:
            self.page.set_viewport_size(size)
        return path


@pytest.fixture
def browser_page(server, chromium):
    """A fresh browser context (its own streamlit session) on the test server."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield BrowserPage(context.new_page(), server)
    finally:
        context.close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Pages run inside the test process; on a shared 2-core machine two intra-op threads competing with other
    processes slow an attack's many tiny steps down many-fold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
