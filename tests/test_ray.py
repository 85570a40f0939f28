"""The Ray executor on a real one-machine Ray cluster bound to 127.0.0.1: tiny digits trainings run to done,
are cancelled (from the page too) and resumed, lose their worker and resume, fan out as a sweep; a driver
restart and a cluster that goes away lose no job; the CLI against a separately started head; an
unreachable cluster loses no job; the Training jobs page names the cluster and lists Ray jobs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")  # the `ray` extra (requirements-dev.txt installs it, so CI runs these)

from explrobust_core.executors import describe_executor, make_executor  # noqa: E402
from explrobust_core.jobs import JobStore, parse_spec  # noqa: E402
from explrobust_core.registry import ConfigError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY_FLAGS = ["--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--eval-images", "50",
              "--eval-pgd-steps", "0", "--device", "cpu"]
START_TIMEOUT_S = 120  # a Ray head on a loaded 2-core machine starts in ~5 s


def tiny(name: str, **over):
    train = {"name": name, "dataset": "digits", "architecture": "convnet", "objective": "natural", "epochs": 1,
             "batch_size": 64, "eval_images": 50, "eval_pgd_steps": 0, "device": "cpu"} | over
    return parse_spec({"kind": "train", "train": train})


def slow(name: str, epochs: int = 3, images: int | None = 960):
    """PGD-30 training with small batches (a few seconds an epoch of 960 images on an idle core): long enough for
    the driver to see an epoch end, and to interrupt, before the job is done. (PGD-10 on 480 images, about a second
    an epoch once, got fast enough to finish before a Ray actor first answered a poll.)"""
    return tiny(name, objective="pgd_at", objective_config={"eps": 0.1, "steps": 30}, epochs=epochs, batch_size=16,
                max_train_images=images)


def wait_for(predicate, timeout: float = 180, what: str = "condition", poll=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if poll is not None:
            poll()
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """ONE local cluster for the module, started by the executor itself (no RAY_ADDRESS), shut down at the end."""
    root = tmp_path_factory.mktemp("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLROBUST_RUNS", str(root / "runs"))
        mp.setenv("EXPLROBUST_USER_ZOO", str(root / "zoo"))
        mp.setenv("EXPLROBUST_RAY_CPUS", "2")
        mp.setenv("EXPLROBUST_RAY_START_TIMEOUT_S", str(START_TIMEOUT_S))
        mp.setenv("EXPLROBUST_RAY_CANCEL_GRACE_S", "60")
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.delenv("EXPLROBUST_EXECUTOR", raising=False)
        store = JobStore(root / "runs")
        executor = make_executor(store, "ray")
        try:
            address = executor.connect()
            assert address.startswith("127.0.0.1:")
            yield executor
        finally:
            import ray

            from explrobust_core.ray_cluster import stop_local_cluster

            ray.shutdown()
            stop_local_cluster(store)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tiny_training_job_runs_to_done_with_progress_in_the_store_meanwhile(cluster):
    from explrobust_core.ray_executor import RayExecutor
    from explrobust_core.zoo import load_checkpoint

    ex, store = cluster, cluster.store
    job = ex.submit(slow("ray_progress", epochs=2))
    assert job.status == "running"
    # progress reaches the store through the driver's polls while the job still runs
    running = wait_for(lambda: (j := store.get(job.id)).status == "running" and j.progress.get("batch", 0) >= 2 and j,
                       poll=ex.reconcile, what="progress while running")
    assert 0 < running.fraction < 1 and running.losses
    # the driver restarts: the new one finds the job's actor by name and carries on; a job the store calls
    # running whose actor Ray never had (the cluster was replaced, say) is interrupted
    ghost = store.add(tiny("ray_ghost"))
    store.update(ghost.id, status="running", attempts=1, started=time.time() - 600)
    restarted = RayExecutor(store)
    restarted.reconcile()
    assert store.get(ghost.id).status == "interrupted" and "no longer knows" in store.get(ghost.id).error
    assert store.get(job.id).status == "running"
    done = restarted.wait(job.id, timeout=300)
    assert done.status == "done", Path(done.log_path).read_text()
    assert done.fraction == 1.0 and [m["epoch"] for m in done.metrics] == [1, 2] and done.pid
    zoo_file = Path(done.result["zoo_checkpoint"])
    assert zoo_file == Path(os.environ["EXPLROBUST_USER_ZOO"]) / "digits" / "ray_progress.safetensors"
    model, card = load_checkpoint(zoo_file, "cpu")
    assert card.name == "ray_progress" and card.objective == "pgd_at"
    log = Path(done.log_path).read_text()
    assert "Ray worker pid" in log and "epoch 2/2" in log and f"job {job.id}: done" in log
    assert "Ray cluster at 127.0.0.1:" in describe_executor(ex)
    with pytest.raises(ConfigError, match="exists already"):
        ex.submit(tiny("ray_progress"))


def test_cancel_from_the_page_stops_at_a_batch_a_stuck_one_is_stopped_by_ray_and_resume_finishes(cluster,
                                                                                                  monkeypatch):
    from streamlit.testing.v1 import AppTest

    ex, store = cluster, cluster.store
    # the Training jobs page controls a Ray job like a local one; the page is opened first, so that the job
    # (PGD-30 on 960 images, several seconds an epoch) cannot finish while the page starts
    monkeypatch.setenv("EXPLROBUST_EXECUTOR", "ray")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    at.switch_page("pages/training.py").run()
    job = ex.submit(tiny("ray_cancel", objective="pgd_at", objective_config={"eps": 0.1, "steps": 30}, epochs=2,
                         batch_size=16, max_train_images=960))
    wait_for(lambda: store.get(job.id).progress.get("batch", 0) >= 3, poll=ex.reconcile, what="training to start")
    at.run()
    at.selectbox(key="job-shown").set_value(job.id).run()
    at.button(key=f"cancel-{job.id}").click().run()
    assert not at.exception and store.get(job.id).cancel_requested
    stopped = ex.wait(job.id, timeout=120)
    assert stopped.status == "cancelled" and stopped.error is None, Path(stopped.log_path).read_text()
    state = torch.load(store.job_dir(job.id) / "ray_cancel.run" / "state.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) < (2, 0)  # stopped part-way by the trainer, its place saved
    with pytest.raises(ConfigError, match="cancelled"):
        ex.cancel(job.id)
    # a worker that does not stop within the grace period is stopped by Ray (grace 0: at the next poll)
    first_pid = stopped.pid
    assert ex.resume(job.id).status == "running"
    wait_for(lambda: store.get(job.id).pid not in (None, first_pid), poll=ex.reconcile, what="the new worker")
    monkeypatch.setenv("EXPLROBUST_RAY_CANCEL_GRACE_S", "0")
    ex.cancel(job.id)
    ex.reconcile()
    forced = store.get(job.id)
    assert forced.status == "cancelled" and "stopped by Ray" in forced.error
    monkeypatch.setenv("EXPLROBUST_RAY_CANCEL_GRACE_S", "60")
    ex.resume(job.id)
    done = ex.wait(job.id, timeout=300)
    assert done.status == "done" and done.attempts == 3, Path(done.log_path).read_text()
    assert [m["epoch"] for m in done.metrics] == [1, 2]


def test_a_killed_worker_is_interrupted_and_resume_continues_from_its_state(cluster):
    from explrobust_core.zoo import load_checkpoint

    ex, store = cluster, cluster.store
    job = ex.submit(slow("ray_killed", epochs=3))
    wait_for(lambda: (j := store.get(job.id)).progress.get("epoch", 0) >= 2 and j.metrics and j.pid,
             poll=ex.reconcile, what="epoch 2 to start")
    os.kill(store.get(job.id).pid, signal.SIGKILL)  # the Ray worker process, not the driver
    interrupted = wait_for(lambda: (j := store.get(job.id)).status != "running" and j, poll=ex.reconcile,
                           timeout=120, what="the death to be noticed")
    assert interrupted.status == "interrupted" and "died" in interrupted.error and "resume" in interrupted.error
    state = torch.load(store.job_dir(job.id) / "ray_killed.run" / "state.pt", weights_only=True)
    assert state["epoch"] >= 1 and len(state["history"]) == state["epoch"]  # the last saved state loads
    ex.resume(job.id)
    done = ex.wait(job.id, timeout=300)
    assert done.status == "done", Path(done.log_path).read_text()
    assert done.attempts == 2 and [m["epoch"] for m in done.metrics] == [1, 2, 3]
    load_checkpoint(done.result["zoo_checkpoint"], "cpu")  # the finished checkpoint loads


def test_a_three_point_sweep_fans_out_within_max_parallel(cluster, capsys):
    from explrobust_core.cli import main

    evaluation = {"n_images": 60, "eps_list": [0.2], "pgd": {"steps": 3}, "explanation_attack": "targeted",
                  "n_explanation_images": 3, "targeted": {"steps": 3, "record_every": 1,
                                                          "explainer": "gradient_x_input"}}
    code = main(["sweep", "run", "--executor", "ray", "--name", "raysw", "--grid", "lam=-1000,0,1000",
                 "--max-parallel", "2", "--wait", "--timeout", "400", "--evaluation", json.dumps(evaluation),
                 "--objective", "sep", "--steps", "2", *TINY_FLAGS])
    assert code == 0, capsys.readouterr().err
    jobs = [j for j in cluster.store.list() if j.spec.get("sweep") == "raysw"]
    assert sorted(j.spec["train"]["objective_config"]["lam"] for j in jobs) == [-1000.0, 0.0, 1000.0]
    for job in jobs:
        assert job.status == "done" and Path(job.result["evaluation"]).is_file()
        assert 0 <= job.result["summary"]["clean_accuracy"] <= 1
    # never more than max_parallel points at once (started = claimed, finished = its end recorded): count the
    # points running at each moment one starts
    for job in jobs:
        assert sum(o.started <= job.started < o.finished for o in jobs) <= 2


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explrobust_core.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_submit_then_list_on_a_separately_started_head(tmp_path):
    port = _free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2",
           "EXPLROBUST_RUNS": str(tmp_path / "runs"), "EXPLROBUST_USER_ZOO": str(tmp_path / "zoo")}
    if (Path.home() / ".ray" / "auth_token").is_file():
        env.setdefault("RAY_AUTH_MODE", "token")
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
                             "--object-store-memory", str(100 << 20), "--include-dashboard", "false",
                             "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def up():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_for(up, timeout=START_TIMEOUT_S, what="the head to listen")
        env |= {"RAY_ADDRESS": f"127.0.0.1:{port}", "EXPLROBUST_EXECUTOR": "ray"}
        out = _cli(env, "jobs", "submit", "--name", "t", "--objective", "natural", *TINY_FLAGS)
        assert out.returncode == 0, out.stderr
        job_id = out.stdout.split()[2]

        def listed_done():
            rows = json.loads(_cli(env, "jobs", "list", "--json").stdout)
            return [(r["id"], r["status"]) for r in rows] == [(job_id, "done")]
        wait_for(listed_done, timeout=240, what="`jobs list` to show the job done")
        assert (tmp_path / "zoo" / "digits" / "t.safetensors").is_file()
    finally:
        # this head only (`ray stop` would also stop the module's cluster and any other Ray on the machine)
        head.terminate()
        try:
            head.wait(timeout=60)
        finally:
            try:
                os.killpg(head.pid, signal.SIGKILL)  # whatever of its process group is left
            except ProcessLookupError:
                pass


def test_an_unreachable_cluster_is_one_line_and_the_job_stays_queued(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{_free_port()}", "EXPLROBUST_EXECUTOR": "ray",
           "EXPLROBUST_RUNS": str(tmp_path / "runs"), "EXPLROBUST_USER_ZOO": str(tmp_path / "zoo")}
    out = _cli(env, "jobs", "submit", "--name", "lost", "--objective", "natural", *TINY_FLAGS, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:" in lines[0], out.stderr
    [job] = JobStore(tmp_path / "runs").list()
    assert (job.name, job.status, job.attempts) == ("lost", "queued", 0)  # kept, to start once the cluster is back
    # the local executor refuses this runs directory while a Ray job waits in it
    with pytest.raises(ConfigError, match="ray executor"):
        make_executor(tmp_path / "runs", "local")


def test_the_training_jobs_page_names_the_cluster_and_lists_ray_jobs(cluster, monkeypatch, capsys):
    from streamlit.testing.v1 import AppTest

    from explrobust_core.cli import main

    assert main(["ray-local", "status"]) == 0  # the cluster the executor started for this runs directory
    assert capsys.readouterr().out.startswith(f"local Ray cluster at {cluster.address} (pid ")

    monkeypatch.setenv("EXPLROBUST_EXECUTOR", "ray")
    if not any(j.status == "done" for j in cluster.store.list()):  # run alone, not after the tests above
        cluster.wait(cluster.submit(tiny("ray_page")).id, timeout=300)
    done = [j for j in cluster.store.list() if j.status == "done"]
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    at.switch_page("pages/training.py").run()
    assert not at.exception and not at.error
    assert any("Ray cluster at 127.0.0.1:" in c.value for c in at.caption)
    [table] = [d.value for d in at.dataframe if "kind" in d.value.columns]  # the queue (the sweep tables have none)
    assert {j.id for j in done} <= set(table["id"]) and "✓ done" in set(table["status"])


def test_each_job_asks_ray_for_one_cpu_and_a_gpu_only_when_it_can_use_one():
    from explrobust_core.ray_executor import job_resources

    def train(device):
        return {"kind": "train", "train": {"device": device}}

    assert job_resources(train("cpu"), cluster_gpus=8) == {"num_cpus": 1, "num_gpus": 0}
    assert job_resources(train("cuda"), cluster_gpus=8) == {"num_cpus": 1, "num_gpus": 1}
    assert job_resources(train("cuda:3"), cluster_gpus=8) == {"num_cpus": 1, "num_gpus": 1}
    assert job_resources(train("auto"), cluster_gpus=2) == {"num_cpus": 1, "num_gpus": 1}
    assert job_resources(train("auto"), cluster_gpus=0) == {"num_cpus": 1, "num_gpus": 0}
    assert job_resources(train("mps"), cluster_gpus=2) == {"num_cpus": 1, "num_gpus": 0}
    assert job_resources({"kind": "evaluate", "device": "cuda"}, cluster_gpus=1)["num_gpus"] == 1


def test_an_unknown_executor_is_refused_with_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLROBUST_EXECUTOR", "slurm")
    with pytest.raises(ConfigError, match="EXPLROBUST_EXECUTOR: unknown executor 'slurm'; choose local or ray"):
        make_executor(tmp_path / "runs")
    with pytest.raises(ConfigError, match="--executor: unknown executor 'k8s'"):
        make_executor(tmp_path / "runs", "k8s")


def test_a_cluster_that_goes_away_is_one_message_and_its_jobs_resume_on_the_next(cluster):
    """Last in the module: it stops the module's cluster (the teardown stops the one started after it)."""
    from explrobust_core.ray_cluster import RayUnavailable, stop_local_cluster

    ex, store = cluster, cluster.store
    job = ex.submit(slow("ray_orphan", epochs=2))
    wait_for(lambda: store.get(job.id).metrics, poll=ex.reconcile, what="epoch 1 to end")
    first_cluster = ex.address
    assert stop_local_cluster(store)
    with pytest.raises(RayUnavailable, match=f"lost the Ray cluster at {first_cluster}"):
        ex.reconcile()
    assert store.get(job.id).status == "running"  # nothing is lost or guessed while no cluster answers
    store.update(job.id, started=time.time() - 600)  # older than the grace given to jobs being started
    ex.reconcile()  # no RAY_ADDRESS: a new local cluster is started, which has never heard of the job
    assert ex.address != first_cluster
    assert store.get(job.id).status == "interrupted" and "no longer knows" in store.get(job.id).error
    ex.resume(job.id)
    done = ex.wait(job.id, timeout=300)
    assert done.status == "done" and [m["epoch"] for m in done.metrics] == [1, 2], Path(done.log_path).read_text()
