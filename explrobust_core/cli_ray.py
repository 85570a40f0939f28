"""CLI glue of the executors: ``--executor local|ray`` on the ``jobs`` and ``sweep`` commands, and
``explrobust ray-local status|stop`` for the one-machine Ray cluster the Ray executor starts by itself."""

from __future__ import annotations

import argparse

EXECUTOR_HELP = "where jobs run: local processes (default) or a Ray cluster ($RAY_ADDRESS, else a local one); " \
                "default $EXPLROBUST_EXECUTOR"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def register(sub) -> None:
    """Add ``--executor`` to every ``jobs``/``sweep`` sub-command (except the internal worker) and ``ray-local``."""
    for group in ("jobs", "sweep"):
        parser = sub.choices.get(group)
        for name, command in _subcommands(parser).items() if parser is not None else ():
            if name not in ("worker", "rebuild-store"):
                command.add_argument("--executor", choices=("local", "ray"), default=None, help=EXECUTOR_HELP)
    p = sub.add_parser("ray-local", help="the one-machine Ray cluster started by `--executor ray` without RAY_ADDRESS")
    p.add_argument("--runs", default=None, help="runs directory (default: $EXPLROBUST_RUNS or ~/.explrobust/runs)")
    p.add_argument("action", choices=("status", "stop"))
    p.set_defaults(func=cmd_ray_local)


def cmd_ray_local(ns: argparse.Namespace) -> int:
    from .jobs import JobStore
    from .ray_cluster import _host_port, _is_our_head, _reachable, stop_local_cluster

    store = JobStore(ns.runs)
    address = store.setting("ray_local_address") or ""
    pid = int(store.setting("ray_local_pid") or 0)
    if ns.action == "stop":
        print(f"stopped the local Ray cluster at {address}" if stop_local_cluster(store)
              else "no local Ray cluster of this runs directory is running")
        return 0
    up = bool(address) and _is_our_head(pid, address) and _reachable(*_host_port(address), 1.0) is None
    print(f"local Ray cluster at {address} (pid {pid})" if up else "no local Ray cluster of this runs directory")
    return 0
