"""Profile one explanation attack (IFIA top-k, gradient explainer) with cProfile and torch.profiler.

    .venv/bin/python bench/profile_attack.py [--n-images 64] [--steps 10] [--measure kendall_tau]
                                             [--explainer gradient] [--threads 1] [--top 25] [--clock cpu]

Not a benchmark (nothing is compared or recorded): it prints where the time of one attack goes — the
Python functions by own time (cProfile) and the torch operators by self CPU time (torch.profiler) —
plus the time of a plain forward+backward of the same batch for scale. Used to find and check the
hot spots of ``explrobust_core.attacks.explanation`` (see bench/REPORT.md).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--measure", default="kendall_tau")
    p.add_argument("--explainer", default="gradient")
    p.add_argument("--ig-steps", type=int, default=8, help="n_steps when --explainer integrated_gradients")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1, help="training epochs of the profiled ConvNet")
    p.add_argument("--top", type=int, default=25, help="rows printed per table")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time or this process's CPU time")
    args = p.parse_args(argv)
    C.limit_threads(args.threads)

    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from explrobust_core.attacks.explanation import run_explanation_attack
    from explrobust_core.data import load_dataset

    model, _ = C.train_convnet(args.epochs, 0)
    x, y = load_dataset("mnist5k", "test").batch(range(args.n_images))
    x, y = x.float().contiguous(), y.long()
    options = {"n_steps": args.ig_steps} if args.explainer == "integrated_gradients" else {}
    attack = dict(objective="topk", explainer=args.explainer, explainer_options=options, eps=0.1,
                  steps=args.steps, step_size=0.01, k=100, eval_k=100, measure=args.measure)

    def run():
        return run_explanation_attack(model, x, "ifia", **attack)

    def fwd_bwd():
        x_req = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x_req), y), x_req)

    from explrobust_core.kernels import FastKernels

    def fwd_bwd_fast():  # the floor with the attack's own CPU pooling kernel
        with FastKernels():
            fwd_bwd()

    run(), fwd_bwd(), fwd_bwd_fast()  # warm-up
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def per_step(fn, calls):
        started = clock()
        for _ in range(calls):
            fn()
        return (clock() - started) / args.steps

    floor, fast_floor, step = per_step(fwd_bwd, args.steps), per_step(fwd_bwd_fast, args.steps), per_step(run, 1)
    print(f"attack: {step * 1e3:.1f} ms/step (set-up included, {args.clock} clock), forward+backward: "
          f"{floor * 1e3:.1f} ms -> {step / floor:.2f}x the floor; {step / fast_floor:.2f}x a floor with the fast "
          f"CPU pooling ({fast_floor * 1e3:.1f} ms) ({args.n_images} images, {args.steps} steps, {args.measure})")

    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())

    with profile(activities=[ProfilerActivity.CPU]) as tp:
        run()
    print(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
