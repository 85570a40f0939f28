"""Small file helpers: atomic writes, checksums, safe names, library versions."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str, what: str = "name") -> str:
    """A user-given file stem: letters, digits, '_', '.', '-'; it cannot leave its directory."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:  # fullmatch: `$` allows a final "\n"
        raise ValueError(
            f"invalid {what} {name!r}: use 1–64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same directory, fsync, then rename over ``path``.

    A reader sees either the old file or the complete new one, never a torn write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions recorded next to every result and in every model card."""
    out = {"python": platform.python_version()}
    for dist in ("explrobust", "torch", "torchvision", "captum", "safetensors", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


RUNS_ENV = "EXPLROBUST_RUNS"


def runs_dir() -> Path:
    """Where jobs, study results and other user runs live (``$EXPLROBUST_RUNS``, default ``~/.explrobust/runs``)."""
    return Path(os.environ.get(RUNS_ENV) or Path.home() / ".explrobust" / "runs").expanduser()
