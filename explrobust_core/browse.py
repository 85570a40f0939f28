"""Choosing which dataset images to show: filters, a class-interleaved order, batched predictions.

The embedded splits are stored sorted by class, so "the first eight images" would all be zeros; a
browser of the dataset (the dashboard's Explorer) shows them class by class in turn instead.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .models import class_probabilities


def interleave_by_label(indices: Sequence[int], labels: torch.Tensor) -> list[int]:
    """``indices`` reordered so that classes take turns: the first of each class (in class order), then the
    second of each, and so on; within a class the original order is kept.

    Example:
        >>> interleave_by_label([0, 1, 2, 3, 4], torch.tensor([0, 0, 0, 1, 2]))
        [0, 3, 4, 1, 2]
    """
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    if idx.numel() == 0:
        return []
    y = labels[idx]
    # rank of each image within its class (0 for the first of a class, 1 for the second, …)
    order = torch.argsort(y, stable=True)
    sorted_y = y[order]
    starts = torch.searchsorted(sorted_y, sorted_y, right=False)
    rank = torch.empty_like(idx)
    rank[order] = torch.arange(idx.numel()) - starts
    key = rank * (int(y.max()) + 1) + y  # by rank, then by class
    return idx[torch.argsort(key, stable=True)].tolist()


def filter_indices(labels: torch.Tensor, classes: Sequence[int] = (), correct: torch.Tensor | None = None,
                   want: str = "all") -> list[int]:
    """Indices of the images whose label is in ``classes`` (all when empty) and, with ``want`` = ``"correct"``
    or ``"incorrect"``, whose prediction is right or wrong by the boolean mask ``correct``; class-interleaved."""
    keep = torch.ones(labels.numel(), dtype=torch.bool)
    if len(classes):
        keep &= torch.isin(labels, torch.as_tensor(list(classes), dtype=labels.dtype))
    if want != "all":
        if want not in ("correct", "incorrect") or correct is None:
            raise ValueError(f"want must be 'all', or 'correct'/'incorrect' with a mask, got {want!r}")
        keep &= correct if want == "correct" else ~correct
    return interleave_by_label(keep.nonzero().squeeze(1).tolist(), labels)


def explain_images(model: nn.Module, images: torch.Tensor, method: str,
                   progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``(N, K)`` and maps ``(N, H, W)`` for the predicted class, both on CPU, in
    memory-bounded batches; ``progress(done, total)`` counts the images explained (captum's display methods
    hook the model while they run: hold the model's lock around a shared one)."""
    from .explain import explanation_maps_in_batches

    probs = class_probabilities(model, images)
    maps = explanation_maps_in_batches(model, images, method, target=probs.argmax(1), progress=progress)
    return probs, maps
