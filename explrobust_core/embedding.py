"""2-D views of features or maps for the clusters page: PCA at once, UMAP when asked.

UMAP's first call in a process compiles for ~15 s (numba); :func:`warm_up_umap` pays that once.
We reduce to ≤ 50 dimensions with PCA and hand UMAP exact nearest neighbours computed by
scikit-learn, which skips its NNDescent path (slow to compile, slower on small data).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .sampling import reduce_dims


def _array(features) -> np.ndarray:
    return np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)


def pca_2d(features, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import PCA

    f = _array(features)
    if f.shape[0] < 2:
        raise ValueError("a 2-D view needs at least two points")
    coords = PCA(n_components=min(2, f.shape[1]), random_state=seed).fit_transform(f)
    return coords if coords.shape[1] == 2 else np.hstack([coords, np.zeros((coords.shape[0], 1))])


def _numba_cache() -> None:
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "explrobust" / "numba"))


def umap_2d(features, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0, n_epochs: int = 200) -> np.ndarray:
    """UMAP of PCA(≤50) features with exact precomputed neighbours."""
    _numba_cache()
    import umap
    from sklearn.neighbors import NearestNeighbors

    reduced = reduce_dims(_array(features), 50, seed)
    n = reduced.shape[0]
    if n < 4:
        raise ValueError("UMAP needs at least four points")
    k = min(n_neighbors, n - 1)
    dist, idx = NearestNeighbors(n_neighbors=k).fit(reduced).kneighbors(reduced)
    reducer = umap.UMAP(n_neighbors=k, min_dist=min_dist, random_state=seed, n_epochs=n_epochs,
                        precomputed_knn=(idx, dist, None), transform_seed=seed)
    with warnings.catch_warnings():
        # expected here: a seed makes UMAP single-threaded, and exact neighbours have no search index
        warnings.filterwarnings("ignore", message=r"n_jobs value", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        return reducer.fit_transform(reduced)


_WARM = {"done": False}


def warm_up_umap() -> float:
    """Compile UMAP's kernels once per process (seconds spent; 0 when already warm)."""
    if _WARM["done"]:
        return 0.0
    started = time.perf_counter()
    umap_2d(np.random.default_rng(0).normal(size=(64, 8)), n_neighbors=5, n_epochs=20)
    _WARM["done"] = True
    return time.perf_counter() - started


def cluster_view(features, labels, clusters=None, *, method: str = "pca", seed: int = 0,
                 predictions=None) -> dict[str, list]:
    """Rows for the clusters scatter: 2-D coordinates plus label, cluster, prototype flag, correctness.

    ``clusters`` is a :class:`~explrobust_core.sampling.Way3Clusters` (or None); ``method`` is
    ``"pca"`` (instant) or ``"umap"``.
    """
    if method not in ("pca", "umap"):
        raise ValueError(f"method must be 'pca' or 'umap', got {method!r}")
    coords = pca_2d(features, seed) if method == "pca" else umap_2d(features, seed=seed)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).ravel()
    n = coords.shape[0]
    prototypes = set(clusters.prototypes) if clusters is not None else set()
    view = {"x": coords[:, 0].tolist(), "y": coords[:, 1].tolist(), "label": y.tolist(),
            "cluster": list(clusters.cluster) if clusters is not None else [-1] * n,
            "prototype": [i in prototypes for i in range(n)]}
    if predictions is not None:
        p = np.asarray(predictions.detach().cpu() if isinstance(predictions, torch.Tensor) else predictions).ravel()
        view["correct"] = (p == y).tolist()
    return view


def indices_from_selection(selection) -> list[int]:
    """Image indices of the points picked by a box/lasso selection of a plotly scatter.

    ``selection`` is the ``points`` list of a plotly selection event (or a mapping holding it);
    each point carries its image index as ``customdata`` (a number, or a list or typed-array dict
    whose first item is the index). Points without one (pair lines) are ignored; order kept, duplicates dropped.
    """
    points = selection.get("points", []) if hasattr(selection, "get") else (selection or [])
    out: dict[int, None] = {}
    for p in points:
        data = p.get("customdata") if hasattr(p, "get") else None
        if isinstance(data, dict):  # a typed array (numpy customdata) comes back as {"0": index, "1": …}
            data = data.get("0", next(iter(data.values()), None))
        elif isinstance(data, (list, tuple)):
            data = data[0] if data else None
        if data is None:
            continue
        try:
            out[int(data)] = None
        except (TypeError, ValueError):
            continue
    return list(out)
