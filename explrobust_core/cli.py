"""The ``explrobust`` command. Sub-commands read their options from the registries' configs.

    explrobust info [--json]
    explrobust explain --checkpoint PATH --indices 0,1,2 --method NAME --out DIR [method options]

``explrobust explain --method integrated_gradients --help`` lists that method's own options,
generated from its typed config (the same config the dashboard's forms use).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel

from .registry import ConfigError, UnknownNameError


# --------------------------------------------------------------------------- config → flags


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, config: type[BaseModel], title: str) -> None:
    """One flag per config field, typed, with the field's help text and default.

    Defaults stay in the config: flags default to "not given" so only what the user typed
    overrides them, and the config validates ranges with its own messages.
    """
    group = parser.add_argument_group(title)
    for name, field in config.model_fields.items():
        ann = field.annotation
        args = typing.get_args(ann)
        help_text = f"{field.description or ''} (default: {field.default})".strip()
        kwargs: dict[str, Any] = {"dest": f"cfg__{name}", "default": argparse.SUPPRESS, "help": help_text}
        if ann is bool:
            group.add_argument(_flag(name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(ann) is typing.Literal:
            kwargs["choices"] = list(args)
            kwargs["type"] = type(args[0])
        elif ann in (int, float, str):
            kwargs["type"] = ann
        elif typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in args:
            inner = [a for a in args if a is not type(None)]
            kwargs["type"] = inner[0] if len(inner) == 1 and inner[0] in (int, float, str) else str
        else:
            kwargs["type"] = json.loads  # lists/dicts given as JSON
            kwargs["metavar"] = "JSON"
        group.add_argument(_flag(name), **kwargs)


def config_values(ns: argparse.Namespace) -> dict[str, Any]:
    return {k.removeprefix("cfg__"): v for k, v in vars(ns).items() if k.startswith("cfg__")}


# --------------------------------------------------------------------------- info


def _registries() -> dict[str, Any]:
    from .data import DATASETS
    from .explain import EXPLAINERS
    from .metrics import COMPARISONS
    from .models import ARCHITECTURES

    return {"datasets": DATASETS, "architectures": ARCHITECTURES, "explainers": EXPLAINERS, "metrics": COMPARISONS}


def info_report() -> dict[str, Any]:
    from . import __version__
    from .io import library_versions
    from .zoo import list_checkpoints, shipped_zoo_dir, user_zoo_dir

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
    for key in ("datasets", "architectures", "explainers", "metrics"):
        print(f"\n{key}:")
        for e in report[key]:
            tags = f" [{', '.join(e['tags'])}]" if e["tags"] else ""
            print(f"  {e['name']:<22}{e['summary']}{tags}")
    print("\nzoo:")
    if not report["zoo"]:
        print("  (no checkpoints yet)")
    for row in report["zoo"]:
        print(f"  {row['path']}" + (f"  ERROR: {row['error']}" if row["error"] else f"  ({row['objective']})"))
    return 0


# --------------------------------------------------------------------------- explain


def _parse_indices(text: str) -> list[int]:
    try:
        out = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"indices must be comma-separated integers, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one index")
    if len(out) > 1024:
        raise argparse.ArgumentTypeError("at most 1024 indices per call")
    return out


def _parse_target(text: str):
    if text in ("true", "predicted"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("target must be 'true', 'predicted' or a class index") from None


def cmd_explain(ns: argparse.Namespace) -> int:
    import torch

    from .data import load_dataset
    from .explain import EXPLAINERS, attribute, resolve_target
    from .figures import explanation_figure, save_figure
    from .io import atomic_write_json, library_versions
    from .metrics import attribution_to_map
    from .zoo import load_checkpoint

    started = time.perf_counter()
    model, card = load_checkpoint(ns.checkpoint, ns.device)
    device = next(model.parameters()).device
    dataset = load_dataset(card.dataset, ns.split)
    if tuple(dataset.info.input_shape) != tuple(card.input_shape):
        raise ValueError(f"checkpoint expects inputs {card.input_shape}, dataset {card.dataset} gives {dataset.info.input_shape}")
    images, labels = dataset.batch(ns.indices)
    images, labels = images.to(device), labels.to(device)
    with torch.no_grad():
        probs = torch.softmax(model(images), dim=1)
    cfg = EXPLAINERS.get(ns.method).make_config(config_values(ns))
    targets = resolve_target(model, images, ns.target, labels)
    maps = attribution_to_map(attribute(model, images, ns.method, target=targets, config=cfg), normalize=ns.normalize)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, idx in enumerate(ns.indices):
        pred = int(probs[i].argmax())
        png = out / f"{ns.split}_{idx}_{ns.method}.png"
        title = f"{card.name} · {ns.method} · #{idx} label {card.classes[int(labels[i])]} → pred {card.classes[pred]} ({float(probs[i, pred]):.2f})"
        save_figure(explanation_figure(images[i], maps[i], title), png)
        rows.append({
            "index": idx, "label": int(labels[i]), "predicted": pred, "confidence": float(probs[i, pred]),
            "target": int(targets[i]), "png": png.name,
            "map": maps[i].detach().cpu().tolist(),
        })
    result = {
        "command": "explain", "checkpoint": str(ns.checkpoint), "model": card.name, "dataset": card.dataset,
        "split": ns.split, "method": ns.method, "config": cfg.model_dump(mode="json"), "target": ns.target,
        "normalize": ns.normalize, "device": str(device), "versions": library_versions(),
        "seconds": round(time.perf_counter() - started, 3), "images": rows,
    }
    atomic_write_json(out / f"explain_{ns.method}.json", result)
    print(f"wrote {len(rows)} PNG maps and {out / f'explain_{ns.method}.json'}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="explrobust", description="Classification vs explanation robustness workbench.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="list datasets, architectures, explainers, metrics and checkpoints")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("explain", help="explanation maps for dataset images: PNGs + a JSON of the numbers")
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint with its .json card")
    p.add_argument("--indices", required=True, type=_parse_indices, help="comma-separated image indices, e.g. 0,1,2")
    p.add_argument("--method", default="gradient", help="explanation method (see `explrobust info`)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--target", type=_parse_target, default="predicted", help="true | predicted | class index")
    p.add_argument("--normalize", choices=["sum", "none"], default="sum", help="map post-processing")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    if method is not None:
        from .explain import EXPLAINERS

        add_config_arguments(p, EXPLAINERS.get(method).config, f"options of {method}")
    p.set_defaults(func=cmd_explain)
    return parser


def _method_in(argv: Sequence[str]) -> str | None:
    if not argv or argv[0] != "explain":
        return None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default="gradient")
    return pre.parse_known_args(list(argv[1:]))[0].method


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_method_in(argv))
        ns = parser.parse_args(argv)
        return ns.func(ns)
    except (UnknownNameError, ConfigError, ValueError, IndexError, FileNotFoundError) as err:
        # Every expected failure is one clear line, never a traceback.
        print(f"explrobust: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
