"""The ``explrobust`` command. Sub-commands read their options from the registries' configs.

    explrobust info [--json]
    explrobust explain --checkpoint PATH --indices 0,1,2 --method NAME --out DIR [method options]
    explrobust attack-classifier --checkpoint PATH --n-images 500 --attack pgd --eps 0.3 --json OUT
    explrobust attack-explanation --checkpoint PATH --indices 0,1 [--target-indices 5,6] --out DIR
    explrobust evaluate --checkpoint PATH [--preset rar_mnist] --json OUT

``explrobust explain --method integrated_gradients --help`` (likewise ``--attack``) lists that
method's own options, generated from its typed config — the same config the dashboard's forms use.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ValidationError

from .registry import ConfigError, MissingExtraError, config_defaults, format_validation_error

# --------------------------------------------------------------------------- config → flags


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


def _int_list(text: str) -> list[int]:
    try:
        out = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one index")
    if len(out) > 4096:
        raise argparse.ArgumentTypeError("at most 4096 indices per call")
    return out


def _index_list(text: str) -> list[int]:
    """Image indices: each once (a repeated image would be computed again and overwrite its own output)."""
    out = _int_list(text)
    repeated = sorted({i for i in out if out.count(i) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"indices repeat ({', '.join(map(str, repeated[:5]))}); give each index once")
    return out


def _bounded_int(low: int, high: int):
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


def _float_list(text: str) -> list[float]:
    try:
        out = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not out or len(out) > 256 or not all(math.isfinite(v) for v in out):
        raise argparse.ArgumentTypeError("give 1 to 256 finite numbers")
    return out


def _eps_max(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= 100):  # PGD's own ε range; NaN fails every comparison
        raise argparse.ArgumentTypeError(f"must be a finite number in (0, 100], got {text}")
    return value


def _parse_target(text: str):
    if text in ("true", "predicted"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("target must be 'true', 'predicted' or a class index") from None


class _Parser(argparse.ArgumentParser):
    """argparse with its refusals on one line (argparse prints the whole usage block first, which buries
    the one line that says what is wrong); ``--help`` still shows the usage."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- shared loading


def _load(ns: argparse.Namespace):
    """Checkpoint, card, the split of its dataset, and the model's device."""
    from .data import load_dataset
    from .zoo import load_checkpoint

    model, card = load_checkpoint(ns.checkpoint, ns.device)
    dataset = load_dataset(card.dataset, ns.split)
    if tuple(dataset.info.input_shape) != tuple(card.input_shape):
        raise ValueError(f"checkpoint expects inputs {card.input_shape}, dataset {card.dataset} gives "
                         f"{dataset.info.input_shape}")
    return model, card, dataset, next(model.parameters()).device


def _images(ns: argparse.Namespace, dataset, device):
    from .data import spread_indices

    # --n-images spread evenly over the split: the embedded splits are sorted by class
    indices = ns.indices if ns.indices is not None else spread_indices(len(dataset), ns.n_images)
    x, y = dataset.batch(indices)
    return indices, x.to(device), y.to(device)


def _check_output(path: str | None, flag: str, kind: str) -> None:
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


def _check_outputs(ns: argparse.Namespace, directories: Sequence[str] = (), files: Sequence[str] = ()) -> None:
    for name in directories:
        _check_output(getattr(ns, name, None), "--" + name.replace("_", "-"), "directory")
    for name in files:
        _check_output(getattr(ns, name, None), "--" + name.replace("_", "-"), "file")


def _write_result(result, ns: argparse.Namespace) -> None:
    if ns.json:
        result.save(ns.json, getattr(ns, "csv", None))
        print(f"wrote {ns.json}" + (f" and {ns.csv}" if getattr(ns, "csv", None) else ""))


def _fmt(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=str)


# --------------------------------------------------------------------------- info


def _registries() -> dict[str, Any]:
    from .attacks.classification import CLASSIFICATION_ATTACKS
    from .attacks.explanation import EXPLANATION_ATTACKS
    from .data import DATASETS
    from .explain import EXPLAINERS
    from .metrics import COMPARISONS
    from .models import ARCHITECTURES

    return {"datasets": DATASETS, "architectures": ARCHITECTURES, "explainers": EXPLAINERS, "metrics": COMPARISONS,
            "classification_attacks": CLASSIFICATION_ATTACKS, "explanation_attacks": EXPLANATION_ATTACKS}


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
    from .zoo import list_checkpoints, shipped_zoo_dir, zoo_table_markdown

    print(zoo_table_markdown(list_checkpoints(ns.directory or shipped_zoo_dir())), end="")
    return 0


# --------------------------------------------------------------------------- explain


def cmd_explain(ns: argparse.Namespace) -> int:
    import torch

    from .explain import EXPLAINERS, attribute, resolve_target
    from .figures import explanation_figure, save_figure
    from .io import atomic_write_json, library_versions
    from .metrics import attribution_to_map

    started = time.perf_counter()
    _check_outputs(ns, directories=("out",))
    model, card, dataset, device = _load(ns)
    images, labels = (t.to(device) for t in dataset.batch(ns.indices))
    with torch.no_grad():
        probs = torch.softmax(model(images), dim=1)
    cfg = EXPLAINERS.get(ns.method).make_config(config_values(ns))
    targets = resolve_target(model, images, ns.target, labels)
    maps = attribution_to_map(attribute(model, images, ns.method, target=targets, config=cfg), normalize=ns.normalize)
    out = Path(ns.out)
    rows = []
    for i, idx in enumerate(ns.indices):
        pred = int(probs[i].argmax())
        png = out / f"{ns.split}_{idx}_{ns.method}.png"
        title = (f"{card.name} · {ns.method} · #{idx} label {card.classes[int(labels[i])]} → pred "
                 f"{card.classes[pred]} ({float(probs[i, pred]):.2f})")
        save_figure(explanation_figure(images[i], maps[i], title), png)
        rows.append({"index": idx, "label": int(labels[i]), "predicted": pred, "confidence": float(probs[i, pred]),
                     "target": int(targets[i]), "png": png.name, "map": maps[i].detach().cpu().tolist()})
    result = {
        "command": "explain", "checkpoint": str(ns.checkpoint), "model": card.name, "dataset": card.dataset,
        "split": ns.split, "method": ns.method, "config": cfg.model_dump(mode="json"), "target": ns.target,
        "normalize": ns.normalize, "device": str(device), "versions": library_versions(),
        "seconds": round(time.perf_counter() - started, 3), "images": rows,
    }
    atomic_write_json(out / f"explain_{ns.method}.json", result)
    print(f"wrote {len(rows)} PNG maps and {out / f'explain_{ns.method}.json'}")
    return 0


# --------------------------------------------------------------------------- attacks


def cmd_attack_classifier(ns: argparse.Namespace) -> int:
    from .attacks.classification import CLASSIFICATION_ATTACKS, minimal_flip_eps, run_classification_attack

    _check_outputs(ns, files=("json", "csv"))
    model, card, dataset, device = _load(ns)
    indices, x, y = _images(ns, dataset, device)
    entry = CLASSIFICATION_ATTACKS.get(ns.attack)
    cfg = entry.make_config(config_values(ns))
    for eps in ns.eps_list or ():  # every ε of the curve is validated before anything runs
        entry.make_config({**cfg.model_dump(), "eps": eps})
    result = run_classification_attack(model, x, y, ns.attack, cfg)
    result.config.update(checkpoint=str(ns.checkpoint), model=card.name, dataset=card.dataset, split=ns.split)
    result.per_image = {"index": indices, **result.per_image}
    if ns.eps_list:
        curve = [{"eps": eps, **run_classification_attack(model, x, y, ns.attack, cfg, eps=eps).summary}
                 for eps in ns.eps_list]
        result.extra["accuracy_vs_eps"] = curve
    if ns.minimal_eps is not None:
        pgd_cfg = cfg.model_dump() if ns.attack == "pgd" else {}
        result.per_image["minimal_flip_eps"] = minimal_flip_eps(model, x, y, eps_max=ns.minimal_eps, config=pgd_cfg)
    print(f"{card.name}: {ns.attack} on {len(indices)} {ns.split} images")
    print(_fmt(result.summary))
    for row in result.extra.get("accuracy_vs_eps", []):
        print(f"  ε={row['eps']:<8g} adversarial accuracy {row.get('adversarial_accuracy')}")
    _write_result(result, ns)
    return 0


def cmd_attack_explanation(ns: argparse.Namespace) -> int:
    from .attacks.explanation import EXPLANATION_ATTACKS, run_explanation_attack
    from .figures import attack_panels_figure, save_figure

    _check_outputs(ns, directories=("out",))
    model, card, dataset, device = _load(ns)
    indices = ns.indices
    x, y = (t.to(device) for t in dataset.batch(indices))
    attack = ns.attack or ("targeted" if ns.target_indices else "ifia")
    targets = None
    if ns.target_indices:
        if attack != "targeted":
            raise ValueError(f"--target-indices goes with the targeted attack, not {attack!r}")
        tidx = ns.target_indices * len(indices) if len(ns.target_indices) == 1 else ns.target_indices
        if len(tidx) != len(indices):
            raise ValueError(f"give one target index, or one per victim ({len(indices)}), got {len(tidx)}")
        targets = dataset.batch(tidx)[0].to(device)
    elif attack == "targeted":
        raise ValueError("the targeted attack needs --target-indices (the images whose maps to imitate)")
    cfg = EXPLANATION_ATTACKS.get(attack).make_config(config_values(ns))
    result = run_explanation_attack(model, x, attack, config=cfg, target_images=targets)
    result.config.update(checkpoint=str(ns.checkpoint), model=card.name, dataset=card.dataset, split=ns.split)
    result.per_image = {"index": indices, **result.per_image}
    if targets is not None:
        result.per_image["target_index"] = tidx
    out = Path(ns.out)
    for i, idx in enumerate(indices):
        t = result.tensors
        fig = attack_panels_figure(x[i], t["adversarial"][i], t["original_map"][i], t["attacked_map"][i],
                                   t["target_map"][i] if "target_map" in t else None,
                                   title=f"{card.name} · {attack} · {cfg.explainer} · #{idx}")
        save_figure(fig, out / f"{attack}_{ns.split}_{idx}.png")
    result.save(out / f"{attack}.json", out / f"{attack}.csv")
    print(f"{card.name}: {attack} ({cfg.explainer}) on {len(indices)} images — attack model: "
          f"{result.config['attack_model']}")
    print(_fmt(result.summary))
    print(f"wrote {out / f'{attack}.json'}, {attack}.csv and {len(indices)} PNG panels")
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from .evaluate import make_evaluation_config, evaluate_model

    _check_outputs(ns, files=("json", "csv"))
    model, card, dataset, _ = _load(ns)
    cfg = make_evaluation_config(ns.preset, **config_values(ns), split=ns.split)

    def progress(stage: str, fraction: float) -> None:
        print(f"  {stage}: {fraction:.0%}", file=sys.stderr, flush=True)

    result = evaluate_model(model, dataset, cfg, progress=progress)
    result.config.update(checkpoint=str(ns.checkpoint), model=card.name, dataset=card.dataset, preset=ns.preset)
    print(f"{card.name} on {card.dataset}/{ns.split}:")
    print(_fmt(result.summary))
    _write_result(result, ns)
    if ns.write_card:
        from .zoo import update_card_metrics

        update_card_metrics(ns.checkpoint, {"evaluation": {
            "command": "explrobust " + " ".join(ns.argv), "config": result.config, "summary": result.summary}})
        print(f"stored the summary in the card of {ns.checkpoint}")
    return 0


# --------------------------------------------------------------------------- sampling, landscapes


def _reference_name(path: str | Path) -> str:
    from .zoo import read_card

    card = read_card(path)
    return f"{card.name} sha256:{(card.weights_sha256 or '')[:12]}"


def cmd_sample(ns: argparse.Namespace) -> int:
    from .data import load_dataset
    from .io import runs_dir
    from .sampling import SampleConfig, check_not_in_shipped_zoo, sample_pairs, save_pairs
    from .zoo import load_checkpoint, shipped_zoo_dir

    cfg = SampleConfig(way=ns.way, dataset=ns.dataset, split=ns.split, n_candidates=ns.n_candidates,
                       n_pairs=ns.n_pairs, k=ns.k, feature_source=ns.feature_source, seed=ns.seed)
    # by default into the runs folder: the shipped pair files are the reference and are never overwritten
    out = Path(ns.out) if ns.out else (runs_dir() / "pairs" / cfg.dataset /
                                       f"{cfg.split}-way{cfg.way}-n{cfg.n_pairs}-seed{cfg.seed}.json")
    check_not_in_shipped_zoo(out)
    _check_output(str(out), "--out", "file")
    dataset = load_dataset(cfg.dataset, cfg.split)
    n = min(cfg.n_candidates, len(dataset))
    images, labels = dataset.batch(range(n))
    model = reference = None
    if cfg.way == 3:
        ref = ns.reference or shipped_zoo_dir() / cfg.dataset / "natural.safetensors"
        model, _ = load_checkpoint(ref, ns.device)
        reference = _reference_name(ref)
    pairs = sample_pairs(cfg.way, dataset=cfg.dataset, labels=labels, n_pairs=cfg.n_pairs, seed=cfg.seed,
                         split=cfg.split, model=model, images=images, reference=reference, k=cfg.k,
                         feature_source=cfg.feature_source)
    save_pairs(pairs, out)
    print(f"wrote {len(pairs.pairs)} Way{cfg.way} pairs over the first {n} {cfg.split} images to {out}")
    return 0


def _landscape_inputs(ns: argparse.Namespace, dataset, device):
    """Victims (and targets) from --indices or a stored pair file."""
    from .sampling import load_pairs

    if ns.pairs:
        stored = load_pairs(ns.pairs, len(dataset))
        if (stored.dataset, stored.split) != (dataset.info.name, ns.split):
            raise ValueError(f"--pairs {ns.pairs} was drawn on {stored.dataset}/{stored.split}, but the checkpoint's "
                             f"images are {dataset.info.name}/{ns.split}: its indices would pick unrelated images")
        pairs = stored.pairs[: ns.n_pairs]
        x, y = dataset.batch([v for v, _ in pairs])
        targets = dataset.batch([t for _, t in pairs])[0].to(device)
        return x.to(device), y.to(device), targets
    if not ns.indices:
        raise ValueError("give --indices or --pairs")
    x, y = dataset.batch(ns.indices)
    return x.to(device), y.to(device), None


def cmd_landscape(ns: argparse.Namespace) -> int:
    from .landscape import LandscapeConfig, input_landscape

    _check_outputs(ns, files=("json", "csv"))
    model, card, dataset, device = _load(ns)
    x, y, targets = _landscape_inputs(ns, dataset, device)
    values = config_values(ns)
    if ns.loss:  # the short form: --loss ce | explanation
        values["losses"] = ["ce"] if ns.loss == "ce" else ["explanation_target" if targets is not None else "explanation_change"]
    cfg = LandscapeConfig(**values)
    result = input_landscape(model, x, y, cfg, target_images=targets if "explanation_target" in cfg.losses else None)
    result.config.update(checkpoint=str(ns.checkpoint), model=card.name, dataset=card.dataset, split=ns.split,
                         pairs=ns.pairs)
    print(f"{card.name}: {cfg.dims}D landscape along {cfg.direction} over {x.shape[0]} images "
          f"({cfg.points}{'×' + str(cfg.points) if cfg.dims == 2 else ''} points each, {result.seconds:.1f} s)")
    print(_fmt(result.summary))
    _write_result(result, ns)
    return 0


def cmd_curvature(ns: argparse.Namespace) -> int:
    from .landscape import CurvatureConfig, curvature_summary

    cfg = CurvatureConfig(radius=ns.radius, beta=ns.beta, explainer=ns.explainer, n_samples=ns.n_samples,
                          iterations=ns.iterations, seed=ns.seed)
    _check_outputs(ns, files=("json", "csv"))
    model, card, dataset, device = _load(ns)
    x, y, _ = _landscape_inputs(ns, dataset, device)
    result = curvature_summary(model, x, y, **cfg.model_dump())
    result.config.update(checkpoint=str(ns.checkpoint), model=card.name, dataset=card.dataset)
    print(f"{card.name}: input curvature over {x.shape[0]} images")
    print(_fmt(result.summary))
    _write_result(result, ns)
    return 0


def cmd_compare_ways(ns: argparse.Namespace) -> int:
    from .attacks.explanation import EXPLANATION_ATTACKS
    from .evaluate import WayStabilityConfig, way_stability
    from .zoo import load_checkpoint

    cfg = WayStabilityConfig(ways=ns.ways, seeds=ns.seeds, n_pairs=ns.n_pairs, n_candidates=ns.n_candidates, k=ns.k)
    attack = EXPLANATION_ATTACKS.get("targeted").make_config(config_values(ns))
    _check_outputs(ns, files=("json",))
    model, card, dataset, device = _load(ns)
    reference = load_checkpoint(ns.reference, ns.device)[0] if ns.reference else None
    result = way_stability(model, dataset, ways=tuple(cfg.ways), seeds=tuple(cfg.seeds), n_pairs=cfg.n_pairs,
                           n_candidates=cfg.n_candidates, reference=reference, attack=attack, k=cfg.k,
                           progress=lambda stage, f: print(f"  {stage}: {f:.0%}", file=sys.stderr, flush=True))
    result.config.update(checkpoint=str(ns.checkpoint), model=card.name, dataset=card.dataset)
    print(f"{card.name}: spread of mean L_e end (×10⁻⁷) over seeds, per Way")
    print(_fmt(result.summary))
    _write_result(result, ns)
    return 0


# --------------------------------------------------------------------------- train

# the seed's SEP_train.py flags → ours
_SEED_MODELS = {"convnet": "convnet", "resnet18": "resnet18", "resnet": "resnet18", "wideresnet": "wideresnet",
                "wrn": "wideresnet", "mobilenetv2": "mobilenetv2", "mobilenet": "mobilenetv2", "rar_cnn": "rar_cnn"}
_SEED_METHODS = {"grad_times_input": "gradient_x_input", "grad": "gradient", "gradient": "gradient",
                 "saliency": "gradient", "ig": "integrated_gradients", "integrated_gradients": "integrated_gradients",
                 "smoothgrad": "smoothgrad", "gradient_x_input": "gradient_x_input", "gradient_shap": "gradient_shap"}


def _train_config(ns: argparse.Namespace):
    from .training.trainer import TrainConfig

    values = config_values(ns)
    objective_values = values.pop("objective_options", {})
    if ns.seed_model:
        values["architecture"] = _SEED_MODELS.get(ns.seed_model.lower(), ns.seed_model.lower())
    if ns.seed_dataset:
        values["dataset"] = ns.seed_dataset.lower()
    if ns.reg_weight is not None:
        values.setdefault("objective", "sep")
        objective_values["lam"] = ns.reg_weight
    if ns.seed_method:
        objective_values["explainer"] = _SEED_METHODS.get(ns.seed_method.lower(), ns.seed_method)
    values["objective_config"] = {**values.get("objective_config", {}), **objective_values}
    values.setdefault("name", f"{values.get('objective', 'natural')}_{values.get('architecture', 'convnet')}")
    return TrainConfig(**values)


def cmd_train(ns: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .registry import format_validation_error
    from .training.trainer import StopFlag, train
    from .zoo import user_zoo_dir

    try:
        cfg = _train_config(ns)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "training config")) from None
    out = Path(ns.out) if ns.out else user_zoo_dir() / cfg.dataset
    _check_output(str(out), "--out", "directory")
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

    outcome = train(cfg, out, progress=progress, should_stop=StopFlag().install(), command=command)
    if not outcome.finished:
        print(f"\nstopped; the run resumes from {outcome.run_dir} with the same command", file=sys.stderr)
        return 3
    print(f"wrote {outcome.checkpoint} and its card")
    return 0


# --------------------------------------------------------------------------- background jobs


def _executor(ns: argparse.Namespace):
    from .executors import make_executor

    return make_executor(ns.runs, getattr(ns, "executor", None), getattr(ns, "max_concurrent", None))


def cmd_jobs_submit(ns: argparse.Namespace) -> int:
    from .jobs import TrainJobSpec, parse_spec

    extra = list(ns.extra)
    spec_file = extra.pop(0) if extra and not extra[0].startswith("-") else None
    if spec_file:
        if extra:
            raise ConfigError(f"give a spec file or training flags, not both (got {' '.join(extra)})")
        from .io import read_bounded

        spec = parse_spec(read_bounded(spec_file, 1 << 20, "job spec file").decode("utf-8", "replace"))
    else:  # the `train` command's flags, validated the same way
        argv = ["train", *extra]
        train_ns = build_parser("train", _choice_in(argv)).parse_args(argv)
        spec = TrainJobSpec(train=_train_config(train_ns))
    job = _executor(ns).submit(spec)
    print(json.dumps(job.as_row()) if ns.json else f"submitted job {job.id} ({job.kind} {job.name}): {job.status}")
    return 0


def cmd_jobs_list(ns: argparse.Namespace) -> int:
    executor = _executor(ns)
    executor.start_queued()
    rows = [j.as_row() for j in executor.store.list()]
    if ns.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(f"{r['id']}  {r['kind']:<8} {r['status']:<11} {r['progress']:>5.0%}  {r['name']}"
              + (f"  ({r['error']})" if r["error"] else ""))
    return 0


def cmd_jobs_show(ns: argparse.Namespace) -> int:
    import dataclasses

    job = _executor(ns).store.get(ns.id)
    print(json.dumps(dataclasses.asdict(job) | {"fraction": job.fraction}, indent=1))
    return 0


def cmd_jobs_action(ns: argparse.Namespace) -> int:
    executor = _executor(ns)
    if ns.action == "delete":
        executor.delete(ns.id)
        print(f"deleted job {ns.id}")
        return 0
    job = getattr(executor, ns.action)(ns.id)
    print(f"job {job.id}: {job.status}" + (" (stops at the next batch)" if job.cancel_requested else ""))
    return 0


def cmd_jobs_logs(ns: argparse.Namespace) -> int:
    from .jobs import tail

    print(tail(Path(_executor(ns).store.get(ns.id).log_path), ns.lines), end="")
    return 0


def cmd_jobs_rebuild_store(ns: argparse.Namespace) -> int:
    from .jobs import rebuild_store

    backup, recovered, skipped = rebuild_store(ns.runs)
    print((f"moved the old store to {backup}; " if backup else "") + f"rebuilt the job store with {len(recovered)} jobs "
          "(unfinished ones are 'interrupted': `explrobust jobs resume ID` continues them)")
    for line in skipped:
        print(f"  skipped {line}", file=sys.stderr)
    return 0


def cmd_jobs_worker(ns: argparse.Namespace) -> int:
    from .jobs import JobStore, run_worker

    return run_worker(ns.id, JobStore(ns.runs) if ns.runs else None)


# --------------------------------------------------------------------------- sweeps


def _sweep_protocol(ns: argparse.Namespace, dataset: str) -> dict[str, Any]:
    """--preset / --evaluation as given, else the Robustness study's quick protocol of the dataset."""
    if ns.preset or ns.evaluation:
        return {"preset": ns.preset, "evaluation": json.loads(ns.evaluation) if ns.evaluation else {}}
    from .study import quick_protocol

    return {"evaluation": quick_protocol(dataset, ns.runs).model_dump(mode="json")}


def _print_sweep(rows: list[dict[str, Any]], fields: list[str]) -> None:
    def num(v, scale=1.0, fmt=".1f"):
        return "—" if v is None else format(scale * v, fmt)

    print("  ".join([f"{f:>10}" for f in fields] + ["status     ", " clean", "   PGD", " L_e start", "   L_e end",
                                                     "  model"]))
    for r in rows:
        print("  ".join([f"{r[f]!s:>10}" for f in fields]
                        + [f"{r.get('status', 'done'):<11}", f"{num(r['clean_accuracy'], 100):>6}",
                           f"{num(r['pgd_accuracy'], 100):>6}", f"{num(r['le_start']):>10}", f"{num(r['le_end']):>10}",
                           f"  {r['model']}"]))


def _write_sweep_outputs(ns: argparse.Namespace, rows: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    from . import sweep

    sweep.write_table(rows, ns.json, ns.csv, {"sweep": spec})
    if ns.figure:
        from .figures import save_figure, sweep_figure

        fields = list(spec["grid"])
        save_figure(sweep_figure(rows, fields[0], fields[1] if len(fields) > 1 else None,
                                 title=f"sweep {spec['name']}"), ns.figure)
        print(f"wrote {ns.figure}", file=sys.stderr)


def cmd_sweep_run(ns: argparse.Namespace) -> int:
    from . import sweep

    _check_outputs(ns, files=("json", "csv", "figure"))
    argv = ["train", *getattr(ns, "extra", [])]
    train_ns = build_parser("train", _choice_in(argv)).parse_args(argv)
    base = _train_config(train_ns).model_dump(mode="json")
    base.pop("name")
    spec = sweep.make_spec(name=ns.name, train=base, grid=sweep.parse_grid(ns.grid),
                           evaluate=_sweep_protocol(ns, base["dataset"]), max_parallel=ns.max_parallel)
    executor = _executor(ns)
    state = sweep.submit(spec, executor)
    print(f"sweep {spec.name}: {len(state['points'])} points queued or running "
          f"(at most {spec.max_parallel} at once); `explrobust sweep status {spec.name}` shows them", file=sys.stderr)
    if ns.wait:
        for point in state["points"]:
            job = executor.wait(point["job"], timeout=ns.timeout)
            print(f"{point['name']}: {job.status}", file=sys.stderr)
    rows = sweep.status_rows(state, executor.store)
    _print_sweep(rows, list(spec.grid))
    _write_sweep_outputs(ns, rows, state["spec"])
    return 0 if not ns.wait or all(r["status"] == "done" for r in rows) else 3


def cmd_sweep_status(ns: argparse.Namespace) -> int:
    from . import sweep

    _check_outputs(ns, files=("json", "csv", "figure"))
    executor = _executor(ns)
    executor.start_queued()
    state = sweep.load_state(ns.name, executor.store.root)
    rows = sweep.status_rows(state, executor.store)
    _print_sweep(rows, list(state["spec"]["grid"]))
    _write_sweep_outputs(ns, rows, state["spec"])
    return 0


def cmd_sweep_list(ns: argparse.Namespace) -> int:
    from . import sweep

    for name in sweep.list_sweeps(_executor(ns).store.root):
        print(name)
    return 0


# --------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint with its .json card")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")


def build_parser(command: str | None = None, choice: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``choice`` is the --method/--attack of ``command`` already on the command line,
    whose own options are then added to that sub-command (so ``--help`` lists them)."""
    from .attacks.classification import CLASSIFICATION_ATTACKS
    from .attacks.explanation import EXPLANATION_ATTACKS
    from .evaluate import PRESETS, EvaluationConfig
    from .explain import EXPLAINERS

    parser = _Parser(prog="explrobust", description="Classification vs explanation robustness workbench.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="list datasets, architectures, explainers, metrics, attacks and checkpoints")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("zoo-table", help="a Markdown table of the checkpoints' cards and measured metrics")
    p.add_argument("directory", nargs="?", default=None, help="default: the shipped zoo")
    p.set_defaults(func=cmd_zoo_table)

    p = sub.add_parser("explain", help="explanation maps for dataset images: PNGs + a JSON of the numbers")
    _common(p)
    p.add_argument("--indices", required=True, type=_index_list, help="comma-separated image indices, e.g. 0,1,2")
    p.add_argument("--method", default="gradient", help="explanation method (see `explrobust info`)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--target", type=_parse_target, default="predicted", help="true | predicted | class index")
    p.add_argument("--normalize", choices=["sum", "none"], default="sum", help="map post-processing")
    if command == "explain" and choice:
        add_config_arguments(p, EXPLAINERS.get(choice).config, f"options of {choice}")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("attack-classifier", help="FGSM/PGD on dataset images (the seed's adv_acc.py)")
    _common(p)
    p.add_argument("--indices", type=_index_list, default=None, help="image indices (default: --n-images spread evenly over the split)")
    p.add_argument("--n-images", type=_bounded_int(1, 100_000), default=500,
                   help="how many images, spread evenly over the split (1–100000)")
    p.add_argument("--attack", default="pgd", help=f"one of {', '.join(CLASSIFICATION_ATTACKS.names())}")
    p.add_argument("--eps-list", type=_float_list, default=None, help="also report accuracy at each ε, e.g. 0.1,0.2,0.3")
    p.add_argument("--minimal-eps", type=_eps_max, default=None, metavar="EPS_MAX",
                   help="also find each image's minimal flipping ε up to EPS_MAX (bisection)")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--csv", default=None, help="write the per-image table here")
    if command == "attack-classifier" and choice:
        add_config_arguments(p, CLASSIFICATION_ATTACKS.get(choice).config, f"options of {choice}")
    p.set_defaults(func=cmd_attack_classifier)

    p = sub.add_parser("attack-explanation", help="attack explanations, keeping the prediction (the seed's explAttack.py)")
    _common(p)
    p.add_argument("--indices", required=True, type=_index_list, help="victim image indices")
    p.add_argument("--target-indices", "--target-index", type=_int_list, default=None,
                   help="target image index (one for all victims, or one per victim): runs the targeted attack")
    p.add_argument("--attack", default=None, help=f"one of {', '.join(EXPLANATION_ATTACKS.names())} (default: by targets)")
    p.add_argument("--out", required=True, help="output directory (JSON, CSV and PNG panels)")
    if command == "attack-explanation" and choice:
        add_config_arguments(p, EXPLANATION_ATTACKS.get(choice).config, f"options of {choice}")
    p.set_defaults(func=cmd_attack_explanation)

    from .landscape import LandscapeConfig
    from .training.objectives import OBJECTIVES
    from .training.trainer import TrainConfig

    p = sub.add_parser("sample", help="victim/target pairs: Way1, Way2 or Way3 (clustering), stored as JSON")
    p.add_argument("--way", type=int, choices=[1, 2, 3], required=True)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--n-candidates", type=int, default=1000, help="pairs index the first n images of the split")
    p.add_argument("--n-pairs", type=int, default=150, help="pairs (Way3: prototypes; the paper uses 150)")
    p.add_argument("--k", type=int, default=10, help="Way3: number of k-means clusters")
    p.add_argument("--feature-source", choices=["penultimate", "maps"], default="penultimate",
                   help="Way3: cluster the reference model's penultimate features or its explanation maps")
    p.add_argument("--reference", default=None, help="Way3: reference checkpoint (default: the zoo's natural model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="default: RUNS/pairs/<dataset>/<split>-way<N>-n<pairs>-seed<seed>.json "
                                               "(never the shipped zoo)")
    p.set_defaults(func=cmd_sample)

    def victims(p: argparse.ArgumentParser) -> None:
        p.add_argument("--indices", type=_index_list, default=None, help="image indices")
        p.add_argument("--pairs", default=None, help="a stored pair file (victims; targets for explanation_target)")
        p.add_argument("--n-pairs", type=_bounded_int(1, 100_000), default=150,
                       help="use the first n pairs of the file (1–100000)")
        p.add_argument("--json", default=None, help="write the result here")
        p.add_argument("--csv", default=None, help="write the per-image table here")

    p = sub.add_parser("landscape", help="1D/2D input loss landscapes for the classification and explanation loss")
    _common(p)
    victims(p)
    p.add_argument("--loss", choices=["ce", "explanation"], default=None, help="short for --losses with one loss")
    add_config_arguments(p, LandscapeConfig, "landscape")
    p.set_defaults(func=cmd_landscape)

    p = sub.add_parser("curvature", help="mean |Δloss|, Hutchinson Hessian trace and top eigenvalue, both losses")
    _common(p)
    victims(p)
    p.add_argument("--radius", type=float, default=0.1, help="L∞ radius of the mean |Δloss|")
    p.add_argument("--beta", type=float, default=10.0, help="softplus β of the view the Hessian is taken on")
    p.add_argument("--explainer", default="gradient_x_input")
    p.add_argument("--n-samples", type=int, default=32)
    p.add_argument("--iterations", type=int, default=30, help="power-iteration steps")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_curvature)

    p = sub.add_parser("compare-ways", help="spread of the mean L_e end over seeds for Way1/2/3 pairs")
    _common(p)
    p.add_argument("--ways", type=_int_list, default=[1, 2, 3])
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2])
    p.add_argument("--n-pairs", type=int, default=30)
    p.add_argument("--n-candidates", type=int, default=1000)
    p.add_argument("--k", type=int, default=10, help="Way3 clusters")
    p.add_argument("--reference", default=None, help="Way3 reference checkpoint (default: the attacked model)")
    p.add_argument("--json", default=None)
    add_config_arguments(p, EXPLANATION_ATTACKS.get("targeted").config, "targeted attack")
    p.set_defaults(func=cmd_compare_ways)

    p = sub.add_parser("train", help="train a model with any objective; writes a checkpoint + model card")
    p.add_argument("--out", default=None, help="output directory (default: the user zoo / <dataset>)")
    p.add_argument("--quiet", action="store_true", help="no per-batch progress bar")
    seed = p.add_argument_group("the seed's SEP_train.py flags (aliases)")
    seed.add_argument("--epoch", dest="cfg__epochs", type=int, default=argparse.SUPPRESS, help="= --epochs")
    seed.add_argument("--batch", dest="cfg__batch_size", type=int, default=argparse.SUPPRESS, help="= --batch-size")
    seed.add_argument("--model", dest="seed_model", default=None, help="ConvNet | ResNet18 | … (= --architecture)")
    seed.add_argument("--reg_weight", type=float, default=None, help="SEP λ (implies --objective sep)")
    seed.add_argument("--method", dest="seed_method", default=None,
                      help="explanation method of SEP: grad_times_input | grad | ig | smoothgrad")
    p.set_defaults(seed_dataset=None)
    add_config_arguments(p, TrainConfig, "training", skip=("objective_config", "dataset"))
    p.add_argument("--dataset", dest="seed_dataset", default=None, help="registered dataset (CIFAR10 → cifar10)")
    if command == "train" and choice:
        add_config_arguments(p, OBJECTIVES.get(choice).config, f"options of {choice}", prefix=("objective_options",),
                             flag_prefix=())
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="clean + PGD accuracy and explanation robustness of a checkpoint")
    _common(p)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a paper protocol (RAR per dataset, ART CIFAR)")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--csv", default=None, help="write the per-image explanation table here")
    p.add_argument("--write-card", action="store_true", help="store the summary in the checkpoint's model card")
    add_config_arguments(p, EvaluationConfig, "evaluation", skip=("split",))
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("jobs", help="background training/evaluation jobs: submit, list, show, cancel, resume, logs")
    p.add_argument("--runs", default=None, help="runs directory (default: $EXPLROBUST_RUNS or ~/.explrobust/runs)")
    jobs = p.add_subparsers(dest="jobs_command", required=True)
    q = jobs.add_parser("submit", help="queue a job: a JSON spec file, or the `train` command's flags",
                        usage="explrobust jobs submit [--json] [--max-concurrent N] (SPEC.json | TRAIN FLAGS …)",
                        description="SPEC.json: {\"kind\": \"train\", \"train\": {…TrainConfig…}} or "
                                    "{\"kind\": \"evaluate\", \"model\": \"mnist5k/natural\", …}; "
                                    "or the flags of `explrobust train` (see `explrobust train --help`).")
    q.add_argument("--max-concurrent", type=int, default=None, help="jobs allowed to run at once (kept in the store)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_jobs_submit)
    q = jobs.add_parser("list", help="all jobs with status and progress")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_jobs_list)
    for action, text in (("show", "one job, everything stored"), ("cancel", "stop at the next batch, keep the state"),
                         ("resume", "continue an interrupted, cancelled or failed job"),
                         ("retry", "run a failed job again from its last state"),
                         ("delete", "forget a finished job and remove its files")):
        q = jobs.add_parser(action, help=text)
        q.add_argument("id")
        q.set_defaults(func=cmd_jobs_show if action == "show" else cmd_jobs_action, action=action)
    q = jobs.add_parser("logs", help="the end of a job's log")
    q.add_argument("id")
    q.add_argument("--lines", type=_bounded_int(1, 100_000), default=40)
    q.set_defaults(func=cmd_jobs_logs)
    q = jobs.add_parser("rebuild-store", help="rebuild a lost or damaged jobs.sqlite from the job folders "
                                              "(the damaged file is kept as a backup)")
    q.set_defaults(func=cmd_jobs_rebuild_store)
    q = jobs.add_parser("worker", help="(internal) run one queued job in this process")
    q.add_argument("id")
    q.set_defaults(func=cmd_jobs_worker)

    p = sub.add_parser("sweep", help="train a grid over one or two objective fields as jobs, each point then evaluated")
    p.add_argument("--runs", default=None, help="runs directory (default: $EXPLROBUST_RUNS or ~/.explrobust/runs)")
    sweeps = p.add_subparsers(dest="sweep_command", required=True)

    def outputs(q: argparse.ArgumentParser) -> None:
        q.add_argument("--json", default=None, help="write the table as JSON")
        q.add_argument("--csv", default=None, help="write the table as CSV")
        q.add_argument("--figure", default=None, help="write the figure (.png or .pdf)")

    q = sweeps.add_parser(
        "run", help="queue (or resume) a sweep: each grid point is a training job evaluated when trained",
        usage="explrobust sweep run --name NAME --grid FIELD=V1,V2,… [--grid FIELD=…] [--preset P | --evaluation JSON] "
              "[--max-parallel K] [--wait] [TRAIN FLAGS …]",
        description="FIELD is a field of the objective's config (SEP: lam, sigma, …; TRADES: beta); at most 64 points. "
                    "The other flags are `explrobust train`'s and set the base run. Running the same sweep again "
                    "resumes it. Default protocol: the Robustness study's quick protocol of the dataset.")
    q.add_argument("--name", required=True, help="sweep name (points are named NAME_FIELDVALUE…)")
    q.add_argument("--grid", action="append", required=True, metavar="FIELD=V1,V2,…", help="a swept field (once or twice)")
    q.add_argument("--preset", default=None, help="evaluation preset of every point (e.g. sep_mnist)")
    q.add_argument("--evaluation", default=None, metavar="JSON", help="EvaluationConfig overrides of every point")
    q.add_argument("--max-parallel", type=int, default=1, help="points trained at once (1–64)")
    q.add_argument("--wait", action="store_true", help="wait until every point is done, then print the table")
    q.add_argument("--timeout", type=float, default=24 * 3600, help="--wait: seconds to wait per point")
    outputs(q)
    q.set_defaults(func=cmd_sweep_run)
    q = sweeps.add_parser("status", help="the sweep's table: each point's status and, once evaluated, its numbers")
    q.add_argument("name")
    outputs(q)
    q.set_defaults(func=cmd_sweep_status)
    q = sweeps.add_parser("list", help="the sweeps in the runs directory")
    q.set_defaults(func=cmd_sweep_list)
    from .cli_ray import register as _ray; _ray(sub)  # noqa: E702 (--executor on jobs/sweep, ray-local)
    return parser


def _choice_in(argv: Sequence[str]) -> str | None:
    """The --method (explain) or --attack (attack commands) given, to add its options' flags."""
    flag = {"explain": "--method", "attack-classifier": "--attack", "attack-explanation": "--attack",
            "train": "--objective"}.get(argv[0] if argv else "")
    if flag is None:
        return None
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument(flag, dest="choice", default=None)
    pre.add_argument("--target-indices", "--target-index", dest="targets", default=None)
    pre.add_argument("--reg_weight", default=None)
    known = pre.parse_known_args(list(argv[1:]))[0]
    defaults = {"explain": "gradient", "attack-classifier": "pgd",
                "attack-explanation": "targeted" if known.targets else "ifia",
                "train": "sep" if known.reg_weight is not None else "natural"}
    return known.choice or defaults[argv[0]]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv[0] if argv else None, _choice_in(argv))
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
    except (ConfigError, ValueError, IndexError, OSError, MissingExtraError, FloatingPointError) as err:
        # Every expected failure is one clear line, never a traceback (UnknownNameError is a ValueError;
        # OSError: a path the file system refuses — permissions, a full disk, a name too long).
        print(f"explrobust: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
