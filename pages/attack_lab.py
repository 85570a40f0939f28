"""Attack lab: attack one image's explanation on every chosen model at once, keeping the prediction. The form is
generated from the chosen attack's typed config (same fields, defaults and ranges as the CLI)."""

import json

import numpy as np
import pandas as pd
import streamlit as st

from explrobust_core.attacks.explanation import EXPLANATION_ATTACKS, attack_info, curve_label
from explrobust_core.attacks.one_image import attack_image, needs_targets
from explrobust_core.explain import EXPLAINERS
from explrobust_core.figures import attack_panels_figure, image_to_display, trajectory_figure
from explrobust_core.metrics import in_paper_units
from pages import ui

RESULT = "attack_lab_result"
# fields the page sets itself (above the form); the table's columns, the curves' labels and the form's defaults
# come from each attack's registry entry
SET_ABOVE = ("explainer", "explainer_options")

ui.page_header(
    "Attack lab",
    "What: an explanation attack adds an imperceptible perturbation that changes the explanation map of an "
    "image while the model's prediction stays the same — untargeted (IFIA: move the map away from itself) or "
    "targeted (drive the map toward another image's map).",
    "How: pick an image (and a target image), press **Show me**: the same attack runs on every chosen model, "
    "so robustly trained models (PGD-AT, SEP_pos, SEP_neg, …) can be compared row by row.",
)

models, dataset_name, data = ui.models_and_data("an attack on one image needs models of one dataset.")
classes = data.info.classes
labels = ui.labels(data)


def thumbnail(index: int) -> np.ndarray:
    """The image enlarged by pixel repetition (crisp in the browser)."""
    arr = image_to_display(data[index][0])
    scale = max(1, 112 // max(arr.shape[:2]))
    return np.kron(arr, np.ones((scale, scale) + (1,) * (arr.ndim - 2))).clip(0, 1)



# --- the image(s): outside the form so the preview follows the choice ---------------------------------
attacks = EXPLANATION_ATTACKS.names()
pick, preview, pick_t, preview_t = st.columns([2, 1, 2, 1])
attack = pick.radio("Attack", attacks, horizontal=True, key="attack_lab_kind",
                    format_func=lambda a: EXPLANATION_ATTACKS.get(a).summary.split(":")[0])
targeted = needs_targets(attack)
index = int(pick.number_input(f"Image index ({dataset_name}, test split: 0–{len(data) - 1})", 0, len(data) - 1, 0,
                              key="attack_lab_index"))
preview.image(thumbnail(index), caption=f"#{index}: {classes[int(labels[index])]}", width=112)
other = (labels != labels[index]).nonzero()  # by default the first image of another class
# always drawn (disabled for untargeted attacks) so that the chosen target survives switching attacks; keyed, so
# the default applies only when the widget is first drawn
target_index = int(pick_t.number_input(f"Target image index (0–{len(data) - 1})", 0, len(data) - 1,
                                       int(other[0]) if len(other) else 0, key="attack_lab_target",
                                       disabled=not targeted,
                                       help="targeted attacks drive the victim's map toward this image's map"))
if targeted:
    preview_t.image(thumbnail(target_index), caption=f"target #{target_index}: "
                                                    f"{classes[int(labels[target_index])]}", width=112)
else:
    target_index = None

entry = EXPLANATION_ATTACKS.get(attack)
differentiable = EXPLAINERS.names("differentiable")
with st.form("attack_lab_form"):
    st.caption(f"**{attack}** — {entry.summary}")
    columns = st.columns(3)
    explainer = columns[0].selectbox("Explanation method", differentiable, index=differentiable.index("gradient"),
                                     help="the attack differentiates through this method (ReLU models: through "
                                          "their Softplus(β) twin); results are measured on the original model")
    samples = columns[0].number_input("IG steps / SmoothGrad & GradientSHAP samples", 1, 256, 16,
                                      help="only for integrated gradients, SmoothGrad and GradientSHAP")
    values = ui.config_inputs(entry.config, f"attack_lab-{attack}", skip=SET_ABOVE,
                              overrides=attack_info(attack).form_defaults or None, columns=columns)
    submitted = st.form_submit_button("Show me", type="primary")


def attack_config() -> dict:
    fields = EXPLAINERS.get(explainer).config.model_fields
    options = {name: int(samples) for name in ("n_steps", "n_samples") if name in fields}
    chosen = {"explainer": explainer, "explainer_options": options}  # only the fields this attack has
    cfg = entry.resolve(values, **{k: v for k, v in chosen.items() if k in entry.config.model_fields})
    height, width = data.info.input_shape[-2:]
    for name in ("k", "eval_k"):
        if getattr(cfg, name, 0) > height * width:
            raise ValueError(f"{name}={getattr(cfg, name)} is larger than the map ({height * width} pixels); "
                             f"choose {name} ≤ {height * width}")
    return cfg.model_dump(mode="json")


@st.cache_data(show_spinner=False, max_entries=128)
def attack_one(model_name: str, weights: str, mtime_ns: int, dataset: str, index: int, target: int | None,
               attack: str, config_json: str) -> dict:
    """One model's attack on one image (cached per parameter set; the progress bar replays on a hit)."""
    model, _ = ui.load_model(weights)
    data = ui.dataset(dataset, "test")
    bar = st.progress(0.0, text=f"{model_name}: starting the attack…")
    last = [-1]

    def progress(done: int, total: int) -> None:
        percent = int(100 * done / total)
        if percent != last[0]:  # at most 100 updates per run
            last[0] = percent
            bar.progress(percent / 100, text=f"{model_name}: step {done}/{total}")

    run = attack_image(model, data.batch([index])[0], attack, json.loads(config_json),
                       data.batch([target])[0] if target is not None else None, progress)
    bar.empty()
    return {"model": model_name, **run}


def run_all() -> dict:
    cfg = attack_config()
    runs = [attack_one(name, *ui.model_file(name), dataset_name, index, target_index, attack,
                       json.dumps(cfg, sort_keys=True)) for name in models]
    return {"attack": attack, "config": cfg, "index": index, "target": target_index, "dataset": dataset_name,
            "runs": runs}


shown = ui.result_of(RESULT, submitted, run_all, "Press **Show me** to attack the image on every chosen model.",
                     prefix="Cannot run this attack: ", errors=(ValueError,),  # ConfigError included
                     out_of_memory="The attack ran out of accelerator memory: use fewer IG steps / samples or "
                                   "fewer models.")
runs, cfg, shown_attack = shown["runs"], shown["config"], shown["attack"]
shown_targeted = shown["target"] is not None
st.subheader(f"{shown_attack}{' (' + cfg['objective'] + ')' if 'objective' in cfg else ''} attack on "
             f"{shown['dataset']} test #{shown['index']}" + (f" → target #{shown['target']}" if shown_targeted else "")
             + "".join(f", {cfg[k]}{unit}" for k, unit in (("explainer", ""), ("steps", " steps")) if k in cfg)
             + (f", ε = {cfg['eps']:g}" if cfg.get("eps") else ""))
st.caption(f"True class of the image: {classes[int(labels[shown['index']])]}"
           + (f"; of the target: {classes[int(labels[shown['target']])]}" if shown_targeted else "")
           + ". Every attack keeps each model's own prediction.")
if (shown["index"], shown["target"], shown_attack) != (index, target_index, attack):
    st.caption("These are the results of the last run; press **Show me** to attack the image chosen above.")


def name_of(c: int) -> str:
    return classes[c] if 0 <= c < len(classes) else str(c)


# --- the comparison table: one row per model ------------------------------------------------------------
rows = []
for run in runs:
    p = run["per_image"]
    row = {"model": run["model"], "prediction before": name_of(run["pred_before"]),
           "confidence before": run["conf_before"], "prediction after": name_of(run["pred_after"]),
           "confidence after": run["conf_after"], "label kept": run["pred_after"] == run["pred_before"]}
    if "target_label" in p:
        row["target class"] = name_of(int(p["target_label"]))
    for column in attack_info(shown_attack).columns:
        if column.key in p:
            row[column.label] = None if p[column.key] is None else p[column.key] * column.scale
    row["L∞"] = p.get("linf")
    start, end = p.get("explanation_loss_start_paper"), p.get("explanation_loss_end_paper")
    if "explanation_loss_end_paper" in p:
        row["L_e drop (%)"] = None if end is None or not start else 100 * (start - end) / start
    rows.append({**row, "seconds": run["seconds"]})
table = pd.DataFrame(rows)
st.markdown("**All chosen models under the same attack** (metrics compare the attacked map with the original map"
            + ("; L_e is the explanation loss to the target map, as the SEP paper" if shown_targeted else "") + ")")
st.dataframe(table, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.4g") for c in table.columns
                            if table[c].dtype.kind == "f"})
ui.downloads("attack_lab_models", data=table)
unattacked = [run["model"] for run in runs if not run["per_image"].get("attacked", True)]
if unattacked:
    st.warning(f"No iterate kept the prediction on {', '.join(unattacked)}: the attack failed there, and its "
               "metrics are left out (shown empty) rather than scored as robust.")

# --- metric and L_e over the attack steps ----------------------------------------------------------------
curves = {}
for run in runs:
    t = {k: v for k, v in run["trajectory"].items() if k == "step" or curve_label(shown_attack, k)}
    if "explanation_loss" in run["trajectory"]:
        t["L_e"] = [None if v is None else in_paper_units(v) for v in run["trajectory"]["explanation_loss"]]
    curves[run["model"]] = t
le_label = f"$L_e$ to the {'target' if shown_targeted else 'original'} map (×10$^{{-7}}$)"
keys = [k for k in next(iter(curves.values())) if k != "step"]
panels = [(k, le_label if k == "L_e" else curve_label(shown_attack, k))
          for k in sorted(keys, key=lambda k: (k == "L_e") != shown_targeted)]  # L_e first for targeted attacks
long = pd.DataFrame([{"model": m, "step": s, **{key: c[key][i] for key, _ in panels}}
                     for m, c in curves.items() for i, s in enumerate(c["step"])])
if panels:  # an attack that records no curves has no trajectory to draw
    st.markdown("**Over the attack steps** (every recorded iterate, measured on the original model)")
    ui.show_figure(trajectory_figure({m: {"step": c["step"], **{key: [np.nan if v is None else v for v in c[key]]
                                                               for key, _ in panels}} for m, c in curves.items()},
                                     panels, log_y=("L_e",) if shown_targeted else ()), "attack_lab_trajectory", long)

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
