"""The dashboard's interactive paths (issue 14): partial results stream out of the core while it computes, a
cached page computation returns the same numbers as a fresh one, figures off screen are built only on demand."""

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
ZOO = REPO / "models_zoo" / "mnist5k"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_accuracy_curve_streams_each_eps_and_ends_with_the_full_curve(digits_convnet, digits_test):
    from explrobust_core.accuracy import accuracy_vs_eps

    x, y = digits_test.images[:24], digits_test.labels[:24]
    cfg = {"steps": 3, "random_start": False}
    seen = []
    curve = accuracy_vs_eps(digits_convnet, x, y, [0.0, 0.05, 0.2], "pgd", cfg, batch_size=10,
                            on_eps=lambda c: seen.append((list(c.eps[:len(c.accuracy)]), list(c.accuracy))))
    # one call per ε, the first before the rest are computed, each a prefix of the final curve
    assert [eps for eps, _ in seen] == [[0.0], [0.0, 0.05], [0.0, 0.05, 0.2]]
    assert all(acc == curve.accuracy[:len(acc)] for _, acc in seen)
    plain = accuracy_vs_eps(digits_convnet, x, y, [0.0, 0.05, 0.2], "pgd", cfg, batch_size=10)
    assert plain.accuracy == curve.accuracy and plain.adv_pred == curve.adv_pred


def test_landscape_streams_the_1d_view_before_the_2d_one(mnist_convnet, mnist_test):
    from explrobust_core.landscape import landscape_report

    x, y = mnist_test.batch([3])
    order, views = [], {}

    def on_view(name, view):
        order.append(name)
        views[name] = {k: v.clone() for k, v in view["mean"].items()}

    options = dict(direction="random", radius=0.2, points=5, losses=["ce", "explanation_change"],
                   explainer="gradient", dims=(1, 2), points_2d=3, pgd_steps=2, ifia_steps=0, curvature=False)
    r = landscape_report(mnist_convnet, x, y, on_view=on_view, **options)
    assert order == ["1d", "2d"]
    for name in order:  # what was shown early is what the report holds
        for loss, grid in views[name].items():
            torch.testing.assert_close(grid, r.extra[name]["mean"][loss], rtol=0, atol=0)


def test_stored_accuracy_curve_reads_the_zoo_evaluation(tmp_path):
    import json
    import shutil

    from explrobust_core.accuracy import stored_accuracy_curve

    stored = json.loads((ZOO / "natural.eval.json").read_text())
    curve = stored_accuracy_curve(ZOO / "natural.safetensors")
    rows = sorted((r["eps"], r["accuracy"]) for r in stored["summary"]["pgd_accuracy"])
    assert curve["eps"] == [0.0, *(e for e, _ in rows)]
    assert curve["accuracy"] == [stored["summary"]["clean_accuracy"], *(a for _, a in rows)]
    assert curve["n_images"] == stored["summary"]["n_images"] and curve["steps"] == stored["config"]["pgd"]["steps"]
    assert stored_accuracy_curve(ZOO / "natural.safetensors", norm="l2") is None  # another threat model
    assert curve["attack"] == "pgd" and stored_accuracy_curve(ZOO / "natural.safetensors", attack="autoattack") is None
    # a curve made by AutoAttack (stored under the same key) is AutoAttack's, not PGD's; a row at ε = 0 is kept once
    other = tmp_path / "aa.safetensors"
    shutil.copy(ZOO / "natural.safetensors", other)
    made = dict(stored, summary={**stored["summary"], "classification_attack": "autoattack",
                                 "pgd_accuracy": [{"eps": 0.0, "accuracy": 0.5}, *stored["summary"]["pgd_accuracy"]]},
                config={**stored["config"], "classification_attack": "autoattack", "autoattack": {"norm": "Linf"}})
    (tmp_path / "aa.eval.json").write_text(json.dumps(made))
    assert stored_accuracy_curve(other) is None
    aa = stored_accuracy_curve(other, attack="autoattack")
    assert aa["attack"] == "autoattack" and aa["eps"] == curve["eps"] and aa["accuracy"][0] == 0.5
    assert aa["accuracy"][1:] == curve["accuracy"][1:] and aa["steps"] is None
    lone = tmp_path / "lone.safetensors"  # a checkpoint with no evaluation beside it
    shutil.copy(ZOO / "natural.safetensors", lone)
    assert stored_accuracy_curve(lone) is None


def test_computed_runs_once_per_key_and_hands_out_copies():
    from pages import ui

    calls = []

    def compute():
        calls.append(1)
        return {"accuracy": [0.5, 0.25], "images": torch.arange(4.0)}

    key = ("test_computed", len(calls), id(compute))
    first, again = ui.computed(key, compute), ui.computed(key, compute)
    assert len(calls) == 1
    assert first["accuracy"] == again["accuracy"] and torch.equal(first["images"], again["images"])
    first["accuracy"].append(0.0)  # a session changing its copy changes nobody else's
    assert ui.computed(key, compute)["accuracy"] == [0.5, 0.25] and len(calls) == 1


def test_the_classification_page_answers_a_repeat_from_its_cache_with_the_same_numbers():
    from apptest_pages import by_label, open_page, show_me

    def run():
        at = open_page("classification", "Classification robustness", ["mnist5k/natural"])
        by_label(at.number_input, "Test images").set_value(16)
        by_label(at.slider, "Points on the ε grid").set_value(3)
        by_label(at.number_input, "PGD steps").set_value(3)
        show_me(at)
        return at

    fresh, cached = run(), run()  # a second session: the server's store answers
    assert fresh.dataframe[0].value.equals(cached.dataframe[0].value)
    a, b = (at.session_state["classification_result"]["runs"][0] for at in (fresh, cached))
    assert a["adv_pred"] == b["adv_pred"] and all(torch.equal(p, q) for p, q in zip(a["gallery"], b["gallery"]))
    # the stored evaluation is drawn beside the live curve
    stored = fresh.session_state["classification_result"]["stored"]
    assert [name.split(" (")[0] for name in stored] == ["mnist5k/natural"]


def test_a_download_figure_given_as_a_function_is_built_only_when_asked():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pages.ui_export import EXPORTS, downloads
    import streamlit as st

    built = []

    def make():
        built.append(1)
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        return fig

    st.session_state[EXPORTS] = {}
    downloads("lazy_figure", make, data=None)
    assert built == []
    png = st.session_state[EXPORTS]["lazy_figure.png"]()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and built == [1]


def test_penultimate_features_and_predictions_come_from_one_pass(mnist_convnet, mnist_test):
    from explrobust_core.models import predict, wrap
    from explrobust_core.sampling import penultimate_and_predictions, reference_features

    x, _ = mnist_test.batch(range(300))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    wrapped = wrap(net, mean=[0.1307], std=[0.3081], input_shape=(1, 28, 28), classes=10)
    for model in (mnist_convnet, wrapped):
        features, pred = penultimate_and_predictions(model, x, batch_size=128)
        torch.testing.assert_close(features, reference_features(model, x, batch_size=128), rtol=1e-6, atol=1e-6)
        assert torch.equal(pred, predict(model, x, 128))
    no_head = wrap(torch.nn.Sequential(torch.nn.Conv2d(1, 10, 28), torch.nn.Flatten()), mean=[0.1307], std=[0.3081],
                   input_shape=(1, 28, 28), classes=10)
    assert penultimate_and_predictions(no_head, x) is None  # no linear layer: the caller asks both functions
