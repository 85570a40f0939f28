"""Measuring one checkpoint: `explain`, `attack-classifier`, `attack-explanation` and `evaluate`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._args import (add_checkpoint_arguments, add_config_arguments, bounded_int, check_outputs, config_values,
                    float_list, fmt_json, index_list, int_list, load_checkpoint_and_data, parse_target, pick_images,
                    positive_eps, write_result)

COMMANDS = {
    "explain": "explanation maps for dataset images: PNGs + a JSON of the numbers",
    "attack-classifier": "FGSM/PGD on dataset images (the SEP paper's adv_acc.py)",
    "attack-explanation": "attack explanations, keeping the prediction (the SEP paper's explAttack.py)",
    "evaluate": "clean + PGD accuracy and explanation robustness of a checkpoint",
}

def add_arguments(name: str, p: argparse.ArgumentParser, choice: str | None) -> None:
    """``choice``: the --method/--attack already on the command line, whose own options are added too."""
    add_checkpoint_arguments(p)
    if name == "explain":
        from ..explain import EXPLAINERS

        p.add_argument("--indices", required=True, type=index_list, help="comma-separated image indices, e.g. 0,1,2")
        p.add_argument("--method", default="gradient", help="explanation method (see `explrobust info`)")
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--target", type=parse_target, default="predicted", help="true | predicted | class index")
        p.add_argument("--normalize", choices=["sum", "none"], default="sum", help="map post-processing")
        if choice:
            add_config_arguments(p, EXPLAINERS.get(choice).config, f"options of {choice}")
        p.set_defaults(func=cmd_explain)
    elif name == "attack-classifier":
        from ..attacks.classification import CLASSIFICATION_ATTACKS

        p.add_argument("--indices", type=index_list, default=None,
                       help="image indices (default: --n-images spread evenly over the split)")
        p.add_argument("--n-images", type=bounded_int(1, 100_000), default=500,
                       help="how many images, spread evenly over the split (1–100000)")
        p.add_argument("--attack", default="pgd", help=f"one of {', '.join(CLASSIFICATION_ATTACKS.names())}")
        p.add_argument("--eps-list", type=float_list, default=None,
                       help="also report accuracy at each ε, e.g. 0.1,0.2,0.3")
        p.add_argument("--minimal-eps", type=positive_eps, default=None, metavar="EPS_MAX",
                       help="also find each image's minimal flipping ε up to EPS_MAX (bisection)")
        p.add_argument("--json", default=None, help="write the result here")
        p.add_argument("--csv", default=None, help="write the per-image table here")
        if choice:
            add_config_arguments(p, CLASSIFICATION_ATTACKS.get(choice).config, f"options of {choice}")
        p.set_defaults(func=cmd_attack_classifier)
    elif name == "attack-explanation":
        from ..attacks.explanation import EXPLANATION_ATTACKS

        p.add_argument("--indices", required=True, type=index_list, help="victim image indices")
        p.add_argument("--target-indices", "--target-index", type=int_list, default=None,
                       help="target image index (one for all victims, or one per victim): runs the targeted attack")
        p.add_argument("--attack", default=None, choices=EXPLANATION_ATTACKS.names(),
                       help="the explanation attack (default: by targets: " + ", ".join(
                           f"{e.name} — {e.summary}" for e in EXPLANATION_ATTACKS) + ")")
        p.add_argument("--out", required=True, help="output directory (JSON, CSV and PNG panels)")
        if choice:
            add_config_arguments(p, EXPLANATION_ATTACKS.get(choice).config, f"options of {choice}")
        p.set_defaults(func=cmd_attack_explanation)
    else:
        from ..attacks.explanation import EXPLANATION_ATTACKS
        from ..evaluate import PRESETS, EvaluationConfig

        p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="a paper protocol (RAR per dataset, ART CIFAR)")
        p.add_argument("--json", default=None, help="write the result here")
        p.add_argument("--csv", default=None, help="write the per-image explanation table here")
        p.add_argument("--write-card", action="store_true", help="store the summary in the checkpoint's model card")
        add_config_arguments(p, EvaluationConfig, "evaluation",
                             skip=("split", "explanation_attack", "explanation_attack_config"))
        # the attack and its settings from the registry: --explanation-attack NAME, and --NAME-FIELD per attack
        p.add_argument("--explanation-attack", dest="cfg__explanation_attack", default=argparse.SUPPRESS,
                       choices=[*EXPLANATION_ATTACKS.names(), "none"],
                       help=f"explanation attack to run (default: {EvaluationConfig.model_fields['explanation_attack'].default})")
        for entry in EXPLANATION_ATTACKS:
            add_config_arguments(p, entry.config, f"evaluation: {entry.name} ({entry.summary})", (entry.name,))
        p.set_defaults(func=cmd_evaluate)

def cmd_explain(ns: argparse.Namespace) -> int:
    import torch

    from ..explain import EXPLAINERS, explanation_maps_in_batches, resolve_target
    from ..figures import explanation_figure, save_figure
    from ..io import atomic_write_json, library_versions

    started = time.perf_counter()
    check_outputs(ns, directories=("out",))
    model, card, dataset, device = load_checkpoint_and_data(ns)
    images, labels = (t.to(device) for t in dataset.batch(ns.indices))
    with torch.no_grad():
        probs = torch.softmax(model(images), dim=1)
    cfg = EXPLAINERS.get(ns.method).make_config(config_values(ns))
    targets = resolve_target(model, images, ns.target, labels)
    maps = explanation_maps_in_batches(model, images, ns.method, target=targets, config=cfg, normalize=ns.normalize)
    out = Path(ns.out)
    rows = []
    for i, idx in enumerate(ns.indices):
        pred = int(probs[i].argmax())
        png = out / f"{ns.split}_{idx}_{ns.method}.png"
        title = (f"{card.name} · {ns.method} · #{idx} label {card.classes[int(labels[i])]} → pred "
                 f"{card.classes[pred]} ({float(probs[i, pred]):.2f})")
        save_figure(explanation_figure(images[i], maps[i], title), png)
        rows.append({"index": idx, "label": int(labels[i]), "predicted": pred, "confidence": float(probs[i, pred]),
                     "target": int(targets[i]), "png": png.name, "map": maps[i].detach().cpu().tolist()})
    result = {
        "command": "explain", "checkpoint": str(ns.checkpoint), "model": card.name, "dataset": card.dataset,
        "split": ns.split, "method": ns.method, "config": cfg.model_dump(mode="json"), "target": ns.target,
        "normalize": ns.normalize, "device": str(device), "versions": library_versions(),
        "seconds": round(time.perf_counter() - started, 3), "images": rows,
    }
    atomic_write_json(out / f"explain_{ns.method}.json", result)
    print(f"wrote {len(rows)} PNG maps and {out / f'explain_{ns.method}.json'}")
    return 0

def cmd_attack_classifier(ns: argparse.Namespace) -> int:
    from ..attacks.classification import CLASSIFICATION_ATTACKS, minimal_flip_eps, run_classification_attack

    check_outputs(ns, files=("json", "csv"))
    model, card, dataset, device = load_checkpoint_and_data(ns)
    indices, x, y = pick_images(ns, dataset, device)
    entry = CLASSIFICATION_ATTACKS.get(ns.attack)
    cfg = entry.make_config(config_values(ns))
    for eps in ns.eps_list or ():  # every ε of the curve is validated before anything runs
        entry.resolve(cfg, eps=eps)
    result = run_classification_attack(model, x, y, ns.attack, cfg)
    result.config.update(checkpoint=str(ns.checkpoint), model=card.name, dataset=card.dataset, split=ns.split)
    result.per_image = {"index": indices, **result.per_image}
    if ns.eps_list:  # the one accuracy-against-ε implementation (the Classification page's)
        from ..accuracy import accuracy_vs_eps

        base = {k: v for k, v in cfg.model_dump().items() if k != "eps"}
        result.extra["accuracy_vs_eps"] = accuracy_vs_eps(model, x, y, ns.eps_list, ns.attack, base).rows()
    if ns.minimal_eps is not None:
        pgd_cfg = cfg.model_dump() if ns.attack == "pgd" else {}
        result.per_image["minimal_flip_eps"] = minimal_flip_eps(model, x, y, eps_max=ns.minimal_eps, config=pgd_cfg)
    print(f"{card.name}: {ns.attack} on {len(indices)} {ns.split} images")
    print(fmt_json(result.summary))
    for row in result.extra.get("accuracy_vs_eps", []):
        print(f"  ε={row['eps']:<8g} accuracy {row['accuracy']:.4f}")
    write_result(result, ns)
    return 0

def cmd_attack_explanation(ns: argparse.Namespace) -> int:
    from ..attacks.explanation import (EXPLANATION_ATTACKS, default_attack, needs_targets, run_explanation_attack,
                                       targeted_attacks)
    from ..figures import attack_panels_figure, save_figure

    check_outputs(ns, directories=("out",))
    model, card, dataset, device = load_checkpoint_and_data(ns)
    indices = ns.indices
    x, y = (t.to(device) for t in dataset.batch(indices))
    attack = ns.attack or default_attack(targeted=bool(ns.target_indices))
    targets = None
    if ns.target_indices:
        if not needs_targets(attack):
            raise ValueError(f"--target-indices goes with a targeted attack ({', '.join(targeted_attacks())}), "
                             f"not {attack!r}")
        tidx = ns.target_indices * len(indices) if len(ns.target_indices) == 1 else ns.target_indices
        if len(tidx) != len(indices):
            raise ValueError(f"give one target index, or one per victim ({len(indices)}), got {len(tidx)}")
        targets = dataset.batch(tidx)[0].to(device)
    elif needs_targets(attack):
        raise ValueError(f"the {attack} attack needs --target-indices (the images whose maps to imitate)")
    cfg = EXPLANATION_ATTACKS.get(attack).make_config(config_values(ns))
    result = run_explanation_attack(model, x, attack, config=cfg, target_images=targets)
    result.config.update(checkpoint=str(ns.checkpoint), model=card.name, dataset=card.dataset, split=ns.split)
    result.per_image = {"index": indices, **result.per_image}
    if targets is not None:
        result.per_image["target_index"] = tidx
    out = Path(ns.out)
    method = getattr(cfg, "explainer", "its own maps")  # an attack's config need not name an explainer
    for i, idx in enumerate(indices):
        t = result.tensors
        fig = attack_panels_figure(x[i], t["adversarial"][i], t["original_map"][i], t["attacked_map"][i],
                                   t["target_map"][i] if "target_map" in t else None,
                                   title=f"{card.name} · {attack} · {method} · #{idx}")
        save_figure(fig, out / f"{attack}_{ns.split}_{idx}.png")
    result.save(out / f"{attack}.json", out / f"{attack}.csv")
    print(f"{card.name}: {attack} ({method}) on {len(indices)} images — attack model: "
          f"{result.config.get('attack_model', 'the model itself')}")
    print(fmt_json(result.summary))
    print(f"wrote {out / f'{attack}.json'}, {attack}.csv and {len(indices)} PNG panels")
    return 0

def cmd_evaluate(ns: argparse.Namespace) -> int:
    from ..evaluate import make_evaluation_config, evaluate_model

    check_outputs(ns, files=("json", "csv"))
    model, card, dataset, _ = load_checkpoint_and_data(ns)
    cfg = make_evaluation_config(ns.preset, **config_values(ns), split=ns.split)

    def progress(stage: str, fraction: float) -> None:
        print(f"  {stage}: {fraction:.0%}", file=sys.stderr, flush=True)

    result = evaluate_model(model, dataset, cfg, progress=progress)
    result.config.update(checkpoint=str(ns.checkpoint), model=card.name, dataset=card.dataset, preset=ns.preset)
    print(f"{card.name} on {card.dataset}/{ns.split}:")
    print(fmt_json(result.summary))
    write_result(result, ns)
    if ns.write_card:
        from ..zoo import update_card_metrics

        update_card_metrics(ns.checkpoint, {"evaluation": {
            "command": "explrobust " + " ".join(ns.argv), "config": result.config, "summary": result.summary}})
        print(f"stored the summary in the card of {ns.checkpoint}")
    return 0

