"""Shared widgets and cached loaders for the pages (the only place pages touch session state)."""

from __future__ import annotations

from typing import Callable

import streamlit as st

from explrobust_core.exports import table_files, zip_files
from explrobust_core.registry import field_bounds
from explrobust_core.zoo import CheckpointEntry, list_checkpoints, load_checkpoint_cached, shipped_zoo_dir, user_zoo_dir

SELECTED = "selected_models"


@st.cache_data(ttl=10, show_spinner=False)
def _entries() -> list[CheckpointEntry]:
    return list_checkpoints(shipped_zoo_dir(), user_zoo_dir())


def checkpoints() -> dict[str, CheckpointEntry]:
    """Valid checkpoints by display name (dataset/name)."""
    return {f"{e.card.dataset}/{e.card.name}": e for e in _entries() if e.card is not None}


def broken_checkpoints() -> list[CheckpointEntry]:
    return [e for e in _entries() if e.card is None]


def selected_models() -> list[str]:
    """The models chosen on the Model zoo page (kept per browser session)."""
    available = checkpoints()
    chosen = [name for name in st.session_state.get(SELECTED, []) if name in available]
    natural = [name for name in available if name.endswith("/natural")]
    return chosen or natural[:1] or list(available)[:1]


@st.cache_resource(show_spinner="Loading the model…")
def _load_model(path: str, modified: float):
    return load_checkpoint_cached(path, "auto")


@st.cache_resource(show_spinner=False)
def model_lock(path: str):
    """One lock per cached model: captum's display methods put hooks on the (shared) model while they run,
    so two sessions must not explain the same model at the same instant."""
    import threading

    return threading.Lock()


def load_model(path: str):
    """(model, card), cached per server on the best device; a file replaced on disk is loaded anew."""
    from pathlib import Path

    file = Path(path)
    return _load_model(path, file.stat().st_mtime if file.exists() else 0.0)  # a missing file: the loader says so


@st.cache_resource(show_spinner="Loading the dataset…")
def dataset(name: str, split: str):
    from explrobust_core.data import load_dataset

    return load_dataset(name, split)


def model_picker(label: str = "Models", key: str = "models_here") -> list[str]:
    """A multiselect over the checkpoints, defaulting to the Model zoo page's selection."""
    names = list(checkpoints())
    return st.multiselect(label, names, default=selected_models(), key=key)


def models_of_one_dataset(why: str) -> tuple[list[str], str]:
    """The model picker, stopping the page with a message unless the chosen models share one dataset;
    ``why`` says why this page needs that. Returns the chosen names and their dataset."""
    models = model_picker()
    if not models:
        st.info("Choose at least one model (here or on the Model zoo page).")
        st.stop()
    datasets = {checkpoints()[m].card.dataset for m in models}
    if len(datasets) > 1:
        st.error(f"The chosen models were trained on different datasets ({', '.join(sorted(datasets))}); "
                 f"{why} Pick models of one dataset.")
        st.stop()
    return models, datasets.pop()


def dataset_or_stop(name: str, split: str):
    """The dataset, or a message (e.g. a torchvision dataset whose files are not on this machine)."""
    try:
        return dataset(name, split)
    except (FileNotFoundError, ValueError) as err:
        st.error(str(err))
        st.stop()


def selection_widget(names: list[str]) -> None:
    """The multiselect whose choice every page uses; copied out of the widget so it survives page
    switches (Streamlit drops a widget's state when its page is not shown)."""

    def remember() -> None:
        st.session_state[SELECTED] = st.session_state["zoo_selection_widget"]

    st.multiselect("Models to compare on every page", names, default=selected_models(), key="zoo_selection_widget",
                   on_change=remember)


@st.cache_data(show_spinner="Reading the labels…")  # _data is not hashed: keyed by name and split
def _labels_of(_data, name: str, split: str):
    return _data.all_labels()  # once per dataset, then cached


def labels(data):
    return _labels_of(data, data.info.name, data.split)


# --- teaching header and figure export -------------------------------------------------------------

_EXPORTS = "_page_exports"


def page_header(title: str, what: str, how: str) -> None:
    """The page title and its two teaching lines; starts a fresh list of this run's exportable files."""
    st.title(title)
    st.caption(f"{what}  \n{how}")
    st.session_state[_EXPORTS] = {}


_MIME = {"png": "image/png", "pdf": "application/pdf", "csv": "text/csv", "json": "application/json"}


def downloads(stem: str, fig=None, data=None) -> None:
    """Download buttons for one figure (PNG, PDF) and its numbers (CSV, JSON); the files also go into
    the page's zip (``export_all``). ``fig`` is a matplotlib figure: it leaves pyplot's registry here and
    is rendered to PNG/PDF only when a button is clicked (300 dpi PDFs on every rerun would be slow)."""
    import functools

    from explrobust_core.figures import figure_bytes
    from explrobust_core.io import check_name

    check_name(stem, "export name")
    files: dict[str, bytes | Callable[[], bytes]] = {}
    if fig is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)  # no leak across reruns; a closed Figure still renders
        files.update({ext: functools.partial(figure_bytes, fig, ext) for ext in ("png", "pdf")})
    if data is not None:
        files.update(table_files(data))
    cols = st.columns(max(len(files), 1) + 3)
    for col, (ext, blob) in zip(cols, files.items()):
        col.download_button(ext.upper(), blob, file_name=f"{stem}.{ext}", mime=_MIME[ext], key=f"dl-{stem}-{ext}",
                            on_click="ignore", width="stretch")
    for ext, blob in files.items():
        add_export(f"{stem}.{ext}", blob)


def add_export(file_name: str, blob: bytes | Callable[[], bytes]) -> None:
    """Put one more file (bytes, or a function making them on demand) into the page's zip."""
    st.session_state.setdefault(_EXPORTS, {})[file_name] = blob


def export_all(page: str) -> None:
    """One zip of every figure and table this run of the page offered, made when clicked."""
    import functools

    files = dict(st.session_state.get(_EXPORTS) or {})
    if not files:
        return
    st.download_button(f"Export all {len(files)} files of this page (zip)", functools.partial(zip_files, files),
                       file_name=f"explrobust-{page}.zip", mime="application/zip", key=f"zip-{page}",
                       on_click="ignore")


def show_figure(fig, stem: str, data=None) -> None:
    """Show a matplotlib figure and its download buttons."""
    st.pyplot(fig, clear_figure=False)
    downloads(stem, fig, data)


# --- forms generated from the typed configs (same defaults and ranges as the CLI) ------------------


def config_inputs(config, key: str, skip: tuple[str, ...] = (), overrides: dict | None = None) -> dict:
    """One widget per field of a pydantic config (call inside a form); returns the values entered.

    Numbers get the field's bounds and default, Literals a selectbox, booleans a checkbox, optional
    numbers a text box where empty means "default"; the config itself validates on submit.
    """
    import json
    import typing

    from explrobust_core.registry import config_defaults

    defaults = config_defaults(config) | (overrides or {})
    values: dict = {}
    for name, field in config.model_fields.items():
        if name in skip:
            continue
        ann, default, wkey = field.annotation, defaults.get(name), f"{key}-{name}"
        label, helptext = name.replace("_", " "), field.description
        args = typing.get_args(ann)
        if ann is bool:
            values[name] = st.checkbox(label, bool(default), help=helptext, key=wkey)
        elif typing.get_origin(ann) is typing.Literal:
            values[name] = st.selectbox(label, list(args), index=list(args).index(default), help=helptext, key=wkey)
        elif ann is int:
            values[name] = int(st.number_input(label, value=int(default), step=1, help=helptext, key=wkey,
                                               **{k: int(v) for k, v in field_bounds(field).items()}))
        elif ann is float:
            values[name] = float(st.number_input(label, value=float(default), format="%g", help=helptext, key=wkey,
                                                 **{k: float(v) for k, v in field_bounds(field).items()}))
        elif ann is str:
            values[name] = st.text_input(label, str(default), help=helptext, key=wkey)
        elif type(None) in args and any(a in (int, float) for a in args):
            text = st.text_input(label, "" if default is None else str(default), help=f"{helptext} (empty: none)",
                                 key=wkey)
            values[name] = text.strip() or None  # the config parses (or refuses, naming the field) the text
        else:  # dicts and lists as JSON
            text = st.text_input(f"{label} (JSON)", json.dumps(default), help=helptext, key=wkey)
            try:
                values[name] = json.loads(text)
            except json.JSONDecodeError:
                values[name] = text  # the config refuses it with a message naming the field
    return values


def refresh_checkpoints() -> None:
    """Forget the cached checkpoint list and models (a job or an upload changed the zoo)."""
    _entries.clear()
    _load_model.clear()


@st.cache_resource(show_spinner=False)
def _executor(runs: str, kind: str | None):
    from explrobust_core.executors import open_executor

    return open_executor(runs, kind)  # reconciled: jobs whose worker is gone are "interrupted" from the start


def executor():
    """This server's job executor (``$EXPLROBUST_EXECUTOR``); a lost or damaged job store, an unreachable
    cluster or a missing extra stops the page with the reason."""
    import os

    from explrobust_core.io import runs_dir

    try:
        ex = _executor(str(runs_dir()), os.environ.get("EXPLROBUST_EXECUTOR"))
        ex.store.check()
    except (ValueError, ImportError) as err:  # JobStoreError, ConfigError, MissingExtraError: all say what to do
        st.error(str(err))
        st.stop()
    return ex
