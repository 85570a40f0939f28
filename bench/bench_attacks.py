"""Benchmark: our batched attacks against a per-image loop and against captum, in one run on the same machine.

Run from the repository root::

    .venv/bin/python bench/bench_attacks.py                # full run (64 images, 10 attack steps, 3/5 repeats), JSON on stdout
    .venv/bin/python bench/bench_attacks.py --quick          # smoke test (16 images, 3 steps, 1/2 repeats): not a measurement
    .venv/bin/python bench/bench_attacks.py --out bench_attacks.json --threads 1

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
  difference, and the attacked counts. ``ifia_topk/gradient/2_threads`` repeats the gradient row with
  torch on 2 threads (both sides), to see whether batching gains more with parallel kernels.
* ``pgd`` — ``run_classification_attack(model, x, y, "pgd", eps=0.1, steps=20, step_size=0.0125)`` against
  ``captum.robust.PGD(model, loss_func=CrossEntropyLoss(reduction="none"), lower_bound=0, upper_bound=1)``
  (``fgsm.zero_thresh = 0``) ``.perturb(x, radius=0.1, step_size=0.0125, step_num=20, target=y,
  random_start=True)`` followed by one forward pass for its predictions (ours includes that too). captum's
  default loss, −log of the output, is meant for probabilities; on our logits it attacks the wrong
  objective (earlier runs: 86.7 % adversarial accuracy against our 77.7 %), so it is given ours. Both adversarial accuracies are reported: ours keeps per image the last iterate that
  misclassified, captum returns the final iterate, so ours should be no weaker (≤ captum's accuracy).
  ``like_for_like`` (untimed) runs ours with ``keep="final"`` and the same random start as captum's
  (same seed, same uniform draws) and compares the final iterates: accuracies, images whose iterates differ.
* ``attack_step_cost`` — one top-k IFIA step (gradient explainer) on the batch: the time of a whole attack
  with S steps divided by S (set-up and scoring are not subtracted, so this slightly over-states a step),
  against one plain forward + backward of the same model on the same batch, S of them timed together and
  divided by S: ``fwd_bwd_input`` (cross-entropy, gradient to the input only, as a PGD step) and
  ``fwd_bwd_params`` (``loss.backward()`` to the weights and the input, as a training step). An IFIA step
  does double backprop through the softplus view plus a forward and a gradient map to score the candidate,
  so a few × the floor is expected (double backprop alone is ~2–3×). A third side, ``attack_measure_topk``,
  runs the same attack with ``measure="topk_intersection"``: the difference to ``attack`` is the cost of
  scoring every candidate by Kendall's τ (O(P log P) per image and step), and ``double_backprop_view``
  times the attack's gradient step alone (gradient map on the softplus view, then the gradient of the
  top-k mass, no candidate scoring): the part of a step no scoring change can remove.
  ``fwd_bwd_input_fast_kernels`` is the floor again inside ``explrobust_core.kernels.FastKernels`` (the
  channels-last CPU max pooling the attack's own passes use): ``cost_vs_fast_floor`` divides by it, so the
  step is also read against a floor that has the same pooling speed-up (a plain model call does not).

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
* ``speedup = captum_median / ours_median`` (PGD): > 1 we are faster (1.25 → captum takes 1.25× our time).
* ``cost = step_median / fwd_bwd_median`` (step cost): how many plain forward+backward passes (to the
  input) one attack step costs (lower is better; the aim is the ~2–3× double-backprop floor);
  ``cost_vs_fwd_bwd_params`` against a training-style backward, and ``cost_measure_topk`` for the
  attack that scores by top-k intersection. ``--skip`` leaves rows out.

Look at the IQRs before reading much into ratios within ~10 % of their threshold. Timings are reported,
never asserted on.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time our batched explanation attack against a per-image loop of it, our PGD against "
                    "captum.robust.PGD, and one attack step against a plain forward+backward; interleaved runs "
                    "on the same machine, JSON report. speedup = peer/ours (>1: ours is faster); "
                    "step cost = attack step / forward+backward (how many floors one step costs).")
    C.add_common_args(p)
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
    p.add_argument("--skip", default="",
                   help="comma-separated rows to leave out: ifia_gradient, ifia_gradient_2threads, ifia_ig, pgd, "
                        "step_cost")
    args = p.parse_args(argv)
    defaults = {"repeats": (1, 3), "pgd_repeats": (2, 5), "n_images": (16, 64), "pgd_images": (64, 256),
                "steps": (3, 10), "ig_attack_steps": (2, 5)}
    return C.resolve_defaults(args, defaults, p, positive=("ig_steps", "pgd_steps", "epochs"))


def _finite_mean(v) -> float | None:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


# --------------------------------------------------------------------------- rows


def explanation_row(name: str, model, x: torch.Tensor, explainer: str, options: dict, steps: int,
                    args) -> tuple[dict, dict]:
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
    t = C.run_interleaved(name, {"batched": batched, "loop": loop}, args.repeats,
                          warmups={"batched": lambda: batched(x[:n_warm]), "loop": lambda: loop(x[:n_warm])})
    b, lp = t.first["batched"], t.first["loop"]
    both = b["attacked"] & lp["attacked"]
    mean_b, mean_l = _finite_mean(b["topk"][both]), _finite_mean(lp["topk"][both])
    per_image_diff = np.abs(b["topk"][both] - lp["topk"][both])
    s_b, s_l = t.stats("batched"), t.stats("loop")
    max_adv = float((b["adv"] - lp["adv"]).abs().max())
    row = {
        "name": name,
        "attack": {"name": "ifia", **attack},
        "n_images": int(x.shape[0]),
        "batched": s_b,
        "loop": {**s_l, "per_image_median_s": s_l["median_s"] / x.shape[0]},
        **C.speedup(s_b, s_l),
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
            "max_abs_diff_adversarial": max_adv,
            "summary_mean_batched": b["summary_mean"],
        },
    }
    method = "gradient" if explainer == "gradient" else f"{explainer.replace('_', ' ')} ({options.get('n_steps')} points)"
    agreement = ("identical adversarials" if max_adv == 0 else
                 f"{int((per_image_diff > 1e-9).sum())} of {int(both.sum())} images differ in top-k")
    entry = C.table_entry(name, f"top-k explanation attack (IFIA), {x.shape[0]} images, {steps} steps, {method}",
                          s_b, ours_label="batched", peer=s_l, peer_label="per-image loop", agreement=agreement)
    return row, entry


def pgd_row(model, x: torch.Tensor, y: torch.Tensor, args) -> tuple[dict, dict]:
    from captum.robust import PGD

    from explrobust_core.attacks.classification import run_classification_attack

    eps, step_size = 0.1, 0.0125
    # the same objective as ours: captum's default loss (−log of the output) is meant for probabilities
    captum_pgd = PGD(model, loss_func=torch.nn.CrossEntropyLoss(reduction="none"), lower_bound=0.0, upper_bound=1.0)
    captum_pgd.fgsm.zero_thresh = 0.0  # step on every non-zero gradient, as ours (captum's default: > 1e-6)

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

    t = C.run_interleaved("pgd", {"ours": ours, "captum": captum}, args.pgd_repeats)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    like = pgd_like_for_like(model, x, y, eps, step_size, args)
    s_o, s_c = t.stats("ours"), t.stats("captum")
    acc_o, acc_c = t.first["ours"], t.first["captum"]
    row = {
        "name": "pgd",
        "attack": {"eps": eps, "steps": args.pgd_steps, "step_size": step_size, "norm": "linf", "random_start": True,
                   "loss": "cross-entropy"},
        "captum_call": "captum.robust.PGD(model, loss_func=CrossEntropyLoss(reduction='none'), lower_bound=0., "
                       "upper_bound=1.) with fgsm.zero_thresh=0, .perturb(x, radius, step_size, step_num, target=y, "
                       "random_start=True) + one forward for the predictions",
        "n_images": int(x.shape[0]),
        "ours": s_o,
        "captum": s_c,
        **C.speedup(s_o, s_c),
        "accuracy": {"clean": clean, "adversarial_ours": acc_o, "adversarial_captum": acc_c,
                     "ours_no_weaker": acc_o <= acc_c},
        "like_for_like": like,
    }
    entry = C.table_entry("pgd", f"PGD-{args.pgd_steps} L∞ ε={eps}, {x.shape[0]} images, ConvNet", s_o,
                          peer=s_c, peer_label="captum.robust.PGD",
                          agreement=f"adv. acc. ours {acc_o:.1%} vs captum {acc_c:.1%} (clean {clean:.1%}); "
                                    f"like for like (final iterates, same start): ours {like['acc_ours_final']:.1%} "
                                    f"vs captum {like['acc_captum']:.1%}, {like['images_differing']} images differ")
    return row, entry


def pgd_like_for_like(model, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, args) -> dict:
    """Our PGD and captum's with the same random start and step rule, compared on their *final* iterates.

    captum draws its start with ``torch.rand_like`` from the global generator, ours with ``torch.rand`` from
    a generator with the same seed: the same uniform numbers, the same start up to the last bit of
    ``u·2ε − ε`` vs ``(2u − 1)·ε``. Both then take sign steps of the cross-entropy (captum's default loss,
    −log of the output, is meant for probabilities and would attack a logit model with the wrong
    objective — the cause of the 77.7 % vs 86.7 % gap of the plain row), clip to the ball and to [0, 1]. Ours normally
    keeps each image's last misclassified iterate; ``keep="final"`` returns the final one, as captum.
    """
    from captum.robust import PGD

    from explrobust_core.attacks.classification import pgd_perturb

    ours_final, ours_any = pgd_perturb(model, x, y, eps=eps, steps=args.pgd_steps, step_size=step_size,
                                       generator=torch.Generator().manual_seed(args.seed), keep="final")
    torch.manual_seed(args.seed)
    # captum's default loss is −log(output), meant for probabilities, not logits: give it the same
    # cross-entropy as ours, and let it step on every non-zero gradient (its zero_thresh is 1e-6)
    captum_pgd = PGD(model, loss_func=torch.nn.CrossEntropyLoss(reduction="none"), lower_bound=0.0, upper_bound=1.0)
    captum_pgd.fgsm.zero_thresh = 0.0
    theirs = captum_pgd.perturb(x, radius=eps, step_size=step_size, step_num=args.pgd_steps, target=y,
                                random_start=True)
    with torch.no_grad():
        pred_o, pred_c = model(ours_final).argmax(1), model(theirs).argmax(1)
    diff = (ours_final - theirs).flatten(1).abs().amax(1)
    return {"acc_ours_final": float((pred_o == y).float().mean()), "acc_captum": float((pred_c == y).float().mean()),
            "acc_ours_any_iterate": float((~ours_any).float().mean()),
            "max_abs_diff_final_iterates": float(diff.max()), "images_differing": int((diff > 1e-6).sum()),
            "predictions_differing": int((pred_o != pred_c).sum())}


def step_cost_row(model, x: torch.Tensor, y: torch.Tensor, args) -> tuple[dict, dict]:
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

    from explrobust_core.kernels import FastKernels

    def fwd_bwd_input_fast_kernels():
        with FastKernels():
            fwd_bwd_input()

    from explrobust_core.metrics import attribution_to_map
    from explrobust_core.models import softplus_view

    view = softplus_view(model, 10.0)
    top = torch.zeros(x.shape[0], x[0, 0].numel(), dtype=torch.bool)
    top[:, :100] = True

    def double_backprop_view():  # the attack's own gradient step alone: map on the view, then its gradient
        for _ in range(steps):
            x_req = x.detach().requires_grad_(True)
            score = view(x_req).gather(1, y[:, None]).sum()
            (g,) = torch.autograd.grad(score, x_req, create_graph=True)
            torch.autograd.grad((attribution_to_map(g).flatten(1) * top).sum(), x_req)

    def fwd_bwd_params():
        for _ in range(steps):
            model.zero_grad(set_to_none=True)
            x_req = x.detach().requires_grad_(True)
            F.cross_entropy(model(x_req), y).backward()
        model.zero_grad(set_to_none=True)

    sides = {"attack": attack_run, "attack_measure_topk": attack_run_topk_measure, "fwd_bwd_input": fwd_bwd_input,
             "fwd_bwd_input_fast_kernels": fwd_bwd_input_fast_kernels, "fwd_bwd_params": fwd_bwd_params,
             "double_backprop_view": double_backprop_view}
    t = C.run_interleaved("attack_step_cost", sides, args.repeats)
    per_step = {label: t.stats(label, 1 / steps) for label in sides}
    floor = per_step["fwd_bwd_input"]
    row = {
        "name": "attack_step_cost",
        "n_images": int(x.shape[0]),
        "steps_per_run": steps,
        "attack": {"name": "ifia", **attack},
        "note": "per-step times = run time / steps; the attack's set-up and scoring are not subtracted",
        "attack_step": per_step["attack"],
        "attack_step_measure_topk": per_step["attack_measure_topk"],
        "fwd_bwd_input": floor,
        "fwd_bwd_params": per_step["fwd_bwd_params"],
        **C.cost(per_step["attack"], floor),
        "cost_vs_fwd_bwd_params": per_step["attack"]["median_s"] / per_step["fwd_bwd_params"]["median_s"],
        "cost_measure_topk": per_step["attack_measure_topk"]["median_s"] / floor["median_s"],
        "double_backprop_view": per_step["double_backprop_view"],
        "cost_double_backprop_view": per_step["double_backprop_view"]["median_s"] / floor["median_s"],
        "fwd_bwd_input_fast_kernels": per_step["fwd_bwd_input_fast_kernels"],
        "cost_vs_fast_floor": per_step["attack"]["median_s"] / per_step["fwd_bwd_input_fast_kernels"]["median_s"],
        "cost_measure_topk_vs_fast_floor": (per_step["attack_measure_topk"]["median_s"]
                                            / per_step["fwd_bwd_input_fast_kernels"]["median_s"]),
    }
    entry = C.table_entry(
        "attack_step_cost", f"one top-k attack step (gradient, Kendall τ scoring), {x.shape[0]} images",
        per_step["attack"], ours_label="attack step", peer=floor, peer_label="one forward+backward (to the input)",
        kind="cost", note=f"{row['cost_measure_topk']:.1f}× when scoring by top-k intersection instead of Kendall τ; "
                          f"the double backprop through the softplus view alone (the attack's gradient step, "
                          f"without scoring the candidate) is {row['cost_double_backprop_view']:.1f}×; against a "
                          f"floor with the same fast CPU pooling: {row['cost_vs_fast_floor']:.1f}× "
                          f"({row['cost_measure_topk_vs_fast_floor']:.1f}× scoring by top-k)")
    return row, entry


def with_threads(n: int, make):
    """Run ``make()`` with torch on ``n`` threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        row, entry = make()
    finally:
        torch.set_num_threads(before)
    row["torch_threads"] = n
    entry["what"] += f", {n} torch threads"
    return row, entry


def run(args: argparse.Namespace) -> dict:
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
    from explrobust_core.data import load_dataset

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    test = load_dataset("mnist5k", "test")
    need = max(args.n_images, args.pgd_images)
    if need > len(test):
        raise SystemExit(f"{need} images asked for but mnist5k test has {len(test)}")

    report = C.new_report("attacks: batched IFIA vs per-image loop, our PGD vs captum.robust.PGD, attack step cost", {
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
        "skipped_rows": sorted(skip),
        "speedup": "loop_median / batched_median and captum_median / ours_median (>1: ours is faster; "
                   "aim for batching >= 10)",
        "cost": "attack step median / forward+backward (to the input) median (aim: within the ~2-3x "
                "double-backprop floor)",
    })
    model, model_info = C.train_convnet(args.epochs, args.seed)
    report["model"] = model_info
    x_e, y_e = test.batch(range(args.n_images))
    x_p, y_p = test.batch(range(args.pgd_images))
    x_e, y_e, x_p, y_p = x_e.float().contiguous(), y_e.long(), x_p.float().contiguous(), y_p.long()

    plan = [
        ("ifia_gradient", lambda: explanation_row("ifia_topk/gradient", model, x_e, "gradient", {}, args.steps, args)),
        ("ifia_gradient_2threads", lambda: with_threads(2, lambda: explanation_row(
            "ifia_topk/gradient/2_threads", model, x_e, "gradient", {}, args.steps, args))),
        ("ifia_ig", lambda: explanation_row("ifia_topk/integrated_gradients", model, x_e, "integrated_gradients",
                                            {"n_steps": args.ig_steps}, args.ig_attack_steps, args)),
        ("pgd", lambda: pgd_row(model, x_p, y_p, args)),
        ("step_cost", lambda: step_cost_row(model, x_e, y_e, args)),
    ]
    for key, make in plan:
        if key in skip:
            continue
        row, entry = make()
        report["rows"].append(row)
        report["table"].append(entry)
    return report


if __name__ == "__main__":
    C.cli(parse_args, run)
