"""Classification robustness page: AppTest runs on the shipped zoo, and the real server in Debian's chromium."""

import numpy as np
import pytest

from apptest_pages import by_label, open_page, show_me

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pgd_curves_gallery_and_minimal_eps():
    at = open_page("classification", "Classification robustness", ["mnist5k/natural", "mnist5k/pgd_at"])
    assert not at.dataframe  # nothing heavy before the click
    by_label(at.number_input, "Test images").set_value(64)
    by_label(at.slider, "Points on the ε grid").set_value(4)  # ε = 0, 0.1, 0.2, 0.3
    by_label(at.number_input, "PGD steps").set_value(10)
    by_label(at.slider, "Bisection rounds").set_value(4)
    by_label(at.checkbox, "Minimal flipping").check()  # on request (off by default: it doubles the wait)
    assert not show_me(at).error
    table = at.dataframe[0].value.set_index("model")
    acc = table[[c for c in table.columns if c.startswith("acc @")]].to_numpy()
    assert acc.shape == (2, 4)
    # accuracy falls with ε (PGD at a larger budget is at least as strong on the same images)
    assert (np.diff(acc, axis=1) <= 1e-9).all() and (acc[:, -1] < acc[:, 0]).all()
    assert acc[0, 0] > 0.9  # clean accuracy of the natural model
    # adversarial training buys accuracy under attack: pgd_at beats natural at ε = 0.3
    assert table.loc["mnist5k/pgd_at", "acc @ ε=0.3"] > table.loc["mnist5k/natural", "acc @ ε=0.3"] + 0.3
    assert table.loc["mnist5k/natural", "median minimal ε"] < table.loc["mnist5k/pgd_at", "median minimal ε"]
    # curve, gallery, minimal ε figure; and their downloads
    assert len(at.get("image")) == 3
    assert len(at.get("download_button")) >= 8

    # the gallery follows model and ε without recomputing the attack
    by_label(at.select_slider, "Gallery ε").set_value(0.3).run()
    assert not at.exception and len(at.get("image")) == 3
    by_label(at.selectbox, "Gallery model").set_value("mnist5k/pgd_at").run()
    assert not at.exception and at.dataframe[0].value.equals(table.reset_index())


def test_fgsm_l2_runs_and_is_weaker_than_pgd():
    at = open_page("classification", "Classification robustness", ["mnist5k/natural"])
    for label, value in [("Test images", 64), ("PGD steps", 10)]:
        by_label(at.number_input, label).set_value(value)
    by_label(at.slider, "Points on the ε grid").set_value(3)
    by_label(at.checkbox, "Minimal flipping").uncheck()
    assert not show_me(at).error
    pgd = at.dataframe[0].value.iloc[0]
    by_label(at.radio, "Attack").set_value("fgsm")
    assert not show_me(at).error
    fgsm = at.dataframe[0].value.iloc[0]
    assert at.subheader[0].value.startswith("FGSM")
    assert "median minimal ε" not in fgsm.index and len(at.get("image")) == 2  # no minimal-ε figure
    assert fgsm["acc @ ε=0"] == pgd["acc @ ε=0"]
    assert fgsm["acc @ ε=0.3"] >= pgd["acc @ ε=0.3"]  # one step is not stronger than ten
    by_label(at.radio, "Threat model").set_value("l2")
    by_label(at.number_input, "ε max").set_value(3.0)
    assert not show_me(at).error
    l2 = at.dataframe[0].value.iloc[0]
    assert "acc @ ε=3" in l2.index and l2["acc @ ε=3"] < l2["acc @ ε=0"]


def test_models_of_two_datasets_are_a_message(tmp_path, monkeypatch, digits_train):
    from explrobust_core.models import build_model
    from explrobust_core.zoo import ModelCard, save_checkpoint
    from pages import ui

    info = digits_train.info  # a user-zoo model of scikit-learn's 8×8 digits, beside the shipped mnist5k ones
    model = build_model("convnet", input_shape=info.input_shape, num_classes=info.num_classes, mean=info.mean,
                        std=info.std)
    save_checkpoint(model.eval(), ModelCard(name="tiny", architecture="convnet", dataset="digits",
                                            input_shape=tuple(info.input_shape), mean=list(info.mean),
                                            std=list(info.std), classes=list(info.classes)), tmp_path)
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(tmp_path))
    ui._entries.clear()  # the checkpoint listing is cached for a few seconds
    try:
        at = open_page("classification", "Classification robustness", ["mnist5k/natural", "digits/tiny"])
        assert "different datasets" in at.error[0].value and not at.button
    finally:
        ui._entries.clear()


@pytest.mark.browser
def test_browser_classification(browser_page):
    from playwright.sync_api import expect

    page = browser_page.page
    browser_page.open("Classification robustness")
    # a lighter run than the defaults: the test server shares two CPU cores with the rest of the suite
    page.get_by_role("spinbutton", name="Test images").fill("32")
    page.get_by_role("spinbutton", name="PGD steps").fill("10")
    page.get_by_text("Minimal flipping ε per image").click()  # on request
    page.get_by_role("button", name="Show me").click()
    browser_page.wait_idle()
    expect(page.get_by_test_id("stDataFrame")).to_have_count(1, timeout=300_000)
    expect(page.get_by_text("on 32 mnist5k test images")).to_be_visible()
    expect(page.get_by_test_id("stImage")).to_have_count(3, timeout=60_000)  # curve, gallery, minimal ε
    expect(page.get_by_text("Adversarial examples")).to_be_visible()
    expect(page.get_by_role("button", name="PNG").first).to_be_visible()
    browser_page.assert_no_exception()
    page.wait_for_function("Array.from(document.querySelectorAll('[data-testid=stImage] img'))"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=60_000)
    browser_page.screenshot("classification")


def test_accuracy_vs_eps_is_the_attack_at_each_eps(digits_convnet, digits_test):
    import torch

    from explrobust_core.accuracy import accuracy_vs_eps
    from explrobust_core.attacks.classification import run_classification_attack

    x, y = digits_test.images[:40], digits_test.labels[:40]
    cfg = {"steps": 5, "random_start": False}  # deterministic: batches of 16 equal one batch of 40
    curve = accuracy_vs_eps(digits_convnet, x, y, [0.0, 0.05, 0.2], "pgd", cfg, batch_size=16, keep=3,
                            flip_iterations=3, flip_config=cfg)
    with torch.no_grad():
        clean = digits_convnet(x).argmax(1)
    assert curve.accuracy[0] == float((clean == y).float().mean()) and curve.adv_pred[0] == clean.tolist()
    for eps, acc, pred in zip(curve.eps[1:], curve.accuracy[1:], curve.adv_pred[1:]):
        direct = run_classification_attack(digits_convnet, x, y, "pgd", cfg, eps=eps)
        assert pred == direct.per_image["adv_pred"].tolist()
        assert acc == direct.summary["adversarial_accuracy"]
    assert curve.rows() == [{"eps": e, "accuracy": a} for e, a in zip(curve.eps, curve.accuracy)]
    assert [t.shape[0] for t in curve.examples] == [3, 3, 3] and len(curve.min_eps) == 40
    assert all(m == 0 for m, c, t in zip(curve.min_eps, clean.tolist(), y.tolist()) if c != t)  # already wrong
    with pytest.raises(ValueError, match="≥ 0"):
        accuracy_vs_eps(digits_convnet, x, y, [-0.1])


def test_autoattack_is_offered_exactly_when_installed(monkeypatch):
    import sys

    at = open_page("classification", "Classification robustness", ["mnist5k/natural"])
    assert "AutoAttack (standard)" in by_label(at.radio, "Attack").options  # the dev set installs the extra
    by_label(at.radio, "Attack").set_value("autoattack")
    by_label(at.number_input, "Test images").set_value(8)
    by_label(at.slider, "Points on the ε grid").set_value(2)  # ε = 0, 0.3
    by_label(at.checkbox, "Minimal flipping").uncheck()
    assert not show_me(at).error
    assert at.subheader[0].value.startswith("AutoAttack")
    row = at.dataframe[0].value.iloc[0]
    assert row["acc @ ε=0.3"] < row["acc @ ε=0"]  # the natural model falls at ε = 0.3
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # as if it were not installed
    at = open_page("classification", "Classification robustness", ["mnist5k/natural"])
    assert by_label(at.radio, "Attack").options == ["PGD (iterated)", "FGSM (one step)"]
