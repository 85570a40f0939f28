"""Loss landscape: cross-entropy and explanation loss around an input, along one direction (1D, models overlaid)
and over a plane (2D, one row per model), with the clean point, attack endpoints and curvature numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st
import torch

from explrobust_core.explain import EXPLAINERS
from explrobust_core.figures import landscape_1d_figure, landscape_2d_figure, log_floor, overlay_rgb
from explrobust_core.landscape import LandscapeConfig, landscape_of_images
from explrobust_core.metrics import in_paper_units
from pages import ui

ui.page_header(
    "Loss landscape",
    "How the classification loss (cross-entropy) and the explanation loss L_e change when an input moves: along a "
    "direction (1D) and over a plane (2D), on identical axes. A flat, low CE surface means robust predictions; a flat "
    "L_e surface means robust explanations — the question is whether the two go together.",
    "Press **Show me** for the FGSM direction (sign of ∇CE) around the first test image, with the PGD and IFIA "
    "attack endpoints projected in; pick several models to compare; curvature numbers (Hessian trace, top "
    "eigenvalue) summarise each surface.",
)

RESULT = "landscape_result"
DIRECTIONS = {"adversarial": "adversarial: sign ∇ₓ CE (FGSM)", "random": "random ±1 (Rademacher)",
              "explanation": "explanation: first step of the top-k attack"}
SHOW = {"both": "1D curves and 2D surfaces", "1d": "1D curves", "2d": "2D surfaces"}
CURVATURE = {"mean_abs_delta": "mean |Δloss|", "hessian_trace": "Hessian trace", "top_eigenvalue": "top eigenvalue"}
LOSSES = {"change": "L_e to its own clean map", "target": "L_e to a target image's map"}
explainers = EXPLAINERS.names("differentiable")
limits = LandscapeConfig.model_fields["points"].metadata  # keep the config's caps (ge/le)
max_points = next((m.le for m in limits if getattr(m, "le", None) is not None), 101)

with st.form("landscape_form"):
    models = ui.model_picker("Models (1D: overlaid; 2D: one row each)")
    left, mid, right = st.columns(3)
    split = left.radio("Split", ["test", "train"], horizontal=True)
    first = left.number_input("Image (index in the split)", 0, 10_000_000, 0)
    count = left.number_input("Images to average over", 1, 64, 1, help="from that index on; the curves are means")
    show = left.radio("Show", list(SHOW), format_func=SHOW.get, horizontal=True)
    direction = mid.selectbox("Direction 1", list(DIRECTIONS), format_func=DIRECTIONS.get,
                              help="in 2D, direction 2 is random, made orthogonal to direction 1 and of equal norm")
    radius = mid.number_input("Radius (pixel units, L∞ for sign directions)", 0.01, 2.0, 0.3, step=0.05)
    points_1d = mid.number_input("Points along 1D", 3, max_points, 41, step=2, help="odd: the centre is the input")
    points_2d = mid.number_input("Points per 2D axis", 3, max_points, 21, step=2, help="the grid has this squared")
    loss = right.radio("Explanation loss", list(LOSSES), format_func=LOSSES.get)
    target = right.number_input("Target image (for the target loss)", 0, 10_000_000, 1)
    explainer = right.selectbox("Explanation method", explainers, index=explainers.index("gradient_x_input"))
    eps = right.number_input("Attack ε and curvature radius", 0.01, 1.0, 0.1, step=0.05)
    a1, a2, a3, a4 = st.columns(4)
    mark_pgd = a1.checkbox("PGD endpoint (20 steps)", value=True)
    mark_ifia = a2.checkbox("IFIA top-k endpoint (30 steps)", value=True)
    curvature = a3.checkbox("Curvature numbers", value=True, help="Hutchinson trace and power iteration on the "
                                                                   "Softplus view (16 samples, 20 iterations)")
    seed = a4.number_input("Seed (random direction)", 0, 1_000_000, 0)
    submitted = st.form_submit_button("Show me", type="primary")


def model_landscape(model_name: str, split: str, first: int, count: int, target: int | None, config: dict,
                    dims: tuple[int, ...], points_2d: int, eps: float, pgd: bool, ifia: bool, curvature: bool,
                    on_view) -> dict:
    """One model's landscapes, once per server and parameter set; ``on_view(model, "1d" | "2d", view)`` sees each
    view as soon as it is done."""
    weights, mtime_ns = ui.model_file(model_name)

    def compute() -> dict:
        model, card = ui.load_model(weights)
        view = landscape_of_images(model, ui.dataset(card.dataset, split), first, count, config, target=target,
                                   dims=dims, points_2d=points_2d, attack_eps=eps, pgd_steps=20 if pgd else 0,
                                   ifia_steps=30 if ifia else 0, curvature=curvature,
                                   on_view=lambda d, v: on_view(model_name, d, v))
        return {**view, "classes": card.classes}

    key = ("landscape", model_name, weights, mtime_ns, split, first, count, target, json.dumps(config, sort_keys=True),
           dims, points_2d, eps, pgd, ifia, curvature)
    return ui.computed(key, compute, max_entries=32)


# --- compute on submit, keep the last result ------------------------------------------------------------
def run_all() -> dict:
    datasets = {ui.checkpoints()[m].card.dataset for m in models}
    if not models:
        raise ValueError("Choose at least one model.")
    if len(datasets) > 1:
        raise ValueError(f"The chosen models were trained on different datasets ({', '.join(sorted(datasets))}); "
                         "pick one.")
    dims = {"both": (1, 2), "1d": (1,), "2d": (2,)}[show]
    losses = ["ce", "explanation_change" if loss == "change" else "explanation_target"]
    config = LandscapeConfig(direction=direction, radius=radius, points=int(points_1d), losses=losses,
                             explainer=explainer, seed=int(seed)).model_dump(mode="json")
    if int(points_2d) % 2 == 0:
        raise ValueError("points per 2D axis must be odd so that the grid's centre is the clean input")
    results, curves = {}, []
    progress, preview = st.progress(0.0, text="Computing the landscapes…"), st.empty()

    def on_view(name: str, dim: str, view: dict) -> None:  # the 1D curves while the rest is computed
        progress.progress((len(results) + 0.5) / len(models), text=f"{name}: {dim.upper()} done; "
                          + ("2D surface, curvature…" if dim == "1d" else "curvature…"))
        if dim == "1d":
            for key, label in (("ce", "CE"), (losses[1], "L_e ×1e-7")):
                scale = 1.0 if key == "ce" else in_paper_units(1.0)
                values = view["mean"][key].detach().cpu().numpy() * scale
                curves.extend({"a": a, "loss": v, "curve": f"{name} {label}"} for a, v in zip(view["axis"], values))
            ui.live_lines(preview, curves, "a", "loss", "curve", "a (direction 1)", "loss (1D, so far)")

    for i, name in enumerate(models):
        progress.progress(i / len(models), text=f"{name}: attack endpoints, landscapes, curvature…")
        results[name] = model_landscape(name, split, int(first), int(count), int(target) if loss == "target" else None,
                                        config, dims, int(points_2d), float(eps), mark_pgd, mark_ifia, curvature,
                                        on_view)
    progress.empty()
    preview.empty()
    return {"models": list(models), "results": results, "dims": dims, "loss": losses[1], "direction": direction,
            "first": int(first), "count": int(count), "split": split, "eps": float(eps)}


# invalid settings, a missing dataset, an unfit explainer: a message
state = ui.result_of(RESULT, submitted, run_all, "Press **Show me** to draw the landscapes.")
results, expl = state["results"], state["loss"]
labels = {"ce": "cross-entropy", expl: LOSSES["change" if expl == "explanation_change" else "target"] + " (×10⁻⁷)"}
scale = {"ce": 1.0, expl: in_paper_units(1.0)}
what = f"image {state['first']}" if state["count"] == 1 else f"mean over images {state['first']}…" \
                                                            f"{state['first'] + state['count'] - 1}"
log = st.toggle("Logarithmic scale (1D: cross-entropy axis; 2D: colours)", value=True, key="landscape_log")

# --- numbers ----------------------------------------------------------------------------------------
rows = []
for name, res in results.items():
    rep = res["report"]
    s = rep["summary"]
    view = rep["extra"]["1d" if 1 in state["dims"] else "2d"]
    centre = len(view["axis"]) // 2
    ce_grid = np.asarray(view["mean"]["ce"])
    row = {"model": name, "clean CE": s["clean_ce"],
           "CE at the grid centre": float(ce_grid[centre] if ce_grid.ndim == 1 else ce_grid[centre, centre])}
    for attack in ("PGD", "IFIA"):
        if attack in s:
            row.update({f"{attack} CE": s[attack]["ce"],
                        f"{attack} L_e ×1e-7": in_paper_units(s[attack]["explanation_change"]),
                        f"{attack} share in the plane": s[attack].get("in_plane_2d", s[attack].get("in_plane_1d"))})
    for key, value in s.get("curvature", {}).items():
        loss_name, measure = ("CE", key[3:]) if key.startswith("ce_") else ("L_e", key[len("explanation_change_"):])
        unit = "" if loss_name == "CE" else " ×1e-7"
        row[f"{loss_name} {CURVATURE.get(measure, measure)}{unit}"] = value if not unit else in_paper_units(value)
    row["seconds"] = rep["seconds"]
    rows.append(row)
numbers = pd.DataFrame(rows)
st.subheader(f"Numbers ({what}, {state['split']} split)")
st.dataframe(numbers, hide_index=True, width="stretch")
st.caption("CE at the grid centre equals the clean CE (the grid's centre is the input itself). Attack rows: the "
           "endpoint's true losses (L_e to the clean map) and the share ‖projection‖/‖perturbation‖ of the "
           f"perturbation that lies in the plotted plane. Curvature at radius ε = {state['eps']:g} on the Softplus "
           "view: mean |Δloss|, Hessian trace (Hutchinson) and top eigenvalue (power iteration), per loss.")
ui.downloads("landscape_numbers", data=numbers)

# --- 1D curves ---------------------------------------------------------------------------------------
xlabel = {"adversarial": "step a along sign ∇ₓCE (L∞, pixel units)", "random": "step a along a random ±1 direction",
          "explanation": "step a along the explanation-attack direction"}[state["direction"]]
if 1 in state["dims"]:
    st.subheader("1D: along direction 1")
    axis = np.asarray(next(iter(results.values()))["report"]["extra"]["1d"]["axis"])
    curves = {name: {loss: np.asarray(res["report"]["extra"]["1d"]["mean"][loss]) * scale[loss] for loss in labels}
              for name, res in results.items()}
    ends = {name: {att: float(np.mean(np.asarray(e["coordinates"])[:, 0]))
                   for att, e in res["report"]["extra"]["1d"]["endpoints"].items()} for name, res in results.items()}
    table = pd.DataFrame({"a": axis, **{f"{name} {loss}": v for name, c in curves.items() for loss, v in c.items()}})
    ce_values = np.concatenate([c["ce"] for c in curves.values()])
    if log and (ce_values <= 0).any():  # float32 cross-entropy underflows to 0 where a model is certain
        floor = log_floor(ce_values)
        st.caption(f"{int((ce_values <= 0).sum())} cross-entropy values are 0 (the model is certain there): "
                   + ("the log axis cannot show a curve of zeros, so it stays linear." if floor is None else
                      f"the log axis shows them at the smallest positive value, {floor:.3g}."))
    ui.show_figure(landscape_1d_figure(axis, curves, labels, ends, log_y=("ce",) if log else False, xlabel=xlabel,
                                       title=what), "landscape_1d", table)

# --- 2D surfaces -------------------------------------------------------------------------------------
if 2 in state["dims"]:
    st.subheader("2D: direction 1 × an orthogonal random direction")
    axis = np.asarray(next(iter(results.values()))["report"]["extra"]["2d"]["axis"])
    grids = {name: {loss: np.asarray(res["report"]["extra"]["2d"]["mean"][loss]) * scale[loss] for loss in labels}
             for name, res in results.items()}
    ends = {name: {att: np.asarray(e["coordinates"]) for att, e in res["report"]["extra"]["2d"]["endpoints"].items()}
            for name, res in results.items()}
    A, B = np.meshgrid(axis, axis, indexing="ij")
    table = pd.DataFrame({"a": A.ravel(), "b": B.ravel(),
                          **{f"{name} {loss}": g.ravel() for name, gs in grids.items() for loss, g in gs.items()}})
    # on screen the contours (the 3-D view is interactive, below); the files also draw each surface in 3-D
    ui.show_figure(landscape_2d_figure(axis, grids, labels, ends, log_colour=log, surface=False,
                                       title=f"{what}; a: {xlabel}"), "landscape_2d", table,
                   export=lambda a=axis, g=grids, e=ends: landscape_2d_figure(a, g, labels, e, log_colour=log,
                                                                              title=f"{what}; a: {xlabel}"))

    @st.fragment  # its widgets rerun only this part, not the figures above
    def surface_3d() -> None:
        import plotly.graph_objects as go

        if not st.toggle("Interactive 3-D surface", key="landscape_3d_on", help="drawn on demand"):
            return
        with st.container(border=True):
            c1, c2 = st.columns(2)
            pick = c1.selectbox("Model", list(grids), key="landscape_3d_model")
            which = c2.selectbox("Loss", list(labels), format_func=labels.get, key="landscape_3d_loss")
            z = grids[pick][which]
            fig = go.Figure(go.Surface(x=axis, y=axis, z=z.T, colorscale="Viridis"))  # plotly: z[row = y, col = x]
            fig.update_layout(height=520, margin=dict(l=0, r=0, t=10, b=0),
                              scene=dict(xaxis_title="a (direction 1)", yaxis_title="b (direction 2)",
                                         zaxis_title=labels[which]))
            st.plotly_chart(fig, key="landscape_3d")

    surface_3d()

# --- the inputs ----------------------------------------------------------------------------------------
with st.expander("The input and the attack endpoints"):
    for name, res in results.items():
        classes = res["classes"]
        cols = st.columns(8)
        cols[0].markdown(f"**{name}**")
        for col, (kind, image) in zip(cols[1:], res["images"].items()):
            col.image(overlay_rgb(image, torch.zeros(image.shape[-2:]), alpha=0.0), width="stretch",
                      caption=f"{kind}: label {classes[res['label']]} → {classes[res['preds'][kind]]}")
ui.export_all("landscape")
