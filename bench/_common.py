"""Shared helpers of the benchmarks in ``bench/``: report header, interleaved timing, statistics, output.

Every benchmark script builds one JSON report::

    {"benchmark": ..., **header(), "config": {...}, "rows": [...], "table": [...]}

``rows`` hold everything a script measured (all timings, agreement checks); ``table`` holds one
uniform entry per comparison (:func:`table_entry`) that ``bench/run_all.py`` turns into the
Markdown table of bench/REPORT.md. Timings are reported, never asserted on.

Conventions:

* Each side of a comparison is warmed up once (untimed), then timed ``repeats`` times, the sides
  interleaved with alternating order (a, b | b, a | a, b …) so machine noise and order effects hit
  both alike (:func:`run_interleaved`).
* Per side: median, min, max, quartiles and IQR of the wall times (:func:`stats`).
* ``speedup = peer_median / ours_median``: > 1 means we are faster (2.0 → the peer takes twice our
  time). Rows that compare with a *floor* (a plain forward+backward, a minimal app) report
  ``cost = ours_median / floor_median`` instead: how many floors ours costs (lower is better).
  Both come with the range of the per-repeat ratios (repeat i of one side against repeat i of the
  other), the spread of the ratio itself.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the scripts work without the editable install too
    sys.path.insert(0, str(REPO_ROOT))

# the distributions whose versions every report records (absent ones are left out)
VERSIONED = ("explrobust", "torch", "torchvision", "captum", "streamlit", "numpy", "scikit-learn", "umap-learn",
             "numba", "quantus", "playwright")


# --------------------------------------------------------------------------- arguments


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--quick``, ``--repeats``, ``--threads``, ``--seed``, ``--out``: the flags every benchmark takes."""
    p.add_argument("--quick", action="store_true", help="few repeats and small sizes: a smoke test, not a measurement")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per side (each script has its default)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's choice; 1 steadies a busy machine)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, data order and random draws (default 0)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report to this file")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what a sample measures: wall time (default) or this process's CPU time, which a "
                        "crowded machine's scheduling inflates much less (one thread: the work done)")
    return p


def resolve_defaults(args: argparse.Namespace, defaults: dict[str, tuple[Any, Any]],
                     parser: argparse.ArgumentParser | None = None, positive: Iterable[str] = ()) -> argparse.Namespace:
    """Fill ``None`` arguments from ``defaults[name] = (quick, full)``; check that ``positive`` ones are ≥ 1."""
    for name, (quick, full) in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, quick if args.quick else full)
    for name in (*defaults, *positive):
        value = getattr(args, name)
        if isinstance(value, (int, float)) and value < 1:
            message = f"--{name.replace('_', '-')} must be at least 1"
            if parser is not None:
                parser.error(message)
            raise SystemExit(message)
    if args.threads is not None:
        limit_threads(args.threads)
    use_clock(getattr(args, "clock", "wall"))
    return args


_CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def use_clock(name: str) -> None:
    """Time samples with ``"wall"`` (perf_counter) or ``"cpu"`` (process_time); recorded in every report."""
    global _clock
    _clock = _CLOCK[name]


THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def limit_threads(n: int) -> None:
    """Use ``n`` threads in torch and in the BLAS/OpenMP pools of this process, and tell child processes
    (environment). On a shared machine oversubscribed thread pools spin against other processes and
    make times balloon (a 784×60 QR: 3 ms on one thread, 40–800 ms on two under load)."""
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    from explrobust_core.cpu_memory import reuse_freed_memory

    reuse_freed_memory()  # as the CLI, the dashboard and job workers do: both sides of every row share it
    import torch

    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)  # not a context manager: holds for the rest of the process
    except ImportError:
        pass


# --------------------------------------------------------------------------- report header


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    out.update({d: v for d in VERSIONED if (v := version(d)) is not None})
    return out


def git_state() -> dict | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    info = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "device": "cpu",
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
        "thread_env": {v: os.environ[v] for v in (*THREAD_ENV, "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                       if v in os.environ},
    }
    if "torch" in sys.modules:  # the torch benchmarks: the thread counts they ran with
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
    return info


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def header() -> dict:
    """Date, machine (CPU, counts, load, torch threads), library versions and git state."""
    return {"date": now_utc(), "machine": machine(), "versions": versions(), "git": git_state(),
            "clock": "cpu (process_time)" if _clock is time.process_time else "wall (perf_counter)"}


def new_report(benchmark: str, config: dict) -> dict:
    return {"benchmark": benchmark, **header(), "config": config, "rows": [], "table": []}


# --------------------------------------------------------------------------- timing


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def stats(times: list[float]) -> dict:
    """Median, min, max, quartiles and IQR of wall times in seconds (``times_s`` lists them all)."""
    import numpy as np

    t = np.asarray(times, dtype=float)
    q1, q3 = np.percentile(t, [25, 75])
    return {"median_s": float(np.median(t)), "min_s": float(t.min()), "max_s": float(t.max()),
            "q1_s": float(q1), "q3_s": float(q3), "iqr_s": float(q3 - q1), "n": int(t.size),
            "times_s": [round(float(v), 6) for v in t]}


def scaled(s: dict, factor: float) -> dict:
    """``stats`` of times all multiplied by ``factor`` (e.g. per step instead of per run)."""
    return stats([v * factor for v in s["times_s"]])


def timed(fn: Callable[[], Any], number: int = 1) -> tuple[float, Any]:
    """Seconds per call over ``number`` back-to-back calls (after a gc pass), and the last output."""
    gc.collect()
    out = None
    start = _clock()
    for _ in range(number):
        out = fn()
    return (_clock() - start) / number, out


def calls_per_sample(fns: Iterable[Callable[[], Any]], min_sample_s: float) -> int:
    """How many back-to-back calls make the fastest of ``fns`` last ``min_sample_s`` (one untimed call each)."""
    fastest = max(min(timed(fn)[0] for fn in fns), 1e-9)
    return max(1, math.ceil(min_sample_s / fastest))


@dataclass
class Timings:
    times: dict[str, list[float]]            # per side, seconds per call
    first: dict[str, Any] = field(default_factory=dict)   # each side's output of its first timed run
    warm: dict[str, Any] = field(default_factory=dict)    # each side's warm-up output
    number: int = 1                          # calls per timed sample

    def stats(self, label: str, factor: float = 1.0) -> dict:
        return stats([t * factor for t in self.times[label]])


def run_interleaved(name: str, sides: dict[str, Callable[[], Any]], repeats: int, *,
                    warmups: dict[str, Callable[[], Any]] | None = None,
                    setups: dict[str, Callable[[], None]] | None = None, number: int = 1,
                    keep_first: bool = True) -> Timings:
    """Warm each side up once (untimed; ``warmups`` replace the sides there), then ``repeats`` rounds
    timing every side once, in alternating order. ``setups[label]`` runs untimed before each of that
    side's calls (warm-up included); ``number`` calls make one timed sample (times are per call)."""
    labels = list(sides)
    warmups = warmups if warmups is not None else sides
    setups = setups or {}
    log(f"{name}: warm-up")
    warm = {}
    for label in labels:
        if label in setups:
            setups[label]()
        warm[label] = warmups[label]()
    times: dict[str, list[float]] = {label: [] for label in labels}
    first: dict[str, Any] = {}
    for i in range(repeats):
        for label in (labels if i % 2 == 0 else labels[::-1]):
            if label in setups:
                setups[label]()
            t, out = timed(sides[label], number)
            times[label].append(t)
            if keep_first and label not in first:
                first[label] = out
            del out
        log(f"{name}: {i + 1}/{repeats} " + " ".join(f"{label} {times[label][-1]:.4f}s" for label in labels)
            + (f" per call ({number} calls/sample)" if number > 1 else ""))
    return Timings(times, first, warm, number)


# --------------------------------------------------------------------------- comparisons


def speedup(ours: dict, peer: dict) -> dict:
    """``peer / ours`` from two :func:`stats` (>1: ours is faster), with the per-repeat ratios' range."""
    pairs = [p / o for o, p in zip(ours["times_s"], peer["times_s"]) if o > 0]
    return {"speedup": peer["median_s"] / ours["median_s"], "speedup_min": peer["min_s"] / ours["min_s"],
            "speedup_per_repeat_range": [min(pairs), max(pairs)] if pairs else None}


def cost(ours: dict, floor: dict) -> dict:
    """``ours / floor`` from two :func:`stats` (how many floors ours costs), with the per-repeat ratios' range."""
    pairs = [o / f for o, f in zip(ours["times_s"], floor["times_s"]) if f > 0]
    return {"cost": ours["median_s"] / floor["median_s"], "cost_min": ours["min_s"] / floor["min_s"],
            "cost_per_repeat_range": [min(pairs), max(pairs)] if pairs else None}


def max_rel_diff(ours, theirs) -> float:
    """max|ours − theirs| / max|theirs| of two tensors or arrays (float64)."""
    import numpy as np

    a = np.asarray(ours.detach().double().cpu() if hasattr(ours, "detach") else ours, dtype=np.float64)
    b = np.asarray(theirs.detach().double().cpu() if hasattr(theirs, "detach") else theirs, dtype=np.float64)
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    return diff / scale if scale > 0 else diff


def _side(label: str, s: dict | None) -> dict | None:
    if s is None:
        return None
    return {"label": label, **{k: s[k] for k in ("median_s", "iqr_s", "min_s", "max_s", "n")}}


def table_entry(key: str, what: str, ours: dict | None, *, ours_label: str = "ours", peer: dict | None = None,
                peer_label: str | None = None, kind: str = "speedup", agreement: str = "", note: str = "",
                skipped: str | None = None) -> dict:
    """One uniform line of the summary table.

    ``kind``: ``"speedup"`` (ratio = peer/ours, >1 = ours faster), ``"cost"`` (ratio = ours/peer,
    peer is a floor; lower is better) or ``"absolute"`` (no peer, no ratio). ``skipped`` gives the
    reason a row did not run (e.g. the peer is not installed).
    """
    entry: dict[str, Any] = {"key": key, "what": what, "kind": kind, "ours": _side(ours_label, ours),
                             "peer": _side(peer_label or "peer", peer), "ratio": None, "ratio_range": None,
                             "agreement": agreement, "note": note, "skipped": skipped}
    if skipped is None and ours is not None and peer is not None and kind in ("speedup", "cost"):
        r = speedup(ours, peer) if kind == "speedup" else cost(ours, peer)
        entry["ratio"] = r[kind]
        entry["ratio_range"] = r[f"{kind}_per_repeat_range"]
    return entry


# --------------------------------------------------------------------------- output


def emit(report: dict, out: Path | None) -> dict:
    """Record the end-of-run load, print the report as JSON on stdout and write it to ``out``."""
    report.setdefault("machine", {})["load_average_at_end"] = load_average()
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return report


def cli(parse_args: Callable[[list[str] | None], argparse.Namespace],
        run: Callable[[argparse.Namespace], dict | None], argv: list[str] | None = None) -> dict | None:
    """A benchmark script's entry point: parse, run, then :func:`emit` the report (when there is one)."""
    args = parse_args(argv)
    report = run(args)
    return emit(report, args.out) if report is not None else None


# --------------------------------------------------------------------------- models


def train_convnet(epochs: int = 2, seed: int = 0, lr: float = 3e-3, batch: int = 128):
    """A ConvNet trained here on mnist5k/train (Adam, fixed seed), in eval mode, and its description,
    so that attacks and landscapes act on a real classifier without needing the zoo."""
    import torch
    import torch.nn.functional as F

    from explrobust_core.data import load_dataset
    from explrobust_core.models import build_model, count_parameters

    train = load_dataset("mnist5k", "train")
    info = train.info
    torch.manual_seed(seed)
    model = build_model("convnet", input_shape=info.input_shape, num_classes=info.num_classes, mean=info.mean,
                        std=info.std)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    images, labels = train.images.float(), train.labels.long()
    log(f"training convnet: {epochs} epoch(s) on {len(train)} images")
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(images[idx]), labels[idx]).backward()
            opt.step()
    model.eval()
    return model, {"arch": "convnet", "input_shape": list(info.input_shape), "num_classes": info.num_classes,
                   "mean": list(info.mean), "std": list(info.std), "parameters": count_parameters(model),
                   "mode": "eval",
                   "training": {"dataset": "mnist5k/train", "images": len(train), "epochs": epochs,
                                "optimizer": "Adam", "lr": lr, "batch": batch, "seed": seed,
                                "seconds": round(time.perf_counter() - started, 3)}}


def zoo_or_trained_convnet(name: str = "natural", seed: int = 0):
    """The shipped zoo model ``mnist5k/<name>`` when it is there; otherwise :func:`train_convnet`."""
    from explrobust_core.zoo import load_checkpoint, shipped_zoo_dir

    shipped = shipped_zoo_dir() / "mnist5k" / f"{name}.safetensors"
    if shipped.exists():
        model, card = load_checkpoint(shipped, "cpu")
        return model.eval(), {"checkpoint": str(shipped.relative_to(REPO_ROOT)) if shipped.is_relative_to(REPO_ROOT)
                              else str(shipped), "arch": card.architecture}
    return train_convnet(seed=seed)
