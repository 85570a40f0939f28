"""Benchmark: dashboard cold start — a fresh ``streamlit run app.py`` to its first rendered page.

    .venv/bin/python bench/bench_dashboard.py [--quick] [--repeats 3] [--threads 1] [--out FILE]

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
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for one cold start (default 180)")
    args = p.parse_args(argv)
    if args.clock == "cpu":
        p.error("--clock cpu times this process only, and this benchmark's work runs in other processes")
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
    context = None
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
        health = time.perf_counter() - started
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        remaining_ms = max(1000.0, (deadline - time.perf_counter()) * 1000)
        page.goto(url, timeout=remaining_ms)
        expect(page.get_by_role("heading", name=HEADING).first).to_be_visible(timeout=remaining_ms)
        rendered = time.perf_counter() - started
        expect(page.get_by_role("heading", name=last_heading).first).to_be_visible(timeout=remaining_ms)
        page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=remaining_ms)
        idle = time.perf_counter() - started
        errors = page.locator("[data-testid='stException']").count()
        return {"health_s": health, "first_render_s": rendered, "idle_s": idle, "exceptions_shown": errors}
    finally:
        if context is not None:
            context.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def import_floor() -> float:
    """Seconds for a fresh ``python -c "import streamlit, torch"``."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import streamlit, torch"], check=True, cwd=C.REPO_ROOT)
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> dict:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium (the benchmark never downloads a browser)")
    with tempfile.TemporaryDirectory(prefix="bench_dashboard_") as tmp, sync_playwright() as p:
        minimal = Path(tmp) / "minimal_app.py"
        minimal.write_text(MINIMAL_APP)
        apps = {"ours": C.REPO_ROOT / "app.py", "minimal": minimal}
        last = {"ours": "Model zoo", "minimal": HEADING}  # Overview's last heading
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            results: dict[str, list[dict]] = {label: [] for label in apps}

            def start(label: str) -> dict:
                return cold_start(browser, apps[label], Path(tmp) / f"runs_{label}", args.timeout, last[label])

            sides = {label: (lambda label=label: results[label].append(start(label))) for label in apps}
            warm = {label: (lambda label=label: start(label)) for label in apps}
            t = C.run_interleaved("dashboard_cold_start", sides, args.repeats, warmups=warm, keep_first=False)
            imports = [import_floor() for _ in range(args.repeats)]
        finally:
            browser.close()

    def stat(label, key):
        return C.stats([r[key] for r in results[label]])

    s = {label: {key: stat(label, key) for key in ("health_s", "first_render_s", "idle_s")} for label in apps}
    s_import = C.stats(imports)
    report = C.new_report("dashboard: cold start of `streamlit run app.py` to the first rendered page in chromium", {
        "quick": args.quick, "repeats": args.repeats, "warmup_runs": 1, "order": "interleaved, alternating",
        "browser": {"executable": CHROMIUM, "args": CHROMIUM_FLAGS, "headless": True, "launched": "once, untimed"},
        "server": "python -m streamlit run APP --server.headless true --server.address 127.0.0.1 --server.port FREE",
        "first_render": f"Playwright: heading {HEADING!r} visible (no fixed sleeps)",
        "minimal_app": MINIMAL_APP,
        "cost": "ours_median / minimal_median for first_render_s (how many floors our cold start costs)",
    })
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
    return report


if __name__ == "__main__":
    C.cli(parse_args, run)
