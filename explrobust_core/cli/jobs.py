"""Background work: `explrobust jobs …` (submit, list, show, cancel, resume, retry, delete, logs, rebuild-store,
worker) and `explrobust sweep …` (a grid of training jobs, each point evaluated when trained)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..registry import ConfigError
from ._args import bounded_int, check_outputs

COMMANDS = {
    "jobs": "background training/evaluation jobs: submit, list, show, cancel, resume, logs",
    "sweep": "train a grid over one or two objective fields as jobs, each point then evaluated",
}
RUNS_HELP = "runs directory (default: $EXPLROBUST_RUNS or ~/.explrobust/runs)"
EXECUTOR_HELP = ("where jobs run: local processes (default) or a Ray cluster ($RAY_ADDRESS, else a local one); "
                 "default $EXPLROBUST_EXECUTOR")

def add_arguments(name: str, p: argparse.ArgumentParser, choice: str | None) -> None:
    p.add_argument("--runs", default=None, help=RUNS_HELP)
    commands = _add_jobs_arguments(p) if name == "jobs" else _add_sweep_arguments(p)
    for sub_name, command in commands.choices.items():
        if sub_name not in ("worker", "rebuild-store"):  # the worker runs where its executor put it
            command.add_argument("--executor", choices=("local", "ray"), default=None, help=EXECUTOR_HELP)

def _train_flags(extra: list[str]):
    """The `train` command's flags given after a jobs/sweep command, validated as `train` validates them."""
    from . import build_parser, choice_in
    from .train import train_config

    argv = ["train", *extra]
    return train_config(build_parser("train", choice_in(argv)).parse_args(argv))

def _add_jobs_arguments(p: argparse.ArgumentParser):
    jobs = p.add_subparsers(dest="jobs_command", required=True)
    q = jobs.add_parser("submit", help="queue a job: a JSON spec file, or the `train` command's flags",
                        usage="explrobust jobs submit [--json] [--max-concurrent N] (SPEC.json | TRAIN FLAGS …)",
                        description="SPEC.json: {\"kind\": \"train\", \"train\": {…TrainConfig…}} or "
                                    "{\"kind\": \"evaluate\", \"model\": \"mnist5k/natural\", …}; "
                                    "or the flags of `explrobust train` (see `explrobust train --help`).")
    q.add_argument("--max-concurrent", type=int, default=None, help="jobs allowed to run at once (kept in the store)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_jobs_submit)
    q = jobs.add_parser("list", help="all jobs with status and progress")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_jobs_list)
    for action, text in (("show", "one job, everything stored"), ("cancel", "stop at the next batch, keep the state"),
                         ("resume", "continue an interrupted, cancelled or failed job"),
                         ("retry", "run a failed job again from its last state"),
                         ("delete", "forget a finished job and remove its files")):
        q = jobs.add_parser(action, help=text)
        q.add_argument("id")
        q.set_defaults(func=cmd_jobs_show if action == "show" else cmd_jobs_action, action=action)
    q = jobs.add_parser("logs", help="the end of a job's log")
    q.add_argument("id")
    q.add_argument("--lines", type=bounded_int(1, 100_000), default=40)
    q.set_defaults(func=cmd_jobs_logs)
    q = jobs.add_parser("rebuild-store", help="rebuild a lost or damaged jobs.sqlite from the job folders "
                                              "(the damaged file is kept as a backup)")
    q.set_defaults(func=cmd_jobs_rebuild_store)
    q = jobs.add_parser("worker", help="(internal) run one queued job in this process")
    q.add_argument("id")
    q.set_defaults(func=cmd_jobs_worker)
    return jobs

def _add_sweep_arguments(p: argparse.ArgumentParser):
    sweeps = p.add_subparsers(dest="sweep_command", required=True)

    def outputs(q: argparse.ArgumentParser) -> None:
        q.add_argument("--json", default=None, help="write the table as JSON")
        q.add_argument("--csv", default=None, help="write the table as CSV")
        q.add_argument("--figure", default=None, help="write the figure (.png or .pdf)")

    q = sweeps.add_parser(
        "run", help="queue (or resume) a sweep: each grid point is a training job evaluated when trained",
        usage="explrobust sweep run --name NAME --grid FIELD=V1,V2,… [--grid FIELD=…] [--preset P | --evaluation JSON] "
              "[--max-parallel K] [--wait] [TRAIN FLAGS …]",
        description="FIELD is a field of the objective's config (SEP: lam, sigma, …; TRADES: beta); at most 64 points. "
                    "The other flags are `explrobust train`'s and set the base run. Running the same sweep again "
                    "resumes it. Default protocol: the Robustness study's quick protocol of the dataset.")
    q.add_argument("--name", required=True, help="sweep name (points are named NAME_FIELDVALUE…)")
    q.add_argument("--grid", action="append", required=True, metavar="FIELD=V1,V2,…", help="a swept field (once or twice)")
    q.add_argument("--preset", default=None, help="evaluation preset of every point (e.g. sep_mnist)")
    q.add_argument("--evaluation", default=None, metavar="JSON", help="EvaluationConfig overrides of every point")
    q.add_argument("--max-parallel", type=int, default=1, help="points trained at once (1–64)")
    q.add_argument("--wait", action="store_true", help="wait until every point is done, then print the table")
    q.add_argument("--timeout", type=float, default=24 * 3600, help="--wait: seconds to wait per point")
    outputs(q)
    q.set_defaults(func=cmd_sweep_run)
    q = sweeps.add_parser("status", help="the sweep's table: each point's status and, once evaluated, its numbers")
    q.add_argument("name")
    outputs(q)
    q.set_defaults(func=cmd_sweep_status)
    q = sweeps.add_parser("list", help="the sweeps in the runs directory")
    q.set_defaults(func=cmd_sweep_list)
    return sweeps

def _executor(ns: argparse.Namespace):
    from ..executors import make_executor

    return make_executor(ns.runs, getattr(ns, "executor", None), getattr(ns, "max_concurrent", None))

def cmd_jobs_submit(ns: argparse.Namespace) -> int:
    from ..jobs import TrainJobSpec, parse_spec

    extra = list(ns.extra)
    spec_file = extra.pop(0) if extra and not extra[0].startswith("-") else None
    if spec_file:
        if extra:
            raise ConfigError(f"give a spec file or training flags, not both (got {' '.join(extra)})")
        from ..io import read_bounded

        spec = parse_spec(read_bounded(spec_file, 1 << 20, "job spec file").decode("utf-8", "replace"))
    else:  # the `train` command's flags, validated the same way
        spec = TrainJobSpec(train=_train_flags(extra))
    job = _executor(ns).submit(spec)
    print(json.dumps(job.as_row()) if ns.json else f"submitted job {job.id} ({job.kind} {job.name}): {job.status}")
    return 0

def cmd_jobs_list(ns: argparse.Namespace) -> int:
    executor = _executor(ns)
    executor.start_queued()
    rows = [j.as_row() for j in executor.store.list()]
    if ns.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(f"{r['id']}  {r['kind']:<8} {r['status']:<11} {r['progress']:>5.0%}  {r['name']}"
              + (f"  ({r['error']})" if r["error"] else ""))
    return 0

def cmd_jobs_show(ns: argparse.Namespace) -> int:
    import dataclasses

    job = _executor(ns).store.get(ns.id)
    print(json.dumps(dataclasses.asdict(job) | {"fraction": job.fraction}, indent=1))
    return 0

def cmd_jobs_action(ns: argparse.Namespace) -> int:
    executor = _executor(ns)
    if ns.action == "delete":
        executor.delete(ns.id)
        print(f"deleted job {ns.id}")
        return 0
    job = getattr(executor, ns.action)(ns.id)
    print(f"job {job.id}: {job.status}" + (" (stops at the next batch)" if job.cancel_requested else ""))
    return 0

def cmd_jobs_logs(ns: argparse.Namespace) -> int:
    from ..jobs import tail

    print(tail(Path(_executor(ns).store.get(ns.id).log_path), ns.lines), end="")
    return 0

def cmd_jobs_rebuild_store(ns: argparse.Namespace) -> int:
    from ..jobs import rebuild_store

    backup, recovered, skipped = rebuild_store(ns.runs)
    print((f"moved the old store to {backup}; " if backup else "") + f"rebuilt the job store with {len(recovered)} jobs "
          "(unfinished ones are 'interrupted': `explrobust jobs resume ID` continues them)")
    for line in skipped:
        print(f"  skipped {line}", file=sys.stderr)
    return 0

def cmd_jobs_worker(ns: argparse.Namespace) -> int:
    from ..jobs import JobStore, run_worker

    return run_worker(ns.id, JobStore(ns.runs) if ns.runs else None)

# --------------------------------------------------------------------------- sweeps

def _sweep_protocol(ns: argparse.Namespace, dataset: str) -> dict[str, Any]:
    """--preset / --evaluation as given, else the Robustness study's quick protocol of the dataset."""
    if ns.preset or ns.evaluation:
        return {"preset": ns.preset, "evaluation": json.loads(ns.evaluation) if ns.evaluation else {}}
    from ..study import quick_protocol

    return {"evaluation": quick_protocol(dataset, ns.runs).model_dump(mode="json")}

def _print_sweep(rows: list[dict[str, Any]], fields: list[str]) -> None:
    def num(v, scale=1.0, fmt=".1f"):
        return "—" if v is None else format(scale * v, fmt)

    print("  ".join([f"{f:>10}" for f in fields] + ["status     ", " clean", "   PGD", " L_e start", "   L_e end",
                                                     "  model"]))
    for r in rows:
        print("  ".join([f"{r[f]!s:>10}" for f in fields]
                        + [f"{r.get('status', 'done'):<11}", f"{num(r['clean_accuracy'], 100):>6}",
                           f"{num(r['pgd_accuracy'], 100):>6}", f"{num(r['le_start']):>10}", f"{num(r['le_end']):>10}",
                           f"  {r['model']}"]))

def _write_sweep_outputs(ns: argparse.Namespace, rows: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    from .. import sweep

    sweep.write_table(rows, ns.json, ns.csv, {"sweep": spec})
    if ns.figure:
        from ..figures import save_figure, sweep_figure

        fields = list(spec["grid"])
        save_figure(sweep_figure(rows, fields[0], fields[1] if len(fields) > 1 else None,
                                 title=f"sweep {spec['name']}"), ns.figure)
        print(f"wrote {ns.figure}", file=sys.stderr)

def cmd_sweep_run(ns: argparse.Namespace) -> int:
    from .. import sweep

    check_outputs(ns, files=("json", "csv", "figure"))
    base = _train_flags(list(getattr(ns, "extra", []))).model_dump(mode="json")
    base.pop("name")
    spec = sweep.make_spec(name=ns.name, train=base, grid=sweep.parse_grid(ns.grid),
                           evaluate=_sweep_protocol(ns, base["dataset"]), max_parallel=ns.max_parallel)
    executor = _executor(ns)
    state = sweep.submit(spec, executor)
    print(f"sweep {spec.name}: {len(state['points'])} points queued or running "
          f"(at most {spec.max_parallel} at once); `explrobust sweep status {spec.name}` shows them", file=sys.stderr)
    if ns.wait:
        for point in state["points"]:
            job = executor.wait(point["job"], timeout=ns.timeout)
            print(f"{point['name']}: {job.status}", file=sys.stderr)
    rows = sweep.status_rows(state, executor.store)
    _print_sweep(rows, list(spec.grid))
    _write_sweep_outputs(ns, rows, state["spec"])
    return 0 if not ns.wait or all(r["status"] == "done" for r in rows) else 3

def cmd_sweep_status(ns: argparse.Namespace) -> int:
    from .. import sweep

    check_outputs(ns, files=("json", "csv", "figure"))
    executor = _executor(ns)
    executor.start_queued()
    state = sweep.load_state(ns.name, executor.store.root)
    rows = sweep.status_rows(state, executor.store)
    _print_sweep(rows, list(state["spec"]["grid"]))
    _write_sweep_outputs(ns, rows, state["spec"])
    return 0

def cmd_sweep_list(ns: argparse.Namespace) -> int:
    from .. import sweep

    for name in sweep.list_sweeps(_executor(ns).store.root):
        print(name)
    return 0

