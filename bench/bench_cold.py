"""Benchmark: cold paths — a new process loading mnist5k, and ``explrobust attack-explanation`` from cold.

    .venv/bin/python bench/bench_cold.py [--quick] [--repeats 3] [--out FILE]

Every sample is a fresh Python process (``sys.executable``, this repository first on ``PYTHONPATH``),
timed from spawn to exit:

* ``dataset_load_new_process`` — ``load_dataset("mnist5k", "test")`` in a new process with the user
  cache filled (ours: the parsed arrays come from ``$EXPLROBUST_CACHE``) against the same with an empty
  cache directory (peer: the CSV parsed again, as before the cache). The child also reports the
  time of the load call alone (imports excluded), shown in the notes; the issue's aim is ≤ 0.3 s.
* ``cli_attack_explanation_cold`` — ``python -m explrobust_core.cli attack-explanation --checkpoint
  models_zoo/mnist5k/natural.safetensors --indices 0 --out TMP`` (the IFIA defaults: top-k, 100
  steps, Kendall τ; one image; JSON, CSV and a PNG panel written), cache filled, against a floor of
  ``python -c "import torch"`` (what any torch command pays). Kind "cost": how many floors the
  command costs; the issue's aim is ≤ 4 s in all. Skipped when the shipped zoo is absent.

Sides interleaved after one warm-up each (which also fills the cache); never asserted on. The load
average at start and end is in the report: on a shared machine whole-process times swing a lot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

_LOAD = ("import time; t = time.perf_counter(); from explrobust_core.data import load_dataset; "
         "t1 = time.perf_counter(); load_dataset('mnist5k', 'test'); "
         "print(time.perf_counter() - t1)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    args = p.parse_args(argv)
    if args.clock == "cpu":
        p.error("--clock cpu times this process only, and this benchmark's work runs in other processes")
    return C.resolve_defaults(args, {"repeats": (1, 3)}, p)


def _env(cache: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(C.REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["EXPLROBUST_CACHE"] = str(cache)
    return env


def _python(args: list[str], env: dict) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=C.REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)[:80]} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def run(args: argparse.Namespace) -> dict:
    report = C.new_report("cold paths: mnist5k in a new process (cache vs parse), CLI attack-explanation from cold", {
        "quick": args.quick, "repeats": args.repeats, "warmup_runs": 1, "order": "interleaved, alternating",
        "python": sys.executable, "unit": "whole process, spawn to exit",
    })
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm_cache, empty = tmp / "cache", tmp / "empty"
        load_times: dict[str, list[float]] = {"cached": [], "parsed": []}

        def cached():
            load_times["cached"].append(float(_python(["-c", _LOAD], _env(warm_cache)).strip()))

        def parsed():
            for f in empty.glob("*"):
                f.unlink()  # an empty cache: the CSV is parsed (and cached, then removed again)
            load_times["parsed"].append(float(_python(["-c", _LOAD], _env(empty)).strip()))

        t = C.run_interleaved("dataset_load_new_process", {"cached": cached, "parsed": parsed}, args.repeats)
        s_c, s_p = t.stats("cached"), t.stats("parsed")
        timed_c, timed_p = load_times["cached"][1:], load_times["parsed"][1:]  # the warm-up's left out
        median = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
        report["rows"].append({"name": "dataset_load_new_process", "cached": s_c, "parsed": s_p,
                               "load_call_s": {"cached": timed_c, "parsed": timed_p}, **C.speedup(s_c, s_p)})
        report["table"].append(C.table_entry(
            "dataset_load_new_process", "a new process loads mnist5k (whole process: imports + load)", s_c,
            ours_label="cache filled", peer=s_p, peer_label="no cache (CSV parsed)",
            note=f"the load call alone: {median(timed_c):.2f} s cached vs {median(timed_p):.2f} s parsed "
                 f"(aim ≤ 0.3 s)"))

        checkpoint = C.REPO_ROOT / "models_zoo" / "mnist5k" / "natural.safetensors"
        if not checkpoint.exists():
            report["table"].append(C.table_entry("cli_attack_explanation_cold", "explrobust attack-explanation, "
                                                 "defaults, 1 image", None, skipped="the shipped zoo is absent"))
            return report
        out_dir = tmp / "attack"
        cli_args = ["-m", "explrobust_core.cli", "attack-explanation", "--checkpoint", str(checkpoint),
                    "--indices", "0", "--out", str(out_dir)]

        def cli():
            _python(cli_args, _env(warm_cache))

        def import_torch():
            _python(["-c", "import torch"], _env(warm_cache))

        t = C.run_interleaved("cli_attack_explanation_cold", {"cli": cli, "import_torch": import_torch},
                              args.repeats)
        s_cli, s_torch = t.stats("cli"), t.stats("import_torch")
        result = json.loads((out_dir / "ifia.json").read_text())
        report["rows"].append({"name": "cli_attack_explanation_cold", "cli": s_cli, "import_torch": s_torch,
                               "attack_seconds_inside": result.get("seconds"), **C.cost(s_cli, s_torch)})
        report["table"].append(C.table_entry(
            "cli_attack_explanation_cold", "`explrobust attack-explanation` defaults (IFIA top-k, 100 steps), "
            "1 image, new process", s_cli, ours_label="CLI", peer=s_torch, peer_label="`python -c 'import torch'`",
            kind="cost", note=f"aim ≤ 4 s in all; the attack itself: {result.get('seconds', float('nan')):.2f} s"))
    return report


if __name__ == "__main__":
    C.cli(parse_args, run)
