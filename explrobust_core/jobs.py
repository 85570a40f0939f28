"""Background jobs: validated specs, a SQLite job store and a local process executor.

Training and dataset-wide evaluations never run inside the dashboard's script thread: each job is a
detached OS process (``explrobust jobs worker ID``) that writes its progress into a SQLite store
(WAL mode, so the UI reads while workers write) under the runs directory::

    RUNS/jobs.sqlite           the store: one row per job
    RUNS/jobs/<id>/job.log     the worker's output
    RUNS/jobs/<id>/            everything the job writes (training run + checkpoint, results)

A finished training job registers its checkpoint in the user zoo (never the shipped one); an
evaluation job stores its result where the Robustness study page reads it. Cancel asks the worker
to stop at the next batch (a flag in the store plus SIGTERM); the trainer then leaves a resumable
state. A worker killed outright is noticed by :meth:`LocalExecutor.reconcile` (its process is gone)
and reported ``interrupted``; ``resume`` restarts it from the last saved state. The Ray executor
(:mod:`explrobust_core.ray_executor`) runs the same job code on a cluster behind the same protocol.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Literal, Protocol

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from .cancellation import Cancelled, cancellable
from .errors import ExplrobustError
from .io import atomic_write_bytes, check_name, runs_dir
from .registry import Config, ConfigError, format_validation_error
from .training.trainer import TrainConfig

STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
MAX_LOSS_POINTS = 400  # loss-curve points kept per job (older ones are thinned)


# --------------------------------------------------------------------------- specs


class EvaluationRequest(Config):
    """An evaluation protocol: a preset and/or EvaluationConfig overrides, validated when given."""

    preset: str | None = Field(None, description="an evaluation preset (rar_mnist, sep_mnist, …)")
    evaluation: dict[str, Any] = Field(default_factory=dict, description="EvaluationConfig overrides")

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str | None) -> str | None:
        from .evaluate import PRESETS

        if v is not None and v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; known: {', '.join(sorted(PRESETS))}")
        return v

    @model_validator(mode="after")
    def _valid_protocol(self):
        self.evaluation_config()  # refuse a bad protocol at submit time, not when the job runs
        return self

    def evaluation_config(self):
        from .evaluate import make_evaluation_config

        return make_evaluation_config(self.preset, **self.evaluation)


def _device_at_submit(v: str) -> str:
    from .device import resolve_device

    resolve_device(v)  # at submit, not when the worker starts: "cuda" on a CPU-only machine is refused now
    return v


class EvaluateJobSpec(EvaluationRequest):
    """Evaluate one zoo checkpoint (clean/PGD accuracy and explanation robustness)."""

    kind: Literal["evaluate"] = "evaluate"
    model: str = Field(..., description="zoo model as dataset/name, e.g. mnist5k/natural")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        parts = v.split("/")
        if len(parts) != 2:
            raise ValueError("model must be dataset/name, e.g. mnist5k/natural")
        for p in parts:
            check_name(p, "model name")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return _device_at_submit(v)


class TrainJobSpec(Config):
    """Train one model; the checkpoint joins the user zoo when the job finishes.

    With ``evaluate_after`` the same job then evaluates the new model under that protocol and
    stores the result where the Robustness study page reads it (what a sweep point needs).
    """

    kind: Literal["train"] = "train"
    train: TrainConfig = Field(..., description="the training run: objective + config, dataset, architecture, …")
    evaluate_after: EvaluationRequest | None = Field(None, description="evaluate the trained model under this protocol")
    sweep: str | None = Field(None, max_length=64, description="the sweep this job is a point of (for listings)")

    @field_validator("train")
    @classmethod
    def _reads_only(cls, v: TrainConfig) -> TrainConfig:
        if v.dataset_config.get("download"):  # a download writes into the data root, outside the runs directory
            raise ValueError("dataset_config.download is not allowed in a job: download the dataset first")
        _device_at_submit(v.device)
        return v


JobSpec = Annotated[TrainJobSpec | EvaluateJobSpec, Field(discriminator="kind")]
_SPEC = TypeAdapter(JobSpec)


def parse_spec(data: dict[str, Any] | str) -> TrainJobSpec | EvaluateJobSpec:
    """A validated job spec from a dict or JSON text; errors name the offending field."""
    try:  # strict: a spec is untrusted JSON, and "3" or true is not a number of epochs
        spec = _SPEC.validate_json(data if isinstance(data, str) else json.dumps(data), strict=True)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "job spec")) from None
    except (TypeError, ValueError) as err:  # a dict that JSON cannot hold
        raise ConfigError(f"invalid job spec: {err}") from None
    return spec


def spec_name(spec: TrainJobSpec | EvaluateJobSpec) -> str:
    return spec.train.name if isinstance(spec, TrainJobSpec) else spec.model


# --------------------------------------------------------------------------- store


class JobNotFound(KeyError, ValueError, ExplrobustError):
    """No job with this id (a ValueError too, so the CLI prints it as one line)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such job"


class JobStoreError(ValueError, ExplrobustError):
    """The job store is unreadable (corrupt, truncated) or lost while job folders remain; the message says
    how to recover (a ValueError, so the CLI prints it as one line and the pages as an error box)."""


class JobCancelled(Cancelled):
    """Raised inside a worker when its job was asked to stop (between evaluation stages)."""


@dataclass
class Job:
    id: str
    kind: str
    name: str
    spec: dict[str, Any]
    status: str
    progress: dict[str, Any]
    metrics: list[dict[str, Any]]
    losses: list[list[float]]
    created: float
    started: float | None
    finished: float | None
    pid: int | None
    log_path: str
    result: dict[str, Any]
    error: str | None
    attempts: int
    cancel_requested: bool

    @property
    def fraction(self) -> float:
        p = self.progress
        if self.status == "done":
            return 1.0
        if "epochs" in p and "batches" in p:
            return min(1.0, ((p["epoch"] - 1) * p["batches"] + p["batch"]) / (p["epochs"] * p["batches"]))
        return float(p.get("fraction", 0.0))

    def as_row(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "status": self.status,
                "progress": round(self.fraction, 3), "attempts": self.attempts, "error": self.error,
                "created": self.created, "started": self.started, "finished": self.finished, "pid": self.pid,
                "result": self.result}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
    status TEXT NOT NULL, progress TEXT NOT NULL DEFAULT '{}', metrics TEXT NOT NULL DEFAULT '[]',
    losses TEXT NOT NULL DEFAULT '[]', created REAL NOT NULL, started REAL, finished REAL, pid INTEGER,
    log_path TEXT NOT NULL, result TEXT NOT NULL DEFAULT '{}', error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_JSON_COLUMNS = ("spec", "progress", "metrics", "losses", "result")


class JobStore:
    """The jobs table of ``RUNS/jobs.sqlite``; one short connection per operation (safe across processes)."""

    def __init__(self, root: str | Path | None = None, *, check_lost: bool = True):
        self.root = Path(root) if root is not None else runs_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "jobs.sqlite"
        if check_lost:
            self._check_not_lost()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _recovery(self) -> str:
        return (f"the job folders in {self.root / 'jobs'} are intact: run `explrobust jobs --runs {self.root} "
                "rebuild-store` to rebuild the store from them (the damaged file is kept as a backup)")

    def _job_folders(self) -> list[Path]:
        folder = self.root / "jobs"
        return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def _check_not_lost(self) -> None:
        """A missing or 0-byte store opens as a new, empty one: with job folders beside it, that would silently
        forget every job (and let a name be trained twice), so it is refused instead."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size == 0 and self._job_folders():
            state = "is empty (0 bytes)" if self.path.exists() else "is missing"
            raise JobStoreError(f"the job store {self.path} {state} but {len(self._job_folders())} job folders "
                                f"remain; {self._recovery()}")

    def check(self) -> None:
        """Raise :class:`JobStoreError` if the store is lost or damaged (a cheap check for the pages)."""
        self._check_not_lost()
        with self._connect() as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise JobStoreError(f"the job store {self.path} is damaged ({verdict}); {self._recovery()}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout=30000")
        except sqlite3.DatabaseError as err:
            raise self._damaged(err) from None
        try:
            yield db
        except sqlite3.DatabaseError as err:
            raise self._damaged(err) from None
        finally:
            db.close()

    def _damaged(self, err: sqlite3.DatabaseError) -> Exception:
        """A corrupt file (truncated, overwritten) becomes a :class:`JobStoreError` that says how to recover;
        other database errors (locked, …) stay what they are."""
        corrupt = type(err) is sqlite3.DatabaseError or "malformed" in str(err) or "not a database" in str(err)
        if not corrupt:
            return err
        return JobStoreError(f"the job store {self.path} is damaged or truncated ({err}); {self._recovery()}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that locks out other writers (check-then-act without races)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # a damaged file may refuse even the rollback: report the original error
                raise

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / check_name(job_id, "job id")

    def add(self, spec: TrainJobSpec | EvaluateJobSpec,
            guard: Callable[[sqlite3.Connection], None] | None = None) -> Job:
        """Queue a job; ``guard(db)`` runs in the same write transaction (a check that must not race)."""
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        log = self.job_dir(job_id) / "job.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        created = time.time()
        # the job's own record in its folder: the store can be rebuilt from the folders if it is ever lost
        atomic_write_bytes(log.parent / "job.json", json.dumps(
            {"id": job_id, "created": created, "spec": json.loads(spec.model_dump_json())}, indent=1).encode())
        try:
            with self.transaction() as db:
                if guard is not None:
                    guard(db)
                db.execute("INSERT INTO jobs (id, kind, name, spec, status, created, log_path) VALUES (?,?,?,?,?,?,?)",
                           (job_id, spec.kind, spec_name(spec), spec.model_dump_json(), "queued", created, str(log)))
        except BaseException:
            shutil.rmtree(log.parent, ignore_errors=True)  # a refused job leaves no folder behind
            raise
        return self.get(job_id)

    def _job(self, row: sqlite3.Row) -> Job:
        values = dict(row)
        for col in _JSON_COLUMNS:
            values[col] = json.loads(values[col])
        values["cancel_requested"] = bool(values["cancel_requested"])
        return Job(**values)

    def get(self, job_id: str) -> Job:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r} in {self.path}")
        return self._job(row)

    def list(self, statuses: tuple[str, ...] | None = None) -> list[Job]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created").fetchall()
        jobs = [self._job(r) for r in rows]
        return [j for j in jobs if statuses is None or j.status in statuses]

    def update(self, job_id: str, **values: Any) -> None:
        if not values:
            return
        for col in _JSON_COLUMNS:
            if col in values:
                values[col] = json.dumps(values[col])
        cols = ", ".join(f"{k} = ?" for k in values)
        with self.transaction() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*values.values(), job_id))

    def delete(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def setting(self, key: str, default: str | None = None) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                       (key, value, value))


def _recovered_spec(folder: Path) -> tuple[TrainJobSpec | EvaluateJobSpec, float]:
    """A job's spec and creation time from its folder: its ``job.json`` record, or (older jobs) the
    training run's ``config.json``."""
    from .io import read_bounded

    record = folder / "job.json"
    if record.is_file():
        data = json.loads(read_bounded(record, 1 << 20, "job record"))
        return parse_spec(data["spec"]), float(data.get("created") or folder.stat().st_mtime)
    configs = sorted(folder.glob("*.run/config.json"))
    if configs:
        train = json.loads(read_bounded(configs[0], 1 << 20, "training config"))
        return parse_spec({"kind": "train", "train": train}), folder.stat().st_mtime
    raise JobStoreError(f"{folder} holds no job.json or training config")


def rebuild_store(root: str | Path | None = None) -> tuple[Path | None, list[str], list[str]]:
    """Rebuild ``RUNS/jobs.sqlite`` from the job folders after moving the damaged file aside.

    Returns (the backup, the ids recovered, the folders skipped with why). A training job whose
    checkpoint is in its folder is ``done``; every other job comes back ``interrupted``: ``resume``
    continues it (training from its last saved state).
    """
    root = Path(root) if root is not None else runs_dir()
    path = root / "jobs.sqlite"
    backup = None
    if path.exists():
        backup = path.with_name(f"jobs.sqlite.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, backup)
    for side in ("-wal", "-shm"):  # the journal of the damaged file belongs to it, not to the new store
        journal = path.with_name(path.name + side)
        if journal.exists():
            os.replace(journal, (backup or path).with_name((backup or path).name + side))
    store = JobStore(root, check_lost=False)
    recovered, skipped = [], []
    for folder in store._job_folders():
        try:
            job_id = check_name(folder.name, "job id")
            spec, created = _recovered_spec(folder)
        except (ValueError, OSError, KeyError, TypeError) as err:  # parse errors included (ConfigError, JSON)
            skipped.append(f"{folder.name}: {' '.join(str(err).split())}")
            continue
        status, result, error = "interrupted", {}, "rebuilt from the job folder; resume continues it"
        if isinstance(spec, TrainJobSpec) and (folder / f"{spec.train.name}.safetensors").exists():
            from .zoo import user_zoo_dir

            status, error = "done", None
            result = {"checkpoint": str(folder / f"{spec.train.name}.safetensors"),
                      "model": f"{spec.train.dataset}/{spec.train.name}"}
            registered = user_zoo_dir() / spec.train.dataset / f"{spec.train.name}.safetensors"
            if registered.exists():
                result["zoo_checkpoint"] = str(registered)
            if spec.evaluate_after is not None and "zoo_checkpoint" in result:
                # trained and registered, its evaluation not known: resume goes straight to the evaluation
                status, error = "interrupted", "rebuilt from the job folder; resume evaluates the trained model"
        with store.transaction() as db:
            db.execute("INSERT INTO jobs (id, kind, name, spec, status, created, finished, log_path, result, error) "
                       "VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (job_id, spec.kind, spec_name(spec), spec.model_dump_json(), status, created, time.time(),
                        str(folder / "job.log"), json.dumps(result), error))
        recovered.append(job_id)
    return backup, recovered, skipped


# --------------------------------------------------------------------------- executors


class Executor(Protocol):
    """What the dashboard and the CLI need from an executor; a distributed one implements the same."""

    store: JobStore

    def submit(self, spec: TrainJobSpec | EvaluateJobSpec) -> Job: ...
    def cancel(self, job_id: str) -> Job: ...
    def resume(self, job_id: str) -> Job: ...
    def reconcile(self) -> list[Job]: ...


def _process_alive(pid: int | None, job_id: str) -> bool:
    """Whether ``pid`` is still this job's worker (not a zombie, not a recycled pid)."""
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        state = stat.rsplit(")", 1)[-1].split()[0]
        return state not in ("Z", "X") and job_id in cmdline
    if sys.platform.startswith("linux"):
        return False
    try:  # other systems: pid existence only
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class LocalExecutor:
    """Jobs as detached local processes, at most ``max_concurrent`` at a time; the rest wait queued.

    Workers start the next queued job when they end, so the queue drains without a dashboard.
    """

    _children: dict[int, subprocess.Popen] = {}  # reaped in reconcile() so no zombie is mistaken for alive

    def __init__(self, store: JobStore | None = None, max_concurrent: int | None = None):
        self.store = store or JobStore()
        if max_concurrent is not None:
            if not 1 <= max_concurrent <= 64:
                raise ConfigError("max_concurrent must be between 1 and 64")
            self.store.set_setting("max_concurrent", str(max_concurrent))

    @property
    def max_concurrent(self) -> int:
        return int(self.store.setting("max_concurrent", os.environ.get("EXPLROBUST_MAX_JOBS", "1")))

    def submit(self, spec: TrainJobSpec | EvaluateJobSpec) -> Job:
        guard = (lambda db: _check_free_name(db, spec.train)) if isinstance(spec, TrainJobSpec) else None
        job = self.store.add(spec, guard)
        self.start_queued()
        return self.store.get(job.id)

    def start_queued(self) -> list[str]:
        """Start queued jobs while fewer than the limit run; returns the started ids."""
        self.reconcile()
        started = []
        while True:
            with self.store.transaction() as db:
                running = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'running'").fetchone()[0]
                row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created LIMIT 1").fetchone()
                if row is None or running >= self.max_concurrent:
                    return started
                job_id = row["id"]
                # claimed inside the lock: no other poller can start it too
                db.execute("UPDATE jobs SET status = 'running', started = ?, pid = NULL, error = NULL, "
                           "cancel_requested = 0, attempts = attempts + 1 WHERE id = ?", (time.time(), job_id))
            try:
                pid = self._spawn(job_id)
            except OSError as err:
                self.store.update(job_id, status="failed", error=f"could not start the worker: {err}",
                                  finished=time.time())
                continue
            self.store.update(job_id, pid=pid)
            started.append(job_id)

    def _spawn(self, job_id: str) -> int:
        log = open(self.store.get(job_id).log_path, "ab")
        cmd = [sys.executable, "-m", "explrobust_core.cli", "jobs", "--runs", str(self.store.root), "worker", job_id]
        # its own session: a dashboard restart (or Ctrl-C in its terminal) does not take the job with it
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
        log.close()
        self._children[proc.pid] = proc
        return proc.pid

    def reconcile(self) -> list[Job]:
        """Mark running jobs whose worker process is gone as interrupted; returns them."""
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                self._children.pop(pid, None)  # another session's thread may have reaped it already
        gone = []
        for job in self.store.list(("running",)):
            if job.pid is None and time.time() - (job.started or 0) < 30:
                continue  # being started by another poller right now
            if not _process_alive(job.pid, job.id):
                status, why = (("cancelled", "cancelled before the worker could stop by itself") if job.cancel_requested
                               else ("interrupted", "the worker process ended without finishing; resume continues "
                                                    "from the last saved state"))
                with self.store.transaction() as db:  # only this attempt, and only if nobody finished it meanwhile
                    db.execute(f"UPDATE jobs SET status = ?, finished = ?, error = ? WHERE id = ? AND "
                               f"status = 'running' AND attempts = ? AND pid {'IS NULL' if job.pid is None else '= ?'}",
                               (status, time.time(), why, job.id, job.attempts,
                                *(() if job.pid is None else (job.pid,))))
                gone.append(self.store.get(job.id))
        return gone

    def _mark_cancel(self, job_id: str) -> tuple[Job, bool]:
        """Cancel a queued job, or flag a running one (the worker stops at its next check); returns the job and
        whether it is running (shared with the Ray executor, which tells its worker another way)."""
        running = 0
        with self.store.transaction() as db:  # a queued job is cancelled only if no poller claimed it meanwhile
            queued = db.execute("UPDATE jobs SET status = 'cancelled', finished = ? WHERE id = ? AND status = 'queued'",
                                (time.time(), job_id)).rowcount
            if not queued:
                running = db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
                                     (job_id,)).rowcount
        job = self.store.get(job_id)
        if not queued and not running:
            raise ConfigError(f"job {job_id} is {job.status}; only queued or running jobs can be cancelled")
        return job, bool(running)

    def cancel(self, job_id: str) -> Job:
        job, running = self._mark_cancel(job_id)
        if running and _process_alive(job.pid, job.id):
            try:
                os.kill(job.pid, signal.SIGTERM)  # the worker's StopFlag: stop at the next batch, save state
            except ProcessLookupError:
                pass  # it ended just now; reconcile() records how
        return self.store.get(job_id)

    def resume(self, job_id: str) -> Job:
        """Queue an interrupted, cancelled or failed job again; training continues from its last state."""
        with self.store.transaction() as db:
            requeued = db.execute("UPDATE jobs SET status = 'queued', finished = NULL, error = NULL WHERE id = ? "
                                  "AND status IN ('interrupted', 'cancelled', 'failed')", (job_id,)).rowcount
        if not requeued:
            job = self.store.get(job_id)
            raise ConfigError(f"job {job_id} is {job.status}; only interrupted, cancelled or failed jobs resume")
        self.start_queued()
        return self.store.get(job_id)

    retry = resume  # a failed job retried is resumed from its last state

    def delete(self, job_id: str) -> None:
        """Forget a job that is not running and remove its directory (its registered checkpoint stays)."""
        job = self.store.get(job_id)
        if job.status in ACTIVE:
            raise ConfigError(f"job {job_id} is {job.status}; cancel it first")
        trained = self.store.job_dir(job_id) / f"{job.name}.safetensors"
        if job.kind == "train" and trained.exists() and "zoo_checkpoint" not in job.result:
            raise ConfigError(f"job {job_id} trained {trained} but could not add it to the zoo ({job.error}); "
                              "move that file away (or upload it on the Model zoo page) before deleting the job")
        shutil.rmtree(self.store.job_dir(job_id), ignore_errors=True)
        self.store.delete(job_id)

    def wait(self, job_id: str, timeout: float = 600, poll: float = 0.2) -> Job:
        """Block until the job is no longer queued/running (tests, scripts)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.start_queued()
            job = self.store.get(job_id)
            if job.status not in ACTIVE:
                return job
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} still {self.store.get(job_id).status} after {timeout:.0f} s")


def _check_free_name(db: sqlite3.Connection, cfg: TrainConfig) -> None:
    """Refuse a training job whose checkpoint name is taken in the zoos or by an active job (run inside
    the store's write transaction, so two submits of one name cannot both pass)."""
    from .zoo import shipped_zoo_dir, user_zoo_dir

    for zoo in (user_zoo_dir(), shipped_zoo_dir()):
        if (zoo / cfg.dataset / f"{cfg.name}.safetensors").exists() or (zoo / cfg.dataset / cfg.name).is_dir():
            raise ConfigError(f"train.name: a checkpoint {cfg.dataset}/{cfg.name} exists already; choose another name")
    rows = db.execute("SELECT id, spec FROM jobs WHERE kind = 'train' AND name = ? AND status IN ('queued', 'running')",
                      (cfg.name,)).fetchall()
    for row in rows:
        if json.loads(row["spec"])["train"]["dataset"] == cfg.dataset:
            raise ConfigError(f"train.name: job {row['id']} is already training {cfg.dataset}/{cfg.name}")


# --------------------------------------------------------------------------- the worker


class _Reporter:
    """Throttled progress writes from the worker into the store."""

    def __init__(self, store: JobStore, job: Job, every_s: float = 0.5):
        self.store, self.job_id, self.every_s = store, job.id, every_s
        self.losses: list[list[float]] = list(job.losses)
        self.metrics: list[dict[str, Any]] = list(job.metrics)
        self.last = 0.0
        self.cancel_checked = 0.0
        self.cancelled = False
        self.stop: Callable[[], bool] | None = None

    def train_event(self, event: dict[str, Any]) -> None:
        if "metrics" in event:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in event["metrics"].items() if isinstance(v, float))
            print(f"epoch {event['epoch']}/{event['epochs']}: {shown}", flush=True)
            self.metrics = [m for m in self.metrics if m.get("epoch") != event["epoch"]] + [event["metrics"]]
            self.store.update(self.job_id, metrics=self.metrics)
            return
        step = (event["epoch"] - 1) * event["batches"] + event["batch"]
        self.losses.append([step, event["loss"]])
        if len(self.losses) > MAX_LOSS_POINTS:
            self.losses = self.losses[::2]
        now = time.time()
        if now - self.last >= self.every_s or step == event["epochs"] * event["batches"]:
            self.last = now
            self.store.update(self.job_id, progress={k: event[k] for k in ("epoch", "epochs", "batch", "batches")}
                              | {"loss": event["loss"]}, losses=self.losses)

    def stage(self, stage: str, fraction: float) -> None:
        """Evaluation progress; also where an evaluation notices that it was asked to stop."""
        from .evaluate import overall_fraction

        if self.stop is not None and self.stop():
            raise JobCancelled(stage)
        now = time.time()
        if now - self.last >= self.every_s or fraction >= 1:
            self.last = now
            self.store.update(self.job_id, progress={"stage": stage, "fraction": overall_fraction(stage, fraction)})

    def cancel_requested(self) -> bool:
        now = time.time()
        if not self.cancelled and now - self.cancel_checked >= 1.0:
            self.cancel_checked = now
            self.cancelled = self.store.get(self.job_id).cancel_requested
        return self.cancelled


def register_checkpoint(checkpoint: Path, dataset: str, name: str) -> Path:
    """Add a finished job's checkpoint to the user zoo through :func:`~explrobust_core.zoo.add_to_user_zoo` (its
    lock and checks; never overwrites: the same weights there already are this job's own registration, kept)."""
    import filecmp

    from .zoo import CheckpointError, add_to_user_zoo, load_checkpoint, user_zoo_dir

    target = user_zoo_dir() / dataset / f"{name}.safetensors"
    if target.exists() and target.with_suffix(".json").exists() and filecmp.cmp(target, checkpoint, shallow=False):
        # the same weights: this job registered them already and ended before its end was recorded (it is
        # resumed); the card written then stays
        return target
    model, card = load_checkpoint(checkpoint, "cpu")
    if (card.dataset, card.name) != (dataset, name):
        raise CheckpointError(f"{checkpoint} holds {card.dataset}/{card.name}, not the job's {dataset}/{name}")
    try:
        return add_to_user_zoo(model, card)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; the trained checkpoint stays at {checkpoint}") from None


def _run_training(store: JobStore, job: Job, spec: TrainJobSpec, reporter: _Reporter,
                  stop: Callable[[], bool]) -> str:
    from .training.trainer import train

    model = f"{spec.train.dataset}/{spec.train.name}"
    done_before = store.get(job.id).result
    if done_before.get("zoo_checkpoint") and spec.evaluate_after is not None:
        registered = Path(done_before["zoo_checkpoint"])  # a resumed job whose training had finished
    else:
        outcome = train(spec.train, store.job_dir(job.id), progress=reporter.train_event, should_stop=stop,
                        command=f"explrobust jobs submit (job {job.id})")
        if not outcome.finished:
            return "cancelled" if store.get(job.id).cancel_requested else "interrupted"
        registered = register_checkpoint(outcome.checkpoint, spec.train.dataset, spec.train.name)
        store.update(job.id, result={"checkpoint": str(outcome.checkpoint), "zoo_checkpoint": str(registered),
                                     "model": model})
    if spec.evaluate_after is not None:
        evaluation = _evaluate_zoo_model(store, model, spec.evaluate_after, spec.train.device, reporter)
        store.update(job.id, result={**store.get(job.id).result, **evaluation})
    return "done"


def _evaluate_zoo_model(store: JobStore, model_name: str, request: EvaluationRequest, device: str,
                        reporter: _Reporter) -> dict[str, Any]:
    """Evaluate and store the result where the Robustness study page reads it (runs/study/…)."""
    from . import study
    from .zoo import dataset_for_card, list_checkpoints, load_checkpoint, shipped_zoo_dir, user_zoo_dir

    entries = [e for e in list_checkpoints(shipped_zoo_dir(), user_zoo_dir())
               if e.card is not None and f"{e.card.dataset}/{e.card.name}" == model_name]
    if not entries:
        raise ConfigError(f"model: no checkpoint {model_name!r} in the zoo")
    info = study.collect(entries[:1], store.root).models[model_name]
    cfg = request.evaluation_config()
    model, card = load_checkpoint(info.path, device)
    with cancellable(reporter.stop):  # the attack and PGD loops check it every step
        out = study.evaluate_and_store(model, info, dataset_for_card(card, cfg.split), cfg,
                                       preset=request.preset or "job", runs=store.root, progress=reporter.stage)
    summary = json.loads(out.read_text())["summary"]
    return {"evaluation": str(out), "model": model_name, "summary": summary}


def _run_evaluation(store: JobStore, job: Job, spec: EvaluateJobSpec, reporter: _Reporter) -> str:
    store.update(job.id, result=_evaluate_zoo_model(store, spec.model, spec, spec.device, reporter))
    return "done"


def run_worker(job_id: str, store: JobStore | None = None) -> int:
    """The worker entrypoint: run one job to its end and record how it ended."""
    from .cpu_memory import reuse_freed_memory
    from .training.trainer import StopFlag

    reuse_freed_memory()
    store = store or JobStore()
    with store.transaction() as db:  # run only the attempt this process was started for
        mine = db.execute("UPDATE jobs SET pid = ? WHERE id = ? AND status = 'running' AND (pid IS NULL OR pid = ?)",
                          (os.getpid(), job_id, os.getpid())).rowcount
    if not mine:
        print(f"job {job_id} is not waiting for this worker (status {store.get(job_id).status}); exiting", flush=True)
        return 3
    job = store.get(job_id)
    print(f"job {job_id} (attempt {job.attempts}): {job.kind} {job.name}, pid {os.getpid()}", flush=True)
    reporter = _Reporter(store, job)
    flag = StopFlag().install()
    reporter.stop = lambda: flag() or reporter.cancel_requested()
    code = run_job(store, job, reporter)
    LocalExecutor(store).start_queued()  # the queue drains without a dashboard
    return code


def run_job(store: JobStore, job: Job, reporter: _Reporter) -> int:
    """Run one claimed job and record how it ended through ``store`` (the SQLite store in a local worker, a
    stand-in that forwards to the driver in a Ray worker: anything with get/update/job_dir/root)."""
    import traceback

    job_id = job.id
    try:
        spec = parse_spec(job.spec)  # inside: a spec this machine cannot run (no CUDA now) fails with its message
        try:
            if isinstance(spec, TrainJobSpec):
                status = _run_training(store, job, spec, reporter, reporter.stop)
            else:
                status = _run_evaluation(store, job, spec, reporter)
        except Cancelled:  # an evaluation stopped mid-attack or between stages; nothing partial is stored
            status = "cancelled" if store.get(job_id).cancel_requested else "interrupted"
        store.update(job_id, status=status, finished=time.time())
        print(f"job {job_id}: {status}", flush=True)
        return 0 if status == "done" else 3
    except Exception as err:  # recorded for the UI; the traceback goes to the job's log
        traceback.print_exc()
        store.update(job_id, status="failed", finished=time.time(), error=f"{type(err).__name__}: {err}")
        return 1


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log (read from its end; logs can grow large)."""
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 200 * lines - 4096))
        text = f.read().decode(errors="replace").replace("\r", "\n")
    return "\n".join([ln for ln in text.split("\n") if ln.strip()][-lines:]) + "\n"
