"""Reading the two input layouts into rows of text cells: a manifest file, or an ImageFolder tree.

- a **manifest**, CSV or Parquet, with columns ``path, label, split`` and optionally ``weak_label``,
  ``group`` and ``true_label``; any other column is image metadata (site, camera, date ...), kept as text
  here and typed by core.data.metadata at ingest; see :func:`load_manifest`;
- an **ImageFolder** tree ``root/<split>/<class>/<image>``; under ``root/pool/`` the class folder is the
  weak label; see :func:`load_imagefolder`.

A CSV is read as the user's spreadsheet wrote it: its encoding is detected (UTF-8, UTF-8 with a BOM as
Excel's "CSV UTF-8" writes it, UTF-16 with a BOM; otherwise it is read as cp1252, Windows' Western
European, or latin-1, with a note), and so is its separator (``,``, ``;`` as Excel writes in European
locales, tab or ``|``: the one that makes the header name the most manifest columns). Each row keeps its
CSV line number for the messages. Rows whose every cell is empty (spreadsheet leftovers) are skipped with
a note. Validating and storing the rows is core.data.ingest's job.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.constants import MANIFEST_COLUMNS, POOL, REQUIRED_COLUMNS, SPLITS

CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
#: Separators tried on a CSV's header, in order of preference when they tie.
SEPARATORS = (",", ";", "\t", "|")
#: Encodings tried, in order, when a CSV is not UTF-8 (latin-1 decodes any byte, so it is the last).
FALLBACK_ENCODINGS = (("cp1252", "Windows Western European"), ("latin-1", "ISO 8859-1"))
#: Column names people use for the manifest's columns; named in the error when a column is missing.
COLUMN_HINTS = {"path": ("file", "filename", "file_name", "filepath", "file_path", "image", "image_path", "img"),
                "label": ("class", "class_name", "category", "target", "y"), "split": ("set", "subset", "fold")}


class IngestError(ValueError):
    """The input as a whole cannot be ingested (unreadable manifest, missing column, no class list)."""


@dataclass
class Manifest:
    """Rows read from a manifest or an ImageFolder tree.

    ``rows`` has the text columns :data:`MANIFEST_COLUMNS` and then the metadata columns, every other
    column of the manifest by its lowercase name (``""`` = empty cell), indexed 0..N-1; ``lines`` is each
    row's first line in the CSV (None for Parquet and ImageFolder); ``notes`` says what the reader decided
    that the user should know (encoding, separator, skipped rows).
    """

    rows: pd.DataFrame
    lines: list[int] | None = None
    notes: list[str] = field(default_factory=list)


def cell_text(value: Any) -> str:
    """A cell as stripped text; missing values become ``""`` and integral floats lose their ``.0``.

    Bytes (a binary Parquet column) are decoded as the file system decodes names (UTF-8, with undecodable
    bytes kept as lone surrogates, which validation then refuses as ``non_utf8``).
    """
    if value is None:
        return ""
    if isinstance(value, bytes):
        return os.fsdecode(value).strip()
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):  # list-like cells: not a missing value
        pass
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def missing_columns(frame: pd.DataFrame) -> list[str]:
    """Required columns absent from ``frame`` (``label`` may be absent when ``weak_label`` is present)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    return [] if missing == ["label"] and "weak_label" in frame.columns else missing


def text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The :data:`MANIFEST_COLUMNS` of ``frame`` as stripped text (absent ones empty), indexed 0..N-1.

    The columns are of ``object`` dtype: a file name that is not UTF-8 (a lone surrogate) cannot live in
    pandas' Arrow-backed ``str`` columns, and validation must see it to reject that row alone.
    """
    return pd.DataFrame({c: ([cell_text(v) for v in frame[c]] if c in frame.columns else [""] * len(frame))
                         for c in MANIFEST_COLUMNS}, index=pd.RangeIndex(len(frame)), dtype=object)


def metadata_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``frame`` that are not :data:`MANIFEST_COLUMNS` (image metadata), as stripped text like
    :func:`text_frame`'s, named as they are (lowercase when they come from :func:`load_manifest`)."""
    extra = [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    return pd.DataFrame({str(c): [cell_text(v) for v in frame[c]] for c in extra}, index=pd.RangeIndex(len(frame)),
                        dtype=object)


# -- CSV text ------------------------------------------------------------------------------------------


def _position(data: bytes, at: int) -> str:
    line_start = data.rfind(b"\n", 0, at) + 1
    line = data.count(b"\n", 0, at) + 1
    return f"line {line}, byte {at - line_start + 1} of the line (byte {at} of the file)"


def _decode_text(data: bytes, name: str) -> tuple[str, str | None]:
    """The CSV's text and, when it was not UTF-8, a note saying how it was read."""
    if data.startswith(b"PK\x03\x04"):
        raise IngestError(f"Manifest {name} is a zip file (an Excel .xlsx workbook?), not a CSV: save it as "
                          f"'CSV UTF-8' or Parquet.")
    for bom, codec in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                       (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(codec), None
            except UnicodeDecodeError as exc:
                raise IngestError(f"Manifest {name} starts with a {codec.upper()} byte-order mark but is not "
                                  f"{codec.upper()}: byte 0x{data[len(bom) + exc.start]:02x} at "
                                  f"{_position(data, len(bom) + exc.start)}. Save it again as 'CSV UTF-8'.") from exc
    if b"\x00" in data[:4096]:
        raise IngestError(f"Manifest {name} holds NUL bytes: it is not a text CSV (UTF-16 without a byte-order "
                          f"mark, or a binary file). Save it as 'CSV UTF-8'.")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    for encoding, description in FALLBACK_ENCODINGS:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return text, (f"{name} is not UTF-8 (byte 0x{data[first_bad]:02x} at {_position(data, first_bad)}); "
                      f"it was read as {encoding} ({description}): check that names with accents look "
                      f"right, or save the file as 'CSV UTF-8'.")
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def _header_names(line: str, sep: str) -> list[str]:
    return [c.strip().lower() for c in next(csv.reader([line], delimiter=sep, skipinitialspace=True), [])]


def _sniff_separator(text: str) -> str:
    """The separator under which the header names the most manifest columns (``,`` when none does)."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    scores = {sep: len(set(_header_names(header, sep)) & set(MANIFEST_COLUMNS)) for sep in SEPARATORS}
    best = max(SEPARATORS, key=lambda sep: scores[sep])  # max keeps the first of equal scores
    return best if scores[best] else ","


def _parse_csv(text: str, sep: str, name: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, records and each record's first line; a record longer than the header is an error."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, skipinitialspace=True)
    header: list[str] | None = None
    records: list[list[str]] = []
    lines: list[int] = []
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record:  # a blank line
                continue
            if header is None:
                header = [c.strip().lower() for c in record]
                continue
            if len(record) > len(header):
                if any(c.strip() for c in record[len(header):]):
                    raise IngestError(
                        f"Manifest {name} line {line} has {len(record)} cells but the header has {len(header)}: "
                        f"is a cell holding the separator {sep!r} without quotes around it?")
                record = record[:len(header)]
            records.append(record + [""] * (len(header) - len(record)))
            lines.append(line)
    except csv.Error as exc:
        raise IngestError(f"Manifest {name} line {reader.line_num} is not valid CSV: {exc}") from exc
    if header is None:
        raise pd.errors.EmptyDataError("no header")
    return header, records, lines


def _read_csv(manifest: Path) -> tuple[pd.DataFrame, list[int], list[str]]:
    text, note = _decode_text(manifest.read_bytes(), manifest.name)
    if not text.strip():
        raise pd.errors.EmptyDataError("no text")
    sep = _sniff_separator(text)
    header, records, lines = _parse_csv(text, sep, manifest.name)
    notes = [note] if note else []
    if sep != ",":
        notes.append(f"{manifest.name} was read as {_SEP_NAMES[sep]}-separated.")
    frame = pd.DataFrame(records, columns=[c or f"(unnamed column {i + 1})" for i, c in enumerate(header)],
                         dtype=object)
    return frame, lines, notes


_SEP_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "'|'"}


# -- manifests -----------------------------------------------------------------------------------------


def _read_table(manifest: Path) -> tuple[pd.DataFrame, list[int] | None, list[str]]:
    suffix = manifest.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _read_csv(manifest)
    if suffix in PARQUET_SUFFIXES:
        return pd.read_parquet(manifest), None, []
    hint = " Excel workbooks: save them as 'CSV UTF-8'." if suffix in (".xlsx", ".xls", ".xlsm", ".ods") else ""
    raise IngestError(f"Manifest {manifest}: unsupported file type {manifest.suffix!r}; use a CSV "
                      f"({', '.join(CSV_SUFFIXES)}) or Parquet ({', '.join(PARQUET_SUFFIXES)}) file.{hint}")


def _missing_column_error(manifest: Path, raw: pd.DataFrame, missing: list[str]) -> IngestError:
    found = [str(c) for c in raw.columns]
    hints = [f"{c!r} for {name!r}" for name in missing for c in found if c in COLUMN_HINTS.get(name, ())]
    text = (f"Manifest {manifest} has no {', '.join(repr(c) for c in missing)} column "
            f"(found: {', '.join(found) or 'none'}); a manifest needs the columns {', '.join(REQUIRED_COLUMNS)} "
            f"and may add weak_label, group, true_label.")
    if hints:
        text += f" Rename {', '.join(hints)}."
    if len(found) == 1 and manifest.suffix.lower() in CSV_SUFFIXES:
        text += (f" The header was read as a single column: are the columns separated by something other "
                 f"than {', '.join(_SEP_NAMES[s] for s in SEPARATORS)}?")
    return IngestError(text)


def _drop_empty_rows(raw: pd.DataFrame, lines: list[int] | None, name: str,
                     notes: list[str]) -> tuple[pd.DataFrame, list[int] | None]:
    empty = np.array([all(cell_text(v) == "" for v in row) for row in raw.itertuples(index=False)], dtype=bool)
    if not len(raw.columns) or not empty.any():
        return raw, lines
    where = [f"line {lines[i]}" for i in empty.nonzero()[0]] if lines else [f"row {i + 1}" for i in empty.nonzero()[0]]
    shown = ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
    notes.append(f"{name}: skipped {len(where)} row(s) whose every cell is empty ({shown}).")
    keep = ~empty
    return raw[keep].reset_index(drop=True), ([n for n, k in zip(lines, keep) if k] if lines else None)


def load_manifest(manifest: str | Path) -> Manifest:
    """Read a manifest into :class:`Manifest` rows of text columns :data:`MANIFEST_COLUMNS`.

    Column names are matched case-insensitively; every other column is kept as image metadata, named in
    lowercase (core.data.metadata types it at ingest). The
    ``label`` column may be left out only when a ``weak_label`` column is present (a pool-only
    manifest); non-pool rows without a label are then rejected row by row. Raises :class:`IngestError`
    for a missing, unreadable or empty file, an unsupported extension, a repeated or missing required
    column (naming the columns found, and the separator when the header was read as one column).
    """
    manifest = Path(manifest).expanduser()
    if not manifest.is_file():
        raise IngestError(f"Manifest {manifest} does not exist (or is not a file).")
    try:
        raw, lines, notes = _read_table(manifest)
    except IngestError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise IngestError(f"Manifest {manifest} is empty: expected a header row with columns "
                          f"{', '.join(REQUIRED_COLUMNS)}.") from exc
    except Exception as exc:  # Arrow and OS errors all mean the same to the user
        raise IngestError(f"Manifest {manifest} could not be read: {type(exc).__name__}: {exc}") from exc
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    repeated = sorted({c for c in raw.columns if list(raw.columns).count(c) > 1})
    if repeated:
        raise IngestError(f"Manifest {manifest} has the column(s) {', '.join(map(repr, repeated))} more than once "
                          f"(column names are case-insensitive); keep one of each.")
    missing = missing_columns(raw)
    if missing:
        raise _missing_column_error(manifest, raw, missing)
    raw, lines = _drop_empty_rows(raw, lines, manifest.name, notes)
    if raw.empty:
        raise IngestError(f"Manifest {manifest} has a header but no rows.")
    return Manifest(pd.concat([text_frame(raw), metadata_frame(raw)], axis=1), lines, notes)


def read_manifest(manifest: str | Path) -> pd.DataFrame:
    """The rows of :func:`load_manifest` (text columns :data:`MANIFEST_COLUMNS`, then the metadata columns;
    ``""`` = empty cell)."""
    return load_manifest(manifest).rows


# -- ImageFolder -----------------------------------------------------------------------------------------


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _walk(folder: Path, ancestors: frozenset[str], skipped: dict[str, int]) -> list[Path]:
    """Every non-folder entry below ``folder`` (files, and broken or looping symlinks for validation to
    reject), following symlinked folders except back into one of their ``ancestors``."""
    out: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if not _visible(entry.name):
            skipped["hidden"] += 1
        elif entry.is_dir():
            real = os.path.realpath(entry)
            if real in ancestors:
                skipped["loop"] += 1
            else:
                out += _walk(entry, ancestors | {real}, skipped)
        else:
            out.append(entry)
    return out


def load_imagefolder(root: str | Path) -> Manifest:
    """List ``root/<split>/<class>/<image>`` as :class:`Manifest` rows.

    Every visible entry below a top-level folder becomes a row (sub-folders of a class folder included,
    symlinked folders followed), so files in a folder that is not a split are reported as
    ``unknown_split`` rather than skipped, a file directly in a split folder has no class
    (``missing_label``), and a broken symlink is ``missing_file``. Under ``pool/`` the class folder is
    the weak label. Files directly in ``root`` and hidden files are not rows (a note counts them).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise IngestError(f"ImageFolder root {root} does not exist (or is not a folder).")
    split_dirs = sorted(d for d in root.iterdir() if d.is_dir() and _visible(d.name))
    if not any(d.name in SPLITS for d in split_dirs):
        raise IngestError(f"ImageFolder root {root} has no split folder; expected some of "
                          f"{', '.join(s + '/' for s in SPLITS)} each holding one folder per class.")
    skipped = {"hidden": sum(1 for d in root.iterdir() if not _visible(d.name)),
               "loop": 0, "top": sum(1 for d in root.iterdir() if _visible(d.name) and not d.is_dir())}
    records = []
    for split_dir in split_dirs:
        for f in _walk(split_dir, frozenset({str(root), os.path.realpath(split_dir)}), skipped):
            parts = f.relative_to(split_dir).parts
            cls = parts[0] if len(parts) > 1 else ""
            is_pool = split_dir.name == POOL
            records.append({"path": str(f), "label": "" if is_pool else cls, "split": split_dir.name,
                            "weak_label": cls if is_pool else "", "group": "", "true_label": ""})
    notes = []
    counts = [(skipped["hidden"], "hidden entries (names starting with '.')"),
              (skipped["top"], f"files directly in {root.name}/ (not in a split folder)"),
              (skipped["loop"], "symlinked folders leading back into themselves (not followed)")]
    if any(n for n, _ in counts):
        notes.append(f"{root.name}/: ignored " + ", ".join(f"{n} {what}" for n, what in counts if n) + ".")
    return Manifest(pd.DataFrame(records, columns=list(MANIFEST_COLUMNS), dtype=object), None, notes)


def scan_imagefolder(root: str | Path) -> pd.DataFrame:
    """The rows of :func:`load_imagefolder` (text columns :data:`MANIFEST_COLUMNS`)."""
    return load_imagefolder(root).rows


def manifest_with_splits_as(path: str | Path, splits: Sequence[str], into: str) -> Path:
    """A copy of the CSV manifest ``path`` whose rows of ``splits`` are moved into the split ``into`` (next
    to it, ``<stem>-<splits>-as-<into>``). E.g. a demo without its ``error_sample`` / ``error_heldout``
    splits, as most users' data comes: the failure's images stay in ``test``, unmarked, where a user would
    meet them."""
    path = Path(path)
    df = pd.read_csv(path)
    out = path.with_name(f"{path.stem}-{'-'.join(splits)}-as-{into}{path.suffix}")
    df.loc[df["split"].isin(list(splits)), "split"] = into
    df.to_csv(out, index=False)
    return out
