"""``explrobust ray-local status|stop``: the one-machine Ray cluster that ``--executor ray`` starts by itself
when no ``RAY_ADDRESS`` is given (``--executor`` itself is an option of the ``jobs`` and ``sweep`` commands)."""

from __future__ import annotations

import argparse

from .jobs import RUNS_HELP

COMMANDS = {"ray-local": "the one-machine Ray cluster started by `--executor ray` without RAY_ADDRESS"}


def add_arguments(name: str, p: argparse.ArgumentParser, choice: str | None) -> None:
    p.add_argument("--runs", default=None, help=RUNS_HELP)
    p.add_argument("action", choices=("status", "stop"))
    p.set_defaults(func=cmd_ray_local)


def cmd_ray_local(ns: argparse.Namespace) -> int:
    from ..jobs import JobStore
    from ..ray_cluster import local_cluster_status, stop_local_cluster

    store = JobStore(ns.runs)
    if ns.action == "stop":
        address = store.setting("ray_local_address") or ""
        print(f"stopped the local Ray cluster at {address}" if stop_local_cluster(store)
              else "no local Ray cluster of this runs directory is running")
        return 0
    up = local_cluster_status(store)
    print(f"local Ray cluster at {up[0]} (pid {up[1]})" if up else "no local Ray cluster of this runs directory")
    return 0
