"""Background jobs on a Ray cluster (``--executor ray`` / ``EXPLROBUST_EXECUTOR=ray``).

The cluster is ``$RAY_ADDRESS`` when set; otherwise a one-machine cluster bound to 127.0.0.1 that
:mod:`explrobust_core.ray_cluster` starts (small: ``EXPLROBUST_RAY_CPUS`` CPUs, a 100 MB object store,
no dashboard) and remembers in the job store, so later drivers — the next CLI call, the dashboard after
a restart — find the same cluster and the jobs on it.

**Why one detached, named actor per job** (not Ray tasks, not Ray Jobs):

* a task belongs to the driver that submitted it and dies with it, but ``explrobust jobs submit`` exits
  at once and a dashboard may restart; a *detached* actor (``job-ID-ATTEMPT`` in the ``explrobust``
  namespace) outlives its driver, and any later driver finds it by name — that is the reconciliation
  after a driver restart: a job the store calls running whose actor Ray no longer knows is interrupted;
* an actor is also the job's mailbox: training runs in a thread of the actor while the driver calls
  ``snapshot()`` (progress, per-epoch metrics, loss curve, result, final status) and ``cancel()``. The
  worker never opens the SQLite store (which may live on another host, and WAL is same-host only):
  it collects the writes a local worker would make, and the driver copies them into the store;
* Ray Jobs run a shell command per job through the job server (the dashboard, which is kept off here)
  and offer no channel back but the log.

The store stays the queue: a driver's poll (:meth:`RayExecutor.start_queued` — the dashboard every
1.5 s, ``explrobust jobs list``, ``wait``) copies snapshots into the store and starts queued jobs while
fewer than ``max_concurrent`` run. Unlike local workers, a job that ends does not start the next one
itself: the queue moves at the next poll. A finished actor keeps its slot until a driver has recorded
its end, then the driver releases it (``ray.kill``).

Each job asks Ray for 1 CPU, and 1 GPU when its device is ``cuda``/``cuda:N`` or ``auto`` on a cluster
that has GPUs (Ray then sets ``CUDA_VISIBLE_DEVICES``, so ``cuda:N`` becomes the one GPU it was given).
Job folders (run state, checkpoint, log) and evaluation results go to ``$EXPLROBUST_STORAGE`` (default:
the runs directory), a folder every node must see at the same path; the finished checkpoint joins the
user zoo (``$EXPLROBUST_USER_ZOO``, shared as well) exactly as a local job's does.

Faults: cancel asks the actor to stop (the trainer stops at the next batch and saves a resumable
state); a worker that has not stopped ``EXPLROBUST_RAY_CANCEL_GRACE_S`` seconds later is ended by
``ray.kill`` (Ray's stop for an actor; ``ray.cancel(force=True)`` is its counterpart for tasks). A dead
worker or node leaves the job ``interrupted``; resume starts a new actor, anywhere, that continues from
the saved state. An unreachable cluster is a one-line error and leaves every job as it is in the store.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import socket
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from .io import check_name
from .jobs import ACTIVE, Job, JobStore, LocalExecutor, parse_spec
from .ray_cluster import NAMESPACE, RayUnavailable, _host_port, _import_ray, _reachable, connect
from .registry import ConfigError, MissingExtraError

FINAL = ("done", "failed", "cancelled", "interrupted")
_WRITABLE = ("progress", "metrics", "losses", "result", "status", "finished", "error")  # what a worker may report
_STARTING_GRACE_S = 30  # a claimed job whose actor is not registered yet is being started by another driver


def storage_dir(store: JobStore) -> Path:
    """Where workers keep job folders and results: ``$EXPLROBUST_STORAGE`` (shared by every node), else the runs dir."""
    return Path(os.environ.get("EXPLROBUST_STORAGE") or store.root).expanduser()


def _cancel_grace_s() -> float:
    return float(os.environ.get("EXPLROBUST_RAY_CANCEL_GRACE_S", "30"))


# --------------------------------------------------------------------------- the worker side


class _ActorStore:
    """The job store as a Ray worker sees it: its own copy of the job, and the writes kept for the driver.

    It answers what the job code asks a :class:`JobStore` (``get``, ``update``, ``job_dir``, ``root``), so
    the local workers' training and evaluation code runs unchanged.
    """

    def __init__(self, job: Job, root: Path):
        self.root = root
        self._job = job
        self._writes: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.cancel = False

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / check_name(job_id, "job id")

    def get(self, job_id: str) -> Job:
        with self._lock:
            return dataclasses.replace(copy.deepcopy(self._job), cancel_requested=self.cancel)

    def update(self, job_id: str, **values: Any) -> None:
        values = json.loads(json.dumps(values))  # a copy: the reporter keeps appending to its lists
        with self._lock:
            for key, value in values.items():
                setattr(self._job, key, value)
            self._writes.update(values)

    def writes(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._writes)


class JobRunner:
    """One job in a Ray actor: trains/evaluates in a thread, answers ``snapshot`` and ``cancel`` meanwhile."""

    def __init__(self, job: Job, storage: str):
        self.store = _ActorStore(job, Path(storage))
        self.job_id = job.id
        self.thread = threading.Thread(target=self._run, name=f"job-{job.id}", daemon=True)
        self.thread.start()  # in the constructor: the job runs even if the driver that created it is gone

    def _run(self) -> None:
        from .cpu_memory import reuse_freed_memory
        from .jobs import _Reporter, run_job

        reuse_freed_memory()  # the actor's process, as a local job worker's

        log = self.store.job_dir(self.job_id) / "job.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", buffering=1) as out, redirect_stdout(out), redirect_stderr(out):
            job = self.store.get(self.job_id)
            print(f"job {job.id} (attempt {job.attempts}): {job.kind} {job.name}, Ray worker pid {os.getpid()} "
                  f"on {socket.gethostname()}", flush=True)
            self._recover_epochs(job)
            reporter = _Reporter(self.store, self.store.get(self.job_id))
            reporter.stop = reporter.cancel_requested
            try:
                run_job(self.store, job, reporter)
            except BaseException as err:  # run_job records Exceptions; anything else still ends the job here
                self.store.update(self.job_id, status="failed", finished=time.time(),
                                  error=f"{type(err).__name__}: {err}")

    def _recover_epochs(self, job: Job) -> None:
        """Per-epoch metrics come from the run's own record (``metrics.jsonl`` in shared storage): a previous
        attempt's last epochs may never have reached the driver (its cluster went away before the next poll)."""
        from .io import read_bounded

        record = self.store.job_dir(job.id) / f"{job.name}.run" / "metrics.jsonl"
        if job.kind == "train" and record.is_file():
            rows = [json.loads(line) for line in read_bounded(record, 16 << 20, "training metrics").decode().splitlines()
                    if line.strip()]
            if rows:
                self.store.update(job.id, metrics=rows)

    def snapshot(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "writes": self.store.writes()}

    def cancel(self) -> None:
        self.store.cancel = True  # the trainer sees it at its next batch (checked at most every second)


# --------------------------------------------------------------------------- the driver side


def _device_of(spec_data: dict[str, Any]) -> str:
    return (spec_data["train"]["device"] if spec_data["kind"] == "train" else spec_data["device"]) or "auto"


def job_resources(spec_data: dict[str, Any], cluster_gpus: float) -> dict[str, float]:
    """What one job asks of Ray: 1 CPU, plus 1 GPU for a CUDA device or ``auto`` on a cluster with GPUs."""
    device = _device_of(spec_data)
    wants_gpu = device.startswith("cuda") or (device == "auto" and cluster_gpus >= 1)
    return {"num_cpus": 1, "num_gpus": 1 if wants_gpu else 0}


def _worker_environment(storage: Path) -> dict[str, str]:
    """The driver's settings the worker needs (zoo, storage, import path), wherever Ray places it."""
    from .zoo import user_zoo_dir

    names = [k for k in os.environ if k.startswith("EXPLROBUST_")] + ["PYTHONPATH", "NUMBA_CACHE_DIR"]
    env = {k: os.environ[k] for k in names if k in os.environ}
    env["EXPLROBUST_RUNS"] = str(storage)  # on the worker, the runs directory is the shared storage
    env["EXPLROBUST_USER_ZOO"] = str(user_zoo_dir())  # the driver's user zoo (a shared path on a real cluster)
    env.pop("EXPLROBUST_EXECUTOR", None)
    return env


class RayExecutor(LocalExecutor):
    """The local executor's queue and store, with each job run by a detached Ray actor (see the module doc)."""

    kind = "ray"

    def __init__(self, store: JobStore | None = None, max_concurrent: int | None = None):
        super().__init__(store, max_concurrent)
        self.address: str | None = None
        self._actors: dict[str, Any] = {}

    # -- connection
    def connect(self) -> str:
        if self.address is not None:
            self._check_cluster()
        if self.address is None:
            self.address = connect(self.store)
        return self.address

    def _check_cluster(self) -> None:
        """A cluster that went away: disconnect (a Ray call now would wait on it) and say so; jobs keep their state
        in the store, and once a cluster answers again those Ray no longer knows become interrupted."""
        why = _reachable(*_host_port(self.address), 2.0)
        if why is None:
            return
        lost, self.address = self.address, None
        self._actors.clear()
        _import_ray().shutdown()
        raise RayUnavailable(f"lost the Ray cluster at {lost} ({why}); the jobs keep their last reported state in "
                             "the store and are reconciled when a cluster answers again")

    def describe(self) -> str:
        """One line: which cluster, its size, the parallelism (the page shows it)."""
        ray = _import_ray()
        try:
            address = self.connect()
        except (RayUnavailable, MissingExtraError) as err:
            return f"Ray executor — {err}"
        resources = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        return (f"Ray cluster at {address}: {nodes} node{'s' * (nodes != 1)}, {resources.get('CPU', 0):g} CPUs, "
                f"{resources.get('GPU', 0):g} GPUs; at most {self.max_concurrent} jobs at once; "
                f"job files in {storage_dir(self.store)}")

    # -- queue
    def start_queued(self) -> list[str]:
        self.connect()  # first: an unreachable cluster raises before any queued job is claimed
        return super().start_queued()

    def _actor_name(self, job: Job) -> str:
        return f"job-{job.id}-{job.attempts}"

    def _spawn(self, job_id: str) -> int | None:
        """Create the job's actor (LocalExecutor.start_queued claimed the job); no local pid."""
        ray = _import_ray()
        job = self.store.get(job_id)
        try:
            storage = storage_dir(self.store)
            spec = copy.deepcopy(job.spec)
            resources = job_resources(spec, ray.cluster_resources().get("GPU", 0))
            device = _device_of(spec)
            if resources["num_gpus"] and device.startswith("cuda:"):  # Ray shows the worker only its own GPU
                (spec["train"] if spec["kind"] == "train" else spec)["device"] = "cuda"
            parse_spec(spec)
            log = storage / "jobs" / job.id / "job.log"
            if str(log) != job.log_path:
                self.store.update(job_id, log_path=str(log))
            actor = ray.remote(JobRunner).options(
                name=self._actor_name(job), namespace=NAMESPACE, lifetime="detached", max_restarts=0,
                runtime_env={"env_vars": _worker_environment(storage)}, **resources,
            ).remote(dataclasses.replace(job, spec=spec), str(storage))
        except ConfigError as err:
            raise OSError(str(err)) from None
        except Exception as err:  # Ray refused the actor: recorded as the job's failure to start
            raise OSError(f"Ray could not start the job: {type(err).__name__}: {err}") from None
        self._actors[job.id] = actor
        return None

    def _find_actor(self, job: Job):
        ray = _import_ray()
        actor = self._actors.get(job.id)
        if actor is None:
            try:
                actor = ray.get_actor(self._actor_name(job), namespace=NAMESPACE)
            except ValueError:
                return None
            self._actors[job.id] = actor
        return actor

    def _record(self, job: Job, values: dict[str, Any]) -> bool:
        """Write what a worker reported, only while this attempt is the running one; True if written."""
        values = {k: (json.dumps(v) if k in ("progress", "metrics", "losses", "result") else v)
                  for k, v in values.items()}
        if not values:
            return False
        cols = ", ".join(f"{k} = ?" for k in values)
        with self.store.transaction() as db:
            return bool(db.execute(f"UPDATE jobs SET {cols} WHERE id = ? AND status = 'running' AND attempts = ?",
                                   (*values.values(), job.id, job.attempts)).rowcount)

    def _end(self, job: Job, status: str, why: str | None) -> None:
        self._record(job, {"status": status, "finished": time.time(), "error": why})
        self._release(job)

    def _release(self, job: Job) -> None:
        actor = self._actors.pop(job.id, None)
        if actor is not None:
            try:
                _import_ray().kill(actor, no_restart=True)  # frees its CPU/GPU once its end is recorded
            except Exception:  # already gone
                pass

    def reconcile(self) -> list[Job]:
        """Copy each running job's reports into the store; jobs whose actor is gone become interrupted
        (or cancelled, if asked); a cancel not obeyed within the grace period is enforced."""
        ray = _import_ray()
        self.connect()
        try:
            return self._reconcile(ray)
        except (ray.exceptions.RaySystemError, ray.exceptions.GetTimeoutError, ConnectionError) as err:
            raise RayUnavailable(f"lost the Ray cluster at {self.address} ({type(err).__name__}); the jobs keep "
                                 "their last reported state in the store") from None

    def _reconcile(self, ray) -> list[Job]:
        pending, ended = {}, []
        for job in self.store.list(("running",)):
            actor = self._find_actor(job)
            if actor is None:
                if time.time() - (job.started or 0) < _STARTING_GRACE_S:
                    continue  # just claimed by another driver, its actor not registered yet
                self._gone(job, "Ray no longer knows its worker (the cluster restarted or the node was lost)")
                ended.append(job.id)
                continue
            if job.cancel_requested and self._enforce_cancel(job, actor):
                ended.append(job.id)
                continue
            pending[actor.snapshot.remote()] = job
        if pending:  # an actor still being placed does not answer yet: it is simply asked again next poll
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=2.0)
            for ref in ready:
                job = pending[ref]
                try:
                    answer = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    self._gone(job, f"its Ray worker died ({type(err).__name__})")
                    ended.append(job.id)
                    continue
                except ray.exceptions.RayError as err:
                    self._gone(job, f"its Ray worker failed ({type(err).__name__}: {str(err)[:200]})")
                    ended.append(job.id)
                    continue
                if self._apply(job, answer):
                    ended.append(job.id)
        return [self.store.get(i) for i in ended]

    def _apply(self, job: Job, answer: dict[str, Any]) -> bool:
        """A snapshot into the store; True when it carries the job's end (the actor is then released)."""
        writes = {k: v for k, v in answer.get("writes", {}).items() if k in _WRITABLE}
        if "status" in writes and writes["status"] not in FINAL:
            writes = {**writes, "status": "failed", "error": f"the worker reported status {writes['status']!r}"}
        if job.pid != answer.get("pid"):
            writes["pid"] = answer.get("pid")
        self._record(job, writes)
        if writes.get("status") in FINAL:
            self._release(job)
            self.store.set_setting(f"ray_cancel_at:{job.id}", "")
            return True
        return False

    def _gone(self, job: Job, why: str) -> None:
        if job.cancel_requested:
            self._end(job, "cancelled", "cancelled before the worker could stop by itself")
        else:
            self._end(job, "interrupted", f"{why}; resume continues from the last saved state")

    def _enforce_cancel(self, job: Job, actor) -> bool:
        """Tell the actor (again) to stop; past the grace period, stop it through Ray. True if it was stopped."""
        asked = float(self.store.setting(f"ray_cancel_at:{job.id}") or 0)
        if not asked:  # flagged by a driver that could not tell the actor (or by hand): the grace starts now
            asked = time.time()
            self.store.set_setting(f"ray_cancel_at:{job.id}", str(asked))
        if time.time() - asked > _cancel_grace_s():
            self._end(job, "cancelled", f"the worker did not stop within {_cancel_grace_s():g} s of the cancel and "
                                        "was stopped by Ray; resume continues from its last saved state")
            return True
        actor.cancel.remote()  # again each poll: the first message may have gone to an actor still starting
        return False

    # -- actions
    def cancel(self, job_id: str) -> Job:
        job, running = self._mark_cancel(job_id)
        if running:
            self.store.set_setting(f"ray_cancel_at:{job_id}", str(time.time()))
            self.connect()
            actor = self._find_actor(job)
            if actor is not None:
                actor.cancel.remote()
        return self.store.get(job_id)

    def delete(self, job_id: str) -> None:
        job = self.store.get(job_id)
        super().delete(job_id)
        folder = storage_dir(self.store) / "jobs" / check_name(job.id, "job id")
        if job.status not in ACTIVE and folder.is_dir() and folder != self.store.job_dir(job_id):
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
