"""Benchmark: N small training jobs through the Ray executor against the local executor's queue, one run.

Run from the repository root::

    .venv/bin/python bench/bench_jobs.py                 # 3 jobs, JSON on stdout
    .venv/bin/python bench/bench_jobs.py --jobs 4 --out bench_jobs.json

Both sides get the same N job specs (digits, ConvNet, natural training, ``--epochs`` epochs, CPU) in
private runs directories. *Local*: ``LocalExecutor`` with its default ``max_concurrent = 1`` — the
queue one machine runs today, one job after another, each a fresh worker process. *Ray*: the
``RayExecutor`` on a one-machine cluster it starts on 127.0.0.1 (``--ray-cpus`` CPUs), with
``max_concurrent = N`` so Ray places the jobs as its CPUs allow (1 CPU a job). Each side's time runs
from the first submit to the last job recorded done; the Ray cluster's start is timed apart (a
cluster is started once and then serves every later job). ``ratio = local / ray`` (> 1: Ray finished
the N jobs sooner). One run each, not repeated: the figure is indicative, on a shared machine
especially (the load average is recorded). Timings are reported, never asserted on.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, load_average, log, new_report  # noqa: E402


def _specs(n: int, epochs: int, tag: str):
    from explrobust_core.jobs import parse_spec

    return [parse_spec({"kind": "train", "train": {
        "name": f"bench_{tag}_{i}", "dataset": "digits", "architecture": "convnet", "objective": "natural",
        "epochs": epochs, "batch_size": 32, "eval_images": 100, "eval_pgd_steps": 0, "device": "cpu"}})
        for i in range(n)]


def _run(executor, specs) -> float:
    start = time.perf_counter()
    ids = [executor.submit(spec).id for spec in specs]
    for job_id in ids:
        job = executor.wait(job_id, timeout=1800)
        if job.status != "done":
            raise RuntimeError(f"job {job.name} ended {job.status}: {job.error}")
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench_jobs_"))
    os.environ["EXPLROBUST_USER_ZOO"] = str(root / "zoo")
    os.environ["EXPLROBUST_RAY_CPUS"] = str(args.ray_cpus)
    os.environ.pop("RAY_ADDRESS", None)  # always the one-machine cluster: the figure is about this machine
    from explrobust_core.jobs import JobStore, LocalExecutor
    from explrobust_core.ray_cluster import stop_local_cluster
    from explrobust_core.ray_executor import RayExecutor

    report = new_report("jobs", {"jobs": args.jobs, "epochs": args.epochs, "ray_cpus": args.ray_cpus})
    os.environ["EXPLROBUST_RUNS"] = str(root / "local")  # the local workers read it from the environment
    log(f"local executor: {args.jobs} jobs, one at a time")
    local_s = _run(LocalExecutor(JobStore(root / "local"), max_concurrent=1), _specs(args.jobs, args.epochs, "local"))
    os.environ["EXPLROBUST_RUNS"] = str(root / "ray")
    store = JobStore(root / "ray")
    ray_executor = RayExecutor(store, max_concurrent=args.jobs)
    try:
        log("starting the Ray cluster")
        start = time.perf_counter()
        address = ray_executor.connect()
        cluster_s = time.perf_counter() - start
        log(f"Ray executor on {address}: {args.jobs} jobs")
        ray_s = _run(ray_executor, _specs(args.jobs, args.epochs, "ray"))
    finally:
        import ray

        ray.shutdown()
        stop_local_cluster(store)
    report["rows"] = [{"local_queue_s": round(local_s, 2), "ray_s": round(ray_s, 2),
                       "ratio_local_over_ray": round(local_s / ray_s, 2), "ray_cluster_start_s": round(cluster_s, 2),
                       "load_average_after": load_average()}]
    print(f"local queue: {local_s:.1f} s   ray: {ray_s:.1f} s   ratio local/ray: {local_s / ray_s:.2f} "
          f"(Ray cluster start, apart: {cluster_s:.1f} s)", file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--ray-cpus", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
