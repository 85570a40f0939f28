"""Benchmark: our Max-Sensitivity against Quantus' ``MaxSensitivity``, in one run on the same machine.

    .venv/bin/python bench/bench_metrics.py [--quick] [--threads 1] [--out FILE]

Both sides score the same explanation — our gradient×input (``explain.attribute``), handed to
Quantus as its ``explain_func`` — on the first N mnist5k test images with the zoo's natural model
(or a ConvNet trained here when the zoo is absent), explaining the true labels, with S samples of
uniform noise in the L∞ ball of ``--radius``, relative Frobenius norm (``‖e(x+δ) − e(x)‖ /
‖e(x)‖``), no clamping (Quantus does not clamp), 64 inputs per explanation batch:

* ours — ``metrics.max_sensitivity(explain_fn, x, radius, S, targets=y, clamp=None, batch_size=64)``;
* Quantus — ``quantus.MaxSensitivity(nr_samples=S, lower_bound=radius, abs=False, normalise=False,
  disable_warnings=True)(model, x, y, explain_func=..., batch_size=64)`` (numpy in and out).

A second Quantus side, ``quantus_own``, is Quantus as its users run it: the same metric with its own explainer,
``explain_func=quantus.explain`` with ``method="InputXGradient"`` (captum's gradient×input, numpy in and out),
against the same ours. That row (``max_sensitivity/own_explainers``) carries issue 14's aim of ≥ 2×: it compares
what a user of each library waits for. The first row, where both sides share our explainer, measures the
metrics' own overhead; its floor side shows that no Max-Sensitivity sharing that explainer can be 2× Quantus.

Agreement: an untimed extra call of each with the *same* noise (ours through ``perturbations=``,
Quantus through a ``perturb_func`` that adds the stored draws) must give the same per-image scores
(``max_rel_diff``). Quantus is an optional dev dependency (``requirements-dev.txt``): without it the
row reports our time alone and says the peer is not installed. ``speedup = quantus_median /
ours_median`` (>1: ours is faster). Interleaved repeats after one warm-up each; never asserted on.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NOT_INSTALLED = "peer not installed: `.venv/bin/pip install quantus` (optional, in requirements-dev.txt)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--n-images", type=int, default=None, help="mnist5k test images (default 64; 16 with --quick)")
    p.add_argument("--samples", type=int, default=None, help="noise samples per image (default 20; 3 with --quick)")
    p.add_argument("--radius", type=float, default=0.05, help="L∞ radius of the uniform noise (default 0.05)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per explanation batch, both sides (default 64)")
    args = p.parse_args(argv)
    return C.resolve_defaults(args, {"repeats": (2, 5), "n_images": (16, 64), "samples": (3, 20)}, p,
                              positive=("batch_size",))


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from explrobust_core.data import load_dataset
    from explrobust_core.explain import attribute
    from explrobust_core.metrics import max_sensitivity

    try:
        import quantus
    except ImportError:
        quantus = None

    model, model_info = C.zoo_or_trained_convnet("natural", args.seed)
    test = load_dataset("mnist5k", "test")
    x, y = test.batch(range(args.n_images))
    x, y = x.float().contiguous(), y.long()
    x_np, y_np = x.numpy(), y.numpy()

    def explain_fn(inputs, targets):
        return attribute(model, inputs, "gradient_x_input", target=targets)

    def ours(perturbations=None):
        return max_sensitivity(explain_fn, x, args.radius, args.samples, targets=y, clamp=None, seed=args.seed,
                               batch_size=args.batch_size, perturbations=perturbations).numpy()

    def explanations_only():  # the floor: the explanations any Max-Sensitivity needs, in the same 64-row calls
        rows, targets = x.repeat_interleave(args.samples, 0), y.repeat_interleave(args.samples, 0)
        rows = rows + torch.empty_like(rows).uniform_(-args.radius, args.radius)
        for inputs, labels in ((x, y), (rows, targets)):
            for i0 in range(0, inputs.shape[0], args.batch_size):
                explain_fn(inputs[i0:i0 + args.batch_size], labels[i0:i0 + args.batch_size])

    sides = {"ours": ours, "explanations": explanations_only}
    if quantus is not None:
        def quantus_explain(model, inputs, targets, **_):
            return explain_fn(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

        def make_quantus(perturb_func=None):
            kw = {"perturb_func": perturb_func} if perturb_func is not None else {}
            return quantus.MaxSensitivity(nr_samples=args.samples, lower_bound=args.radius, abs=False,
                                          normalise=False, disable_warnings=True, display_progressbar=False, **kw)

        def quantus_side(metric=None, own_explainer=False):
            metric = metric or make_quantus()
            explainer = ({"explain_func": quantus.explain, "explain_func_kwargs": {"method": "InputXGradient"}}
                         if own_explainer else {"explain_func": quantus_explain})
            return np.asarray(metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=None, device="cpu",
                                     batch_size=args.batch_size, **explainer))

        sides["quantus"] = quantus_side
        sides["quantus_own"] = lambda: quantus_side(own_explainer=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Quantus' parameterisation notes
        t = C.run_interleaved("max_sensitivity", sides, args.repeats, keep_first=False)
        agreement = agreement_own = None
        if quantus is not None:  # the same noise on both sides: the scores must match
            rng = np.random.default_rng(args.seed)
            pert = rng.uniform(-args.radius, args.radius, size=(args.n_images, args.samples, *x.shape[1:]))
            pert = pert.astype(np.float32)
            step = {"i": 0}

            def stored_noise(arr, indices=None, **_):
                s = step["i"] % args.samples
                step["i"] += 1
                return arr + pert[:arr.shape[0], s].reshape(arr.shape)

            if args.n_images <= args.batch_size:  # Quantus draws per batch; one batch keeps the draws aligned
                a = ours(torch.from_numpy(pert))
                b = quantus_side(make_quantus(stored_noise))
                agreement = C.max_rel_diff(a, b)
                step["i"] = 0
                agreement_own = C.max_rel_diff(a, quantus_side(make_quantus(stored_noise), own_explainer=True))

    s_ours, s_floor = t.stats("ours"), t.stats("explanations")
    floor = C.cost(s_ours, s_floor)
    s_q = t.stats("quantus") if quantus is not None else None
    s_q_own = t.stats("quantus_own") if quantus is not None else None
    report = C.new_report("metrics: max-sensitivity, explrobust_core.metrics vs quantus.MaxSensitivity", {
        "quick": args.quick, "repeats": args.repeats, "warmup_runs": 1, "order": "interleaved, alternating",
        "n_images": args.n_images, "samples": args.samples, "radius_linf": args.radius, "norm": "relative Frobenius",
        "clamp": None, "batch_size": args.batch_size,
        "explainer": "gradient_x_input (ours on both sides; quantus_own: quantus.explain, InputXGradient)",
        "model": model_info, "quantus": C.version("quantus"),
        "speedup": "quantus_median / ours_median (>1: ours is faster)",
    })
    row = {"name": "max_sensitivity", "ours": s_ours, "quantus": s_q, "explanations_only": s_floor,
           "ours_vs_explanations_only": floor["cost"], "max_rel_diff_same_noise": agreement}
    if s_q is not None:
        row.update(C.speedup(s_ours, s_q))
    report["rows"].append(row)
    what = (f"Max-Sensitivity, {args.n_images} images × {args.samples} samples, gradient×input, "
            f"L∞ radius {args.radius}")
    report["table"].append(C.table_entry(
        "max_sensitivity", what + ", our gradient×input on both sides", s_ours, peer=s_q,
        peer_label="Quantus MaxSensitivity",
        agreement="" if agreement is None else f"same noise: max rel. diff {agreement:.0e}",
        note=(f"the explanations alone (N + N·S maps in the same {args.batch_size}-row calls, both sides' floor): "
              f"{s_floor['median_s'] * 1e3:.0f} ms, so ours is {floor['cost']:.2f}× that floor and Quantus "
              + (f"{s_q['median_s'] / s_floor['median_s']:.2f}×" if s_q is not None else "not measured")),
        skipped=None if quantus is not None else NOT_INSTALLED))
    own = {"name": "max_sensitivity/own_explainers", "ours": s_ours, "quantus_own_explainer": s_q_own,
           "max_rel_diff_same_noise": agreement_own}
    if s_q_own is not None:
        own.update(C.speedup(s_ours, s_q_own))
    report["rows"].append(own)
    report["table"].append(C.table_entry(
        "max_sensitivity/own_explainers", what + ", each library's own gradient×input", s_ours, peer=s_q_own,
        peer_label="Quantus MaxSensitivity with quantus.explain (captum InputXGradient)",
        agreement="" if agreement_own is None else f"same noise: max rel. diff {agreement_own:.0e}",
        note="as a user of each library runs it; the row above shares our explainer between both sides",
        skipped=None if quantus is not None else NOT_INSTALLED))
    return report


if __name__ == "__main__":
    C.cli(parse_args, run)
