"""Choosing the job executor: local processes (the default) or a Ray cluster.

``make_executor`` is what the CLI and the Training jobs page call; the kind comes from the caller
(``--executor``), else ``$EXPLROBUST_EXECUTOR``, else ``local``. A runs directory is served by one kind at
a time: the other kind is refused while jobs are active, because each kind recognises only its own
workers (local: a process on this machine; Ray: a named actor) and would report the other's as dead.
"""

from __future__ import annotations

import os
from pathlib import Path

from .jobs import ACTIVE, JobStore, LocalExecutor
from .registry import ConfigError, MissingExtraError

KINDS = ("local", "ray")
EXECUTOR_ENV = "EXPLROBUST_EXECUTOR"


def executor_kind(kind: str | None = None) -> str:
    chosen = (kind or os.environ.get(EXECUTOR_ENV) or "local").strip().lower()
    if chosen not in KINDS:
        source = "--executor" if kind else EXECUTOR_ENV
        raise ConfigError(f"{source}: unknown executor {chosen!r}; choose {' or '.join(KINDS)}")
    return chosen


def _claim(store: JobStore, kind: str) -> None:
    owner = store.setting("executor", "local")
    if owner == kind:
        return
    active = store.list(ACTIVE)
    if active:
        raise ConfigError(f"{len(active)} job(s) in {store.root} are queued or running on the {owner} executor; "
                          f"wait for them or cancel them before using the {kind} executor here (or use another "
                          "runs directory)")
    store.set_setting("executor", kind)


def make_executor(store: JobStore | str | Path | None = None, kind: str | None = None,
                  max_concurrent: int | None = None) -> LocalExecutor:
    """The executor of this runs directory; connecting to a cluster waits for its first use."""
    store = store if isinstance(store, JobStore) else JobStore(store)
    kind = executor_kind(kind)
    _claim(store, kind)
    if kind == "ray":
        import importlib.util

        from .ray_executor import RayExecutor

        if importlib.util.find_spec("ray") is None:  # reported now, with how to install it (Ray is imported later,
            raise MissingExtraError("the Ray executor is optional: pip install 'explrobust[ray]'")  # once configured)
        return RayExecutor(store, max_concurrent)
    return LocalExecutor(store, max_concurrent)


def open_executor(store: JobStore | str | Path | None = None, kind: str | None = None) -> LocalExecutor:
    """:func:`make_executor`, reconciled at once (a dashboard starting: jobs whose worker is gone are interrupted)."""
    executor = make_executor(store, kind)
    executor.reconcile()
    return executor


def describe_executor(executor: LocalExecutor) -> str:
    """One line saying where jobs run (the Training jobs page shows it)."""
    describe = getattr(executor, "describe", None)
    if describe is not None:
        return describe()
    return (f"local processes on this machine, at most {executor.max_concurrent} at once "
            f"(set {EXECUTOR_ENV}=ray for a Ray cluster)")
