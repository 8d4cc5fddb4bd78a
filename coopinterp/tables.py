"""The tidy per-step metric table (docs/reference.md, "The table"): schema, construction, atomic I/O."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from .errors import CoopError

COLUMNS = ("run", "step", "seqs_seen", "analysis", "metric", "evaluator", "layer", "head",
           "src_layer", "src_head", "component", "value")
DTYPES = {"run": "string", "step": "int64", "seqs_seen": "int64", "analysis": "string", "metric": "string",
          "evaluator": "string", "layer": "Int64", "head": "Int64", "src_layer": "Int64", "src_head": "Int64",
          "component": "string", "value": "float64"}


def table(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """A tidy frame from row dicts; absent columns are NA."""
    df = pd.DataFrame(list(rows), columns=list(COLUMNS))
    return df.astype(DTYPES)


def concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True).astype(DTYPES) if frames else table([])


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write parquet or CSV (by suffix), atomically."""
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise CoopError(f"table path must end in .parquet or .csv, got {path}")
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise CoopError(f"table not found: {path}")
    try:
        df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as e:  # pyarrow and pandas raise many types for a bad file
        raise CoopError(f"cannot read table {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise CoopError(f"{path} is not a coopinterp table: missing column(s) {', '.join(sorted(missing))}")
    return df[list(COLUMNS)].astype(DTYPES)
