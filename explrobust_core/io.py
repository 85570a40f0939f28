"""Small file helpers: atomic writes, checksums, safe names, library versions."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import re
import stat
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import ExplrobustError

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


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None``: Python's json writes them as the
    non-standard literals ``NaN``/``Infinity``, which strict JSON readers (browsers, jq) refuse."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Standard JSON only: NaN and infinities are written as ``null`` (see :func:`finite_json`)."""
    return atomic_write_text(path, json.dumps(finite_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


class UnreadableFileError(ValueError, ExplrobustError):
    """A file that is refused before (or while) reading it: missing, not a regular file, too large."""


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file",
                 error: type[ValueError] = UnreadableFileError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ``error`` otherwise.

    ``stat().st_size`` is 0 for a device or a FIFO, so a size check alone lets ``/dev/zero`` fill the
    memory and a FIFO block forever: the file is opened without blocking, checked to be a regular
    file on the open descriptor (no swap between check and read), and read at most ``limit + 1``
    bytes (a file that grows after the check is still caught).
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist") from None
    except OSError as err:
        raise error(f"{what} {p} cannot be opened: {err.strerror or err}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
            raise error(f"{what} {p} is {kind}, not a regular file; refused")
        raise error(f"{what} {p} is {info.st_size} bytes, over the {limit}-byte limit")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as err:
            raise error(f"{what} {p} cannot be read: {err.strerror or err}") from None
    if len(data) > limit:
        raise error(f"{what} {p} grew over the {limit}-byte limit while being read")
    return data


def read_json_object(path: str | os.PathLike, limit: int = 64 << 20, what: str = "JSON file") -> dict[str, Any]:
    """A JSON object read from a regular file of at most ``limit`` bytes (:func:`read_bounded`); a
    :class:`UnreadableFileError` (a ``ValueError``) for anything else, including JSON that is not an object."""
    data = read_bounded(path, limit, what)
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableFileError(f"{what} {path} is not valid JSON: {err}") from None
    if not isinstance(parsed, dict):
        raise UnreadableFileError(f"{what} {path} does not hold a JSON object")
    return parsed


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions recorded next to every result and in every model card (a new dict each call)."""
    return dict(_versions_of_this_process())


@functools.lru_cache(maxsize=1)
def _versions_of_this_process() -> tuple[tuple[str, str], ...]:
    # read once: the versions of the code this process has imported (an install while it runs changes neither),
    # and six metadata lookups took ~6 ms, a tenth of an explanation attack's fixed cost on 64 images
    out = {"python": platform.python_version()}
    for dist in ("explrobust", "torch", "torchvision", "captum", "safetensors", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return tuple(out.items())


RUNS_ENV = "EXPLROBUST_RUNS"


def runs_dir() -> Path:
    """Where jobs, study results and other user runs live (``$EXPLROBUST_RUNS``, default ``~/.explrobust/runs``)."""
    return Path(os.environ.get(RUNS_ENV) or Path.home() / ".explrobust" / "runs").expanduser()


def replace_between_markers(path: str | os.PathLike, start: str, end: str, text: str) -> Path:
    """Put ``text`` between the lines ``start`` and ``end`` of a text file (a generated table inside a README),
    atomically; a file without both markers is refused."""
    p = Path(path)
    old = p.read_text(encoding="utf-8")
    a, b = old.find(start), old.find(end)
    if a < 0 or b < a:
        raise ValueError(f"{p} has no {start} … {end} markers")
    return atomic_write_text(p, old[:a + len(start)] + "\n" + text.rstrip("\n") + "\n" + old[b:])
