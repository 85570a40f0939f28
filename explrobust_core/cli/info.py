"""`explrobust info` and `explrobust zoo-table`: what is registered and what the zoo holds."""

from __future__ import annotations

import argparse
import json
from typing import Any

COMMANDS = {
    "info": "list datasets, architectures, explainers, metrics, attacks, training objectives and checkpoints",
    "zoo-table": "a Markdown table of the checkpoints' cards and measured metrics",
}

def add_arguments(name: str, p: argparse.ArgumentParser, choice: str | None) -> None:
    if name == "info":
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=cmd_info)
    else:
        p.add_argument("directory", nargs="?", default=None, help="default: the shipped zoo")
        p.set_defaults(func=cmd_zoo_table)

def _registries() -> dict[str, Any]:
    from ..attacks.classification import CLASSIFICATION_ATTACKS
    from ..attacks.explanation import EXPLANATION_ATTACKS
    from ..data import DATASETS
    from ..explain import EXPLAINERS
    from ..metrics import COMPARISONS
    from ..models import ARCHITECTURES
    from ..training.objectives import OBJECTIVES

    return {"datasets": DATASETS, "architectures": ARCHITECTURES, "explainers": EXPLAINERS, "metrics": COMPARISONS,
            "classification_attacks": CLASSIFICATION_ATTACKS, "explanation_attacks": EXPLANATION_ATTACKS,
            "training_objectives": OBJECTIVES}

def info_report() -> dict[str, Any]:
    from .. import __version__
    from ..io import library_versions
    from ..zoo import list_checkpoints, shipped_zoo_dir, user_zoo_dir

    report: dict[str, Any] = {"explrobust": __version__, "versions": library_versions()}
    for key, registry in _registries().items():
        report[key] = registry.describe()
    zoo = []
    for entry in list_checkpoints(shipped_zoo_dir(), user_zoo_dir()):
        row = {"path": str(entry.path), "error": entry.error}
        if entry.card is not None:
            row.update(name=entry.card.name, dataset=entry.card.dataset, architecture=entry.card.architecture,
                       objective=entry.card.objective, metrics=entry.card.metrics)
        zoo.append(row)
    report["zoo"] = zoo
    return report

def cmd_info(ns: argparse.Namespace) -> int:
    report = info_report()
    if ns.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"explrobust {report['explrobust']}  ({', '.join(f'{k} {v}' for k, v in report['versions'].items())})")
    for key in _registries():
        print(f"\n{key.replace('_', ' ')}:")
        for e in report[key]:
            tags = f" [{', '.join(e['tags'])}]" if e["tags"] else ""
            print(f"  {e['name']:<22}{e['summary']}{tags}")
    print("\nzoo:")
    if not report["zoo"]:
        print("  (no checkpoints yet)")
    for row in report["zoo"]:
        print(f"  {row['path']}" + (f"  ERROR: {row['error']}" if row["error"] else f"  ({row['objective']})"))
    return 0

def cmd_zoo_table(ns: argparse.Namespace) -> int:
    from ..zoo import list_checkpoints, shipped_zoo_dir, zoo_table_markdown

    print(zoo_table_markdown(list_checkpoints(ns.directory or shipped_zoo_dir())), end="")
    return 0

