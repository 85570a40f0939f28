"""Attacks on real small models (ConvNet trained on mnist5k)."""

import json

import pytest
import torch
from captum.robust import PGD as CaptumPGD

from explrobust_core.attacks.classification import minimal_flip_eps, run_classification_attack
from explrobust_core.attacks.explanation import IFIAConfig, _maps_and_logits, run_explanation_attack
from explrobust_core.explain import EXPLAINERS
from explrobust_core.models import softplus_view
from explrobust_core.registry import ConfigError


@pytest.fixture(scope="module")
def batch(mnist_test):
    return mnist_test.batch(range(200))


def in_ball(x_adv, x, eps, norm="linf"):
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    return bool((size <= eps + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1)


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_pgd_stays_in_the_ball_and_is_seeded(mnist_convnet, batch, norm, eps):
    x, y = batch
    a = run_classification_attack(mnist_convnet, x[:64], y[:64], "pgd", eps=eps, norm=norm, steps=10, seed=1)
    b = run_classification_attack(mnist_convnet, x[:64], y[:64], "pgd", eps=eps, norm=norm, steps=10, seed=1)
    assert in_ball(a.tensors["adversarial"], x[:64], eps, norm)
    assert torch.equal(a.tensors["adversarial"], b.tensors["adversarial"])
    assert a.summary["adversarial_accuracy"] < a.summary["clean_accuracy"]
    # success means the prediction really changed
    s = a.per_image["success"]
    assert torch.equal(s, a.per_image["adv_pred"] != y[:64])


def test_pgd_at_least_as_strong_as_captum(mnist_convnet, batch):
    x, y = batch
    eps, steps, step = 0.1, 20, 0.1 / 8
    ours = run_classification_attack(mnist_convnet, x, y, "pgd", eps=eps, steps=steps, step_size=step)
    torch.manual_seed(0)
    theirs = CaptumPGD(mnist_convnet, lower_bound=0.0, upper_bound=1.0).perturb(
        x, radius=eps, step_size=step, step_num=steps, target=y, random_start=True)
    with torch.no_grad():
        captum_acc = float((mnist_convnet(theirs).argmax(1) == y).float().mean())
    assert ours.summary["adversarial_accuracy"] <= captum_acc + 0.01


def test_fgsm_targeted_and_restarts(mnist_convnet, batch):
    x, y = batch
    x, y = x[:64], y[:64]
    f = run_classification_attack(mnist_convnet, x, y, "fgsm", eps=0.2)
    assert in_ball(f.tensors["adversarial"], x, 0.2)
    goal = (y + 1) % 10
    t = run_classification_attack(mnist_convnet, x, goal, "pgd", eps=0.3, steps=40, step_size=0.02, targeted=True)
    assert torch.equal(t.per_image["success"], t.per_image["adv_pred"] == goal)
    assert t.summary["success_rate"] > 0.5
    one = run_classification_attack(mnist_convnet, x, y, "pgd", eps=0.08, steps=5, seed=0)
    three = run_classification_attack(mnist_convnet, x, y, "pgd", eps=0.08, steps=5, seed=0, restarts=3)
    assert bool((three.per_image["success"] >= one.per_image["success"]).all())
    with pytest.raises(ConfigError, match="restarts"):
        run_classification_attack(mnist_convnet, x, y, "pgd", restarts=2, random_start=False)
    with pytest.raises(ConfigError, match="eps"):
        run_classification_attack(mnist_convnet, x, y, "pgd", eps=-0.1)


def test_minimal_flip_eps(mnist_convnet, batch):
    x, y = batch
    x, y = x[:32], y[:32]
    eps = minimal_flip_eps(mnist_convnet, x, y, eps_max=0.3, iterations=6, config={"steps": 10})
    wrong = mnist_convnet(x).argmax(1) != y
    assert bool((eps[wrong] == 0).all())
    flippable = torch.isfinite(eps) & ~wrong
    assert flippable.any()
    from explrobust_core.attacks.classification import pgd_perturb

    # with the same random start, each image flips at its own minimal ε, and at 60% of it most do not
    eps_run = torch.where(flippable, eps, torch.full_like(eps, 0.3))
    _, ok = pgd_perturb(mnist_convnet, x, y, eps=eps_run, steps=10, generator=torch.Generator().manual_seed(0))
    assert bool(ok[flippable].all())
    _, ok_small = pgd_perturb(mnist_convnet, x, y, eps=eps_run * 0.6, steps=10, generator=torch.Generator().manual_seed(0))
    assert ok_small[flippable].float().mean() < 0.5


# --------------------------------------------------------------------------- explanation, untargeted


@pytest.fixture(scope="module")
def correct(mnist_convnet, batch):
    x, y = batch
    keep = mnist_convnet(x).argmax(1) == y
    return x[keep][:32], y[keep][:32]


def check_label_and_ball(result, x, eps):
    att = result.per_image["attacked"]
    assert torch.equal(result.per_image["final_pred"][att], result.per_image["label"][att])
    assert in_ball(result.tensors["adversarial"], x, eps)


def test_topk_attack_beats_a_random_walk_of_the_same_size(mnist_convnet, correct):
    x, _ = correct
    common = dict(eps=0.1, steps=20, step_size=0.01, k=100, eval_k=100, measure="topk_intersection")
    topk = run_explanation_attack(mnist_convnet, x, "ifia", objective="topk", **common)
    rand = run_explanation_attack(mnist_convnet, x, "ifia", objective="random", **common)
    check_label_and_ball(topk, x, 0.1)
    check_label_and_ball(rand, x, 0.1)
    # the reported map and prediction are kept from the step that chose the iterate: a new pass gives the same bits
    fresh, logits = _maps_and_logits(mnist_convnet, topk.tensors["adversarial"], topk.per_image["label"],
                                     IFIAConfig())
    assert torch.equal(fresh, topk.tensors["attacked_map"])
    assert torch.equal(logits.argmax(1), topk.per_image["final_pred"])
    t, r = topk.summary["topk_intersection"]["mean"], rand.summary["topk_intersection"]["mean"]
    assert t < 0.6 and r > t + 0.15, (t, r)
    assert "softplus_view" in topk.config["attack_model"]  # ReLU model → softplus view, said in the config


def test_ifia_is_seeded_and_respects_options(mnist_convnet, correct):
    x, _ = correct
    x = x[:8]
    opts = dict(eps=0.1, steps=5, k=50, eval_k=50, objective="random", random_start=True, restarts=2, seed=3)
    a = run_explanation_attack(mnist_convnet, x, "ifia", **opts)
    b = run_explanation_attack(mnist_convnet, x, "ifia", **opts)
    assert torch.equal(a.tensors["adversarial"], b.tensors["adversarial"])
    c = run_explanation_attack(mnist_convnet, x, "ifia", objective="center_of_mass", on_label_flip="rollback",
                               eps=0.1, steps=5, k=50, eval_k=50, measure="center_of_mass_shift")
    check_label_and_ball(c, x, 0.1)
    assert c.summary["center_of_mass_shift"]["mean"] > 0


@pytest.mark.parametrize("explainer", EXPLAINERS.names("differentiable"))
def test_every_differentiable_explainer_can_be_attacked(mnist_convnet, correct, explainer):
    x, _ = correct
    options = {"n_steps": 4} if explainer == "integrated_gradients" else (
        {"n_samples": 2} if explainer in ("smoothgrad", "gradient_shap") else {})
    r = run_explanation_attack(mnist_convnet, x[:4], "ifia", explainer=explainer, explainer_options=options,
                               eps=0.1, steps=3, k=50, eval_k=50)
    check_label_and_ball(r, x[:4], 0.1)
    assert r.config["explainer"] == explainer and r.summary["n_images"] == 4


def test_unattackable_images_are_counted_not_scored_as_robust(mnist_convnet, correct):
    x, y = correct
    wrong = (y[:6] + 1) % 10  # asking to keep a label the model does not predict: no iterate can
    excluded = run_explanation_attack(mnist_convnet, x[:6], "ifia", labels=wrong, eps=0.05, steps=3, k=50, eval_k=50)
    assert excluded.summary["n_unattackable"] == 6 and excluded.summary["n_attacked"] == 0
    assert excluded.summary["topk_intersection"]["n"] == 0
    assert torch.isnan(excluded.per_image["kendall_tau"]).all()
    counted = run_explanation_attack(mnist_convnet, x[:6], "ifia", labels=wrong, eps=0.05, steps=3, k=50,
                                     eval_k=50, unattackable="count_as_robust")
    assert counted.summary["n_unattackable"] == 6
    assert counted.summary["topk_intersection"]["mean"] == pytest.approx(1.0)


def test_impossible_settings_are_clear_errors(mnist_convnet, correct):
    x, _ = correct
    with pytest.raises(ValueError, match="larger than the map"):
        run_explanation_attack(mnist_convnet, x[:2], "ifia", k=10_000)
    with pytest.raises(ConfigError, match="eps"):
        run_explanation_attack(mnist_convnet, x[:2], "ifia", eps=-0.1)
    with pytest.raises(ConfigError, match="unknown explanation method"):
        run_explanation_attack(mnist_convnet, x[:2], "ifia", explainer="magic")
    with pytest.raises(ConfigError, match="display-only"):
        run_explanation_attack(mnist_convnet, x[:2], "ifia", explainer="occlusion")
    with pytest.raises(ValueError, match="unknown explanation attack"):
        run_explanation_attack(mnist_convnet, x[:2], "nope")
    with pytest.raises(ValueError, match="target image"):
        run_explanation_attack(mnist_convnet, x[:2], "targeted")


def test_smooth_model_is_attacked_as_is(mnist_convnet, correct):
    x, _ = correct
    r = run_explanation_attack(softplus_view(mnist_convnet, 10.0), x[:2], "ifia", eps=0.05, steps=2, k=50, eval_k=50)
    assert r.config["attack_model"].startswith("the model itself")


# --------------------------------------------------------------------------- explanation, targeted


def test_targeted_attack_lowers_the_explanation_loss(mnist_convnet, correct, batch):
    x, y = correct
    victims, targets = x[:8], x[8:16]
    r = run_explanation_attack(mnist_convnet, victims, "targeted", target_images=targets, steps=80, lr=1e-3,
                               record_every=20)
    s = r.summary
    assert s["n_attacked"] >= 6
    assert s["explanation_loss_end"]["mean"] < 0.9 * s["explanation_loss_start"]["mean"]
    att = r.per_image["attacked"]
    assert torch.equal(r.per_image["final_pred"][att], r.per_image["label"][att])
    traj = r.extra["trajectory"]
    assert traj["step"] == [0, 20, 40, 60, 80] and len(traj["explanation_loss"][0]) == 8
    assert s["explanation_loss_start_paper"]["mean"] == pytest.approx(s["explanation_loss_start"]["mean"] * 1e7)
    bounded = run_explanation_attack(mnist_convnet, victims, "targeted", target_images=targets, steps=20, eps=0.05)
    assert in_ball(bounded.tensors["adversarial"], victims, 0.05)
    json.dumps(r.to_dict())  # NaN-free, serialisable
    assert len(r.to_csv().strip().splitlines()) == 9


def test_autoattack_extra(mnist_convnet, batch):
    x, y = batch
    r = run_classification_attack(mnist_convnet, x[:16], y[:16], "autoattack", eps=0.1, version="custom",
                                  attacks=["apgd-ce"])
    assert in_ball(r.tensors["adversarial"], x[:16], 0.1)
    assert r.summary["adversarial_accuracy"] <= r.summary["clean_accuracy"]
    with pytest.raises(ConfigError, match="custom"):
        run_classification_attack(mnist_convnet, x[:2], y[:2], "autoattack", attacks=["apgd-ce"])


def test_autoattack_without_the_extra_says_how_to_install(mnist_convnet, batch, monkeypatch):
    import sys

    from explrobust_core.attacks.classification import MissingExtraError

    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # as if it were not installed
    x, y = batch
    with pytest.raises(MissingExtraError, match=r"explrobust\[autoattack\]"):
        run_classification_attack(mnist_convnet, x[:2], y[:2], "autoattack")


# --------------------------------------------------------------------------- progress callbacks, trajectories


def test_progress_callback_and_ifia_trajectory(mnist_convnet, correct):
    x, _ = correct
    x = x[:3]
    calls = []
    r = run_explanation_attack(mnist_convnet, x, "ifia", eps=0.1, steps=6, k=50, eval_k=50, objective="random",
                               random_start=True, restarts=2, measure="topk_intersection",
                               progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 12) for i in range(1, 13)]  # once per step over all restarts, for the whole batch
    traj = r.extra["trajectory"]
    assert traj["step"] == list(range(13))
    scores = torch.tensor(traj["topk_intersection"])  # (steps + 1, images)
    kept = torch.tensor(traj["label_kept"])
    assert scores.shape == (13, 3) and kept.dtype == torch.bool
    assert torch.allclose(scores[0], torch.ones(3)) and traj["explanation_loss"][0] == [0.0] * 3
    # the reported iterate is the trajectory's best that kept the label (k == eval_k here)
    best = torch.where(kept[1:], scores[1:], torch.full_like(scores[1:], float("inf"))).amin(0)
    att = r.per_image["attacked"]
    assert torch.allclose(best[att], r.per_image["topk_intersection"][att].float(), atol=1e-6)
    assert (torch.tensor(traj["explanation_loss"])[1:] > 0).all()
    # the centre-of-mass measure is recorded as the shift itself (positive), not the minimised score
    com = run_explanation_attack(mnist_convnet, x[:1], "ifia", eps=0.1, steps=3, k=50, eval_k=50,
                                 objective="center_of_mass", measure="center_of_mass_shift")
    assert min(v[0] for v in com.extra["trajectory"]["center_of_mass_shift"][1:]) > 0

    calls.clear()
    t = run_explanation_attack(mnist_convnet, x[:1], "targeted", target_images=x[1:2], steps=5, record_every=2,
                               progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(1, 6)]
    assert t.extra["trajectory"]["step"] == [0, 2, 4, 5]


def test_pgd_keep_final_matches_captum_with_the_same_random_start(mnist_convnet, batch):
    # like for like: captum's start is rand_like from the global generator, ours rand from a generator with
    # the same seed (the same uniform draws); both take sign steps, clip to the ball and to [0, 1]
    from explrobust_core.attacks.classification import pgd_perturb

    x, y = batch
    x, y = x[:64], y[:64]
    eps, steps, step = 0.1, 10, 0.1 / 8
    ours, any_success = pgd_perturb(mnist_convnet, x, y, eps=eps, steps=steps, step_size=step,
                                    generator=torch.Generator().manual_seed(5), keep="final")
    torch.manual_seed(5)
    # captum's default loss is −log(output), meant for probabilities: give it the cross-entropy of the
    # logits as ours, and let it step on every non-zero gradient as ours (its zero_thresh is 1e-6)
    captum_pgd = CaptumPGD(mnist_convnet, loss_func=torch.nn.CrossEntropyLoss(reduction="none"),
                           lower_bound=0.0, upper_bound=1.0)
    captum_pgd.fgsm.zero_thresh = 0.0
    theirs = captum_pgd.perturb(x, radius=eps, step_size=step, step_num=steps, target=y, random_start=True)
    with torch.no_grad():
        pred_o, pred_c = mnist_convnet(ours).argmax(1), mnist_convnet(theirs).argmax(1)
    # rounding of the start (u·2ε − ε vs (2u − 1)·ε) can flip a sign step on a few pixels; predictions agree
    assert (pred_o != pred_c).sum() <= 1
    assert ((ours - theirs).abs() > 1e-4).float().mean() < 0.01
    kept_best, _ = pgd_perturb(mnist_convnet, x, y, eps=eps, steps=steps, step_size=step,
                               generator=torch.Generator().manual_seed(5))
    with torch.no_grad():  # the default keeps each image's last misclassified iterate: never weaker
        assert (mnist_convnet(kept_best).argmax(1) != y).sum() >= (pred_o != y).sum()
    assert torch.equal(any_success, mnist_convnet(kept_best).argmax(1) != y)


def test_ifia_can_report_the_maps_of_another_method_as_art_does(mnist_convnet, correct):
    """ART attacks logit-IG maps but scores the attack on IG of the loss (trapezoid rule, 101 points): the
    reported metrics compare those maps of the clean and the returned adversarial image."""
    from explrobust_core.evaluate import make_evaluation_config
    from explrobust_core.explain import attribute
    from explrobust_core.metrics import attribution_to_map, kendall_tau, topk_intersection

    x, _ = correct
    x = x[:4]
    art = make_evaluation_config("art_cifar").attack_config()
    opts = dict(eps=0.1, steps=3, step_size=0.02, k=50, eval_k=50, explainer="gradient",
                report_explainer=art.report_explainer,
                report_explainer_options={**art.report_explainer_options, "n_steps": 11})
    r = run_explanation_attack(mnist_convnet, x, "ifia", **opts)
    with torch.no_grad():
        keep = mnist_convnet(x).argmax(1)

    def maps(images):
        return attribution_to_map(attribute(mnist_convnet, images, "integrated_gradients", target=keep,
                                            config=opts["report_explainer_options"]))

    original, final = maps(x), maps(r.tensors["adversarial"])
    ok = r.per_image["attacked"]
    torch.testing.assert_close(r.per_image["kendall_tau"][ok].double(), kendall_tau(original, final)[ok].double(),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(r.per_image["topk_intersection"][ok].double(),
                               topk_intersection(original, final, 50)[ok].double(), atol=1e-6, rtol=0)
    plain = run_explanation_attack(mnist_convnet, x, "ifia", **{k: v for k, v in opts.items()
                                                                 if not k.startswith("report")})
    assert torch.equal(plain.tensors["adversarial"], r.tensors["adversarial"])  # the attack itself is unchanged
    assert not torch.allclose(plain.per_image["kendall_tau"][ok], r.per_image["kendall_tau"][ok])


def test_a_registered_targeted_attack_gets_its_targets_everywhere(mnist_convnet, correct, monkeypatch):
    """An attack tagged as needing targets receives them from run_explanation_attack (and the Attack lab's
    one-image helper and the CLI ask needs_targets), by its registry entry alone: no branch names it."""
    from explrobust_core.attacks import explanation as E
    from explrobust_core.attacks.one_image import needs_targets

    seen = {}

    def toy(model, images, cfg, labels=None, target_images=None, progress=None):
        seen["targets"] = target_images
        return E.targeted(model, images, cfg, labels=labels, target_images=target_images, progress=progress)

    monkeypatch.setattr(E.EXPLANATION_ATTACKS, "_entries", dict(E.EXPLANATION_ATTACKS._entries))
    E.EXPLANATION_ATTACKS.register("toy_targeted", config=E.TargetedConfig, tags=(E.NEEDS_TARGETS,),
                                   summary="a toy")(toy)
    x, _ = correct
    r = run_explanation_attack(mnist_convnet, x[:2], "toy_targeted", config={"steps": 1}, target_images=x[2:4])
    assert seen["targets"] is not None and torch.equal(seen["targets"], x[2:4]) and "n_attacked" in r.summary
    assert needs_targets("toy_targeted") and not needs_targets("ifia")
    assert "toy_targeted" in E.targeted_attacks()
    with pytest.raises(ValueError, match="untargeted"):
        run_explanation_attack(mnist_convnet, x[:2], "ifia", target_images=x[2:4])
