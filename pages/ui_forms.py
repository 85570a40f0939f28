"""Forms generated from the typed configs, and the one "form → cached compute → kept result" step of a page."""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from explrobust_core.registry import field_bounds


def widget_bounds(field, kind: type = float) -> dict:
    """``min_value`` / ``max_value`` of a number widget for a pydantic field: the config's own ge/gt/le/lt, so the
    form allows exactly what the config (and the CLI) accepts; a strict bound (gt/lt) is left to the config."""
    return {k: kind(v) for k, v in field_bounds(field).items()}


def config_inputs(config, key: str, skip: tuple[str, ...] = (), overrides: dict | None = None,
                  columns: list | None = None) -> dict:
    """One widget per field of a pydantic config (call inside a form); returns the values entered.

    Numbers get the field's bounds and default, Literals a selectbox, booleans a checkbox, optional
    numbers a text box where empty means "default"; the config itself validates on submit. ``columns``:
    containers to lay the widgets out in, one after the other (default: the current container).
    """
    import json
    import typing

    from explrobust_core.registry import config_defaults

    defaults = config_defaults(config) | (overrides or {})
    values: dict = {}
    shown = [(name, field) for name, field in config.model_fields.items() if name not in skip]
    places = columns or [st.container()]
    for n, (name, field) in enumerate(shown):
        place = places[n * len(places) // max(len(shown), 1)]  # fill the columns in order
        ann, default, wkey = field.annotation, defaults.get(name), f"{key}-{name}"
        label, helptext = name.replace("_", " "), field.description
        args = typing.get_args(ann)
        if ann is bool:
            values[name] = place.checkbox(label, bool(default), help=helptext, key=wkey)
        elif typing.get_origin(ann) is typing.Literal:
            values[name] = place.selectbox(label, list(args), index=list(args).index(default), help=helptext,
                                           key=wkey)
        elif ann is int:
            values[name] = int(place.number_input(label, value=int(default), step=1, help=helptext, key=wkey,
                                                  **widget_bounds(field, int)))
        elif ann is float:
            values[name] = float(place.number_input(label, value=float(default), format="%g", help=helptext,
                                                    key=wkey, **widget_bounds(field, float)))
        elif ann is str:
            values[name] = place.text_input(label, str(default), help=helptext, key=wkey)
        elif type(None) in args and any(a in (int, float) for a in args):
            text = place.text_input(label, "" if default is None else str(default),
                                    help=f"{helptext} (empty: none)", key=wkey)
            values[name] = text.strip() or None  # the config parses (or refuses, naming the field) the text
        else:  # dicts and lists as JSON
            text = place.text_input(f"{label} (JSON)", json.dumps(default), help=helptext, key=wkey)
            try:
                values[name] = json.loads(text)
            except json.JSONDecodeError:
                values[name] = text  # the config refuses it with a message naming the field
    return values


def result_of(key: str, submitted: bool, compute: Callable[[], Any], hint: str, *, prefix: str = "",
              errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError),
              out_of_memory: str | None = None) -> Any:
    """The page's result: ``compute()`` (the page's cached computation) when its form was just submitted,
    kept in this session under ``key``; else the last one kept. A setting the user can change (``errors``:
    ValueError includes ConfigError) is a message, not a traceback; with no result yet, ``hint`` — and
    either stops the page."""
    if submitted:
        try:
            st.session_state[key] = compute()
        except errors as err:
            st.error(f"{prefix}{err}")
            st.stop()
        except RuntimeError as err:  # torch.OutOfMemoryError is one
            import torch

            if out_of_memory is None or not isinstance(err, torch.OutOfMemoryError):
                raise
            st.error(out_of_memory)
            st.stop()
    result = st.session_state.get(key)
    if result is None:
        st.info(hint)
        st.stop()
    return result

