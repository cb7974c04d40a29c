"""The class list of an ingest: label text made canonical, integer labels in numeric order, look-alikes named.

- Labels are class *names*. Integral numbers written with a decimal part are one class with the integer:
  ``"1"``, ``"1.0"`` and ``1.0`` (a float column) are all ``"1"`` (the cells are rewritten, with a note).
  Other spellings are kept as given: ``"01"`` and ``"1"`` are two names.
- When the class list comes from the ``train`` labels and they are all integers, class ids follow the
  numbers (``"2"`` before ``"10"``); otherwise they follow the sorted names.
- Names that differ only in case, spaces, ``_``/``-`` or leading zeros (``"Cat"`` and ``"cat"``) stay
  *separate classes*, with a note naming them and their row counts: some datasets do tell ``"A"`` from
  ``"a"`` (handwritten letters), and merging them would rewrite rows behind the user's back, while a
  note lets them fix a typo before they train. A label that is not a class but looks like one is
  rejected with a "did you mean" hint (core.data.validate).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Sequence

import pandas as pd

from core.constants import LABEL_COLUMNS
from core.data.imagefile import is_utf8, safe_text
from core.data.manifest import IngestError, cell_text
from core.store.workspace import Workspace

INTEGER = re.compile(r"-?\d+")
INTEGRAL_DECIMAL = re.compile(r"(-?\d+)\.0*")


def label_text(text: str) -> str:
    """A label cell's canonical text: ``"1.0"`` -> ``"1"``; everything else unchanged."""
    found = INTEGRAL_DECIMAL.fullmatch(text)
    return found.group(1) if found else text


def canonical_labels(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``rows`` with label columns in canonical text (:func:`label_text`), and a note of what changed."""
    rows = rows.copy()
    changed: Counter[tuple[str, str]] = Counter()
    for col in LABEL_COLUMNS:
        new = pd.Series([label_text(v) for v in rows[col]], index=rows.index, dtype=object)
        for old, canon in zip(rows.loc[new != rows[col], col], new[new != rows[col]]):
            changed[(old, canon)] += 1
        rows[col] = new
    if not changed:
        return rows, []
    shown = ", ".join(f"{old!r} -> {canon!r} ({n} cells)" for (old, canon), n in changed.most_common(5))
    return rows, [f"labels written as decimals were read as integers (one class per number): {shown}."]


def class_order(names: Sequence[str]) -> list[str]:
    """``names`` sorted: by value when all are integers (``2`` before ``10``), else as text."""
    if names and all(INTEGER.fullmatch(n) for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def fold(name: str) -> Hashable:
    """The key under which look-alike names meet: case, spaces, ``_``/``-`` and leading zeros ignored."""
    if INTEGER.fullmatch(name):
        return ("int", int(name))
    return ("text", re.sub(r"[\s_\-]+", " ", name.casefold()).strip())


def similar_groups(names: Sequence[str]) -> list[list[str]]:
    """Groups of two or more of ``names`` that :func:`fold` to the same key, in ``names`` order."""
    groups: dict[Hashable, list[str]] = {}
    for n in names:
        groups.setdefault(fold(n), []).append(n)
    return [g for g in groups.values() if len(g) > 1]


def similar_class_notes(classes: Sequence[str], rows: pd.DataFrame) -> list[str]:
    """A note for every group of class names that differ only in spelling, with their rows in ``rows``."""
    counts = Counter(v for col in LABEL_COLUMNS for v in rows[col] if v)
    notes = []
    for group in similar_groups(classes):
        shown = ", ".join(f"{n!r}: {counts[n]} row(s)" for n in group)
        notes.append(f"classes {' and '.join(map(repr, group))} differ only in case, spaces, '_'/'-' or leading "
                     f"zeros; they are kept as {len(group)} separate classes ({shown}). If they are one class, "
                     f"spell them the same way in the input and ingest into a new workspace.")
    return notes


def _clean_class_list(classes: Sequence[str]) -> list[str]:
    """``classes`` as canonical names, refusing an empty list, empty or non-UTF-8 names and repeats."""
    names = [] if isinstance(classes, str) else [label_text(cell_text(c)) for c in classes]
    if not names or "" in names:
        raise IngestError(f"classes must be a non-empty list of non-empty class names, got {classes!r}.")
    bad = [safe_text(n) for n in names if not is_utf8(n)]
    if bad:
        raise IngestError(f"class names must be UTF-8 text; {', '.join(bad)} is not.")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise IngestError(f"classes lists {', '.join(dupes)} more than once; each class name must be unique "
                          f"(1 and 1.0 are the same name).")
    return names


def resolve_classes(ws: Workspace, rows: pd.DataFrame, classes: Sequence[str] | None = None) -> list[str]:
    """The class list: ``classes`` if given, else the workspace's, else the ``train`` labels in
    :func:`class_order`. ``rows`` must hold canonical labels (:func:`canonical_labels`)."""
    if classes is not None:
        return _clean_class_list(classes)
    existing = ws.class_names()
    if existing:
        return existing
    train = [lab for lab in set(rows.loc[rows["split"] == "train", "label"]) if lab and is_utf8(lab)]
    if not train:
        raise IngestError("No class list: the workspace has no classes yet and the input has no labelled "
                          "train rows. Pass the class names (classes=[...] or --classes a,b,c), or include "
                          "the train split.")
    return class_order(train)
