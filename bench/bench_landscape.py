"""Benchmark: a 41×41 input-landscape grid, batched against a per-point loop of the same code.

    .venv/bin/python bench/bench_landscape.py [--quick] [--threads 1] [--out FILE]

One mnist5k test image, the zoo's natural model (or a ConvNet trained here when the zoo is absent),
``landscape.input_landscape(dims=2, direction="adversarial", radius=0.3, points=41,
losses=["explanation_change"])``: every one of the 1,681 grid points needs its own gradient×input
map. Sides:

* ``batched`` — the grid in chunks of ``--batch-size`` points (default 512), as the app runs it;
* ``per_point`` — the same call with ``batch_size=1``: the same code, one point per forward and
  backward, as a Python loop over the grid would do it (the values agree to float round-off);
* ``ce_grid`` — for reference, the forward-only cross-entropy grid of the same points (batched): the
  price of the explanation is one backward per point.

``speedup = per_point_median / batched_median`` (>1: batching is faster). Interleaved repeats after
one warm-up per side (``_common``); timings are reported, never asserted on. The time to the first
2-D view of maps is in ``bench_embedding.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--points", type=int, default=None, help="grid points per axis, odd (default 41; 11 with --quick)")
    p.add_argument("--batch-size", type=int, default=512, help="grid points per forward pass, batched side (default 512)")
    args = p.parse_args(argv)
    args = C.resolve_defaults(args, {"repeats": (1, 3), "points": (11, 41)}, p, positive=("batch_size",))
    if args.points % 2 == 0:
        p.error("--points must be odd")
    return args


def run(args: argparse.Namespace) -> dict:
    import torch

    from explrobust_core.data import load_dataset
    from explrobust_core.landscape import input_landscape

    model, model_info = C.zoo_or_trained_convnet("natural", args.seed)
    test = load_dataset("mnist5k", "test")
    x, y = test.batch([0])
    opts = dict(dims=2, direction="adversarial", radius=0.3, points=args.points, seed=args.seed)

    def grid(losses, batch_size, points=args.points):
        return lambda: input_landscape(model, x, y, losses=losses, batch_size=batch_size,
                                       **{**opts, "points": points}).extra["grids"]

    sides = {"batched": grid(["explanation_change"], args.batch_size),
             "per_point": grid(["explanation_change"], 1),
             "ce_grid": grid(["ce"], args.batch_size)}
    # the per-point side warms up on a 5×5 grid (the same code paths; its full grid is the slow part)
    t = C.run_interleaved("landscape_grid", sides, args.repeats,
                          warmups={**sides, "per_point": grid(["explanation_change"], 1, 5)})
    diff = C.max_rel_diff(t.first["batched"]["explanation_change"], t.first["per_point"]["explanation_change"])
    s = {label: t.stats(label) for label in sides}
    n_points = args.points ** 2
    report = C.new_report("landscape: batched input_landscape grid vs a per-point loop of the same code", {
        "quick": args.quick, "repeats": args.repeats, "warmup_runs": 1,
        "warmup_per_point": "a 5x5 grid; agreement from the first timed runs",
        "order": "interleaved, alternating", "image": "mnist5k test[0]", "model": model_info,
        "landscape": {**opts, "losses": ["explanation_change"], "explainer": "gradient_x_input",
                      "batch_size_batched": args.batch_size, "batch_size_per_point": 1},
        "speedup": "per_point_median / batched_median (>1: batching is faster)",
    })
    report["rows"].append({"name": "landscape_grid", "grid": f"{args.points}x{args.points}", "points": n_points,
                           "batched": s["batched"], "per_point": s["per_point"], "ce_grid": s["ce_grid"],
                           **C.speedup(s["batched"], s["per_point"]),
                           "explanation_vs_ce_grid": s["batched"]["median_s"] / s["ce_grid"]["median_s"],
                           "max_rel_diff": diff, "threads": torch.get_num_threads()})
    report["table"].append(C.table_entry(
        "landscape_grid", f"{args.points}×{args.points} explanation-loss landscape (gradient×input), 1 image",
        s["batched"], ours_label=f"batched ({args.batch_size} points/pass)", peer=s["per_point"],
        peer_label="per-point loop", agreement="identical" if diff == 0 else f"max rel. diff {diff:.0e}",
        note=f"forward-only CE grid of the same points: {s['ce_grid']['median_s']:.2f} s"))
    return report


if __name__ == "__main__":
    C.cli(parse_args, run)
