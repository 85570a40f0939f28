"""Helpers for the AppTest page tests: open a page the way a user gets there, find widgets by label."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def open_page(page: str, title: str, models: list[str] | None = None, **state):
    """A fresh AppTest session of app.py switched to ``pages/<page>.py``; ``models`` as if chosen on the
    Model zoo page, ``state`` other session-state entries. (AppTest runs a switched-to page through
    Streamlit's folder navigation, as a deep link on a fresh server does; ``ui.page_header`` then draws
    app.py's navigation, so a page behaves the same either way.)"""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    if models is not None:
        at.session_state["selected_models"] = models
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == title
    return at


def by_label(widgets, label_start: str):
    """The first widget whose label starts with ``label_start``."""
    return next(w for w in widgets if w.label.startswith(label_start))


def show_me(at):
    """Press the page's one-click default and check it ran without an exception."""
    next(b for b in at.button if b.label == "Show me").click().run()
    assert not at.exception, at.exception
    return at
