"""Profile what each dashboard page's default **Show me** spends its time on (cProfile of the core calls).

    .venv/bin/python bench/profile_pages.py [--page attack_lab|classification|landscape|clusters] [--top 25]

Runs, in this process and without Streamlit, the same core calls with the same defaults as the page's
form (the default model, ``mnist5k/natural``), once untimed to warm caches (model, dataset, numba), then once
under cProfile, and prints the wall time and the functions with the largest cumulative time. The browser
timings of the same clicks are ``bench/bench_dashboard.py``'s per-page rows; the difference between the two
is the page's own drawing (figures, tables) and Streamlit's round trips.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

ZOO = C.REPO_ROOT / "models_zoo" / "mnist5k"


def _model():
    from explrobust_core.zoo import load_checkpoint_cached

    return load_checkpoint_cached(str(ZOO / "natural.safetensors"), "auto")


def _data(split: str = "test"):
    from explrobust_core.data import load_dataset

    return load_dataset("mnist5k", split)


def attack_lab() -> None:
    """IFIA top-k on test image 0, the page's defaults (gradient maps, 100 steps)."""
    from explrobust_core.attacks.explanation import EXPLANATION_ATTACKS
    from explrobust_core.attacks.one_image import attack_image

    model, _ = _model()
    cfg = EXPLANATION_ATTACKS.get("ifia").make_config({"measure": "topk_intersection", "explainer": "gradient"})
    attack_image(model, _data().batch([0])[0], "ifia", cfg.model_dump(mode="json"))


def classification() -> None:
    """PGD L∞ at 7 ε up to 0.3, 20 steps, on 128 sampled test images, with the minimal flipping ε (6 rounds)."""
    import numpy as np
    import torch

    from explrobust_core.accuracy import accuracy_vs_eps

    model, _ = _model()
    data = _data()
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:128].tolist()
    x, y = data.batch(indices)
    pgd = {"norm": "linf", "steps": 20, "restarts": 1, "seed": 0, "random_start": True}
    grid = tuple(float(e) for e in np.round(np.linspace(0.0, 0.3, 7), 6))
    accuracy_vs_eps(model, x, y, grid, "pgd", pgd, batch_size=256, keep=8, flip_iterations=6, flip_config=pgd)


def landscape() -> None:
    """1D (41 points) and 2D (21×21) around test image 0, FGSM direction, PGD/IFIA endpoints, curvature."""
    from explrobust_core.landscape import LandscapeConfig, landscape_of_images

    model, _ = _model()
    config = LandscapeConfig(direction="adversarial", radius=0.3, points=41, losses=["ce", "explanation_change"],
                             explainer="gradient_x_input", seed=0).model_dump(mode="json")
    landscape_of_images(model, _data(), 0, 1, config, target=None, dims=(1, 2), points_2d=21, attack_eps=0.1,
                        pgd_steps=20, ifia_steps=30, curvature=True)


def clusters() -> None:
    """Way3 on the penultimate features of the first 1,000 test images (k = 10, 150 prototypes), and the
    gallery's first 24 gradient maps."""
    from explrobust_core.clusters import batched_maps, cluster_pairs

    model, card = _model()
    x, y = _data().batch(range(1000))
    view = cluster_pairs(model, x, y, way=3, n_pairs=150, k=10, dataset="mnist5k", split="test",
                         source="penultimate", explainer="gradient", seed=0, reference="natural")
    shown = view.gallery(None, 24)
    batched_maps(model, x[list(shown)], "gradient")


PAGES = {"attack_lab": attack_lab, "classification": classification, "landscape": landscape, "clusters": clusters}


def profile(name: str, top: int, first: bool = False) -> dict:
    fn = PAGES[name]
    _model(), _data()  # the server holds these before the click
    if not first:
        fn()  # warm: numba, torch's first-call costs
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    fn()
    prof.disable()
    wall = time.perf_counter() - started
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    return {"page": name, "wall_s": wall, "load_average": C.load_average(), "profile": out.getvalue()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page", choices=list(PAGES), action="append", help="pages to profile (default: all)")
    p.add_argument("--top", type=int, default=25, help="functions to list per page (default 25)")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1)")
    p.add_argument("--first", action="store_true", help="profile the first call in this process (a server's first "
                                                         "click: numba compiles, torch's first-call costs), not a "
                                                         "second one")
    args = p.parse_args(argv)
    C.limit_threads(args.threads)
    for name in args.page or list(PAGES):
        r = profile(name, args.top, args.first)
        print(f"===== {name}: {r['wall_s']:.2f} s (load average {r['load_average']})\n{r['profile']}")


if __name__ == "__main__":
    main()
