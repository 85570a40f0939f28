"""Result objects: per-image arrays + summary + resolved config, serialisable to JSON and CSV."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .io import atomic_write_json, atomic_write_text, finite_json, library_versions


def summarize(values: Any, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, float | int | None]:
    """Mean, std, and a percentile bootstrap CI of the mean over the finite values."""
    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    out = {"n": int(arr.size), "mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}
    rng = np.random.default_rng(seed)
    boots = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(boots, [tail, 100 - tail]))
    return out


def _jsonable(value: Any) -> Any:
    """Tensors and arrays as (nested) lists, non-finite floats as None (:func:`io.finite_json`)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.ndim else value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return finite_json(value)


@dataclass
class Result:
    """What every long computation returns.

    ``per_image`` maps a column name to one value per image (tensors or lists), ``summary`` holds
    aggregate numbers, ``config`` the resolved configuration, ``extra`` anything else that is data
    (trajectories, curves). Tensors that are not data to export (adversarial images) go in
    ``tensors`` and are left out of JSON/CSV.
    """

    kind: str
    config: dict[str, Any]
    per_image: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=library_versions)
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({
            "kind": self.kind, "config": self.config, "summary": self.summary, "per_image": self.per_image,
            "extra": self.extra, "seconds": round(self.seconds, 3), "versions": self.versions, "created": self.created,
        })

    def to_csv(self) -> str:
        """One row per image, one column per per-image array."""
        cols = {k: _jsonable(v) for k, v in self.per_image.items()}
        n = max((len(v) for v in cols.values()), default=0)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(list(cols))
        for i in range(n):
            writer.writerow([cols[k][i] if i < len(cols[k]) else "" for k in cols])
        return buf.getvalue()

    def save(self, json_path, csv_path=None) -> None:
        atomic_write_json(json_path, self.to_dict())
        if csv_path is not None:
            atomic_write_text(csv_path, self.to_csv())


def concat_per_image(parts: list[Result]) -> dict[str, Any]:
    """Join the per-image columns of results computed on consecutive chunks of images."""
    if not parts:
        return {}
    out = {}
    for key in parts[0].per_image:
        cols = [p.per_image[key] for p in parts]
        out[key] = torch.cat([torch.as_tensor(c).cpu() for c in cols]) if all(
            isinstance(c, torch.Tensor) for c in cols) else [v for c in cols for v in c]
    return out
