"""Benchmark: our explanation methods against captum, in one run on the same machine.

Run from the repository root::

    .venv/bin/python bench/bench_explain.py                 # full run (7 repeats, 64 images), JSON on stdout
    .venv/bin/python bench/bench_explain.py --quick         # smoke test (2 repeats, 8 images)
    .venv/bin/python bench/bench_explain.py --out bench.json --threads 2

Rows: gradient × input vs captum ``InputXGradient`` and integrated gradients (Gauss–Legendre,
50 steps, the same ``internal_batch_size`` — both libraries read it as "inputs per forward pass")
vs captum ``IntegratedGradients`` on a ConvNet, and IG on a narrow ResNet-18 (base width 16); all
on the first N real ``mnist5k`` test images as one batch, explaining their true labels. Models are
untrained (fixed seed) and in eval mode.

Each row runs one untimed warm-up per side (its results give ``max_rel_diff`` =
max|ours − captum| / max|captum|, a sanity check that both computed the same thing; expect ~1e-6
in float32), then ``--repeats`` timed runs interleaved with alternating order (``_common``). Fast rows
(gradient × input takes milliseconds) repeat the call ``calls_per_sample`` times inside each timed
sample so a sample lasts at least ``--min-sample-time``; the same count is used for both sides and
all times are reported per call.

Reading the ratios: ``speedup = captum_median / ours_median``; above 1 we are faster (1.25 → captum
takes 1.25× our time), below 1 we are slower. ``speedup_min`` compares the fastest runs, less
sensitive to noise on a busy machine. Look at the IQRs before reading much into ratios within ~10 %
of 1. Timings are reported, never asserted on. On a busy machine torch's default threads are
oversubscribed and every time balloons; ``--threads 1`` then gives far steadier numbers.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time our gradient×input and integrated gradients against captum's (same machine, "
                    "interleaved runs) and print a JSON report. speedup = captum_median / ours_median; >1 means "
                    "we are faster.")
    C.add_common_args(p)
    p.add_argument("--n-images", type=int, default=None, help="mnist5k test images in the batch (default 64; 8 with --quick)")
    p.add_argument("--n-steps", type=int, default=50, help="IG steps (default 50)")
    p.add_argument("--rule", default="gausslegendre",
                   choices=["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"],
                   help="IG quadrature rule, captum's names (default gausslegendre)")
    p.add_argument("--internal-batch-size", type=int, default=512,
                   help="IG inputs per forward pass, for both libraries (default 512)")
    p.add_argument("--resnet-width", type=int, default=16, help="base_width of the ResNet-18 (default 16)")
    p.add_argument("--min-sample-time", type=float, default=0.2,
                   help="repeat fast calls inside a timed sample until it lasts this many seconds (default 0.2)")
    args = p.parse_args(argv)
    if args.min_sample_time < 0:
        p.error("--min-sample-time must be non-negative")
    return C.resolve_defaults(args, {"repeats": (2, 7), "n_images": (8, 64)}, p,
                              positive=("n_steps", "internal_batch_size", "resnet_width"))


def run(args: argparse.Namespace) -> dict:
    import torch
    from captum.attr import InputXGradient, IntegratedGradients

    from explrobust_core.data import load_dataset
    from explrobust_core.explain import attribute
    from explrobust_core.models import build_model, count_parameters

    ds = load_dataset("mnist5k", "test")
    if args.n_images > len(ds):
        raise SystemExit(f"--n-images {args.n_images} exceeds the {len(ds)} mnist5k test images")
    x = ds.images[: args.n_images].float().contiguous()
    y = ds.labels[: args.n_images].long().contiguous()
    info = ds.info

    def make(arch: str, config: dict) -> torch.nn.Module:
        torch.manual_seed(args.seed)
        model = build_model(arch, input_shape=info.input_shape, num_classes=info.num_classes, mean=info.mean,
                            std=info.std, config=config)
        return model.eval()

    resnet_cfg = {"base_width": args.resnet_width}
    models = {"convnet": ("convnet", {}, make("convnet", {})),
              "resnet18": ("resnet18", resnet_cfg, make("resnet18", resnet_cfg))}
    ig_opts = {"n_steps": args.n_steps, "rule": args.rule, "internal_batch_size": args.internal_batch_size}

    def gxi_pair(model):
        return (lambda: attribute(model, x, "gradient_x_input", target=y),
                lambda: InputXGradient(model).attribute(x, target=y))

    def ig_pair(model):
        return (lambda: attribute(model, x, "integrated_gradients", target=y, **ig_opts),
                lambda: IntegratedGradients(model).attribute(x, target=y, n_steps=args.n_steps, method=args.rule,
                                                             internal_batch_size=args.internal_batch_size))

    plan = [
        ("gradient_x_input/convnet", "convnet", "gradient_x_input", "InputXGradient", {}, gxi_pair,
         f"gradient×input, {args.n_images} mnist5k images, ConvNet"),
        ("integrated_gradients/convnet", "convnet", "integrated_gradients", "IntegratedGradients", ig_opts, ig_pair,
         f"integrated gradients, {args.n_steps} {args.rule} steps, {args.n_images} images, ConvNet"),
        ("integrated_gradients/resnet18", "resnet18", "integrated_gradients", "IntegratedGradients", ig_opts, ig_pair,
         f"integrated gradients, same, ResNet-18 (width {args.resnet_width})"),
    ]

    report = C.new_report("explain: explrobust_core.explain.attribute vs captum.attr", {
        "quick": args.quick,
        "repeats": args.repeats,
        "warmup_runs": 1,
        "min_sample_time_s": args.min_sample_time,
        "order": "interleaved, alternating: ours, captum | captum, ours | ...",
        "dataset": "mnist5k",
        "split": "test",
        "n_images": args.n_images,
        "input_shape": list(x.shape),
        "dtype": str(x.dtype).replace("torch.", ""),
        "target": "true labels",
        "seed": args.seed,
        "ig": ig_opts,
        "speedup": "captum_median / ours_median (>1: we are faster)",
        "max_rel_diff": "max|ours - captum| / max|captum| over the warm-up results",
    })

    for name, key, method, captum_cls, options, pair, what in plan:
        arch, config, model = models[key]
        ours, theirs = pair(model)
        with warnings.catch_warnings():  # captum: "Input Tensor 0 did not already require gradients"
            warnings.filterwarnings("ignore", message=".*did not already require gradients.*")
            number = C.calls_per_sample([ours, theirs], args.min_sample_time)
            t = C.run_interleaved(name, {"ours": ours, "captum": theirs}, args.repeats, number=number,
                                  keep_first=False)
        rel = C.max_rel_diff(t.warm["ours"], t.warm["captum"])
        s_ours, s_captum = t.stats("ours"), t.stats("captum")
        report["rows"].append({
            "name": name, "method": method, "captum_class": captum_cls, "options": options,
            "model": {"arch": arch, "config": config, "parameters": count_parameters(model), "mode": "eval"},
            "calls_per_sample": number, "ours": s_ours, "captum": s_captum, **C.speedup(s_ours, s_captum),
            "max_rel_diff": rel,
        })
        report["table"].append(C.table_entry(name, what, s_ours, peer=s_captum, peer_label=f"captum {captum_cls}",
                                             agreement="identical" if rel == 0 else f"max rel. diff {rel:.0e}"))
    return report


if __name__ == "__main__":
    C.cli(parse_args, run)
