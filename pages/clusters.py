"""Clusters: Way1/2/3 victim–target pairs on a 2-D map of a reference model's features; box- or lasso-select
points to see their images and explanations; download the pair indices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from explrobust_core.clusters import COLOUR_BY, batched_maps, cluster_pairs, cluster_table, pair_table
from explrobust_core.embedding import indices_from_selection, umap_2d
from explrobust_core.explain import EXPLAINERS
from explrobust_core.figures import cluster_scatter_plotly, embedding_scatter_figure, overlay_grid_figure, overlay_rgb
from explrobust_core.metrics import in_paper_units
from explrobust_core.sampling import load_pairs, save_pairs
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



@st.cache_data(max_entries=8, show_spinner="Sampling pairs and clustering…")
def compute(model_name: str, mtime_ns: int, split: str, n_images: int, way: int, n_pairs: int, k: int, source: str,
            explainer: str, seed: int) -> dict:
    path = str(ui.checkpoints()[model_name].path)  # mtime_ns: a file replaced on disk is computed anew
    with ui.model_in_use(path) as (model, card):
        data = ui.dataset(card.dataset, split)
        x, y = data.batch(range(min(int(n_images), len(data))))
        view = cluster_pairs(model, x, y, way=way, n_pairs=n_pairs, k=k, dataset=card.dataset, split=split,
                             source=source, explainer=explainer, seed=seed,
                             reference=f"{card.name} sha256:{(card.weights_sha256 or '')[:12]}")
    return {"view": view, "dataset": card.dataset, "classes": card.classes, "model_path": path,
            "pairs_json": view.pairs.model_dump_json(indent=1)}


@st.cache_data(max_entries=8, show_spinner=False)
def umap_coords(params: tuple) -> np.ndarray:
    return umap_2d(compute(*params)["view"].features, seed=params[-1])


@st.cache_data(max_entries=32, show_spinner=False)
def gallery_maps(model_path: str, mtime_ns: int, dataset: str, split: str, indices: tuple[int, ...], explainer: str):
    x, _ = ui.dataset(dataset, split).batch(list(indices))
    with ui.model_in_use(model_path) as (model, _):
        return x, batched_maps(model, x, explainer)


params = (model_name, ui.model_file(model_name)[1], split, int(n_images), int(way), int(n_pairs), int(k), source,
          explainer, int(seed))
# e.g. k larger than the number of images, a missing dataset: a message
result = ui.result_of(RESULT, submitted, lambda: {"params": params, **compute(*params)},
                      "Press **Show me** to sample the pairs and draw the map.")
if submitted:
    st.session_state.pop(UMAP_NOTE, None)

params = result["params"]
r_model, r_mtime, r_split, _, r_way, _, r_k, r_source, r_explainer, r_seed = params
view, classes = result["view"], result["classes"]
pairs, cluster, spread = view.pairs, view.cluster, view.spread

# --- numbers --------------------------------------------------------------------------------------
st.subheader(f"{WAYS[r_way].split(' — ')[0]} on {r_model} ({r_split}, {view.n} images)")
cols = st.columns(5)
cols[0].metric("Pairs", len(pairs.pairs))
cols[1].metric("Pairs across clusters", f"{view.crossing():.0%}", help="victim and target in different k-means clusters")
cols[2].metric("L_e of the pairs", f"{in_paper_units(float(view.pair_loss.mean())):.3g}",
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
groups, highlight = view.groups(colour_by, classes), view.highlighted()
highlight_name = "prototype" if r_way == 3 else "in a pair"
hover = np.stack([np.arange(view.n), view.labels, view.pred, cluster], 1)


def scatter(coords: np.ndarray, name: str):
    return cluster_scatter_plotly(coords, groups, highlight, pairs.pairs if lines else None, hover, highlight_name,
                                  title=f"{name} of the {FEATURES[r_source]}")


have_umap = "umap" in result
chart = st.empty()
if method == "UMAP" and not have_umap and not st.session_state.get(UMAP_NOTE):
    with chart.container():
        st.plotly_chart(scatter(view.pca, "PCA (UMAP on its way)"), key="clusters_scatter_waiting", on_select="ignore")
    with st.spinner("Computing the UMAP map (the first run in a server process compiles for ~15 s; PCA meanwhile)…"):
        try:
            result["umap"] = umap_coords(params)
        except (ValueError, ImportError) as err:
            st.session_state[UMAP_NOTE] = str(err)
    st.rerun()
if method == "UMAP" and st.session_state.get(UMAP_NOTE) and not have_umap:
    st.warning(f"UMAP failed: {st.session_state[UMAP_NOTE]}; showing PCA.")
coords = result["umap"] if method == "UMAP" and have_umap else view.pca
shown_method = "UMAP" if coords is not view.pca else "PCA"
with chart.container():
    event = st.plotly_chart(scatter(coords, shown_method), key=f"clusters_scatter_{shown_method}", on_select="rerun",
                            selection_mode=("box", "lasso"))
names_of = lambda values: [classes[int(v)] for v in values]  # noqa: E731
table = pd.DataFrame({"image": np.arange(view.n), "x": coords[:, 0], "y": coords[:, 1],
                      "label": names_of(view.labels), "predicted": names_of(view.pred), "cluster": cluster,
                      "highlighted": highlight})
ui.downloads(f"clusters_map_{shown_method.lower()}",  # the figure is built only when downloaded
             lambda: embedding_scatter_figure(coords[:, 0], coords[:, 1], groups, COLOUR_BY[colour_by], highlight,
                                              pairs.pairs if lines else None, highlight_name,
                                              title=f"{r_model}: {shown_method} of the {FEATURES[r_source]}",
                                              xlabel=f"{shown_method} 1", ylabel=f"{shown_method} 2"), table)

# --- gallery of the selection -------------------------------------------------------------------------
st.subheader("Images and explanations")
selected = [i for i in indices_from_selection(event.selection if event else {}) if 0 <= i < view.n]
limit = st.slider("Images in the gallery (at most)", 8, 64, 24, step=8, key="clusters_gallery_size")
if selected:
    selected.sort(key=lambda i: not highlight[i])  # prototypes / paired images first
    shown = selected[:limit]
    st.caption(f"{len(selected)} images selected in the map; showing {len(shown)}. Clear the selection "
               "(double-click the map) to browse pairs or clusters.")
else:
    options = [None, *range(r_k)]
    choice = st.selectbox("Nothing selected in the map — show", options, key="clusters_gallery_choice",
                          format_func=lambda c: "pairs: victim, target, victim, target, …" if c is None
                          else f"cluster {c}: prototypes first")
    shown = view.gallery(choice, limit)
if not shown:
    st.info("No images to show.")
else:
    try:
        images, maps = gallery_maps(result["model_path"], r_mtime, result["dataset"], r_split, tuple(shown),
                                    r_explainer)
    except ValueError as err:  # an explainer that does not fit this architecture
        st.error(str(err))
        st.stop()
    role = view.roles()
    captions = [f"#{i} {classes[int(view.labels[i])]}→{classes[int(view.pred[i])]} c{cluster[i]}"
                + (f" {role[i]}" if i in role else "") for i in shown]
    for start in range(0, len(shown), PER_ROW):
        row = st.columns(PER_ROW)
        for col, j in zip(row, range(start, min(len(shown), start + PER_ROW))):
            col.image(overlay_rgb(images[j], maps[j], CMAP, ALPHA), caption=captions[j], width="stretch")
    st.caption(f"{r_explainer} maps of {r_model} for its predicted class; caption: image, label → prediction, "
               "cluster, V/T = victim/target of a pair.")
    rows = pd.DataFrame({"image": shown, "label": names_of(view.labels[shown]), "predicted": names_of(view.pred[shown]),
                         "cluster": [int(cluster[i]) for i in shown], "role": [role.get(i, "") for i in shown]})
    ui.downloads("clusters_gallery", lambda: overlay_grid_figure(images, maps, captions, CMAP, ALPHA, PER_ROW), rows)

# --- clusters and pairs as tables ------------------------------------------------------------------
with st.expander("Clusters and pairs as tables", expanded=False):
    per_cluster = cluster_table(view, classes)
    st.dataframe(per_cluster, hide_index=True, width="stretch",
                 column_config={"purity": st.column_config.NumberColumn(format="percent"),
                                "accuracy": st.column_config.NumberColumn(format="percent")})
    ui.downloads("clusters_table", data=per_cluster)
    pair_rows = pair_table(view, classes, in_paper_units(1.0)).rename(columns={"L_e": "L_e ×1e-7"})
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

    stem = f"{result['dataset']}-{r_split}-way{r_way}-{r_model.split('/')[-1]}-n{view.n}-k{r_k}-seed{r_seed}"
    try:
        saved = save_pairs(pairs, runs_dir() / "pairs" / f"{stem}.json")
    except OSError as err:  # a read-only or missing runs folder
        st.error(f"Could not save the pairs: {err}")
    else:
        st.success(f"Saved {saved}")
st.caption(f"Load it with `explrobust_core.sampling.load_pairs`, or evaluate any model of the {result['dataset']} "
           f"zoo on it: `explrobust evaluate --checkpoint … --pairs-file {file_name}`.")
ui.export_all("clusters")
