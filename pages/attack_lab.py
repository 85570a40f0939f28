"""Attack lab: attack one image's explanation on every chosen model at once, keeping the prediction."""

import json

import numpy as np
import pandas as pd
import streamlit as st
import torch

from explrobust_core.attacks.explanation import EXPLANATION_ATTACKS, run_explanation_attack
from explrobust_core.explain import EXPLAINERS
from explrobust_core.figures import attack_panels_figure, image_to_display, trajectory_figure
from explrobust_core.metrics import in_paper_units
from pages import ui

RESULT = "attack_lab_result"
UNTARGETED, TARGETED = "Untargeted (IFIA)", "Targeted (Dombrowski)"
MEASURES = {"topk_intersection": "top-k intersection", "kendall_tau": "Kendall τ", "spearman_rho": "Spearman ρ",
            "center_of_mass_shift": "centre-of-mass shift (px)"}
AUTO_MEASURE = {"topk": "topk_intersection", "center_of_mass": "center_of_mass_shift", "random": "topk_intersection"}

ui.page_header(
    "Attack lab",
    "What: an explanation attack adds an imperceptible perturbation that changes the explanation map of an "
    "image while the model's prediction stays the same — untargeted (IFIA: move the map away from itself) or "
    "targeted (drive the map toward another image's map).",
    "How: pick an image (and a target image), press **Show me**: the same attack runs on every chosen model, "
    "so robustly trained models (PGD-AT, SEP_pos, SEP_neg, …) can be compared row by row.",
)

models, dataset_name = ui.models_of_one_dataset("an attack on one image needs models of one dataset.")
entries = ui.checkpoints()
data = ui.dataset_or_stop(dataset_name, "test")
classes = data.info.classes
labels = ui.labels(data)


def thumbnail(index: int) -> np.ndarray:
    """The image enlarged by pixel repetition (crisp in the browser)."""
    arr = image_to_display(data[index][0])
    scale = max(1, 112 // max(arr.shape[:2]))
    return np.kron(arr, np.ones((scale, scale) + (1,) * (arr.ndim - 2))).clip(0, 1)


# --- the image(s): outside the form so the preview follows the choice ---------------------------------
pick, preview, pick_t, preview_t = st.columns([2, 1, 2, 1])
kind = pick.radio("Attack", [UNTARGETED, TARGETED], horizontal=True, key="attack_lab_kind")
index = int(pick.number_input(f"Image index ({dataset_name}, test split: 0–{len(data) - 1})", 0, len(data) - 1, 0,
                              key="attack_lab_index"))
preview.image(thumbnail(index), caption=f"#{index}: {classes[int(labels[index])]}", width=112)
target_index = None
if kind == TARGETED:
    other = (labels != labels[index]).nonzero()
    default_target = int(other[0]) if len(other) else 0
    target_index = int(pick_t.number_input(f"Target image index (0–{len(data) - 1})", 0, len(data) - 1,
                                           default_target, key="attack_lab_target",
                                           help="the attack drives the victim's map toward this image's map"))
    preview_t.image(thumbnail(target_index), caption=f"target #{target_index}: "
                                                    f"{classes[int(labels[target_index])]}", width=112)

differentiable = EXPLAINERS.names("differentiable")
with st.form("attack_lab_form"):
    common, untargeted, targeted_col = st.columns(3)
    common.markdown("**Both attacks**")
    explainer = common.selectbox("Explanation method", differentiable, index=differentiable.index("gradient"),
                                 help="the attack differentiates through this method (ReLU models: through their "
                                      "Softplus(β) twin); results are measured on the original model")
    samples = common.number_input("IG steps / SmoothGrad & GradientSHAP samples", 1, 256, 16,
                                  help="only for integrated gradients, SmoothGrad and GradientSHAP")
    eps = common.slider("ε (L∞ budget, pixel units)", 0.01, 0.5, 0.1, 0.01)
    steps = common.number_input("Steps", 1, 2000, 100, help="attack iterations")
    seed = common.number_input("Seed", 0, 2**31 - 1, 0)
    untargeted.markdown("**Untargeted (IFIA)**")
    objective = untargeted.selectbox("Objective", ["topk", "center_of_mass", "random"],
                                     format_func={"topk": "move mass off the top-k pixels",
                                                  "center_of_mass": "move the centre of mass",
                                                  "random": "random sign steps (baseline)"}.get)
    measure = untargeted.selectbox("Measure (keeps the worst iterate by it)", ["auto", *MEASURES],
                                   format_func=lambda m: "matches the objective" if m == "auto" else MEASURES[m])
    k = untargeted.number_input("k (top-k pixels)", 1, 100_000, 100)
    step_size = untargeted.number_input("Step size", 0.001, 0.5, 0.01, 0.001, format="%.3f")
    targeted_col.markdown("**Targeted (Dombrowski)**")
    lr = targeted_col.number_input("Learning rate (Adam on the input)", 1e-5, 0.1, 1e-3, 1e-4, format="%.5f")
    bounded = targeted_col.checkbox("Keep the targeted attack in the ε-ball", False,
                                    help="the paper's attack is unconstrained (only pixels clamped to [0, 1])")
    submitted = st.form_submit_button("Show me", type="primary")


def attack_config() -> tuple[str, dict]:
    options = {}
    fields = EXPLAINERS.get(explainer).config.model_fields
    if "n_steps" in fields:
        options["n_steps"] = int(samples)
    if "n_samples" in fields:
        options["n_samples"] = int(samples)
    base = {"explainer": explainer, "explainer_options": options, "seed": int(seed), "steps": int(steps)}
    if kind == UNTARGETED:
        return "ifia", {**base, "objective": objective, "eps": float(eps), "step_size": float(step_size),
                        "k": int(k), "eval_k": int(k),
                        "measure": AUTO_MEASURE[objective] if measure == "auto" else measure}
    return "targeted", {**base, "lr": float(lr), "eps": float(eps) if bounded else None,
                        "record_every": max(1, int(steps) // 100)}


@st.cache_data(show_spinner=False, max_entries=128)
def attack_one(model_name: str, weights: str, mtime_ns: int, dataset: str, index: int, target: int | None,
               attack: str, config_json: str) -> dict:
    """One model's attack on one image (cached per parameter set; the progress bar replays on a hit)."""
    model, _ = ui.load_model(weights)
    device = next(model.parameters()).device
    data = ui.dataset(dataset, "test")
    x = data.batch([index])[0].to(device)
    x_t = data.batch([target])[0].to(device) if target is not None else None
    bar = st.progress(0.0, text=f"{model_name}: starting the attack…")
    last = [-1]

    def progress(done: int, total: int) -> None:
        percent = int(100 * done / total)
        if percent != last[0]:  # at most 100 updates per run
            last[0] = percent
            bar.progress(percent / 100, text=f"{model_name}: step {done}/{total}")

    result = run_explanation_attack(model, x, attack, config=json.loads(config_json), target_images=x_t,
                                    progress=progress)
    bar.empty()
    adv = result.tensors["adversarial"]
    with torch.no_grad():
        before = torch.softmax(model(x), 1)[0].cpu()
        after = torch.softmax(model(adv), 1)[0].cpu()
    row = result.to_dict()
    traj = row["extra"]["trajectory"]
    return {
        "model": model_name, "attack": attack, "config": row["config"], "summary": row["summary"],
        "per_image": {key: values[0] for key, values in row["per_image"].items()},
        "trajectory": {key: (values if key == "step" else [v[0] for v in values]) for key, values in traj.items()},
        "pred_before": int(before.argmax()), "conf_before": float(before.max()),
        "pred_after": int(after.argmax()), "conf_after": float(after.max()),
        "image": x[0].cpu(), "adversarial": adv[0].cpu(), "target_image": None if x_t is None else x_t[0].cpu(),
        **{name: t[0].cpu() for name, t in result.tensors.items() if name.endswith("_map")},
        "seconds": result.seconds,
    }


if submitted:
    attack, cfg = attack_config()
    try:
        EXPLANATION_ATTACKS.get(attack).make_config(cfg)  # a clear message for impossible settings
        height, width = data.info.input_shape[-2:]
        if attack == "ifia" and cfg["k"] > height * width:
            raise ValueError(f"k={cfg['k']} is larger than the map ({height * width} pixels); "
                             f"choose k ≤ {height * width}")
        runs = []
        for name in models:
            entry = entries[name]
            runs.append(attack_one(name, str(entry.path), entry.path.stat().st_mtime_ns, dataset_name, index,
                                   target_index, attack, json.dumps(cfg, sort_keys=True)))
    except ValueError as err:  # ConfigError included: a setting the user can change
        st.error(f"Cannot run this attack: {err}")
        st.stop()
    except torch.OutOfMemoryError:
        st.error("The attack ran out of accelerator memory: use fewer IG steps / samples or fewer models.")
        st.stop()
    st.session_state[RESULT] = {"attack": attack, "config": cfg, "index": index, "target": target_index,
                                "dataset": dataset_name, "runs": runs}

shown = st.session_state.get(RESULT)
if shown is None:
    st.info("Press **Show me** to attack the image on every chosen model.")
    st.stop()

runs, attack = shown["runs"], shown["attack"]
cfg = shown["config"]
title = (f"{'IFIA (' + cfg['objective'] + ')' if attack == 'ifia' else 'targeted'} attack on "
         f"{shown['dataset']} test #{shown['index']}"
         + (f" → target #{shown['target']}" if attack == "targeted" else "")
         + f", {cfg['explainer']}, {cfg['steps']} steps" + (f", ε = {cfg['eps']:g}" if cfg.get("eps") else ""))
st.subheader(title)
st.caption(f"True class of the image: {classes[int(labels[shown['index']])]}"
           + (f"; of the target: {classes[int(labels[shown['target']])]}" if attack == "targeted" else "")
           + ". Every attack keeps each model's own prediction.")
if (shown["index"], shown["target"]) != (index, target_index) or shown["attack"] != ("ifia" if kind == UNTARGETED
                                                                                   else "targeted"):
    st.caption("These are the results of the last run; press **Show me** to attack the image chosen above.")


def name_of(c: int) -> str:
    return classes[c] if 0 <= c < len(classes) else str(c)


# --- the comparison table: one row per model ------------------------------------------------------------
rows = []
for run in runs:
    p = run["per_image"]
    row = {"model": run["model"], "prediction before": name_of(run["pred_before"]),
           "confidence before": run["conf_before"],
           "prediction after": name_of(run["pred_after"]), "confidence after": run["conf_after"],
           "label kept": run["pred_after"] == run["pred_before"]}
    if attack == "ifia":
        row.update({"top-k ∩": p["topk_intersection"], "Kendall τ": p["kendall_tau"],
                    "Spearman ρ": p["spearman_rho"], "CoM shift (px)": p["center_of_mass_shift"],
                    "L_e (×10⁻⁷)": None if p["explanation_loss"] is None
                    else in_paper_units(p["explanation_loss"])})
    else:
        start, end = p["explanation_loss_start_paper"], p["explanation_loss_end_paper"]
        row.update({"target class": name_of(int(p["target_label"])), "L_e start (×10⁻⁷)": start,
                    "L_e end (×10⁻⁷)": end,
                    "L_e drop (%)": None if end is None or not start else 100 * (start - end) / start})
    row.update({"L∞": p["linf"], "seconds": run["seconds"]})
    rows.append(row)
table = pd.DataFrame(rows)
st.markdown("**All chosen models under the same attack** (metrics compare the attacked map with the original map"
            + ("" if attack == "ifia" else "; L_e is the explanation loss to the target map, as the SEP paper")
            + ")")
st.dataframe(table, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.4g") for c in table.columns
                            if table[c].dtype.kind == "f"})
ui.downloads("attack_lab_models", data=table)
unattacked = [run["model"] for run in runs if not run["per_image"]["attacked"]]
if unattacked:
    st.warning(f"No iterate kept the prediction on {', '.join(unattacked)}: the attack failed there, and its "
               "metrics are left out (shown empty) rather than scored as robust.")

# --- metric and L_e over the attack steps ----------------------------------------------------------------
curves = {}
for run in runs:
    t = dict(run["trajectory"])
    t["explanation_loss_paper"] = [None if v is None else in_paper_units(v) for v in t["explanation_loss"]]
    curves[run["model"]] = t
if attack == "ifia":
    panels = [(cfg["measure"], MEASURES[cfg["measure"]] + " to the original map"),
              ("explanation_loss_paper", "$L_e$ to the original map (×10$^{-7}$)")]
    log_y: tuple[str, ...] = ()
else:
    panels = [("explanation_loss_paper", "$L_e$ to the target map (×10$^{-7}$)"),
              ("output_drift", "max |Δ softmax| to the original")]
    log_y = ("explanation_loss_paper",)
long = pd.DataFrame([{"model": m, "step": s, **{key: c[key][i] for key, _ in panels}}
                     for m, c in curves.items() for i, s in enumerate(c["step"])])
st.markdown("**Over the attack steps** (every iterate, measured on the original model)")
ui.show_figure(trajectory_figure({m: {"step": c["step"], **{key: [np.nan if v is None else v for v in c[key]]
                                                           for key, _ in panels}} for m, c in curves.items()},
                                 panels, log_y=log_y), "attack_lab_trajectory", long)

# --- the panels, one tab per model -------------------------------------------------------------------------
st.markdown("**Images and maps** (the perturbation is amplified to the full grey range; maps share one colour scale)")
tabs = st.tabs([run["model"] for run in runs])
for k, (tab, run) in enumerate(zip(tabs, runs)):
    with tab:
        before, after, kept = st.columns(3)
        before.metric("Prediction before", name_of(run["pred_before"]), f"{run['conf_before']:.3f}",
                      delta_color="off", delta_arrow="off", delta_description="confidence")
        after.metric("Prediction after", name_of(run["pred_after"]), f"{run['conf_after']:.3f}",
                     delta_color="off", delta_arrow="off",
                     delta_description=f"confidence ({run['conf_after'] - run['conf_before']:+.3f})")
        kept.metric("Label kept", "yes" if run["pred_after"] == run["pred_before"] else "no")
        fig = attack_panels_figure(run["image"], run["adversarial"], run["original_map"], run["attacked_map"],
                                   run.get("target_map"))  # the tab names the model
        stem = (f"attack_lab_panels_{k}_" + run["model"].replace("/", "_"))[:64]  # k: unique if names are cut
        ui.show_figure(fig, stem, {"model": run["model"], **run["per_image"],
                                   "config": json.dumps(run["config"], sort_keys=True)})

ui.export_all("attack_lab")
