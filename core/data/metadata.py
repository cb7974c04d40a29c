"""Image metadata: a manifest's columns beyond the built-in ones (site, camera, source, date ...), kept per image.

Every manifest column that is not one of :data:`~core.constants.MANIFEST_COLUMNS` is metadata. Column names
are lowercase (manifest columns are matched case-insensitively), so they never collide with the built-in
ones. Each column gets one kind of :data:`~core.constants.METADATA_KINDS`, inferred from its non-empty
cells:

- ``number``: the cells parse as numbers (``12``, ``-0.5``, ``1e3``; a leading zero, ``007``, makes a code,
  not a number; ``1,5`` and ``NA`` do not parse);
- ``date``: the cells parse as ISO dates, ``YYYY-MM-DD``, optionally with a time (``2023-04-05 10:20``,
  ``2023-04-05T10:20:30Z``; a time zone is converted to UTC);
- ``text``: anything else.

A column where at least :data:`MOSTLY` of the cells parse as numbers (or dates) is of that kind even if a few
do not: each of those is a bad value, reported with its row, column and value (:func:`bad_value_report`);
the row is kept and only that cell's typed value is empty. A column a workspace already has keeps its kind
(the first ingest that brought it decided). Nothing is lost: ``image_metadata.text_value`` holds every cell
as written, bad values included.

Reading: :func:`metadata_columns` (the columns, their kinds and counts), :func:`image_metadata` (the
metadata of given images as a wide DataFrame), :func:`column_values` (one column's typed values).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb
import pandas as pd

from core.constants import MANIFEST_COLUMNS
from core.store.workspace import Workspace

#: The share of a column's non-empty cells that must parse as numbers (or dates) for it to be of that kind.
MOSTLY = 0.8
BAD_VALUE_COLUMNS = ("row", "path", "column", "value", "message")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_CODE = re.compile(r"[+-]?0\d")  # 007, 02134: an identifier or a postal code, whose zeros matter
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?")
_NOT_A = {"number": "is not a number", "date": "is not a date (YYYY-MM-DD, optionally with a time)"}


@dataclass(frozen=True)
class MetadataColumn:
    """A metadata column: its ``name``, ``kind`` (one of :data:`~core.constants.METADATA_KINDS`), how many
    images have a value in it (``n_values``, bad values included) and how many of those did not parse
    (``n_bad``; always 0 for text)."""

    name: str
    kind: str
    n_values: int = 0
    n_bad: int = 0


# -- typing cells ----------------------------------------------------------------------------------------


def parse_number(text: str) -> float | None:
    """``text`` as a number, or None when it is not one (see the module doc)."""
    text = text.strip()
    if not _NUMBER.fullmatch(text) or _CODE.match(text):
        return None
    return float(text)


def parse_date(text: str) -> datetime | None:
    """``text`` as an ISO date or date-time (naive, in UTC when it carried a time zone), or None."""
    text = text.strip()
    if not _DATE.fullmatch(text):
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:  # 2023-02-30
        return None
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


_PARSERS = {"number": parse_number, "date": parse_date}


def infer_kind(cells: Iterable[str]) -> str:
    """The kind of a column from its cells (``""`` = empty, not counted): ``number`` or ``date`` when at least
    :data:`MOSTLY` of the non-empty cells parse as one, else ``text`` (also for a column with no value)."""
    values = [c for c in cells if c]
    if not values:
        return "text"
    for kind in ("number", "date"):
        if sum(_PARSERS[kind](v) is not None for v in values) >= MOSTLY * len(values):
            return kind
    return "text"


def metadata_names(columns: Iterable[str]) -> list[str]:
    """The columns of a manifest (lowercase names) that are metadata: all but the built-in ones."""
    return [c for c in columns if c not in MANIFEST_COLUMNS]


@dataclass
class TypedMetadata:
    """The metadata cells of some input rows, typed: ``kinds`` (column -> kind, in the input's order),
    ``cells`` (one row per non-empty cell: ``row``, the 0-based input row, ``column_name``, ``text_value``,
    ``number_value``, ``date_value``) and ``bad`` (the cells of a number or date column that did not parse:
    ``row``, ``column``, ``value``, ``kind``)."""

    kinds: dict[str, str]
    cells: pd.DataFrame
    bad: pd.DataFrame

    def only(self, rows: Sequence[int]) -> TypedMetadata:
        """The cells and bad values of the given input rows only."""
        keep = set(int(r) for r in rows)
        return TypedMetadata(self.kinds, self.cells[self.cells.row.isin(keep)].reset_index(drop=True),
                             self.bad[self.bad.row.isin(keep)].reset_index(drop=True))


CELL_COLUMNS = ("row", "column_name", "text_value", "number_value", "date_value")


def type_metadata(frame: pd.DataFrame, known: Mapping[str, str] | None = None) -> TypedMetadata:
    """Type the text cells of ``frame`` (one column per metadata column, ``""`` = empty, rows 0..N-1): each
    column takes its kind from ``known`` (the workspace's columns) or else :func:`infer_kind`."""
    known = known or {}
    kinds: dict[str, str] = {}
    cells: list[tuple] = []
    bad: list[tuple] = []
    for name in frame.columns:
        texts = [str(v) for v in frame[name]]
        kind = kinds[name] = known.get(name) or infer_kind(texts)
        parse = _PARSERS.get(kind)
        for row, text in enumerate(texts):
            if not text:
                continue
            value = parse(text) if parse else None
            if parse and value is None:
                bad.append((row, name, text, kind))
            cells.append((row, name, text, value if kind == "number" else None, value if kind == "date" else None))
    table = pd.DataFrame(cells, columns=list(CELL_COLUMNS))
    table["number_value"] = pd.to_numeric(table["number_value"], errors="coerce").astype("float64")
    table["date_value"] = pd.to_datetime(table["date_value"], errors="coerce")
    return TypedMetadata(kinds, table, pd.DataFrame(bad, columns=["row", "column", "value", "kind"]))


def bad_value_report(bad: pd.DataFrame, *, paths: Mapping[int, str], lines: Sequence[int] | None) -> pd.DataFrame:
    """The bad values (of :class:`TypedMetadata`) as ingest reports them: ``row`` (1-based among the input's
    rows), ``path``, ``column``, ``value`` and a ``message`` that starts with the row and its CSV line, as a
    rejection's does (``row 4 (line 5): exposure: 'n/a' is not a number; ...``)."""
    out = []
    for r in bad.sort_values(["row", "column"], kind="stable").itertuples(index=False):
        where = f"row {r.row + 1}" + (f" (line {lines[r.row]})" if lines is not None else "")
        out.append({"row": r.row + 1, "path": paths.get(r.row, ""), "column": r.column, "value": r.value,
                    "message": f"{where}: {r.column}: {r.value!r} {_NOT_A[r.kind]}; the image is kept, this "
                               f"cell's {r.kind} left empty"})
    return pd.DataFrame(out, columns=list(BAD_VALUE_COLUMNS))


# -- storing (inside ingest's write transaction) ----------------------------------------------------------


def stored_kinds(ws: Workspace) -> dict[str, str]:
    """The workspace's metadata columns and their kinds, in order."""
    df = ws.df("SELECT column_name, kind FROM metadata_columns ORDER BY position")
    return dict(zip(df.column_name, df.kind))


class MetadataKindChanged(ValueError):
    """Another ingest stored a metadata column with another kind while this one ran."""


def write_metadata(con: duckdb.DuckDBPyConnection, kinds: Mapping[str, str], cells: pd.DataFrame) -> None:
    """Inside a write transaction: record the columns of ``kinds`` the workspace lacks, and insert ``cells``
    (columns ``image_id`` and those of :data:`CELL_COLUMNS` but ``row``). Raises :class:`MetadataKindChanged`
    when a column is stored with another kind than the one its cells were typed with."""
    stored = dict(con.execute("SELECT column_name, kind FROM metadata_columns").fetchall())
    changed = [f"{c!r} ({stored[c]}, not {k})" for c, k in kinds.items() if c in stored and stored[c] != k]
    if changed:
        raise MetadataKindChanged(f"metadata column(s) {', '.join(changed)} were stored by another ingest while "
                                  f"this one ran; run this ingest again")
    # fetchall, not fetchone: a result left unfinished makes DuckDB refuse the connection's next statement
    start = con.execute("SELECT coalesce(max(position), -1) + 1 FROM metadata_columns").fetchall()[0][0]
    new = [c for c in kinds if c not in stored]
    if new:
        con.executemany("INSERT INTO metadata_columns (column_name, kind, position) VALUES (?, ?, ?)",
                        [(c, kinds[c], start + i) for i, c in enumerate(new)])
    if len(cells):
        con.register("_ingest_metadata", cells[["image_id", "column_name", "text_value", "number_value",
                                                "date_value"]])
        con.execute("INSERT INTO image_metadata SELECT image_id, column_name, text_value, number_value, "
                    "date_value FROM _ingest_metadata")
        con.unregister("_ingest_metadata")


# -- reading --------------------------------------------------------------------------------------------


def metadata_columns(ws: Workspace) -> list[MetadataColumn]:
    """The workspace's metadata columns in the order they were first ingested, with their counts."""
    df = ws.df(
        "SELECT c.column_name, c.kind, count(m.image_id) AS n_values, count(m.image_id) FILTER "
        "(WHERE (c.kind = 'number' AND m.number_value IS NULL) OR (c.kind = 'date' AND m.date_value IS NULL)) "
        "AS n_bad FROM metadata_columns c LEFT JOIN image_metadata m USING (column_name) "
        "GROUP BY c.column_name, c.kind, c.position ORDER BY c.position")
    return [MetadataColumn(r.column_name, r.kind, int(r.n_values), int(r.n_bad)) for r in df.itertuples(index=False)]


def _typed(df: pd.DataFrame, kind: str) -> pd.Series:
    if kind == "number":
        return df.number_value.astype("float64")
    if kind == "date":
        return pd.to_datetime(df.date_value)
    return df.text_value.astype(object)


def image_metadata(ws: Workspace, image_ids: Sequence[int], *, columns: Sequence[str] | None = None,
                   as_written: bool = False) -> pd.DataFrame:
    """The metadata of ``image_ids`` as a wide DataFrame indexed by ``image_id`` (in the given order), one
    column per metadata column (``columns``, default all, in order): numbers as floats, dates as
    timestamps, text as str, missing (no value, or a bad value) as NaN (NaT for dates). ``as_written``:
    every cell as the manifest wrote it (bad values included), as text."""
    kinds = stored_kinds(ws)
    unknown = [c for c in columns or () if c not in kinds]
    if unknown:
        raise ValueError(f"no metadata column {', '.join(map(repr, unknown))} in this workspace; it has "
                         f"{', '.join(kinds) or 'none'}")
    names = list(columns) if columns is not None else list(kinds)
    ids = [int(i) for i in image_ids]
    long = ws.df("SELECT image_id, column_name, text_value, number_value, date_value FROM image_metadata "
                 "WHERE image_id IN (SELECT unnest(?::BIGINT[])) AND column_name IN (SELECT unnest(?::VARCHAR[]))",
                 [ids, names])
    out = pd.DataFrame(index=pd.Index(ids, name="image_id", dtype="int64"))
    for name in names:
        part = long[long.column_name == name].set_index("image_id")
        values = part.text_value.astype(object) if as_written else _typed(part, kinds[name])
        out[name] = values.reindex(out.index)
    return out


def column_values(ws: Workspace, column: str, *, split: str | None = None) -> pd.Series:
    """The typed values of one metadata column for every image (of ``split``, if given; labelled images only
    then, as evaluation uses them), indexed by ``image_id``; missing values as NaN (NaT for dates)."""
    kinds = stored_kinds(ws)
    if column not in kinds:
        raise ValueError(f"no metadata column {column!r} in this workspace; it has {', '.join(kinds) or 'none'}")
    where = "WHERE i.split = ? AND i.label IS NOT NULL" if split else ""
    df = ws.df("SELECT i.image_id, m.text_value, m.number_value, m.date_value FROM images i "
               "LEFT JOIN image_metadata m ON m.image_id = i.image_id AND m.column_name = ? "
               f"{where} ORDER BY i.image_id", [column, *([split] if split else [])])
    values = _typed(df, kinds[column])
    values.index = pd.Index(df.image_id.astype("int64"), name="image_id")
    return values.rename(column)

