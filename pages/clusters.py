"""Clusters: Way1/2/3 victim–target pairs on a 2-D map of a reference model's features; box- or lasso-select
points to see their images and explanations; download the pair indices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
import torch

from explrobust_core.embedding import cluster_view, indices_from_selection, umap_2d
from explrobust_core.explain import EXPLAINERS, explanation_maps
from explrobust_core.figures import embedding_scatter_figure, overlay_grid_figure, overlay_rgb
from explrobust_core.metrics import explanation_loss, in_paper_units
from explrobust_core.sampling import (PairSet, cluster_explanation_loss, load_pairs, reference_features, sample_pairs,
                                      save_pairs, way3_pairs, way3_pairset)
from pages import ui

ui.page_header(
    "Clusters",
    "Which victim → target pairs an explanation-robustness evaluation attacks: Way1 draws random pairs, Way2 pairs of "
    "different labels, Way3 (the SEP paper's sampling) clusters a reference model's features with k-means and pairs "
    "prototypes (the images nearest the centroids) across clusters.",
    "Press **Show me** for Way3 on the reference model's penultimate features, drawn with PCA; then colour by "
    "cluster, label or correctness, switch to UMAP, and box- or lasso-select points to see their explanations. "
    "Download the pairs as JSON for `explrobust evaluate --pairs-file`.",
)

WAYS = {3: "Way3 — cluster prototypes, across clusters", 1: "Way1 — random pairs",
        2: "Way2 — pairs of different labels"}
FEATURES = {"penultimate": "penultimate layer", "maps": "explanation maps"}
COLOUR_BY = {"cluster": "k-means cluster", "label": "true label", "correct": "correctness"}
RESULT, UMAP_NOTE = "clusters_result", "clusters_umap_error"
CMAP, ALPHA, PER_ROW = "inferno", 0.5, 8

entries = ui.checkpoints()
if not entries:
    st.info("No checkpoints yet: train one (Training jobs page) or rebuild the shipped zoo.")
    st.stop()
names = list(entries)
default = ui.selected_models()[0]
explainers = EXPLAINERS.names()

with st.form("clusters_form"):
    left, mid, right = st.columns(3)
    model_name = left.selectbox("Reference model", names, index=names.index(default),
                                help="its features are clustered (Way3); its predictions and explanations are shown")
    split = left.radio("Split", ["test", "train"], horizontal=True)
    n_images = left.number_input("Candidate images (the first n of the split)", 20, 5000, 1000, step=100,
                                 help="pairs index these images; 1,000 answers in seconds, UMAP takes longer")
    way = mid.radio("Sampling", list(WAYS), format_func=WAYS.get)
    n_pairs = mid.number_input("Pairs (Way3: prototypes)", 10, 2000, 150, step=10, help="the SEP paper keeps 150")
    k = mid.slider("Clusters k (k-means)", 2, 30, 10, help="Way1/2 use the clusters only to colour the map")
    source = right.radio("Features to cluster", list(FEATURES), format_func=FEATURES.get, horizontal=True)
    explainer = right.selectbox("Explanation (gallery; map features)", explainers, index=explainers.index("gradient"))
    seed = right.number_input("Seed", 0, 1_000_000, 0)
    submitted = st.form_submit_button("Show me", type="primary")


def _predict(model, x: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model(x[s:s + 512].to(device)).argmax(1).cpu() for s in range(0, x.shape[0], 512)])


@st.cache_data(max_entries=8, show_spinner="Sampling pairs and clustering…")
def compute(model_name: str, split: str, n_images: int, way: int, n_pairs: int, k: int, source: str, explainer: str,
            seed: int) -> dict:
    entry = ui.checkpoints()[model_name]
    model, card = ui.load_model(str(entry.path))
    data = ui.dataset(card.dataset, split)
    n = min(int(n_images), len(data))
    x, y = data.batch(range(n))
    device = next(model.parameters()).device
    features = reference_features(model, x, source=source, explainer=explainer)
    pred = _predict(model, x)
    clusters = way3_pairs(features, n_prototypes=n_pairs, k=k, seed=seed)
    if way == 3:
        reference = f"{card.name} sha256:{(card.weights_sha256 or '')[:12]}"
        pairs = way3_pairset(clusters, dataset=card.dataset, split=split, seed=seed, reference=reference,
                             feature_source=source, k=k)
    else:
        pairs = sample_pairs(way, dataset=card.dataset, labels=y, n_pairs=n_pairs, seed=seed, split=split)
    view = cluster_view(features, y, clusters, method="pca", seed=seed, predictions=pred)
    # explanation distances among the images that take part in pairs (Way3: the prototypes)
    members = sorted({i for p in pairs.pairs for i in p})
    maps = torch.cat([explanation_maps(model, x[members[s:s + 256]].to(device), explainer, target="predicted")
                      .detach().cpu() for s in range(0, len(members), 256)])  # memory-bounded batches
    where = {i: j for j, i in enumerate(members)}
    cluster_ids = np.asarray(clusters.cluster)
    spread = cluster_explanation_loss(maps, cluster_ids[members])
    v = torch.tensor([where[a] for a, _ in pairs.pairs])
    t = torch.tensor([where[b] for _, b in pairs.pairs])
    pair_loss = explanation_loss(maps[v], maps[t]).double().numpy()
    return {"dataset": card.dataset, "classes": card.classes, "n": n, "labels": y.numpy(), "pred": pred.numpy(),
            "features": features.numpy().astype(np.float32), "cluster": cluster_ids, "prototypes": clusters.prototypes,
            "pairs_json": pairs.model_dump_json(indent=1), "view": view, "spread": spread, "pair_loss": pair_loss,
            "model_path": str(entry.path)}


@st.cache_data(max_entries=8, show_spinner=False)
def umap_coords(params: tuple) -> np.ndarray:
    result = compute(*params)
    return umap_2d(result["features"], seed=params[-1])


@st.cache_data(max_entries=32, show_spinner=False)
def gallery_maps(model_path: str, dataset: str, split: str, indices: tuple[int, ...], explainer: str):
    model, _ = ui.load_model(model_path)
    x, _ = ui.dataset(dataset, split).batch(list(indices))
    maps = explanation_maps(model, x.to(next(model.parameters()).device), explainer, target="predicted")
    return x, maps.detach().cpu()


params = (model_name, split, int(n_images), int(way), int(n_pairs), int(k), source, explainer, int(seed))
if submitted:
    try:
        st.session_state[RESULT] = {"params": params, **compute(*params)}
        st.session_state.pop(UMAP_NOTE, None)
    except (ValueError, FileNotFoundError) as err:  # e.g. k larger than the number of images, a missing dataset
        st.error(str(err))
        st.stop()
result = st.session_state.get(RESULT)
if result is None:
    st.info("Press **Show me** to sample the pairs and draw the map.")
    st.stop()

params = result["params"]
r_model, r_split, _, r_way, _, r_k, r_source, r_explainer, r_seed = params
pairs = PairSet.model_validate_json(result["pairs_json"])
labels, pred, cluster = result["labels"], result["pred"], result["cluster"]
classes = result["classes"]
spread = result["spread"]
pair_array = np.asarray(pairs.pairs, dtype=int)
crossing = float(np.mean(cluster[pair_array[:, 0]] != cluster[pair_array[:, 1]]))

# --- numbers --------------------------------------------------------------------------------------
st.subheader(f"{WAYS[r_way].split(' — ')[0]} on {r_model} ({r_split}, {result['n']} images)")
cols = st.columns(5)
cols[0].metric("Pairs", len(pairs.pairs))
cols[1].metric("Pairs across clusters", f"{crossing:.0%}", help="victim and target in different k-means clusters")
cols[2].metric("L_e of the pairs", f"{in_paper_units(float(result['pair_loss'].mean())):.3g}",
               help=f"L_e between the victim's and the target's {r_explainer} maps: what a targeted attack must bridge")
fmt = lambda v: "—" if v is None else f"{in_paper_units(v):.3g}"  # noqa: E731
cols[3].metric("L_e within clusters", fmt(spread["intra_mean"]),
               help=f"over the {spread['intra_pairs']} pairs of paired images sharing a cluster (SEP Appendix C)")
cols[4].metric("L_e between clusters", fmt(spread["inter_mean"]),
               help=f"over the {spread['inter_pairs']} pairs of paired images from different clusters")
st.caption("L_e in the SEP paper's units of 10⁻⁷: mean over pairs; within/between: over all pairs of paired "
           "images in one cluster / in different clusters (the paper's Appendix C check).")
shipped = ui.shipped_zoo_dir() / result["dataset"] / f"pairs_way{r_way}.json"
if shipped.is_file():
    try:
        same = load_pairs(shipped).pairs == pairs.pairs
    except (ValueError, FileNotFoundError):
        same = False
    if same:
        st.success(f"These are exactly the shipped `{shipped.name}` pairs, the ones every zoo model's card is "
                   "evaluated on.")
    else:
        st.caption(f"Other parameters than the shipped `{shipped.name}` (natural model, test split, first 1,000 "
                   "images, k = 10, 150 prototypes, seed 0).")

# --- the map ----------------------------------------------------------------------------------------
c1, c2, c3 = st.columns([2, 2, 1])
colour_by = c1.radio("Colour by", list(COLOUR_BY), format_func=COLOUR_BY.get, horizontal=True, key="clusters_colour")
method = c2.radio("Map", ["PCA", "UMAP"], horizontal=True, key="clusters_method",
                  help="PCA is instant; UMAP separates clusters better (its first run in a server compiles ~15 s)")
lines = c3.checkbox("Pair lines", value=True, key="clusters_lines")

if colour_by == "cluster":
    groups = np.array([f"cluster {c}" for c in cluster])
elif colour_by == "label":
    groups = np.array([classes[int(v)] for v in labels])
else:
    groups = np.where(pred == labels, "correct", "misclassified")
paired = np.zeros(result["n"], dtype=bool)
paired[pair_array.ravel()] = True
highlight_name = "prototype" if r_way == 3 else "in a pair"
highlight = paired.copy()
if r_way == 3:
    highlight[result["prototypes"]] = True


def scatter(coords: np.ndarray, name: str):
    import plotly.colors
    import plotly.graph_objects as go

    cats = sorted(set(groups.tolist()), key=lambda s: (len(s), s))
    palette = plotly.colors.qualitative.T10 if len(cats) <= 10 else plotly.colors.qualitative.Dark24
    fig = go.Figure()
    if lines and pairs.pairs:  # one trace of victim → target segments, separated by gaps
        gap = np.full(len(pair_array), np.nan)
        xs = np.stack([coords[pair_array[:, 0], 0], coords[pair_array[:, 1], 0], gap], 1).ravel()
        ys = np.stack([coords[pair_array[:, 0], 1], coords[pair_array[:, 1], 1], gap], 1).ravel()
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="rgba(90,90,90,0.35)", width=1),
                                 hoverinfo="skip", name="victim → target", showlegend=True))
    index = np.arange(result["n"])
    for n_cat, cat in enumerate(cats):
        sel = index[groups == cat]
        big = highlight[sel]
        custom = np.stack([sel, labels[sel], pred[sel], cluster[sel]], 1).tolist()
        fig.add_trace(go.Scatter(
            x=coords[sel, 0], y=coords[sel, 1], mode="markers", name=cat, customdata=custom,
            marker=dict(color=palette[n_cat % len(palette)], size=np.where(big, 10, 5),
                        symbol=np.where(big, "diamond", "circle"), line=dict(color="black", width=np.where(big, 1, 0))),
            hovertemplate="#%{customdata[0]}  label %{customdata[1]}  predicted %{customdata[2]}  "
                          "cluster %{customdata[3]}<extra></extra>"))
    fig.update_layout(height=540, dragmode="select", margin=dict(l=10, r=10, t=30, b=10), uirevision="clusters",
                      legend=dict(itemsizing="constant"),
                      title=f"{name} of the {FEATURES[r_source]} · ◆ = {highlight_name} · select with box or lasso")
    return fig


view = result["view"]
pca = np.stack([view["x"], view["y"]], 1)
have_umap = "umap" in result
chart = st.empty()
if method == "UMAP" and not have_umap and not st.session_state.get(UMAP_NOTE):
    with chart.container():
        st.plotly_chart(scatter(pca, "PCA (UMAP on its way)"), key="clusters_scatter_waiting", on_select="ignore")
    with st.spinner("Computing the UMAP map (the first run in a server process compiles for ~15 s; PCA meanwhile)…"):
        try:
            result["umap"] = umap_coords(params)
        except (ValueError, ImportError) as err:
            st.session_state[UMAP_NOTE] = str(err)
    st.rerun()
if method == "UMAP" and st.session_state.get(UMAP_NOTE) and not have_umap:
    st.warning(f"UMAP failed: {st.session_state[UMAP_NOTE]}; showing PCA.")
coords = result["umap"] if method == "UMAP" and have_umap else pca
shown_method = "UMAP" if coords is not pca else "PCA"
with chart.container():
    event = st.plotly_chart(scatter(coords, shown_method), key=f"clusters_scatter_{shown_method}", on_select="rerun",
                            selection_mode=("box", "lasso"))
table = pd.DataFrame({"image": np.arange(result["n"]), "x": coords[:, 0], "y": coords[:, 1],
                      "label": [classes[int(v)] for v in labels], "predicted": [classes[int(v)] for v in pred],
                      "cluster": cluster, "highlighted": highlight})
ui.downloads(f"clusters_map_{shown_method.lower()}",
             embedding_scatter_figure(coords[:, 0], coords[:, 1], groups, COLOUR_BY[colour_by], highlight,
                                      pairs.pairs if lines else None, highlight_name,
                                      title=f"{r_model}: {shown_method} of the {FEATURES[r_source]}",
                                      xlabel=f"{shown_method} 1", ylabel=f"{shown_method} 2"), table)

# --- gallery of the selection -------------------------------------------------------------------------
st.subheader("Images and explanations")
selected = [i for i in indices_from_selection(event.selection if event else {}) if 0 <= i < result["n"]]
limit = st.slider("Images in the gallery (at most)", 8, 64, 24, step=8, key="clusters_gallery_size")
if selected:
    selected.sort(key=lambda i: not highlight[i])  # prototypes / paired images first
    shown = selected[:limit]
    st.caption(f"{len(selected)} images selected in the map; showing {len(shown)}. Clear the selection "
               "(double-click the map) to browse pairs or clusters.")
else:
    options = ["pairs: victim, target, victim, target, …"] + [f"cluster {c}: prototypes first" for c in range(r_k)]
    choice = st.selectbox("Nothing selected in the map — show", options, key="clusters_gallery_choice")
    if choice.startswith("pairs"):
        shown = [i for p in pairs.pairs[: limit // 2] for i in p]
    else:
        c = int(choice.split()[1].rstrip(":"))
        protos = [p for p in result["prototypes"] if cluster[p] == c]
        is_proto = set(protos)
        rest = [i for i in np.flatnonzero(cluster == c).tolist() if i not in is_proto]
        shown = (protos + rest)[:limit]
if not shown:
    st.info("No images to show.")
else:
    try:
        images, maps = gallery_maps(result["model_path"], result["dataset"], r_split, tuple(shown), r_explainer)
    except ValueError as err:  # an explainer that does not fit this architecture
        st.error(str(err))
        st.stop()
    role = {}
    for a, b in pairs.pairs:
        role.setdefault(a, "V")
        role.setdefault(b, "T")
    captions = [f"#{i} {classes[int(labels[i])]}→{classes[int(pred[i])]} c{cluster[i]}"
                + (f" {role[i]}" if i in role else "") for i in shown]
    for start in range(0, len(shown), PER_ROW):
        row = st.columns(PER_ROW)
        for col, j in zip(row, range(start, min(len(shown), start + PER_ROW))):
            col.image(overlay_rgb(images[j], maps[j], CMAP, ALPHA), caption=captions[j], width="stretch")
    st.caption(f"{r_explainer} maps of {r_model} for its predicted class; caption: image, label → prediction, "
               "cluster, V/T = victim/target of a pair.")
    rows = pd.DataFrame({"image": shown, "label": [classes[int(labels[i])] for i in shown],
                         "predicted": [classes[int(pred[i])] for i in shown],
                         "cluster": [int(cluster[i]) for i in shown],
                         "role": [role.get(i, "") for i in shown]})
    ui.downloads("clusters_gallery", overlay_grid_figure(images, maps, captions, CMAP, ALPHA, PER_ROW), rows)

# --- clusters and pairs as tables ------------------------------------------------------------------
with st.expander("Clusters and pairs as tables", expanded=False):
    frame = pd.DataFrame({"cluster": cluster, "label": labels, "correct": pred == labels, "prototype": highlight})
    per_cluster = frame.groupby("cluster").agg(images=("label", "size"), highlighted=("prototype", "sum"),
                                               majority_label=("label", lambda s: classes[int(s.mode().iloc[0])]),
                                               purity=("label", lambda s: float(s.value_counts(normalize=True).max())),
                                               accuracy=("correct", "mean")).reset_index()
    st.dataframe(per_cluster, hide_index=True, width="stretch",
                 column_config={"purity": st.column_config.NumberColumn(format="percent"),
                                "accuracy": st.column_config.NumberColumn(format="percent")})
    ui.downloads("clusters_table", data=per_cluster)
    pair_rows = pd.DataFrame({"victim": pairs.victims, "target": pairs.targets,
                              "victim_label": [classes[int(labels[a])] for a in pairs.victims],
                              "target_label": [classes[int(labels[b])] for b in pairs.targets],
                              "victim_cluster": [int(cluster[a]) for a in pairs.victims],
                              "target_cluster": [int(cluster[b]) for b in pairs.targets],
                              "L_e ×1e-7": in_paper_units(result["pair_loss"])})
    st.dataframe(pair_rows, hide_index=True, width="stretch")
    ui.downloads("clusters_pairs", data=pair_rows)

# --- the pair file ----------------------------------------------------------------------------------
file_name = f"pairs_way{r_way}.json"
st.download_button(f"Download the pair indices ({file_name})", result["pairs_json"].encode(), file_name=file_name,
                   mime="application/json", key="clusters_pair_file", on_click="ignore", type="primary")
ui.add_export(file_name, result["pairs_json"].encode())  # into the page's zip
if st.button("Save it in the runs folder", key="clusters_save",
             help="$EXPLROBUST_RUNS/pairs/ (default ~/.explrobust/runs/pairs/), named after its parameters"):
    from explrobust_core.io import runs_dir

    stem = f"{result['dataset']}-{r_split}-way{r_way}-{r_model.split('/')[-1]}-n{result['n']}-k{r_k}-seed{r_seed}"
    try:
        saved = save_pairs(pairs, runs_dir() / "pairs" / f"{stem}.json")
    except OSError as err:  # a read-only or missing runs folder
        st.error(f"Could not save the pairs: {err}")
    else:
        st.success(f"Saved {saved}")
st.caption(f"Load it with `explrobust_core.sampling.load_pairs`, or evaluate any model of the {result['dataset']} "
           f"zoo on it: `explrobust evaluate --checkpoint … --pairs-file {file_name}`.")
ui.export_all("clusters")
