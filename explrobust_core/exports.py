"""Export files for figures' numbers and whole pages: tables as CSV + JSON, many files as one zip."""

from __future__ import annotations

from typing import Any, Callable


def table_files(data: Any) -> dict[str, bytes]:
    """A table (DataFrame, list of records or one record) as ``{"csv": …, "json": …}`` bytes."""
    import json

    import pandas as pd

    from .results import _jsonable

    if isinstance(data, pd.DataFrame):
        frame, obj = data, data.to_dict(orient="records")
    else:
        obj = _jsonable(data)
        frame = pd.DataFrame(obj if isinstance(obj, list) else [obj])
    return {"csv": frame.to_csv(index=False).encode(), "json": json.dumps(_jsonable(obj), indent=1).encode()}


def zip_files(files: dict[str, bytes | Callable[[], bytes]]) -> bytes:
    """One zip of named files; a callable is rendered only now (e.g. a figure's PDF)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, blob in sorted(files.items()):
            zf.writestr(name, blob() if callable(blob) else blob)
    return buf.getvalue()
