"""Pairs and landscapes: `sample`, `landscape`, `curvature` and `compare-ways`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._args import (add_checkpoint_arguments, add_config_arguments, bounded_int, check_output, check_outputs,
                    config_values, fmt_json, index_list, int_list, load_checkpoint_and_data, write_result)

COMMANDS = {
    "sample": "victim/target pairs: Way1, Way2 or Way3 (clustering), stored as JSON",
    "landscape": "1D/2D input loss landscapes for the classification and explanation loss",
    "curvature": "mean |Δloss|, Hutchinson Hessian trace and top eigenvalue, both losses",
    "compare-ways": "spread of the mean L_e end over seeds for Way1/2/3 pairs",
}

def _victim_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--indices", type=index_list, default=None, help="image indices")
    p.add_argument("--pairs", default=None, help="a stored pair file (victims; targets for explanation_target)")
    p.add_argument("--n-pairs", type=bounded_int(1, 100_000), default=150,
                   help="use the first n pairs of the file (1–100000)")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--csv", default=None, help="write the per-image table here")

def add_arguments(name: str, p: argparse.ArgumentParser, choice: str | None) -> None:
    if name == "sample":
        p.add_argument("--way", type=int, choices=[1, 2, 3], required=True)
        p.add_argument("--dataset", default="mnist5k")
        p.add_argument("--split", choices=["train", "test"], default="test")
        p.add_argument("--n-candidates", type=int, default=1000, help="pairs index the first n images of the split")
        p.add_argument("--n-pairs", type=int, default=150, help="pairs (Way3: prototypes; the paper uses 150)")
        p.add_argument("--k", type=int, default=10, help="Way3: number of k-means clusters")
        p.add_argument("--feature-source", choices=["penultimate", "maps"], default="penultimate",
                       help="Way3: cluster the reference model's penultimate features or its explanation maps")
        p.add_argument("--reference", default=None,
                       help="Way3: reference checkpoint (default: the zoo's natural model)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto")
        p.add_argument("--out", default=None, help="default: RUNS/pairs/<dataset>/<split>-way<N>-n<pairs>-seed<seed>"
                                                   ".json (never the shipped zoo)")
        p.set_defaults(func=cmd_sample)
        return
    add_checkpoint_arguments(p)
    if name == "landscape":
        from ..landscape import LandscapeConfig

        _victim_arguments(p)
        p.add_argument("--loss", choices=["ce", "explanation"], default=None, help="short for --losses with one loss")
        add_config_arguments(p, LandscapeConfig, "landscape")
        p.set_defaults(func=cmd_landscape)
    elif name == "curvature":
        _victim_arguments(p)
        p.add_argument("--radius", type=float, default=0.1, help="L∞ radius of the mean |Δloss|")
        p.add_argument("--beta", type=float, default=10.0, help="softplus β of the view the Hessian is taken on")
        p.add_argument("--explainer", default="gradient_x_input")
        p.add_argument("--n-samples", type=int, default=32)
        p.add_argument("--iterations", type=int, default=30, help="power-iteration steps")
        p.add_argument("--seed", type=int, default=0)
        p.set_defaults(func=cmd_curvature)
    else:
        from ..attacks.explanation import EXPLANATION_ATTACKS

        p.add_argument("--also", action="append", metavar="CHECKPOINT",
                       help="another model attacked on the same pairs (repeat; the models' ranking is compared)")
        p.add_argument("--ways", type=int_list, default=None, help="default 1,2,3")
        p.add_argument("--seeds", type=int_list, default=None, help="default 0,…,19 (each redraws the pool)")
        p.add_argument("--n-seeds", type=bounded_int(2, 64), default=None, help="= --seeds 0,…,N-1")
        p.add_argument("--n-pairs", type=int, default=None, help="pairs per (way, seed), default 30")
        p.add_argument("--n-candidates", type=int, default=None, help="default 1000, spread over the split")
        p.add_argument("--pool", choices=["subsample", "fixed"], default=None,
                       help="subsample (default): each seed draws its own candidate pool; fixed: all candidates")
        p.add_argument("--pool-fraction", type=float, default=None, help="share of candidates per pool (default 0.5)")
        p.add_argument("--reference-pairs", type=int, default=None,
                       help="random Way1 pairs of the bias reference (default 300; 0: no reference)")
        p.add_argument("--k", type=int, default=None, help="Way3 clusters (default 10)")
        p.add_argument("--reference", default=None, help="Way3 reference checkpoint (default: the attacked model)")
        p.add_argument("--json", default=None)
        add_config_arguments(p, EXPLANATION_ATTACKS.get("targeted").config, "targeted attack")
        p.set_defaults(func=cmd_compare_ways)

def _reference_name(path: str | Path) -> str:
    from ..zoo import read_card

    card = read_card(path)
    return f"{card.name} sha256:{(card.weights_sha256 or '')[:12]}"

def cmd_sample(ns: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..io import runs_dir
    from ..sampling import SampleConfig, check_not_in_shipped_zoo, sample_pairs, save_pairs
    from ..zoo import load_checkpoint, shipped_zoo_dir

    cfg = SampleConfig(way=ns.way, dataset=ns.dataset, split=ns.split, n_candidates=ns.n_candidates,
                       n_pairs=ns.n_pairs, k=ns.k, feature_source=ns.feature_source, seed=ns.seed)
    # by default into the runs folder: the shipped pair files are the reference and are never overwritten
    out = Path(ns.out) if ns.out else (runs_dir() / "pairs" / cfg.dataset /
                                       f"{cfg.split}-way{cfg.way}-n{cfg.n_pairs}-seed{cfg.seed}.json")
    check_not_in_shipped_zoo(out)
    check_output(str(out), "--out", "file")
    dataset = load_dataset(cfg.dataset, cfg.split)
    n = min(cfg.n_candidates, len(dataset))
    images, labels = dataset.batch(range(n))
    model = reference = None
    if cfg.way == 3:
        ref = ns.reference or shipped_zoo_dir() / cfg.dataset / "natural.safetensors"
        model, _ = load_checkpoint(ref, ns.device)
        reference = _reference_name(ref)
    pairs = sample_pairs(cfg.way, dataset=cfg.dataset, labels=labels, n_pairs=cfg.n_pairs, seed=cfg.seed,
                         split=cfg.split, model=model, images=images, reference=reference, k=cfg.k,
                         feature_source=cfg.feature_source)
    save_pairs(pairs, out)
    print(f"wrote {len(pairs.pairs)} Way{cfg.way} pairs over the first {n} {cfg.split} images to {out}")
    return 0

def _landscape_inputs(ns: argparse.Namespace, dataset, device):
    """Victims (and targets) from --indices or a stored pair file."""
    from ..sampling import load_pairs

    if ns.pairs:
        stored = load_pairs(ns.pairs, len(dataset))
        if (stored.dataset, stored.split) != (dataset.info.name, ns.split):
            raise ValueError(f"--pairs {ns.pairs} was drawn on {stored.dataset}/{stored.split}, but the checkpoint's "
                             f"images are {dataset.info.name}/{ns.split}: its indices would pick unrelated images")
        pairs = stored.pairs[: ns.n_pairs]
        x, y = dataset.batch([v for v, _ in pairs])
        targets = dataset.batch([t for _, t in pairs])[0].to(device)
        return x.to(device), y.to(device), targets
    if not ns.indices:
        raise ValueError("give --indices or --pairs")
    x, y = dataset.batch(ns.indices)
    return x.to(device), y.to(device), None

def cmd_landscape(ns: argparse.Namespace) -> int:
    from ..landscape import LandscapeConfig, input_landscape

    check_outputs(ns, files=("json", "csv"))
    model, card, dataset, device = load_checkpoint_and_data(ns)
    x, y, targets = _landscape_inputs(ns, dataset, device)
    values = config_values(ns)
    if ns.loss:  # the short form: --loss ce | explanation
        values["losses"] = ["ce"] if ns.loss == "ce" else ["explanation_target" if targets is not None else "explanation_change"]
    cfg = LandscapeConfig(**values)
    result = input_landscape(model, x, y, cfg, target_images=targets if "explanation_target" in cfg.losses else None)
    result.config.update(checkpoint=str(ns.checkpoint), model=card.name, dataset=card.dataset, split=ns.split,
                         pairs=ns.pairs)
    print(f"{card.name}: {cfg.dims}D landscape along {cfg.direction} over {x.shape[0]} images "
          f"({cfg.points}{'×' + str(cfg.points) if cfg.dims == 2 else ''} points each, {result.seconds:.1f} s); "
          f"{100 * result.extra['share_outside_unit_box']:.0f}% of the grid points leave [0, 1] (not clipped)")
    print(fmt_json(result.summary))
    write_result(result, ns)
    return 0

def cmd_curvature(ns: argparse.Namespace) -> int:
    from ..landscape import CurvatureConfig, curvature_summary

    cfg = CurvatureConfig(radius=ns.radius, beta=ns.beta, explainer=ns.explainer, n_samples=ns.n_samples,
                          iterations=ns.iterations, seed=ns.seed)
    check_outputs(ns, files=("json", "csv"))
    model, card, dataset, device = load_checkpoint_and_data(ns)
    x, y, _ = _landscape_inputs(ns, dataset, device)
    result = curvature_summary(model, x, y, **cfg.model_dump())
    result.config.update(checkpoint=str(ns.checkpoint), model=card.name, dataset=card.dataset)
    print(f"{card.name}: input curvature over {x.shape[0]} images")
    print(fmt_json(result.summary))
    write_result(result, ns)
    return 0

def cmd_compare_ways(ns: argparse.Namespace) -> int:
    from ..attacks.explanation import EXPLANATION_ATTACKS
    from ..way_stability import WayStabilityConfig, way_stability
    from ..zoo import load_checkpoint

    given = {k: getattr(ns, k) for k in ("ways", "seeds", "n_pairs", "n_candidates", "k", "pool", "pool_fraction",
                                         "reference_pairs") if getattr(ns, k) is not None}
    if ns.n_seeds is not None:
        given.setdefault("seeds", list(range(ns.n_seeds)))
    cfg = WayStabilityConfig(**given)
    attack = EXPLANATION_ATTACKS.get("targeted").make_config(config_values(ns))
    check_outputs(ns, files=("json",))
    model, card, dataset, device = load_checkpoint_and_data(ns)
    models = {card.name: model}
    for path in ns.also or ():
        other, other_card = load_checkpoint(path, ns.device)
        if other_card.dataset != card.dataset:
            raise ValueError(f"--also {path} is a {other_card.dataset} model; {ns.checkpoint} is {card.dataset}")
        models[other_card.name] = other
    reference = load_checkpoint(ns.reference, ns.device)[0] if ns.reference else None
    result = way_stability(models, dataset, cfg, attack=attack, reference=reference,
                           progress=lambda stage, f: print(f"  {stage}: {f:.0%}", file=sys.stderr, flush=True))
    result.config.update(checkpoint=str(ns.checkpoint), also=list(ns.also or []), split=ns.split)
    print(f"spread of the mean L_e end (×10⁻⁷) over {len(cfg.seeds)} seeds, per Way, for {', '.join(models)}")
    print(fmt_json(result.summary))
    write_result(result, ns)
    return 0
