"""The study itself: are classification robustness and explanation robustness correlated across models?

Per-model numbers come from evaluations stored on disk, never from a guess:

* the ``evaluation`` block of a model card (``explrobust evaluate --write-card``),
* the result file next to a checkpoint (``<name>.eval.json``, as ``models_zoo/build.sh`` writes it),
* results computed by the dashboard, stored under the runs directory
  (``$EXPLROBUST_RUNS/study/<dataset>/<model>/<protocol>.json``; shipped files are never written).

Evaluations are comparable only when they were measured the same way, so every stored evaluation is
keyed by its *protocol*: its resolved evaluation config without the fields that do not change the
numbers (paths, batch sizes). A model without an evaluation under the chosen protocol is reported
as missing, with the reason, never silently dropped.

Statistics over models: Pearson and Spearman correlation (our own numpy code; the tests check it
against scipy), a percentile bootstrap CI that resamples models, and a permutation p-value (exact
for up to 8 models). With a zoo of ten models these intervals are wide; they are meant to be.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .io import RUNS_ENV, atomic_write_json, check_name, read_json_object, runs_dir

STUDY_SUBDIR = "study"


def study_dir(runs: str | os.PathLike | None = None) -> Path:
    return Path(runs if runs is not None else runs_dir()) / STUDY_SUBDIR


# --------------------------------------------------------------------------- protocols

# fields of an evaluation config that do not change its numbers (or only name where it ran)
_NOT_PROTOCOL = ("checkpoint", "model", "dataset", "preset", "batch_size", "attack_batch_size")


def _attack_blocks(config: dict[str, Any], hook: str) -> dict[str, Any]:
    """``config`` with each registered explanation attack's settings block passed through its info's ``hook``."""
    from .attacks.explanation import EXPLANATION_ATTACKS, attack_info

    out = dict(config)
    for name in EXPLANATION_ATTACKS.names():
        fn = getattr(attack_info(name), hook)
        if fn is not None and isinstance(out.get(name), dict):
            out[name] = fn(out[name])
    return out


def with_legacy_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config from before an option existed says nothing about it; what it did then is written
    out, so re-running it measures the same protocol and its id stays the same: the first n images
    (``subset``), and what each explanation attack's entry says of its settings (``stored_defaults``: e.g.
    pixel-space maps in the targeted attack, which now defaults to the model's input space)."""
    if "n_images" in config and "subset" not in config:
        config = {**config, "subset": "first"}
    return _attack_blocks(config, "stored_defaults")


def attack_of(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the explanation attack a stored evaluation config ran, its settings: stored under the attack's name)."""
    from .evaluate import DEFAULT_ATTACK

    attack = config.get("explanation_attack", DEFAULT_ATTACK)
    settings = config.get(attack, config.get("explanation_attack_config"))
    return attack, settings if isinstance(settings, dict) else {}


def protocol_of(config: dict[str, Any]) -> dict[str, Any]:
    """The part of an evaluation config that decides its numbers (the attacks that did not run are dropped)."""
    from .attacks.explanation import EXPLANATION_ATTACKS

    attack, _ = attack_of(config)
    named = {k: v for k, v in config.items() if k != "explanation_attack_config"}
    if attack != "none" and "explanation_attack_config" in config:  # a config as held, not as stored
        named[attack] = config["explanation_attack_config"]
    cfg = {k: v for k, v in with_legacy_defaults(named).items() if k not in _NOT_PROTOCOL}
    # what every config did before these options existed is left out of the hash, so the ids of results
    # stored before them stay as they were
    if cfg.get("subset") == "first":
        cfg.pop("subset")
    cfg = _attack_blocks(cfg, "unhashed")
    for name in EXPLANATION_ATTACKS.names():
        if attack != name:
            cfg.pop(name, None)
    if cfg.get("pairs_file"):
        cfg["pairs_file"] = Path(str(cfg["pairs_file"])).name  # where the file lies does not matter
    if attack == "none":
        cfg.pop("n_explanation_images", None)
        cfg.pop("pairs_file", None)
    return cfg


def protocol_id(config: dict[str, Any]) -> str:
    """A short stable hash of :func:`protocol_of`."""
    blob = json.dumps(protocol_of(config), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def describe_protocol(config: dict[str, Any]) -> str:
    """One human line: images, PGD, explanation attack (its phrase is its registry entry's)."""
    from .attacks.explanation import describe_attack

    eps = ", ".join(f"{e:g}" for e in config.get("eps_list", []))
    curve_attack = config.get("classification_attack", "pgd")
    curve = (f"PGD {config.get('pgd', {}).get('steps', '?')} steps" if curve_attack == "pgd" else
             f"{curve_attack} ({(config.get(curve_attack) or {}).get('version', 'default')})")
    parts = [f"{config.get('n_images', '?')} {config.get('split', 'test')} images", f"{curve} at ε ∈ {{{eps}}}"]
    attack, settings = attack_of(config)
    parts.append("no explanation attack" if attack == "none" else describe_attack(attack, settings, config))
    return "; ".join(parts)


# --------------------------------------------------------------------------- measures


class _Measures(Mapping):
    """Every study measure, by key, as the registered explanation attacks declare them (label, summary key,
    direction, help): read from the registry on each use, so an attack registered later is in it."""

    def _all(self) -> dict[str, Any]:
        from .attacks.explanation import EXPLANATION_ATTACKS, attack_info

        return {m.key: m for name in EXPLANATION_ATTACKS.names() for m in attack_info(name).measures}

    def __getitem__(self, key: str):
        return self._all()[key]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


EXPLANATION_MEASURES: Mapping[str, Any] = _Measures()
"""``key → ExplanationMeasure`` (see :class:`~explrobust_core.attacks.explanation.ExplanationMeasure`)."""


def measure_value(summary: dict[str, Any], key: str) -> tuple[float, float | None, float | None] | None:
    """(mean, ci_low, ci_high) of an explanation measure in an evaluation summary, or None if absent."""
    expl = summary.get("explanation") or {}
    spec = EXPLANATION_MEASURES[key].summary_key
    if "/" in spec:
        num, den = ((expl.get(k) or {}).get("mean") for k in spec.split("/"))
        if num is None or den in (None, 0):
            return None
        return float(num) / float(den), None, None
    entry = expl.get(spec) or {}
    if entry.get("mean") is None:
        return None
    low, high = entry.get("ci_low"), entry.get("ci_high")
    return float(entry["mean"]), None if low is None else float(low), None if high is None else float(high)


def measures_in(config: dict[str, Any]) -> list[str]:
    """The explanation measures an evaluation protocol reports (those its attack's entry declares)."""
    from .attacks.explanation import EXPLANATION_ATTACKS, attack_info

    attack, _ = attack_of(config)
    return [m.key for m in attack_info(attack).measures] if attack in EXPLANATION_ATTACKS else []


def pgd_accuracy(summary: dict[str, Any], eps: float) -> float | None:
    for row in summary.get("pgd_accuracy") or []:
        if math.isclose(float(row["eps"]), float(eps), rel_tol=1e-6, abs_tol=1e-9):
            return None if row.get("accuracy") is None else float(row["accuracy"])
    return None


# --------------------------------------------------------------------------- methods (paper names)


def method_label(objective: str, objective_config: dict[str, Any]) -> str:
    """The paper's name for a training objective: Normal, MAT, SEP_pos, SEP_neg, TRADES, …"""
    if objective == "natural":
        return "Normal"
    if objective == "pgd_at":
        return "MAT"
    if objective == "sep":
        lam = objective_config.get("lam")
        return "SEP_pos" if lam is not None and lam > 0 else "SEP_neg"
    return {"trades": "TRADES", "ig_norm": "IG-NORM", "ig_sum_norm": "IG-SUM-NORM", "art": "ART"}.get(
        objective, objective)


# --------------------------------------------------------------------------- stored evaluations


@dataclass
class EvaluationRecord:
    """One stored evaluation of one model (summary only; the per-image arrays stay on disk)."""

    model: str  # "dataset/name", as the dashboard names checkpoints
    name: str
    dataset: str
    protocol: str
    config: dict[str, Any]
    summary: dict[str, Any]
    source: str  # "card", "result file" or "study run"
    path: str | None = None
    shipped: bool = False
    created: float | None = None


@dataclass
class ModelInfo:
    model: str
    name: str
    dataset: str
    architecture: str
    objective: str
    objective_config: dict[str, Any]
    epochs: int | None
    weights_sha256: str | None
    path: str
    shipped: bool


@dataclass
class Collection:
    models: dict[str, ModelInfo] = field(default_factory=dict)
    records: list[EvaluationRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # unreadable or stale files, with the reason


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def result_files_beside(weights: Path) -> list[Path]:
    """``<stem>.eval.json`` and ``<stem>.eval.*.json`` next to a checkpoint (what build.sh writes)."""
    stem = weights.with_suffix("")
    found = [stem.with_name(stem.name + ".eval.json"), *sorted(stem.parent.glob(stem.name + ".eval.*.json"))]
    return [p for p in dict.fromkeys(found) if p.is_file()]


def user_result_files(dataset: str, name: str, runs: str | os.PathLike | None = None) -> list[Path]:
    folder = study_dir(runs) / dataset / name
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def evaluation_files(entries: Iterable[Any], runs: str | os.PathLike | None = None) -> list[Path]:
    """Every file :func:`collect` reads (cards, result files, study runs): for cache keys."""
    out: list[Path] = []
    for entry in entries:
        if entry.card is None:
            continue
        out.append(Path(entry.path).with_suffix(".json"))
        out.extend(result_files_beside(Path(entry.path)))
        out.extend(user_result_files(entry.card.dataset, entry.card.name, runs))
    return out


def collect(entries: Iterable[Any], runs: str | os.PathLike | None = None,
            shipped_root: str | os.PathLike | None = None) -> Collection:
    """Every stored evaluation of the given checkpoints (:class:`~explrobust_core.zoo.CheckpointEntry`)."""
    from .zoo import shipped_zoo_dir

    shipped_root = Path(shipped_root) if shipped_root is not None else shipped_zoo_dir()
    out = Collection()
    for entry in entries:
        card = entry.card
        if card is None:
            continue
        model = f"{card.dataset}/{card.name}"
        shipped = _is_under(Path(entry.path), shipped_root)
        out.models[model] = ModelInfo(model, card.name, card.dataset, card.architecture, card.objective,
                                      dict(card.objective_config), card.epochs, card.weights_sha256,
                                      str(entry.path), shipped)
        found: dict[str, EvaluationRecord] = {}
        evaluation = card.metrics.get("evaluation")
        if isinstance(evaluation, dict) and isinstance(evaluation.get("summary"), dict):
            config = evaluation.get("config") or {}
            rec = EvaluationRecord(model, card.name, card.dataset, protocol_id(config), config,
                                   evaluation["summary"], "card", str(Path(entry.path).with_suffix(".json")), shipped)
            found[rec.protocol] = rec
        for path in result_files_beside(Path(entry.path)):  # a result file beats the card's copy of it
            try:
                data = read_json_object(path)
                if data.get("kind") != "evaluation" or not isinstance(data.get("summary"), dict):
                    raise ValueError("not an evaluation result")
                config = data.get("config") or {}
                rec = EvaluationRecord(model, card.name, card.dataset, protocol_id(config), config, data["summary"],
                                       "result file", str(path), shipped, data.get("created"))
                found[rec.protocol] = rec
            except (OSError, ValueError, KeyError, TypeError) as err:
                out.problems.append(f"{path}: unreadable evaluation ({err})")
        for path in user_result_files(card.dataset, card.name, runs):  # the user's own runs beat shipped ones
            try:
                data = read_json_object(path)
                meta = data.get("study") or {}
                if data.get("kind") != "evaluation" or not isinstance(data.get("summary"), dict):
                    raise ValueError("not an evaluation result")
                if meta.get("weights_sha256") != card.weights_sha256:
                    out.problems.append(f"{path}: measured on other weights of {model} (retrained since?); ignored")
                    continue
                config = data.get("config") or {}
                rec = EvaluationRecord(model, card.name, card.dataset, protocol_id(config), config, data["summary"],
                                       "study run", str(path), False, data.get("created"))
                old = found.get(rec.protocol)
                if old is None or old.source != "study run" or (rec.created or 0) >= (old.created or 0):
                    found[rec.protocol] = rec
            except (OSError, ValueError, KeyError, TypeError) as err:
                out.problems.append(f"{path}: unreadable evaluation ({err})")
        out.records.extend(found.values())
    return out


def protocols(collection: Collection, dataset: str) -> list[dict[str, Any]]:
    """The protocols measured on ``dataset``: id, config, number of models, whether the zoo build used it.
    Most models first."""
    counts: Counter[str] = Counter()
    configs: dict[str, dict[str, Any]] = {}
    shipped: set[str] = set()
    for rec in collection.records:
        if rec.dataset != dataset:
            continue
        counts[rec.protocol] += 1
        configs.setdefault(rec.protocol, rec.config)
        if rec.shipped and rec.source != "study run":
            shipped.add(rec.protocol)
    return [{"id": pid, "config": configs[pid], "n_models": n, "shipped": pid in shipped}
            for pid, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] not in shipped, kv[0]))]


def records_for(collection: Collection, dataset: str, protocol: str) -> dict[str, EvaluationRecord]:
    return {r.model: r for r in collection.records if r.dataset == dataset and r.protocol == protocol}


# --------------------------------------------------------------------------- per-model rows


def model_rows(collection: Collection, dataset: str, protocol: str, eps: float, measure: str) -> list[dict[str, Any]]:
    """One row per model of ``dataset``: its method and, where an evaluation under ``protocol`` is
    stored, clean accuracy, PGD accuracy at ``eps`` and the explanation measure. Models without one
    are rows too, with ``status`` saying so."""
    found = records_for(collection, dataset, protocol)
    rows = []
    for model, info in sorted(collection.models.items()):
        if info.dataset != dataset:
            continue
        row: dict[str, Any] = {
            "model": model, "name": info.name, "method": method_label(info.objective, info.objective_config),
            "objective": info.objective, "architecture": info.architecture, "epochs": info.epochs,
            "beta": info.objective_config.get("beta") if info.objective == "trades" else None,
            "lam": info.objective_config.get("lam") if info.objective == "sep" else None,
            # the input space of SEP's maps (a card from before the option: pixel space)
            "space": info.objective_config.get("space", "pixel") if info.objective == "sep" else None,
            "clean_accuracy": None, "pgd_accuracy": None, "eps": eps, "measure": measure,
            "value": None, "value_ci_low": None, "value_ci_high": None,
            "le_start": None, "le_end": None, "status": "missing", "source": None, "path": None, "n_images": None,
            **{f"m_{key}": None for key in EXPLANATION_MEASURES},
        }
        rec = found.get(model)
        if rec is None:
            row["status"] = "missing: no stored evaluation under this protocol"
        else:
            s = rec.summary
            row.update(source=rec.source, path=rec.path, status="ok", n_images=s.get("n_images"),
                       clean_accuracy=s.get("clean_accuracy"), pgd_accuracy=pgd_accuracy(s, eps))
            got = measure_value(s, measure)
            if got is not None:
                row["value"], row["value_ci_low"], row["value_ci_high"] = got
            for key in EXPLANATION_MEASURES:
                v = measure_value(s, key)
                row[f"m_{key}"] = None if v is None else v[0]
            row["le_start"], row["le_end"] = row["m_le_start"], row["m_le_end"]
            if row["pgd_accuracy"] is None:
                row["status"] = f"incomplete: no PGD accuracy at ε={eps:g}"
            elif row["value"] is None:
                row["status"] = f"incomplete: no {EXPLANATION_MEASURES[measure].label}"
        rows.append(row)
    return rows


def split_rows(rows: list[dict[str, Any]], min_clean_accuracy: float = 0.0,
               leave_out: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(used, left out with a reason) for the correlation."""
    used, out = [], []
    for row in rows:
        reason = None
        if row["status"] != "ok":
            reason = row["status"]
        elif row["model"] in leave_out:
            reason = "left out by hand"
        elif row["clean_accuracy"] is not None and row["clean_accuracy"] < min_clean_accuracy:
            reason = (f"clean accuracy {100 * row['clean_accuracy']:.1f}% is below {100 * min_clean_accuracy:.0f}% "
                      "(a collapsed model)")
        (out if reason else used).append(row if reason is None else {**row, "reason": reason})
    return used, out


# --------------------------------------------------------------------------- statistics


def pearson_r(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis; NaN where either side is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xm = x - x.mean(-1, keepdims=True)
    ym = y - y.mean(-1, keepdims=True)
    # scale each side first: no overflow/underflow for values like 1e-7 or 1e4
    xs = np.abs(xm).max(-1, keepdims=True)
    ys = np.abs(ym).max(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = xm / xs
        ym = ym / ys
        r = (xm * ym).sum(-1) / np.sqrt((xm * xm).sum(-1) * (ym * ym).sum(-1))
    return np.clip(r, -1.0, 1.0)


def spearman_over_models(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ along the last axis: Pearson r of the average ranks (:func:`~explrobust_core.metrics.average_ranks`,
    in float64)."""
    import torch

    from .metrics import average_ranks

    def ranks(values: np.ndarray) -> np.ndarray:
        a = np.asarray(values, dtype=np.float64)
        return average_ranks(torch.tensor(a.reshape(-1, a.shape[-1]))).numpy().reshape(a.shape)

    return pearson_r(ranks(x), ranks(y))


_CORRELATIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "pearson": pearson_r, "spearman": spearman_over_models}


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) resamples of n items with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def permutation_p(x: np.ndarray, y: np.ndarray, method: str = "spearman", n_perm: int = 9999, seed: int = 0,
                  exact_up_to: int = 8) -> tuple[float, bool]:
    """Two-sided permutation p-value of the correlation (``scipy.stats.permutation_test`` over pairings: twice the
    smaller one-sided p); exact over all n! pairings for n ≤ ``exact_up_to``. Returns (p, exact)."""
    from scipy.stats import permutation_test

    stat = _CORRELATIONS[method]
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    exact = x.size <= exact_up_to
    res = permutation_test((y,), lambda yy, axis=-1: stat(np.broadcast_to(x, yy.shape), yy),
                           permutation_type="pairings", vectorized=True, alternative="two-sided",
                           n_resamples=np.inf if exact else n_perm, random_state=seed)
    return float(res.pvalue), exact


def correlation(x: Sequence[float], y: Sequence[float], method: str = "spearman", *, n_boot: int = 2000,
                confidence: float = 0.95, seed: int = 0, n_perm: int = 9999) -> dict[str, Any]:
    """Correlation of x and y over models, a percentile bootstrap CI that resamples models (resamples
    in which one side is constant are skipped and counted) and a permutation p-value."""
    if method not in _CORRELATIONS:
        raise ValueError(f"correlation method must be one of {', '.join(_CORRELATIONS)}, not {method!r}")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError("x and y need the same length")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ValueError("x and y must be finite numbers")
    n = int(xa.size)
    out: dict[str, Any] = {"method": method, "n": n, "r": None, "ci_low": None, "ci_high": None, "p": None,
                           "p_exact": None, "confidence": confidence, "n_boot": n_boot, "n_boot_valid": 0,
                           "note": None}
    if n < 3:
        out["note"] = f"needs at least 3 models, got {n}"
        return out
    r = float(_CORRELATIONS[method](xa, ya))
    if not math.isfinite(r):
        out["note"] = "one of the two is the same for every model"
        return out
    out["r"] = r
    idx = bootstrap_indices(n, n_boot, seed)
    boots = _CORRELATIONS[method](xa[idx], ya[idx])
    boots = boots[np.isfinite(boots)]
    out["n_boot_valid"] = int(boots.size)
    if boots.size:
        tail = (1 - confidence) / 2 * 100
        out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(boots, [tail, 100 - tail]))
    out["p"], out["p_exact"] = permutation_p(xa, ya, method, n_perm=n_perm, seed=seed)
    return out


@functools.lru_cache(maxsize=64)
def _per_image_of(path: str, mtime_ns: int) -> dict[str, Any]:
    """A result file's per-image table, read once per version of the file (the page asks on every rerun, for
    the common pairs and the two-level interval)."""
    return read_json_object(Path(path)).get("per_image") or {}


def pair_table(path: str | os.PathLike | None, measure: str) -> dict[tuple[int, int], float] | None:
    """``{(victim, target): value}`` of a per-pair measure in a stored result file (its per-image table; the
    target is -1 for an untargeted attack), the pairs whose prediction the attack kept. None for a card (a
    summary only) or a measure that is not a per-pair mean."""
    spec = EXPLANATION_MEASURES[measure].summary_key
    if path is None or "/" in spec or not str(path).endswith(".json"):
        return None
    try:
        p = _per_image_of(str(path), Path(path).stat().st_mtime_ns)
    except (OSError, ValueError):
        return None
    values, victims = p.get(spec), p.get("index")
    if not isinstance(values, list):
        return None
    n = len(values)
    victims = victims if isinstance(victims, list) and len(victims) == n else list(range(n))
    targets = p.get("target_index") if isinstance(p.get("target_index"), list) else [-1] * n
    attacked = p.get("attacked") if isinstance(p.get("attacked"), list) else [True] * n
    kept = ([a == b for a, b in zip(p["final_pred"], p["label"])]
            if isinstance(p.get("final_pred"), list) and isinstance(p.get("label"), list) else [True] * n)
    return {(int(v), int(t)): float(x) for v, t, x, a, k in zip(victims, targets, values, attacked, kept)
            if a and k and isinstance(x, (int, float)) and math.isfinite(x)}


def pair_values(path: str | os.PathLike | None, measure: str) -> np.ndarray | None:
    """The values of :func:`pair_table` as an array (None when there is no per-pair table)."""
    table = pair_table(path, measure)
    return None if not table else np.fromiter(table.values(), dtype=np.float64)


def on_common_pairs(rows: list[dict[str, Any]], measure: str) -> tuple[list[dict[str, Any]], int] | None:
    """The rows with their measure re-averaged over the pairs every row's model kept (so each model is scored on
    the same victim–target pairs), and how many pairs that is; None when a row has no per-pair table."""
    tables = [pair_table(r.get("path"), measure) for r in rows]
    if not rows or any(not t for t in tables):
        return None
    common = set.intersection(*(set(t) for t in tables))
    if not common:
        return None
    out = []
    for row, table in zip(rows, tables):
        values = np.array([table[k] for k in sorted(common)])
        sem = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else 0.0
        out.append({**row, "value": float(values.mean()), "value_ci_low": float(values.mean() - 1.96 * sem),
                    "value_ci_high": float(values.mean() + 1.96 * sem), "n_pairs": int(values.size)})
    return out, len(common)


def two_level_interval(accuracy: Sequence[float], n_images: Sequence[int], values: Sequence[np.ndarray],
                       method: str = "spearman", *, n_boot: int = 2000, confidence: float = 0.95,
                       seed: int = 0) -> dict[str, Any]:
    """A bootstrap interval of the correlation over models that also carries each model's own measurement
    error: every resample draws models with replacement (level 1), then each drawn model's PGD accuracy from
    Binomial(n_images, accuracy) / n_images and its explanation measure as the mean of a resample of its own
    pairs (level 2). Resamples in which one side is constant are skipped and counted."""
    rng = np.random.default_rng(seed)
    n = len(values)
    acc = np.asarray(accuracy, dtype=np.float64)
    sizes = np.asarray(n_images, dtype=np.int64)
    x_draws = rng.binomial(sizes[:, None], acc[:, None], size=(n, n_boot)) / sizes[:, None]  # (models, n_boot)
    y_draws = np.stack([v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1) for v in values])
    models = rng.integers(0, n, size=(n_boot, n))
    cols = np.arange(n_boot)[:, None]
    boots = _CORRELATIONS[method](x_draws[models, cols], y_draws[models, cols])
    boots = boots[np.isfinite(boots)]
    tail = (1 - confidence) / 2 * 100
    low, high = (float(v) for v in np.percentile(boots, [tail, 100 - tail])) if boots.size else (None, None)
    return {"ci_low": low, "ci_high": high, "n_boot_valid": int(boots.size), "confidence": confidence}


def two_level_for_rows(rows: list[dict[str, Any]], measure: str, method: str = "spearman", **kw) -> dict | None:
    """:func:`two_level_interval` for the study's rows, when every row's evaluation is a stored result file with
    per-pair values (a card holds only means); None otherwise."""
    values = [pair_values(r.get("path"), measure) for r in rows]
    if len(rows) < 3 or any(v is None or v.size < 2 for v in values) or any(not r.get("n_images") for r in rows):
        return None
    return two_level_interval([r["pgd_accuracy"] for r in rows], [r["n_images"] for r in rows], values, method, **kw)


def describe_correlation(stats: dict[str, Any], higher_is_robust: bool = True) -> str:
    """A plain-language reading of a correlation between classification and explanation robustness."""
    r = stats.get("r")
    if r is None:
        return f"No correlation: {stats.get('note') or 'not enough data'}."
    agree = r if higher_is_robust else -r
    size = "strongly" if abs(r) >= 0.7 else "moderately" if abs(r) >= 0.4 else "weakly"
    way = "go together" if agree > 0 else "go against each other"
    name = {"spearman": "Spearman ρ", "pearson": "Pearson r"}[stats["method"]]
    text = f"{name} = {r:.2f} over {stats['n']} models: the two robustnesses {size} {way}"
    if stats.get("ci_low") is not None:
        covers = stats["ci_low"] <= 0 <= stats["ci_high"]
        text += (f"; the {100 * stats['confidence']:.0f}% bootstrap CI [{stats['ci_low']:.2f}, {stats['ci_high']:.2f}] "
                 + ("includes 0, so the data do not settle the sign" if covers else "excludes 0"))
    return text + "."


def correlation_table(rows: list[dict[str, Any]], measures: Sequence[str], *, n_boot: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """Spearman and Pearson of PGD accuracy against each measure, over the rows that have both."""
    out = []
    for key in measures:
        pairs = [(r["pgd_accuracy"], r[f"m_{key}"]) for r in rows
                 if r.get("pgd_accuracy") is not None and r.get(f"m_{key}") is not None]
        row: dict[str, Any] = {"measure": EXPLANATION_MEASURES[key].label,
                               "higher is more robust": EXPLANATION_MEASURES[key].higher_is_robust, "n": len(pairs)}
        for method in ("spearman", "pearson"):
            if len(pairs) < 3:
                s = {"r": None, "ci_low": None, "ci_high": None, "p": None}
            else:
                x, y = zip(*pairs)
                s = correlation(x, y, method, n_boot=n_boot, confidence=confidence, seed=seed)
            row.update({method: s["r"], f"{method} CI low": s["ci_low"], f"{method} CI high": s["ci_high"],
                        f"{method} p": s["p"]})
        out.append(row)
    return out


# --------------------------------------------------------------------------- the paper's views


def trades_sweep(rows: list[dict[str, Any]], include_natural: bool = True) -> list[dict[str, Any]]:
    """The TRADES models ordered by β; the natural model joins as β = 0 (TRADES's loss with β = 0 is
    plain cross-entropy) when it has the TRADES models' architecture and epochs."""
    trades = [r for r in rows if r["objective"] == "trades" and r["beta"] is not None]
    out = [{**r, "sweep_beta": float(r["beta"])} for r in trades]
    if include_natural and trades:
        recipe = {(r["architecture"], r["epochs"]) for r in trades}
        out += [{**r, "sweep_beta": 0.0} for r in rows if r["objective"] == "natural"
                and (r["architecture"], r["epochs"]) in recipe]
    return sorted(out, key=lambda r: (r["sweep_beta"], r["model"]))


_SEP_ORDER = {"Normal": 0, "MAT": 1, "SEP_pos": 2, "SEP_neg": 3}


def sep_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Normal / MAT / SEP_pos / SEP_neg rows in the paper's order (several SEP_neg by λ, strongest last)."""
    chosen = [r for r in rows if r["method"] in _SEP_ORDER]
    chosen.sort(key=lambda r: (r["architecture"], _SEP_ORDER[r["method"]], abs(r["lam"] or 0), r["model"]))
    out = []
    for r in chosen:
        start, end = r["le_start"], r["le_end"]
        out.append({
            "model": r["architecture"], "method": r["method"], "checkpoint": r["name"],
            "λ": r["lam"], "maps": r.get("space"), "L_e start ×1e-7": start, "L_e end ×1e-7": end,
            "end / start": None if start in (None, 0) or end is None else end / start,
            "Acc clean %": None if r["clean_accuracy"] is None else 100 * r["clean_accuracy"],
            f"Acc adv % (ε={r['eps']:g})": None if r["pgd_accuracy"] is None else 100 * r["pgd_accuracy"],
            "status": r["status"],
        })
    return out


# The SEP paper's main table, MNIST rows (research/sep_paper.md §7.1; L_e ×10⁻⁷, accuracy in %),
# for orientation only: their protocol, ε and training budget are not ours.
_PAPER_COLUMNS = ("model", "method", "L_e start ×1e-7", "L_e end ×1e-7", "Acc clean %", "Acc adv %")
PAPER_MNIST_TABLE: list[dict[str, Any]] = [dict(zip(_PAPER_COLUMNS, row)) for row in [
    ("ConvNet", "Normal", 261.183, 204.825, 99.29, 0.00),
    ("ConvNet", "MAT", 373.262, 298.729, 99.00, 89.92),
    ("ConvNet", "SEP_pos", 93.033, 61.545, 98.8, 89.4),
    ("ConvNet", "SEP_neg", 806.204, 657.180, 98.97, 90.34),
    ("ResNet18", "Normal", 266.834, 146.16, 99.36, 0.00),
    ("ResNet18", "MAT", 916.017, 778.003, 99.28, 94.60),
    ("ResNet18", "SEP_pos", 92.371, 59.278, 98.4, 91.63),
    ("ResNet18", "SEP_neg", 9356.306, 8248.627, 99.4, 93.95),
]]


# --------------------------------------------------------------------------- computing missing evaluations


def quick_config(dataset: str, base: dict[str, Any] | None = None, shipped_root: str | os.PathLike | None = None,
                 channels: int = 1):
    """A fast evaluation in the spirit of ``base`` (the zoo's protocol, if any): 200 images, 10 PGD
    steps, the targeted attack for 50 steps on the first 30 stored pairs. Without a base, ε is
    0.1/0.2/0.3 for one-channel (MNIST-like) data and 2/255, 4/255, 8/255 for colour images.
    Deterministic, so its protocol id is stable."""
    from .evaluate import make_evaluation_config
    from .zoo import shipped_zoo_dir

    base = {k: v for k, v in (base or {}).items() if k not in ("checkpoint", "model", "dataset", "preset")}
    eps_list = list(base.get("eps_list") or ([0.1, 0.2, 0.3] if channels == 1 else [2 / 255, 4 / 255, 8 / 255]))
    pairs = Path(shipped_root if shipped_root is not None else shipped_zoo_dir()) / dataset / "pairs_way3.json"
    targeted = dict(base.get("targeted") or {"explainer": "gradient_x_input", "explainer_options": {"space": "model"}})
    targeted.update(steps=min(int(targeted.get("steps", 50)), 50), record_every=25)
    pgd = dict(base.get("pgd") or {})
    pgd.update(steps=10, step_size=round(2.5 * max(eps_list, default=0.3) / 10, 6))
    return make_evaluation_config(
        split=base.get("split", "test"), n_images=min(int(base.get("n_images", 200)), 200), batch_size=200,
        eps_list=eps_list, pgd=pgd, explanation_attack="targeted", targeted=targeted,
        n_explanation_images=min(int(base.get("n_explanation_images", 30)), 30), attack_batch_size=30,
        pairs_file=str(pairs) if pairs.is_file() else None, seed=int(base.get("seed", 0)))


def quick_config_for(collection: Collection, dataset: str, entries: Iterable[Any]):
    """The quick protocol of ``dataset`` as the Robustness study page offers it: built on the shipped
    zoo's protocol when there is one (so page runs and background jobs fill the same column)."""
    found = protocols(collection, dataset)
    base = next((p["config"] for p in found if p["shipped"]), found[0]["config"] if found else None)
    channels = next(e.card.input_shape[0] for e in entries if e.card is not None and e.card.dataset == dataset)
    return quick_config(dataset, base, channels=channels)


def quick_protocol(dataset: str, runs: str | os.PathLike | None = None):
    """The quick protocol of ``dataset`` for the whole zoo (shipped + user), the same one the
    Robustness study page, the Training jobs page and ``explrobust sweep`` use, so their results
    fill the same column."""
    from .data import known_info
    from .zoo import list_checkpoints, shipped_zoo_dir, user_zoo_dir

    entries = [e for e in list_checkpoints(shipped_zoo_dir(), user_zoo_dir())
               if e.card is not None and e.card.dataset == dataset]
    if entries:
        return quick_config_for(collect(entries, runs), dataset, entries)
    info = known_info(dataset)
    return quick_config(dataset, channels=info.input_shape[0] if info else 1)


def runnable_config(config: dict[str, Any], dataset: str, shipped_root: str | os.PathLike | None = None):
    """A stored evaluation's config, ready to run again: its provenance fields dropped and a relative
    pair file (as the zoo build records it) found again in the shipped zoo."""
    from .evaluate import make_evaluation_config
    from .zoo import shipped_zoo_dir

    values = {k: v for k, v in with_legacy_defaults(config).items()
              if k not in ("checkpoint", "model", "dataset", "preset")}
    if values.get("pairs_file") and not Path(values["pairs_file"]).is_file():
        root = Path(shipped_root) if shipped_root is not None else shipped_zoo_dir()
        found = root / dataset / Path(str(values["pairs_file"])).name
        if not found.is_file():
            raise FileNotFoundError(f"the pair file {values['pairs_file']} of this protocol is not here "
                                    f"(looked in {found.parent})")
        values["pairs_file"] = str(found)
    return make_evaluation_config(**values)


def result_path(dataset: str, name: str, protocol: str, runs: str | os.PathLike | None = None) -> Path:
    return (study_dir(runs) / check_name(dataset, "dataset name") / check_name(name, "model name")
            / f"{check_name(protocol, 'protocol id')}.json")


def store_result(result, info: ModelInfo, preset: str, runs: str | os.PathLike | None = None,
                 shipped_root: str | os.PathLike | None = None) -> Path:
    """Write an evaluation :class:`~explrobust_core.results.Result` into the runs directory, atomically.
    Refuses to write inside the shipped zoo."""
    from .zoo import shipped_zoo_dir

    result.config.update(checkpoint=info.path, model=info.name, dataset=info.dataset, preset=preset)
    pid = protocol_id(result.config)
    path = result_path(info.dataset, info.name, pid, runs)
    root = Path(shipped_root) if shipped_root is not None else shipped_zoo_dir()
    if _is_under(path, root):
        raise ValueError(f"refusing to write {path}: it lies inside the shipped zoo {root}; set {RUNS_ENV} elsewhere")
    data = result.to_dict()
    data["study"] = {"model": info.model, "dataset": info.dataset, "name": info.name, "preset": preset,
                     "protocol": pid, "weights_sha256": info.weights_sha256}
    atomic_write_json(path, data)
    return path


def evaluate_and_store(model, info: ModelInfo, dataset, config, *, preset: str = "quick",
                       runs: str | os.PathLike | None = None, progress: Callable[[str, float], None] | None = None,
                       shipped_root: str | os.PathLike | None = None) -> Path:
    """Run :func:`~explrobust_core.evaluate.evaluate_model` and store the result (see :func:`store_result`)."""
    from .evaluate import evaluate_model

    result = evaluate_model(model, dataset, config, progress=progress)
    return store_result(result, info, preset, runs, shipped_root)


def measure_models(names: Sequence[str], collection: Collection, data, config, *, preset: str,
                   load_model: Callable[[str], Any], runs: str | os.PathLike | None = None,
                   progress: Callable[[float, str], None] | None = None) -> tuple[list[str], list[str]]:
    """Evaluate each named model of ``collection`` on ``data`` and store the results (the Robustness study's
    "Measure models"); one failing model does not stop the others. Returns (done, failed) as lines to show."""
    from .evaluate import overall_fraction

    done, failed = [], []
    for i, name in enumerate(names):
        def report(stage: str, fraction: float, i: int = i, name: str = name) -> None:
            if progress:
                progress(min(1.0, (i + overall_fraction(stage, fraction)) / len(names)),
                         f"{name} ({i + 1}/{len(names)}): {stage} {fraction:.0%}")
        try:
            info = collection.models[name]
            path = evaluate_and_store(load_model(info.path), info, data, config, preset=preset, runs=runs,
                                      progress=report)
            done.append(f"{name} → {path}")
        except Exception as err:  # noqa: BLE001 — one bad model must not hide the others' results
            failed.append(f"{name}: {err}")
    return done, failed
