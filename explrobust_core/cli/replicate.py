"""`explrobust replicate sep`: the SEP paper's claims next to our numbers, from stored evaluations."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._args import check_output, check_outputs

COMMANDS = {"replicate": "the SEP paper's claims, each next to our number, its interval and a verdict"}


def add_arguments(name: str, p: argparse.ArgumentParser, choice: str | None) -> None:
    p.add_argument("paper", choices=["sep"], help="the paper whose claims to check")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--runs", default=None, help="runs directory (default: $EXPLROBUST_RUNS or ~/.explrobust/runs)")
    p.add_argument("--json", default=None, help="write the report as JSON")
    p.add_argument("--markdown", default=None, help="write the claim table as Markdown")
    p.add_argument("--compute-missing", action="store_true",
                   help="measure the landscape curvature first if it is not stored (a few minutes on a CPU)")
    p.add_argument("--store-dir", default=None,
                   help="where --compute-missing writes (default: RUNS/replicate/<dataset>)")
    p.add_argument("--update-readme", default=None, metavar="README.md",
                   help="also put the claim table between the <!-- claims:start/end --> markers of this file")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_replicate)


def cmd_replicate(ns: argparse.Namespace) -> int:
    from .. import replicate
    from ..io import atomic_write_json, atomic_write_text, replace_between_markers, runs_dir
    from ..zoo import list_checkpoints, shipped_zoo_dir, user_zoo_dir

    check_outputs(ns, files=("json", "markdown"))
    check_output(ns.store_dir, "--store-dir", "directory")
    if ns.compute_missing:
        report = replicate.replicate_sep(ns.dataset, runs=ns.runs)
        if next(c for c in report["claims"] if c["key"] == "f")["verdict"] == "not measured":
            entries = [e for e in list_checkpoints(shipped_zoo_dir(), user_zoo_dir())
                       if e.card is not None and e.card.dataset == ns.dataset]
            pairs = shipped_zoo_dir() / ns.dataset / "pairs_way3.json"
            if not pairs.is_file():
                raise ValueError(f"no shipped pair file {pairs}: the curvature is measured on its victims")
            data = replicate.compute_curvature(entries, ns.dataset, pairs, device=ns.device,
                                               progress=lambda s, f: print(f"  {s}: {f:.0%}", file=sys.stderr))
            folder = Path(ns.store_dir) if ns.store_dir else Path(ns.runs or runs_dir()) / "replicate" / ns.dataset
            atomic_write_json(folder / replicate.CURVATURE_FILE, data)
            print(f"wrote {folder / replicate.CURVATURE_FILE}", file=sys.stderr)
    report = replicate.replicate_sep(ns.dataset, runs=ns.runs)
    text = replicate.claims_markdown(report)
    print(text, end="")
    if ns.json:
        atomic_write_json(ns.json, report)
    if ns.markdown:
        atomic_write_text(ns.markdown, text)
    if ns.update_readme:
        replace_between_markers(ns.update_readme, "<!-- claims:start -->", "<!-- claims:end -->", text)
    return 0
