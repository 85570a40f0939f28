"""Benchmark: our batched attacks against a per-image loop and against captum, in one run on the same machine.

Run from the repository root::

    python bench/bench_attacks.py                  # full run (64 images, 10 attack steps, 3/5 repeats), JSON on stdout
    python bench/bench_attacks.py --quick          # smoke test (16 images, 3 steps, 1/2 repeats): not a measurement
    python bench/bench_attacks.py --out bench_attacks.json --threads 1

On a machine shared with other busy processes pass ``--threads 1``: with torch's default (one thread per
core) OpenMP threads that compete with other processes for the cores make every time several × slower
and far noisier (measured here: a forward+backward went from ~50 ms to 70–350 ms).

The model is a ConvNet trained here for ``--epochs`` (default 2) of Adam (lr 3e-3, batch 128, seed 0) on
the ``mnist5k`` training split, then put in eval mode, so that the attacks act on a real classifier
(its clean accuracy on the PGD images is in the report). All images are the first N ``mnist5k`` test images.

Rows
----

* ``ifia_topk/gradient`` and ``ifia_topk/integrated_gradients`` — the untargeted explanation attack
  (``run_explanation_attack(model, x, "ifia", objective="topk", eps=0.1, step_size=0.01, k=100,
  eval_k=100, measure="kendall_tau" (the default), steps=S)``; S = ``--steps``, and ``--ig-attack-steps``
  for the IG row with ``n_steps=--ig-steps``, whose steps cost ~8× more), *batched*: one call on all N
  images, against *loop*: the same function called once per image with a batch of 1, which is how the
  reference code (RAR / ART) runs it. The loop therefore also pays the per-call fixed costs (softplus
  view, original maps, summary bootstrap) N times — that is part of what batching saves. ``agreement``
  checks both computed the same attack (it is per-image independent, so only float round-off in batched
  vs single-image kernels can separate them — a near-zero gradient component could flip its sign step —
  so expect zero or tiny differences; measured: exactly 0): mean top-k
  intersection of each side over the images both attacked, its absolute difference, the largest per-image
  difference, and the attacked counts.
* ``pgd`` — ``run_classification_attack(model, x, y, "pgd", eps=0.1, steps=20, step_size=0.0125)`` against
  ``captum.robust.PGD(model, lower_bound=0, upper_bound=1).perturb(x, radius=0.1, step_size=0.0125,
  step_num=20, target=y, random_start=True)`` followed by one forward pass for its predictions (ours
  includes that too). Both adversarial accuracies are reported: ours keeps per image the last iterate that
  misclassified, captum returns the final iterate, so ours should be no weaker (≤ captum's accuracy).
* ``attack_step_cost`` — one top-k IFIA step (gradient explainer) on the batch: the time of a whole attack
  with S steps divided by S (set-up and scoring are not subtracted, so this slightly over-states a step),
  against one plain forward + backward of the same model on the same batch, S of them timed together and
  divided by S: ``fwd_bwd_input`` (cross-entropy, gradient to the input only, as a PGD step) and
  ``fwd_bwd_params`` (``loss.backward()`` to the weights and the input, as a training step). An IFIA step
  does double backprop through the softplus view plus a forward and a gradient map to score the candidate,
  so a few × the floor is expected (double backprop alone is ~2–3×). A third side, ``attack_measure_topk``,
  runs the same attack with ``measure="topk_intersection"``: the difference to ``attack`` is the cost of
  scoring every candidate by Kendall's τ (an O(pixels²) pair count per image and step).

Timing: every row runs one untimed warm-up per side (for the explanation rows on the first few images
only, to keep the run short; their agreement numbers come from the first timed run, as the attacks are
deterministic), then ``--repeats`` (``--pgd-repeats`` for PGD) timed runs interleaved with alternating order
(a, b | b, a | a, b …) so machine noise and order effects hit both sides alike. Per side: median, min, max
and IQR of the wall times in seconds. The load average at start and end is recorded: on a shared machine
read the numbers with it in mind.

Reading the ratios:

* ``speedup = loop_median / batched_median`` (explanation rows): how many times faster one batched call is
  than the per-image loop; > 1 means batching helps, the project aims at ≥ 10. ``speedup_min`` compares
  the fastest runs, less sensitive to a busy machine.
* ``ratio = ours_median / captum_median`` (PGD): < 1 we are faster (0.8 → we take 80 % of captum's time).
* ``ratio = step_median / fwd_bwd_median`` (step cost): how many plain forward+backward passes (to the
  input) one attack step costs; ``ratio_vs_fwd_bwd_params`` against a training-style backward, and
  ``ratio_measure_topk`` for the attack that scores by top-k intersection.

Look at the IQRs before reading much into ratios within ~10 % of their threshold. Timings are reported,
never asserted on.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # works without the editable install too
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time our batched explanation attack against a per-image loop of it, our PGD against "
                    "captum.robust.PGD, and one attack step against a plain forward+backward; interleaved runs "
                    "on the same machine, JSON report. speedup = loop/batched (>1: batching helps); "
                    "PGD ratio = ours/captum (<1: we are faster).")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per side, explanation-attack and step-cost rows (default 3; 1 with --quick)")
    p.add_argument("--pgd-repeats", type=int, default=None,
                   help="timed runs per side for PGD (default 5; 2 with --quick)")
    p.add_argument("--n-images", type=int, default=None,
                   help="images for the explanation attacks (default 64; 16 with --quick)")
    p.add_argument("--pgd-images", type=int, default=None, help="images for PGD (default 256; 64 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="IFIA steps (default 10; 3 with --quick)")
    p.add_argument("--ig-attack-steps", type=int, default=None,
                   help="IFIA steps of the integrated-gradients row, 8× the work per step (default 5; 2 with --quick)")
    p.add_argument("--ig-steps", type=int, default=8, help="integrated-gradients steps inside the attack (default 8)")
    p.add_argument("--pgd-steps", type=int, default=20, help="PGD steps (default 20)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the ConvNet (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, batch order and PGD starts (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true",
                   help="few repeats, images and steps: a smoke test, not a measurement")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report to this file")
    args = p.parse_args(argv)
    defaults = {"repeats": (1, 3), "pgd_repeats": (2, 5), "n_images": (16, 64), "pgd_images": (64, 256),
                "steps": (3, 10), "ig_attack_steps": (2, 5)}
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("repeats", "pgd_repeats", "n_images", "pgd_images", "steps", "ig_attack_steps", "ig_steps",
                 "pgd_steps", "epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# --------------------------------------------------------------------------- report header


def _git_state() -> dict | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return None


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def header() -> dict:
    import captum

    from explrobust_core.io import library_versions

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    versions = library_versions()
    versions.setdefault("captum", getattr(captum, "__version__", None))
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": usable,
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "device": "cpu",
            "python": platform.python_version(),
            "load_average_at_start": _load_average(),
        },
        "versions": versions,
        "git": _git_state(),
    }


# --------------------------------------------------------------------------- timing


def _stats(times: list[float]) -> dict:
    t = np.asarray(times)
    q1, q3 = np.percentile(t, [25, 75])
    return {"median_s": float(np.median(t)), "min_s": float(t.min()), "max_s": float(t.max()),
            "iqr_s": float(q3 - q1), "times_s": [round(float(v), 6) for v in t]}


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_interleaved(name: str, sides: dict[str, Callable[[], Any]], warmups: dict[str, Callable[[], Any]],
                    repeats: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Warm up each side once (untimed), then ``repeats`` timed rounds with alternating order.

    Returns the wall times per side and each side's output of its first timed run.
    """
    labels = list(sides)
    print(f"[bench] {name}: warm-up", file=sys.stderr, flush=True)
    for label in labels:
        warmups[label]()
    times: dict[str, list[float]] = {label: [] for label in labels}
    first: dict[str, Any] = {}
    for i in range(repeats):
        order = labels if i % 2 == 0 else labels[::-1]
        for label in order:
            t, out = _timed(sides[label])
            times[label].append(t)
            if label not in first:
                first[label] = out
            del out
        msg = " ".join(f"{label} {times[label][-1]:.3f}s" for label in labels)
        print(f"[bench] {name}: {i + 1}/{repeats} {msg}", file=sys.stderr, flush=True)
    return times, first


def _finite_mean(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


# --------------------------------------------------------------------------- the model


def train_convnet(args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    from explrobust_core.data import load_dataset
    from explrobust_core.models import build_model, count_parameters

    train = load_dataset("mnist5k", "train")
    info = train.info
    torch.manual_seed(args.seed)
    model = build_model("convnet", input_shape=info.input_shape, num_classes=info.num_classes, mean=info.mean,
                        std=info.std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(args.seed)
    images, labels = train.images.float(), train.labels.long()
    print(f"[bench] training convnet: {args.epochs} epoch(s) on {len(train)} images", file=sys.stderr, flush=True)
    started = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        perm = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), 128):
            idx = perm[i:i + 128]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(images[idx]), labels[idx]).backward()
            opt.step()
    seconds = time.perf_counter() - started
    model.eval()
    return model, {"arch": "convnet", "input_shape": list(info.input_shape), "num_classes": info.num_classes,
                   "mean": list(info.mean), "std": list(info.std), "parameters": count_parameters(model),
                   "mode": "eval",
                   "training": {"dataset": "mnist5k/train", "images": len(train), "epochs": args.epochs,
                                "optimizer": "Adam", "lr": 3e-3, "batch": 128, "seed": args.seed,
                                "seconds": round(seconds, 3)}}


# --------------------------------------------------------------------------- rows


def explanation_row(name: str, model, x: torch.Tensor, explainer: str, options: dict, steps: int, args) -> dict:
    from explrobust_core.attacks.explanation import run_explanation_attack

    attack = {"objective": "topk", "explainer": explainer, "explainer_options": options, "eps": 0.1,
              "steps": steps, "step_size": 0.01, "k": 100, "eval_k": 100, "measure": "kendall_tau"}

    def batched(imgs=x):
        r = run_explanation_attack(model, imgs, "ifia", **attack)
        return {"topk": r.per_image["topk_intersection"].detach().double().cpu().numpy(),
                "attacked": r.per_image["attacked"].cpu().numpy(), "adv": r.tensors["adversarial"].detach(),
                "summary_mean": r.summary["topk_intersection"]["mean"]}

    def loop(imgs=x):
        rs = [run_explanation_attack(model, imgs[i:i + 1], "ifia", **attack) for i in range(imgs.shape[0])]
        return {"topk": np.concatenate([r.per_image["topk_intersection"].detach().double().cpu().numpy() for r in rs]),
                "attacked": np.concatenate([r.per_image["attacked"].cpu().numpy() for r in rs]),
                "adv": torch.cat([r.tensors["adversarial"].detach() for r in rs])}

    n_warm = min(4, x.shape[0])
    times, first = run_interleaved(name, {"batched": batched, "loop": loop},
                                   {"batched": lambda: batched(x[:n_warm]), "loop": lambda: loop(x[:n_warm])},
                                   args.repeats)
    b, lp = first["batched"], first["loop"]
    both = b["attacked"] & lp["attacked"]
    mean_b, mean_l = _finite_mean(b["topk"][both]), _finite_mean(lp["topk"][both])
    per_image_diff = np.abs(b["topk"][both] - lp["topk"][both])
    s_b, s_l = _stats(times["batched"]), _stats(times["loop"])
    return {
        "name": name,
        "attack": {"name": "ifia", **attack},
        "n_images": int(x.shape[0]),
        "batched": s_b,
        "loop": {**s_l, "per_image_median_s": s_l["median_s"] / x.shape[0]},
        "speedup": s_l["median_s"] / s_b["median_s"],
        "speedup_min": s_l["min_s"] / s_b["min_s"],
        "agreement": {
            "n_attacked_batched": int(b["attacked"].sum()),
            "n_attacked_loop": int(lp["attacked"].sum()),
            "n_attacked_both": int(both.sum()),
            "mean_topk_intersection_batched": mean_b,
            "mean_topk_intersection_loop": mean_l,
            "mean_topk_intersection_abs_diff": (abs(mean_b - mean_l) if mean_b is not None and mean_l is not None
                                                else None),
            "max_per_image_topk_abs_diff": float(per_image_diff.max()) if per_image_diff.size else None,
            "images_with_different_topk": int((per_image_diff > 1e-9).sum()),
            "max_abs_diff_adversarial": float((b["adv"] - lp["adv"]).abs().max()),
            "summary_mean_batched": b["summary_mean"],
        },
    }


def pgd_row(model, x: torch.Tensor, y: torch.Tensor, args) -> dict:
    from captum.robust import PGD

    from explrobust_core.attacks.classification import run_classification_attack

    eps, step_size = 0.1, 0.0125
    captum_pgd = PGD(model, lower_bound=0.0, upper_bound=1.0)

    def ours():
        r = run_classification_attack(model, x, y, "pgd", eps=eps, steps=args.pgd_steps, step_size=step_size,
                                      seed=args.seed)
        return r.summary["adversarial_accuracy"]

    def captum():
        torch.manual_seed(args.seed)  # captum's random start draws from the global generator
        x_adv = captum_pgd.perturb(x, radius=eps, step_size=step_size, step_num=args.pgd_steps, target=y,
                                   random_start=True)
        with torch.no_grad():
            return float((model(x_adv).argmax(1) == y).float().mean())

    times, first = run_interleaved("pgd", {"ours": ours, "captum": captum}, {"ours": ours, "captum": captum},
                                   args.pgd_repeats)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    s_o, s_c = _stats(times["ours"]), _stats(times["captum"])
    return {
        "name": "pgd",
        "attack": {"eps": eps, "steps": args.pgd_steps, "step_size": step_size, "norm": "linf", "random_start": True,
                   "loss": "cross-entropy"},
        "captum_call": "captum.robust.PGD(model, lower_bound=0., upper_bound=1.).perturb(x, radius, step_size, "
                       "step_num, target=y, random_start=True) + one forward for the predictions",
        "n_images": int(x.shape[0]),
        "ours": s_o,
        "captum": s_c,
        "ratio": s_o["median_s"] / s_c["median_s"],
        "ratio_min": s_o["min_s"] / s_c["min_s"],
        "accuracy": {"clean": clean, "adversarial_ours": first["ours"], "adversarial_captum": first["captum"],
                     "ours_no_weaker": first["ours"] <= first["captum"]},
    }


def step_cost_row(model, x: torch.Tensor, y: torch.Tensor, args) -> dict:
    from explrobust_core.attacks.explanation import run_explanation_attack

    steps = args.steps
    attack = {"objective": "topk", "explainer": "gradient", "eps": 0.1, "steps": steps, "step_size": 0.01,
              "k": 100, "eval_k": 100, "measure": "kendall_tau"}

    def attack_run():
        run_explanation_attack(model, x, "ifia", **attack)

    def attack_run_topk_measure():  # the same attack, scoring candidates by top-k instead of Kendall's tau
        run_explanation_attack(model, x, "ifia", **{**attack, "measure": "topk_intersection"})

    def fwd_bwd_input():
        for _ in range(steps):
            x_req = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(x_req), y), x_req)

    def fwd_bwd_params():
        for _ in range(steps):
            model.zero_grad(set_to_none=True)
            x_req = x.detach().requires_grad_(True)
            F.cross_entropy(model(x_req), y).backward()
        model.zero_grad(set_to_none=True)

    sides = {"attack": attack_run, "attack_measure_topk": attack_run_topk_measure, "fwd_bwd_input": fwd_bwd_input,
             "fwd_bwd_params": fwd_bwd_params}
    times, _ = run_interleaved("attack_step_cost", sides, sides, args.repeats)
    per_step = {label: _stats([t / steps for t in ts]) for label, ts in times.items()}
    return {
        "name": "attack_step_cost",
        "n_images": int(x.shape[0]),
        "steps_per_run": steps,
        "attack": {"name": "ifia", **attack},
        "note": "per-step times = run time / steps; the attack's set-up and scoring are not subtracted",
        "attack_step": per_step["attack"],
        "attack_step_measure_topk": per_step["attack_measure_topk"],
        "fwd_bwd_input": per_step["fwd_bwd_input"],
        "fwd_bwd_params": per_step["fwd_bwd_params"],
        "ratio": per_step["attack"]["median_s"] / per_step["fwd_bwd_input"]["median_s"],
        "ratio_vs_fwd_bwd_params": per_step["attack"]["median_s"] / per_step["fwd_bwd_params"]["median_s"],
        "ratio_measure_topk": per_step["attack_measure_topk"]["median_s"] / per_step["fwd_bwd_input"]["median_s"],
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")

    from explrobust_core.data import load_dataset

    test = load_dataset("mnist5k", "test")
    need = max(args.n_images, args.pgd_images)
    if need > len(test):
        raise SystemExit(f"{need} images asked for but mnist5k test has {len(test)}")

    report = {"benchmark": "attacks: batched IFIA vs per-image loop, our PGD vs captum.robust.PGD, attack step cost",
              **header()}
    model, model_info = train_convnet(args)
    x_e, y_e = test.batch(range(args.n_images))
    x_p, y_p = test.batch(range(args.pgd_images))
    x_e, y_e, x_p, y_p = x_e.float().contiguous(), y_e.long(), x_p.float().contiguous(), y_p.long()

    report["config"] = {
        "quick": args.quick,
        "repeats": args.repeats,
        "pgd_repeats": args.pgd_repeats,
        "warmup_runs": 1,
        "warmup_explanation_rows": "both sides on the first min(4, N) images; agreement from the first timed run",
        "order": "interleaved, alternating: a, b | b, a | a, b | ...",
        "dataset": "mnist5k",
        "split": "test",
        "n_images_explanation": args.n_images,
        "n_images_pgd": args.pgd_images,
        "ifia_steps": args.steps,
        "ifia_steps_integrated_gradients_row": args.ig_attack_steps,
        "ig_steps": args.ig_steps,
        "pgd_steps": args.pgd_steps,
        "seed": args.seed,
        "threads_requested": args.threads,
        "speedup": "loop_median / batched_median (>1: the batched call is faster; aim >= 10)",
        "pgd_ratio": "ours_median / captum_median (<1: we are faster)",
        "step_cost_ratio": "attack step median / forward+backward (to the input) median",
    }
    report["model"] = model_info
    report["rows"] = [
        explanation_row("ifia_topk/gradient", model, x_e, "gradient", {}, args.steps, args),
        explanation_row("ifia_topk/integrated_gradients", model, x_e, "integrated_gradients",
                        {"n_steps": args.ig_steps}, args.ig_attack_steps, args),
        pgd_row(model, x_p, y_p, args),
        step_cost_row(model, x_e, y_e, args),
    ]
    report["load_average_at_end"] = _load_average()
    report["summary"] = {
        row["name"]: {k: row[k] for k in ("speedup", "ratio") if k in row} for row in report["rows"]
    }

    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
