"""What every sub-command shares: typed-config flags, argument types, the one-line parser, loading a checkpoint
with its dataset, and output checks."""

from __future__ import annotations

import argparse
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import BaseModel

from ..registry import config_defaults

def _flag(path: Sequence[str]) -> str:
    return "--" + "-".join(p.replace("_", "-") for p in path)

def add_config_arguments(parser: argparse.ArgumentParser, config: type[BaseModel], title: str,
                         prefix: tuple[str, ...] = (), skip: Sequence[str] = (),
                         flag_prefix: tuple[str, ...] | None = None) -> None:
    """One flag per config field, typed, with the field's help text and default.

    Nested configs get prefixed flags (``pgd.steps`` → ``--pgd-steps``). Defaults stay in the
    config: flags default to "not given", so only what the user typed overrides them, and the
    config validates ranges with its own messages.
    """
    group = parser.add_argument_group(title)
    defaults = config_defaults(config)
    for name, field in config.model_fields.items():
        if name in skip:
            continue
        ann = field.annotation
        path = prefix + (name,)
        flag = _flag((prefix if flag_prefix is None else flag_prefix) + (name,))
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            add_config_arguments(parser, ann, f"{title}: {name}", path)
            continue
        args = typing.get_args(ann)
        shown = defaults.get(name, "required")
        help_text = f"{field.description or ''} (default: {shown})".strip()
        kwargs: dict[str, Any] = {"dest": "cfg__" + "__".join(path), "default": argparse.SUPPRESS, "help": help_text}
        if ann is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kwargs["metavar"] = name.upper()
        if typing.get_origin(ann) is typing.Literal:
            kwargs["choices"] = list(args)
            kwargs["type"] = type(args[0])
            del kwargs["metavar"]  # argparse shows the choices instead
        elif ann in (int, float, str):
            kwargs["type"] = ann
        elif typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in args:
            inner = [a for a in args if a is not type(None)]
            kwargs["type"] = inner[0] if len(inner) == 1 and inner[0] in (int, float, str) else str
        else:
            kwargs["type"] = json.loads  # lists and dicts are given as JSON
            kwargs["metavar"] = "JSON"
        group.add_argument(flag, **kwargs)

def config_values(ns: argparse.Namespace) -> dict[str, Any]:
    """The flags the user gave, as a (nested) dict for the config to validate."""
    out: dict[str, Any] = {}
    for key, value in vars(ns).items():
        if not key.startswith("cfg__"):
            continue
        *parents, leaf = key.removeprefix("cfg__").split("__")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out

def number_list(text: str, parse: Callable[[str], int | float], what: str, most: int) -> list:
    """Comma-separated numbers read by ``parse`` (``int``, ``float``): 1 to ``most`` of them, all finite."""
    try:
        out = [parse(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    if not 1 <= len(out) <= most or not all(math.isfinite(v) for v in out):
        raise argparse.ArgumentTypeError(f"give 1 to {most} finite {what}")
    return out

def int_list(text: str) -> list[int]:
    return number_list(text, int, "integers", 4096)

def index_list(text: str) -> list[int]:
    """Image indices: each once (a repeated image would be computed again and overwrite its own output)."""
    out = int_list(text)
    repeated = sorted({i for i in out if out.count(i) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"indices repeat ({', '.join(map(str, repeated[:5]))}); give each index once")
    return out

def bounded_int(low: int, high: int):
    """An argparse type: an integer in [low, high] (counts outside the typed configs are capped too)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer between {low} and {high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value
    return parse

def float_list(text: str) -> list[float]:
    return number_list(text, float, "numbers", 256)

def positive_eps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= 100):  # PGD's own ε range; NaN fails every comparison
        raise argparse.ArgumentTypeError(f"must be a finite number in (0, 100], got {text}")
    return value

def parse_target(text: str):
    if text in ("true", "predicted"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("target must be 'true', 'predicted' or a class index") from None

class OneLineParser(argparse.ArgumentParser):
    """argparse with its refusals on one line (argparse prints the whole usage block first, which buries
    the one line that says what is wrong); ``--help`` still shows the usage."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

# --------------------------------------------------------------------------- shared loading

def load_checkpoint_and_data(ns: argparse.Namespace):
    """Checkpoint, card, the split of its dataset, and the model's device."""
    from ..models import device_of
    from ..zoo import dataset_for_card, load_checkpoint

    model, card = load_checkpoint(ns.checkpoint, ns.device)
    dataset = dataset_for_card(card, ns.split)  # with the card's dataset options (an image folder's root, size)
    return model, card, dataset, device_of(model)

def pick_images(ns: argparse.Namespace, dataset, device):
    from ..data import spread_indices

    # --n-images spread evenly over the split: the embedded splits are sorted by class
    indices = ns.indices if ns.indices is not None else spread_indices(len(dataset), ns.n_images)
    x, y = dataset.batch(indices)
    return indices, x.to(device), y.to(device)

def check_output(path: str | None, flag: str, kind: str) -> None:
    """Refuse an output path that cannot take a ``kind`` ("file" or "directory") before any work is done,
    so a wrong path costs no computation and leaves nothing half-written."""
    if not path:
        return
    p = Path(path)
    if p.exists():
        if kind == "directory" and not p.is_dir():
            raise ValueError(f"{flag} {p} is a file; give a directory (it is created if missing)")
        if kind == "file" and (p.is_dir() or not p.is_file()):
            raise ValueError(f"{flag} {p} is a directory or a special file; give a file path")
    parent = p if kind == "directory" else p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {p}: {parent} is a file, so nothing can be created below it")

def check_outputs(ns: argparse.Namespace, directories: Sequence[str] = (), files: Sequence[str] = ()) -> None:
    for name in directories:
        check_output(getattr(ns, name, None), "--" + name.replace("_", "-"), "directory")
    for name in files:
        check_output(getattr(ns, name, None), "--" + name.replace("_", "-"), "file")

def write_result(result, ns: argparse.Namespace) -> None:
    if ns.json:
        result.save(ns.json, getattr(ns, "csv", None))
        print(f"wrote {ns.json}" + (f" and {ns.csv}" if getattr(ns, "csv", None) else ""))

def fmt_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=str)

def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint with its .json card")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")

