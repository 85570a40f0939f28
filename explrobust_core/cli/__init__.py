"""The ``explrobust`` command. Sub-commands read their options from the registries' configs.

    explrobust info [--json]
    explrobust explain --checkpoint PATH --indices 0,1,2 --method NAME --out DIR [method options]
    explrobust attack-classifier --checkpoint PATH --n-images 500 --attack pgd --eps 0.3 --json OUT
    explrobust attack-explanation --checkpoint PATH --indices 0,1 [--target-indices 5,6] --out DIR
    explrobust evaluate --checkpoint PATH [--preset rar_mnist] --json OUT

``explrobust explain --method integrated_gradients --help`` (likewise ``--attack``) lists that
method's own options, generated from its typed config — the same config the dashboard's forms use.

One module per command group (``info``, ``measure``, ``study``, ``train``, ``jobs``, ``ray_local``, ``replicate``, ``zoo``); each has ``COMMANDS``
(name → help) and ``add_arguments(name, parser, choice)``. Only the command being run gets its arguments (and
imports what they need), so ``explrobust jobs list`` never imports the attacks.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Sequence

from pydantic import ValidationError

from ..cpu_memory import reuse_freed_memory
from ..errors import ExplrobustError
from ..registry import format_validation_error
from . import info, jobs, measure, ray_local, replicate, study, train, zoo
from ._args import OneLineParser
from .info import info_report

__all__ = ["build_parser", "choice_in", "info_report", "main"]

GROUPS = (info, measure, study, train, jobs, ray_local, replicate, zoo)

def build_parser(command: str | None = None, choice: str | None = None) -> argparse.ArgumentParser:
    """The parser. With ``command`` only that sub-command gets its arguments (the others are listed with their
    help); ``choice`` is its --method/--attack/--objective already on the command line, whose own options are
    then added too (so ``--help`` lists them). Without ``command`` every sub-command is complete."""
    parser = OneLineParser(prog="explrobust", description="Classification vs explanation robustness workbench.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        for name, help_text in group.COMMANDS.items():
            p = sub.add_parser(name, help=help_text)
            if command is None or command == name:
                group.add_arguments(name, p, choice if command == name else None)
    return parser

def choice_in(argv: Sequence[str]) -> str | None:
    """The --method (explain), --attack (attack commands) or --objective (train) given, to add its options' flags."""
    flag = {"explain": "--method", "attack-classifier": "--attack", "attack-explanation": "--attack",
            "train": "--objective"}.get(argv[0] if argv else "")
    if flag is None:
        return None
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument(flag, dest="choice", default=None)
    pre.add_argument("--target-indices", "--target-index", dest="targets", default=None)
    pre.add_argument("--reg_weight", default=None)
    known = pre.parse_known_args(list(argv[1:]))[0]
    if known.choice or argv[0] != "attack-explanation":
        return known.choice or {"explain": "gradient", "attack-classifier": "pgd",
                                "train": "sep" if known.reg_weight is not None else "natural"}[argv[0]]
    from ..attacks.explanation import default_attack  # the registry's first attack of the kind asked for

    return default_attack(targeted=bool(known.targets))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    reuse_freed_memory()
    try:
        parser = build_parser(argv[0] if argv else None, choice_in(argv))
        if (argv[:1] == ["jobs"] and "submit" in argv) or (argv[:1] == ["sweep"] and "run" in argv):  # `train` flags
            ns, extra = parser.parse_known_args(argv)
            ns.extra = extra
        else:
            ns = parser.parse_args(argv)
        ns.argv = argv
        return ns.func(ns)
    except ValidationError as err:  # a typed config built directly: one line naming the fields, not pydantic's block
        print(f"explrobust: error: {format_validation_error(err, err.title)}", file=sys.stderr)
        return 2
    except (ExplrobustError, ValueError, IndexError, OSError, FloatingPointError) as err:
        # An expected failure is one clear line, never a traceback: the project's own errors (a bad config, an
        # unknown name, a refused checkpoint, a missing extra, …), a bad value from the standard library, or an
        # OSError (a path the file system refuses: permissions, a full disk, a name too long).
        print(f"explrobust: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except Exception as err:  # anything else is a bug in explrobust: the whole traceback, to report it
        if type(err).__name__ == "OutOfMemoryError":  # torch's (a RuntimeError): the machine's limit, not a bug
            print("explrobust: error: the accelerator ran out of memory even at one image per batch; use fewer or "
                  "smaller images, or --device cpu", file=sys.stderr)
            return 2
        traceback.print_exc()
        print("explrobust: internal error (a bug): please report it with the traceback above", file=sys.stderr)
        return 1
