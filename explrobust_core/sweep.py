"""Sweeps: a grid over one or two fields of a training objective's config, as background jobs.

Each grid point is one training job that, when it has trained, evaluates its model under one
protocol (``TrainJobSpec.evaluate_after``) and stores the result where the Robustness study page
reads it. The sweep itself is a small JSON state under ``RUNS/sweeps/NAME.json`` (its spec and the
job of each point), so submitting the same sweep again resumes it: points whose job was
interrupted, cancelled or failed are resumed from their last saved state, points whose job is
missing are submitted again, finished ones are kept. The result is a table (the swept values
against clean accuracy, PGD accuracy, L_e start and L_e end — the SEP paper's λ-sensitivity and
TRADES tables) and a figure (:func:`figures.sweep_figure`).

``python -m explrobust_core.sweep table DIR`` builds the same table from evaluation results kept
as ``DIR/NAME.sweep.json`` beside their checkpoints (how ``models_zoo/sep_sweep.sh`` records the
regime search behind the shipped SEP models).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from pathlib import Path
from typing import Any, Sequence

from pydantic import Field, ValidationError, field_validator, model_validator

from .io import atomic_write_json, atomic_write_text, check_name, runs_dir
from .registry import Config, ConfigError, format_validation_error

MAX_POINTS = 64
GridValue = float | str | bool  # numbers as floats: pydantic takes 10.0 for an integer field


class SweepSpec(Config):
    """A validated sweep: the base training run, the grid, the protocol and the parallelism."""

    name: str = Field(..., description="sweep name; point k is trained as NAME_FIELDVALUE…")
    train: dict[str, Any] = Field(default_factory=dict, description="the TrainConfig every point starts from")
    grid: dict[str, list[GridValue]] = Field(..., description="one or two objective-config fields → their values "
                                                              "(at most 64 points, checked below)")
    evaluate: dict[str, Any] = Field(default_factory=dict,
                                     description="protocol of every point: {'preset': …, 'evaluation': {…}}")
    max_parallel: int = Field(1, ge=1, le=64, description="points trained at once")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        check_name(v, "sweep name")
        if len(v) > 40:
            raise ValueError("sweep name: at most 40 characters (point names add the swept values)")
        return v

    @field_validator("grid")
    @classmethod
    def _grid_shape(cls, grid: dict[str, list[GridValue]]) -> dict[str, list[GridValue]]:
        if not 1 <= len(grid) <= 2:
            raise ValueError(f"grid: sweep one or two fields, got {len(grid)}")
        for field, values in grid.items():
            if not values:
                raise ValueError(f"grid.{field}: give at least one value")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"grid.{field}: repeated values")
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ValueError(f"grid.{field}: values must be finite")
        n = math.prod(len(v) for v in grid.values())
        if n > MAX_POINTS:
            raise ValueError(f"grid: {n} points, more than the {MAX_POINTS} allowed")
        return grid

    @model_validator(mode="after")
    def _points_are_valid(self) -> "SweepSpec":
        from .jobs import EvaluationRequest
        from .training.objectives import OBJECTIVES

        objective = self.train.get("objective", "natural")
        fields = OBJECTIVES.get(objective).config.model_fields
        for field in self.grid:
            if field not in fields:
                raise ValueError(f"grid.{field}: not a field of {objective}'s config "
                                 f"(choose from {', '.join(fields) or 'none: it has no options'})")
        if "name" in self.train:
            raise ValueError("train.name: the sweep names its points; leave it out")
        names = [point_name(self.name, values) for values in grid_points(self.grid)]
        if len(set(names)) != len(names):
            raise ValueError("grid: two values give the same point name (e.g. 1e6 and 1000001); space them further")
        for values in grid_points(self.grid):
            point_config(self, values)  # each point must be a valid training run
        EvaluationRequest(**self.evaluate)
        return self


def grid_points(grid: dict[str, list[GridValue]]) -> list[dict[str, GridValue]]:
    fields = list(grid)
    return [dict(zip(fields, combo)) for combo in itertools.product(*(grid[f] for f in fields))]


def _value_text(value: GridValue) -> str:
    text = format(value, "g") if isinstance(value, float) else str(value)
    return text.replace("+", "").replace("-", "m")  # 1e+06 → 1e06, −3000 → m3000 (a safe file name)


def point_name(sweep: str, values: dict[str, GridValue]) -> str:
    return check_name("_".join([sweep] + [f"{k}{_value_text(v)}" for k, v in values.items()]), "sweep point name")


def point_config(spec: SweepSpec, values: dict[str, GridValue]):
    """The TrainConfig of one point; a value out of range is refused with the field and value named."""
    from .training.trainer import TrainConfig

    train = dict(spec.train)
    train["objective_config"] = {**train.get("objective_config", {}), **values}
    train["name"] = point_name(spec.name, values)
    try:
        return TrainConfig(**train)
    except ValidationError as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        raise ValueError(f"grid point {shown}: {format_validation_error(err, 'training config')}") from None


def parse_grid(items: Sequence[str]) -> dict[str, list[GridValue]]:
    """``["lam=-3000,1000", "sigma=0.1,0.2"]`` → ``{"lam": [-3000.0, 1000.0], "sigma": [0.1, 0.2]}``."""
    grid: dict[str, list[GridValue]] = {}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep or not field or not text:
            raise ConfigError(f"--grid {item!r}: write FIELD=V1,V2,…")
        if field in grid:
            raise ConfigError(f"--grid: {field} is given twice")
        grid[field] = [_parse_value(v.strip()) for v in text.split(",") if v.strip()]
    return grid


def _parse_value(text: str) -> GridValue:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return text


def make_spec(**values) -> SweepSpec:
    try:
        return SweepSpec(**values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "sweep")) from None


# --------------------------------------------------------------------------- running


def sweeps_dir(runs: str | Path | None = None) -> Path:
    return Path(runs) if runs is not None else runs_dir()


def state_path(name: str, runs: str | Path | None = None) -> Path:
    return sweeps_dir(runs) / "sweeps" / f"{check_name(name, 'sweep name')}.json"


def submit(spec: SweepSpec, executor) -> dict[str, Any]:
    """Queue every point (or resume the sweep ``spec.name``); returns the sweep's state."""
    from .jobs import JobNotFound, TrainJobSpec

    path = state_path(spec.name, executor.store.root)
    executor.reconcile()  # after a crash: points whose worker died are "interrupted" now, and resume below
    if path.exists():
        state = load_state(spec.name, executor.store.root)
        stored = SweepSpec(**state["spec"])
        for key in ("train", "grid"):
            if getattr(stored, key) != getattr(spec, key):
                raise ConfigError(f"{key}: a sweep {spec.name!r} with another {key} exists ({path}); choose another "
                                  f"name, or give the same {key} to resume it")
        spec = stored  # resuming keeps the sweep's own protocol and parallelism
    else:
        state = {"spec": spec.model_dump(mode="json"), "points": []}
    executor.store.set_setting("max_concurrent", str(spec.max_parallel))
    known = {p["name"]: p for p in state["points"]}
    for values in grid_points(spec.grid):
        name = point_name(spec.name, values)
        point = known.get(name)
        job = None
        if point is not None:
            try:
                job = executor.store.get(point["job"])
            except JobNotFound:
                job = None
        if job is None:
            job_spec = TrainJobSpec(train=point_config(spec, values), evaluate_after=spec.evaluate, sweep=spec.name)
            job = executor.submit(job_spec)
            point = {"name": name, "values": values, "job": job.id}
            known[name] = point
        elif job.status in ("interrupted", "cancelled", "failed"):
            executor.resume(job.id)
        state["points"] = list(known.values())
        atomic_write_json(path, state)  # after every point: a crash mid-submit loses nothing
    return state


def load_state(name: str, runs: str | Path | None = None) -> dict[str, Any]:
    """A sweep's stored state, checked (a damaged or hand-edited file is a one-line error)."""
    from .io import read_bounded

    path = state_path(name, runs)
    if not path.exists():
        raise ConfigError(f"no sweep named {name!r} in {path.parent}")
    try:
        state = json.loads(read_bounded(path, 16 << 20, "sweep state"))
        SweepSpec(**state["spec"])
        if not all(isinstance(p, dict) and {"name", "values", "job"} <= set(p) for p in state["points"]):
            raise ValueError("malformed points")
    except (ValueError, KeyError, TypeError, ValidationError) as err:
        raise ConfigError(f"the sweep state {path} is damaged ({' '.join(str(err).split())[:200]}); "
                          f"move it away and run the sweep again") from None
    return state


def list_sweeps(runs: str | Path | None = None) -> list[str]:
    folder = sweeps_dir(runs) / "sweeps"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def status_rows(state: dict[str, Any], store) -> list[dict[str, Any]]:
    """One row per point: the swept values, the job's status and, once evaluated, its numbers."""
    from .jobs import JobNotFound

    rows = []
    for point in state["points"]:
        try:
            job = store.get(point["job"])
            status, summary = job.status, (job.result or {}).get("summary")
            fraction = job.progress.get("fraction")
        except JobNotFound:
            status, summary, fraction = "missing", None, None
        rows.append({**point["values"], "model": point["name"], "job": point["job"], "status": status,
                     "fraction": fraction, **summary_numbers(summary)})
    return rows


# --------------------------------------------------------------------------- the table


def summary_numbers(summary: dict[str, Any] | None) -> dict[str, Any]:
    """Clean accuracy, PGD accuracy at the largest ε, L_e start/end (×10⁻⁷, with CIs) of an evaluation."""
    out: dict[str, Any] = {"clean_accuracy": None, "pgd_eps": None, "pgd_accuracy": None, "le_start": None,
                           "le_end": None, "le_end_ci_low": None, "le_end_ci_high": None, "pairs": None}
    if not summary:
        return out
    out["clean_accuracy"] = summary.get("clean_accuracy")
    curve = summary.get("pgd_accuracy") or []
    if curve:
        top = max(curve, key=lambda c: c["eps"])
        out["pgd_eps"], out["pgd_accuracy"] = top["eps"], top["accuracy"]
    explanation = summary.get("explanation") or {}
    start, end = explanation.get("explanation_loss_start_paper"), explanation.get("explanation_loss_end_paper")
    if start and end:
        out.update(le_start=start["mean"], le_end=end["mean"], le_end_ci_low=end["ci_low"],
                   le_end_ci_high=end["ci_high"], pairs=end["n"])
    return out


def whole_split_accuracy(checkpoint: str | Path, split: str = "test") -> dict[str, float]:
    """Clean accuracy over the whole split and that of the worst class (a sweep protocol that measures
    a subset can hide a model that lost a few classes)."""
    from .evaluate import predictions
    from .zoo import dataset_for_card, load_checkpoint

    model, card = load_checkpoint(checkpoint, "cpu")
    dataset = dataset_for_card(card, split)  # with the card's dataset options (an image folder's root)
    pred, labels = predictions(model, dataset, list(range(len(dataset))), 500)
    per_class = [float((pred[labels == c] == c).float().mean()) for c in labels.unique().tolist()]
    return {"clean_accuracy_whole_split": float((pred == labels).float().mean()), "worst_class_accuracy": min(per_class)}


def rows_from_results(folder: str | Path, reference: str | Path | None = None,
                      whole_split: bool = False) -> list[dict[str, Any]]:
    """Rows from ``FOLDER/NAME.sweep.json`` evaluation results; the card of each evaluated checkpoint
    gives the objective and its config (reference models, e.g. the shipped MAT, are labelled by name).
    ``whole_split`` adds each model's clean accuracy over the whole test split and its worst class."""
    from .zoo import read_card

    rows = []
    for path in sorted(Path(folder).glob("*.sweep.json")):
        result = json.loads(path.read_text())
        checkpoint = Path(result["config"]["checkpoint"])
        card = read_card(checkpoint.with_suffix(".json"))
        objective_config = dict(card.objective_config or {})
        if card.objective == "sep":  # a SEP card from before the option: its maps were in pixel space
            objective_config.setdefault("space", "pixel")
        rows.append({"model": path.name.removesuffix(".sweep.json"), "objective": card.objective,
                     **{k: objective_config.get(k) for k in ("lam", "sigma", "space", "reduction", "clamp")},
                     "reference": path.name.startswith("ref_") or (reference is not None
                                                                    and Path(reference) in checkpoint.parents),
                     **summary_numbers(result["summary"]),
                     "subset": result["config"].get("subset", "first"),
                     **(whole_split_accuracy(checkpoint) if whole_split else {})})
    return rows


def write_table(rows: list[dict[str, Any]], json_path: str | Path | None = None, csv_path: str | Path | None = None,
                meta: dict[str, Any] | None = None) -> None:
    if json_path:
        atomic_write_json(json_path, {**(meta or {}), "rows": rows})
    if csv_path:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(csv_path, buf.getvalue())


def shipped_sweep(dataset: str, root: str | Path | None = None) -> dict[str, Any] | None:
    """The regime search behind the shipped SEP models (``models_zoo/DATASET/sep_sweep.json``), if any."""
    from .zoo import shipped_zoo_dir

    path = Path(root if root is not None else shipped_zoo_dir()) / check_name(dataset, "dataset") / "sep_sweep.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m explrobust_core.sweep")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("table", help="the table of a folder of NAME.sweep.json evaluation results")
    p.add_argument("folder")
    p.add_argument("--reference", default=None, help="models under this folder are marked as references")
    p.add_argument("--json", default=None)
    p.add_argument("--csv", default=None)
    p.add_argument("--whole-split", action="store_true", help="add clean accuracy over the whole test split")
    p.add_argument("--note", default="", help="a note stored with the table (shown on the Robustness study page)")
    ns = parser.parse_args(argv)
    rows = rows_from_results(ns.folder, ns.reference, ns.whole_split)
    write_table(rows, ns.json, ns.csv, {"source": "models_zoo/sep_sweep.sh", "note": ns.note})
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
