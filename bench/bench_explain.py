"""Benchmark: our explanation methods against captum, in one run on the same machine.

Run from the repository root::

    python bench/bench_explain.py                 # full run (7 repeats, 64 images), JSON on stdout
    python bench/bench_explain.py --quick         # smoke test (2 repeats, 8 images)
    python bench/bench_explain.py --out bench.json --threads 2

Rows: gradient × input vs captum ``InputXGradient`` and integrated gradients (Gauss–Legendre,
50 steps, the same ``internal_batch_size`` — both libraries read it as "inputs per forward pass")
vs captum ``IntegratedGradients`` on a ConvNet, and IG on a narrow ResNet-18 (base width 16); all
on the first N real ``mnist5k`` test images as one batch, explaining their true labels. Models are
untrained (fixed seed) and in eval mode.

Each row runs one untimed warm-up per side (its results give ``max_rel_diff`` =
max|ours − captum| / max|captum|, a sanity check that both computed the same thing; expect ~1e-6
in float32), then ``--repeats`` timed runs interleaved ours, captum, ours, … so machine noise hits
both alike. Fast rows (gradient × input takes milliseconds) repeat the call ``calls_per_sample``
times inside each timed sample so a sample lasts at least ``--min-sample-time``; the same count is
used for both sides and all times are reported per call. Per side: median, min, max and IQR of
the per-call wall times in seconds (``times_s`` lists them all).

Reading the ratios: ``ratio = ours_median / captum_median``; below 1 we are faster (0.8 → we take
80 % of captum's time), above 1 we are slower. ``ratio_min`` compares the fastest runs, which is
less sensitive to noise on a busy machine. Look at the IQRs before reading much into ratios
within ~10 % of 1. Timings are reported, never asserted on. On a busy machine (see the header's
load averages) torch's default threads are oversubscribed and every time balloons (by ~50× seen
on 2 shared cores); ``--threads 1`` then gives far steadier numbers.
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
import warnings
from importlib import metadata
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # works without the editable install too
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time our gradient×input and integrated gradients against captum's (same machine, "
                    "interleaved runs) and print a JSON report. ratio = ours_median / captum_median; <1 means "
                    "we are faster.")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per side and row (default 7; 2 with --quick)")
    p.add_argument("--n-images", type=int, default=None, help="mnist5k test images in the batch (default 64; 8 with --quick)")
    p.add_argument("--n-steps", type=int, default=50, help="IG steps (default 50)")
    p.add_argument("--rule", default="gausslegendre",
                   choices=["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"],
                   help="IG quadrature rule, captum's names (default gausslegendre)")
    p.add_argument("--internal-batch-size", type=int, default=512,
                   help="IG inputs per forward pass, for both libraries (default 512)")
    p.add_argument("--resnet-width", type=int, default=16, help="base_width of the ResNet-18 (default 16)")
    p.add_argument("--min-sample-time", type=float, default=0.2,
                   help="repeat fast calls inside a timed sample until it lasts this many seconds (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed for the untrained weights (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="few repeats and images: a smoke test, not a measurement")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report to this file")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 7
    if args.n_images is None:
        args.n_images = 8 if args.quick else 64
    if args.min_sample_time < 0:
        p.error("--min-sample-time must be non-negative")
    for name in ("repeats", "n_images", "n_steps", "internal_batch_size", "resnet_width"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# --------------------------------------------------------------------------- report header


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_state() -> dict | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return None


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def header() -> dict:
    import captum

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": usable,
            "load_average_1_5_15min": _load_average(),
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "device": "cpu",
            "python": platform.python_version(),
        },
        "versions": {
            "explrobust": _version("explrobust"),
            "torch": torch.__version__,
            "captum": getattr(captum, "__version__", _version("captum")),
            "numpy": np.__version__,
        },
        "git": _git_state(),
    }


# --------------------------------------------------------------------------- timing


def _stats(times: list[float]) -> dict:
    t = np.asarray(times)
    q1, q3 = np.percentile(t, [25, 75])
    return {"median_s": float(np.median(t)), "min_s": float(t.min()), "max_s": float(t.max()),
            "iqr_s": float(q3 - q1), "times_s": [round(float(v), 6) for v in t]}


def _timed(fn: Callable[[], torch.Tensor], number: int = 1) -> float:
    """Seconds per call, averaged over ``number`` back-to-back calls."""
    gc.collect()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def max_rel_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.detach().double(), theirs.detach().double()
    scale = theirs.abs().max().item()
    diff = (ours - theirs).abs().max().item()
    return diff / scale if scale > 0 else diff


def bench_row(name: str, ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor], repeats: int,
              info: dict, min_sample_s: float) -> dict:
    print(f"[bench] {name}: warm-up", file=sys.stderr, flush=True)
    a, b = ours(), theirs()  # warm-up, untimed; also the correctness check
    rel = max_rel_diff(a, b)
    del a, b
    # calibration (untimed in the report): one call of each; the same count for both sides
    fastest = max(min(_timed(ours), _timed(theirs)), 1e-9)
    number = max(1, math.ceil(min_sample_s / fastest))
    t_ours, t_theirs = [], []
    for i in range(repeats):
        t_ours.append(_timed(ours, number))
        t_theirs.append(_timed(theirs, number))
        print(f"[bench] {name}: {i + 1}/{repeats} ours {t_ours[-1]:.4f}s captum {t_theirs[-1]:.4f}s per call"
              f" ({number} calls/sample)", file=sys.stderr, flush=True)
    s_ours, s_theirs = _stats(t_ours), _stats(t_theirs)
    return {
        "name": name,
        **info,
        "calls_per_sample": number,
        "ours": s_ours,
        "captum": s_theirs,
        "ratio": s_ours["median_s"] / s_theirs["median_s"],
        "ratio_min": s_ours["min_s"] / s_theirs["min_s"],
        "max_rel_diff": rel,
    }


# --------------------------------------------------------------------------- rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from captum.attr import InputXGradient, IntegratedGradients

    from explrobust_core.data import load_dataset
    from explrobust_core.explain import attribute
    from explrobust_core.models import build_model, count_parameters

    ds = load_dataset("mnist5k", "test")
    if args.n_images > len(ds):
        raise SystemExit(f"--n-images {args.n_images} exceeds the {len(ds)} mnist5k test images")
    x = ds.images[: args.n_images].float().contiguous()
    y = ds.labels[: args.n_images].long().contiguous()
    info = ds.info

    def make(arch: str, config: dict) -> torch.nn.Module:
        torch.manual_seed(args.seed)
        model = build_model(arch, input_shape=info.input_shape, num_classes=info.num_classes, mean=info.mean,
                            std=info.std, config=config)
        return model.eval()

    models = {
        "convnet": ("convnet", {}, make("convnet", {})),
        "resnet18": ("resnet18", {"base_width": args.resnet_width}, make("resnet18", {"base_width": args.resnet_width})),
    }
    ig_opts = {"n_steps": args.n_steps, "rule": args.rule, "internal_batch_size": args.internal_batch_size}

    def gxi_pair(model):
        return (lambda: attribute(model, x, "gradient_x_input", target=y),
                lambda: InputXGradient(model).attribute(x, target=y))

    def ig_pair(model):
        return (lambda: attribute(model, x, "integrated_gradients", target=y, **ig_opts),
                lambda: IntegratedGradients(model).attribute(x, target=y, n_steps=args.n_steps, method=args.rule,
                                                             internal_batch_size=args.internal_batch_size))

    plan = [
        ("gradient_x_input/convnet", "convnet", "gradient_x_input", "InputXGradient", {}, gxi_pair),
        ("integrated_gradients/convnet", "convnet", "integrated_gradients", "IntegratedGradients", ig_opts, ig_pair),
        ("integrated_gradients/resnet18", "resnet18", "integrated_gradients", "IntegratedGradients", ig_opts, ig_pair),
    ]

    report = {
        "benchmark": "explain: explrobust_core.explain.attribute vs captum.attr",
        **header(),
        "config": {
            "quick": args.quick,
            "repeats": args.repeats,
            "warmup_runs": 1,
            "min_sample_time_s": args.min_sample_time,
            "order": "interleaved: ours, captum, ours, captum, ...",
            "dataset": "mnist5k",
            "split": "test",
            "n_images": args.n_images,
            "input_shape": list(x.shape),
            "dtype": str(x.dtype).replace("torch.", ""),
            "target": "true labels",
            "seed": args.seed,
            "ig": ig_opts,
            "ratio": "ours_median / captum_median (<1: we are faster)",
            "max_rel_diff": "max|ours - captum| / max|captum| over the warm-up results",
        },
        "rows": [],
    }

    for name, key, method, captum_cls, options, pair in plan:
        arch, config, model = models[key]
        ours, theirs = pair(model)
        row_info = {"method": method, "captum_class": captum_cls, "options": options,
                    "model": {"arch": arch, "config": config, "parameters": count_parameters(model), "mode": "eval"}}
        with warnings.catch_warnings():  # captum: "Input Tensor 0 did not already require gradients"
            warnings.filterwarnings("ignore", message=".*did not already require gradients.*")
            row = bench_row(name, ours, theirs, args.repeats, row_info, args.min_sample_time)
        report["rows"].append(row)

    report["machine"]["load_average_at_end"] = _load_average()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
