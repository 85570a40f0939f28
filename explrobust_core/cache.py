"""A per-user cache of derived arrays (the parsed embedded datasets), so new processes skip the parsing.

Where: ``$EXPLROBUST_CACHE``, else ``$XDG_CACHE_HOME/explrobust``, else ``~/.cache/explrobust``.
Each entry is one ``.npz`` of plain numeric arrays (never pickles: read with ``allow_pickle=False``)
plus a ``source`` string naming what it was built from (e.g. a file's path, size and mtime). An
entry is used only if it loads, its source string matches and the caller's ``check`` accepts the
arrays; otherwise it is rebuilt silently. Writes are atomic (a reader never sees half a file) and
best effort: an unwritable cache directory only means the next process parses again.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

Arrays = dict[str, np.ndarray]


def cache_dir() -> Path:
    explicit = os.environ.get("EXPLROBUST_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "explrobust"


def file_fingerprint(path: str | os.PathLike) -> str:
    """Path, size and modification time of a file: changes when the file is replaced or edited."""
    st = os.stat(path)
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _read(path: Path, source: str, check: Callable[[Arrays], bool]) -> Arrays | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    stored = arrays.pop("source", None)
    if stored is None or stored.shape != () or str(stored) != source:
        return None
    try:
        return arrays if check(arrays) else None
    except (KeyError, ValueError, TypeError, IndexError):
        return None


def cached_arrays(name: str, source: str, build: Callable[[], Arrays], check: Callable[[Arrays], bool]) -> Arrays:
    """The arrays of cache entry ``name`` built from ``source``; built (and stored) when missing or stale."""
    path = cache_dir() / f"{name}.npz"
    arrays = _read(path, source, check)
    if arrays is not None:
        return arrays
    arrays = build()
    buf = io.BytesIO()
    np.savez(buf, source=np.array(source), **arrays)
    try:
        from .io import atomic_write_bytes

        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass  # a read-only or full cache directory: parse again next time
    return arrays
