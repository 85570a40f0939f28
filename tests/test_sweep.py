"""Sweeps: a λ grid end to end through the CLI (real worker processes, tiny budgets), refusals, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explrobust_core import sweep
from explrobust_core.cli import main
from explrobust_core.jobs import JobStore, LocalExecutor
from explrobust_core.registry import ConfigError

TINY_TRAIN = ["--objective", "sep", "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--steps", "2",
              "--eval-images", "50", "--eval-pgd-steps", "0", "--device", "cpu"]
TINY_EVALUATION = {"n_images": 60, "eps_list": [0.2], "pgd": {"steps": 3}, "explanation_attack": "targeted",
                   "n_explanation_images": 3, "targeted": {"steps": 3, "record_every": 1, "explainer": "gradient_x_input"}}


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EXPLROBUST_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(tmp_path / "zoo"))
    return tmp_path / "runs"


def test_a_three_point_lambda_sweep_runs_to_a_table_and_a_figure(runs, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", "run", "--name", "lam3", "--grid", "lam=-1000,0,1000", "--max-parallel", "3", "--wait",
                 "--timeout", "600", "--evaluation", json.dumps(TINY_EVALUATION), "--json", str(out / "t.json"),
                 "--csv", str(out / "t.csv"), "--figure", str(out / "t.png"), *TINY_TRAIN])
    assert code == 0, capsys.readouterr().err
    table = json.loads((out / "t.json").read_text())
    rows = table["rows"]
    assert [r["lam"] for r in rows] == [-1000.0, 0.0, 1000.0] and {r["status"] for r in rows} == {"done"}
    for r in rows:
        assert 0 <= r["clean_accuracy"] <= 1 and 0 <= r["pgd_accuracy"] <= 1 and r["pgd_eps"] == 0.2
        assert r["le_start"] > 0 and r["le_end"] > 0 and r["pairs"] >= 1
    assert table["sweep"]["grid"] == {"lam": [-1000.0, 0.0, 1000.0]}
    assert (out / "t.csv").read_text().splitlines()[0].startswith("lam,model,job,status")
    assert (out / "t.png").read_bytes()[:4] == b"\x89PNG"
    # each point is a zoo model trained with its λ, evaluated under the one protocol, with its SEP log
    store = JobStore()
    for r in rows:
        job = store.get(r["job"])
        assert job.spec["train"]["objective_config"]["lam"] == r["lam"]
        assert job.spec["evaluate_after"]["evaluation"] == TINY_EVALUATION
        epoch = job.metrics[-1]
        assert epoch["stability_bound"] == pytest.approx(2 / 64)  # 8×8 digits, mean over pixels
        assert epoch["lam_x_stability"] == pytest.approx(r["lam"] * epoch["explanation_stability"], rel=1e-6, abs=1e-12)
        assert Path(job.result["evaluation"]).is_file()
    # the stored state answers `status` the same way
    assert main(["sweep", "status", "lam3"]) == 0
    assert "lam3_lamm1000" in capsys.readouterr().out


@pytest.mark.parametrize("grid, field", [
    (["foo=1,2"], "grid.foo"),                                 # not a field of SEP's config
    (["lam=1e12"], "lam"),                                      # out of the config's range
    (["lam=" + ",".join(str(i) for i in range(65))], "65 points"),
    (["lam=1,2", "sigma=0.1", "eps=0.1"], "one or two fields"),
    (["lam"], "FIELD=V1"),
])
def test_bad_grids_are_refused_with_the_field_named(runs, capsys, grid, field):
    argv = ["sweep", "run", "--name", "bad"]
    for g in grid:
        argv += ["--grid", g]
    assert main(argv + ["--objective", "sep", "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert field in err and len(err.strip().splitlines()) == 1
    assert not (runs / "sweeps").exists() and JobStore().list() == []


def test_a_sweep_submitted_again_resumes_its_points_and_refuses_another_grid(runs):
    spec = sweep.make_spec(name="again", train={"objective": "trades", "dataset": "digits", "epochs": 1},
                           grid={"beta": [1.0, 3.0]}, evaluate={"evaluation": TINY_EVALUATION}, max_parallel=1)
    executor = LocalExecutor(JobStore())
    first = sweep.submit(spec, executor)
    jobs = [p["job"] for p in first["points"]]
    assert executor.cancel(jobs[1]).status == "cancelled"  # queued behind the first point: cancelled at once
    executor.cancel(jobs[0])
    again = sweep.submit(spec, executor)  # as after a crash: the same jobs, the stopped ones resumed
    assert [p["job"] for p in again["points"]] == jobs
    assert executor.store.get(jobs[1]).status in ("queued", "running")
    other = sweep.make_spec(name="again", train={"objective": "trades", "dataset": "digits", "epochs": 1},
                            grid={"beta": [6.0]}, evaluate={"evaluation": TINY_EVALUATION})
    with pytest.raises(ConfigError, match="another grid"):
        sweep.submit(other, executor)
    for job in jobs:  # leave no worker behind
        if executor.store.get(job).status in ("queued", "running"):
            executor.cancel(job)
        executor.wait(job, timeout=300)


def test_point_names_are_safe_file_names():
    assert sweep.point_name("s", {"lam": -3000.0, "sigma": 0.1}) == "s_lamm3000_sigma0.1"
    assert sweep.point_name("s", {"lam": 1e6}) == "s_lam1e06"
    assert sweep.parse_grid(["lam=-1,2", "space=model,pixel"]) == {"lam": [-1.0, 2.0], "space": ["model", "pixel"]}


def test_colliding_point_names_and_the_runs_flag_before_run(runs, tmp_path, capsys):
    with pytest.raises(ConfigError, match="same point name"):
        sweep.make_spec(name="c", train={"objective": "sep"}, grid={"lam": [1e6, 1000001.0]})
    elsewhere = tmp_path / "elsewhere"
    argv = ["sweep", "--runs", str(elsewhere), "run", "--name", "r", "--grid", "lam=1,2", "--objective", "sep",
            "--dataset", "digits", "--epochs", "1", "--evaluation", '{"n_images": 0}']
    assert main(argv) == 2  # the train flags after `run` are parsed; the bad protocol is named
    assert "n_images" in capsys.readouterr().err and not elsewhere.exists()


def test_a_trained_point_whose_evaluation_was_lost_resumes_with_the_evaluation_only(runs):
    from explrobust_core.jobs import TrainJobSpec, parse_spec

    spec = parse_spec({"kind": "train", "train": {"name": "evalonly", "dataset": "digits", "epochs": 1,
                                                   "eval_images": 20, "eval_pgd_steps": 0, "device": "cpu"},
                       "evaluate_after": {"evaluation": TINY_EVALUATION}})
    assert isinstance(spec, TrainJobSpec)
    executor = LocalExecutor(JobStore())
    job = executor.wait(executor.submit(spec).id, timeout=300)
    assert job.status == "done", Path(job.log_path).read_text()
    registered = Path(job.result["zoo_checkpoint"])
    stamp = registered.stat().st_mtime_ns
    # as if the worker died during the evaluation: trained and registered, no summary yet
    executor.store.update(job.id, status="interrupted",
                          result={k: v for k, v in job.result.items() if k in ("checkpoint", "zoo_checkpoint", "model")})
    executor.resume(job.id)
    again = executor.wait(job.id, timeout=300)
    assert again.status == "done" and again.result["summary"]["clean_accuracy"] is not None
    assert registered.stat().st_mtime_ns == stamp  # not trained or registered again
