"""Benchmark: time to the first PCA and the first UMAP view of 2,000 explanation maps, cold and warm.

    .venv/bin/python bench/bench_embedding.py [--quick] [--threads 1] [--out FILE]

2,000 gradient×input maps (the zoo's natural model on the first 2,000 mnist5k training images;
784 values each) are computed once and saved; then each measurement runs in a *fresh Python
process* (``--child``), as a dashboard that has just started:

* PCA — ``embedding.pca_2d``: its first call in the process (sklearn's import included) and then
  warm calls. No peer: absolute times.
* UMAP — ours, ``embedding.umap_2d`` (PCA to 50 dimensions + exact neighbours from scikit-learn,
  handed to UMAP as ``precomputed_knn``), against the peer ``umap.UMAP(random_state=seed)
  .fit_transform(maps)``, umap-learn's defaults (NNDescent neighbours on the raw 784 dimensions),
  each in its own processes:

  - ``cold_compile``: a fresh process with an empty ``NUMBA_CACHE_DIR``: the first call compiles
    numba's kernels (a fresh install's first view);
  - ``cold_cached``: a fresh process whose ``NUMBA_CACHE_DIR`` the first one filled (a dashboard
    restart);
  - ``warm``: later calls in the same process (what the dashboard pays once warm).

  The first call includes ``import umap``. ``speedup = peer_median / ours_median`` (>1: ours is faster).

Every cold measurement is a new process, so its repeats are processes too (``--compile-repeats``,
default 1, as each compiles for tens of seconds; ``--cold-repeats``, default 2); warm repeats run inside
the cached processes. ``--quick`` (or ``--no-compile``) skips the compile scenario and uses
``$NUMBA_CACHE_DIR`` as it is. Timings are reported, never asserted on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SIDES = ("ours", "umap_default")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--n-maps", type=int, default=None, help="maps to embed (default 2000; 300 with --quick)")
    p.add_argument("--cold-repeats", type=int, default=None,
                   help="fresh processes per side with a filled numba cache (default 2; 1 with --quick)")
    p.add_argument("--compile-repeats", type=int, default=1,
                   help="fresh processes per side with an empty numba cache: each compiles (default 1)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the empty-cache scenario; use $NUMBA_CACHE_DIR as it is (the default with --quick)")
    p.add_argument("--umap-epochs", type=int, default=200, help="UMAP n_epochs, both sides (default 200)")
    p.add_argument("--child", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--maps", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        if args.threads is not None:
            C.limit_threads(args.threads)
        return args
    args.no_compile = args.no_compile or args.quick
    return C.resolve_defaults(args, {"repeats": (1, 3), "n_maps": (300, 2000), "cold_repeats": (1, 2)}, p,
                              positive=("umap_epochs", "compile_repeats"))


# --------------------------------------------------------------------------- the child: one fresh process


def child(args: argparse.Namespace) -> None:
    """Time the first and then ``repeats`` warm PCA and UMAP views of the saved maps; JSON on stdout."""
    import numpy as np

    from explrobust_core import embedding

    maps = np.load(args.maps)
    seed = args.seed

    if args.child == "ours":
        def umap_view():
            return embedding.umap_2d(maps, seed=seed, n_epochs=args.umap_epochs)
    else:
        def umap_view():
            import umap

            return umap.UMAP(random_state=seed, n_epochs=args.umap_epochs).fit_transform(maps)

    out = {"side": args.child, "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR")}
    if args.child == "ours":  # PCA is ours only: its first call (sklearn import) and warm calls
        out["pca_first_s"], _ = C.timed(lambda: embedding.pca_2d(maps, seed))
        out["pca_warm_s"] = [C.timed(lambda: embedding.pca_2d(maps, seed))[0] for _ in range(args.repeats)]
    out["umap_first_s"], coords = C.timed(umap_view)
    out["umap_warm_s"] = [C.timed(umap_view)[0] for _ in range(args.repeats)]
    out["finite"] = bool(np.isfinite(coords).all())
    print(json.dumps(out))


def spawn(side: str, maps: Path, cache: Path, args: argparse.Namespace, repeats: int) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--maps", str(maps),
           "--repeats", str(repeats), "--seed", str(args.seed), "--umap-epochs", str(args.umap_epochs)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=C.REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"embedding child ({side}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- the parent


def parent(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from explrobust_core.data import load_dataset
    from explrobust_core.explain import explanation_maps

    model, model_info = C.zoo_or_trained_convnet("natural", args.seed)
    train = load_dataset("mnist5k", "train")
    n = min(args.n_maps, len(train))
    xs, ys = train.batch(range(n))
    started = time.perf_counter()
    maps = torch.cat([explanation_maps(model, xs[i:i + 500], "gradient_x_input", target=ys[i:i + 500]).flatten(1)
                      for i in range(0, n, 500)]).numpy()
    maps_s = time.perf_counter() - started

    scenarios = ("cold_cached",) if args.no_compile else ("cold_compile", "cold_cached")
    results: dict[str, dict[str, list[dict]]] = {side: {sc: [] for sc in scenarios} for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="bench_embedding_") as tmp:
        path = Path(tmp) / "maps.npy"
        np.save(path, maps)
        caches = {side: (Path(os.environ.get("NUMBA_CACHE_DIR", Path(tmp) / "numba_shared")) if args.no_compile
                         else Path(tmp) / f"numba_{side}") for side in SIDES}
        for r in range(args.compile_repeats if not args.no_compile else 0):
            for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                C.log(f"embedding {side}: fresh process, empty numba cache ({r + 1}/{args.compile_repeats})")
                shutil.rmtree(caches[side], ignore_errors=True)  # empty: the first call compiles and fills it
                results[side]["cold_compile"].append(spawn(side, path, caches[side], args, 0))
        if args.no_compile:  # fill the shared cache first, untimed
            for side in SIDES:
                C.log(f"embedding {side}: filling the numba cache (untimed)")
                spawn(side, path, caches[side], args, 0)
        for r in range(args.cold_repeats):
            for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                C.log(f"embedding {side}: fresh process, filled numba cache ({r + 1}/{args.cold_repeats})")
                results[side]["cold_cached"].append(spawn(side, path, caches[side], args, args.repeats))

    def first(side, scenario, key="umap_first_s"):
        return C.stats([res[key] for res in results[side][scenario]])

    def warm(side, key="umap_warm_s"):
        return C.stats([t for res in results[side]["cold_cached"] for t in res[key]])

    umap = {scenario: {side: first(side, scenario) for side in SIDES} for scenario in scenarios}
    umap["warm"] = {side: warm(side) for side in SIDES}
    pca = {"cold": C.stats([res["pca_first_s"] for sc in scenarios for res in results["ours"][sc]]),
           "warm": warm("ours", "pca_warm_s")}

    report = C.new_report("embedding: first PCA / UMAP view of explanation maps, cold (fresh process) and warm", {
        "quick": args.quick, "repeats_warm": args.repeats, "cold_repeats": args.cold_repeats,
        "compile_repeats": 0 if args.no_compile else args.compile_repeats,
        "maps": {"n": n, "dim": int(maps.shape[1]), "explainer": "gradient_x_input", "model": model_info,
                 "images": f"mnist5k train[:{n}]", "compute_s": maps_s},
        "umap": {"n_epochs": args.umap_epochs, "seed": args.seed,
                 "ours": "embedding.umap_2d: PCA(50) + exact sklearn kNN as precomputed_knn",
                 "umap_default": "umap.UMAP(random_state=seed, n_epochs=...).fit_transform(maps): NNDescent on raw maps"},
        "scenarios": {"cold_compile": "fresh process, empty NUMBA_CACHE_DIR", "cold_cached":
                      "fresh process, NUMBA_CACHE_DIR filled by a previous process", "warm": "later calls, same process"},
        "speedup": "umap_default_median / ours_median (>1: ours is faster)",
    })
    report["rows"].append({"name": "first_view_of_maps", "maps": n, "maps_compute_s": maps_s, "pca": pca, "umap": {
        scenario: {**sides, **C.speedup(sides["ours"], sides["umap_default"])} for scenario, sides in umap.items()},
        "processes": results})
    report["table"].append(C.table_entry(
        "pca_first_view", f"first PCA view of {n} maps, fresh process (sklearn import included)", pca["cold"],
        kind="absolute", note=f"warm: {pca['warm']['median_s'] * 1e3:.0f} ms; computing the {n} maps: {maps_s:.1f} s"))
    labels = {"cold_compile": "fresh process, empty numba cache (compiles)",
              "cold_cached": "fresh process, numba cache filled", "warm": "warm, same process"}
    for scenario, sides in umap.items():
        report["table"].append(C.table_entry(
            f"umap_first_view/{scenario}", f"first UMAP view of {n} maps, {labels[scenario]}", sides["ours"],
            ours_label="PCA-50 + exact kNN", peer=sides["umap_default"], peer_label="umap-learn defaults"))
    return report


def run(args: argparse.Namespace) -> dict | None:
    if args.child:
        return child(args)
    return parent(args)


if __name__ == "__main__":
    C.cli(parse_args, run)
