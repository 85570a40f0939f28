"""Cooperative cancellation that reaches inside long loops.

A background job (or a page) installs a stop check with :func:`cancellable`; the attack and PGD
step loops call :func:`raise_if_cancelled` once per step, so a cancel lands within one step of
one batch whatever the machine's load — not only between evaluation stages. The check is a plain
Python callable (the job worker's is throttled to one store read per second), so it never
synchronises with an accelerator. Outside :func:`cancellable` the call costs one context-variable
lookup and does nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

_stop_check: ContextVar[Callable[[], bool] | None] = ContextVar("explrobust_stop_check", default=None)


class Cancelled(Exception):
    """The running computation was asked to stop; nothing partial should be stored."""


@contextmanager
def cancellable(should_stop: Callable[[], bool] | None) -> Iterator[None]:
    """Within this block, :func:`raise_if_cancelled` raises :class:`Cancelled` once ``should_stop()`` is true."""
    token = _stop_check.set(should_stop)
    try:
        yield
    finally:
        _stop_check.reset(token)


def raise_if_cancelled(where: str = "") -> None:
    check = _stop_check.get()
    if check is not None and check():
        raise Cancelled(where or "cancelled")
