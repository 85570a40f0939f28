"""Figure and table downloads of a page: per-figure buttons and one zip of everything the page offered."""

from __future__ import annotations

from typing import Callable

import streamlit as st

from explrobust_core.exports import table_files, zip_files

EXPORTS = "_page_exports"  # this run's exportable files, by file name (page_header starts a fresh dict)
_MIME = {"png": "image/png", "pdf": "application/pdf", "csv": "text/csv", "json": "application/json"}


def downloads(stem: str, fig=None, data=None) -> None:
    """Download buttons for one figure (PNG, PDF) and its numbers (CSV, JSON); the files also go into
    the page's zip (``export_all``). ``fig`` is a matplotlib figure: it leaves pyplot's registry here and
    is rendered to PNG/PDF only when a button is clicked (300 dpi PDFs on every rerun would be slow) — or a
    function making one, for a figure that is not on screen: then it is even built only on a click."""
    import functools

    from explrobust_core.figures import figure_bytes
    from explrobust_core.io import check_name

    check_name(stem, "export name")
    files: dict[str, bytes | Callable[[], bytes]] = {}
    if callable(fig):
        files.update({ext: functools.partial(_built_figure_bytes, fig, ext) for ext in ("png", "pdf")})
    elif fig is not None:
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


def _built_figure_bytes(make_figure: Callable, fmt: str) -> bytes:
    import matplotlib.pyplot as plt

    from explrobust_core.figures import figure_bytes

    fig = make_figure()
    try:
        return figure_bytes(fig, fmt)
    finally:
        plt.close(fig)


def add_export(file_name: str, blob: bytes | Callable[[], bytes]) -> None:
    """Put one more file (bytes, or a function making them on demand) into the page's zip."""
    st.session_state.setdefault(EXPORTS, {})[file_name] = blob


def export_all(page: str) -> None:
    """One zip of every figure and table this run of the page offered, made when clicked."""
    import functools

    files = dict(st.session_state.get(EXPORTS) or {})
    if not files:
        return
    st.download_button(f"Export all {len(files)} files of this page (zip)", functools.partial(zip_files, files),
                       file_name=f"explrobust-{page}.zip", mime="application/zip", key=f"zip-{page}",
                       on_click="ignore")


DISPLAY_DPI = 150  # on screen (Streamlit's default, 200, draws and sends ~1.8× the pixels); downloads: 300


def show_figure(fig, stem: str, data=None, export=None, crop: bool = True) -> None:
    """Show a matplotlib figure and its download buttons (of ``export``, a function building a richer figure
    for the files only when one is downloaded, when given; else of ``fig``). ``crop=False`` for a figure whose
    margins are set by hand: cropping to the drawn content costs one more measuring pass over every text."""
    import io

    buf = io.BytesIO()  # what st.pyplot does, at DISPLAY_DPI
    fig.savefig(buf, format="png", dpi=DISPLAY_DPI, bbox_inches="tight" if crop else None)
    st.image(buf.getvalue(), width="stretch")
    if export is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)
    downloads(stem, export or fig, data)
