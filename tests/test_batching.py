"""Batches that shrink when they run out of memory, and evaluations that survive it."""

import pytest
import torch

from explrobust_core.batching import cpu_batch_cap, map_batches


def test_a_batch_that_runs_out_of_memory_is_halved_and_retried():
    calls, shrinks = [], []

    def fn(start, stop):
        calls.append((start, stop))
        if stop - start > 3:
            raise torch.OutOfMemoryError("simulated")
        return list(range(start, stop))

    out = map_batches(fn, 10, 8, on_shrink=shrinks.append)
    assert [i for part in out for i in part] == list(range(10))  # every item once, in order
    assert shrinks == [4, 2] and calls[:3] == [(0, 8), (0, 4), (0, 2)]
    assert all(stop - start <= 2 for start, stop in calls[3:])  # the smaller size is kept


def test_one_item_that_does_not_fit_is_an_error():
    def fn(start, stop):
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(torch.OutOfMemoryError):
        map_batches(fn, 3, 4)


def test_cpu_cap_shrinks_with_the_model():
    small = torch.nn.Linear(10, 2)
    large = torch.nn.Sequential(*[torch.nn.Linear(1000, 1000) for _ in range(4)])
    assert cpu_batch_cap(large, 3 * 224 * 224) < cpu_batch_cap(small, 3 * 224 * 224)
    assert cpu_batch_cap(large, 3 * 224 * 224, budget_bytes=1) == 1


def test_evaluation_survives_a_gpu_out_of_memory(mnist_convnet, mnist_test, monkeypatch):
    """The PGD accuracy of an evaluation whose first big batches run out of memory equals an unhindered one."""
    from explrobust_core import evaluate as ev

    # no random start: the result must not depend on how the images are batched
    cfg = ev.make_evaluation_config(n_images=40, batch_size=40, eps_list=[0.1], pgd={"steps": 2, "random_start": False},
                                    explanation_attack="none")
    plain = ev.evaluate_model(mnist_convnet, mnist_test, cfg)
    real = ev.run_classification_attack

    def tight(model, x, *args, **kwargs):
        if x.shape[0] > 10:
            raise torch.OutOfMemoryError("simulated")
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(ev, "run_classification_attack", tight)
    squeezed = ev.evaluate_model(mnist_convnet, mnist_test, cfg)
    assert squeezed.summary["pgd_accuracy"] == plain.summary["pgd_accuracy"]
    assert squeezed.summary["clean_accuracy"] == plain.summary["clean_accuracy"]


def test_evaluation_batches_are_capped_by_the_model_on_the_cpu(mnist_convnet, mnist_test, monkeypatch):
    from explrobust_core import evaluate as ev

    sizes = []
    real = ev.run_classification_attack

    def record(model, x, *args, **kwargs):
        sizes.append(x.shape[0])
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(ev, "run_classification_attack", record)
    monkeypatch.setattr(ev, "cpu_batch_cap", lambda model, numel: 7)  # as for a model far larger than this one
    cfg = ev.make_evaluation_config(n_images=20, batch_size=20, eps_list=[0.1], pgd={"steps": 1},
                                    explanation_attack="none")
    ev.evaluate_model(mnist_convnet, mnist_test, cfg)
    assert sizes == [7, 7, 6]
