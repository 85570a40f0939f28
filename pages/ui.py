"""Shared widgets and cached loaders for the pages (the only place pages touch session state)."""

from __future__ import annotations

import streamlit as st

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
def load_model(path: str):
    return load_checkpoint_cached(path, "auto")


@st.cache_resource(show_spinner="Loading the dataset…")
def dataset(name: str, split: str):
    from explrobust_core.data import load_dataset

    return load_dataset(name, split)


def model_picker(label: str = "Models", key: str = "models_here") -> list[str]:
    """A multiselect over the checkpoints, defaulting to the Model zoo page's selection."""
    names = list(checkpoints())
    return st.multiselect(label, names, default=selected_models(), key=key)


def selection_widget(names: list[str]) -> None:
    """The multiselect whose choice every page uses; copied out of the widget so it survives page
    switches (Streamlit drops a widget's state when its page is not shown)."""

    def remember() -> None:
        st.session_state[SELECTED] = st.session_state["zoo_selection_widget"]

    st.multiselect("Models to compare on every page", names, default=selected_models(), key="zoo_selection_widget",
                   on_change=remember)


@st.cache_data(show_spinner="Reading the labels…")  # _data is not hashed: keyed by name and split
def _labels_of(_data, name: str, split: str):
    import torch

    if hasattr(_data, "labels"):  # in-memory sets
        return _data.labels
    return torch.tensor([int(_data[i][1]) for i in range(len(_data))])  # once per dataset, then cached


def labels(data):
    return _labels_of(data, data.info.name, data.split)
