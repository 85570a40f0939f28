"""Per-server caches of the pages' interactive paths: heavy imports warmed in the background, finished
computations kept per parameter set (with partial results drawn while they run), and the live chart they use."""

from __future__ import annotations

import streamlit as st

# heavy libraries a page's first click would otherwise import while the user waits: scikit-learn (k-means, PCA on
# the Clusters page: ~2.5 s), torch._dynamo (which torch's backward of a second-order gradient imports on first
# use, e.g. the Loss landscape's Hessian-vector products: ~2.5 s), matplotlib's pyplot, scipy.stats, plotly; all
# imported once per server in a background thread while the user reads the first page
WARM_IMPORTS = ("matplotlib.pyplot", "torch._dynamo", "sklearn.cluster", "sklearn.decomposition", "scipy.stats",
                "plotly.graph_objects")


@st.cache_resource(show_spinner=False)
def warm_imports() -> object:
    """Start importing ``WARM_IMPORTS`` in a daemon thread, once per server (Python's import lock makes a page
    that needs one of them first simply wait for it)."""
    import importlib
    import threading

    def run() -> None:
        for name in WARM_IMPORTS:
            try:
                importlib.import_module(name)
            except ImportError:  # an optional extra that is not installed: the page says so when it needs it
                pass

    thread = threading.Thread(target=run, name="explrobust-warm-imports", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False)
def _results() -> dict:
    """This server's store of finished page computations (see ``computed``)."""
    import collections
    import threading

    return {"lock": threading.Lock(), "entries": collections.OrderedDict()}


def computed(key: tuple, compute, max_entries: int = 64):
    """``compute()``'s result, computed once per server for ``key`` (hashable; include the weights' path and
    modification time so that a replaced file is computed anew) and kept for the last ``max_entries`` keys.

    Unlike ``st.cache_data`` it lets ``compute`` draw partial results while it runs (a progress bar, the first
    points of a curve) and replays nothing on a hit: the page draws the finished result either way. Every
    session gets its own deep copy."""
    import copy

    store = _results()
    with store["lock"]:
        if key in store["entries"]:
            store["entries"].move_to_end(key)
            return copy.deepcopy(store["entries"][key])
    value = compute()  # not under the lock: other sessions keep working (two at once may compute it twice)
    with store["lock"]:
        store["entries"][key] = value
        while len(store["entries"]) > max_entries:
            store["entries"].popitem(last=False)
    return copy.deepcopy(value)


def live_lines(place, rows: list[dict], x: str, y: str, color: str, x_title: str, y_title: str,
               height: int = 240) -> None:
    """Partial results as lines in ``place`` (an ``st.empty()``): a plain Vega-Lite spec, drawn by the browser
    (no Altair, no matplotlib on the server: cheap enough to redraw after every step)."""
    import pandas as pd

    spec = {"mark": {"type": "line", "point": True},
            "encoding": {"x": {"field": x, "type": "quantitative", "title": x_title},
                         "y": {"field": y, "type": "quantitative", "title": y_title},
                         "color": {"field": color, "type": "nominal", "title": None}}}
    place.vega_lite_chart(pd.DataFrame(rows), spec, height=height)
