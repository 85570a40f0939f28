"""The project's one error base class.

Every error explrobust raises on purpose — a bad config, an unknown name, a refused checkpoint or upload, a
missing optional dependency, an unreadable file — derives from :class:`ExplrobustError`, so a caller (the CLI's
``main``, a page) can tell an expected failure, whose message is meant for the user, from a bug. Each class keeps
its built-in base too (``ValueError``, ``KeyError``, ``ImportError``, ``FileNotFoundError``), so code that catches
those keeps working.
"""

from __future__ import annotations


class ExplrobustError(Exception):
    """An expected failure whose message says, in one line, what was wrong and how to fix it.

    Example:
        >>> from explrobust_core import ExplrobustError, load_dataset
        >>> try:
        ...     load_dataset("no_such_dataset")
        ... except ExplrobustError as err:
        ...     print(err)  # doctest: +ELLIPSIS
        unknown dataset 'no_such_dataset'; choose one of: ...
    """
