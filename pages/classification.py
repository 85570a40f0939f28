"""Classification robustness: PGD/FGSM (and AutoAttack when installed) on a batch of test images, accuracy against
ε, adversarial examples and the minimal flipping ε per image, for every chosen model."""

import json

import numpy as np
import pandas as pd
import streamlit as st
import torch

from explrobust_core.accuracy import accuracy_vs_eps, installed_attacks, stored_accuracy_curve
from explrobust_core.attacks.classification import CLASSIFICATION_ATTACKS
from explrobust_core.figures import accuracy_vs_eps_figure, adversarial_gallery_figure, flip_eps_figure
from pages import ui

RESULT = "classification_result"
CHUNK = 256  # images per attack call: bounds memory on large images, still one batch per call
GALLERY = 8  # adversarial examples kept per model and ε for the gallery
ATTACKS = {"pgd": "PGD (iterated)", "fgsm": "FGSM (one step)", "autoattack": "AutoAttack (standard)"}
ATTACK_NAMES = {"pgd": "PGD", "fgsm": "FGSM", "autoattack": "AutoAttack"}  # short names for labels

ui.page_header(
    "Classification robustness",
    "What: how fast each model's accuracy falls when an adversary may change every pixel by up to ε (PGD, FGSM "
    "or, when its optional extra is installed, AutoAttack), what the adversarial images look like, and the "
    "smallest ε that flips each image.",
    "How: press **Show me** to attack a seeded sample of test images at a grid of ε from 0 to ε max on every "
    "chosen model; then browse the gallery by model and ε without recomputing. The defaults (64 images, 4 ε, "
    "PGD-10, the minimal flipping ε on request) answer in seconds on a CPU; each zoo model's stored evaluation (1,000 "
    "images) is drawn beside for comparison, and the points appear as each ε is done.",
)

models, dataset_name, data = ui.models_and_data("their accuracies are only comparable on one test set.")

with st.form("classification_form"):
    left, mid, right = st.columns(3)
    attack = left.radio("Attack", [a for a in ATTACKS if a in installed_attacks()], horizontal=True,
                        format_func=ATTACKS.get, help="AutoAttack is offered when its optional extra is installed: "
                                                      "pip install 'explrobust[autoattack]'")
    norm = left.radio("Threat model", ["linf", "l2"], horizontal=True, format_func={"linf": "L∞", "l2": "L2"}.get)
    eps_max = left.number_input("ε max (pixel units; L2: of the whole image)", 0.001, 50.0, 0.3, 0.01, format="%.3f")
    n_eps = left.slider("Points on the ε grid", 2, 16, 4)
    steps = mid.number_input("PGD steps", 1, 1000, 10, help="step size 2.5·ε/steps (Madry et al.)")
    restarts = mid.number_input("PGD random restarts", 1, 20, 1)
    n_images = mid.number_input(f"Test images (of {len(data)})", 1, len(data), min(64, len(data)))
    seed = mid.number_input("Seed (image sample and random starts)", 0, 2**31 - 1, 0)
    flip = right.checkbox("Minimal flipping ε per image", False,
                          help="a batched bisection on ε with PGD (the attack settings above), up to ε max; "
                               "about as long again as the curve")
    iterations = right.slider("Bisection rounds", 2, 12, 6, help="precision ε max / 2^rounds")
    submitted = st.form_submit_button("Show me", type="primary")


def sample_indices(n: int, seed: int) -> list[int]:
    """A seeded sample of test images, the same for every model (in sampled order: test sets are often sorted
    by class, and the gallery shows the first few)."""
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return perm[:n].tolist()


def model_curve(model_name: str, weights: str, mtime_ns: int, dataset: str, indices: tuple[int, ...], attack: str,
                config_json: str, pgd_json: str, eps_grid: tuple[float, ...], flip: bool, iterations: int,
                on_eps) -> dict:
    """One model: accuracy at each ε, a few adversarial examples per ε, the minimal flipping ε per image (once per
    server and parameter set; ``on_eps(model_name, eps, accuracy)`` sees the curve grow while it is computed)."""

    def compute() -> dict:
        model, _ = ui.load_model(weights)
        x, y = ui.dataset(dataset, "test").batch(list(indices))
        bar = st.progress(0.0, text=f"{model_name}: attacking…")
        curve = accuracy_vs_eps(
            model, x, y, eps_grid, attack, json.loads(config_json), batch_size=CHUNK, keep=GALLERY,
            flip_iterations=iterations if flip else None, flip_config=json.loads(pgd_json),
            progress=lambda done, total: bar.progress(done / total, text=f"{model_name}: attacking…"),
            on_eps=lambda c: on_eps(model_name, c.eps[:len(c.accuracy)], c.accuracy))
        bar.empty()
        return {"model": model_name, "eps": curve.eps, "accuracy": curve.accuracy, "clean_pred": curve.clean_pred,
                "clean_conf": curve.clean_conf, "adv_pred": curve.adv_pred, "gallery": curve.examples,
                "gallery_conf": curve.example_conf, "min_eps": curve.min_eps}

    return ui.computed(("classification", model_name, weights, mtime_ns, data.ui_key, indices, attack, config_json,
                        pgd_json, eps_grid, flip, iterations), compute)


def stored_curves(threat: str, attack: str) -> dict:
    """Each chosen model's stored evaluation by ``attack`` (its zoo result file), labelled with its size."""
    out = {}
    for name in models:
        stored = stored_accuracy_curve(ui.model_file(name)[0], threat, attack)
        if stored is not None:
            made_by = f"PGD-{stored['steps']}" if attack == "pgd" else ATTACK_NAMES.get(attack, attack)
            out[f"{name} (stored, {stored['n_images']} images, {made_by})"] = (stored["eps"], stored["accuracy"])
    return out


def run_all() -> dict:
    # PGD's settings (the minimal flipping ε always uses PGD); FGSM takes the norm, AutoAttack its own names
    pgd = {"norm": norm, "steps": int(steps), "restarts": int(restarts), "seed": int(seed), "random_start": True}
    cfg = {"pgd": pgd, "fgsm": {"norm": norm},
           "autoattack": {"norm": {"linf": "Linf", "l2": "L2"}[norm], "seed": int(seed)}}[attack]
    CLASSIFICATION_ATTACKS.get("pgd").resolve(pgd, eps=float(eps_max))  # clear messages
    eps_grid = tuple(float(e) for e in np.round(np.linspace(0.0, float(eps_max), int(n_eps)), 6))
    indices = sample_indices(int(n_images), int(seed))
    stored = stored_curves(norm, attack)
    live, preview = {**stored}, st.empty()  # the curves so far, drawn as each ε is done

    def draw() -> None:
        ui.live_lines(preview, [{"eps": e, "accuracy": a, "model": m} for m, c in live.items() for e, a in zip(*c)],
                      "eps", "accuracy", "model", "ε", "accuracy under attack (so far)")

    def on_eps(model_name: str, eps: list[float], accuracy: list[float]) -> None:
        live[model_name] = (eps, accuracy)
        draw()

    if live:
        draw()  # the stored evaluations at once
    runs = [model_curve(name, *ui.model_file(name), dataset_name, tuple(indices), attack,
                        json.dumps(cfg, sort_keys=True), json.dumps(pgd, sort_keys=True), eps_grid, bool(flip),
                        int(iterations), on_eps) for name in models]
    preview.empty()
    return {"attack": attack, "config": pgd, "indices": indices, "labels": ui.labels(data)[indices].tolist(),
            "dataset": dataset_name, "runs": runs, "flip": bool(flip), "stored": stored}


shown = ui.result_of(RESULT, submitted, run_all, "Press **Show me** to attack a sample of test images on every "
                     "chosen model.", prefix="Cannot run this attack: ", errors=(ValueError,),  # ConfigError too
                     out_of_memory="The attack ran out of accelerator memory: use fewer images or fewer restarts.")
runs, cfg, indices, y = shown["runs"], shown["config"], shown["indices"], shown["labels"]
threat = "L∞" if cfg["norm"] == "linf" else "L2"
what = (f"PGD-{cfg['steps']} ({cfg['restarts']} restart{'s' if cfg['restarts'] > 1 else ''})"
        if shown["attack"] == "pgd" else ATTACK_NAMES[shown["attack"]])
st.subheader(f"{what}, {threat}, on {len(indices)} {shown['dataset']} test images")


def name_of(c: int) -> str:
    classes = data.info.classes
    return classes[c] if 0 <= c < len(classes) else str(c)


# --- accuracy against ε, and the minimal flipping ε -----------------------------------------------------------
curve_col, flip_col = st.columns(2)
with curve_col:
    st.markdown("**Accuracy against ε**")
    curve_rows = [{"model": r["model"], "eps": e, "accuracy": a} for r in runs for e, a in zip(r["eps"], r["accuracy"])]
    ui.show_figure(accuracy_vs_eps_figure({**{r["model"]: (r["eps"], r["accuracy"]) for r in runs},
                                           **shown.get("stored", {})},
                                          xlabel=f"ε ({threat}, pixel units)", title=f"{what}, {threat}"),
                   "classification_accuracy_vs_eps", pd.DataFrame(curve_rows))
if shown["flip"]:
    with flip_col:
        st.markdown("**Minimal flipping ε per image** (bisection with PGD; images misclassified already count as 0)")
        eps_top = runs[0]["eps"][-1]
        ui.show_figure(flip_eps_figure({r["model"]: r["min_eps"] for r in runs}, eps_top,
                                       title=f"PGD {threat}, up to ε = {eps_top:g}"),
                       "classification_minimal_eps",
                       pd.DataFrame({"index": indices, "true": [name_of(c) for c in y],
                                     **{r["model"]: r["min_eps"] for r in runs}}))
summary = []
for r in runs:
    row = {"model": r["model"], **{f"acc @ ε={e:g}": a for e, a in zip(r["eps"], r["accuracy"])}}
    if r["min_eps"] is not None:
        v = np.asarray(r["min_eps"], dtype=float)
        row["median minimal ε"] = float(np.median(v)) if v.size else None
        row[f"unflipped at ε={r['eps'][-1]:g}"] = float(np.isinf(v).mean())
    summary.append(row)
table = pd.DataFrame(summary)
st.dataframe(table, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in table.columns if c != "model"})
ui.downloads("classification_summary", data=table)

# --- adversarial examples -----------------------------------------------------------------------------------
st.markdown("**Adversarial examples** (clean prediction → prediction under attack; red: the prediction flipped)")
pick_model, pick_eps = st.columns(2)
model_name = pick_model.selectbox("Gallery model", [r["model"] for r in runs])  # no key: new runs reset it
run = next(r for r in runs if r["model"] == model_name)
eps_choice = pick_eps.select_slider("Gallery ε", options=run["eps"], value=run["eps"][len(run["eps"]) // 2],
                                    format_func=lambda e: f"{e:g}")
k = run["eps"].index(eps_choice)
adv = run["gallery"][k]
n = adv.shape[0]
clean, _ = data.batch(indices[:n])
adv_pred = run["adv_pred"][k][:n]
min_eps = run["min_eps"]
clean_titles = [f"#{indices[i]} true {name_of(y[i])}\n→ {name_of(run['clean_pred'][i])} ({run['clean_conf'][i]:.2f})"
                for i in range(n)]


def flip_note(i: int) -> str:
    if min_eps is None:
        return ""
    return f"\nmin ε {min_eps[i]:.3g}" if np.isfinite(min_eps[i]) else "\nnot flipped"


adv_titles = [f"→ {name_of(adv_pred[i])} ({run['gallery_conf'][k][i]:.2f}){flip_note(i)}" for i in range(n)]
flipped = [adv_pred[i] != run["clean_pred"][i] for i in range(n)]
gallery_rows = [{"index": indices[i], "true": name_of(y[i]), "clean prediction": name_of(run["clean_pred"][i]),
                 "adversarial prediction": name_of(adv_pred[i]), "confidence": run["gallery_conf"][k][i],
                 "flipped": flipped[i], **({} if min_eps is None else {"minimal ε": min_eps[i]})} for i in range(n)]
# the gallery's margins are set by the figure; only a narrow one is cropped (its title may overhang)
ui.show_figure(adversarial_gallery_figure(clean, adv, clean_titles, adv_titles, flipped,
                                          title=f"{model_name}, {what} {threat} ε = {eps_choice:g}"),
               "classification_gallery", pd.DataFrame(gallery_rows), crop=n < 4)

ui.export_all("classification")
