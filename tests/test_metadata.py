"""Image metadata (core.data.metadata): a manifest's extra columns kept per image, typed per column as text,
number or date; a cell that does not parse is a bad value, reported with its row, column and value, and the
row is still added. Planted manifests, exact values asserted."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data.ingest import IngestError, ingest_manifest, ingest_rows
from core.data.metadata import (
    MetadataColumn,
    column_values,
    image_metadata,
    infer_kind,
    metadata_columns,
    parse_date,
    parse_number,
)
from core.progress import Progress
from core.store.workspace import Workspace

QUIET = Progress(bars=False)
SITES = ["north", "south", "north", "east", "south", "north", "", "south", "north", "east"]
EXPOSURES = ["0.5", "1", "1.5", "2", "n/a", "3", "3.5", "-4", "4.5e0", ""]
TAKEN = ["2023-01-05", "2023-02-05", "2023-03-05 10:30", "not a date", "2023-05-05", "2023-06-05T08:00:00Z",
         "2023-07-05", "", "2023-09-05", "2023-10-05T12:00:00+02:00"]
#: (1-based row, column, value as written) of each bad value planted above
BAD = {(5, "exposure", "n/a"), (4, "taken", "not a date")}


def _png(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), shade, np.uint8)).save(path)


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path / "ws")


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    """Ten good rows with three metadata columns (text, number, date) holding one bad value each in the
    number and date columns, an eleventh row whose file is missing (its bad exposure is not a bad value: the
    row is rejected), and a column with no value at all. Header names in mixed case."""
    d = tmp_path / "data"
    rows = []
    for i in range(10):
        _png(d / f"{i}.png", 20 * i)
        rows.append([f"{i}.png", "cat" if i % 2 else "dog", "train" if i < 6 else "test", SITES[i], EXPOSURES[i],
                     TAKEN[i], ""])
    rows.append(["gone.png", "cat", "test", "west", "oops", "2023-12-01", ""])
    path = d / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "label", "split", "Site", "EXPOSURE", "taken", "blank"]).to_csv(path, index=False)
    return path


def test_three_extra_columns_are_kept_typed_with_each_bad_value_reported(ws: Workspace, manifest: Path) -> None:
    report = ingest_manifest(ws, manifest, progress=QUIET)
    assert (report.n_added, report.n_rejected) == (10, 1)
    assert report.metadata == {"site": "text", "exposure": "number", "taken": "date"}
    assert report.notes == ["manifest.csv: column(s) blank have no value in any row; not kept."]
    # each bad value: its row (with the CSV line), column and value; the missing file's row is a rejection only
    bad = report.bad_values
    assert set(zip(bad.row, bad.column, bad.value)) == BAD
    assert bad.message.tolist() == [
        "row 4 (line 5): taken: 'not a date' is not a date (YYYY-MM-DD, optionally with a time); the image is "
        "kept, this cell's date left empty",
        "row 5 (line 6): exposure: 'n/a' is not a number; the image is kept, this cell's number left empty"]
    assert pd.read_csv(report.bad_values_path).row.tolist() == [4, 5]
    summary = report.summary()
    assert "metadata kept: site (text), exposure (number, 1 bad value), taken (date, 1 bad value)" in summary
    assert "2 bad metadata value(s): the rows were added" in summary and str(report.bad_values_path) in summary
    assert report.to_dict()["n_bad_values"] == 2

    # the stored types and values
    assert metadata_columns(ws) == [MetadataColumn("site", "text", 9, 0), MetadataColumn("exposure", "number", 9, 1),
                                    MetadataColumn("taken", "date", 9, 1)]
    ids = ws.df("SELECT image_id, path FROM images ORDER BY image_id")
    ids["i"] = ids.path.map(lambda p: int(Path(p).stem))
    wide = image_metadata(ws, ids.image_id.tolist()).set_index(ids.i)
    assert wide.exposure.dtype == "float64" and str(wide.taken.dtype).startswith("datetime64")
    assert wide.exposure.tolist()[:4] == [0.5, 1.0, 1.5, 2.0] and wide.exposure[7] == -4.0
    assert wide.exposure.isna().tolist() == [e in ("n/a", "") for e in EXPOSURES]
    assert wide.taken[2] == datetime(2023, 3, 5, 10, 30) and wide.taken[5] == datetime(2023, 6, 5, 8)
    assert wide.taken[9] == datetime(2023, 10, 5, 10)  # +02:00, in UTC
    assert wide.taken.isna().tolist() == [t in ("not a date", "") for t in TAKEN]
    assert wide.site.fillna("").tolist() == SITES
    # nothing lost: every non-empty cell of every added row is stored as written, bad values included
    written = image_metadata(ws, ids.image_id.tolist(), as_written=True).set_index(ids.i).fillna("")
    assert written.to_dict("list") == {"site": SITES, "exposure": EXPOSURES, "taken": TAKEN}
    assert ws.scalar("SELECT count(*) FROM image_metadata") == sum(map(bool, SITES + EXPOSURES + TAKEN))
    # one column for every image of a split (labelled), missing where the image has no value
    test = column_values(ws, "exposure", split="test")
    assert len(test) == 4 and test.isna().tolist() == [False, False, False, True]


def test_parquet_columns_keep_their_types(ws: Workspace, tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / f"{i}.png", 50 * i)
    pd.DataFrame({"path": [f"{i}.png" for i in range(3)], "label": ["a", "b", "a"], "split": "train",
                  "age": [31, 45, 52], "dose": [0.25, None, 1.0], "scanned": pd.to_datetime(["2021-01-02", "2022-03-04",
                                                                                           "2024-05-06"]),
                  "scanner": ["GE", "Siemens", None], "zip": ["02134", "10001", "94105"]}).to_parquet(tmp_path / "m.parquet")
    report = ingest_manifest(ws, tmp_path / "m.parquet", progress=QUIET)
    assert report.metadata == {"age": "number", "dose": "number", "scanned": "date", "scanner": "text", "zip": "text"}
    assert report.bad_values.empty
    wide = image_metadata(ws, [0, 1, 2])
    assert wide.age.tolist() == [31, 45, 52] and wide.dose.isna().tolist() == [False, True, False]
    assert wide.scanned.dt.year.tolist() == [2021, 2022, 2024] and wide.zip.tolist() == ["02134", "10001", "94105"]


def test_a_later_ingest_keeps_a_columns_kind_and_names_clash_case_insensitively(ws: Workspace, manifest: Path,
                                                                                tmp_path: Path) -> None:
    ingest_manifest(ws, manifest, progress=QUIET)
    d = manifest.parent
    _png(d / "more.png", 7)
    _png(d / "more2.png", 8)
    rows = pd.DataFrame({"path": ["more.png", "more2.png"], "label": ["cat", "dog"], "split": "test",
                         "Exposure": ["high", "7"], "Lens": ["35mm", "50mm"]})
    report = ingest_rows(ws, rows, source="more", base_dir=d, progress=QUIET)
    assert report.metadata == {"exposure": "number", "lens": "text"}  # 'high' alone would be text: the stored kind wins
    assert report.notes == ["metadata column(s) exposure (number) keep the kind this workspace gave them at an "
                            "earlier ingest."]
    assert report.bad_values[["row", "column", "value"]].values.tolist() == [[1, "exposure", "high"]]
    assert [(c.name, c.kind, c.n_values, c.n_bad) for c in metadata_columns(ws)][1:] == [
        ("exposure", "number", 11, 2), ("taken", "date", 9, 1), ("lens", "text", 2, 0)]
    twice = pd.DataFrame({"path": ["x.png"], "label": ["cat"], "split": "test", "Site": ["a"], "site": ["b"]})
    with pytest.raises(IngestError, match=r"'site' more than once \(column names are case-insensitive\)"):
        ingest_rows(ws, twice, source="twice", base_dir=d, progress=QUIET)
    header = d / "twice.csv"
    header.write_text("path,label,split,Site,SITE\nmore.png,cat,test,a,b\n")
    with pytest.raises(IngestError, match="'site' more than once"):
        ingest_manifest(ws, header)
    with pytest.raises(ValueError, match="no metadata column 'camera' in this workspace; it has site, exposure"):
        image_metadata(ws, [0], columns=["camera"])


@pytest.mark.parametrize(("text", "number"), [("12", 12.0), ("-0.5", -0.5), ("+3", 3.0), (".5", 0.5), ("1e3", 1e3),
                                              ("0", 0.0), ("0.25", 0.25), ("007", None), ("1,5", None), ("NA", None),
                                              ("nan", None), ("inf", None), ("1_000", None), ("", None)])
def test_what_parses_as_a_number(text: str, number: float | None) -> None:
    assert parse_number(text) == number


@pytest.mark.parametrize(("text", "date"), [
    ("2023-04-05", datetime(2023, 4, 5)), ("2023-04-05 10:20", datetime(2023, 4, 5, 10, 20)),
    ("2023-04-05T10:20:30.5", datetime(2023, 4, 5, 10, 20, 30, 500000)),
    ("2023-04-05T23:30:00-01:00", datetime(2023, 4, 6, 0, 30)), ("2023-02-30", None), ("05/04/2023", None),
    ("2023-4-5", None), ("2023", None), ("April 2023", None)])
def test_what_parses_as_a_date(text: str, date: datetime | None) -> None:
    assert parse_date(text) == date


def test_a_column_is_number_or_date_when_most_of_its_values_are() -> None:
    assert infer_kind(["1", "2", "3", "4", "x"]) == "number"  # 4 of 5: a bad value
    assert infer_kind(["1", "2", "3", "x", "y"]) == "text"  # 3 of 5: text
    assert infer_kind(["2020-01-01", "2020-02-01", "", "", "2020-03-01", "2020-04-01", "soon"]) == "date"
    assert infer_kind(["", ""]) == "text" and infer_kind(["001", "002", "003"]) == "text"
