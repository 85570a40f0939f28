"""Victim/target pair selection for explanation-robustness evaluation, stored with provenance.

* **Way1** — uniform random (victim, target) pairs.
* **Way2** — random pairs whose labels differ (the target explains another class).
* **Way3** — the SEP paper's clustering: features of a reference model (penultimate layer by
  default, or explanation maps), k-means, the images nearest each centroid are the prototypes
  (the paper keeps 150), and each prototype is paired with a prototype of *another* cluster.

Choices we made where the paper is silent (research/sep_paper.md §3): features are reduced by PCA
to at most 50 dimensions before k-means (distances in the raw 784-d map space are dominated by
noise); prototypes are split evenly across clusters (the remainder goes to the largest
clusters); each victim's target cluster is drawn uniformly among the other clusters and the target
is a prototype of it. Pair files are JSON with provenance and are reused by every evaluation of
the dataset, so every model is measured on the same pairs.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from .io import atomic_write_json
from .registry import Config


def _labels_array(labels) -> np.ndarray:
    return np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).ravel()


def way1_pairs(n_items: int, n_pairs: int, seed: int = 0) -> list[tuple[int, int]]:
    """Uniform random (victim, target) index pairs with victim ≠ target."""
    if n_items < 2:
        raise ValueError("pairs need at least two images")
    rng = np.random.default_rng(seed)
    victims = rng.integers(0, n_items, size=n_pairs)
    offsets = rng.integers(1, n_items, size=n_pairs)  # never 0: target ≠ victim
    return [(int(v), int((v + o) % n_items)) for v, o in zip(victims, offsets)]


def way2_pairs(labels, n_pairs: int, seed: int = 0) -> list[tuple[int, int]]:
    """Random (victim, target) pairs whose labels differ (the target explains another class)."""
    y = _labels_array(labels)
    if np.unique(y).size < 2:
        raise ValueError("Way2 needs images of at least two classes")
    rng = np.random.default_rng(seed)
    victims = rng.integers(0, y.size, size=n_pairs)
    order = np.argsort(y, kind="stable")
    counts = np.bincount(np.searchsorted(np.unique(y), y))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cls = np.searchsorted(np.unique(y), y[victims])
    # a uniform draw among the images of the other classes: skip over the victim's own class block
    r = rng.integers(0, y.size - counts[cls])
    r = np.where(r >= starts[cls], r + counts[cls], r)
    return [(int(v), int(order[t])) for v, t in zip(victims, r)]


# --------------------------------------------------------------------------- Way3


def reference_features(model: nn.Module, images: torch.Tensor, *, source: Literal["penultimate", "maps"] = "penultimate",
                       explainer: str = "gradient", batch_size: int | None = None) -> torch.Tensor:
    """Per-image feature vectors ``(N, D)`` for clustering: penultimate activations or flattened maps, in
    memory-bounded batches (``batch_size`` images; default: what the model's size allows)."""
    from .batching import map_batches, start_batch_size
    from .explain import explanation_maps_in_batches
    from .models import device_of, eval_mode, lean_forward

    if source != "penultimate":
        with eval_mode(model):
            return explanation_maps_in_batches(model, images, explainer, target="predicted",
                                               batch_size=batch_size).flatten(1)
    device = device_of(model)

    def embed(start: int, stop: int) -> torch.Tensor:
        return lean_forward(model, images[start:stop].to(device), embed=True).flatten(1).cpu()

    size = batch_size or start_batch_size(model, images[0].numel(), items=images.shape[0])
    with eval_mode(model), torch.no_grad():
        return torch.cat(map_batches(embed, images.shape[0], size))


def penultimate_and_predictions(model: nn.Module, images: torch.Tensor,
                                batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Penultimate features ``(N, D)`` (as :func:`reference_features` gives them) and predicted classes ``(N,)``,
    both on CPU, from one forward pass per batch: the features are the input of the model's classification layer,
    caught on the way to the logits. ``None`` for a model that names no such layer (ask both functions then)."""
    from .batching import map_batches, start_batch_size
    from .models import ImageClassifier, WrappedClassifier, device_of, eval_mode, lean_forward

    if isinstance(model, ImageClassifier):
        head = model.head
    elif isinstance(model, WrappedClassifier) and model.head_name is not None:
        head = model.net.get_submodule(model.head_name)
    else:
        return None
    if images.shape[0] == 0:
        return None
    device, caught = device_of(model), []

    def both(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        caught.clear()
        # the same features and logits bit for bit, less work (the Clusters page's 1,000 mnist5k images: 0.31 s
        # instead of 0.37 s on one thread); lean_forward's view shares ``head``: the hook catches its input
        logits = lean_forward(model, images[start:stop].to(device))
        return caught[-1].flatten(1).cpu(), logits.argmax(1).cpu()

    size = batch_size or start_batch_size(model, images[0].numel(), items=images.shape[0])
    handle = head.register_forward_pre_hook(lambda _module, inputs: caught.append(inputs[0]))
    try:
        with eval_mode(model), torch.no_grad():
            parts = map_batches(both, images.shape[0], size)
    finally:
        handle.remove()
    return torch.cat([f for f, _ in parts]), torch.cat([p for _, p in parts])


def reduce_dims(features: torch.Tensor | np.ndarray, max_dims: int = 50, seed: int = 0) -> np.ndarray:
    """PCA to at most ``max_dims`` dimensions (the identity for narrower features)."""
    from sklearn.decomposition import PCA

    f = np.asarray(features, dtype=np.float64)
    dims = min(max_dims, f.shape[1], f.shape[0])
    if dims >= f.shape[1]:
        return f
    return PCA(n_components=dims, random_state=seed).fit_transform(f)


class Way3Clusters(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    cluster: list[int]  # cluster id of every image
    prototypes: list[int]  # image indices, nearest to their centroid first
    prototype_cluster: list[int]
    pairs: list[tuple[int, int]]


def way3_pairs(features, n_prototypes: int = 150, k: int = 10, seed: int = 0) -> Way3Clusters:
    """k-means on the (PCA-reduced) features; prototypes nearest the centroids; cross-cluster pairs."""
    from sklearn.cluster import KMeans

    reduced = reduce_dims(features, seed=seed)
    n = reduced.shape[0]
    if not 2 <= k <= n:
        raise ValueError(f"k must be between 2 and the number of images ({n}), got {k}")
    if n_prototypes < k:
        raise ValueError(f"n_prototypes ({n_prototypes}) must be at least k ({k}): one prototype per cluster")
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(reduced)
    labels = km.labels_
    dist = np.linalg.norm(reduced - km.cluster_centers_[labels], axis=1)
    sizes = np.bincount(labels, minlength=k)
    quota = np.minimum(sizes, n_prototypes // k)
    for c in np.argsort(-sizes, kind="stable")[: n_prototypes - quota.sum()]:  # remainder to the largest
        quota[c] = min(sizes[c], quota[c] + 1)
    prototypes, proto_cluster = [], []
    for c in range(k):  # k iterations, not a per-image loop
        members = np.flatnonzero(labels == c)
        chosen = members[np.argsort(dist[members], kind="stable")[: quota[c]]]
        prototypes += chosen.tolist()
        proto_cluster += [c] * len(chosen)
    prototypes_arr, proto_cluster_arr = np.array(prototypes), np.array(proto_cluster)
    rng = np.random.default_rng(seed)
    other = rng.integers(1, k, size=len(prototypes)) + proto_cluster_arr  # a uniform other cluster
    other %= k
    pairs = []
    for v, c in zip(prototypes_arr, other):
        candidates = prototypes_arr[proto_cluster_arr == c]
        pairs.append((int(v), int(candidates[rng.integers(0, candidates.size)])))
    return Way3Clusters(cluster=labels.tolist(), prototypes=prototypes, prototype_cluster=proto_cluster, pairs=pairs)


# --------------------------------------------------------------------------- stored pair sets


class PairSet(BaseModel):
    """Stored victim/target pairs of one dataset split, with how they were made."""

    model_config = ConfigDict(extra="forbid")

    way: Literal[1, 2, 3]
    dataset: str
    split: Literal["train", "test"] = "test"
    n_candidates: int = Field(..., ge=2, description="pairs index the first n_candidates images of the split")
    seed: int = Field(0, ge=0)
    pairs: list[tuple[int, int]] = Field(..., min_length=1, max_length=1_000_000)
    reference: str | None = Field(None, description="Way3: the reference checkpoint (name and sha256)")
    feature_source: str | None = None
    k: int | None = None
    prototypes: list[int] | None = None
    prototype_cluster: list[int] | None = None
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @model_validator(mode="after")
    def _in_range(self) -> "PairSet":
        bad = [p for p in self.pairs if not (0 <= p[0] < self.n_candidates and 0 <= p[1] < self.n_candidates)]
        if bad:
            raise ValueError(f"pairs {bad[:3]} index outside the first {self.n_candidates} images")
        return self

    @property
    def victims(self) -> list[int]:
        return [v for v, _ in self.pairs]

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.pairs]


class SampleConfig(Config):
    """Options of the ``sample`` command: which pairs to draw, capped (10⁹ pairs would need gigabytes)."""

    way: Literal[1, 2, 3] = Field(..., description="Way1 (uniform), Way2 (other class) or Way3 (clusters)")
    dataset: str = Field("mnist5k", min_length=1, max_length=64, description="registered dataset")
    split: Literal["train", "test"] = "test"
    n_candidates: int = Field(1000, ge=2, le=100_000, description="pairs index the first n images of the split")
    n_pairs: int = Field(150, ge=1, le=100_000, description="pairs (Way3: prototypes; the paper uses 150)")
    k: int = Field(10, ge=2, le=1000, description="Way3: number of k-means clusters")
    feature_source: Literal["penultimate", "maps"] = Field("penultimate", description="Way3: what is clustered")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the draw")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from .data import DATASETS

        DATASETS.get(v)  # raises with the list of valid names
        return v


def check_not_in_shipped_zoo(path: str | Path) -> Path:
    """Refuse a path inside the shipped zoo: its pair files are the reference every model is measured on."""
    from .zoo import shipped_zoo_dir

    p = Path(path)
    if p.resolve().is_relative_to(shipped_zoo_dir().resolve()):
        raise ValueError(f"{p} is inside the shipped zoo ({shipped_zoo_dir()}), which is never written; "
                         "choose another path (by default pairs go to the runs folder)")
    return p


def save_pairs(pairs: PairSet, path: str | Path) -> Path:
    return atomic_write_json(check_not_in_shipped_zoo(path), pairs.model_dump(mode="json"))


def load_pairs(path: str | Path, dataset_size: int | None = None) -> PairSet:
    from pydantic import ValidationError

    from .registry import format_validation_error

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pair file {p} does not exist")
    if p.stat().st_size > 64 << 20:
        raise ValueError(f"pair file {p} is implausibly large")
    try:
        pairs = PairSet.model_validate_json(p.read_text())
    except ValidationError as err:
        raise ValueError(format_validation_error(err, f"pair file {p}")) from None
    if dataset_size is not None and pairs.n_candidates > dataset_size:
        raise ValueError(f"pair file {p} indexes {pairs.n_candidates} images but the split has {dataset_size}")
    return pairs


def sample_pairs(way: int, *, dataset: str, labels: torch.Tensor, n_pairs: int = 150, seed: int = 0,
                 split: str = "test", model: nn.Module | None = None, images: torch.Tensor | None = None,
                 reference: str | None = None, k: int = 10, feature_source: str = "penultimate",
                 explainer: str = "gradient") -> PairSet:
    """A :class:`PairSet` of ``way`` over the given candidate images (Way3 needs a reference model).

    Args:
        way: 1 (random pairs), 2 (pairs of different labels) or 3 (k-means prototypes across clusters).
        dataset, split: names stored in the pair set; labels: the candidates' labels ``(N,)``.
        n_pairs, seed: how many pairs (Way3: prototypes) and the RNG seed; model, images, k, feature_source,
            explainer, reference: Way3's reference model, candidate images and clustering options.

    Returns:
        A :class:`PairSet` (``pairs``, ``victims``, ``targets``; save it with :func:`save_pairs`).

    Example:
        >>> data = load_dataset("mnist5k", "test")
        >>> pairs = sample_pairs(2, dataset="mnist5k", labels=data.all_labels(), n_pairs=150)
        >>> len(pairs.pairs)
        150
    """
    n = int(labels.numel())
    if way == 1:
        return PairSet(way=1, dataset=dataset, split=split, n_candidates=n, seed=seed, pairs=way1_pairs(n, n_pairs, seed))
    if way == 2:
        return PairSet(way=2, dataset=dataset, split=split, n_candidates=n, seed=seed,
                       pairs=way2_pairs(labels, n_pairs, seed))
    if way != 3:
        raise ValueError(f"way must be 1, 2 or 3, got {way}")
    if model is None or images is None:
        raise ValueError("Way3 needs a reference model and the candidate images")
    features = reference_features(model, images, source=feature_source, explainer=explainer)
    clusters = way3_pairs(features, n_prototypes=n_pairs, k=k, seed=seed)
    return way3_pairset(clusters, dataset=dataset, split=split, seed=seed, reference=reference,
                        feature_source=feature_source, k=k)


def way3_pairset(clusters: Way3Clusters, *, dataset: str, split: str = "test", seed: int = 0,
                 reference: str | None = None, feature_source: str = "penultimate", k: int | None = None) -> PairSet:
    """The :class:`PairSet` of already computed Way3 clusters (every image of ``clusters`` is a candidate)."""
    return PairSet(way=3, dataset=dataset, split=split, n_candidates=len(clusters.cluster), seed=seed,
                   pairs=clusters.pairs, reference=reference, feature_source=feature_source,
                   k=k if k is not None else max(clusters.cluster) + 1, prototypes=clusters.prototypes,
                   prototype_cluster=clusters.prototype_cluster)


# --------------------------------------------------------------------------- explanation distances


def pairwise_explanation_loss(maps: torch.Tensor) -> torch.Tensor:
    """``(M, M)`` matrix of L_e between every two maps ``(M, H, W)`` (float64, exact differences)."""
    m = maps.detach().flatten(1).to(torch.float64)
    d = torch.cdist(m[None], m[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
    return d.pow(2) / m.shape[1]


def cluster_explanation_loss(maps: torch.Tensor, cluster) -> dict[str, float | int | None]:
    """Mean and spread of L_e between maps of the same cluster and of different clusters.

    The check of the SEP paper's Appendix C (images of one cluster should have similar
    explanations): ``maps`` ``(M, H, W)`` with cluster ids ``cluster`` ``(M,)``, every unordered pair
    of distinct maps counted once. Raw L_e units; ``None`` where no such pair exists.
    """
    c = torch.as_tensor(_labels_array(cluster))
    if c.numel() != maps.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps but {c.numel()} cluster ids")
    d = pairwise_explanation_loss(maps)
    upper = torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)
    same = (c[:, None] == c[None, :]) & upper
    out: dict[str, float | int | None] = {}
    for name, mask in (("intra", same), ("inter", upper & ~same)):
        values = d[mask]
        out[f"{name}_pairs"] = int(values.numel())
        out[f"{name}_mean"] = float(values.mean()) if values.numel() else None
        out[f"{name}_std"] = float(values.std()) if values.numel() > 1 else None
    return out
