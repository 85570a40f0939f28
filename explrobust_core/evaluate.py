"""Dataset-level reports: clean accuracy, PGD accuracy over ε, explanation robustness.

The work runs in memory-bounded chunks of images; explanation attacks run on correctly
classified images only (as RAR does), and the misclassified ones are counted, not hidden.
Presets reproduce the RAR protocol per dataset (research/rar_art.md §1.4, §3.1) and ART's
CIFAR evaluation (§3.2, §4.5).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Literal

import torch
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_serializer, model_validator
from torch import nn

from .accuracy import NEEDS, DatasetImages, accuracy_vs_eps, attack_installed
from .attacks.classification import CLASSIFICATION_ATTACKS, PGDConfig
from .attacks.explanation import EXPLANATION_ATTACKS, attack_summary, needs_targets, run_explanation_attack
from .batching import cpu_batch_cap
from .data import ImageDataset, spread_indices
from .models import device_of, predict
from .registry import Config, ConfigError, format_validation_error
from .results import Result, concat_per_image
from .sampling import way2_pairs


DEFAULT_ATTACK = "ifia"


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _validated(attack: str, settings: Any, registry=EXPLANATION_ATTACKS) -> Config:
    """Attack ``attack``'s config from ``settings``; errors name the fields as ``attack.field``."""
    config = registry.get(attack).config
    try:
        return config.model_validate(settings)
    except ValidationError as err:
        raise ValueError("; ".join(f"{attack}.{'.'.join(str(p) for p in e['loc']) or '(config)'}: "
                                   f"{e['msg'].removeprefix('Value error, ')}" for e in err.errors())) from None


class EvaluationConfig(Config):
    split: Literal["train", "test"] = Field("test", description="which split to evaluate on")
    n_images: int = Field(500, ge=1, le=100_000, description="images of the split to measure")
    subset: Literal["spread", "first"] = Field(
        "spread", description="which n images: spread evenly over the split (every class alike: the embedded "
                              "splits are sorted by class) or the first n (what results before this option used)")
    batch_size: int = Field(128, ge=1, le=4096, description="images per forward/attack batch (memory bound)")
    eps_list: list[float] = Field([0.1, 0.2, 0.3], min_length=0, max_length=64,
                                  description="PGD accuracy at each ε (pixel units)")
    pgd: PGDConfig = Field(default_factory=lambda: PGDConfig(eps=0.3, steps=40, step_size=0.01),
                           description="PGD settings; its ε is replaced by each value of eps_list")
    classification_attack: str = Field(
        "pgd", description="attack of the accuracy-against-ε curve (summary key pgd_accuracy whichever it is): pgd "
                           "(settings: pgd) or another registered one, e.g. autoattack when its optional extra "
                           "is installed (settings under its name)")
    classification_attack_config: dict[str, Any] = Field(
        default_factory=dict, description="settings of a classification attack other than pgd, validated by its "
                                          "config; its ε is replaced by each value of eps_list")
    explanation_attack: str = Field(DEFAULT_ATTACK, description="explanation attack to run (a registered one, "
                                                                "or 'none')")
    n_explanation_images: int = Field(100, ge=1, le=100_000,
                                      description="correctly classified images (or pairs) to attack")
    attack_batch_size: int = Field(64, ge=1, le=4096, description="images per explanation-attack batch")
    explanation_attack_config: dict[str, Any] = Field(
        default_factory=dict, description="the chosen attack's settings, validated by its config (given and stored "
                                          "under the attack's name, e.g. {\"ifia\": {\"steps\": 20}})")
    pairs_file: str | None = Field(None, description="stored victim/target pairs (Way1/2/3 JSON); default: "
                                                     "fresh Way2 pairs among correctly classified images")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed for pairs and bootstrap")

    @model_validator(mode="before")
    @classmethod
    def _settings_under_attack_names(cls, data: Any) -> Any:
        """Attack settings are given (and stored, in every evaluation JSON and job spec) under the attack's name:
        the chosen attack's block becomes ``explanation_attack_config`` (which, if also given, wins); the other
        registered attacks' blocks are validated, then dropped (stored configs carry them: they did not run)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        # the same for the accuracy curve's attack, except PGD, whose settings are the pgd field
        curve_attack = data.get("classification_attack", "pgd")
        curve_blocks = {name: data.pop(name) for name in CLASSIFICATION_ATTACKS.names()
                        if name != "pgd" and name in data}
        for name, block in curve_blocks.items():
            if name != curve_attack:
                _validated(name, block, CLASSIFICATION_ATTACKS)
        if curve_attack in curve_blocks or "classification_attack_config" not in data:
            chosen = curve_blocks.get(curve_attack) or {}
            if not isinstance(chosen, dict):
                raise ValueError(f"the settings of {curve_attack!r} must be a JSON object")
            data["classification_attack_config"] = deep_merge(chosen, data.get("classification_attack_config") or {})
        attack = data.get("explanation_attack", DEFAULT_ATTACK)
        blocks = {name: data.pop(name) for name in EXPLANATION_ATTACKS.names() if name in data}
        for name, block in blocks.items():
            if name != attack:
                _validated(name, block)  # a bad block is an error even unused
        given = data.get("explanation_attack_config")
        if attack in blocks or given is None:
            chosen = blocks.get(attack) or {}
            if not isinstance(chosen, dict) or not isinstance(given or {}, dict):
                raise ValueError(f"the settings of {attack!r} must be a JSON object")
            data["explanation_attack_config"] = deep_merge(chosen, given or {})
        return data

    @field_validator("classification_attack")
    @classmethod
    def _installed(cls, v: str) -> str:
        CLASSIFICATION_ATTACKS.get(v)  # an unknown name: the message lists the registered ones
        if not attack_installed(v):
            missing = [t.removeprefix(NEEDS) for t in CLASSIFICATION_ATTACKS.get(v).tags if t.startswith(NEEDS)]
            raise ValueError(f"the {v} attack is not installed here: it needs the optional package "
                             f"{', '.join(missing)} (pip install 'explrobust[{v}]')")
        return v

    @field_validator("classification_attack_config")
    @classmethod
    def _resolved_by_its_config(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        attack = info.data.get("classification_attack")
        if attack is None or attack == "pgd":  # refused already, or PGD (whose settings are the pgd field)
            return {}
        return _validated(attack, v, CLASSIFICATION_ATTACKS).model_dump(mode="json")

    @field_validator("explanation_attack")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v != "none":
            EXPLANATION_ATTACKS.get(v)  # an unknown name: the message lists the registered ones
        return v

    @field_validator("explanation_attack_config")
    @classmethod
    def _resolved_by_the_attack_config(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Every setting written out (defaults included), as the attack's config resolves it."""
        attack = info.data.get("explanation_attack")
        if attack is None:  # the name was refused: its own error says why
            return v
        return {} if attack == "none" else _validated(attack, v).model_dump(mode="json")

    @model_validator(mode="after")
    def _settings_fit_their_attacks(self):
        """Run again after an assignment (``cfg.explanation_attack = "targeted"``): the settings held must be the
        newly chosen attack's (else the error names the fields that do not fit)."""
        for attack, name, registry, plain in (
                (self.explanation_attack, "explanation_attack_config", EXPLANATION_ATTACKS, "none"),
                (self.classification_attack, "classification_attack_config", CLASSIFICATION_ATTACKS, "pgd")):
            settings = getattr(self, name)
            resolved = {} if attack == plain else _validated(attack, settings, registry).model_dump(mode="json")
            if resolved != settings:
                self.__dict__[name] = resolved  # not by assignment, which would validate again
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        """An assignment that fails validation leaves the config as it was (pydantic has written the new value
        when the after-validator above refuses it)."""
        before = dict(self.__dict__)
        try:
            super().__setattr__(name, value)
        except Exception:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    @model_serializer(mode="wrap")
    def _stored_under_the_attack_name(self, handler):
        """Stored as before this field existed (``{"explanation_attack": "ifia", "ifia": {…}}``), so stored
        evaluations, job specs and protocol ids read the same."""
        data = handler(self)
        settings = data.pop("explanation_attack_config", {})
        if self.explanation_attack != "none":
            data[self.explanation_attack] = settings
        # PGD's curve is stored as before the option existed (so its protocol ids stay); another attack by name
        curve_settings = data.pop("classification_attack_config", {})
        if data.pop("classification_attack", "pgd") != "pgd":
            data["classification_attack"] = self.classification_attack
            data[self.classification_attack] = curve_settings
            data.pop("pgd", None)  # unused: not part of the protocol
        return data

    def attack_config(self) -> Config | None:
        """The chosen explanation attack's typed config (None for 'none')."""
        if self.explanation_attack == "none":
            return None
        return EXPLANATION_ATTACKS.get(self.explanation_attack).make_config(self.explanation_attack_config)


_IG100 = {"explainer": "integrated_gradients", "explainer_options": {"n_steps": 100, "rule": "riemann_right"}}
# RAR's reference attack differentiates through softplus with β = 1 and scores an image it cannot attack (no
# step keeps the label) as unchanged, i.e. fully robust; ours (β = 10, unattackable images excluded) stays the
# IFIA default and an option here
_RAR = {**_IG100, "beta": 1.0, "unattackable": "count_as_robust"}
# ART's evaluation compares maps of another method than the one it attacks: integrated gradients of the loss
# (the log-softmax of the label; |·| makes it the cross-entropy's map), zero baseline, 101 points, trapezoid rule
_ART_REPORT = {"report_explainer": "integrated_gradients",
               "report_explainer_options": {"n_steps": 101, "rule": "riemann_trapezoid", "score": "log_softmax"}}

PRESETS: dict[str, dict[str, Any]] = {
    "rar_mnist": {"eps_list": [0.3], "pgd": {"eps": 0.3, "steps": 40, "step_size": 0.01},
                  "ifia": {**_RAR, "eps": 0.3, "steps": 100, "step_size": 0.01, "k": 200, "eval_k": 100,
                           "measure": "kendall_tau"}},
    "rar_fmnist": {"eps_list": [0.1], "pgd": {"eps": 0.1, "steps": 20, "step_size": 0.01},
                   "ifia": {**_RAR, "eps": 0.1, "steps": 100, "step_size": 0.01, "k": 100, "eval_k": 100,
                            "measure": "kendall_tau"}},
    "rar_gtsrb": {"eps_list": [8 / 255], "pgd": {"eps": 8 / 255, "steps": 7, "step_size": 2 / 255},
                  "ifia": {**_RAR, "eps": 8 / 255, "steps": 50, "step_size": 1 / 255, "k": 100, "eval_k": 100,
                           "measure": "kendall_tau"}},
    "rar_flower": {"eps_list": [8 / 255], "pgd": {"eps": 8 / 255, "steps": 7, "step_size": 2 / 255},
                   "ifia": {**_RAR, "eps": 8 / 255, "steps": 100, "step_size": 1 / 255, "k": 1000,
                            "eval_k": 1000, "measure": "kendall_tau"}},
    "art_cifar": {"eps_list": [8 / 255], "pgd": {"eps": 8 / 255, "steps": 40, "step_size": 2 / 255},
                  "ifia": {**_IG100, "eps": 8 / 255, "steps": 50, "step_size": 1 / 255, "k": 100, "eval_k": 100,
                           "measure": "kendall_tau", "random_start": True, **_ART_REPORT}},
}


# The SEP paper's MNIST protocol as the shipped zoo measures it: PGD-20 accuracy over ε, and Dombrowski's
# targeted attack on gradient×input maps in the model's input space (the reference code's form) for 200
# steps on the stored victim–target pairs (give them with pairs_file).
PRESETS["sep_mnist"] = {
    "n_images": 1000, "eps_list": [0.1, 0.2, 0.3], "pgd": {"eps": 0.3, "steps": 20, "step_size": 0.025},
    "explanation_attack": "targeted", "n_explanation_images": 150, "attack_batch_size": 75,
    "targeted": {"explainer": "gradient_x_input", "explainer_options": {"space": "model"}, "steps": 200,
                 "record_every": 50},
}


# RAR's MNIST protocol with AutoAttack (standard suite, L∞) instead of PGD-40 for the accuracy curve: a stronger
# classification-robustness number, offered when the optional extra is installed (available_presets)
PRESETS["autoattack_mnist"] = {**{k: v for k, v in PRESETS["rar_mnist"].items() if k != "pgd"},
                               "classification_attack": "autoattack",
                               "autoattack": {"eps": 0.3, "norm": "Linf", "version": "standard"}}


def available_presets() -> list[str]:
    """The presets whose attacks can run here (AutoAttack's need its optional extra), sorted."""
    return sorted(name for name, values in PRESETS.items()
                  if attack_installed(values.get("classification_attack", "pgd")))


def make_evaluation_config(preset: str | None = None, **overrides) -> EvaluationConfig:
    """A validated config: defaults, then the preset, then the overrides (nested dicts merge)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        values = PRESETS[preset]
    values = deep_merge(values, overrides)
    try:
        return EvaluationConfig(**values)
    except Exception as err:  # pydantic ValidationError → one readable line
        from pydantic import ValidationError

        if isinstance(err, ValidationError):
            raise ConfigError(format_validation_error(err, "evaluation config")) from None
        raise


# where each stage of evaluate_model's progress lies on one 0→1 bar: (start, span)
STAGES = {"clean accuracy": (0.0, 0.05), "PGD accuracy": (0.05, 0.4), "explanation attack": (0.45, 0.55)}


def overall_fraction(stage: str, fraction: float) -> float:
    """evaluate_model reports each stage from 0 to 1; this is the whole run's fraction."""
    start, span = STAGES.get(stage, (0.0, 1.0))
    return min(1.0, start + span * fraction)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def predictions(model: nn.Module, dataset: ImageDataset, indices: list[int], batch_size: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's predictions (:func:`~explrobust_core.models.predict`) and the true labels of ``indices``."""
    return predict(model, dataset, batch_size, indices=indices), dataset.all_labels()[torch.as_tensor(indices, dtype=torch.long)]


def _stored_pairs(model, dataset, cfg: EvaluationConfig, summary: dict[str, Any]):
    """The stored pairs whose victim the model classifies correctly (the others are counted)."""
    from .sampling import load_pairs

    stored = load_pairs(cfg.pairs_file, len(dataset))
    if stored.dataset != dataset.info.name or stored.split != cfg.split:
        raise ValueError(f"pair file {cfg.pairs_file} is for {stored.dataset}/{stored.split}, "
                         f"not {dataset.info.name}/{cfg.split}")
    victims = stored.victims[: cfg.n_explanation_images]
    pred, labels = predictions(model, dataset, victims, cfg.batch_size)
    ok = (pred == labels).tolist()
    summary["explanation_skipped_misclassified"] = ok.count(False)
    summary["pairs"] = {"file": cfg.pairs_file, "way": stored.way, "seed": stored.seed, "reference": stored.reference}
    kept = [p for p, good in zip(stored.pairs[: cfg.n_explanation_images], ok) if good]
    pairs = kept if needs_targets(cfg.explanation_attack) else None
    return [v for v, _ in kept], pairs


def evaluate_model(model: nn.Module, dataset: ImageDataset, config: EvaluationConfig | dict | None = None,
                   progress: Callable[[str, float], None] | None = None) -> Result:
    """Clean accuracy, PGD accuracy for each ε, and explanation robustness of ``model`` on ``dataset``.

    Args:
        model: pixels in ``[0, 1]`` → logits; dataset: from :func:`load_dataset`.
        config: an :class:`EvaluationConfig` or its fields (``n_images``, ``eps_list``, ``pgd``, …).
        progress: ``progress(stage, fraction)`` while it runs.

    Returns:
        A :class:`~explrobust_core.results.Result` whose ``summary`` holds ``clean_accuracy``,
        ``pgd_accuracy`` (``[{"eps", "accuracy"}]``) and the explanation-attack numbers.

    Example:
        >>> config = {"n_images": 100, "eps_list": [0.1], "pgd": {"steps": 10}, "explanation_attack": "none"}
        >>> report = evaluate_model(model, load_dataset("mnist5k", "test"), config)
        >>> [row["eps"] for row in report.summary["pgd_accuracy"]]
        [0.1]
    """
    cfg = config if isinstance(config, EvaluationConfig) else make_evaluation_config(**(config or {}))
    started = time.perf_counter()
    device = device_of(model)
    report = progress or (lambda stage, fraction: None)
    n = min(cfg.n_images, len(dataset))
    indices = spread_indices(len(dataset), n) if cfg.subset == "spread" else list(range(n))
    # on the CPU a batch is capped by the model's size (an out-of-memory there is the OS's, not torch's, and
    # cannot be caught); on a GPU a batch that runs out of memory is halved (batching.map_batches)
    batch_size = cfg.batch_size if device.type == "cuda" else min(
        cfg.batch_size, cpu_batch_cap(model, math.prod(dataset.info.input_shape)))
    pred, labels = predictions(model, dataset, indices, batch_size)
    correct = pred == labels
    summary: dict[str, Any] = {"n_images": n, "clean_accuracy": float(correct.float().mean())}
    report("clean accuracy", 1.0)

    # the one accuracy-against-ε implementation, over the same batches, loaded from the dataset batch by batch
    curve_attack = cfg.classification_attack
    settings = cfg.pgd.model_dump() if curve_attack == "pgd" else cfg.classification_attack_config
    curve = accuracy_vs_eps(model, DatasetImages(dataset, indices), labels, cfg.eps_list, curve_attack,
                            {k: v for k, v in settings.items() if k != "eps"}, batch_size=batch_size,
                            progress=lambda done, total: report("PGD accuracy", done / total))
    summary["pgd_accuracy"] = curve.rows(exact=True)
    if curve_attack != "pgd":
        summary["classification_attack"] = curve_attack  # the curve keeps its key; this says what made it

    per_image: dict[str, Any] = {}
    if cfg.explanation_attack != "none":
        if cfg.pairs_file:
            victims, pairs = _stored_pairs(model, dataset, cfg, summary)
        else:
            chosen = torch.tensor(indices)[correct]  # dataset indices of the correctly classified images
            summary["explanation_skipped_misclassified"] = int((~correct).sum())
            if not needs_targets(cfg.explanation_attack):
                take = (spread_indices(len(chosen), cfg.n_explanation_images) if cfg.subset == "spread"
                        else list(range(min(len(chosen), cfg.n_explanation_images))))
                victims, pairs = chosen[take].tolist(), None
            elif labels[correct].unique().numel() < 2:  # a collapsed model: no pair of two classes to attack
                victims, pairs = [], []
                summary["explanation_note"] = (f"no explanation attack: the correctly classified images "
                                               f"({len(chosen)}) do not cover two classes")
            else:
                local = way2_pairs(labels[correct], cfg.n_explanation_images, seed=cfg.seed)
                pairs = [(int(chosen[v]), int(chosen[t])) for v, t in local]
                victims = [v for v, _ in pairs]
        parts, attack_cfg = [], cfg.attack_config()
        for j, rows in enumerate(_chunks(len(victims), cfg.attack_batch_size)):
            x, y = dataset.batch([victims[r] for r in rows])
            targets = None if pairs is None else dataset.batch([pairs[r][1] for r in rows])[0].to(device)
            parts.append(run_explanation_attack(model, x.to(device), cfg.explanation_attack, config=attack_cfg,
                                                labels=y.to(device), target_images=targets))
            report("explanation attack", min(1.0, (j + 1) * cfg.attack_batch_size / max(len(victims), 1)))
        per_image = {"index": torch.tensor(victims, dtype=torch.long), **concat_per_image(parts)}
        if pairs is not None:
            per_image["target_index"] = torch.tensor([t for _, t in pairs], dtype=torch.long)
        summary["explanation"] = attack_summary(cfg.explanation_attack, per_image, cfg.seed) if victims else {}
        summary["explanation_attack_model"] = parts[0].config.get("attack_model") if parts else None
    return Result(kind="evaluation", config=cfg.model_dump(mode="json"), per_image=per_image, summary=summary,
                  seconds=time.perf_counter() - started)
