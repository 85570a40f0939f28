"""The Training jobs page: a job submitted from the form runs in the background and joins the zoo."""

from __future__ import annotations

from pathlib import Path

import pytest

from explrobust_core.jobs import JobStore, LocalExecutor

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def private_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLROBUST_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(tmp_path / "zoo"))
    return tmp_path


def test_form_submits_a_job_that_finishes_and_appears_in_the_zoo(private_runs):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    at.switch_page("pages/training.py").run()
    assert not at.exception and at.title[0].value == "Training jobs"
    assert "No jobs yet." in [i.value for i in at.info]
    at.selectbox[0].set_value("trades").run()  # the name follows the objective
    assert at.text_input(key="train-trades-name").value == "my_trades"
    at.selectbox[0].set_value("natural").run()
    at.selectbox[1].set_value("digits").run()  # dataset
    at.text_input(key="train-natural-name").set_value("page_job")
    at.number_input(key="train-natural-epochs").set_value(2)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Job ")
    job = JobStore().list()[-1]
    assert job.spec["train"]["name"] == "page_job"
    assert job.spec["train"]["dataset"] == "digits" and job.spec["train"]["epochs"] == 2
    done = LocalExecutor(JobStore()).wait(job.id, timeout=300)
    assert done.status == "done", Path(done.log_path).read_text()
    at.run()
    assert not at.exception
    assert any("page_job" in s.value for s in at.success)
    assert "done" in at.get("progress")[0].proto.text
    at.switch_page("pages/zoo.py").run()
    assert "digits/page_job" in set(at.dataframe[0].value["model"])


def test_bad_values_are_refused_with_the_field_named(private_runs):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    at.switch_page("pages/training.py").run()
    at.text_input(key="train-natural-name").set_value("../escape")
    at.button[0].click().run()
    assert not at.exception
    assert "name" in at.error[0].value and JobStore().list() == []


def test_a_submit_selects_the_new_job_a_refused_one_leaves_nothing_and_a_resume_is_not_a_start(private_runs):
    import pandas as pd
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    at.switch_page("pages/training.py").run()
    at.selectbox[1].set_value("digits").run()  # dataset
    ids = []
    for name, epochs in (("job_a", 200), ("job_b", 1)):  # job_a runs far longer than this test waits for it
        at.text_input(key="train-natural-name").set_value(name)
        at.number_input(key="train-natural-epochs").set_value(epochs)
        at.button[0].click().run()
        assert not at.exception and not at.error
        ids.append(JobStore().list()[-1].id)
        assert at.selectbox(key="job-shown").value == ids[-1]  # the new job, not the one shown before
    at.selectbox[1].set_value("mnist5k").run()
    at.text_input(key="train-natural-name").set_value("natural")  # the shipped zoo has it: refused
    at.button[0].click().run()
    assert "exists already" in at.error[0].value
    assert sorted(p.name for p in (private_runs / "runs" / "jobs").iterdir()) == sorted(ids)  # no third folder
    executor = LocalExecutor(JobStore())
    executor.cancel(ids[0])
    assert executor.wait(ids[0], timeout=300).status in ("cancelled", "interrupted")
    assert executor.wait(ids[1], timeout=300).status == "done"
    assert executor.resume(ids[0]).attempts == 2  # started again at once: nothing else runs
    executor.cancel(ids[0])
    assert executor.wait(ids[0], timeout=300).status in ("cancelled", "interrupted")
    at.run()
    table = next(d.value for d in at.dataframe if "attempts" in d.value.columns).set_index("id")
    resumed, first = table.loc[ids[0]], table.loc[ids[1]]
    assert pd.notna(resumed["resumed"]) and pd.isna(resumed["started"]) and resumed["attempts"] == 2
    assert pd.notna(first["started"]) and pd.isna(first["resumed"])
    assert resumed["submitted"] < resumed["resumed"]


def test_a_three_point_sweep_from_the_page_fills_its_table_and_figure(private_runs):
    import json

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    at.switch_page("pages/training.py").run()
    at.selectbox(key="sw-data").set_value("digits").run()
    at.text_input(key="sweep-name").set_value("page_sweep")
    at.text_input(key="sweep-grid").set_value("lam=-1000,0,1000")
    at.text_input(key="sweep-overrides").set_value(json.dumps(
        {"n_images": 60, "eps_list": [0.2], "pgd": {"steps": 3}, "n_explanation_images": 3,
         "targeted": {"steps": 3, "record_every": 1}}))
    for field, value in {"epochs": 1, "eval_images": 50, "eval_pgd_steps": 0}.items():
        at.number_input(key=f"sweep-sep-{field}").set_value(value)
    at.number_input(key="sweep-parallel").set_value(3)
    next(b for b in at.button if b.label == "Start sweep").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("3 points queued" in s.value for s in at.success)
    executor = LocalExecutor(JobStore())
    for job in executor.store.list():
        assert job.spec["sweep"] == "page_sweep" and job.spec["train"]["epochs"] == 1
        assert executor.wait(job.id, timeout=300).status == "done", Path(job.log_path).read_text()
    at.run()
    assert not at.exception
    assert any("3/3 points done" in m.value for m in at.markdown)
    table = next(d.value for d in at.dataframe if "lam" in d.value.columns)
    assert sorted(table["lam"]) == [-1000.0, 0.0, 1000.0] and table["le_end"].notna().all()


@pytest.mark.browser
def test_browser_submits_a_one_epoch_job_and_sees_it_in_the_zoo(browser_page):
    from playwright.sync_api import expect

    page = browser_page.page
    browser_page.open("Training jobs")
    name = page.get_by_role("textbox", name="name")
    name.fill("browser_job")
    name.press("Tab")
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_text("✓ done · train browser_job")).to_be_visible(timeout=240_000)
    browser_page.wait_idle()
    browser_page.assert_no_exception()
    browser_page.screenshot("training")
    browser_page.open("Model zoo")
    expect(page.get_by_test_id("stDataFrame").first).to_contain_text("browser_job", timeout=60_000)
    browser_page.assert_no_exception()
