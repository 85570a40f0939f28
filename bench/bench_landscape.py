"""Landscape and embedding timings on this machine, printed as JSON.

    .venv/bin/python bench/bench_landscape.py [--quick] [--threads 1] [--out FILE]

Rows:
* ``explanation_grid_vs_ce_grid`` — a 41×41 explanation-loss landscape of one mnist5k image
  (every grid point needs its own gradient×input map) against the forward-only cross-entropy grid
  of the same 1,681 points, both through ``landscape.input_landscape``; ``ratio`` = explanation /
  CE median (the price of one batched backward per point).
* ``first_view_of_maps`` — time to the first PCA and the first UMAP view of 2,000 explanation maps
  (UMAP's first call in a process compiles; the second is what a warm dashboard pays).
Medians of interleaved repeats; timings are never asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from explrobust_core.data import load_dataset  # noqa: E402
from explrobust_core.io import library_versions  # noqa: E402
from explrobust_core.landscape import input_landscape  # noqa: E402
from explrobust_core.models import build_model  # noqa: E402


def _stats(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def _model():
    """The zoo's natural model when it is there; otherwise a ConvNet trained here for a few seconds."""
    from explrobust_core.zoo import load_checkpoint, shipped_zoo_dir

    shipped = shipped_zoo_dir() / "mnist5k" / "natural.safetensors"
    if shipped.exists():
        return load_checkpoint(shipped, "cpu")[0]
    train = load_dataset("mnist5k", "train")
    info = train.info
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=info.input_shape, num_classes=10, mean=info.mean, std=info.std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for start in range(0, 2000, 128):  # a few hundred steps of training: real, not random, maps
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train.images[start:start + 128]), train.labels[start:start + 128]).backward()
        opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small grid and few maps, for a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a busy machine)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    points = 11 if args.quick else 41
    n_maps = 200 if args.quick else 2000
    repeats = 2 if args.quick else args.repeats
    model = _model()
    test = load_dataset("mnist5k", "test")
    x, y = test.batch([0])
    opts = dict(dims=2, direction="adversarial", radius=0.3, points=points, batch_size=512)
    times = {"explanation": [], "ce": []}
    for r in range(repeats + 1):
        for name, losses in (("explanation", ["explanation_change"]), ("ce", ["ce"])):
            t = time.perf_counter()
            input_landscape(model, x, y, losses=losses, **opts)
            if r:  # the first round is the warm-up
                times[name].append(time.perf_counter() - t)
    grid_row = {"name": "explanation_grid_vs_ce_grid", "grid": f"{points}x{points}", "explanation": _stats(times["explanation"]),
                "ce": _stats(times["ce"]), "ratio": statistics.median(times["explanation"]) / statistics.median(times["ce"])}

    from explrobust_core.embedding import pca_2d, umap_2d
    from explrobust_core.explain import explanation_maps

    xs, ys = test.batch(range(min(n_maps, len(test))))
    maps = torch.cat([explanation_maps(model, xs[i:i + 500], "gradient_x_input", target=ys[i:i + 500]).flatten(1)
                      for i in range(0, xs.shape[0], 500)]).numpy()
    t = time.perf_counter()
    pca_2d(maps)
    pca_s = time.perf_counter() - t
    t = time.perf_counter()
    umap_2d(maps)
    umap_first = time.perf_counter() - t
    t = time.perf_counter()
    umap_2d(maps)
    umap_warm = time.perf_counter() - t
    report = {
        "benchmark": "landscape grids and first 2-D views",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "versions": library_versions(),
        "rows": [grid_row, {"name": "first_view_of_maps", "maps": int(maps.shape[0]), "pca_s": pca_s,
                            "umap_first_call_s": umap_first, "umap_warm_s": umap_warm}],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
