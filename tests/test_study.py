"""The study core: correlations against scipy, stored evaluations, missing models, atomic storage in the runs dir."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from explrobust_core import study

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models_zoo"


@pytest.fixture(autouse=True)
def _runs(tmp_path, monkeypatch):
    """Nothing is ever written to the developer's own runs directory."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("EXPLROBUST_RUNS", str(runs))
    return runs


def _cards() -> dict[str, dict]:
    """The shipped cards, read as plain JSON (independently of the code under test)."""
    out = {}
    for path in sorted((SHIPPED / "mnist5k").glob("*.json")):
        if path.with_suffix(".safetensors").exists():
            out[f"mnist5k/{path.stem}"] = json.loads(path.read_text())
    return out


def _shipped_entries():
    from explrobust_core.zoo import list_checkpoints

    return list_checkpoints(SHIPPED)


# --------------------------------------------------------------------------- statistics vs scipy


@pytest.mark.parametrize("n", [3, 5, 10, 40])
@pytest.mark.parametrize("scale", [1e-7, 1.0, 1e4])
def test_pearson_and_spearman_match_scipy(n, scale):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = scale * (0.6 * x + rng.normal(size=n))
    y_ties = np.round(y / scale, 0) * scale  # ties on the y side
    for yy in (y, y_ties):
        if np.ptp(yy) == 0:
            continue
        assert study.pearson_r(x, yy) == pytest.approx(scipy.stats.pearsonr(x, yy).statistic, abs=1e-12)
        assert study.spearman_over_models(x, yy) == pytest.approx(scipy.stats.spearmanr(x, yy).statistic, abs=1e-12)
    # along the last axis of a batch
    xs, ys = rng.normal(size=(7, n)), rng.normal(size=(7, n))
    expected = [scipy.stats.spearmanr(a, b).statistic for a, b in zip(xs, ys)]
    np.testing.assert_allclose(study.spearman_over_models(xs, ys), expected, atol=1e-12)
    np.testing.assert_allclose(study.spearman_over_models(xs, np.round(ys, 1)),  # ties: average ranks, as scipy's
                               [scipy.stats.spearmanr(a, b).statistic for a, b in zip(xs, np.round(ys, 1))], atol=1e-12)


def test_constant_side_gives_nan_not_an_error():
    assert np.isnan(study.pearson_r([1, 2, 3], [5, 5, 5]))
    out = study.correlation([1, 2, 3, 4], [5, 5, 5, 5])
    assert out["r"] is None and "same for every model" in out["note"]
    out = study.correlation([1, 2], [3, 4])
    assert out["r"] is None and "at least 3" in out["note"]
    with pytest.raises(ValueError, match="finite"):
        study.correlation([1, 2, float("nan")], [1, 2, 3])
    with pytest.raises(ValueError, match="method"):
        study.correlation([1, 2, 3], [1, 2, 3], "kendall")


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_bootstrap_ci_is_the_percentile_of_scipy_over_the_same_resamples(method):
    rng = np.random.default_rng(3)
    x = rng.uniform(size=9)
    y = x + rng.normal(scale=0.4, size=9)
    y[2] = y[5]  # a tie
    out = study.correlation(x, y, method, n_boot=500, confidence=0.9, seed=7)
    ref = scipy.stats.pearsonr if method == "pearson" else scipy.stats.spearmanr
    boots = []
    for idx in study.bootstrap_indices(9, 500, 7):
        if np.ptp(x[idx]) == 0 or np.ptp(y[idx]) == 0:
            continue  # a degenerate resample: skipped and counted
        boots.append(ref(x[idx], y[idx]).statistic)
    assert out["n_boot_valid"] == len(boots)
    assert out["r"] == pytest.approx(ref(x, y).statistic, abs=1e-12)
    assert out["ci_low"] == pytest.approx(np.percentile(boots, 5), abs=1e-12)
    assert out["ci_high"] == pytest.approx(np.percentile(boots, 95), abs=1e-12)
    assert out["ci_low"] <= out["r"] <= out["ci_high"]


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_exact_permutation_p_matches_scipy(method):
    rng = np.random.default_rng(11)
    x = rng.normal(size=7)
    y = 0.5 * x + rng.normal(size=7)

    def statistic(yy):
        return (scipy.stats.pearsonr if method == "pearson" else scipy.stats.spearmanr)(x, yy).statistic

    ref = scipy.stats.permutation_test((y,), statistic, permutation_type="pairings", n_resamples=np.inf,
                                       vectorized=False, alternative="two-sided")
    p, exact = study.permutation_p(x, y, method)
    assert exact and p == pytest.approx(ref.pvalue, abs=1e-12)


def test_monte_carlo_permutation_p():
    x = np.arange(12.0)
    p, exact = study.permutation_p(x, x ** 2, "spearman", n_perm=4999)
    assert not exact and p == pytest.approx(2 / 5000)  # nothing in the null is as extreme as a perfect order
    rng = np.random.default_rng(0)
    p, _ = study.permutation_p(rng.normal(size=30), rng.normal(size=30), "pearson", n_perm=2000)
    assert p > 0.05


# --------------------------------------------------------------------------- protocols and stored evaluations


def test_protocol_id_ignores_paths_and_batch_sizes():
    cfg = json.loads((SHIPPED / "mnist5k" / "natural.eval.json").read_text())["config"]
    moved = {**cfg, "checkpoint": "/elsewhere/x.safetensors", "model": "x", "batch_size": 7, "attack_batch_size": 3,
             "pairs_file": "/some/other/dir/pairs_way3.json", "ifia": {"steps": 1}}  # ifia did not run
    assert study.protocol_id(moved) == study.protocol_id(cfg)
    assert study.protocol_id({**cfg, "n_images": 999}) != study.protocol_id(cfg)
    assert study.protocol_id({**cfg, "targeted": {**cfg["targeted"], "steps": 10}}) != study.protocol_id(cfg)


def test_shipped_zoo_numbers_are_the_cards():
    cards = _cards()
    data = study.collect(_shipped_entries(), shipped_root=SHIPPED)
    assert not data.problems
    assert set(data.models) == set(cards)
    protocols = study.protocols(data, "mnist5k")
    zoo = protocols[0]
    assert zoo["shipped"] and zoo["n_models"] == len(cards)
    eps = max(zoo["config"]["eps_list"])
    rows = {r["model"]: r for r in study.model_rows(data, "mnist5k", zoo["id"], eps, "le_end")}
    for model, card in cards.items():
        summary = card["metrics"]["evaluation"]["summary"]
        row = rows[model]
        assert row["status"] == "ok"
        assert row["clean_accuracy"] == summary["clean_accuracy"]
        assert row["pgd_accuracy"] == next(r["accuracy"] for r in summary["pgd_accuracy"] if r["eps"] == eps)
        end = summary["explanation"]["explanation_loss_end_paper"]
        assert row["value"] == pytest.approx(end["mean"], rel=1e-12)
        assert (row["value_ci_low"], row["value_ci_high"]) == pytest.approx((end["ci_low"], end["ci_high"]))
        start = summary["explanation"]["explanation_loss_start_paper"]["mean"]
        assert row["m_le_retained"] == pytest.approx(end["mean"] / start, rel=1e-12)
        assert row["source"] == "result file"  # the .eval.json beside the checkpoint
    # the whole-zoo correlation equals scipy's on the card numbers
    used, out = study.split_rows(list(rows.values()), 0.5)
    expected = [m for m, c in cards.items() if c["metrics"]["evaluation"]["summary"]["clean_accuracy"] >= 0.5]
    assert sorted(r["model"] for r in used) == sorted(expected)
    assert all("clean accuracy" in r["reason"] for r in out)
    x = [r["pgd_accuracy"] for r in used]
    y = [r["value"] for r in used]
    assert study.correlation(x, y, "spearman")["r"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)


def test_trades_sweep_and_sep_table_follow_the_cards():
    cards = _cards()
    data = study.collect(_shipped_entries(), shipped_root=SHIPPED)
    zoo = study.protocols(data, "mnist5k")[0]
    rows = study.model_rows(data, "mnist5k", zoo["id"], 0.3, "le_end")
    sweep = study.trades_sweep(rows)
    trades = sorted((c["objective_config"]["beta"], m) for m, c in cards.items() if c["objective"] == "trades")
    assert [(r["sweep_beta"], r["model"]) for r in sweep] == [(0.0, "mnist5k/natural"), *trades]
    table = study.sep_table(rows)
    methods = [r["method"] for r in table]
    assert methods[:3] == ["Normal", "MAT", "SEP_pos"] and set(methods[3:]) == {"SEP_neg"}
    sep_neg = [r["λ"] for r in table if r["method"] == "SEP_neg"]
    assert sep_neg == sorted(sep_neg, key=abs) and all(lam < 0 for lam in sep_neg)
    for r in table:
        s = cards[f"mnist5k/{r['checkpoint']}"]["metrics"]["evaluation"]["summary"]
        assert r["L_e start ×1e-7"] == pytest.approx(s["explanation"]["explanation_loss_start_paper"]["mean"])
        assert r["Acc clean %"] == pytest.approx(100 * s["clean_accuracy"])
        assert r["Acc adv % (ε=0.3)"] == pytest.approx(100 * s["pgd_accuracy"][-1]["accuracy"])


def _copy_without_evaluation(src_stem: Path, directory: Path, name: str) -> Path:
    """A user-zoo copy of a shipped checkpoint whose card has no evaluation."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(src_stem.with_suffix(".safetensors"), directory / f"{name}.safetensors")
    card = json.loads(src_stem.with_suffix(".json").read_text())
    card["name"] = name
    card["metrics"] = {k: v for k, v in card["metrics"].items() if k != "evaluation"}
    (directory / f"{name}.json").write_text(json.dumps(card))
    return directory / f"{name}.safetensors"


def test_a_model_without_evaluation_is_listed_as_missing(tmp_path, _runs):
    from explrobust_core.zoo import list_checkpoints

    user = tmp_path / "user_zoo" / "mnist5k"
    _copy_without_evaluation(SHIPPED / "mnist5k" / "natural", user, "mine")
    entries = list_checkpoints(SHIPPED, tmp_path / "user_zoo")
    # an unreadable study file is reported, not fatal
    bad = study.study_dir(_runs) / "mnist5k" / "natural" / "broken.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    data = study.collect(entries, shipped_root=SHIPPED)
    assert any("broken.json" in p and "unreadable" in p for p in data.problems)
    zoo = study.protocols(data, "mnist5k")[0]
    rows = study.model_rows(data, "mnist5k", zoo["id"], 0.3, "le_end")
    mine = next(r for r in rows if r["model"] == "mnist5k/mine")
    assert mine["status"].startswith("missing") and mine["value"] is None
    used, out = study.split_rows(rows, 0.5)
    assert "mnist5k/mine" not in {r["model"] for r in used}
    assert next(r for r in out if r["model"] == "mnist5k/mine")["reason"].startswith("missing")
    assert len(used) + len(out) == len(rows)  # nobody dropped silently


# --------------------------------------------------------------------------- computing and storing


@pytest.fixture
def digits_checkpoint(tmp_path, digits_convnet, digits_train):
    from explrobust_core.zoo import ModelCard, list_checkpoints, save_checkpoint

    info = digits_train.info
    card = ModelCard(name="tiny", architecture="convnet", dataset="digits", input_shape=info.input_shape,
                     mean=info.mean, std=info.std, classes=info.classes)
    save_checkpoint(digits_convnet, card, tmp_path / "zoo" / "digits")
    return list_checkpoints(tmp_path / "zoo")


TINY = {"n_images": 60, "eps_list": [0.1, 0.2], "pgd": {"steps": 2, "step_size": 0.05},
        "explanation_attack": "targeted", "n_explanation_images": 4, "targeted": {"steps": 3, "record_every": 1}}


def test_evaluate_and_store_writes_atomically_into_the_runs_dir(digits_checkpoint, digits_test, _runs, monkeypatch):
    from explrobust_core.evaluate import make_evaluation_config
    from explrobust_core.zoo import load_checkpoint

    data = study.collect(digits_checkpoint, shipped_root=SHIPPED)
    info = data.models["digits/tiny"]
    cfg = make_evaluation_config(**TINY)
    assert not study.records_for(data, "digits", study.protocol_id(cfg.model_dump(mode="json")))
    model, _ = load_checkpoint(info.path, "cpu")
    path = study.evaluate_and_store(model, info, digits_test, cfg, runs=_runs, shipped_root=SHIPPED)
    assert path.parent == study.study_dir(_runs) / "digits" / "tiny"
    assert path.name == study.protocol_id(cfg.model_dump(mode="json")) + ".json"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    stored = json.loads(path.read_text())
    assert stored["study"]["weights_sha256"] == info.weights_sha256
    assert stored["config"]["model"] == "tiny" and stored["kind"] == "evaluation"
    # the default runs dir is the environment's: the same file is found without naming it
    assert study.runs_dir() == _runs
    again = study.collect(digits_checkpoint, shipped_root=SHIPPED)
    rec = study.records_for(again, "digits", stored["study"]["protocol"])["digits/tiny"]
    assert rec.source == "study run" and rec.summary == stored["summary"]
    row = study.model_rows(again, "digits", rec.protocol, 0.2, "le_end")[0]
    assert row["status"] == "ok"
    assert row["pgd_accuracy"] == stored["summary"]["pgd_accuracy"][1]["accuracy"]

    # a write that fails half way leaves the previous file whole and no temp file
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        study.evaluate_and_store(model, info, digits_test, cfg, runs=_runs, shipped_root=SHIPPED)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_results_for_other_weights_are_not_used(digits_checkpoint, digits_test, _runs):
    from explrobust_core.evaluate import make_evaluation_config
    from explrobust_core.zoo import load_checkpoint

    data = study.collect(digits_checkpoint, shipped_root=SHIPPED)
    info = data.models["digits/tiny"]
    model, _ = load_checkpoint(info.path, "cpu")
    cfg = make_evaluation_config(**{**TINY, "explanation_attack": "none"})
    path = study.evaluate_and_store(model, info, digits_test, cfg, runs=_runs, shipped_root=SHIPPED)
    stored = json.loads(path.read_text())
    stored["study"]["weights_sha256"] = "0" * 64  # as if the checkpoint was retrained since
    path.write_text(json.dumps(stored))
    again = study.collect(digits_checkpoint, shipped_root=SHIPPED)
    assert not again.records and any("other weights" in p for p in again.problems)


def test_store_refuses_the_shipped_zoo(digits_checkpoint, digits_test, tmp_path):
    from explrobust_core.evaluate import make_evaluation_config
    from explrobust_core.zoo import load_checkpoint

    data = study.collect(digits_checkpoint, shipped_root=SHIPPED)
    info = data.models["digits/tiny"]
    model, _ = load_checkpoint(info.path, "cpu")
    cfg = make_evaluation_config(**{**TINY, "explanation_attack": "none", "eps_list": []})
    fake_shipped = tmp_path / "shipped"
    with pytest.raises(ValueError, match="shipped zoo"):
        study.evaluate_and_store(model, info, digits_test, cfg, runs=fake_shipped / "runs", shipped_root=fake_shipped)
    assert not (fake_shipped / "runs").exists()


def test_runs_dir_default(monkeypatch):
    monkeypatch.delenv("EXPLROBUST_RUNS")
    assert study.runs_dir() == Path.home() / ".explrobust" / "runs"


def test_quick_and_rerun_configs_are_runnable():
    cfg = json.loads((SHIPPED / "mnist5k" / "natural.eval.json").read_text())["config"]
    quick = study.quick_config("mnist5k", cfg, shipped_root=SHIPPED)
    assert quick.n_images <= 200 and quick.attack_config().steps <= 50 and quick.eps_list == cfg["eps_list"]
    assert Path(quick.pairs_file).is_file()
    assert study.protocol_id(quick.model_dump(mode="json")) == study.protocol_id(
        study.quick_config("mnist5k", cfg, shipped_root=SHIPPED).model_dump(mode="json"))
    assert study.protocol_id(quick.model_dump(mode="json")) != study.protocol_id(cfg)
    again = study.runnable_config(cfg, "mnist5k", shipped_root=SHIPPED)  # relative pair file found again
    assert Path(again.pairs_file).is_file()
    assert study.protocol_id(again.model_dump(mode="json")) == study.protocol_id(cfg)
    with pytest.raises(FileNotFoundError, match="pair file"):
        study.runnable_config({**cfg, "pairs_file": "nowhere/else.json"}, "mnist5k", shipped_root=SHIPPED)


def test_configs_from_before_an_option_keep_their_protocol():
    """Stored results predating `subset` and the targeted attack's input space were first-n and pixel space."""
    old = {"n_images": 200, "explanation_attack": "targeted", "targeted": {"explainer": "gradient_x_input",
                                                                         "explainer_options": {}, "steps": 50}}
    explicit = {**old, "subset": "first",
                "targeted": {**old["targeted"], "explainer_options": {"space": "pixel"}}}
    assert study.protocol_id(old) == study.protocol_id(explicit)
    import hashlib  # and the id is the one such a result was stored under before the options existed

    assert study.protocol_id(old) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12]
    model_space = {**explicit, "targeted": {**old["targeted"], "explainer_options": {"space": "model"}}}
    assert study.protocol_id(old) != study.protocol_id(model_space)
    assert study.protocol_id(old) != study.protocol_id({**explicit, "subset": "spread"})


def test_two_level_interval_adds_each_models_measurement_error():
    rng = np.random.default_rng(3)
    acc = np.linspace(0.2, 0.8, 7)
    le = 100 + 50 * acc + rng.normal(0, 5, 7)
    exact = [np.full(50, v) for v in le]  # no spread within a model, and 10⁹ images: no measurement error
    one_level = study.correlation(acc, le, "spearman", n_boot=20000, seed=1)
    flat = study.two_level_interval(acc, [10**9] * 7, exact, "spearman", n_boot=20000, seed=2)
    # without within-model error the two-level interval is the plain bootstrap over models (up to resampling)
    assert flat["ci_low"] == pytest.approx(one_level["ci_low"], abs=0.08)
    assert flat["ci_high"] == pytest.approx(one_level["ci_high"], abs=0.08)
    noisy = [v + rng.normal(0, 40, 50) for v in le]  # each model measured on 50 noisy pairs
    wide = study.two_level_interval(acc, [100] * 7, noisy, "spearman", n_boot=20000, seed=2)
    assert wide["ci_low"] < flat["ci_low"] - 0.1


def test_pair_values_read_the_result_files_per_pair_table(tmp_path):
    path = tmp_path / "m.eval.json"
    path.write_text(json.dumps({"kind": "evaluation", "per_image": {
        "explanation_loss_end_paper": [1.0, 2.0, None, 4.0], "attacked": [True, True, True, False]}}))
    assert study.pair_values(path, "le_end").tolist() == [1.0, 2.0]
    assert study.pair_values(path, "le_retained") is None  # a ratio of means has no per-pair values
    assert study.pair_values(None, "le_end") is None
