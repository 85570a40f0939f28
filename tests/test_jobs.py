"""Background jobs: real worker processes on tiny digits runs — done, killed and resumed, cancelled, queued."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from explrobust_core.jobs import (EvaluateJobSpec, JobStore, LocalExecutor, TrainJobSpec, parse_spec,
                                  _process_alive)
from explrobust_core.registry import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """A private runs directory and user zoo; the workers inherit them through the environment."""
    monkeypatch.setenv("EXPLROBUST_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(tmp_path / "zoo"))
    return tmp_path / "runs"


def tiny(name: str, **over) -> TrainJobSpec:
    train = {"name": name, "dataset": "digits", "architecture": "convnet", "objective": "natural", "epochs": 1,
             "batch_size": 64, "eval_images": 50, "eval_pgd_steps": 0, "device": "cpu"} | over
    return parse_spec({"kind": "train", "train": train})


def slow(name: str, epochs: int = 3, images: int | None = 480) -> TrainJobSpec:
    """PGD training with small batches: about a second per epoch of 480 images on an idle 2-core machine,
    long enough to interrupt mid-run (progress is written at most every 0.5 s)."""
    return tiny(name, objective="pgd_at", objective_config={"eps": 0.1, "steps": 10}, epochs=epochs, batch_size=16,
                max_train_images=images)


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_bad_specs_are_refused_with_the_field_named(runs):
    with pytest.raises(ConfigError, match="epochs"):
        parse_spec({"kind": "train", "train": {"name": "a", "epochs": 0}})
    with pytest.raises(ConfigError, match="colour"):
        parse_spec({"kind": "train", "train": {"name": "a"}, "colour": "red"})
    with pytest.raises(ConfigError, match="kind"):
        parse_spec({"kind": "bake", "train": {"name": "a"}})
    with pytest.raises(ConfigError, match="lam"):
        parse_spec({"kind": "train", "train": {"name": "a", "objective": "sep", "objective_config": {"lam": "x"}}})
    with pytest.raises(ConfigError, match="n_images"):
        parse_spec({"kind": "evaluate", "model": "mnist5k/natural", "evaluation": {"n_images": -1}})
    with pytest.raises(ConfigError, match="model"):
        parse_spec({"kind": "evaluate", "model": "natural"})


def test_no_job_can_write_outside_the_runs_directory(runs):
    for name in ("../escape", "/tmp/escape", "a/b", ".hidden"):
        with pytest.raises(ConfigError, match="name"):
            parse_spec({"kind": "train", "train": {"name": name}})
    with pytest.raises(ConfigError, match="download"):
        parse_spec({"kind": "train", "train": {"name": "a", "dataset": "mnist",
                                               "dataset_config": {"root": "/tmp/elsewhere", "download": True}}})
    with pytest.raises(ConfigError, match="model"):
        parse_spec({"kind": "evaluate", "model": "../../etc/passwd"})
    store = JobStore(runs)
    with pytest.raises(ValueError):
        store.job_dir("../../outside")
    job = store.add(tiny("inside"))
    assert store.job_dir(job.id).resolve().is_relative_to(runs.resolve())
    assert Path(job.log_path).resolve().is_relative_to(runs.resolve())


def test_tiny_training_job_runs_to_done_and_joins_the_user_zoo(runs, tmp_path):
    from explrobust_core.zoo import list_checkpoints, load_checkpoint

    executor = LocalExecutor(JobStore(runs))
    job = executor.submit(tiny("tiny_job"))
    assert job.status == "running" and job.pid
    done = executor.wait(job.id, timeout=180)
    assert done.status == "done", Path(done.log_path).read_text()
    assert done.fraction == 1.0 and done.metrics[0]["epoch"] == 1 and done.losses
    zoo_file = Path(done.result["zoo_checkpoint"])
    assert zoo_file == tmp_path / "zoo" / "digits" / "tiny_job.safetensors"
    model, card = load_checkpoint(zoo_file, "cpu")
    assert card.name == "tiny_job" and card.objective == "natural"
    assert "digits/tiny_job" in {f"{e.card.dataset}/{e.card.name}" for e in list_checkpoints(tmp_path / "zoo")}
    assert "epoch 1/1" in Path(done.log_path).read_text()
    # the same name again is refused before anything runs
    with pytest.raises(ConfigError, match="exists already"):
        executor.submit(tiny("tiny_job"))


def test_sigkill_mid_epoch_is_reported_interrupted_and_resume_finishes(runs):
    executor = LocalExecutor(JobStore(runs))
    job = executor.submit(slow("killed", epochs=5))
    store = executor.store
    # after epoch 1 ended (its state is saved) and epoch 2 is under way
    wait_for(lambda: store.get(job.id).progress.get("epoch", 0) >= 2 and store.get(job.id).metrics,
             what="epoch 2 to start")
    os.kill(store.get(job.id).pid, signal.SIGKILL)
    wait_for(lambda: not _process_alive(store.get(job.id).pid, job.id), what="the worker to die")
    executor.reconcile()
    interrupted = store.get(job.id)
    assert interrupted.status == "interrupted" and "resume" in interrupted.error
    state_path = store.job_dir(job.id) / "killed.run" / "state.pt"
    state = torch.load(io.BytesIO(state_path.read_bytes()), weights_only=True)
    assert state["epoch"] >= 1 and len(state["history"]) == state["epoch"]  # the last complete checkpoint loads
    resumed = executor.resume(job.id)
    assert resumed.status == "running"
    done = executor.wait(job.id, timeout=300)
    assert done.status == "done", Path(done.log_path).read_text()
    assert done.attempts == 2 and [m["epoch"] for m in done.metrics] == [1, 2, 3, 4, 5]


def test_cancel_stops_at_the_next_batch_and_resume_finishes(runs):
    executor = LocalExecutor(JobStore(runs))
    job = executor.submit(slow("cancelled", epochs=2, images=None))  # all 1,437 digits: ~3 s an epoch
    wait_for(lambda: executor.store.get(job.id).progress.get("batch", 0) >= 3, what="training to start")
    executor.cancel(job.id)
    stopped = executor.wait(job.id, timeout=120)
    assert stopped.status == "cancelled"
    state = torch.load(executor.store.job_dir(job.id) / "cancelled.run" / "state.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) < (2, 0)  # stopped part-way, its place saved
    with pytest.raises(ConfigError, match="cancelled"):
        executor.cancel(job.id)
    executor.resume(job.id)
    assert executor.wait(job.id, timeout=300).status == "done"
    # a queued job is cancelled without ever starting
    executor.store.set_setting("max_concurrent", "1")
    first = executor.submit(tiny("first"))
    second = executor.submit(tiny("second"))
    assert second.status == "queued"
    assert executor.cancel(second.id).status == "cancelled"
    assert executor.wait(first.id, timeout=180).status == "done"
    assert executor.store.get(second.id).status == "cancelled" and executor.store.get(second.id).pid is None


def test_two_jobs_run_concurrently_within_the_limit_and_a_third_queues(runs):
    executor = LocalExecutor(JobStore(runs), max_concurrent=2)
    jobs = [executor.submit(tiny(f"c{i}")) for i in range(3)]
    assert [j.status for j in jobs] == ["running", "running", "queued"]
    # the queue drains by itself: a finishing worker starts the next job
    finished = [executor.wait(j.id, timeout=240) for j in jobs]
    assert [j.status for j in finished] == ["done"] * 3
    assert finished[2].started >= min(finished[0].finished, finished[1].finished) - 0.5


def test_restarting_the_ui_process_leaves_the_job_running_and_visible(runs):
    ui = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from explrobust_core.jobs import JobStore, LocalExecutor, parse_spec\n"
        f"spec = parse_spec({slow('survivor', epochs=3, images=None).model_dump(mode='json')!r})\n"
        "job = LocalExecutor(JobStore()).submit(spec)\n"
        "print(job.id, flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True, cwd=REPO)
    job_id = ui.stdout.readline().strip()
    store = JobStore(runs)
    wait_for(lambda: store.get(job_id).progress.get("batch", 0) >= 1, what="the job to run")
    ui.send_signal(signal.SIGKILL)  # the dashboard dies
    ui.wait()
    executor = LocalExecutor(store)  # the dashboard restarts
    executor.reconcile()
    job = store.get(job_id)
    assert job.status == "running" and _process_alive(job.pid, job_id)
    assert executor.wait(job_id, timeout=300).status == "done"


def test_cli_submits_lists_shows_and_tails_jobs(runs, capsys):
    from explrobust_core.cli import main

    assert main(["jobs", "submit", "--json", "--name", "cli_job", "--dataset", "digits", "--epochs", "1",
                 "--eval-images", "50", "--eval-pgd-steps", "0", "--device", "cpu"]) == 0
    job_id = json.loads(capsys.readouterr().out)["id"]
    LocalExecutor(JobStore(runs)).wait(job_id, timeout=180)
    assert main(["jobs", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["status"], r["name"]) for r in rows] == [(job_id, "done", "cli_job")]
    assert main(["jobs", "show", job_id]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["train"]["dataset"] == "digits"
    assert main(["jobs", "logs", job_id]) == 0
    assert f"job {job_id}: done" in capsys.readouterr().out
    # a spec file with a bad field: one clear line naming it, exit code 2
    bad = runs / "bad.json"
    bad.write_text(json.dumps({"kind": "train", "train": {"name": "x", "batch_size": 0}}))
    assert main(["jobs", "submit", str(bad)]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert main(["jobs", "cancel", "nope"]) == 2
    assert "no job 'nope'" in capsys.readouterr().err
    assert main(["jobs", "delete", job_id]) == 0
    assert not (runs / "jobs" / job_id).exists()


def test_an_evaluation_job_stores_its_result(runs):
    executor = LocalExecutor(JobStore(runs))
    spec = parse_spec({"kind": "evaluate", "model": "mnist5k/natural", "device": "cpu",
                       "evaluation": {"n_images": 64, "eps_list": [0.1], "pgd": {"steps": 5, "step_size": 0.05},
                                      "n_explanation_images": 4, "ifia": {"steps": 3}}})
    assert isinstance(spec, EvaluateJobSpec)
    job = executor.wait(executor.submit(spec).id, timeout=240)
    assert job.status == "done", Path(job.log_path).read_text()
    stored = json.loads(Path(job.result["evaluation"]).read_text())
    assert stored["summary"]["clean_accuracy"] == job.result["summary"]["clean_accuracy"]
    assert 0.5 < stored["summary"]["clean_accuracy"] <= 1.0
    # the Robustness study page reads it, under the protocol it was measured with
    from explrobust_core import study
    from explrobust_core.zoo import list_checkpoints, shipped_zoo_dir

    collection = study.collect(list_checkpoints(shipped_zoo_dir()), runs)
    protocol = study.protocol_id(stored["config"])
    record = study.records_for(collection, "mnist5k", protocol)["mnist5k/natural"]
    assert record.source == "study run" and record.summary == stored["summary"]


def test_an_evaluation_job_can_be_cancelled_and_stores_nothing(runs):
    """The evaluation is made far longer than any machine finishes (PGD with 10,000 steps on one
    image per batch), so the test does not depend on machine speed: only a cancel checked inside the
    PGD loop can end it within the timeout, which is generous for a loaded machine."""
    executor = LocalExecutor(JobStore(runs))
    spec = parse_spec({"kind": "evaluate", "model": "mnist5k/natural", "device": "cpu",
                       "evaluation": {"n_images": 1000, "batch_size": 1, "eps_list": [0.1, 0.2, 0.3],
                                      "pgd": {"steps": 10_000, "step_size": 0.01}}})
    job = executor.submit(spec)
    wait_for(lambda: executor.store.get(job.id).progress.get("stage"), what="the evaluation to start")
    executor.cancel(job.id)
    stopped = executor.wait(job.id, timeout=120)
    assert stopped.status == "cancelled", Path(stopped.log_path).read_text()
    assert not (runs / "study").exists() or not list((runs / "study").rglob("*.json"))


def test_the_same_name_cannot_be_queued_twice_and_a_worker_runs_only_its_own_attempt(runs):
    from explrobust_core.jobs import run_worker

    executor = LocalExecutor(JobStore(runs))
    executor.store.set_setting("max_concurrent", "1")
    first = executor.submit(tiny("twice"))
    with pytest.raises(ConfigError, match="already training"):
        executor.submit(tiny("twice"))
    queued = executor.submit(tiny("later"))
    assert executor.cancel(queued.id).status == "cancelled"
    # a stray worker for a job that is not waiting for one changes nothing
    assert run_worker(queued.id, executor.store) == 3
    assert executor.store.get(queued.id).status == "cancelled" and executor.store.get(queued.id).pid is None
    assert executor.wait(first.id, timeout=180).status == "done"


def test_deleting_a_job_never_loses_an_unregistered_checkpoint(runs):
    store = JobStore(runs)
    executor = LocalExecutor(store)
    job = store.add(tiny("orphan"))
    trained = store.job_dir(job.id) / "orphan.safetensors"
    trained.write_bytes(b"weights")  # as if training finished but joining the zoo failed
    store.update(job.id, status="failed", error="FileExistsError: taken", finished=time.time())
    with pytest.raises(ConfigError, match="move that file away"):
        executor.delete(job.id)
    assert trained.read_bytes() == b"weights" and store.get(job.id).status == "failed"
    trained.unlink()
    executor.delete(job.id)
    with pytest.raises(KeyError):
        store.get(job.id)
