"""Benchmark: our batched Kendall τ-b (O(P log P), explrobust_core.metrics.kendall_tau) against scipy.

    .venv/bin/python bench/bench_kendall.py [--quick] [--threads 1] [--maps 64] [--side 224] [--out FILE]

Both sides score the same N pairs of ``side×side`` maps (mnist-like: a zero background, a block of
uniform values, a quantised corner with heavy ties; the second map a noisy copy of the first), as
float32:

* ours — ``metrics.kendall_tau(a, b)`` on the whole ``(N, side, side)`` batch;
* scipy — ``scipy.stats.kendalltau(a_i, b_i)`` (variant 'b') image by image (float64 copies made
  untimed beforehand).

Agreement: the largest absolute difference of the N values (the aim is ≤ 1e-6). ``speedup =
scipy_median / ours_median``; the aim of issue 14 is ours ≤ 1 s for 64 maps of 224×224 on one
thread (an absolute time, shown in the notes). Interleaved repeats after one warm-up; never asserted on.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--maps", type=int, default=None, help="map pairs (default 64; 8 with --quick)")
    p.add_argument("--side", type=int, default=None, help="map side in pixels (default 224; 64 with --quick)")
    args = p.parse_args(argv)
    return C.resolve_defaults(args, {"repeats": (1, 5), "maps": (8, 64), "side": (64, 224)}, p)


def make_maps(n: int, side: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    a = torch.zeros(n, side, side)
    q = side // 4
    a[:, q:side - q, q:side - q] = torch.rand(n, side - 2 * q, side - 2 * q, generator=g)
    a[:, q:side // 2, q:side // 2] = (a[:, q:side // 2, q:side // 2] * 4).floor()  # heavy ties
    b = a + 0.1 * torch.rand(n, side, side, generator=g) * (a > 0)
    return a, b


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import scipy.stats

    from explrobust_core.metrics import kendall_tau

    a, b = make_maps(args.maps, args.side, args.seed)
    a64, b64 = a.flatten(1).double().numpy(), b.flatten(1).double().numpy()

    def ours():
        return kendall_tau(a, b).double().numpy()

    def scipy_side():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.array([scipy.stats.kendalltau(x, y, variant="b")[0] for x, y in zip(a64, b64)])

    t = C.run_interleaved("kendall_tau", {"ours": ours, "scipy": scipy_side}, args.repeats)
    diff = float(np.nanmax(np.abs(t.first["ours"] - t.first["scipy"])))
    s_o, s_s = t.stats("ours"), t.stats("scipy")
    report = C.new_report("metrics: Kendall tau-b, explrobust_core.metrics.kendall_tau vs scipy.stats.kendalltau", {
        "quick": args.quick, "repeats": args.repeats, "warmup_runs": 1, "order": "interleaved, alternating",
        "maps": args.maps, "side": args.side, "dtype": "float32 (ours), float64 copies (scipy)",
        "speedup": "scipy_median / ours_median (>1: ours is faster)",
    })
    report["rows"].append({"name": "kendall_tau", "ours": s_o, "scipy": s_s, "max_abs_diff": diff,
                           **C.speedup(s_o, s_s)})
    report["table"].append(C.table_entry(
        "kendall_tau", f"Kendall τ-b, {args.maps} map pairs of {args.side}×{args.side} (heavy ties)", s_o,
        peer=s_s, peer_label="scipy.stats.kendalltau, image by image",
        agreement=f"max abs. diff {diff:.0e}",
        note=f"aim: ours ≤ 1 s for 64 maps of 224×224 on one thread; this run {s_o['median_s']:.2f} s"))
    return report


if __name__ == "__main__":
    C.cli(parse_args, run)
