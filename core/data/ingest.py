"""Ingest image datasets into a workspace, validating every row.

The rows come from a manifest or an ImageFolder tree (core.data.manifest). Every row is checked (split,
labels against the class list, the path, duplicates, the file exists, the image actually decodes, as
training will decode it) by core.data.validate. Good rows are kept, bad rows are reported with a machine
code and a message in an :class:`IngestReport` and written as CSV under ``artifacts/ingest/``: nothing is
dropped silently. Each message starts with the row (1-based among the input's rows; for a CSV also its
line: ``row 4 (line 5): missing_file: no file at ...``) and the reason.

Rejection reasons (``IngestReport.rejected.reason``, :data:`REASONS`)::

    empty_path          the path cell is empty
    non_utf8            a file name (or cell) is not valid UTF-8; the workspace stores text as UTF-8
    unknown_split       split is not one of core.constants.SPLITS (any case: "Train" is train)
    missing_label       a non-pool row without label
    missing_weak_label  a pool row without weak_label
    unknown_label       label, weak_label or true_label is not in the class list ("did you mean" a look-alike)
    outside_root        the file is outside the manifest's folder (or the ImageFolder root): an absolute path
                        elsewhere, a ../ that leaves it, a symlink out of it; allowed with --allow-outside
    duplicate_path      the same file appears earlier in the input (the first is kept) or is already ingested
    missing_file        no file at that path (also: a folder, a broken symlink, a symlink loop)
    unreadable_image    the file does not decode as an image (empty, not an image, truncated, corrupt)
    too_large           more pixels than the decode limit (a decompression bomb); the message says how to raise it

What ingest does with each kind of file (decoded by core.data.imagefile.read_rgb, the path training,
embedding and thumbnails use too)::

    kind of file                         what happens
    JPEG, PNG, WebP, BMP, TIFF, GIF ...  decoded fully; kept (GIF/TIFF: the first frame)
    RGB                                  kept as is
    grayscale (L), 1-bit, palette (P)    converted to RGB (grey replicated, palette looked up)
    RGBA, LA, palette with transparency  alpha composited on white (not dropped: no black backgrounds)
    CMYK JPEG                            converted to RGB by PIL (no ICC colour management)
    16-bit (I;16, I)                     scaled to 8 bits (value >> 8), not clipped to white
    16-bit RGB PNG                       read by PIL as 8-bit RGB (the high byte)
    EXIF orientation                     applied; width and height are recorded upright
    more than MAX_IMAGE_PIXELS           too_large (100 megapixels; --max-pixels N or $DCD_MAX_IMAGE_PIXELS)
    truncated or corrupt image           unreadable_image (truncated files are never padded)
    zero-byte file, text named .jpg      unreadable_image (the message says empty / what the file starts with)
    non-UTF-8 file name                  non_utf8 (the others are kept); rename it to UTF-8
    emoji and other UTF-8 file names     kept
    outside the input's folder           outside_root, unless --allow-outside
    symlink inside to a file inside      kept, stored by its resolved path
    broken symlink, symlink loop         missing_file

Decisions about the input as a whole, reported as notes in the summary (:attr:`IngestReport.notes`):

- A CSV's encoding is detected: UTF-8, UTF-8 with BOM (Excel's "CSV UTF-8"), UTF-16 with BOM; any other
  file is read as cp1252 (else latin-1) with a note naming the first non-UTF-8 byte and its line. The
  separator is detected (``,``, ``;`` as Excel writes in European locales, tab, ``|``). Rows whose every
  cell is empty are skipped and counted. Parquet is read as is.
- Every other column is image metadata (core.data.metadata): kept per image, typed per column as text,
  number or date (:attr:`IngestReport.metadata`). A cell of a number or date column that does not parse is
  a bad value: the row is kept, that cell's typed value left empty, and the cell reported with its row,
  column and value (:attr:`IngestReport.bad_values`, written as CSV under ``artifacts/ingest/``). A column
  with no value in any row is not kept (a note names it).
- Labels (core.data.classes): ``"1"`` and ``"1.0"`` are one class; integer train labels get class ids in
  numeric order (``"2"`` before ``"10"``); ``"Cat"`` and ``"cat"`` stay two classes with a note naming them
  (some datasets tell them apart, and merging would rewrite rows). Class ids are given in class-list
  order starting at 0, and classes new to a workspace are appended after its existing ones.
- Paths: relative paths resolve against the manifest's folder (the ImageFolder root); files must lie
  inside it. A manifest normally travels with its images, so a path that leaves the folder is more
  likely a mistake, or someone else's manifest reaching into your files, than intended; a dataset kept
  elsewhere on purpose is one ``--allow-outside`` away.
- Non-UTF-8 file names are rejected, not stored: DuckDB text must be valid UTF-8, and a path stored in
  an escaped form would no longer open the file anywhere else (the app, the mosaics).
- Re-ingesting rows already in the workspace adds nothing: they are ``duplicate_path`` rejections
  counted in :attr:`IngestReport.n_existing`, and the ingest job succeeds ("nothing new was added"); it
  fails only when no row of the input is in the workspace afterwards (every row bad).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from core.constants import LABEL_COLUMNS, MANIFEST_COLUMNS, SPLITS
from core.data.classes import canonical_labels, resolve_classes, similar_class_notes
from core.data.imagefile import MAX_IMAGE_PIXELS, max_image_pixels, safe_text
from core.data.manifest import (
    IngestError,
    Manifest,
    load_imagefolder,
    load_manifest,
    metadata_frame,
    missing_columns,
    text_frame,
)
from core.data.metadata import (
    BAD_VALUE_COLUMNS,
    MetadataKindChanged,
    TypedMetadata,
    bad_value_report,
    stored_kinds,
    type_metadata,
    write_metadata,
)
from core.data.validate import ACCEPTED_COLUMNS, REASONS, REJECTION_COLUMNS, canonical_splits, validate_rows
from core.progress import Progress, as_progress
from core.store.workspace import Workspace

__all__ = ["ACCEPTED_COLUMNS", "BAD_VALUE_COLUMNS", "MAX_IMAGE_PIXELS", "REASONS", "REJECTION_COLUMNS", "IngestError",
           "IngestReport", "ingest_imagefolder", "ingest_manifest", "ingest_rows", "resolve_classes"]


# -- the report ---------------------------------------------------------------------------------------


@dataclass
class IngestReport:
    """What an ingest did.

    ``counts`` maps each split to the number of rows added to it; ``rejected`` has one row per rejected
    input row with columns ``row`` (1-based position among the input rows), ``path``, ``reason`` (one of
    :data:`REASONS`) and ``message`` (which names the row, its CSV line, and the reason). ``n_existing``
    counts the rows rejected only because their file is already in the workspace. ``notes`` are the
    decisions about the input as a whole (encoding, separator, empty columns, look-alike classes).
    ``metadata`` maps each metadata column of the input to its kind (text, number, date); ``bad_values`` has
    one row per metadata cell of an added row that did not parse as its column's kind (columns
    :data:`~core.data.metadata.BAD_VALUE_COLUMNS`: ``row``, ``path``, ``column``, ``value``, ``message``):
    the row was added, that cell's typed value left empty.
    """

    source: str
    n_rows: int
    n_added: int
    rejected: pd.DataFrame
    counts: dict[str, int]
    classes: list[str] = field(default_factory=list)
    rejections_path: Path | None = None
    n_existing: int = 0
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    bad_values: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(BAD_VALUE_COLUMNS)))
    bad_values_path: Path | None = None

    @property
    def n_rejected(self) -> int:
        return len(self.rejected)

    def rejections_by_reason(self) -> dict[str, int]:
        """Number of rejected rows per reason, most frequent first."""
        return {str(k): int(v) for k, v in self.rejected["reason"].value_counts().items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what the ingest job records as its result)."""
        return {
            "source": self.source,
            "n_rows": self.n_rows,
            "n_added": self.n_added,
            "n_rejected": self.n_rejected,
            "n_existing": self.n_existing,
            "counts": dict(self.counts),
            "rejections": self.rejections_by_reason(),
            "rejections_path": str(self.rejections_path) if self.rejections_path else None,
            "classes": list(self.classes),
            "notes": list(self.notes),
            "metadata": dict(self.metadata),
            "n_bad_values": len(self.bad_values),
            "bad_values_path": str(self.bad_values_path) if self.bad_values_path else None,
        }

    def summary(self, *, examples: int = 5) -> str:
        """A readable table: rows added per split, rejections per reason, the first few rejected rows."""
        lines = [f"Ingest of {self.source}: {self.n_added} of {self.n_rows} rows added, "
                 f"{self.n_rejected} rejected; {len(self.classes)} classes."]
        if self.n_added == 0 and self.n_existing:
            lines.append(f"Nothing new was added: {self.n_existing} row(s) of the input are already in the "
                         f"workspace (ingested earlier).")
        lines += [f"  note: {note}" for note in self.notes]
        if self.metadata:
            bad = self.bad_values["column"].value_counts()
            lines.append("  metadata kept: " + ", ".join(
                f"{c} ({k}" + (f", {bad[c]} bad value{'s' if bad[c] > 1 else ''})" if c in bad.index else ")")
                for c, k in self.metadata.items()))
        if self.counts:
            lines += ["", f"  {'split':<16}{'added':>8}"]
            lines += [f"  {split:<16}{n:>8}" for split, n in self.counts.items()]
        if self.n_rejected:
            lines += ["", f"  {'rejection':<20}{'rows':>8}"]
            lines += [f"  {reason:<20}{n:>8}" for reason, n in self.rejections_by_reason().items()]
            lines += ["", "  first rejected rows:"]
            lines += [f"    {message}" for message in self.rejected["message"].head(examples)]
            if self.n_rejected > examples:
                lines.append(f"    ... and {self.n_rejected - examples} more")
        if self.rejections_path:
            lines += ["", f"  all rejections: {self.rejections_path}"]
        if len(self.bad_values):
            lines += ["", f"  {len(self.bad_values)} bad metadata value(s): the rows were added and each cell is kept "
                          f"as written, only its number or date is left empty:"]
            lines += [f"    {message}" for message in self.bad_values["message"].head(examples)]
            if len(self.bad_values) > examples:
                lines.append(f"    ... and {len(self.bad_values) - examples} more")
        if self.bad_values_path:
            lines.append(f"  all bad values: {self.bad_values_path}")
        return "\n".join(lines)


# -- writing -------------------------------------------------------------------------------------------


def _write(ws: Workspace, accepted: pd.DataFrame, classes: list[str], source: str, metadata: TypedMetadata) -> None:
    """Insert the class list's new classes, the accepted images and their metadata in one short transaction."""
    with ws.write() as con:
        class_ids = dict(con.execute("SELECT name, class_id FROM classes").fetchall())
        new = [c for c in classes if c not in class_ids]
        next_id = max(class_ids.values(), default=-1) + 1
        class_ids.update({name: next_id + k for k, name in enumerate(new)})
        if new:
            new_classes = pd.DataFrame({"class_id": [class_ids[c] for c in new], "name": new})
            con.register("_ingest_classes", new_classes)
            con.execute("INSERT INTO classes (class_id, name) SELECT class_id, name FROM _ingest_classes")
            con.unregister("_ingest_classes")
        base = con.execute("SELECT coalesce(max(image_id), -1) + 1 FROM images").fetchall()[0][0]
        images = pd.DataFrame({
            "image_id": pd.RangeIndex(base, base + len(accepted)).astype("int64"),
            "path": accepted["path"].to_numpy(),
            "split": accepted["split"].to_numpy(),
            **{col: accepted[col].map(class_ids).astype("Int32").to_numpy() for col in LABEL_COLUMNS},
            "group_name": accepted["group_name"].to_numpy(),
            "width": accepted["width"].astype("int32").to_numpy(),
            "height": accepted["height"].astype("int32").to_numpy(),
            "source": source,
        })
        con.register("_ingest_images", images)
        con.execute("INSERT INTO images (image_id, path, split, label, weak_label, group_name, true_label, "
                    "width, height, source) SELECT image_id, path, split, label, weak_label, group_name, "
                    "true_label, width, height, source FROM _ingest_images")
        con.unregister("_ingest_images")
        image_of_row = dict(zip(accepted["row"] - 1, images["image_id"]))
        cells = metadata.cells.assign(image_id=metadata.cells["row"].map(image_of_row).astype("int64"))
        try:
            write_metadata(con, metadata.kinds, cells)
        except MetadataKindChanged as exc:
            raise IngestError(f"Ingest of {source}: {exc}.") from exc


def _save_csv(ws: Workspace, frame: pd.DataFrame, what: str, source: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = ws.artifact_dir("ingest") / f"{what}-{Path(source).stem or 'input'}-{stamp}.csv"
    frame.to_csv(path, index=False)
    return path


def _lowercase_columns(rows: pd.DataFrame, source: str) -> pd.DataFrame:
    """``rows`` with column names stripped and lowercase, as a manifest's are matched; a name given twice
    that way is an error."""
    names = [str(c).strip().lower() for c in rows.columns]
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise IngestError(f"The rows to ingest from {source} have the column(s) {', '.join(map(repr, repeated))} "
                          f"more than once (column names are case-insensitive); keep one of each.")
    return rows.set_axis(names, axis=1)


def _metadata_text(rows: pd.DataFrame, source: str) -> tuple[pd.DataFrame, list[str]]:
    """The metadata columns of ``rows`` as text, without the ones that hold no value (named in a note)."""
    meta = metadata_frame(rows).map(safe_text)  # a Parquet cell of undecodable bytes: escaped, not refused
    empty = [c for c in meta.columns if not any(meta[c])]
    if not empty:
        return meta, []
    return meta.drop(columns=empty), [f"{Path(source).name}: column(s) {', '.join(empty)} have no value in any row; "
                                      f"not kept."]


def _kind_notes(typed: TypedMetadata, known: dict[str, str]) -> list[str]:
    kept = [f"{c} ({k})" for c, k in typed.kinds.items() if c in known]
    return [f"metadata column(s) {', '.join(kept)} keep the kind this workspace gave them at an earlier ingest."] \
        if kept else []


# -- entry points ----------------------------------------------------------------------------------------


def ingest_rows(ws: Workspace, rows: pd.DataFrame, *, source: str, base_dir: Path | None = None,
                classes: Sequence[str] | None = None, progress: Progress | None = None,
                lines: Sequence[int] | None = None, notes: Sequence[str] = (), max_pixels: int | None = None,
                allow_outside: bool = False, root_name: str = "the input's folder") -> IngestReport:
    """Validate ``rows`` (columns :data:`MANIFEST_COLUMNS`, text; any other column is image metadata, see
    core.data.metadata; names are matched case-insensitively) and append the good ones to ``ws``.

    Relative paths resolve against ``base_dir`` (default: the current folder), and files outside it
    are rejected as ``outside_root`` unless ``allow_outside``. ``lines`` (each row's CSV line) go into the
    messages; ``notes`` are carried into the report. Images with more than ``max_pixels`` pixels (default
    ``$DCD_MAX_IMAGE_PIXELS`` or :data:`MAX_IMAGE_PIXELS`) are ``too_large``. ``source`` is recorded in
    ``images.source``. Everything is checked and decoded first, then classes and images are written in
    one transaction. Returns the report even when no row is accepted (then nothing is written).
    """
    progress = as_progress(progress)
    rows = _lowercase_columns(rows, source)
    missing = missing_columns(rows)
    if missing:
        raise IngestError(f"The rows to ingest from {source} have no {', '.join(missing)} column; "
                          f"expected columns {', '.join(MANIFEST_COLUMNS)}.")
    if lines is not None and len(lines) != len(rows):
        raise ValueError(f"lines has {len(lines)} entries for {len(rows)} rows")
    limit = max_image_pixels(max_pixels)
    meta, meta_notes = _metadata_text(rows, source)
    rows, label_notes = canonical_labels(text_frame(rows))
    rows, split_notes = canonical_splits(rows)
    base_dir = (base_dir or Path.cwd()).expanduser().resolve()
    class_list = resolve_classes(ws, rows, classes)
    known = stored_kinds(ws)
    typed = type_metadata(meta, known)
    all_notes = [*notes, *meta_notes, *_kind_notes(typed, known), *split_notes, *label_notes,
                 *similar_class_notes(class_list, rows)]
    existing = set(ws.df("SELECT path FROM images")["path"])
    checked = validate_rows(rows, class_list, existing, base_dir=base_dir, root=None if allow_outside else base_dir,
                            root_name=root_name, lines=lines, max_pixels=limit, progress=progress.span(0.0, 0.95))
    accepted = checked.accepted
    kept = typed.only(accepted["row"] - 1)
    if len(accepted):
        _write(ws, accepted, class_list, source, kept)
    per_split = accepted["split"].value_counts()
    counts = {s: int(per_split[s]) for s in SPLITS if s in per_split.index}
    bad = bad_value_report(kept.bad, paths=dict(zip(accepted["row"] - 1, accepted["path"])), lines=lines)
    report = IngestReport(source=source, n_rows=len(rows), n_added=len(accepted), rejected=checked.rejected,
                          counts=counts, classes=class_list, n_existing=checked.n_existing, notes=all_notes,
                          metadata=dict(typed.kinds), bad_values=bad)
    if len(checked.rejected):
        report.rejections_path = _save_csv(ws, checked.rejected, "rejections", source)
    if len(bad):
        report.bad_values_path = _save_csv(ws, bad, "bad-values", source)
    progress.report(1.0, f"ingested {report.n_added} of {report.n_rows} rows", force=True)
    return report


def _ingest_read(ws: Workspace, read: Manifest, folder: Path, source: str, root_name: str,
                 **options: Any) -> IngestReport:
    return ingest_rows(ws, read.rows, source=source, base_dir=folder, lines=read.lines, notes=read.notes,
                       root_name=root_name, **options)


def ingest_manifest(ws: Workspace, manifest: str | Path, *, classes: Sequence[str] | None = None,
                    progress: Progress | None = None, max_pixels: int | None = None,
                    allow_outside: bool = False) -> IngestReport:
    """Ingest a CSV or Parquet manifest (see :func:`~core.data.manifest.load_manifest`).

    Relative paths are relative to the manifest's folder, and files must lie in it unless
    ``allow_outside``; ``max_pixels`` is the decode limit (see :func:`ingest_rows`).
    """
    manifest = Path(manifest).expanduser().resolve()
    return _ingest_read(ws, load_manifest(manifest), manifest.parent, safe_text(str(manifest)), "the manifest's folder",
                        classes=classes, progress=progress, max_pixels=max_pixels, allow_outside=allow_outside)


def ingest_imagefolder(ws: Workspace, root: str | Path, *, classes: Sequence[str] | None = None,
                       progress: Progress | None = None, max_pixels: int | None = None,
                       allow_outside: bool = False) -> IngestReport:
    """Ingest an ImageFolder tree ``root/<split>/<class>/<image>`` (see
    :func:`~core.data.manifest.load_imagefolder`); symlinks out of ``root`` need ``allow_outside``."""
    root = Path(root).expanduser().resolve()
    return _ingest_read(ws, load_imagefolder(root), root, safe_text(str(root)), "the ImageFolder root",
                        classes=classes, progress=progress, max_pixels=max_pixels, allow_outside=allow_outside)
