"""`explrobust train`: any registered objective, with our flags or the SEP paper's reference-code flags."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..registry import ConfigError
from ._args import add_config_arguments, check_output, config_values

COMMANDS = {"train": "train a model with any objective; writes a checkpoint + model card"}

def add_arguments(name: str, p: argparse.ArgumentParser, choice: str | None) -> None:
    """``choice``: the --objective already on the command line, whose own options are added too."""
    from ..training.objectives import OBJECTIVES
    from ..training.trainer import TrainConfig

    p.add_argument("--out", default=None, help="output directory (default: the user zoo / <dataset>)")
    p.add_argument("--quiet", action="store_true", help="no per-batch progress bar")
    script = p.add_argument_group("the SEP paper's SEP_train.py flags (aliases)")
    script.add_argument("--epoch", dest="cfg__epochs", type=int, default=argparse.SUPPRESS, help="= --epochs")
    script.add_argument("--batch", dest="cfg__batch_size", type=int, default=argparse.SUPPRESS, help="= --batch-size")
    script.add_argument("--model", dest="script_model", default=None, help="ConvNet | ResNet18 | … (= --architecture)")
    script.add_argument("--reg_weight", type=float, default=None, help="SEP λ (implies --objective sep)")
    script.add_argument("--method", dest="script_method", default=None,
                        help="explanation method of SEP: grad_times_input | grad | ig | smoothgrad")
    p.set_defaults(script_dataset=None)
    add_config_arguments(p, TrainConfig, "training", skip=("objective_config", "dataset"))
    p.add_argument("--dataset", dest="script_dataset", default=None, help="registered dataset (CIFAR10 → cifar10)")
    if choice:
        add_config_arguments(p, OBJECTIVES.get(choice).config, f"options of {choice}", prefix=("objective_options",),
                             flag_prefix=())
    p.set_defaults(func=cmd_train)

# the SEP paper's SEP_train.py flags → ours
_SCRIPT_MODELS = {"convnet": "convnet", "resnet18": "resnet18", "resnet": "resnet18", "wideresnet": "wideresnet",
                "wrn": "wideresnet", "mobilenetv2": "mobilenetv2", "mobilenet": "mobilenetv2", "rar_cnn": "rar_cnn"}
_SCRIPT_METHODS = {"grad_times_input": "gradient_x_input", "grad": "gradient", "gradient": "gradient",
                 "saliency": "gradient", "ig": "integrated_gradients", "integrated_gradients": "integrated_gradients",
                 "smoothgrad": "smoothgrad", "gradient_x_input": "gradient_x_input", "gradient_shap": "gradient_shap"}

def train_config(ns: argparse.Namespace):
    from ..training.trainer import TrainConfig

    values = config_values(ns)
    objective_values = values.pop("objective_options", {})
    if ns.script_model:
        values["architecture"] = _SCRIPT_MODELS.get(ns.script_model.lower(), ns.script_model.lower())
    if ns.script_dataset:
        values["dataset"] = ns.script_dataset.lower()
    if ns.reg_weight is not None:
        values.setdefault("objective", "sep")
        objective_values["lam"] = ns.reg_weight
    if ns.script_method:
        objective_values["explainer"] = _SCRIPT_METHODS.get(ns.script_method.lower(), ns.script_method)
    values["objective_config"] = {**values.get("objective_config", {}), **objective_values}
    values.setdefault("name", f"{values.get('objective', 'natural')}_{values.get('architecture', 'convnet')}")
    return TrainConfig(**values)

def cmd_train(ns: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ..registry import format_validation_error
    from ..training.trainer import StopFlag, train
    from ..zoo import add_to_user_zoo, is_inside_user_zoo, user_zoo_folder

    try:
        cfg = train_config(ns)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "training config")) from None
    # without --out the model joins the user zoo the one way every model does (add_to_user_zoo); a name it would
    # refuse is refused before any training
    if ns.out and is_inside_user_zoo(ns.out):  # --out would skip the user zoo's lock and name checks
        raise ConfigError(f"--out {ns.out} lies in the user zoo; leave --out away to add the model there "
                          "(its name checked first), or write it elsewhere")
    out = Path(ns.out) if ns.out else user_zoo_folder(cfg.dataset, cfg.name)
    check_output(str(out), "--out", "directory")
    command = "explrobust " + " ".join(ns.argv)
    started = time.perf_counter()

    def progress(event: dict[str, Any]) -> None:
        if "metrics" in event:
            m = event["metrics"]
            shown = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if isinstance(v, float) and k != "lr")
            print(f"\repoch {event['epoch']}/{event['epochs']}: {shown}", file=sys.stderr, flush=True)
        elif not ns.quiet:
            done = (event["epoch"] - 1) * event["batches"] + event["batch"]
            total = event["epochs"] * event["batches"]
            bar = "#" * int(30 * done / total)
            print(f"\r[{bar:<30}] epoch {event['epoch']}/{event['epochs']} batch {event['batch']}/{event['batches']} "
                  f"loss {event['loss']:.4f} {time.perf_counter() - started:.0f}s", end="", file=sys.stderr, flush=True)

    outcome = train(cfg, out, progress=progress, should_stop=StopFlag().install(), command=command,
                    save=None if ns.out else add_to_user_zoo)
    if not outcome.finished:
        print(f"\nstopped; the run resumes from {outcome.run_dir} with the same command", file=sys.stderr)
        return 3
    print(f"wrote {outcome.checkpoint} and its card")
    return 0

