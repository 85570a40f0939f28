import json

import pytest
import torch

from explrobust_core.evaluate import PRESETS, evaluate_model, make_evaluation_config
from explrobust_core.registry import ConfigError
from explrobust_core.sampling import way1_pairs, way2_pairs


def test_presets_validate_and_overrides_merge():
    for name in PRESETS:
        cfg = make_evaluation_config(name)
        attack = cfg.attack_config()
        if name.startswith("sep"):  # the SEP protocol: Dombrowski's targeted attack, maps in the model's input space
            assert cfg.explanation_attack == "targeted" and attack.explainer_options == {"space": "model"}
        else:  # RAR's and ART's: IFIA on IG maps
            assert cfg.explanation_attack == "ifia"
            assert attack.explainer == "integrated_gradients" and attack.explainer_options["n_steps"] == 100
        if name.startswith("rar"):  # RAR's own attack conventions: softplus β = 1, unattackable counted as robust
            assert attack.beta == 1.0 and attack.unattackable == "count_as_robust"
    cfg = make_evaluation_config("rar_mnist", ifia={"steps": 7})
    attack = cfg.attack_config()
    assert attack.steps == 7 and attack.k == 200 and cfg.pgd.steps == 40  # the rest of the preset stays
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


def test_stored_configs_with_both_attack_blocks_still_load():
    """Evaluations and job specs stored before the settings were generic carry an `ifia` and a `targeted` block
    whatever ran: the chosen one is the attack's config, the other is dropped, and the stored form is unchanged."""
    from explrobust_core.evaluate import EvaluationConfig

    for name in PRESETS:
        new = make_evaluation_config(name)
        stored = new.model_dump(mode="json")
        assert new.explanation_attack in stored and "explanation_attack_config" not in stored
        old = {**stored, "ifia": make_evaluation_config().model_dump(mode="json")["ifia"],
               "targeted": make_evaluation_config(explanation_attack="targeted").model_dump(mode="json")["targeted"],
               new.explanation_attack: stored[new.explanation_attack]}
        assert EvaluationConfig(**old) == new
    with pytest.raises(ConfigError, match="targeted.steps"):  # an unused block is still validated
        make_evaluation_config(targeted={"steps": 0})


def test_assigning_another_attack_checks_the_settings_held():
    from pydantic import ValidationError

    from explrobust_core.attacks.explanation import TargetedConfig

    cfg = make_evaluation_config()
    cfg.explanation_attack = "none"
    assert cfg.explanation_attack_config == {} and cfg.attack_config() is None
    cfg.explanation_attack = "targeted"  # from no settings: the targeted attack's defaults
    assert cfg.attack_config() == TargetedConfig()
    held = make_evaluation_config()
    before = held.model_dump()
    with pytest.raises(ValidationError, match="targeted.k"):
        held.explanation_attack = "targeted"  # IFIA's settings do not fit it
    assert held.explanation_attack == "ifia" and held.model_dump() == before  # a refusal changes nothing


def test_the_evaluation_curve_is_pgd_per_batch(mnist_convnet, mnist_test):
    """evaluate's PGD accuracy is accuracy_vs_eps over the same batches: the same numbers as attacking each
    batch of batch_size images with run_classification_attack (the loop evaluate ran before)."""
    from explrobust_core.attacks.classification import run_classification_attack
    from explrobust_core.data import spread_indices

    cfg = make_evaluation_config(n_images=60, batch_size=25, eps_list=[0.05, 0.2], pgd={"steps": 5},
                                 explanation_attack="none")
    rows = evaluate_model(mnist_convnet, mnist_test, cfg).summary["pgd_accuracy"]
    indices = spread_indices(len(mnist_test), 60)
    for row, eps in zip(rows, cfg.eps_list):
        kept = 0
        for start in range(0, 60, 25):
            x, y = mnist_test.batch(indices[start:start + 25])
            r = run_classification_attack(mnist_convnet, x, y, "pgd", cfg.pgd, eps=eps)
            kept += int((r.per_image["adv_pred"] == y).sum())
        assert row == {"eps": eps, "accuracy": kept / 60}


def test_autoattack_makes_the_curve_when_installed_and_is_refused_clearly_when_not(digits_test, monkeypatch):
    import sys

    from explrobust_core.attacks.classification import run_classification_attack
    from explrobust_core.data import spread_indices
    from explrobust_core.evaluate import EvaluationConfig, available_presets
    from explrobust_core.models import build_model

    # an untrained model: AutoAttack attacks only the few images it gets right, so this stays fast (a trained
    # one takes minutes on the CPU); the check is that evaluate's curve is AutoAttack's with these settings
    torch.manual_seed(0)
    info = digits_test.info
    model = build_model("convnet", input_shape=info.input_shape, num_classes=10, mean=info.mean, std=info.std).eval()

    assert "autoattack_mnist" in available_presets()  # the dev set installs the extra
    preset = make_evaluation_config("autoattack_mnist")
    assert preset.classification_attack == "autoattack" and preset.attack_config() == make_evaluation_config(
        "rar_mnist").attack_config()  # RAR's MNIST protocol, with AutoAttack for the curve
    aa = {"version": "custom", "attacks": ["apgd-ce"], "seed": 3}
    cfg = make_evaluation_config(n_images=24, batch_size=24, eps_list=[0.1], explanation_attack="none",
                                 classification_attack="autoattack", autoattack=aa)
    stored = cfg.model_dump(mode="json")
    assert stored["autoattack"]["attacks"] == ["apgd-ce"] and "pgd" not in stored and EvaluationConfig(**stored) == cfg
    r = evaluate_model(model, digits_test, cfg)
    assert r.summary["classification_attack"] == "autoattack"
    x, y = digits_test.batch(spread_indices(len(digits_test), 24))
    direct = run_classification_attack(model, x, y, "autoattack", {**aa, "eps": 0.1})
    assert 0 < int((direct.per_image["clean_pred"] == y).sum())  # something to attack
    assert r.summary["pgd_accuracy"] == [{"eps": 0.1, "accuracy": int((direct.per_image["adv_pred"] == y).sum()) / 24}]

    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # as if it were not installed
    assert "autoattack_mnist" not in available_presets()
    with pytest.raises(ConfigError, match=r"not installed.*explrobust\[autoattack\]"):
        make_evaluation_config("autoattack_mnist")
