"""Reading the two input layouts into rows of text cells: a manifest file, or an ImageFolder tree.

- a **manifest**, CSV or Parquet, with columns ``path, label, split`` and optionally ``weak_label``,
  ``group`` and ``true_label`` (other columns are ignored); see :func:`read_manifest`;
- an **ImageFolder** tree ``root/<split>/<class>/<image>``; under ``root/pool/`` the class folder is the
  weak label; see :func:`scan_imagefolder`.

Validating and storing the rows is core.data.ingest's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from core.data.constants import MANIFEST_COLUMNS, POOL, REQUIRED_COLUMNS, SPLITS

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")


class IngestError(ValueError):
    """The input as a whole cannot be ingested (unreadable manifest, missing column, no class list)."""


def cell_text(value: Any) -> str:
    """A cell as stripped text; missing values become ``""`` and integral floats lose their ``.0``."""
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):  # list-like cells: not a missing value
        pass
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _read_table(manifest: Path) -> pd.DataFrame:
    suffix = manifest.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return pd.read_csv(manifest, dtype=str, keep_default_na=False, skipinitialspace=True)
    if suffix in PARQUET_SUFFIXES:
        return pd.read_parquet(manifest)
    raise IngestError(f"Manifest {manifest}: unsupported file type {manifest.suffix!r}; "
                      f"use a CSV ({', '.join(CSV_SUFFIXES)}) or Parquet ({', '.join(PARQUET_SUFFIXES)}) file.")


def missing_columns(frame: pd.DataFrame) -> list[str]:
    """Required columns absent from ``frame`` (``label`` may be absent when ``weak_label`` is present)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    return [] if missing == ["label"] and "weak_label" in frame.columns else missing


def text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The :data:`MANIFEST_COLUMNS` of ``frame`` as stripped text (absent ones empty), indexed 0..N-1."""
    return pd.DataFrame({c: (frame[c].map(cell_text).to_numpy() if c in frame.columns else "")
                         for c in MANIFEST_COLUMNS}, index=pd.RangeIndex(len(frame)))


def read_manifest(manifest: str | Path) -> pd.DataFrame:
    """Read a manifest into a frame of text columns :data:`MANIFEST_COLUMNS` (``""`` = empty cell).

    Column names are matched case-insensitively; extra columns are dropped. The ``label`` column may be
    left out only when a ``weak_label`` column is present (a pool-only manifest); non-pool rows without a
    label are then rejected row by row. Raises :class:`IngestError` for a missing, unreadable or empty
    file, an unsupported extension, or a missing required column.
    """
    manifest = Path(manifest).expanduser()
    if not manifest.is_file():
        raise IngestError(f"Manifest {manifest} does not exist (or is not a file).")
    try:
        raw = _read_table(manifest)
    except IngestError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise IngestError(f"Manifest {manifest} is empty: expected a header row with columns "
                          f"{', '.join(REQUIRED_COLUMNS)}.") from exc
    except Exception as exc:  # parser, encoding and Arrow errors all mean the same to the user
        raise IngestError(f"Manifest {manifest} could not be read: {type(exc).__name__}: {exc}") from exc
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = missing_columns(raw)
    if missing:
        raise IngestError(f"Manifest {manifest} has no {', '.join(repr(c) for c in missing)} column "
                          f"(found: {', '.join(map(str, raw.columns)) or 'none'}); a manifest needs the "
                          f"columns {', '.join(REQUIRED_COLUMNS)} and may add weak_label, group, true_label.")
    if raw.empty:
        raise IngestError(f"Manifest {manifest} has a header but no rows.")
    return text_frame(raw)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def scan_imagefolder(root: str | Path) -> pd.DataFrame:
    """List ``root/<split>/<class>/<image>`` as rows with columns :data:`MANIFEST_COLUMNS`.

    Every visible file below a top-level folder becomes a row (sub-folders of a class folder included),
    so files in a folder that is not a split are reported as ``unknown_split`` rather than skipped, and a
    file directly in a split folder has no class (``missing_label``). Under ``pool/`` the class folder is
    the weak label. Files directly in ``root`` and hidden files are not rows.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise IngestError(f"ImageFolder root {root} does not exist (or is not a folder).")
    split_dirs = sorted(d for d in root.iterdir() if d.is_dir() and _visible(d.name))
    if not any(d.name in SPLITS for d in split_dirs):
        raise IngestError(f"ImageFolder root {root} has no split folder; expected some of "
                          f"{', '.join(s + '/' for s in SPLITS)} each holding one folder per class.")
    records = []
    for split_dir in split_dirs:
        for f in sorted(split_dir.rglob("*")):
            if not f.is_file() or not all(map(_visible, f.relative_to(root).parts)):
                continue
            parts = f.relative_to(split_dir).parts
            cls = parts[0] if len(parts) > 1 else ""
            is_pool = split_dir.name == POOL
            records.append({"path": str(f), "label": "" if is_pool else cls, "split": split_dir.name,
                            "weak_label": cls if is_pool else "", "group": "", "true_label": ""})
    return pd.DataFrame(records, columns=list(MANIFEST_COLUMNS))
