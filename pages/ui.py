"""Shared widgets and cached loaders for the pages (the only place pages touch session state)."""

from __future__ import annotations

import contextlib
import json
from typing import Iterator

import streamlit as st

from explrobust_core.zoo import CheckpointEntry, list_checkpoints, load_checkpoint_cached, shipped_zoo_dir, user_zoo_dir

from pages.ui_cache import computed, live_lines, warm_imports  # noqa: F401 (the pages' API)
from pages.ui_export import EXPORTS, add_export, downloads, export_all, show_figure  # noqa: F401 (the pages' API)
from pages.ui_forms import config_inputs, result_of, widget_bounds  # noqa: F401 (the pages' API)

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

    return threading.RLock()


@contextlib.contextmanager
def model_in_use(path: str) -> Iterator[tuple]:
    """``(model, card)`` held under the model's lock: run every explanation of a cached (shared) model inside,
    captum's display methods included, which hook the model while they run."""
    model, card = load_model(path)
    with model_lock(path):
        yield model, card


def load_model(path: str):
    """(model, card), cached per server on the best device; a file replaced on disk is loaded anew."""
    from pathlib import Path

    file = Path(path)
    return _load_model(path, file.stat().st_mtime if file.exists() else 0.0)  # a missing file: the loader says so


@st.cache_resource(show_spinner="Loading the dataset…")
def _dataset(name: str, split: str, options: str):
    from explrobust_core.data import load_dataset

    data = load_dataset(name, split, json.loads(options) or None)
    data.ui_key = f"{name}/{split}/{options}"  # names the dataset in cache keys (two image folders share a name)
    return data


def dataset(name: str, split: str):
    """The dataset, read with the options its models' cards record (an image folder's root and size)."""
    from explrobust_core.zoo import shared_dataset_options

    every = checkpoints()
    chosen = [every[n].card for n in st.session_state.get("models_here") or selected_models() if n in every]
    options = shared_dataset_options(name, [e.card for e in every.values()], chosen)
    return _dataset(name, split, json.dumps(options, sort_keys=True))


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


def model_file(name: str) -> tuple[str, int]:
    """A checkpoint's weights path and modification time (ns): the key of a cached computation on that model,
    so that a file replaced on disk is computed anew."""
    path = checkpoints()[name].path
    return str(path), path.stat().st_mtime_ns


def models_and_data(why: str, split: str = "test"):
    """The chosen models (of one dataset: see ``models_of_one_dataset``), that dataset's name and its split."""
    models, name = models_of_one_dataset(why)
    return models, name, dataset_or_stop(name, split)


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


@st.cache_data(show_spinner="Reading the labels…")  # _data is not hashed: keyed by its name, split and options
def _labels_of(_data, key: str):
    return _data.all_labels()  # once per dataset, then cached


def labels(data):
    return _labels_of(data, data.ui_key)


# --- teaching header -------------------------------------------------------------------------------


def _repair_folder_navigation() -> None:
    """A deep link opened first on a fresh server (a bookmarked ``/attack_lab``) reaches this page through
    Streamlit's legacy folder-based navigation: until some session has run app.py's ``st.navigation``,
    Streamlit treats the ``pages/`` folder next to the entry script as the page list (listing ``app`` and
    ``ui`` too) and runs the page without app.py. Then draw app.py's navigation here: it replaces the folder
    list, and ``st.navigation`` switches the server to app.py's navigation for every later run."""
    from pathlib import Path

    from streamlit.runtime.scriptrunner import get_script_run_ctx

    from pages.navigation import navigation

    ctx = get_script_run_ctx()
    if ctx is None:
        return
    entry = Path(ctx.pages_manager.main_script_path).resolve()
    listed = [p.get("script_path") for p in ctx.pages_manager.get_pages().values()]
    if any(path and Path(path).resolve() == entry for path in listed):  # the entry script listed as a page
        navigation()


def page_header(title: str, what: str, how: str) -> None:
    """The page title and its two teaching lines; starts a fresh list of this run's exportable files."""
    warm_imports()
    _repair_folder_navigation()
    st.title(title)
    st.caption(f"{what}  \n{how}")
    st.session_state[EXPORTS] = {}


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
