"""A new explanation attack is one function and its config, registered: this module registers a toy one (random
noise in the ε-ball) and nothing else, and finds it in the CLI's choices and flags, in ``EvaluationConfig`` and an
evaluation's summary, in the study's measures and protocol line, and in the Attack lab's options and table."""

import json

import pytest
import torch
from pydantic import Field

from explrobust_core.attacks import explanation as E
from explrobust_core.explain import attribute
from explrobust_core.metrics import attribution_to_map, kendall_tau
from explrobust_core.registry import Config
from explrobust_core.results import Result

NAME = "toy_noise"


class NoiseConfig(Config):
    eps: float = Field(0.05, gt=0, le=1, description="L∞ radius of the noise")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the noise")


def toy_noise(model, images, cfg: NoiseConfig, labels=None, progress=None) -> Result:
    """Uniform noise in the ε-ball; how far the gradient map moved, by Kendall τ."""
    x = images.detach()
    gen = torch.Generator().manual_seed(cfg.seed)
    adv = (x + (torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device) * 2 - 1) * cfg.eps).clamp(0, 1)
    with torch.no_grad():
        keep = model(x).argmax(1) if labels is None else labels
        pred = model(adv).argmax(1)
    original = attribution_to_map(attribute(model, x, "gradient", target=keep)).detach()
    attacked = attribution_to_map(attribute(model, adv, "gradient", target=keep)).detach()
    per_image = {"label": keep, "final_pred": pred, "attacked": pred == keep,
                 "noise_tau": kendall_tau(original, attacked), "linf": (adv - x).flatten(1).abs().amax(1)}
    if progress is not None:
        progress(1, 1)
    return Result(kind=f"explanation_attack/{NAME}", config={"attack": NAME, **cfg.model_dump(mode="json")},
                  per_image=per_image, summary=E.attack_summary(NAME, per_image, cfg.seed),
                  extra={"trajectory": {"step": [0], "label_kept": [(pred == keep).tolist()]}},
                  tensors={"adversarial": adv, "original_map": original, "attacked_map": attacked})


@pytest.fixture
def toy_attack():
    """Registered for one test only, then removed, so other tests see the shipped registry."""
    E.EXPLANATION_ATTACKS.register(NAME, config=NoiseConfig, summary="Toy noise: uniform noise in the ε-ball", meta=E.AttackInfo(
        summarised=("noise_tau",), columns=(E.Column("noise_tau", "τ under noise"),),
        measures=(E.ExplanationMeasure("noise_tau", "Kendall τ under noise", "noise_tau", True,
                                       "rank correlation of the maps before and after the noise"),)))(toy_noise)
    yield NAME
    E.EXPLANATION_ATTACKS.remove(NAME)
    assert NAME not in E.EXPLANATION_ATTACKS


def _choices(parser, dest):
    """The choices of ``dest`` in a sub-command's parser (build_parser(command) has one sub-parser)."""
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for command in sub.choices.values():
        for action in command._actions:
            if action.dest == dest and action.choices:
                return list(action.choices)
    return None


def test_the_cli_offers_and_runs_a_registered_attack(toy_attack, tmp_path, digits_convnet, digits_train):
    from explrobust_core.cli import build_parser, main
    from explrobust_core.zoo import ModelCard, save_checkpoint

    assert toy_attack in _choices(build_parser("attack-explanation", toy_attack), "attack")
    evaluate = build_parser("evaluate", None)
    assert toy_attack in _choices(evaluate, "cfg__explanation_attack")
    ns = evaluate.parse_args(["evaluate", "--checkpoint", "c", "--explanation-attack", toy_attack,
                              "--toy-noise-eps", "0.2"])
    assert ns.cfg__explanation_attack == toy_attack and ns.cfg__toy_noise__eps == 0.2  # its flags from its config

    info = digits_train.info
    card = ModelCard(name="digits_convnet", architecture="convnet", dataset="digits", input_shape=info.input_shape,
                     mean=info.mean, std=info.std, classes=info.classes, epochs=3, seed=0)
    checkpoint = save_checkpoint(digits_convnet, card, tmp_path / "zoo")
    out = tmp_path / "out"
    assert main(["attack-explanation", "--checkpoint", str(checkpoint), "--attack", toy_attack, "--indices", "0,1",
                 "--eps", "0.1", "--out", str(out)]) == 0
    result = json.loads((out / f"{toy_attack}.json").read_text())
    assert result["config"]["eps"] == 0.1 and result["summary"]["noise_tau"]["n"] == result["summary"]["n_attacked"]


def test_evaluation_config_and_the_study_take_a_registered_attack(toy_attack, digits_convnet, digits_test):
    from explrobust_core import study
    from explrobust_core.evaluate import EvaluationConfig, evaluate_model, make_evaluation_config
    from explrobust_core.registry import ConfigError

    cfg = make_evaluation_config(n_images=40, batch_size=16, eps_list=[0.1], pgd={"steps": 2},
                                 explanation_attack=toy_attack, n_explanation_images=6, attack_batch_size=4,
                                 **{toy_attack: {"eps": 0.2}})
    assert cfg.attack_config() == NoiseConfig(eps=0.2)
    stored = cfg.model_dump(mode="json")
    assert stored[toy_attack] == {"eps": 0.2, "seed": 0} and EvaluationConfig(**stored) == cfg
    with pytest.raises(ConfigError, match=f"{toy_attack}.eps"):
        make_evaluation_config(explanation_attack=toy_attack, **{toy_attack: {"eps": 5}})

    r = evaluate_model(digits_convnet, digits_test, cfg)
    e = r.summary["explanation"]
    assert e["n_images"] == 6 and e["noise_tau"]["n"] == e["n_attacked"]
    assert -1 <= e["noise_tau"]["mean"] <= 1
    assert "target_index" not in r.per_image  # untargeted: no pairs
    assert study.measures_in(r.config) == ["noise_tau"]
    assert study.EXPLANATION_MEASURES["noise_tau"].higher_is_robust
    assert study.measure_value(r.summary, "noise_tau")[0] == pytest.approx(e["noise_tau"]["mean"])
    assert f"{toy_attack} on 6 images" in study.describe_protocol(r.config)


@pytest.mark.usefixtures("one_torch_thread")
def test_the_attack_lab_offers_and_shows_a_registered_attack(toy_attack):
    from apptest_pages import open_page, show_me

    at = open_page("attack_lab", "Attack lab", ["mnist5k/natural"])
    assert "Toy noise" in at.radio(key="attack_lab_kind").options  # shown by its summary's head
    at.radio(key="attack_lab_kind").set_value(toy_attack).run()
    assert not at.exception
    assert at.number_input(key=f"attack_lab-{toy_attack}-eps").max == 1  # its form from its config
    row = show_me(at).dataframe[0].value.iloc[0]
    assert -1 <= row["τ under noise"] <= 1 and 0 < row["L∞"] <= 0.05 + 1e-6
