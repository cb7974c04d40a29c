"""Ingest: real malformed files made at test time, exact counts and reasons asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data.ingest import ingest_imagefolder, ingest_manifest
from core.data.manifest import IngestError
from core.progress import Progress
from core.store.workspace import Workspace
from jobs import ingest as ingest_job

QUIET = Progress(bars=False)


# -- fixture builders ------------------------------------------------------------------------------------


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_png(path: Path, size: tuple[int, int] = (20, 16), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise(size, seed).save(path, format="PNG")
    return path


def write_jpeg(path: Path, size: tuple[int, int] = (24, 18), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise(size, seed).save(path, format="JPEG", quality=90)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """A real JPEG cut to half its bytes: the header parses, decoding fails."""
    write_jpeg(path, size=(64, 64), seed=7)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_fake_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a text file, not a JPEG\n")
    return path


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path / "ws")


COLUMNS = ["path", "label", "split", "weak_label", "group", "true_label", "note"]


def _row(path: str, label: str, split: str, weak: str = "", group: str = "", true: str = "") -> dict[str, str]:
    return {"path": path, "label": label, "split": split, "weak_label": weak, "group": group,
            "true_label": true, "note": "ignored"}


@pytest.fixture()
def mixed_manifest(tmp_path: Path) -> Path:
    """A manifest of 15 rows: 5 good ones and one bad row per failure (expected reasons in EXPECTED)."""
    d = tmp_path / "data"
    write_png(d / "train" / "cat1.png", (20, 16), 1)
    write_jpeg(d / "train" / "dog1.jpg", (24, 18), 2)
    write_png(d / "test" / "cat2.png", (30, 10), 3)
    write_png(d / "test" / "bird.png", seed=4)
    write_fake_jpeg(d / "fake.jpg")
    write_truncated_jpeg(d / "truncated.jpg")
    write_png(d / "pool" / "p1.png", seed=5)
    write_png(d / "pool" / "p2.png", (12, 12), 6)
    write_png(d / "err" / "e1.png", seed=8)
    write_png(d / "err" / "e2.png", (8, 9), 9)
    write_png(d / "err" / "e3.png", seed=10)
    write_png(d / "odd.png", seed=11)
    rows = [
        _row("train/cat1.png", "cat", "train"),                                   # 1 ok
        _row("train/dog1.jpg", "dog", "train"),                                   # 2 ok
        _row("test/cat2.png", "cat", "test"),                                     # 3 ok
        _row("train/missing.png", "cat", "train"),                                # 4 missing_file
        _row("fake.jpg", "cat", "train"),                                         # 5 unreadable_image
        _row("truncated.jpg", "dog", "test"),                                     # 6 unreadable_image
        _row("odd.png", "cat", "validation"),                                     # 7 unknown_split
        _row("test/bird.png", "bird", "test"),                                    # 8 unknown_label
        _row("train/cat1.png", "cat", "test"),                                    # 9 duplicate_path
        _row("pool/p1.png", "", "pool"),                                          # 10 missing_weak_label
        _row("pool/p2.png", "", "pool", weak="dog"),                              # 11 ok
        _row("", "cat", "train"),                                                 # 12 empty_path
        _row("err/e1.png", "", "error_sample"),                                   # 13 missing_label
        _row("err/e2.png", "cat", "error_heldout", group="water", true="cat"),    # 14 ok
        _row("err/e3.png", "cat", "error_sample", true="bird"),                   # 15 unknown_label
    ]
    return write_csv(d / "manifest.csv", rows, COLUMNS)


EXPECTED = {4: "missing_file", 5: "unreadable_image", 6: "unreadable_image", 7: "unknown_split",
            8: "unknown_label", 9: "duplicate_path", 10: "missing_weak_label", 12: "empty_path",
            13: "missing_label", 15: "unknown_label"}


# -- manifests -------------------------------------------------------------------------------------------


def test_manifest_keeps_good_rows_and_rejects_each_bad_one(ws: Workspace, mixed_manifest: Path) -> None:
    report = ingest_manifest(ws, mixed_manifest, progress=QUIET)

    assert (report.n_rows, report.n_added, report.n_rejected) == (15, 5, 10)
    assert report.counts == {"train": 2, "test": 1, "error_heldout": 1, "pool": 1}
    assert report.classes == ["cat", "dog"]
    assert dict(zip(report.rejected["row"], report.rejected["reason"])) == EXPECTED
    assert report.rejections_by_reason() == {"unreadable_image": 2, "unknown_label": 2, "missing_file": 1,
                                             "unknown_split": 1, "duplicate_path": 1,
                                             "missing_weak_label": 1, "empty_path": 1, "missing_label": 1}
    messages = dict(zip(report.rejected["row"], report.rejected["message"]))
    assert "'bird' is not a class" in messages[8] and "true_label" in messages[15]
    assert "repeats row 1" in messages[9]
    assert "truncated" in messages[6]

    images = ws.df("SELECT * FROM images ORDER BY image_id")
    data = mixed_manifest.parent.resolve()
    assert list(images["image_id"]) == [0, 1, 2, 3, 4]
    assert list(images["path"]) == [str(data / p) for p in ("train/cat1.png", "train/dog1.jpg",
                                                            "test/cat2.png", "pool/p2.png", "err/e2.png")]
    assert list(images["split"]) == ["train", "train", "test", "pool", "error_heldout"]
    assert ws.class_names() == ["cat", "dog"]
    by_path = images.set_index(images["path"].map(lambda p: Path(p).name))
    assert (by_path.loc["cat1.png", "label"], by_path.loc["dog1.jpg", "label"]) == (0, 1)
    assert pd.isna(by_path.loc["p2.png", "label"]) and by_path.loc["p2.png", "weak_label"] == 1
    assert by_path.loc["e2.png", "group_name"] == "water" and by_path.loc["e2.png", "true_label"] == 0
    assert pd.isna(by_path.loc["cat1.png", "group_name"]) and pd.isna(by_path.loc["cat1.png", "true_label"])
    assert (by_path.loc["dog1.jpg", "width"], by_path.loc["dog1.jpg", "height"]) == (24, 18)
    assert (by_path.loc["cat2.png", "width"], by_path.loc["cat2.png", "height"]) == (30, 10)
    assert set(images["source"]) == {str(mixed_manifest.resolve())}


def test_rejection_csv_lists_each_bad_row_with_its_reason(ws: Workspace, mixed_manifest: Path) -> None:
    report = ingest_manifest(ws, mixed_manifest, progress=QUIET)

    assert report.rejections_path is not None and report.rejections_path.is_file()
    assert report.rejections_path.parent == ws.artifacts / "ingest"
    saved = pd.read_csv(report.rejections_path, keep_default_na=False)
    assert list(saved.columns) == ["row", "path", "reason", "message"]
    assert dict(zip(saved["row"], saved["reason"])) == EXPECTED
    assert saved.loc[saved["row"] == 4, "path"].item() == str(mixed_manifest.parent.resolve() / "train/missing.png")
    text = report.summary()
    for line in ("train", "error_heldout", "unreadable_image", "missing_weak_label", str(report.rejections_path)):
        assert line in text


def test_manifest_without_split_column_names_it(ws: Workspace, tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "nosplit.csv", [{"path": "a.png", "label": "cat"}], ["path", "label"])
    with pytest.raises(IngestError, match=r"nosplit\.csv has no 'split' column"):
        ingest_manifest(ws, manifest)
    assert ws.scalar("SELECT count(*) FROM images") == 0


@pytest.mark.parametrize(("name", "content", "pattern"), [
    ("empty.csv", "", r"empty\.csv is empty"),
    ("header.csv", "path,label,split\n", r"header\.csv has a header but no rows"),
    ("manifest.txt", "path,label,split\na.png,cat,train\n", r"manifest\.txt: unsupported file type '\.txt'"),
    ("broken.parquet", "not parquet at all", r"broken\.parquet could not be read"),
])
def test_unreadable_or_empty_manifest_raises(ws: Workspace, tmp_path: Path, name: str, content: str,
                                             pattern: str) -> None:
    manifest = tmp_path / name
    manifest.write_text(content)
    with pytest.raises(IngestError, match=pattern):
        ingest_manifest(ws, manifest)


def test_missing_manifest_raises(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"nowhere\.csv does not exist"):
        ingest_manifest(ws, tmp_path / "nowhere.csv")


def test_relative_paths_resolve_against_the_manifest_folder(ws: Workspace, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    image = write_png(tmp_path / "images" / "cat.png")
    absolute = write_png(tmp_path / "elsewhere" / "dog.png")
    manifest = write_csv(tmp_path / "manifests" / "m.csv",
                         [{"path": "../images/cat.png", "label": "cat", "split": "train"},
                          {"path": str(absolute), "label": "dog", "split": "train"}], ["path", "label", "split"])
    monkeypatch.chdir(tmp_path / "elsewhere")  # the working folder must not matter

    refused = ingest_manifest(ws, manifest, progress=QUIET)  # both leave the manifest's folder
    assert refused.n_added == 0 and set(refused.rejected.reason) == {"outside_root"}

    report = ingest_manifest(ws, manifest, progress=QUIET, allow_outside=True)

    assert report.n_added == 2 and report.rejections_path is None
    assert list(ws.df("SELECT path FROM images ORDER BY image_id")["path"]) == [str(image.resolve()),
                                                                               str(absolute.resolve())]


def test_parquet_manifest_reads_numeric_labels_as_class_names(ws: Workspace, tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        write_png(tmp_path / f"{name}.png")
    frame = pd.DataFrame({
        "path": ["a.png", "b.png", "c.png", "d.png"],
        "label": pd.array([0, 1, None, 1], dtype="Int64"),
        "split": ["train", "train", "pool", "test"],
        "weak_label": pd.array([None, None, 1, None], dtype="Int64"),
        "true_label": [np.nan, np.nan, 0.0, 1.0],
    })
    manifest = tmp_path / "m.parquet"
    frame.to_parquet(manifest)

    report = ingest_manifest(ws, manifest, progress=QUIET)

    assert report.classes == ["0", "1"] and ws.class_names() == ["0", "1"]
    assert (report.n_added, report.counts) == (4, {"train": 2, "test": 1, "pool": 1})
    images = ws.df("SELECT label, weak_label, true_label FROM images ORDER BY image_id")
    assert images.fillna(-1).astype(int).values.tolist() == [[0, -1, -1], [1, -1, -1], [-1, 1, 0], [1, -1, 1]]


def test_explicit_classes_reject_other_labels(ws: Workspace, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_png(tmp_path / f"{name}.png")
    manifest = write_csv(tmp_path / "m.csv", [{"path": "a.png", "label": "cat", "split": "train"},
                                              {"path": "b.png", "label": "dog", "split": "train"},
                                              {"path": "c.png", "label": "", "split": "pool",
                                               "weak_label": "dog"}],
                         ["path", "label", "split", "weak_label"])

    report = ingest_manifest(ws, manifest, classes=["cat", "bird"], progress=QUIET)

    assert report.n_added == 1
    assert dict(zip(report.rejected["row"], report.rejected["reason"])) == {2: "unknown_label", 3: "unknown_label"}
    assert ws.df("SELECT class_id, name FROM classes ORDER BY class_id").values.tolist() == [[0, "cat"], [1, "bird"]]


def test_no_class_list_without_train_rows_raises(ws: Workspace, tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    manifest = write_csv(tmp_path / "m.csv", [{"path": "a.png", "weak_label": "cat", "split": "pool"}],
                         ["path", "split", "weak_label"])
    with pytest.raises(IngestError, match="No class list"):
        ingest_manifest(ws, manifest)
    report = ingest_manifest(ws, manifest, classes=["cat"], progress=QUIET)  # a pool-only manifest is fine
    assert report.counts == {"pool": 1}


def test_nothing_accepted_still_reports_and_writes_nothing(ws: Workspace, tmp_path: Path) -> None:
    write_fake_jpeg(tmp_path / "fake.jpg")
    manifest = write_csv(tmp_path / "m.csv", [{"path": "fake.jpg", "label": "cat", "split": "train"},
                                              {"path": "gone.png", "label": "cat", "split": "train"}],
                         ["path", "label", "split"])

    report = ingest_manifest(ws, manifest, progress=QUIET)

    assert (report.n_added, report.counts) == (0, {})
    assert list(report.rejected["reason"]) == ["unreadable_image", "missing_file"]
    assert report.rejections_path is not None and report.rejections_path.is_file()
    assert ws.scalar("SELECT count(*) FROM images") == 0 and ws.class_names() == []


# -- appending -------------------------------------------------------------------------------------------


def test_reingest_adds_nothing_and_new_data_appends(ws: Workspace, mixed_manifest: Path, tmp_path: Path) -> None:
    ingest_manifest(ws, mixed_manifest, progress=QUIET)

    again = ingest_manifest(ws, mixed_manifest, progress=QUIET)

    assert (again.n_added, again.counts) == (0, {})
    reasons = dict(zip(again.rejected["row"], again.rejected["reason"]))
    assert {reasons[r] for r in (1, 2, 3, 9, 11, 14)} == {"duplicate_path"}  # the 5 kept rows and row 9
    assert {r: reasons[r] for r in EXPECTED if r != 9} == {r: v for r, v in EXPECTED.items() if r != 9}
    assert ws.scalar("SELECT count(*) FROM images") == 5

    write_png(tmp_path / "more" / "bird1.png")
    write_png(tmp_path / "more" / "cat9.png")
    more = write_csv(tmp_path / "more" / "m.csv", [{"path": "bird1.png", "label": "bird", "split": "train"},
                                                   {"path": "cat9.png", "label": "cat", "split": "test"}],
                     ["path", "label", "split"])
    first = ingest_manifest(ws, more, progress=QUIET)  # the workspace's classes: bird is unknown
    assert (first.n_added, first.rejections_by_reason()) == (1, {"unknown_label": 1})

    report = ingest_manifest(ws, more, classes=["cat", "dog", "bird"], progress=QUIET)

    assert report.n_added == 1 and report.rejections_by_reason() == {"duplicate_path": 1}
    assert ws.df("SELECT class_id, name FROM classes ORDER BY class_id").values.tolist() == [
        [0, "cat"], [1, "dog"], [2, "bird"]]
    new = ws.df("SELECT image_id, label, source FROM images WHERE image_id >= 5 ORDER BY image_id")
    assert new.values.tolist() == [[5, 0, str(more.resolve())], [6, 2, str(more.resolve())]]


# -- ImageFolder -----------------------------------------------------------------------------------------


def test_imagefolder_with_pool_weak_labels(ws: Workspace, tmp_path: Path) -> None:
    root = tmp_path / "folder"
    write_png(root / "train" / "cat" / "c1.png", (11, 12))
    write_jpeg(root / "train" / "dog" / "d1.jpg")
    write_fake_jpeg(root / "train" / "dog" / "notes.jpg")
    write_png(root / "test" / "cat" / "c2.png")
    write_png(root / "pool" / "dog" / "p1.png")
    write_png(root / "pool" / "cat" / "p2.png")
    write_png(root / "pool" / "loose.png")
    write_png(root / "val" / "cat" / "v1.png")
    (root / "train" / "cat" / ".DS_Store").write_text("hidden")
    (root / "README.txt").write_text("not a row")

    report = ingest_imagefolder(ws, root, progress=QUIET)

    assert report.classes == ["cat", "dog"]
    assert (report.n_rows, report.n_added) == (8, 5)
    assert report.counts == {"train": 2, "test": 1, "pool": 2}
    rejected = {Path(p).name: reason for p, reason in zip(report.rejected["path"], report.rejected["reason"])}
    assert rejected == {"notes.jpg": "unreadable_image", "loose.png": "missing_weak_label",
                        "v1.png": "unknown_split"}
    images = ws.df("SELECT path, split, label, weak_label, width FROM images")
    images.index = images["path"].map(lambda p: Path(p).name)
    pool = images[images["split"] == "pool"]
    assert pool["weak_label"].to_dict() == {"p1.png": 1, "p2.png": 0} and pool["label"].isna().all()
    assert images.loc["c1.png", "width"] == 11 and images.loc["d1.jpg", "label"] == 1
    assert set(ws.df("SELECT DISTINCT source FROM images")["source"]) == {str(root.resolve())}


def test_imagefolder_without_split_folders_raises(ws: Workspace, tmp_path: Path) -> None:
    write_png(tmp_path / "flat" / "cat" / "a.png")
    with pytest.raises(IngestError, match="has no split folder"):
        ingest_imagefolder(ws, tmp_path / "flat")


# -- the CLI ---------------------------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path: Path, mixed_manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws_dir, out = tmp_path / "cli-ws", tmp_path / "result.json"

    code = ingest_job.main(["--workspace", str(ws_dir), "--manifest", str(mixed_manifest), "--json", str(out)])

    assert code == 0
    assert "5 of 15 rows added" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["n_added"] == 5
    assert result["counts"] == {"train": 2, "test": 1, "error_heldout": 1, "pool": 1}
    assert sum(result["rejections"].values()) == 10 and Path(result["rejections_path"]).is_file()
    ws = Workspace.open(ws_dir)
    assert ws.scalar("SELECT count(*) FROM images") == 5
    assert [j.state for j in ws.jobs().list()] == ["succeeded"]


def test_cli_imagefolder_with_classes(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    write_png(root / "train" / "dog" / "d.png")
    write_png(root / "train" / "cat" / "c.png")

    code = ingest_job.main(["--workspace", str(tmp_path / "w"), "--imagefolder", str(root),
                            "--classes", "dog,cat,bird"])

    assert code == 0
    assert Workspace.open(tmp_path / "w").class_names() == ["dog", "cat", "bird"]


def test_cli_fails_when_every_row_is_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fake_jpeg(tmp_path / "fake.jpg")
    manifest = write_csv(tmp_path / "bad.csv", [{"path": "fake.jpg", "label": "cat", "split": "train"},
                                                {"path": "gone.png", "label": "cat", "split": "train"}],
                         ["path", "label", "split"])

    code = ingest_job.main(["--workspace", str(tmp_path / "w"), "--manifest", str(manifest)])

    assert code == 1
    err = capsys.readouterr().err
    assert "no row of" in err and "unreadable_image: 1" in err and "missing_file: 1" in err
    assert not (tmp_path / "w").exists()  # a workspace it created holds nothing: it is not left behind

    # into an existing workspace, the failed job is recorded there and the workspace stays
    Workspace.create(tmp_path / "kept")
    assert ingest_job.main(["--workspace", str(tmp_path / "kept"), "--manifest", str(manifest)]) == 1
    jobs = Workspace.open(tmp_path / "kept").jobs().list()
    assert [j.state for j in jobs] == ["failed"]
    assert "unreadable_image: 1" in jobs[0].error and "missing_file: 1" in jobs[0].error


def test_cli_reports_a_missing_column_as_failure(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", [{"path": "a.png", "label": "cat"}], ["path", "label"])
    assert ingest_job.main(["--workspace", str(tmp_path / "w"), "--manifest", str(manifest)]) == 1
