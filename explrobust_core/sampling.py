"""Victim/target pair selection for explanation-robustness evaluation.

Way1 draws uniform random pairs; Way2 random pairs whose labels differ. (Way3, clustering on a
reference model's features with stored pair indices, comes with the sampling issue.)
"""

from __future__ import annotations

import numpy as np
import torch


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
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError("Way2 needs images of at least two classes")
    rng = np.random.default_rng(seed)
    victims = rng.integers(0, y.size, size=n_pairs)
    pairs = []
    for v in victims:  # n_pairs draws, not a per-image hot path
        others = np.flatnonzero(y != y[v])
        pairs.append((int(v), int(others[rng.integers(0, others.size)])))
    return pairs
