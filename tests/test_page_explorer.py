"""Explorer page: its first page shows a mix of classes; the class-interleaved order it browses in."""

import torch

from apptest_pages import open_page
from explrobust_core.browse import filter_indices, interleave_by_label


def test_interleave_by_label_lets_classes_take_turns_and_keeps_every_index():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (60,), generator=gen)
    indices = torch.randperm(60, generator=gen)[:40].tolist()
    order = interleave_by_label(indices, labels)
    assert sorted(order) == sorted(indices)
    for c in range(5):  # within a class the given order is kept
        assert [i for i in order if labels[i] == c] == [i for i in indices if labels[i] == c]
    present = sorted({int(labels[i]) for i in indices})
    assert [int(labels[i]) for i in order[:len(present)]] == present  # the first of each class, in class order
    assert interleave_by_label([], labels) == []


def test_filter_indices_by_class_and_correctness():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    correct = torch.tensor([True, False, True, True, False, True])
    assert filter_indices(labels) == [0, 2, 4, 1, 3, 5]
    assert filter_indices(labels, [1, 2]) == [2, 4, 3, 5]
    assert filter_indices(labels, [], correct, "incorrect") == [1, 4]
    assert filter_indices(labels, [0], correct, "correct") == [0]


def test_the_first_page_shows_a_mix_of_classes():
    at = open_page("explorer", "Explorer", ["mnist5k/natural"])
    captions = [c for im in at.get("image") for c in im.captions]
    true_classes = [c.split()[1] for c in captions]  # "#index class → prediction (confidence)"
    assert len(true_classes) == 8 and len(set(true_classes)) == 8
