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
    from explrobust_core import accuracy as acc
    from explrobust_core import evaluate as ev

    # no random start: the result must not depend on how the images are batched
    cfg = ev.make_evaluation_config(n_images=40, batch_size=40, eps_list=[0.1], pgd={"steps": 2, "random_start": False},
                                    explanation_attack="none")
    plain = ev.evaluate_model(mnist_convnet, mnist_test, cfg)
    real = acc.run_classification_attack  # evaluations attack through accuracy_vs_eps

    def tight(model, x, *args, **kwargs):
        if x.shape[0] > 10:
            raise torch.OutOfMemoryError("simulated")
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(acc, "run_classification_attack", tight)
    squeezed = ev.evaluate_model(mnist_convnet, mnist_test, cfg)
    assert squeezed.summary["pgd_accuracy"] == plain.summary["pgd_accuracy"]
    assert squeezed.summary["clean_accuracy"] == plain.summary["clean_accuracy"]


def test_evaluation_batches_are_capped_by_the_model_on_the_cpu(mnist_convnet, mnist_test, monkeypatch):
    from explrobust_core import accuracy as acc
    from explrobust_core import evaluate as ev

    sizes = []
    real = acc.run_classification_attack

    def record(model, x, *args, **kwargs):
        sizes.append(x.shape[0])
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(acc, "run_classification_attack", record)
    monkeypatch.setattr(ev, "cpu_batch_cap", lambda model, numel: 7)  # as for a model far larger than this one
    cfg = ev.make_evaluation_config(n_images=20, batch_size=20, eps_list=[0.1], pgd={"steps": 1},
                                    explanation_attack="none")
    ev.evaluate_model(mnist_convnet, mnist_test, cfg)
    assert sizes == [7, 7, 6]


# --------------------------------------------------------------------------- explanations and attacks over many images


class Tight(torch.nn.Module):
    """A model whose forward pass "runs out of accelerator memory" above ``limit`` inputs; records batch sizes."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("simulated")
        return self.inner(x)


@pytest.fixture(scope="module")
def jittered(mnist_test):
    x, _ = mnist_test.batch(range(6))
    return (x + 0.01 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)


def test_maps_of_many_images_survive_an_out_of_memory(mnist_convnet, jittered):
    """Integrated gradients over 6 images whose passes may hold at most 8 inputs: the internal batch is halved,
    then the images; the maps equal one unhindered call, and progress reaches every image."""
    from explrobust_core.explain import explanation_maps, explanation_maps_in_batches

    plain = explanation_maps(mnist_convnet, jittered, "integrated_gradients", n_steps=8)
    tight, seen = Tight(mnist_convnet, 8), []
    maps = explanation_maps_in_batches(tight, jittered, "integrated_gradients", n_steps=8,
                                       progress=lambda done, total: seen.append((done, total)))
    assert torch.allclose(maps, plain, rtol=1e-5, atol=1e-8)
    assert any(s > 8 for s in tight.sizes)  # it did run out of (simulated) memory, and recovered
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_maps_of_many_images_are_capped_on_the_cpu(mnist_convnet, jittered, monkeypatch):
    from explrobust_core import batching
    from explrobust_core.explain import explanation_maps, explanation_maps_in_batches

    monkeypatch.setattr(batching, "cpu_batch_cap", lambda model, numel: 4)  # as for a far larger model
    tight = Tight(mnist_convnet, 10_000)
    target = torch.arange(6) % 10  # per-image targets travel with their images
    maps = explanation_maps_in_batches(tight, jittered, "gradient", target=target)
    assert tight.sizes == [4, 2]
    assert torch.allclose(maps, explanation_maps(mnist_convnet, jittered, "gradient", target=target), atol=1e-7)
    tight.sizes.clear()
    explanation_maps_in_batches(tight, jittered, "integrated_gradients", n_steps=8)  # 8 inputs per image
    assert max(tight.sizes[1:]) <= 8  # the first is the forward pass that finds the predicted classes


def test_an_explanation_attack_survives_an_out_of_memory(mnist_convnet, jittered):
    """IFIA (deterministic: no random start) on 6 images whose passes fit only 2: batches are halved, and the
    joined result equals the unhindered one — metrics, adversarial images and the trajectory."""
    from explrobust_core.attacks.explanation import run_explanation_attack

    cfg = {"steps": 2, "k": 50, "eval_k": 50, "random_start": False}
    plain = run_explanation_attack(mnist_convnet, jittered, "ifia", config=cfg)
    tight, seen = Tight(mnist_convnet, 2), []
    squeezed = run_explanation_attack(tight, jittered, "ifia", config=cfg,
                                      progress=lambda done, total: seen.append((done, total)))
    assert set(squeezed.per_image) == set(plain.per_image)
    for key, value in plain.per_image.items():
        assert torch.allclose(torch.as_tensor(squeezed.per_image[key]).double().cpu(), value.double().cpu(),
                              rtol=1e-4, atol=1e-5, equal_nan=True), key
    assert torch.allclose(squeezed.tensors["adversarial"], plain.tensors["adversarial"], atol=1e-6)
    traj, ref = squeezed.extra["trajectory"], plain.extra["trajectory"]
    assert traj["step"] == ref["step"] and torch.allclose(torch.tensor(traj["kendall_tau"]),
                                                          torch.tensor(ref["kendall_tau"]), atol=1e-6)
    assert squeezed.summary["n_attacked"] == plain.summary["n_attacked"]
    assert seen[-1][0] == seen[-1][1] == 6 * 2  # image-steps over several batches
    assert all(a[0] / a[1] < b[0] / b[1] for a, b in zip(seen, seen[1:]))  # never backwards


def test_an_explanation_attack_is_capped_on_the_cpu(mnist_convnet, jittered, monkeypatch):
    from explrobust_core import batching
    from explrobust_core.attacks.explanation import run_explanation_attack

    monkeypatch.setattr(batching, "cpu_batch_cap", lambda model, numel: 6)  # 3 images: a step costs 2 inputs each
    tight = Tight(mnist_convnet, 10_000)
    target = jittered.flip(0)
    r = run_explanation_attack(tight, jittered, "targeted", config={"steps": 2, "record_every": 1},
                               target_images=target)
    assert max(tight.sizes) == 3 and r.tensors["target_map"].shape == (6, 28, 28)
    assert len(r.per_image["explanation_loss_end"]) == 6 and r.summary["n_images"] == 6
    assert [len(v) for v in r.extra["trajectory"]["explanation_loss"]] == [6, 6, 6]
