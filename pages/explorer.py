"""Explorer: browse dataset images, filter them, and overlay explanations of several models."""

from pathlib import Path

import streamlit as st
import torch

from explrobust_core.browse import explain_images, filter_indices
from explrobust_core.models import predict
from explrobust_core.explain import EXPLAINERS
from explrobust_core.figures import overlay_rgb
from explrobust_core.uploads import IMAGE_SUFFIXES, UploadError, load_image
from pages import ui

ui.page_header(
    "Explorer",
    "Browse the dataset with the explanation maps of several models on top: where does each model look, "
    "and does a robust model look at the digit's strokes more than a natural one?",
    "The first page of test images is already explained by the models chosen on the Model zoo page; filter "
    "by class or by correct/incorrect, change the method, or upload your own image.",
)
models, dataset_name = ui.models_of_one_dataset("their maps are shown on one dataset's images.")
entries = ui.checkpoints()

left, mid, right = st.columns(3)
split = left.radio("Split", ["test", "train"], horizontal=True)
data = ui.dataset_or_stop(dataset_name, split)
classes = data.info.classes
wanted = left.multiselect("Classes", classes, default=[])
correctness = mid.radio("Show", ["all", "correct", "incorrect"], horizontal=True,
                        help=f"judged by {models[0]}")
method = mid.selectbox("Explanation", EXPLAINERS.names(),
                       format_func=lambda n: n + ("" if "differentiable" in EXPLAINERS.get(n).tags else " (captum)"))
cmap = right.selectbox("Colour map", ["inferno", "viridis", "magma", "hot", "coolwarm", "gray"])
alpha = right.slider("Opacity", 0.0, 1.0, 0.5, 0.05)
per_page = 8

# Your own image: validated and adapted to the models' input, then explained like the dataset images in an
# extra column. The file lives in this browser session's widget state only; it is never stored or shared.
own = None
with st.expander("Upload your own image", expanded=st.session_state.get("explorer_upload") is not None):
    c, h, w = data.info.input_shape
    st.caption(f"PNG, JPEG, BMP, GIF, WebP or a .npy array in [0, 1]. It is converted to "
               f"{'grayscale' if c == 1 else 'RGB'} and resized to {w}×{h} pixels, the models' input, and shown "
               "as the last image of every row. It stays in this browser session.")
    upload = st.file_uploader("Your image", type=list(IMAGE_SUFFIXES), key="explorer_upload")
    looks = "light on dark" if sum(data.info.mean) / c < 0.5 else "dark on light"
    invert = st.checkbox("Invert (dark ↔ light)", key="explorer_upload_invert", help=f"{data.info.name} images are {looks}")
    if upload is not None:
        try:
            own = load_image(upload.getvalue(), data.info.input_shape, name=upload.name, invert=invert,
                             dataset_mean=data.info.mean)
        except UploadError as err:
            st.error(f"This file cannot be used: {err}")
        else:
            for notice in own.notices:
                st.info(notice)
            st.image(own.tensor[0].permute(1, 2, 0).squeeze(-1).numpy(), width=128, clamp=True,
                     caption=f"{upload.name} as the models see it ({w}×{h})")


def progress_bar(text: str):
    """A progress bar for a long loop of the core (``callback(done, total)``), and a function that removes it."""
    bar = st.progress(0.0, text=f"{text}…")
    return (lambda done, total: bar.progress(done / max(total, 1), text=f"{text}: {done}/{total} images")), bar.empty


@st.cache_data(show_spinner="Classifying…")  # keyed on the file and the dataset: another of either is new work
def predictions(model_name: str, weights: str, mtime_ns: int, dataset_key: str) -> torch.Tensor:
    model, _ = ui.load_model(weights)
    report, done = progress_bar(f"{model_name}: classifying the {split} split")  # the page's dataset
    labels = predict(model, data, progress=report)
    done()
    return labels


labels = ui.labels(data)
correct = predictions(models[0], *ui.model_file(models[0]), data.ui_key) == labels if correctness != "all" else None
# classes take turns (the embedded splits are sorted by class: the first page would be eight zeros)
indices = filter_indices(labels, [classes.index(c) for c in wanted], correct, correctness)
if not indices:
    st.warning("No image matches these filters.")
    st.stop()
page_count = (len(indices) + per_page - 1) // per_page
page = st.number_input(f"Page (of {page_count}; {len(indices)} images)", 1, page_count, 1)
shown = indices[(page - 1) * per_page: page * per_page]
x, y = data.batch(shown)


def explain(path: str, images: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities and maps (for the predicted class) of one model, in memory-bounded batches with a
    progress bar (a large model on large images takes a while on the CPU)."""
    report, done = progress_bar(f"{Path(path).stem}: {method}")
    with ui.model_in_use(path) as (model, _):
        out = explain_images(model, images, method, progress=report)
    done()
    return out


@st.cache_data(show_spinner="Explaining…", max_entries=256)
def explain_dataset_images(path: str, modified: float, dataset_key: str, indices: tuple[int, ...], method: str):
    """Cached per model file, dataset, images and method: paging back, colour map and opacity recompute nothing."""
    return explain(path, data.batch(list(indices))[0], method)


xs = x if own is None else torch.cat([x, own.tensor.to(x.dtype)])
shown_maps, rows = [], []
for name in models:
    path = entries[name].path
    try:
        probs, maps = explain_dataset_images(str(path), path.stat().st_mtime, data.ui_key, tuple(shown), method)
        if own is not None:  # the upload lives in this session only: not cached
            own_probs, own_maps = explain(str(path), own.tensor.to(x.dtype), method)
            probs, maps = torch.cat([probs, own_probs]), torch.cat([maps, own_maps])
    except ValueError as err:  # e.g. a method that does not fit this architecture
        st.error(f"{name}: {err}")
        continue
    st.subheader(name)
    cols = st.columns(xs.shape[0])
    for i, col in enumerate(cols):
        pred = int(probs[i].argmax())
        label = f"#{shown[i]} {classes[int(y[i])]}" if i < len(shown) else "your image"
        col.image(overlay_rgb(xs[i], maps[i], cmap, alpha), width="stretch",
                  caption=f"{label} → {classes[pred]} ({float(probs[i, pred]):.2f})")
        rows.append({"model": name, "image": label, "prediction": classes[pred],
                     "confidence": float(probs[i, pred])})
    shown_maps.append((name, maps))

if shown_maps:  # the grid as one publication figure: a row per model
    from explrobust_core.figures import overlay_grid_figure

    fig = overlay_grid_figure(
        xs.repeat(len(shown_maps), 1, 1, 1), torch.cat([m for _, m in shown_maps]),
        [f"{r['model'].split('/')[-1]}: {r['image']} → {r['prediction']}" for r in rows],
        cmap, alpha, ncols=xs.shape[0], title=f"{method} explanations")
    st.markdown("**Download this grid**")
    ui.downloads(f"explorer_{method}", fig, rows)
    ui.export_all("explorer")
