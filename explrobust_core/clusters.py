"""The Clusters view: victim–target pairs (Way1/2/3) over a reference model's features, drawn in 2-D.

What the dashboard's Clusters page shows, as plain functions of a model and images: the pairs, the
k-means clusters of the reference features, a PCA map of them, and explanation distances (L_e) between
the paired images — within and between clusters (the SEP paper's Appendix C check). The page only
renders what :func:`cluster_pairs` returns; a notebook gets the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .embedding import cluster_view
from .explain import explanation_maps_in_batches
from .metrics import explanation_loss
from .models import predict
from .sampling import (PairSet, cluster_explanation_loss, penultimate_and_predictions, reference_features,
                       sample_pairs, way3_pairs, way3_pairset)

COLOUR_BY = {"cluster": "k-means cluster", "label": "true label", "correct": "correctness"}


@dataclass
class ClusterPairs:
    """Everything the Clusters view draws; arrays are over the ``n`` candidate images."""

    pairs: PairSet
    labels: np.ndarray  # (n,) true labels
    pred: np.ndarray  # (n,) the reference model's predictions
    features: np.ndarray  # (n, D) float32, what was clustered
    cluster: np.ndarray  # (n,) k-means cluster ids
    prototypes: list[int]  # Way3 prototypes (the images nearest the centroids)
    pca: np.ndarray  # (n, 2) PCA coordinates of the features
    spread: dict  # L_e within / between clusters over the paired images (cluster_explanation_loss)
    pair_loss: np.ndarray  # (len(pairs),) float64 L_e between each victim's and target's map

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def crossing(self) -> float:
        """Share of the pairs whose victim and target lie in different clusters."""
        p = np.asarray(self.pairs.pairs, dtype=int).reshape(-1, 2)
        return float(np.mean(self.cluster[p[:, 0]] != self.cluster[p[:, 1]])) if len(p) else 0.0

    def highlighted(self) -> np.ndarray:
        """Points drawn large: the images taking part in pairs, and (Way3) every prototype."""
        out = np.zeros(self.n, dtype=bool)
        out[np.asarray(self.pairs.pairs, dtype=int).ravel()] = True
        if self.pairs.way == 3:
            out[self.prototypes] = True
        return out

    def groups(self, colour_by: str, classes: list[str]) -> np.ndarray:
        """One category name per image: its cluster, its true label or whether it is classified correctly."""
        if colour_by == "cluster":
            return np.array([f"cluster {c}" for c in self.cluster])
        if colour_by == "label":
            return np.array([classes[int(v)] for v in self.labels])
        if colour_by == "correct":
            return np.where(self.pred == self.labels, "correct", "misclassified")
        raise ValueError(f"colour_by must be one of {', '.join(COLOUR_BY)}, got {colour_by!r}")

    def roles(self) -> dict[int, str]:
        """``V`` for an image that is a victim of some pair, else ``T`` for a target."""
        role: dict[int, str] = {}
        for a, b in self.pairs.pairs:
            role.setdefault(a, "V")
            role.setdefault(b, "T")
        return role

    def gallery(self, choice: int | None, limit: int) -> list[int]:
        """Images to show: ``choice=None`` the first pairs (victim, target, …); else cluster ``choice``'s
        members, its prototypes first."""
        if choice is None:
            return [i for p in self.pairs.pairs[: limit // 2] for i in p]
        protos = [p for p in self.prototypes if self.cluster[p] == choice]
        taken = set(protos)
        rest = [i for i in np.flatnonzero(self.cluster == choice).tolist() if i not in taken]
        return (protos + rest)[:limit]


def batched_maps(model: nn.Module, images: torch.Tensor, explainer: str, batch_size: int | None = None,
                 progress=None) -> torch.Tensor:
    """``(N, H, W)`` maps of the predicted class, on CPU, computed in memory-bounded batches on the model's device
    (:func:`explain.explanation_maps_in_batches`; ``batch_size`` images, default: what the model's size allows)."""
    return explanation_maps_in_batches(model, images, explainer, target="predicted", batch_size=batch_size,
                                       progress=progress)


def cluster_pairs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, way: int, n_pairs: int, k: int,
                  dataset: str, split: str = "test", source: str = "penultimate", explainer: str = "gradient",
                  seed: int = 0, reference: str | None = None) -> ClusterPairs:
    """Sample ``way`` pairs over ``images`` and measure them on the reference ``model``.

    Args:
        model: the reference model (its penultimate features or maps are clustered; its maps are compared).
        images, labels: the candidate images ``(N, C, H, W)`` in ``[0, 1]`` and their labels ``(N,)``.
        way: 1 (random pairs), 2 (pairs of different labels) or 3 (k-means prototypes across clusters).
        n_pairs: pairs (Way3: prototypes); k: k-means clusters (Way1/2 use them only for colouring).
        source: ``"penultimate"`` or ``"maps"`` (the ``explainer`` maps) as the features to cluster.
        reference: a name for the reference model stored in the Way3 pair file.

    Returns:
        A :class:`ClusterPairs`.

    Example:
        >>> from explrobust_core import load_checkpoint, load_dataset
        >>> model, card = load_checkpoint("models_zoo/mnist5k/natural.safetensors")
        >>> x, y = load_dataset("mnist5k", "test").batch(range(1000))
        >>> view = cluster_pairs(model, x, y, way=3, n_pairs=150, k=10, dataset="mnist5k")
        >>> view.crossing()  # Way3 pairs always cross clusters
        1.0
    """
    both = penultimate_and_predictions(model, images) if source == "penultimate" else None  # one forward pass
    if both is None:
        both = reference_features(model, images, source=source, explainer=explainer), predict(model, images)
    features, pred = both
    clusters = way3_pairs(features, n_prototypes=n_pairs, k=k, seed=seed)
    if way == 3:
        pairs = way3_pairset(clusters, dataset=dataset, split=split, seed=seed, reference=reference,
                             feature_source=source, k=k)
    else:
        pairs = sample_pairs(way, dataset=dataset, labels=labels, n_pairs=n_pairs, seed=seed, split=split)
    view = cluster_view(features, labels, clusters, method="pca", seed=seed, predictions=pred)
    # explanation distances among the images that take part in pairs (Way3: the prototypes)
    members = sorted({i for p in pairs.pairs for i in p})
    maps = batched_maps(model, images[members], explainer)
    where = {i: j for j, i in enumerate(members)}
    cluster_ids = np.asarray(clusters.cluster)
    victims = torch.tensor([where[a] for a, _ in pairs.pairs], dtype=torch.long)
    targets = torch.tensor([where[b] for _, b in pairs.pairs], dtype=torch.long)
    return ClusterPairs(pairs=pairs, labels=labels.numpy(), pred=pred.numpy(),
                        features=features.numpy().astype(np.float32), cluster=cluster_ids,
                        prototypes=list(clusters.prototypes), pca=np.stack([view["x"], view["y"]], 1),
                        spread=cluster_explanation_loss(maps, cluster_ids[members]),
                        pair_loss=explanation_loss(maps[victims], maps[targets]).double().numpy())


def cluster_table(view: ClusterPairs, classes: list[str]):
    """One row per cluster: size, highlighted points, majority label, purity and accuracy (a pandas frame)."""
    import pandas as pd

    frame = pd.DataFrame({"cluster": view.cluster, "label": view.labels, "correct": view.pred == view.labels,
                          "prototype": view.highlighted()})
    return frame.groupby("cluster").agg(images=("label", "size"), highlighted=("prototype", "sum"),
                                        majority_label=("label", lambda s: classes[int(s.mode().iloc[0])]),
                                        purity=("label", lambda s: float(s.value_counts(normalize=True).max())),
                                        accuracy=("correct", "mean")).reset_index()


def pair_table(view: ClusterPairs, classes: list[str], loss_scale: float = 1.0):
    """One row per pair: indices, labels, clusters and L_e (times ``loss_scale``)."""
    import pandas as pd

    v, t = view.pairs.victims, view.pairs.targets
    return pd.DataFrame({"victim": v, "target": t, "victim_label": [classes[int(view.labels[a])] for a in v],
                         "target_label": [classes[int(view.labels[b])] for b in t],
                         "victim_cluster": [int(view.cluster[a]) for a in v],
                         "target_cluster": [int(view.cluster[b]) for b in t], "L_e": view.pair_loss * loss_scale})
