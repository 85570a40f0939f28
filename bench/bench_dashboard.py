"""Benchmark: dashboard cold start — a fresh ``streamlit run app.py`` to its first rendered page — and each
interactive page's default **Show me** against a warm server.

    .venv/bin/python bench/bench_dashboard.py [--quick] [--repeats 3] [--threads 1] [--out FILE]
    .venv/bin/python bench/bench_dashboard.py --part pages --pages attack_lab,clusters

Each run starts a new server process (headless, a free port on 127.0.0.1, a temporary runs
directory), the way ``scripts/start.sh`` does, and opens it in Debian's chromium through Playwright
(``/usr/bin/chromium``; the browser itself is launched once, untimed). Times from the server's
``Popen``:

* ``health_s`` — ``/_stcore/health`` answers ``ok`` (the server listens; no script has run yet);
* ``first_render_s`` — the page's heading "explrobust" is visible in the browser (the first
  session ran the Overview script far enough to draw it): **the cold start**;
* ``idle_s`` — the page's last heading ("Model zoo" on the Overview) is visible and the script run
  finished (the running indicator is gone): the whole first page.

The peer is the floor any torch-based Streamlit app pays, measured the same way in the same run:
a minimal app that does ``import streamlit as st, torch`` and draws the same heading. ``cost =
ours_median / minimal_median`` (how many such floors our cold start costs). For reference, a fresh
``python -c "import streamlit, torch"`` is timed as well. "Cold" means a new process: the OS file
cache is warm after the first run. Runs are interleaved (ours, minimal | minimal, ours | …) after one
untimed warm-up of each; timings are reported, never asserted on.

**Pages** (one row each: Attack lab, Classification robustness, Loss landscape, Clusters): per repeat a new
server is started and warmed, untimed — the Overview and then every benchmarked page opened once, so imports,
the dataset and the page's form are there — then on each page in turn one click on its default **Show me**
(default selection: the ``mnist5k/natural`` model) is timed until the result is drawn: the page's last result
element visible (its "Export all" button and a result heading), the script run finished (the app root's
``data-test-script-state`` left ``running`` after the click) and every image loaded. A new server per repeat
keeps the per-click caches (``st.cache_data`` keyed on the parameters) from answering the repeats; the same
page is then clicked again in the same session (``repeat_click_s``: the cached path). The load average
(``os.getloadavg``) is recorded beside every click, since the machine is shared, and so is the CPU time the
server process spent on the first click (``server_cpu_first_click_s``, from ``/proc``): on a loaded machine the
wall time stretches, the CPU time much less — it is about what the click costs the server on an idle core
(the browser's own drawing is not in it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
HEADING = "explrobust"
MINIMAL_APP = f'''import streamlit as st
import torch  # noqa: F401  (the floor: what any torch-based streamlit app imports)

st.title("{HEADING}")
'''


# page → (its title in the navigation, the text of a result element drawn late on the page, the aim in seconds)
PAGES: dict[str, tuple[str, str, float]] = {
    "attack_lab": ("Attack lab", "Images and maps", 3.0),
    "classification": ("Classification robustness", "Adversarial examples", 5.0),
    "landscape": ("Loss landscape", "2D: direction 1", 5.0),
    "clusters": ("Clusters", "Images and explanations", 3.0),
}
PAGE_WHAT = {
    "attack_lab": "Attack lab: IFIA top-k, 1 image, 100 steps",
    "classification": "Classification robustness: PGD-10 L∞, 4 ε, 64 images, the stored curves beside",
    "landscape": "Loss landscape: 1D + 2D, PGD/IFIA endpoints, curvature",
    "clusters": "Clusters: Way3 on 1,000 images, PCA map, 24-image gallery",
}
PARTS = ("cold", "pages")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for one cold start or one click "
                                                                 "(default 180)")
    p.add_argument("--part", default=",".join(PARTS), help="comma-separated: cold (the cold start), pages (each "
                                                            "page's default Show me); default both")
    p.add_argument("--pages", default=",".join(PAGES), help=f"pages to time (of: {', '.join(PAGES)})")
    args = p.parse_args(argv)
    if args.clock == "cpu":
        p.error("--clock cpu times this process only, and this benchmark's work runs in other processes")
    args.parts = [x.strip() for x in args.part.split(",") if x.strip()]
    args.page_names = [x.strip() for x in args.pages.split(",") if x.strip()]
    if set(args.parts) - set(PARTS) or set(args.page_names) - set(PAGES):
        p.error(f"--part takes {', '.join(PARTS)}; --pages takes {', '.join(PAGES)}")
    return C.resolve_defaults(args, {"repeats": (1, 3)}, p)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(browser, app: Path, runs_dir: Path, timeout_s: float, last_heading: str) -> dict:
    """Start a server for ``app``, render its first page in a fresh browser context, stop the server.

    ``last_heading``: the heading drawn last on the first page (it and a finished script run mean the
    whole page is there)."""
    from playwright.sync_api import expect

    context = None
    with server(app, runs_dir, timeout_s) as (url, started, _pid):
        try:
            health = time.perf_counter() - started
            deadline = started + timeout_s
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            remaining_ms = max(1000.0, (deadline - time.perf_counter()) * 1000)
            page.goto(url, timeout=remaining_ms)
            expect(page.get_by_role("heading", name=HEADING).first).to_be_visible(timeout=remaining_ms)
            rendered = time.perf_counter() - started
            expect(page.get_by_role("heading", name=last_heading).first).to_be_visible(timeout=remaining_ms)
            _idle(page, remaining_ms)
            idle = time.perf_counter() - started
            errors = page.locator("[data-testid='stException']").count()
            return {"health_s": health, "first_render_s": rendered, "idle_s": idle, "exceptions_shown": errors}
        finally:
            if context is not None:
                context.close()


@contextlib.contextmanager
def server(app: Path, runs_dir: Path, timeout_s: float) -> Iterator[tuple[str, float, int]]:
    """A ``streamlit run`` of ``app`` on a free port; yields its URL, the ``perf_counter`` of its start and its
    process id once it is healthy (``/_stcore/health`` answers ``ok``), and stops it after."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, EXPLROBUST_RUNS=str(runs_dir), EXPLROBUST_USER_ZOO=str(runs_dir / "zoo"))
    env.setdefault("NUMBA_CACHE_DIR", str(C.REPO_ROOT / ".venv" / "numba_cache"))
    log = tempfile.TemporaryFile()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true", "--server.address",
         "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=C.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = started + timeout_s
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if time.perf_counter() > deadline or proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{app.name}: the server did not become healthy: {log.read()[-2000:]!r}")
            time.sleep(0.05)
        yield url, started, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# the app root's script state: watched from before a click, so that a run that starts and ends between two
# polls is still seen (``window.__runs`` counts the runs that finished since the watch was set)
WATCH_RUNS = """() => {
  const app = document.querySelector("[data-testid='stApp']");
  window.__runs = 0;
  let running = false;
  new MutationObserver(() => {
    const now = app.getAttribute('data-test-script-state') === 'running';
    if (running && !now) window.__runs += 1;
    running = now;
  }).observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""
IDLE_AFTER_A_RUN = """() => {
  const app = document.querySelector("[data-testid='stApp']");
  return window.__runs > 0 && app.getAttribute('data-test-script-state') !== 'running'
    && Array.from(document.images).every(i => i.complete);
}"""


def _idle(page, timeout_ms: float) -> None:
    page.wait_for_function("() => { const a = document.querySelector(\"[data-testid='stApp']\");"
                           " return a !== null && a.getAttribute('data-test-script-state') !== 'running'; }",
                           timeout=timeout_ms)


def open_page(page, title: str, timeout_ms: float) -> None:
    """Click ``title`` in the navigation and wait until its script run is over (its form drawn)."""
    from playwright.sync_api import expect

    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
    expect(page.get_by_role("heading", name=title).first).to_be_visible(timeout=timeout_ms)
    expect(page.get_by_role("button", name="Show me")).to_be_visible(timeout=timeout_ms)
    _idle(page, timeout_ms)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def click_show_me(page, marker: str, timeout_ms: float) -> float:
    """Seconds from a click on **Show me** until the result is drawn (see the module's docstring)."""
    from playwright.sync_api import expect

    page.evaluate(WATCH_RUNS)
    started = time.perf_counter()
    page.get_by_role("button", name="Show me").click()
    expect(page.get_by_text(marker).first).to_be_visible(timeout=timeout_ms)
    expect(page.get_by_role("button", name=re.compile("^Export all"))).to_be_visible(timeout=timeout_ms)
    page.wait_for_function(IDLE_AFTER_A_RUN, timeout=timeout_ms)
    return time.perf_counter() - started


def time_pages(browser, names: list[str], runs_dir: Path, timeout_s: float) -> list[dict]:
    """One fresh, warmed server: each page's first and repeated click on its default Show me."""
    out = []
    timeout_ms = timeout_s * 1000
    with server(C.REPO_ROOT / "app.py", runs_dir, timeout_s) as (url, _started, pid):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.goto(url, timeout=timeout_ms)
            page.get_by_role("heading", name=HEADING).first.wait_for(timeout=timeout_ms)
            _idle(page, timeout_ms)
            for name in names:  # warm: every page's imports, form and dataset, untimed
                open_page(page, PAGES[name][0], timeout_ms)
            for name in names:
                title, marker, _aim = PAGES[name]
                open_page(page, title, timeout_ms)
                load, cpu = C.load_average(), cpu_seconds(pid)
                first = click_show_me(page, marker, timeout_ms)
                cpu_first = cpu_seconds(pid) - cpu
                again = click_show_me(page, marker, timeout_ms)
                errors = page.locator("[data-testid='stException']").count()
                C.log(f"page {name}: first click {first:.2f} s (server CPU {cpu_first:.2f} s), repeat {again:.2f} s "
                      f"(load {load})")
                out.append({"page": name, "first_click_s": first, "repeat_click_s": again, "load_average": load,
                            "server_cpu_first_click_s": cpu_first, "exceptions_shown": errors})
        finally:
            context.close()
    return out


def import_floor() -> float:
    """Seconds for a fresh ``python -c "import streamlit, torch"``."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import streamlit, torch"], check=True, cwd=C.REPO_ROOT)
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> dict:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium (the benchmark never downloads a browser)")
    report = C.new_report("dashboard: cold start of `streamlit run app.py` to the first rendered page, and each "
                          "page's default Show me against a warm server, in chromium", {
        "quick": args.quick, "repeats": args.repeats, "parts": args.parts, "pages": args.page_names,
        "browser": {"executable": CHROMIUM, "args": CHROMIUM_FLAGS, "headless": True, "launched": "once, untimed"},
        "server": "python -m streamlit run APP --server.headless true --server.address 127.0.0.1 --server.port FREE",
        "first_render": f"Playwright: heading {HEADING!r} visible (no fixed sleeps)",
        "minimal_app": MINIMAL_APP,
        "cost": "ours_median / minimal_median for first_render_s (how many floors our cold start costs)",
        "page_click": "a new warmed server per repeat; from the click on Show me until the result is drawn "
                      "(marker text and 'Export all' visible, the script run over, images loaded)",
    })
    with tempfile.TemporaryDirectory(prefix="bench_dashboard_") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            if "cold" in args.parts:
                _cold_rows(report, browser, Path(tmp), args)
            if "pages" in args.parts:
                _page_rows(report, browser, Path(tmp), args)
        finally:
            browser.close()
    return report


def _page_rows(report: dict, browser, tmp: Path, args: argparse.Namespace) -> None:
    runs: list[dict] = []
    started = time.perf_counter()
    for i in range(args.repeats):
        runs += time_pages(browser, args.page_names, tmp / f"runs_pages_{i}", args.timeout)
    wall = time.perf_counter() - started
    for name in args.page_names:
        mine = [r for r in runs if r["page"] == name]
        first, again = C.stats([r["first_click_s"] for r in mine]), C.stats([r["repeat_click_s"] for r in mine])
        cpu = C.stats([r["server_cpu_first_click_s"] for r in mine])
        loads = [r["load_average"][0] for r in mine if r["load_average"]]
        report["rows"].append({"name": f"dashboard_page/{name}", "first_click": first, "repeat_click": again,
                               "server_cpu_first_click": cpu,
                               "aim_s": PAGES[name][2], "load_average_1min": loads, "runs": mine,
                               "exceptions_shown": sum(r["exceptions_shown"] for r in mine), "wall_s": wall})
        report["table"].append(C.table_entry(
            f"dashboard_page/{name}", f"dashboard, warm server: {PAGE_WHAT[name]} — click on the default Show me "
            "until drawn", first, ours_label="first click", kind="absolute",
            note=(f"server CPU time of the first click {cpu['median_s']:.2f} s (what it costs on an idle core); the "
                  f"same click again (cached): {again['median_s']:.2f} s; load average (1 min) at the clicks: "
                  + ", ".join(f"{v:.1f}" for v in loads))))


def _cold_rows(report: dict, browser, tmp: Path, args: argparse.Namespace) -> None:
    minimal = tmp / "minimal_app.py"
    minimal.write_text(MINIMAL_APP)
    apps = {"ours": C.REPO_ROOT / "app.py", "minimal": minimal}
    last = {"ours": "Model zoo", "minimal": HEADING}  # Overview's last heading
    results: dict[str, list[dict]] = {label: [] for label in apps}

    def start(label: str) -> dict:
        return cold_start(browser, apps[label], tmp / f"runs_{label}", args.timeout, last[label])

    sides = {label: (lambda label=label: results[label].append(start(label))) for label in apps}
    warm = {label: (lambda label=label: start(label)) for label in apps}
    t = C.run_interleaved("dashboard_cold_start", sides, args.repeats, warmups=warm, keep_first=False)
    imports = [import_floor() for _ in range(args.repeats)]

    def stat(label, key):
        return C.stats([r[key] for r in results[label]])

    s = {label: {key: stat(label, key) for key in ("health_s", "first_render_s", "idle_s")} for label in apps}
    s_import = C.stats(imports)
    report["rows"].append({
        "name": "dashboard_cold_start", "ours": s["ours"], "minimal": s["minimal"], "import_streamlit_torch": s_import,
        **C.cost(s["ours"]["first_render_s"], s["minimal"]["first_render_s"]),
        "exceptions_shown": sum(r["exceptions_shown"] for r in results["ours"]), "runs": results,
        "wall_s": sum(t.times["ours"]) + sum(t.times["minimal"]),
    })
    ours, floor = s["ours"], s["minimal"]
    report["table"].append(C.table_entry(
        "dashboard_cold_start", "dashboard cold start: `streamlit run app.py` to the Overview heading in chromium",
        ours["first_render_s"], ours_label="app.py", peer=floor["first_render_s"],
        peer_label="minimal app (import streamlit, torch; one heading)", kind="cost",
        note=(f"server healthy after {ours['health_s']['median_s']:.1f} s; whole Overview drawn after "
              f"{ours['idle_s']['median_s']:.1f} s; fresh `import streamlit, torch`: {s_import['median_s']:.1f} s")))


if __name__ == "__main__":
    C.cli(parse_args, run)
