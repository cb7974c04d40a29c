"""Ingest image datasets into a workspace, validating every row.

The rows come from a manifest or an ImageFolder tree (core.data.manifest).
Every row is checked (split, labels against the class list, duplicates, the file exists, the image
actually decodes). Good rows are kept, bad rows are reported with a machine code and a message in an
:class:`IngestReport`, and written as CSV under ``artifacts/ingest/``: nothing is dropped silently.

Rejection reasons (``IngestReport.rejected.reason``)::

    empty_path          the path cell is empty
    unknown_split       split is not one of core.data.constants.SPLITS
    missing_label       a non-pool row without label
    missing_weak_label  a pool row without weak_label
    unknown_label       label, weak_label or true_label is not in the class list
    duplicate_path      the same file appears earlier in the input (the first is kept) or is already ingested
    missing_file        no file at that path
    unreadable_image    the file does not decode as an image (not an image, truncated, too large)

Labels are class *names*; numbers are read as names too (``"3"``). Class ids are given in class-list order
starting at 0, and classes new to a workspace are appended after its existing ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageFile

from core.data.constants import LABEL_COLUMNS, MANIFEST_COLUMNS, POOL, SPLITS
from core.data.manifest import (
    IngestError,
    cell_text,
    missing_columns,
    read_manifest,
    scan_imagefolder,
    text_frame,
)
from core.runner.progress import Progress, as_progress
from core.store.workspace import Workspace

REJECTION_COLUMNS = ("row", "path", "reason", "message")
REASONS = ("empty_path", "unknown_split", "missing_label", "missing_weak_label", "unknown_label",
           "duplicate_path", "missing_file", "unreadable_image")
ACCEPTED_COLUMNS = ("path", "split", "label", "weak_label", "group_name", "true_label", "width", "height")


# -- the report ---------------------------------------------------------------------------------------


@dataclass
class IngestReport:
    """What an ingest did.

    ``counts`` maps each split to the number of rows added to it; ``rejected`` has one row per rejected
    input row with columns ``row`` (1-based position among the input rows; for a CSV, line ``row + 1``),
    ``path``, ``reason`` (one of :data:`REASONS`) and ``message``.
    """

    source: str
    n_rows: int
    n_added: int
    rejected: pd.DataFrame
    counts: dict[str, int]
    classes: list[str] = field(default_factory=list)
    rejections_path: Path | None = None

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
            "counts": dict(self.counts),
            "rejections": self.rejections_by_reason(),
            "rejections_path": str(self.rejections_path) if self.rejections_path else None,
            "classes": list(self.classes),
        }

    def summary(self, *, examples: int = 5) -> str:
        """A readable table: rows added per split, rejections per reason, the first few rejected rows."""
        lines = [f"Ingest of {self.source}: {self.n_added} of {self.n_rows} rows added, "
                 f"{self.n_rejected} rejected; {len(self.classes)} classes."]
        if self.counts:
            lines += ["", f"  {'split':<16}{'added':>8}"]
            lines += [f"  {split:<16}{n:>8}" for split, n in self.counts.items()]
        if self.n_rejected:
            lines += ["", f"  {'rejection':<20}{'rows':>8}"]
            lines += [f"  {reason:<20}{n:>8}" for reason, n in self.rejections_by_reason().items()]
            lines += ["", "  first rejected rows:"]
            for r in self.rejected.head(examples).itertuples(index=False):
                lines.append(f"    row {r.row}: {r.reason}: {r.message}")
            if self.n_rejected > examples:
                lines.append(f"    ... and {self.n_rejected - examples} more")
        if self.rejections_path:
            lines += ["", f"  all rejections: {self.rejections_path}"]
        return "\n".join(lines)


# -- reading inputs ------------------------------------------------------------------------------------


# -- the class list ------------------------------------------------------------------------------------


def _clean_class_list(classes: Sequence[str]) -> list[str]:
    """``classes`` as stripped names, refusing an empty list, empty names and repeats."""
    names = [] if isinstance(classes, str) else [cell_text(c) for c in classes]
    if not names or "" in names:
        raise IngestError(f"classes must be a non-empty list of non-empty class names, got {classes!r}.")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise IngestError(f"classes lists {', '.join(dupes)} more than once; each class name must be unique.")
    return names


def resolve_classes(ws: Workspace, rows: pd.DataFrame, classes: Sequence[str] | None = None) -> list[str]:
    """The class list: ``classes`` if given, else the workspace's, else the sorted ``train`` labels."""
    if classes is not None:
        return _clean_class_list(classes)
    existing = ws.class_names()
    if existing:
        return existing
    train = sorted({lab for lab in rows.loc[rows["split"] == "train", "label"] if lab})
    if not train:
        raise IngestError("No class list: the workspace has no classes yet and the input has no labelled "
                          "train rows. Pass the class names (classes=[...] or --classes a,b,c), or include "
                          "the train split.")
    return train


# -- validation ----------------------------------------------------------------------------------------


def _resolve_path(raw: str, base_dir: Path) -> str:
    """``raw`` made absolute against ``base_dir`` and resolved (symlinks, ``..``) where the OS allows."""
    p = Path(raw).expanduser()
    p = p if p.is_absolute() else base_dir / p
    try:
        return str(p.resolve())
    except (OSError, ValueError, RuntimeError):  # a symlink loop, a NUL byte: reported as missing_file later
        return os.path.abspath(p)


def _preview(names: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _cheap_check(row: dict[str, str], classes: set[str], class_hint: str) -> tuple[str, str] | None:
    """The first problem found in a row's cells (no file access), as ``(reason, message)``."""
    if not row["path"]:
        return "empty_path", "the path cell is empty"
    split = row["split"]
    if split not in SPLITS:
        return "unknown_split", f"split {split!r} is not one of {', '.join(SPLITS)}"
    if split == POOL and not row["weak_label"]:
        return "missing_weak_label", "pool rows need a weak_label (their label may stay empty); it is empty"
    if split != POOL and not row["label"]:
        return "missing_label", f"{split} rows need a label; it is empty"
    for col in LABEL_COLUMNS:
        if row[col] and row[col] not in classes:
            return "unknown_label", (f"{col} {row[col]!r} is not a class ({class_hint}); to add it, "
                                     f"pass the full class list (classes=... / --classes)")
    return None


def _decode(path: str) -> tuple[int, int] | str:
    """Decode an image fully; its ``(width, height)``, or a message saying why it cannot be read."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError ...)
        return f"cannot decode as an image: {type(exc).__name__}: {exc}"


def _decode_all(paths: Sequence[str], progress: Progress) -> list[tuple[int, int] | str]:
    """Decode ``paths`` in a thread pool (PIL releases the GIL while decoding), refusing truncated files."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    workers = min(32, 4 * (os.cpu_count() or 1))
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-decode") as pool:
            return list(progress.iter(pool.map(_decode, paths), total=len(paths),
                                      desc="decoding images", unit="img"))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _rejection(i: int, path: str, reason: str, message: str) -> dict[str, Any]:
    return {"row": i + 1, "path": path, "reason": reason, "message": message}


def _screen(records: list[dict[str, str]], classes: list[str], existing: set[str],
            base_dir: Path) -> tuple[dict[int, str], list[dict[str, Any]]]:
    """Check cells, duplicates and file existence; ``({row index: resolved path}, rejections)``."""
    class_set, hint = set(classes), _preview(classes)
    first_row: dict[str, int] = {}
    rejects: list[dict[str, Any]] = []
    for i, row in enumerate(records):
        path = _resolve_path(row["path"], base_dir) if row["path"] else ""
        problem = _cheap_check(row, class_set, hint)
        if problem is None and path in existing:
            problem = "duplicate_path", f"{path} is already in the workspace (ingested earlier)"
        if problem is None and path in first_row:
            problem = "duplicate_path", f"{path} repeats row {first_row[path] + 1}; only the first row is kept"
        if problem is None and not Path(path).is_file():
            problem = "missing_file", f"no file at {path}" + (" (it is a folder)" if Path(path).is_dir() else "")
        if problem is not None:
            rejects.append(_rejection(i, path or row["path"], *problem))
        else:
            first_row[path] = i
    return {i: path for path, i in first_row.items()}, rejects


def _validate(rows: pd.DataFrame, classes: list[str], existing: set[str], base_dir: Path,
              progress: Progress) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``rows`` into accepted rows (resolved path, width, height) and rejections."""
    records = rows.to_dict("records")
    candidates, rejects = _screen(records, classes, existing, base_dir)
    order = sorted(candidates)
    sizes = _decode_all([candidates[i] for i in order], progress)
    kept: list[dict[str, Any]] = []
    for i, size in zip(order, sizes):
        path = candidates[i]
        if isinstance(size, str):
            rejects.append(_rejection(i, path, "unreadable_image", f"{path}: {size}"))
            continue
        row = records[i]
        kept.append({"path": path, "split": row["split"], "label": row["label"] or None,
                     "weak_label": row["weak_label"] or None, "group_name": row["group"] or None,
                     "true_label": row["true_label"] or None, "width": size[0], "height": size[1]})
    rejected = pd.DataFrame(sorted(rejects, key=lambda r: r["row"]), columns=list(REJECTION_COLUMNS))
    accepted = pd.DataFrame(kept, columns=list(ACCEPTED_COLUMNS))
    return accepted, rejected


# -- writing -------------------------------------------------------------------------------------------


def _write(ws: Workspace, accepted: pd.DataFrame, classes: list[str], source: str) -> None:
    """Insert the class list's new classes and the accepted images in one short transaction."""
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


def _save_rejections(ws: Workspace, rejected: pd.DataFrame, source: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = ws.artifact_dir("ingest") / f"rejections-{Path(source).stem or 'input'}-{stamp}.csv"
    rejected.to_csv(path, index=False)
    return path


# -- entry points ----------------------------------------------------------------------------------------


def ingest_rows(ws: Workspace, rows: pd.DataFrame, *, source: str, base_dir: Path | None = None,
                classes: Sequence[str] | None = None, progress: Progress | None = None) -> IngestReport:
    """Validate ``rows`` (columns :data:`MANIFEST_COLUMNS`, text) and append the good ones to ``ws``.

    Relative paths resolve against ``base_dir`` (default: the current folder). ``source`` is recorded in
    ``images.source``. Everything is checked and decoded first, then classes and images are written in
    one transaction. Returns the report even when no row is accepted (then nothing is written).
    """
    progress = as_progress(progress)
    missing = missing_columns(rows)
    if missing:
        raise IngestError(f"The rows to ingest from {source} have no {', '.join(missing)} column; "
                          f"expected columns {', '.join(MANIFEST_COLUMNS)}.")
    rows = text_frame(rows)
    base_dir = (base_dir or Path.cwd()).expanduser().resolve()
    class_list = resolve_classes(ws, rows, classes)
    existing = set(ws.df("SELECT path FROM images")["path"])
    accepted, rejected = _validate(rows, class_list, existing, base_dir, progress.span(0.0, 0.95))
    if len(accepted):
        _write(ws, accepted, class_list, source)
    per_split = accepted["split"].value_counts()
    counts = {s: int(per_split[s]) for s in SPLITS if s in per_split.index}
    report = IngestReport(source=source, n_rows=len(rows), n_added=len(accepted), rejected=rejected,
                          counts=counts, classes=class_list)
    if len(rejected):
        report.rejections_path = _save_rejections(ws, rejected, source)
    progress.report(1.0, f"ingested {report.n_added} of {report.n_rows} rows", force=True)
    return report


def ingest_manifest(ws: Workspace, manifest: str | Path, *, classes: Sequence[str] | None = None,
                    progress: Progress | None = None) -> IngestReport:
    """Ingest a CSV or Parquet manifest (see :func:`read_manifest`); relative paths are relative to it."""
    manifest = Path(manifest).expanduser().resolve()
    rows = read_manifest(manifest)
    return ingest_rows(ws, rows, source=str(manifest), base_dir=manifest.parent, classes=classes,
                       progress=progress)


def ingest_imagefolder(ws: Workspace, root: str | Path, *, classes: Sequence[str] | None = None,
                       progress: Progress | None = None) -> IngestReport:
    """Ingest an ImageFolder tree ``root/<split>/<class>/<image>`` (see :func:`scan_imagefolder`)."""
    root = Path(root).expanduser().resolve()
    rows = scan_imagefolder(root)
    return ingest_rows(ws, rows, source=str(root), base_dir=root, classes=classes, progress=progress)
