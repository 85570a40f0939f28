"""``explrobust zoo import``: a published robust model from a local file into the user zoo."""

from __future__ import annotations

import argparse
import shlex

COMMANDS = {"zoo": "the user zoo: import published robust models from local files"}


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def add_arguments(name: str, p: argparse.ArgumentParser, choice: str | None) -> None:
    """``zoo`` with its ``import`` sub-command."""
    from ..importers import LAYOUTS

    zoo = p.add_subparsers(dest="zoo_command", required=True)
    q = zoo.add_parser(
        "import", help="import a RobustBench / TRADES / Madry-lab / torchvision / timm checkpoint (a local file)",
        description="Reads FILE (.safetensors, or a .pt/.pth torch state dict loaded with weights_only=True: nothing "
                    "in it runs), maps its parameter names onto explrobust's architecture, checks it and stores it "
                    "as <user zoo>/DATASET/NAME.safetensors + card. Never downloads anything.")
    q.add_argument("file", help="the checkpoint file")
    q.add_argument("--layout", required=True,
                   help=f"{', '.join(x for x in LAYOUTS if x not in ('torchvision', 'timm'))}, torchvision:NAME or "
                        "timm:NAME (timm is optional)")
    q.add_argument("--arch", default=None,
                   help="wrn-28-10, wrn-34-10, wrn-34-20, wrn-70-16 (any wrn-D-K), preact-resnet18, resnet18, or "
                        "torchvision:NAME for madrylab ImageNet models (trades: default wrn-34-10)")
    q.add_argument("--dataset", required=True, help="registered dataset (cifar10, cifar100, imagefolder, …)")
    q.add_argument("--name", required=True, help="the model's name in the zoo")
    q.add_argument("--data-root", default=None, help="the dataset's root folder (image folders need it)")
    q.add_argument("--mean", type=_floats, default=None, help="per-channel mean, e.g. 0.4914,0.4822,0.4465")
    q.add_argument("--std", type=_floats, default=None, help="per-channel std")
    q.add_argument("--input-size", type=int, default=None, help="input height = width (image folders: any size)")
    q.add_argument("--notes", default="", help="free text stored in the card")
    q.add_argument("--zoo", default=None, help="user zoo directory (default: $EXPLROBUST_USER_ZOO)")
    q.add_argument("--overwrite", action="store_true", help="replace your model of the same name")
    q.set_defaults(func=cmd_zoo_import)


def cmd_zoo_import(ns: argparse.Namespace) -> int:
    from ..importers import import_file

    if ns.input_size is not None and not 1 <= ns.input_size <= 4096:
        raise ValueError(f"--input-size must be between 1 and 4096, got {ns.input_size}")
    installed = import_file(
        ns.file, layout=ns.layout, arch=ns.arch, dataset=ns.dataset, name=ns.name, mean=ns.mean, std=ns.std,
        input_size=ns.input_size, dataset_config={"root": ns.data_root} if ns.data_root else None, notes=ns.notes,
        command="explrobust " + shlex.join(getattr(ns, "argv", []) or []), overwrite=ns.overwrite, zoo_dir=ns.zoo)
    card = installed.card
    print(f"imported {card.source.arch} ({card.source.layout}) as {card.dataset}/{card.name}: {installed.path}")
    print(f"  input {tuple(card.input_shape)}, {card.num_classes} classes, normalisation: {card.source.normalization}")
    for notice in installed.notices:
        print(f"  {notice}")
    return 0
