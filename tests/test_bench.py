"""The benchmark harness: report structure, the Markdown table, one cheap real row.

Never asserts on timings: only that the numbers are there and shaped as documented.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _common as C  # noqa: E402
import run_all  # noqa: E402


def test_stats_and_ratios_have_the_documented_fields():
    s = C.stats([3.0, 1.0, 2.0, 4.0])
    assert {"median_s", "min_s", "max_s", "q1_s", "q3_s", "iqr_s", "n", "times_s"} <= set(s)
    assert s["n"] == 4 and s["times_s"] == [3.0, 1.0, 2.0, 4.0]
    assert s["min_s"] <= s["q1_s"] <= s["median_s"] <= s["q3_s"] <= s["max_s"]
    ours, peer = C.stats([1.0, 2.0]), C.stats([2.0, 6.0])
    sp = C.speedup(ours, peer)  # peer / ours: > 1 means ours is faster
    assert sp["speedup"] == pytest.approx(8.0 / 3.0) and sp["speedup_per_repeat_range"] == [2.0, 3.0]
    assert C.cost(peer, ours)["cost"] == pytest.approx(8.0 / 3.0)


def test_run_interleaved_warms_up_alternates_and_keeps_outputs():
    calls = []
    sides = {"a": lambda: calls.append("a") or "A", "b": lambda: calls.append("b") or "B"}
    t = C.run_interleaved("toy", sides, 3, warmups={"a": lambda: "wa", "b": lambda: "wb"})
    assert calls == ["a", "b", "b", "a", "a", "b"]  # warm-ups are not the sides; order alternates
    assert t.warm == {"a": "wa", "b": "wb"} and t.first == {"a": "A", "b": "B"}
    assert all(len(v) == 3 and min(v) >= 0 for v in t.times.values())
    assert t.stats("a")["n"] == 3


def test_table_entries_and_aims():
    ours, peer = C.stats([1.0, 1.0, 1.0]), C.stats([2.0, 2.5, 3.0])
    entry = C.table_entry("sep_step", "SEP step", ours, peer=peer, peer_label="override")
    assert entry["ratio"] == pytest.approx(2.5) and entry["kind"] == "speedup"
    marked = run_all.mark_aims(entry)
    assert marked["aim"].startswith("≥ 1.3") and marked["met"] is True and marked["within_noise"] is False
    floor = run_all.mark_aims(C.table_entry("attack_step_cost", "step", peer, peer=ours, kind="cost"))
    assert floor["ratio"] == pytest.approx(2.5) and floor["met"] is True
    skipped = run_all.mark_aims(C.table_entry("max_sensitivity", "MS", ours, skipped="peer not installed"))
    assert skipped["ratio"] is None and skipped["met"] is None
    absolute = C.table_entry("pca_first_view", "PCA", ours, kind="absolute")
    assert absolute["ratio"] is None and absolute["peer"] is None


def _report(table):
    header = C.header()
    return {"header": header, "config": {"quick": False, "threads": 1}, "wall_s": 120.0,
            "load_average_at_end": [1.0, 1.0, 1.0], "table": table, "benchmarks": {"x": {"error": "boom"}}}


def test_markdown_table_names_machine_versions_ratio_direction_and_aims(tmp_path):
    ours, peer = C.stats([1.0, 1.2]), C.stats([2.0, 2.4])
    table = [run_all.mark_aims(C.table_entry("ifia_topk/gradient", "IFIA", ours, peer=peer)),
             run_all.mark_aims(C.table_entry("max_sensitivity", "MS", ours, skipped="peer not installed"))]
    md = run_all.render_markdown(_report(table))
    assert "-core shared CPU machine" in md
    assert "torch" in md and "captum" in md and "streamlit" in md
    assert "peer median / our median" in md  # the ratio's direction is spelled out
    assert "**2.00× faster**" in md and "❌ not met" in md  # 2× against the ≥ 10× aim
    assert "skipped: peer not installed" in md and "failed: boom" in md


def test_run_all_quick_runs_one_cheap_benchmark(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--quick", "--only", "landscape",
                           "--out-dir", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert json.loads(proc.stdout)["table"] == report["table"]  # the JSON is printed too
    header = report["header"]
    assert header["machine"]["cpu_count"] >= 1 and header["date"]
    assert {"torch", "captum", "streamlit"} <= set(header["versions"])
    assert report["failed"] == [] and list(report["benchmarks"]) == ["landscape"]
    (entry,) = report["table"]
    assert entry["key"] == "landscape_grid" and entry["kind"] == "speedup" and entry["ratio"] > 0
    assert entry["ours"]["n"] >= 1 and entry["peer"]["label"] == "per-point loop"
    assert "landscape" in (out / "report.md").read_text()
    assert (out / "landscape.json").exists()


def test_max_sensitivity_row_says_when_quantus_is_missing(monkeypatch):
    import bench_metrics

    monkeypatch.setitem(sys.modules, "quantus", None)  # `import quantus` now raises ImportError
    args = bench_metrics.parse_args(["--quick", "--n-images", "2", "--samples", "1", "--repeats", "1"])
    report = bench_metrics.run(args)
    entry, own = report["table"]  # our explainer on both sides; each library's own explainer
    assert own["key"] == "max_sensitivity/own_explainers" and own["skipped"] == bench_metrics.NOT_INSTALLED
    assert entry["skipped"] == bench_metrics.NOT_INSTALLED and "not installed" in entry["skipped"]
    assert entry["ratio"] is None and entry["peer"] is None and entry["ours"]["n"] == 1
    assert report["rows"][0]["quantus"] is None
    # the floor beside it: the explanations alone, which ours cannot beat (ours / floor is reported)
    assert report["rows"][0]["explanations_only"]["n"] == 1 and report["rows"][0]["ours_vs_explanations_only"] > 0
    assert "the explanations alone" in entry["note"]


def test_dashboard_page_rows_are_marked_against_their_time_aims():
    import bench_dashboard

    assert set(run_all.TIME_AIMS) == {f"dashboard_page/{name}" for name in bench_dashboard.PAGES}
    fast = run_all.mark_aims(C.table_entry("dashboard_page/attack_lab", "Attack lab", C.stats([2.0, 2.5, 2.8]),
                                           kind="absolute"))
    assert fast["aim"] == "≤ 3 s" and fast["met"] is True and fast["within_noise"] is False
    split = run_all.mark_aims(C.table_entry("dashboard_page/clusters", "Clusters", C.stats([2.0, 3.5, 4.0]),
                                            kind="absolute"))
    assert split["met"] is False and split["within_noise"] is True  # median 3.5 s > 3 s; the fastest run was under
    md = run_all.render_markdown(_report([fast, split]))
    assert "≤ 3 s" in md and "✅ met" in md and "❌ not met (within noise)" in md
    args = bench_dashboard.parse_args(["--part", "pages", "--pages", "clusters,landscape"])
    assert args.parts == ["pages"] and args.page_names == ["clusters", "landscape"] and args.repeats == 3
    with pytest.raises(SystemExit):
        bench_dashboard.parse_args(["--pages", "nope"])
