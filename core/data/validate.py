"""Checking ingest rows one by one: cells, paths, duplicates, files, and a full decode of every image.

:func:`validate_rows` splits rows into accepted ones (with the resolved path and the upright image size)
and rejections, one per bad row, each with a reason of :data:`REASONS` and a message that starts with
the row (``row 4 (line 5)``) and the reason. The reasons and what ingest does with each kind of file are
tabled in core.data.ingest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import ImageFile, UnidentifiedImageError

from core.constants import LABEL_COLUMNS, MANIFEST_COLUMNS, POOL, SPLITS
from core.data.classes import fold
from core.data.imagefile import ImageTooLargeError, is_utf8, read_rgb, safe_text
from core.progress import Progress

REJECTION_COLUMNS = ("row", "path", "reason", "message")
REASONS = ("empty_path", "non_utf8", "unknown_split", "missing_label", "missing_weak_label", "unknown_label",
           "outside_root", "duplicate_path", "missing_file", "unreadable_image", "too_large")
#: ``row``: the input row it came from, 1-based as in a rejection.
ACCEPTED_COLUMNS = ("path", "split", "label", "weak_label", "group_name", "true_label", "width", "height", "row")
#: How to allow files outside the input's folder, as the messages say it.
ALLOW_OUTSIDE_HINT = "pass --allow-outside (allow_outside=True) to ingest files outside it"

Problem = tuple[str, str]  # (reason, message detail)


@dataclass
class Validated:
    """Accepted rows (:data:`ACCEPTED_COLUMNS`), rejections (:data:`REJECTION_COLUMNS`), and how many rows
    were rejected only because their file is already in the workspace."""

    accepted: pd.DataFrame
    rejected: pd.DataFrame
    n_existing: int


def canonical_splits(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``rows`` with split names in another case made lowercase (``Train`` -> ``train``), with a note."""
    lower = pd.Series([s.lower() for s in rows["split"]], index=rows.index, dtype=object)
    fix = (lower != rows["split"]) & lower.isin(SPLITS)
    if not fix.any():
        return rows, []
    counts = rows.loc[fix, "split"].value_counts()
    rows = rows.copy()
    rows.loc[fix, "split"] = lower[fix]
    shown = ", ".join(f"{s!r} ({n} rows)" for s, n in counts.items())
    return rows, [f"split names are lowercase; read {shown} as {', '.join(sorted(set(lower[fix])))}."]


def _preview(names: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _did_you_mean(value: str, classes: Sequence[str]) -> str:
    near = [c for c in classes if fold(c) == fold(value)]
    return f"; did you mean {near[0]!r}? (class names are case- and spelling-sensitive)" if near else ""


def _cheap_check(row: dict[str, str], classes: Sequence[str], class_set: set[str]) -> Problem | None:
    """The first problem found in a row's cells (no file access)."""
    for col in MANIFEST_COLUMNS:
        if not is_utf8(row[col]):
            what = "the file name" if col == "path" else f"the {col} cell"
            return "non_utf8", (f"{what} {safe_text(row[col])} is not valid UTF-8, and the workspace stores text "
                                f"as UTF-8; rename it to UTF-8 (e.g. convmv -f latin1 -t utf8 --notest FILE)")
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
        if row[col] and row[col] not in class_set:
            hint = _did_you_mean(row[col], classes)
            return "unknown_label", (f"{col} {row[col]!r} is not a class ({_preview(classes)}){hint}; "
                                     f"to add it, pass the full class list (classes=... / --classes)")
    return None


def _locate(raw: str, base_dir: Path, root: Path | None, root_name: str) -> tuple[str, Path, Problem | None]:
    """``raw`` resolved against ``base_dir`` (symlinks and ``..`` followed), the path as written (made
    absolute), and the problem if it cannot be resolved or leaves ``root``."""
    try:
        p = Path(raw).expanduser()
    except RuntimeError:  # "~" without a home folder
        p = Path(raw)
    p = p if p.is_absolute() else base_dir / p
    lexical = Path(os.path.normpath(p))
    try:
        resolved = p.resolve()
    except (RuntimeError, OSError):  # a symlink loop (RuntimeError up to Python 3.12)
        return str(lexical), lexical, ("missing_file", f"{safe_text(str(lexical))} is a symbolic link loop: "
                                                       f"following it never reaches a file")
    except ValueError:
        return str(lexical), lexical, ("missing_file", f"the path {raw!r} holds a NUL character")
    if root is not None and not resolved.is_relative_to(root):
        via = " through a symbolic link" if lexical.is_relative_to(root) else ""
        return str(resolved), lexical, ("outside_root", f"{safe_text(raw)} is {safe_text(str(resolved))}{via}, outside "
                                                        f"{safe_text(str(root))} ({root_name}); {ALLOW_OUTSIDE_HINT}")
    return str(resolved), lexical, None


def _missing(path: str, lexical: Path) -> str | None:
    """Why there is no regular file at ``path`` (None if there is one)."""
    p = Path(path)
    if p.is_file():
        return None
    shown = safe_text(str(lexical))
    if p.is_dir():
        return f"{shown} is a folder, not a file"
    if lexical.is_symlink():
        return f"{shown} is a symbolic link to {safe_text(os.readlink(lexical))}, which does not exist"
    if p.exists():
        return f"{shown} is not a regular file"
    hint = ""
    if not p.name.isascii():
        for encoding in ("cp1252", "latin-1"):
            try:
                other = p.with_name(os.fsdecode(p.name.encode(encoding)))
            except UnicodeEncodeError:
                continue
            if other.is_file():
                hint = (f" (a file whose name is this name in {encoding} bytes exists: its name is not UTF-8; "
                        f"rename it, e.g. convmv -f {encoding} -t utf8 --notest FILE)")
                break
    return f"no file at {shown}{hint}"


def _decode(path: str, max_pixels: int) -> tuple[int, int] | Problem:
    """Decode an image as training will (core.data.imagefile.read_rgb): its upright ``(width, height)``,
    or ``(reason, message)``."""
    shown = safe_text(path)
    try:
        if os.path.getsize(path) == 0:
            return "unreadable_image", f"{shown} is empty (0 bytes)"
        return read_rgb(path, max_pixels=max_pixels).size
    except ImageTooLargeError as exc:
        return "too_large", str(exc)
    except UnidentifiedImageError:
        try:
            with open(path, "rb") as f:
                head = f" (it starts with {f.read(16)!r})"
        except OSError:
            head = ""
        return "unreadable_image", f"{shown} is not an image file PIL can read{head}"
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError ...)
        return "unreadable_image", f"cannot decode {shown} as an image: {type(exc).__name__}: {safe_text(str(exc))}"


def _decode_all(paths: Sequence[str], max_pixels: int, progress: Progress) -> list[tuple[int, int] | Problem]:
    """Decode ``paths`` in a thread pool (PIL releases the GIL while decoding), refusing truncated files."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    workers = min(32, 4 * (os.cpu_count() or 1))
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-decode") as pool:
            return list(progress.iter(pool.map(lambda p: _decode(p, max_pixels), paths), total=len(paths),
                                      desc="decoding images", unit="img"))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _rejection(i: int, lines: Sequence[int] | None, path: str, reason: str, detail: str) -> dict[str, Any]:
    where = f"row {i + 1}" + (f" (line {lines[i]})" if lines is not None else "")
    return {"row": i + 1, "path": safe_text(path), "reason": reason, "message": f"{where}: {reason}: {detail}"}


def validate_rows(rows: pd.DataFrame, classes: Sequence[str], existing: set[str], *, base_dir: Path,
                  root: Path | None, root_name: str, lines: Sequence[int] | None, max_pixels: int,
                  progress: Progress) -> Validated:
    """Check every row of ``rows`` (text columns, canonical labels and splits) in order.

    Cells first, then the path (resolved against ``base_dir``; refused outside ``root`` unless it is
    None), duplicates (of ``existing`` workspace paths and of earlier rows), the file, and finally a full
    decode of each remaining file in a thread pool.
    """
    records = rows.to_dict("records")
    class_set = set(classes)
    first_row: dict[str, int] = {}
    rejects: list[dict[str, Any]] = []
    n_existing = 0
    for i, row in enumerate(records):
        problem = _cheap_check(row, classes, class_set)
        path = row["path"]
        if problem is None:
            path, lexical, problem = _locate(row["path"], base_dir, root, root_name)
        if problem is None and path in existing:
            problem = "duplicate_path", f"{safe_text(path)} is already in the workspace (ingested earlier)"
            n_existing += 1
        if problem is None and path in first_row:
            problem = "duplicate_path", (f"{safe_text(path)} repeats row {first_row[path] + 1}; "
                                         f"only the first row is kept")
        if problem is None:
            missing = _missing(path, lexical)
            problem = ("missing_file", missing) if missing else None
        if problem is not None:
            rejects.append(_rejection(i, lines, path, *problem))
        else:
            first_row[path] = i
    order = sorted(first_row.values())
    paths = {i: p for p, i in first_row.items()}
    kept: list[dict[str, Any]] = []
    for i, size in zip(order, _decode_all([paths[i] for i in order], max_pixels, progress)):
        if isinstance(size[0], str):
            rejects.append(_rejection(i, lines, paths[i], *size))
            continue
        row = records[i]
        kept.append({"path": paths[i], "split": row["split"], "label": row["label"] or None,
                     "weak_label": row["weak_label"] or None, "group_name": row["group"] or None,
                     "true_label": row["true_label"] or None, "width": size[0], "height": size[1], "row": i + 1})
    rejected = pd.DataFrame(sorted(rejects, key=lambda r: r["row"]), columns=list(REJECTION_COLUMNS))
    return Validated(pd.DataFrame(kept, columns=list(ACCEPTED_COLUMNS)), rejected, n_existing)
