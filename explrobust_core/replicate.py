"""The SEP paper, claim by claim: what the shipped zoo's stored evaluations reproduce.

Paper: "Are Classification Robustness and Explanation Robustness Really Strongly Correlated? An Analysis
Through Input Loss Landscape" (Chen et al., arXiv 2403.06013). Its numbers below are from its main table
(MNIST, ConvNet rows; L_e ×10⁻⁷); where the paper gives no number (its TRADES table, the Way comparison) the
claim is quoted in words.

Each claim gets our number, a confidence interval and a verdict:

* **reproduced** — the effect is there and its interval excludes "no effect" (and, where the paper states a
  size, reaches it);
* **direction only** — the effect points the paper's way but is smaller than claimed or its interval covers
  "no effect";
* **not reproduced** — the effect is absent or reversed;
* **not measured** — a number it needs is not stored (the report names the command that measures it).

Models are compared on the **same victim–target pairs**: the pairs every compared model kept its prediction on
(each model's own subset would average different pairs). Intervals resample those pairs (paired bootstrap,
``scipy.stats.bootstrap``) or, for the Way comparison, come from the F distribution of a variance ratio.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .study import (PAPER_MNIST_TABLE, Collection, collect, model_rows, pair_table, protocols, records_for,
                    spearman_over_models)

PAPER = ("Are Classification Robustness and Explanation Robustness Really Strongly Correlated? "
         "An Analysis Through Input Loss Landscape (arXiv 2403.06013)")
VERDICTS = ("reproduced", "direction only", "not reproduced", "not measured")
CURVATURE_FILE = "curvature.json"
WAY_STABILITY_FILE = "way_stability.json"
_ADV_TRAINED = ("MAT", "TRADES")  # the paper's adversarial training baselines


@dataclass
class Claim:
    key: str
    claim: str
    paper: str
    ours: str = ""
    interval: str = ""
    verdict: str = "not measured"
    rule: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- per-pair numbers


def per_pair_le_end(path: str | os.PathLike) -> dict[tuple[int, int], float]:
    """``{(victim, target): L_e end ×10⁻⁷}`` of a stored evaluation, the pairs whose prediction the attack kept."""
    return pair_table(path, "le_end") or {}


def common_pairs(tables: dict[str, dict[tuple[int, int], float]]) -> list[tuple[int, int]]:
    """The pairs present in every table, sorted."""
    sets = [set(t) for t in tables.values()]
    return sorted(set.intersection(*sets)) if sets else []


def ratio_of_means(a: np.ndarray, b: np.ndarray, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """mean(a)/mean(b) over paired values, with a paired percentile bootstrap interval."""
    from scipy.stats import bootstrap

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ratio = float(a.mean() / b.mean())
    if a.size < 3:
        return {"ratio": ratio, "ci_low": float("nan"), "ci_high": float("nan"), "n": int(a.size)}
    res = bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) / y.mean(axis), paired=True, vectorized=True,
                    confidence_level=confidence, n_resamples=2000, method="percentile", random_state=seed)
    return {"ratio": ratio, "ci_low": float(res.confidence_interval.low),
            "ci_high": float(res.confidence_interval.high), "n": int(a.size)}


def _fmt_ratio(r: dict[str, float]) -> str:
    return f"{r['ratio']:.2f}× [{r['ci_low']:.2f}, {r['ci_high']:.2f}] over {r['n']} common pairs"


def _ratio_verdict(r: dict[str, float], needed: float = 1.0) -> str:
    if r["ratio"] <= 1:
        return "not reproduced"
    return "reproduced" if r["ci_low"] > needed else "direction only"


# --------------------------------------------------------------------------- the claims


def claim_at_raises_le(rows: list[dict[str, Any]], tables: dict[str, dict]) -> Claim:
    c = Claim("a", "Adversarial training raises L_e end (explanation robustness) over natural training.",
              "MNIST ConvNet: Normal 204.8 → MAT 298.7 (1.46×), SEP paper main table",
              rule="ratio of mean L_e end (adversarially trained / natural) on common pairs; reproduced when its "
                   "interval lies above 1 for every adversarially trained model")
    natural = [r for r in rows if r["method"] == "Normal" and r["model"] in tables]
    trained = [r for r in rows if r["method"] in _ADV_TRAINED and r["model"] in tables]
    if not natural or not trained:
        return c
    base = next((r for r in natural if r["name"] == "natural"), natural[0])["model"]  # the shipped one first
    ratios = {}
    for r in trained:
        pairs = common_pairs({k: tables[k] for k in (base, r["model"])})
        if len(pairs) >= 3:
            ratios[r["name"]] = ratio_of_means([tables[r["model"]][p] for p in pairs], [tables[base][p] for p in pairs])
    if not ratios:
        return c
    verdicts = {name: _ratio_verdict(r) for name, r in ratios.items()}
    c.numbers = {"against": base, "ratios": ratios}
    c.ours = "; ".join(f"{name} {_fmt_ratio(r)}" for name, r in ratios.items())
    c.interval = "95 % paired bootstrap"
    c.verdict = ("reproduced" if all(v == "reproduced" for v in verdicts.values()) else
                 "not reproduced" if all(v == "not reproduced" for v in verdicts.values()) else "direction only")
    return c


def claim_trades_monotone(rows: list[dict[str, Any]]) -> Claim:
    from .study import trades_sweep

    c = Claim("b", "Along the TRADES sweep, classification and explanation robustness rise together (monotone).",
              "stated in words (the paper's TRADES table; its numbers were not available to us)",
              rule="Spearman ρ of β with PGD accuracy and with L_e end (natural training as β = 0); reproduced when "
                   "both are 1 (monotone), direction only when both are positive")
    sweep = [r for r in trades_sweep(rows) if r["status"] == "ok"]
    if len(sweep) < 3:
        return c
    beta = np.array([r["sweep_beta"] for r in sweep])
    acc = np.array([r["pgd_accuracy"] for r in sweep])
    le = np.array([r["le_end"] for r in sweep])
    rho_acc, rho_le = float(spearman_over_models(beta, acc)), float(spearman_over_models(beta, le))
    c.numbers = {"beta": beta.tolist(), "pgd_accuracy": acc.tolist(), "le_end": le.tolist(),
                 "rho_beta_accuracy": rho_acc, "rho_beta_le_end": rho_le}
    c.ours = (f"β {', '.join(f'{b:g}' for b in beta)}: PGD acc {', '.join(f'{100 * a:.1f}' for a in acc)} % "
              f"(ρ = {rho_acc:.2f}); L_e end {', '.join(f'{v:.0f}' for v in le)} (ρ = {rho_le:.2f})")
    c.interval = f"{len(sweep)} models; no interval (a designed sweep, not a sample)"
    c.verdict = ("reproduced" if rho_acc > 0.999 and rho_le > 0.999 else
                 "direction only" if rho_acc > 0 and rho_le > 0 else "not reproduced")
    return c


def claim_sep_decoupling(rows: list[dict[str, Any]], tables: dict[str, dict]) -> Claim:
    c = Claim("c", "SEP_pos and SEP_neg reach the same adversarial accuracy with ≥ 2× different L_e end.",
              "MNIST ConvNet: SEP_neg 657.2 vs SEP_pos 61.5 (10.7×) at 90.3 % vs 89.4 % adversarial accuracy; "
              "CIFAR-10 ResNet-18: 36.3 vs 8.0 (4.6×)",
              rule="reproduced when the PGD accuracies are within 5 points and the interval of the L_e end ratio "
                   "SEP_neg / SEP_pos lies above 2; direction only when it lies above 1")
    pos = [r for r in rows if r["method"] == "SEP_pos" and r["model"] in tables and r["status"] == "ok"]
    neg = [r for r in rows if r["method"] == "SEP_neg" and r["model"] in tables and r["status"] == "ok"]
    if not pos or not neg:
        return c
    # the shipped names first, so a user's extra SEP models do not silently replace them
    p = next((r for r in pos if r["name"] == "sep_pos"), pos[0])
    n = next((r for r in neg if r["name"] == "sep_neg"), neg[0])
    pairs = common_pairs({k: tables[k] for k in (p["model"], n["model"])})
    if len(pairs) < 3:
        return c
    r = ratio_of_means([tables[n["model"]][q] for q in pairs], [tables[p["model"]][q] for q in pairs])
    gap = 100 * abs(n["pgd_accuracy"] - p["pgd_accuracy"])
    c.numbers = {"sep_pos": p["name"], "sep_neg": n["name"], "ratio": r, "pgd_gap_points": gap,
                 "pgd_accuracy": {p["name"]: p["pgd_accuracy"], n["name"]: n["pgd_accuracy"]}}
    c.ours = (f"{n['name']} / {p['name']}: {_fmt_ratio(r)}; PGD accuracy {100 * n['pgd_accuracy']:.1f} % vs "
              f"{100 * p['pgd_accuracy']:.1f} % ({gap:.1f} points apart)")
    c.interval = "95 % paired bootstrap"
    c.verdict = ("not reproduced" if gap > 5 or r["ratio"] <= 1 else
                 "reproduced" if r["ci_low"] > 2 else "direction only" if r["ci_low"] > 1 else "not reproduced")
    return c


def claim_end_driven_by_start(rows: list[dict[str, Any]]) -> Claim:
    ok = [r for r in rows if r["status"] == "ok" and r["le_start"] and r["le_end"] is not None]
    paper = [r for r in PAPER_MNIST_TABLE]
    ps, pe = (np.array([r[k] for r in paper]) for k in ("L_e start ×1e-7", "L_e end ×1e-7"))
    c = Claim("d", "L_e end is driven by L_e start: models whose maps start far apart end far apart.",
              f"from the paper's MNIST table (8 models): ρ(end, start) = {float(spearman_over_models(pe, ps)):.2f}, "
              f"ρ(end, end/start) = {float(spearman_over_models(pe, pe / ps)):.2f}",
              rule="Spearman ρ over models of L_e end with L_e start and with end/start; reproduced when "
                   "ρ(end, start) is higher and its bootstrap interval excludes 0")
    if len(ok) < 3:
        return c
    from .study import correlation

    start, end = np.array([r["le_start"] for r in ok]), np.array([r["le_end"] for r in ok])
    with_start = correlation(end, start, "spearman")
    with_ratio = correlation(end, end / start, "spearman")
    c.numbers = {"models": [r["name"] for r in ok], "rho_end_start": with_start, "rho_end_ratio": with_ratio}
    c.ours = (f"ρ(end, start) = {with_start['r']:.2f} [{with_start['ci_low']:.2f}, {with_start['ci_high']:.2f}], "
              f"ρ(end, end/start) = {with_ratio['r']:.2f} over {len(ok)} models")
    c.interval = "95 % bootstrap over models"
    higher = with_start["r"] > with_ratio["r"]
    c.verdict = ("reproduced" if higher and with_start["ci_low"] is not None and with_start["ci_low"] > 0 else
                 "direction only" if higher else "not reproduced")
    return c


def claim_way3_steadier(result: dict[str, Any] | None) -> Claim:
    from scipy.stats import f

    c = Claim("e", "Picking pairs by clustering (Way3) gives a steadier estimate than random pairs (Way1).",
              "stated in words; no stability numbers were available to us",
              rule="variance of the seed means of L_e end relative to their level, Way1 / Way3, pooled over models, "
                   "with an F interval on one model's degrees of freedom (the models share their pairs); reproduced "
                   "when the interval lies above 1. Bias: each Way's mean against a large random (Way1) reference")
    if not result:
        c.ours = ("not stored: run `explrobust compare-ways --checkpoint …natural --also …pgd_at --also …sep_pos "
                  "--also …sep_neg --json way_stability.json`")
        return c
    summary = result["summary"]
    models = [m for m in summary if m != "ranking" and "way1" in summary[m] and "way3" in summary[m]]
    if not models:
        return c
    var1 = [summary[m]["way1"]["std"] ** 2 for m in models]
    var3 = [summary[m]["way3"]["std"] ** 2 for m in models]
    d1 = sum(summary[m]["way1"]["n_seeds"] - 1 for m in models)
    d3 = sum(summary[m]["way3"]["n_seeds"] - 1 for m in models)
    # pooled: each model's seed-mean variance relative to its own level, so models of any scale weigh alike
    rel1 = sum((summary[m]["way1"]["n_seeds"] - 1) * v / summary[m]["way1"]["mean"] ** 2 for m, v in zip(models, var1)) / d1
    rel3 = sum((summary[m]["way3"]["n_seeds"] - 1) * v / summary[m]["way3"]["mean"] ** 2 for m, v in zip(models, var3)) / d3
    ratio = rel1 / rel3
    # the models are attacked on the same pairs, so their seed means move together: the interval takes the
    # degrees of freedom of one model (conservative), not the sum over models
    d1, d3 = (min(summary[m][f"way{w}"]["n_seeds"] for m in models) - 1 for w in (1, 3))
    low, high = ratio / float(f.ppf(0.975, d1, d3)), ratio / float(f.ppf(0.025, d1, d3))
    bias = {m: {f"way{w}": summary[m][f"way{w}"].get("relative_bias") for w in (1, 2, 3) if f"way{w}" in summary[m]}
            for m in models}
    ranking = summary.get("ranking", {})
    c.numbers = {"models": models, "pooled_variance_ratio": ratio, "ci_low": low, "ci_high": high,
                 "relative_bias": bias, "ranking": ranking, "seeds": result.get("config", {}).get("seeds")}
    same = ", ".join(f"Way{k[-1]} {100 * v['same_ranking_share']:.0f} %" for k, v in ranking.items())
    bias3 = [b["way3"] for b in bias.values() if b.get("way3") is not None]
    bias1 = [b["way1"] for b in bias.values() if b.get("way1") is not None]
    c.ours = (f"relative variance Way1/Way3 = {ratio:.2f} [{low:.2f}, {high:.2f}] over {len(models)} models × "
              f"{summary[models[0]]['way1']['n_seeds']} seeds"
              + (f"; bias against the random reference: Way3 {100 * min(bias3):+.1f} to {100 * max(bias3):+.1f} %, "
                 f"Way1 {100 * min(bias1):+.1f} to {100 * max(bias1):+.1f} %" if bias3 and bias1 else "")
              + (f"; seeds ranking the models as the reference does: {same}" if same else ""))
    c.interval = ("95 % F interval with one model's degrees of freedom (the models share their pairs)"
                  if len(models) > 1 else "95 % F interval")
    c.verdict = "reproduced" if low > 1 else "direction only" if ratio > 1 else "not reproduced"
    return c


def claim_landscape(curvature: dict[str, Any] | None, rows: list[dict[str, Any]]) -> Claim:
    c = Claim("f", "Adversarial training flattens the cross-entropy landscape but not the explanation-loss one.",
              "stated in words with landscape plots and a Hessian analysis (no numbers available to us)",
              rule="flatness = mean |Δloss| over random perturbations in the L∞ ball (the landscape's measure), "
                   "MAT / natural, paired bootstrap over images (the Hessian trace is shown too); reproduced when "
                   "the CE ratio's interval lies below 1 and the explanation-loss ratio's does not")
    if not curvature:
        c.ours = "not stored: run `explrobust replicate sep --compute-missing`"
        return c
    per_model = curvature.get("models", {})
    def pick(method: str, shipped_name: str) -> str | None:  # the shipped model first, then any of its kind
        names = [r["name"] for r in rows if r["method"] == method and r["name"] in per_model]
        return shipped_name if shipped_name in names else next(iter(names), None)

    natural, at = pick("Normal", "natural"), pick("MAT", "pgd_at")
    if natural is None or at is None:
        return c
    out = {f"{loss}_{measure}": ratio_of_means(per_model[at][f"{loss}_{measure}"], per_model[natural][f"{loss}_{measure}"])
           for loss in ("ce", "explanation_change") for measure in ("mean_abs_delta", "hessian_trace")}

    def shown(key: str) -> str:
        r = out[key]
        return f"{r['ratio']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"

    ce, ex = out["ce_mean_abs_delta"], out["explanation_change_mean_abs_delta"]
    radius = curvature.get("config", {}).get("radius")
    c.numbers = {"adversarial": at, "natural": natural, "ratios": out, "radius": radius}
    c.ours = (f"{at} / {natural}, mean |Δloss| within L∞ {radius}: CE {shown('ce_mean_abs_delta')}, explanation "
              f"{shown('explanation_change_mean_abs_delta')}; Hessian trace: CE {shown('ce_hessian_trace')}, "
              f"explanation {shown('explanation_change_hessian_trace')} over {ce['n']} images. The natural "
              "model's CE is saturated near clean inputs (loss ≈ 0), so random perturbations barely move it")
    c.interval = "95 % paired bootstrap"
    ce_flat, ex_flat = ce["ci_high"] < 1, ex["ci_high"] < 1
    c.verdict = ("reproduced" if ce_flat and not ex_flat else
                 "direction only" if ce["ratio"] < 1 and ex["ratio"] >= ce["ratio"] else "not reproduced")
    return c


# --------------------------------------------------------------------------- stored inputs


def stored_files(dataset: str, runs: str | os.PathLike | None = None,
                 shipped_root: str | os.PathLike | None = None) -> list[Path]:
    """Where the curvature and Way-stability results are looked for, the runs directory first (for cache keys)."""
    from .io import runs_dir
    from .zoo import shipped_zoo_dir

    shipped = Path(shipped_root) if shipped_root is not None else shipped_zoo_dir()
    folders = (Path(runs if runs is not None else runs_dir()) / "replicate" / dataset, shipped / dataset)
    return [folder / name for name in (CURVATURE_FILE, WAY_STABILITY_FILE) for folder in folders]


def _stored(dataset: str, filename: str, shipped_root: Path, runs: str | os.PathLike | None) -> dict | None:
    for path in stored_files(dataset, runs, shipped_root):
        if path.name == filename and path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def compute_curvature(entries: Iterable[Any], dataset: str, pairs_file: str | os.PathLike, n_images: int = 30,
                      device: str = "auto", progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """Per-image Hessian trace, top eigenvalue and mean |Δloss| of CE and the explanation-change loss for each
    model, on the victims of the first ``n_images`` stored pairs (the same images for every model)."""
    from .data import load_dataset
    from .landscape import curvature_summary
    from .sampling import load_pairs
    from .models import device_of
    from .zoo import load_checkpoint

    data = load_dataset(dataset, "test")
    victims = [v for v, _ in load_pairs(pairs_file, len(data)).pairs[:n_images]]
    x, y = data.batch(victims)
    entries = [e for e in entries if e.card is not None and e.card.dataset == dataset]
    models: dict[str, Any] = {}
    settings = {"radius": 0.1, "beta": 10.0, "explainer": "gradient_x_input", "n_samples": 32, "iterations": 20}
    for i, entry in enumerate(entries):
        model, card = load_checkpoint(entry.path, device)
        dev = device_of(model)
        r = curvature_summary(model, x.to(dev), y.to(dev), **settings)
        models[card.name] = {k: [float(v) for v in t.tolist()] for k, t in r.per_image.items() if k != "label"}
        if progress:
            progress("curvature", (i + 1) / len(entries))
    return {"kind": "curvature", "dataset": dataset, "victims": victims, "pairs_file": Path(pairs_file).name,
            "config": settings, "models": models}


def replicate_sep(dataset: str = "mnist5k", *, runs: str | os.PathLike | None = None,
                  shipped_root: str | os.PathLike | None = None, entries: Iterable[Any] | None = None,
                  protocol: str | None = None, eps: float | None = None) -> dict[str, Any]:
    """The claim table (see the module docstring) from stored evaluations of ``dataset``'s zoo.

    Args:
        dataset: the dataset whose models are compared.
        protocol: the evaluation protocol id (default: the one the shipped zoo was measured with).
        eps: the PGD ε of "adversarial accuracy" (default: the protocol's largest).
    Returns:
        ``{"paper", "dataset", "protocol", "eps", "claims": [Claim as dict, …], "problems": […]}``.
    """
    from .zoo import list_checkpoints, shipped_zoo_dir, user_zoo_dir

    root = Path(shipped_root) if shipped_root is not None else shipped_zoo_dir()
    entries = list(entries) if entries is not None else [
        e for e in list_checkpoints(root, user_zoo_dir()) if e.card is not None and e.card.dataset == dataset]
    collection: Collection = collect(entries, runs, shipped_root=root)
    found = protocols(collection, dataset)
    if not found:
        raise ValueError(f"no stored evaluation of a {dataset} model: evaluate the zoo first (models_zoo/build.sh)")
    pid = protocol or next((p["id"] for p in found if p["shipped"]), found[0]["id"])
    config = next(p["config"] for p in found if p["id"] == pid)
    eps = eps if eps is not None else max(config.get("eps_list") or [config.get("pgd", {}).get("eps", 0.3)])
    rows = model_rows(collection, dataset, pid, eps, "le_end")
    tables = {}
    for model, rec in records_for(collection, dataset, pid).items():
        if rec.source in ("result file", "study run") and rec.path:
            table = per_pair_le_end(rec.path)
            if table:
                tables[model] = table
    claims = [claim_at_raises_le(rows, tables), claim_trades_monotone(rows), claim_sep_decoupling(rows, tables),
              claim_end_driven_by_start(rows),
              claim_way3_steadier(_stored(dataset, WAY_STABILITY_FILE, root, runs)),
              claim_landscape(_stored(dataset, CURVATURE_FILE, root, runs), rows)]
    return {"paper": PAPER, "dataset": dataset, "protocol": pid, "eps": eps,
            "models": [r["name"] for r in rows if r["status"] == "ok"],
            "claims": [asdict(c) for c in claims], "problems": list(collection.problems)}


def claims_markdown(report: dict[str, Any]) -> str:
    """The claim table as Markdown (README, papers' supplements)."""
    lines = [f"Replication of *{report['paper']}* on `{report['dataset']}` (protocol `{report['protocol']}`, "
             f"adversarial accuracy at ε = {report['eps']:g}; models: {', '.join(report['models'])}).", "",
             "| claim | paper | ours | verdict |", "|---|---|---|---|"]
    for c in report["claims"]:
        cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731 - a one-line escape
        ours = cell(c["ours"] or "—") + (f" ({cell(c['interval'])})" if c["interval"] else "")
        lines.append(f"| ({c['key']}) {cell(c['claim'])} | {cell(c['paper'])} | {ours} | **{c['verdict']}** |")
    lines += ["", "Verdict rules: " + " ".join(f"({c['key']}) {c['rule']}." for c in report["claims"])]
    return "\n".join(lines) + "\n"
