"""The Robustness study page: the shipped zoo's stored evaluations answer the question in one view,
a model without an evaluation is listed, and the button measures it into the runs directory."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import scipy.stats

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models_zoo" / "mnist5k"


def _card_numbers() -> dict[str, dict]:
    """Per shipped model, straight from its card: clean and PGD accuracy at the largest ε, L_e start/end."""
    out = {}
    for path in sorted(SHIPPED.glob("*.json")):
        if not path.with_suffix(".safetensors").exists():
            continue
        card = json.loads(path.read_text())
        s = card["metrics"]["evaluation"]["summary"]
        top = max(s["pgd_accuracy"], key=lambda r: r["eps"])
        out[f"mnist5k/{card['name']}"] = {
            "name": card["name"], "clean": s["clean_accuracy"], "pgd": top["accuracy"], "eps": top["eps"],
            "start": s["explanation"]["explanation_loss_start_paper"]["mean"],
            "end": s["explanation"]["explanation_loss_end_paper"]["mean"]}
    return out


@pytest.fixture
def study_env(tmp_path, monkeypatch):
    """Runs dir and user zoo in tmp; the user zoo holds a copy of the natural model with no evaluation."""
    import streamlit as st

    user = tmp_path / "user_zoo" / "mnist5k"
    user.mkdir(parents=True)
    shutil.copy(SHIPPED / "natural.safetensors", user / "mine.safetensors")
    card = json.loads((SHIPPED / "natural.json").read_text())
    card["name"] = "mine"
    card["metrics"] = {}
    (user / "mine.json").write_text(json.dumps(card))
    monkeypatch.setenv("EXPLROBUST_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(tmp_path / "user_zoo"))
    st.cache_data.clear()  # the checkpoint listing is cached across AppTest runs of this process
    yield tmp_path
    st.cache_data.clear()


def _open_study(**state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page("pages/study.py").run()
    assert not at.exception, at.exception
    return at


def _tiny_quick_protocol(monkeypatch):
    """The page's quick protocol, cut down to seconds for the tests; returns the cut-down config maker."""
    from explrobust_core import study
    from explrobust_core.evaluate import make_evaluation_config

    real = study.quick_config

    def tiny(dataset, base=None, **kw):
        cfg = real(dataset, base, **kw).model_dump(mode="json")
        cfg.update(n_images=40, n_explanation_images=3, attack_batch_size=3)
        cfg["pgd"]["steps"] = 2
        cfg["targeted"]["steps"] = 3
        return make_evaluation_config(**cfg)

    monkeypatch.setattr(study, "quick_config", tiny)
    return tiny


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_stored_results_answer_the_question(study_env):
    at = _open_study(study_common_pairs=False)  # each model's stored mean, as its card holds it
    assert at.title[0].value == "Robustness study"
    numbers = _card_numbers()
    # the default view: PGD accuracy at the largest ε vs L_e end, models below 50 % clean accuracy left out
    used = {m: v for m, v in numbers.items() if v["clean"] >= 0.5}
    assert len(used) >= 3  # (no shipped model is collapsed now; a collapsed one would be left out and listed)
    x = [used[m]["pgd"] for m in sorted(used)]
    y = [used[m]["end"] for m in sorted(used)]
    assert float(_metric(at, "Spearman ρ")) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=0.0051)
    assert float(_metric(at, "Pearson r")) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=0.0051)
    assert _metric(at, "Models in the correlation") == f"{len(used)} of {len(numbers) + 1}"
    assert any("two-level bootstrap" in c.value for c in at.caption)  # every shipped model has a result file

    # the scatter is drawn, and its data (the CSV download) are the cards' numbers
    assert len(at.get("image")) >= 3  # scatter, TRADES sweep, SEP bars
    exports = at.session_state["_page_exports"]
    points = list(csv.DictReader(io.StringIO(exports["study_scatter.csv"].decode())))
    assert {p["model"] for p in points} == set(used)
    for p in points:
        v = used[p["model"]]
        assert float(p[f"PGD accuracy ε={v['eps']:g}"]) == pytest.approx(v["pgd"], abs=1e-12)
        assert float(p["L_e end ×10⁻⁷"]) == pytest.approx(v["end"], rel=1e-9)

    # the model without an evaluation and the collapsed one are listed, with their reasons
    warning = " ".join(w.value for w in at.warning)
    assert "mnist5k/mine" in warning and "missing" in warning
    for m in set(numbers) - set(used):
        assert m in warning and "clean accuracy" in warning

    # the SEP table, laid out as the paper's, holds the cards' values
    table = next(d.value for d in at.dataframe if {"L_e end ×1e-7", "checkpoint"} <= set(d.value.columns))
    assert table[table["checkpoint"] == "mine"]["status"].str.startswith("missing").all()  # listed, no numbers
    sep = table[table["status"] == "ok"]
    expected = {m for m, v in numbers.items() if v["name"] in ("natural", "pgd_at") or v["name"].startswith("sep_")}
    assert {f"mnist5k/{c}" for c in sep["checkpoint"]} == expected
    assert list(sep["method"][:3]) == ["Normal", "MAT", "SEP_pos"] and set(sep["method"][3:]) == {"SEP_neg"}
    for _, row in sep.iterrows():
        v = numbers[f"mnist5k/{row['checkpoint']}"]
        assert row["L_e start ×1e-7"] == pytest.approx(v["start"], rel=1e-9)
        assert row["L_e end ×1e-7"] == pytest.approx(v["end"], rel=1e-9)
        assert row["Acc clean %"] == pytest.approx(100 * v["clean"], rel=1e-9)
        assert row[f"Acc adv % (ε={v['eps']:g})"] == pytest.approx(100 * v["pgd"], abs=1e-9)
    assert "study_trades.png" in exports and "study_sep_table.csv" in exports

    # the paper's claims, one row each, with the verdicts `explrobust replicate sep` gives
    from explrobust_core.replicate import replicate_sep

    claims = next(d.value for d in at.dataframe if "verdict" in d.value.columns)
    expected_claims = replicate_sep("mnist5k")["claims"]
    assert list(claims["verdict"]) == [c["verdict"] for c in expected_claims]
    assert list(claims["ours"]) == [c["ours"] for c in expected_claims]
    assert "study_paper_claims.csv" in exports

    # every model on the same pairs: the means over the pairs all models kept, from the result files' tables
    at.checkbox(key="study_common_pairs").check().run()
    assert not at.exception
    tables = {}
    for m in used:
        p = json.loads((SHIPPED / f"{numbers[m]['name']}.eval.json").read_text())["per_image"]
        tables[m] = {(v, t): e for v, t, e, a, f, lab in zip(p["index"], p["target_index"],
                                                          p["explanation_loss_end_paper"], p["attacked"],
                                                          p["final_pred"], p["label"]) if a and f == lab}
    common = set.intersection(*(set(t) for t in tables.values()))
    points = list(csv.DictReader(io.StringIO(at.session_state["_page_exports"]["study_scatter.csv"].decode())))
    for p in points:
        expected = sum(tables[p["model"]][k] for k in common) / len(common)
        assert float(p["L_e end ×10⁻⁷"]) == pytest.approx(expected, rel=1e-9)
    assert any(f"same {len(common)} pairs" in c.value for c in at.caption)

    # another measure: the correlation follows it
    at.checkbox(key="study_common_pairs").uncheck().run()
    at.selectbox(key="study_measure").set_value("le_start").run()
    assert not at.exception
    y = [used[m]["start"] for m in sorted(used)]
    assert float(_metric(at, "Spearman ρ")) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=0.0051)


def test_measure_a_missing_model_into_the_runs_dir(study_env, monkeypatch):
    from explrobust_core import study

    tiny = _tiny_quick_protocol(monkeypatch)
    shipped_before = sorted((p.name, p.stat().st_mtime_ns) for p in SHIPPED.iterdir())
    zoo_config = json.loads((SHIPPED / "natural.eval.json").read_text())["config"]
    quick_id = study.protocol_id(tiny("mnist5k", zoo_config).model_dump(mode="json"))
    at = _open_study(study_protocol=quick_id)  # as if chosen in the protocol box: nobody measured yet
    assert _metric(at, "Models in the correlation") == f"0 of {len(_card_numbers()) + 1}"
    chooser = next(m for m in at.multiselect if m.label == "Models to measure")
    assert "mnist5k/mine" in chooser.value  # missing under the quick protocol: chosen by default
    chooser.set_value(["mnist5k/mine"]).run()
    next(b for b in at.button if b.label.startswith("Measure 1 model")).click().run()
    assert not at.exception, at.exception
    assert any("Measured 1 model" in s.value for s in at.success), [e.value for e in at.error]

    stored = list((study_env / "runs" / "study" / "mnist5k" / "mine").glob("*.json"))
    assert len(stored) == 1
    result = json.loads(stored[0].read_text())
    assert result["config"]["n_images"] == 40 and result["study"]["preset"] == "quick"
    assert sorted((p.name, p.stat().st_mtime_ns) for p in SHIPPED.iterdir()) == shipped_before

    # the page now shows the quick protocol, where the new result is the only one
    assert at.selectbox(key="study_protocol").value == result["study"]["protocol"] == quick_id
    assert _metric(at, "Models in the correlation").startswith("1 of")
    table = next(d.value for d in at.dataframe if "in correlation" in d.value.columns)
    mine = table[table["model"] == "mnist5k/mine"].iloc[0]
    assert mine["clean acc %"] == pytest.approx(100 * result["summary"]["clean_accuracy"])
    assert (table["model"] != "mnist5k/mine").sum() == len(_card_numbers())  # the others: listed as missing
    assert table[table["model"] != "mnist5k/mine"]["status"].str.startswith("missing").all()


@pytest.mark.browser
def test_browser_study_page(browser_page):
    from playwright.sync_api import expect

    browser_page.open("Robustness study")
    page = browser_page.page
    expect(page.get_by_test_id("stMetric").first).to_be_visible(timeout=120_000)
    expect(page.get_by_text("Spearman ρ", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="SEP_pos / MAT / SEP_neg")).to_be_visible(timeout=120_000)
    expect(page.get_by_role("heading", name="TRADES sweep")).to_be_visible(timeout=60_000)
    # the scatter, the TRADES sweep, the SEP bars and the λ sweep (in its expander)
    expect(page.get_by_test_id("stImage")).to_have_count(4, timeout=60_000)
    expect(page.get_by_role("heading", name="Paper claims, one by one")).to_be_visible(timeout=60_000)
    spearman = page.get_by_test_id("stMetric").first.inner_text()
    assert "Spearman" in spearman and any(ch.isdigit() for ch in spearman)
    browser_page.assert_no_exception()
    browser_page.screenshot("study")


def test_queue_missing_models_as_background_jobs(study_env, monkeypatch):
    """The same measurement as a background evaluation job: it runs in its own process and its result
    lands where the page reads it."""
    from explrobust_core import study
    from explrobust_core.jobs import JobStore, LocalExecutor

    tiny = _tiny_quick_protocol(monkeypatch)
    zoo_config = json.loads((SHIPPED / "natural.eval.json").read_text())["config"]
    quick_id = study.protocol_id(tiny("mnist5k", zoo_config).model_dump(mode="json"))
    at = _open_study(study_protocol=quick_id)
    next(m for m in at.multiselect if m.label == "Models to measure").set_value(["mnist5k/mine"]).run()
    next(b for b in at.button if b.label.startswith("Queue 1 background job")).click().run()
    assert not at.exception and any("Queued 1 evaluation job" in s.value for s in at.success)
    store = JobStore(study_env / "runs")
    (job,) = store.list()
    assert job.kind == "evaluate" and job.name == "mnist5k/mine"
    done = LocalExecutor(store).wait(job.id, timeout=300)
    assert done.status == "done", Path(done.log_path).read_text()
    assert Path(done.result["evaluation"]).parent == study_env / "runs" / "study" / "mnist5k" / "mine"
    at.session_state["study_protocol"] = quick_id
    import streamlit as st

    st.cache_data.clear()
    at.run()
    assert _metric(at, "Models in the correlation").startswith("1 of")
