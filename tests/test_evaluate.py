import json

import pytest
import torch

from explrobust_core.evaluate import PRESETS, evaluate_model, make_evaluation_config
from explrobust_core.registry import ConfigError
from explrobust_core.sampling import way1_pairs, way2_pairs


def test_presets_validate_and_overrides_merge():
    for name in PRESETS:
        cfg = make_evaluation_config(name)
        if name.startswith("sep"):  # the SEP protocol: Dombrowski's targeted attack, maps in the model's input space
            assert cfg.explanation_attack == "targeted" and cfg.targeted.explainer_options == {"space": "model"}
        else:  # RAR's and ART's: IFIA on IG maps
            assert cfg.ifia.explainer == "integrated_gradients" and cfg.ifia.explainer_options["n_steps"] == 100
        if name.startswith("rar"):  # RAR's own attack conventions: softplus β = 1, unattackable counted as robust
            assert cfg.ifia.beta == 1.0 and cfg.ifia.unattackable == "count_as_robust"
    cfg = make_evaluation_config("rar_mnist", ifia={"steps": 7})
    assert cfg.ifia.steps == 7 and cfg.ifia.k == 200 and cfg.pgd.steps == 40  # the rest of the preset stays
    with pytest.raises(ConfigError, match="unknown preset"):
        make_evaluation_config("rar_imagenet")
    with pytest.raises(ConfigError, match="ifia.eps"):
        make_evaluation_config(ifia={"eps": -1})


@pytest.mark.parametrize("attack", ["ifia", "targeted"])
def test_evaluation_report_counts_add_up(mnist_convnet, mnist_test, attack):
    cfg = make_evaluation_config(n_images=120, batch_size=50, eps_list=[0.05, 0.15], pgd={"steps": 10},
                                 explanation_attack=attack, n_explanation_images=12, attack_batch_size=5,
                                 ifia={"steps": 5, "k": 50, "eval_k": 50}, targeted={"steps": 10})
    seen = []
    r = evaluate_model(mnist_convnet, mnist_test, cfg, progress=lambda stage, f: seen.append(stage))
    s = r.summary
    x, y = mnist_test.batch(range(120))
    with torch.no_grad():
        acc = float((mnist_convnet(x).argmax(1) == y).float().mean())
    assert s["clean_accuracy"] == pytest.approx(acc)
    assert s["explanation_skipped_misclassified"] == round((1 - acc) * 120)
    curve = [row["accuracy"] for row in s["pgd_accuracy"]]
    assert curve[0] <= s["clean_accuracy"] and curve[1] <= curve[0]
    e = s["explanation"]
    assert e["n_images"] == 12 and e["n_attacked"] + e["n_unattackable"] == 12
    assert len(r.per_image["index"]) == 12
    # only correctly classified images are attacked
    idx = r.per_image["index"]
    assert bool((mnist_convnet(mnist_test.batch(idx.tolist())[0]).argmax(1) == mnist_test.batch(idx.tolist())[1]).all())
    if attack == "targeted":
        assert bool((r.per_image["label"] != r.per_image["target_label"]).all())  # Way2 pairs: other classes
    assert {"clean accuracy", "PGD accuracy", "explanation attack"} <= set(seen)
    json.dumps(r.to_dict())


def test_pairs():
    pairs = way1_pairs(10, 50, seed=1)
    assert all(v != t and 0 <= v < 10 and 0 <= t < 10 for v, t in pairs)
    assert pairs == way1_pairs(10, 50, seed=1)
    labels = torch.tensor([0, 0, 1, 1, 2])
    assert all(labels[v] != labels[t] for v, t in way2_pairs(labels, 40, seed=0))
    with pytest.raises(ValueError):
        way2_pairs(torch.zeros(5), 3)


def test_a_subset_is_spread_over_the_class_sorted_split(mnist_convnet, mnist_test):
    """mnist5k's test split is stored sorted by class: the first 50 images are all zeros."""
    from explrobust_core.data import spread_indices

    assert set(mnist_test.batch(range(50))[1].tolist()) == {0}
    spread = spread_indices(len(mnist_test), 50)
    assert set(mnist_test.batch(spread)[1].tolist()) == set(range(10))
    for subset, indices in (("spread", spread), ("first", list(range(50)))):
        cfg = make_evaluation_config(n_images=50, subset=subset, eps_list=[], explanation_attack="none")
        x, y = mnist_test.batch(indices)
        with torch.no_grad():
            expected = (mnist_convnet(x).argmax(1) == y).float().mean().item()
        assert evaluate_model(mnist_convnet, mnist_test, cfg).summary["clean_accuracy"] == pytest.approx(expected)
