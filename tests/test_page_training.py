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
