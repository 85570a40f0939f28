"""Attack lab page: AppTest runs on the shipped zoo, and the real server in Debian's chromium."""

import pytest
import torch

from apptest_pages import by_label, open_page

SEP_COMPARISON = ["mnist5k/natural", "mnist5k/pgd_at", "mnist5k/sep_pos"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_untargeted_attack_on_three_models_keeps_labels_and_moves_maps():
    at = open_page("attack_lab", "Attack lab", SEP_COMPARISON)
    assert at.multiselect[0].value == SEP_COMPARISON
    assert not at.dataframe  # nothing heavy before the click
    by_label(at.number_input, "steps").set_value(40)
    next(b for b in at.button if b.label == "Show me").click().run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["model"]) == SEP_COMPARISON
    # the policy keeps labels: every model predicts the same class after the attack as before
    assert table["label kept"].all()
    assert (table["prediction after"] == table["prediction before"]).all()
    # the map moved: top-k intersection after the attack < 1 (= before), explanation loss > 0
    assert (table["top-k intersection"] < 1).all() and (table["top-k intersection"] >= 0).all()
    assert (table["L_e (×10⁻⁷)"] > 0).all()
    assert (table["L∞"] <= 0.1 + 1e-6).all() and (table["L∞"] > 0).all()
    # preview + trajectory figure + one panel figure per model (tabs), with their download buttons
    assert len(at.get("image")) == 2 + len(SEP_COMPARISON)
    assert [t.label for t in at.tabs] == SEP_COMPARISON
    assert [m.value for m in at.metric if m.label == "Label kept"] == ["yes"] * 3
    assert len(at.get("download_button")) > 8

    # another widget outside the form re-shows the stored result without a new run
    at.number_input(key="attack_lab_index").set_value(5).run()
    assert not at.exception
    assert at.dataframe[0].value.equals(table)
    assert any("results of the last run" in c.value for c in at.caption)


def test_targeted_attack_lowers_the_explanation_loss_to_the_target():
    at = open_page("attack_lab", "Attack lab", ["mnist5k/natural"])
    at.radio(key="attack_lab_kind").set_value("targeted").run()
    assert at.number_input(key="attack_lab_target").value is not None
    by_label(at.number_input, "steps").set_value(50)
    next(b for b in at.button if b.label == "Show me").click().run()
    assert not at.exception and not at.error
    row = at.dataframe[0].value.iloc[0]
    assert row["label kept"] and row["target class"] != row["prediction before"]
    assert 0 < row["L_e end (×10⁻⁷)"] < row["L_e start (×10⁻⁷)"]
    assert row["L_e drop (%)"] > 0
    assert len(at.get("image")) == 4  # victim and target previews, trajectory, panels with the target map


def test_the_form_allows_exactly_what_each_attack_config_allows():
    """The form is generated from the attack's typed config: every number widget's bounds are the config's."""
    from explrobust_core.attacks.explanation import EXPLANATION_ATTACKS
    from explrobust_core.registry import field_bounds

    at = open_page("attack_lab", "Attack lab", ["mnist5k/natural"])
    for attack in EXPLANATION_ATTACKS.names():
        at.radio(key="attack_lab_kind").set_value(attack).run()
        assert not at.exception
        fields = EXPLANATION_ATTACKS.get(attack).config.model_fields
        widgets = {w.key.removeprefix(f"attack_lab-{attack}-"): w for w in at.number_input
                   if (w.key or "").startswith(f"attack_lab-{attack}-")}
        numeric = {n for n, f in fields.items() if f.annotation in (int, float)}
        assert set(widgets) == numeric
        for name in numeric:
            bounds = field_bounds(fields[name])
            assert (widgets[name].min, widgets[name].max) == (bounds.get("min_value"), bounds.get("max_value")), name
    # the cases: ε up to 1 (the slider stopped at 0.5), k up to 10⁶ (stopped at 100,000)
    at.radio(key="attack_lab_kind").set_value("ifia").run()
    ifia = {w.key.rsplit("-", 1)[1]: w for w in at.number_input if (w.key or "").startswith("attack_lab-ifia-")}
    assert ifia["eps"].max == 1 and ifia["k"].max == 1_000_000


def test_the_target_survives_switching_attacks():
    at = open_page("attack_lab", "Attack lab", ["mnist5k/natural"])
    at.radio(key="attack_lab_kind").set_value("targeted").run()
    at.number_input(key="attack_lab_target").set_value(123).run()
    at.radio(key="attack_lab_kind").set_value("ifia").run()
    assert at.number_input(key="attack_lab_target").disabled
    at.radio(key="attack_lab_kind").set_value("targeted").run()
    assert at.number_input(key="attack_lab_target").value == 123


def test_impossible_settings_are_messages_not_tracebacks():
    at = open_page("attack_lab", "Attack lab", ["mnist5k/natural"])
    by_label(at.number_input, "k").set_value(5000)  # larger than a 28×28 map
    next(b for b in at.button if b.label == "Show me").click().run()
    assert not at.exception
    assert "larger than the map" in at.error[0].value
    assert not at.dataframe


@pytest.fixture
def digits_user_zoo(tmp_path, monkeypatch, digits_train):
    """A user zoo holding one (untrained) model of another dataset: scikit-learn's 8×8 digits."""
    from explrobust_core.models import build_model
    from explrobust_core.zoo import ModelCard, save_checkpoint
    from pages import ui

    info = digits_train.info
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=info.input_shape, num_classes=info.num_classes, mean=info.mean,
                        std=info.std)
    card = ModelCard(name="tiny", architecture="convnet", dataset="digits", input_shape=tuple(info.input_shape),
                     mean=list(info.mean), std=list(info.std), classes=list(info.classes))
    save_checkpoint(model.eval(), card, tmp_path)
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(tmp_path))
    ui._entries.clear()  # the checkpoint listing is cached for a few seconds
    yield "digits/tiny"
    ui._entries.clear()


def test_models_of_two_datasets_and_a_too_large_k_are_messages(digits_user_zoo):
    at = open_page("attack_lab", "Attack lab", ["mnist5k/natural", digits_user_zoo])
    assert "different datasets" in at.error[0].value and "digits" in at.error[0].value
    assert not at.button  # no form to submit
    at = open_page("attack_lab", "Attack lab", [digits_user_zoo])  # digits alone work, but their maps have only 64 pixels
    next(b for b in at.button if b.label == "Show me").click().run()
    assert not at.exception and "larger than the map (64 pixels)" in at.error[0].value
    by_label(at.number_input, "k").set_value(10)
    next(b for b in at.button if b.label == "Show me").click().run()
    assert "eval_k=100 is larger than the map (64 pixels)" in at.error[0].value  # the reported top-k too
    by_label(at.number_input, "eval k").set_value(10)
    by_label(at.number_input, "steps").set_value(10)
    next(b for b in at.button if b.label == "Show me").click().run()
    assert not at.exception and not at.error
    assert list(at.dataframe[0].value["model"]) == [digits_user_zoo]


@pytest.mark.browser
def test_browser_attack_lab(browser_page):
    from playwright.sync_api import expect

    page = browser_page.page
    browser_page.open("Attack lab")
    expect(page.get_by_test_id("stImage")).to_have_count(1, timeout=60_000)  # the image preview
    page.get_by_role("button", name="Show me").click()
    browser_page.wait_idle()
    expect(page.get_by_test_id("stDataFrame")).to_have_count(1, timeout=120_000)
    expect(page.get_by_test_id("stImage")).to_have_count(3, timeout=60_000)  # preview, trajectory, panels
    expect(page.get_by_test_id("stMetric")).to_have_count(3)  # prediction before, after, label kept
    expect(page.get_by_test_id("stMetric").filter(has_text="Label kept")).to_contain_text("yes")
    expect(page.get_by_role("tab", name="mnist5k/natural")).to_be_visible()
    browser_page.assert_no_exception()
    page.wait_for_function("Array.from(document.querySelectorAll('[data-testid=stImage] img'))"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=60_000)
    browser_page.screenshot("attack_lab")
