"""A corpus of bad (and merely unusual) inputs, every file generated here: what ingest and decoding do with each.

Each case asserts the message (it names the row, the CSV line and the reason), exactly which rows are kept,
and that no row is silently changed or lost: rows read = rows kept + rows rejected, and the workspace holds
the kept rows with their labels as written.
"""

from __future__ import annotations

import csv
import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data.imagefile import ImageTooLargeError, max_image_pixels, read_rgb
from core.data.images import decode_all, load_rgb, thumbnail
from core.data.ingest import REASONS, IngestReport, ingest_imagefolder, ingest_manifest
from core.data.manifest import IngestError
from core.data.metadata import image_metadata
from core.progress import Progress
from core.store.workspace import Workspace
from jobs import ingest as ingest_job

QUIET = Progress(bars=False)
HEADER = ["path", "label", "split", "weak_label"]


# -- file builders ---------------------------------------------------------------------------------------


def png(path: Path, size: tuple[int, int] = (8, 6), colour: tuple[int, int, int] = (10, 200, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit ``side`` x ``side`` PNG of zeros: 400 megapixels in ~50 kB."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    comp, row = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path: Path) -> None:
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def exif_jpeg(path: Path) -> None:
    """60 x 40 as stored, red top and blue bottom, with EXIF orientation 6 (shown turned 90 degrees clockwise)."""
    a = np.zeros((40, 60, 3), np.uint8)
    a[:20] = (255, 0, 0)
    a[20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, format="JPEG", quality=95, exif=exif)


def grey16_png(path: Path) -> None:
    Image.fromarray(np.full((6, 8), 32768, np.uint16)).save(path, format="PNG")  # mid grey in 16 bits


def rgba_png(path: Path) -> None:
    a = np.zeros((6, 8, 4), np.uint8)  # fully transparent black ...
    a[:, 4:] = (200, 0, 0, 255)        # ... and opaque red on the right
    Image.fromarray(a, mode="RGBA").save(path, format="PNG")


def palette_png(path: Path) -> None:
    Image.new("RGB", (8, 6), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path)


def write_manifest(path: Path, rows: list[list[str]], header: list[str] = HEADER, *, encoding: str = "utf-8",
                   sep: str = ",") -> Path:
    buf = io.StringIO()
    csv.writer(buf, delimiter=sep, lineterminator="\r\n" if sep == ";" else "\n").writerows([header, *rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path / "ws")


def stored(ws: Workspace, source: Path) -> list[tuple[str, str, str | None, int, int]]:
    """(file name, split, label name, width, height) of the images ingested from ``source``, in id order."""
    df = ws.df("SELECT i.path, i.split, c.name AS label, i.width, i.height FROM images i "
               "LEFT JOIN classes c ON c.class_id = coalesce(i.label, i.weak_label) WHERE i.source = ? "
               "ORDER BY i.image_id", [str(source.resolve())])
    return [(Path(p).name, s, lab, int(w), int(h)) for p, s, lab, w, h in df.itertuples(index=False)]


def check(report: IngestReport, rejected: dict[int, tuple[str, str]], *, csv_lines: bool = True,
          line_of: Callable[[int], int] = lambda row: row + 1) -> None:
    """Exactly ``rejected`` (row -> (reason, substring of the message)) and every other row added; each
    message starts with its row, CSV line (``line_of(row)``) and reason."""
    got = dict(zip(report.rejected["row"], report.rejected["reason"]))
    assert got == {r: reason for r, (reason, _) in rejected.items()}
    assert report.n_rows == report.n_added + report.n_rejected  # no row lost
    assert set(report.rejected["reason"]) <= set(REASONS)
    messages = dict(zip(report.rejected["row"], report.rejected["message"]))
    for r, (reason, part) in rejected.items():
        where = f"row {r} (line {line_of(r)}): " if csv_lines else f"row {r}: "
        assert messages[r].startswith(f"{where}{reason}: "), messages[r]
        assert part in messages[r], messages[r]


# -- one file per case: kept (with its upright size) or rejected (reason, message) -----------------------

FILE_CASES: dict[str, tuple[Callable[[Path], object], str, tuple[int, int] | tuple[str, str]]] = {
    "truncated_jpeg": (truncated_jpeg, "t.jpg", ("unreadable_image", "image file is truncated")),
    "zero_byte": (lambda p: p.write_bytes(b""), "z.png", ("unreadable_image", "z.png is empty (0 bytes)")),
    "text_named_jpg": (lambda p: p.write_text("this is a text file\n"), "notes.jpg",
                       ("unreadable_image", "not an image file PIL can read (it starts with b'this is a text")),
    "decompression_bomb": (bomb_png, "bomb.png", ("too_large", "is 400.0 megapixels, over the decode limit of "
                                                               "100.0 megapixels")),
    "cmyk_jpeg": (lambda p: Image.new("CMYK", (9, 7), (0, 255, 255, 0)).save(p, format="JPEG"), "c.jpg", (9, 7)),
    "grey_16bit_png": (grey16_png, "g16.png", (8, 6)),
    "rgba_png": (rgba_png, "rgba.png", (8, 6)),
    "palette_png": (palette_png, "p.png", (8, 6)),
    "grayscale_png": (lambda p: Image.new("L", (5, 4), 77).save(p), "l.png", (5, 4)),
    "exif_rotated_jpeg": (exif_jpeg, "exif.jpg", (40, 60)),
    "emoji_name": (lambda p: png(p, (3, 2)), "🐱 cat.png", (3, 2)),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_each_kind_of_file(ws: Workspace, tmp_path: Path, case: str) -> None:
    make, name, outcome = FILE_CASES[case]
    data = tmp_path / "data"
    png(data / "control.png")
    make(data / name)
    manifest = write_manifest(data / "m.csv", [["control.png", "cat", "train", ""], [name, "cat", "test", ""]])

    report = ingest_manifest(ws, manifest, progress=QUIET)

    if isinstance(outcome[0], str):
        reason, part = outcome
        check(report, {2: (reason, part)})
        assert stored(ws, manifest) == [("control.png", "train", "cat", 8, 6)]
    else:
        check(report, {})
        assert stored(ws, manifest) == [("control.png", "train", "cat", 8, 6), (name, "test", "cat", *outcome)]


def test_decoded_pixels_of_each_mode(tmp_path: Path) -> None:
    """16-bit scaled (not white), alpha on white, CMYK/palette/grey converted, EXIF applied: for models and
    thumbnails alike."""
    for make, name, outcome in FILE_CASES.values():
        if isinstance(outcome[0], int):
            make(tmp_path / name)
    px = {name: np.asarray(read_rgb(tmp_path / name)).astype(int) for name in
          ("g16.png", "rgba.png", "p.png", "l.png", "c.jpg", "exif.jpg")}
    assert (px["g16.png"] == 128).all()                      # 32768 / 256, not clipped to 255
    assert (px["rgba.png"][:, :4] == 255).all() and (px["rgba.png"][:, 4:] == (200, 0, 0)).all()
    assert (px["p.png"] == (0, 128, 255)).all() and (px["l.png"] == 77).all()
    assert np.abs(px["c.jpg"] - (255, 0, 0)).max() < 8      # CMYK cyan-free magenta+yellow = red
    exif = px["exif.jpg"]
    assert exif.shape == (60, 40, 3)                          # upright: portrait
    assert exif[30, 5, 2] > 200 and exif[30, 35, 0] > 200     # blue left, red right after the turn
    assert (load_rgb(tmp_path / "g16.png", 4) == 128).all()
    thumb = np.asarray(Image.open(thumbnail(tmp_path / "exif.jpg", tmp_path / "thumbs", 1, size=64)))
    assert thumb.shape[0] > thumb.shape[1]
    thumb16 = np.asarray(Image.open(thumbnail(tmp_path / "g16.png", tmp_path / "thumbs", 2, size=64)))
    assert abs(int(thumb16.mean()) - 128) <= 2


def test_bomb_is_small_on_disk_and_refused_by_training_decode(tmp_path: Path) -> None:
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ImageTooLargeError, match=r"400\.0 megapixels.*--max-pixels .*DCD_MAX_IMAGE_PIXELS"):
        load_rgb(bomb, 32)
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        decode_all([str(png(tmp_path / "ok.png")), str(bomb)], 32)


def test_pixel_limit_is_configurable(ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    Image.new("1", (2000, 1000)).save(data / "big.png")
    manifest = write_manifest(data / "m.csv", [["big.png", "cat", "train", ""]])

    small = ingest_manifest(ws, manifest, max_pixels=1_000_000, progress=QUIET)
    check(small, {1: ("too_large", "2000 x 1000 pixels, 2.0 megapixels, over the decode limit of 1.0 megapixels")})
    monkeypatch.setenv("DCD_MAX_IMAGE_PIXELS", "1e6")
    assert max_image_pixels() == 1_000_000
    check(ingest_manifest(ws, manifest, classes=["cat"], progress=QUIET), {1: ("too_large", "--max-pixels 2000000")})
    with pytest.raises(ImageTooLargeError):
        load_rgb(data / "big.png", 8)
    assert ingest_job.main(["--workspace", str(ws.root), "--manifest", str(manifest), "--max-pixels", "3000000"]) == 0
    assert stored(ws, manifest) == [("big.png", "train", "cat", 2000, 1000)]
    monkeypatch.setenv("DCD_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="DCD_MAX_IMAGE_PIXELS must be a number"):
        max_image_pixels()


# -- paths -------------------------------------------------------------------------------------------------


def test_paths_missing_duplicate_outside_and_symlinks(ws: Workspace, tmp_path: Path) -> None:
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for name in ("a.png", "c.png", "e.png"):
        png(data / name)
    png(elsewhere / "b.png")
    png(elsewhere / "d.png")
    (data / "sub").mkdir()
    (data / "out.png").symlink_to(elsewhere / "d.png")
    (data / "alias.png").symlink_to(data / "e.png")
    (data / "loop1.png").symlink_to(data / "loop2.png")
    (data / "loop2.png").symlink_to(data / "loop1.png")
    (data / "broken.png").symlink_to(data / "gone.png")
    rows = [["a.png", "cat", "train", ""],                     # 1 kept
            ["nope.png", "cat", "train", ""],                  # 2 missing_file
            ["./a.png", "cat", "test", ""],                    # 3 duplicate of 1
            [str(data / "c.png"), "cat", "test", ""],          # 4 absolute inside: kept
            [str(elsewhere / "b.png"), "cat", "test", ""],     # 5 absolute elsewhere
            ["../elsewhere/b.png", "cat", "test", ""],         # 6 ../ that leaves
            ["sub/../alias.png", "cat", "test", ""],           # 7 ../ that stays, symlink inside: kept as e.png
            ["out.png", "cat", "test", ""],                    # 8 symlink out
            ["loop1.png", "cat", "test", ""],                  # 9 symlink loop
            ["broken.png", "cat", "test", ""],                 # 10 broken symlink
            ["sub", "cat", "test", ""]]                        # 11 a folder
    manifest = write_manifest(data / "m.csv", rows)

    report = ingest_manifest(ws, manifest, progress=QUIET)

    check(report, {2: ("missing_file", f"no file at {data / 'nope.png'}"),
                   3: ("duplicate_path", "repeats row 1"),
                   5: ("outside_root", f"outside {data.resolve()} (the manifest's folder); pass --allow-outside"),
                   6: ("outside_root", "../elsewhere/b.png is "),
                   8: ("outside_root", "through a symbolic link"),
                   9: ("missing_file", "is a symbolic link loop"),
                   10: ("missing_file", "broken.png is a symbolic link to"),
                   11: ("missing_file", "is a folder, not a file")})
    assert stored(ws, manifest) == [("a.png", "train", "cat", 8, 6), ("c.png", "test", "cat", 8, 6),
                                    ("e.png", "test", "cat", 8, 6)]

    other = Workspace.create(tmp_path / "ws2")
    allowed = ingest_manifest(other, manifest, allow_outside=True, progress=QUIET)
    assert set(allowed.rejected["row"]) == {2, 3, 6, 9, 10, 11}  # 6 is now a duplicate of 5
    assert "repeats row 5" in allowed.rejected.set_index("row").loc[6, "message"]
    assert [r[0] for r in stored(other, manifest)] == ["a.png", "c.png", "b.png", "e.png", "d.png"]


def test_non_utf8_and_emoji_file_names_in_manifests(ws: Workspace, tmp_path: Path) -> None:
    data = tmp_path / "data"
    png(data / "ok.png")
    png(data / "🦜.png")
    png(Path(os.fsdecode(bytes(data) + b"/caf\xe9.png")))
    frame = pd.DataFrame({"path": [b"ok.png", b"caf\xe9.png", "🦜.png".encode()],
                          "label": ["cat", "cat", "cat"], "split": ["train", "test", "test"]})
    frame.to_parquet(data / "m.parquet")
    utf8 = write_manifest(data / "m.csv", [["ok.png", "cat", "train", ""], ["café.png", "cat", "test", ""]])

    report = ingest_manifest(ws, data / "m.parquet", progress=QUIET)

    check(report, {2: ("non_utf8", "the file name caf\\xe9.png is not valid UTF-8")}, csv_lines=False)
    assert stored(ws, data / "m.parquet") == [("ok.png", "train", "cat", 8, 6), ("🦜.png", "test", "cat", 8, 6)]
    assert pd.read_csv(report.rejections_path)["path"].item().endswith("caf\\xe9.png")
    again = ingest_manifest(Workspace.create(tmp_path / "ws2"), utf8, progress=QUIET)
    check(again, {2: ("missing_file", "a file whose name is this name in cp1252 bytes exists")})


def test_non_utf8_file_name_under_imagefolder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "folder"
    png(root / "train" / "cat" / "c.png")
    png(root / "train" / "dog" / "d.png")
    png(Path(os.fsdecode(bytes(root) + b"/train/dog/\xff\xfe.png")))
    (root / "train" / "dog" / "loop.png").symlink_to(root / "train" / "dog" / "loop.png")
    (root / "train" / ".hidden.png").write_bytes(b"")

    assert ingest_job.main(["--workspace", str(tmp_path / "w"), "--imagefolder", str(root)]) == 0

    out = capsys.readouterr().out
    assert "2 of 4 rows added" in out and "ignored 1 hidden entries" in out
    ws = Workspace.open(tmp_path / "w")
    report = ingest_imagefolder(ws, root, progress=QUIET)  # again: the good two are already there
    check(report, {1: ("duplicate_path", "already in the workspace"), 2: ("duplicate_path", "already"),
                   3: ("missing_file", "loop.png is a symbolic link loop"),
                   4: ("non_utf8", f"the file name {root / 'train' / 'dog'}/\\xff\\xfe.png")}, csv_lines=False)
    assert stored(ws, root) == [("c.png", "train", "cat", 8, 6), ("d.png", "train", "dog", 8, 6)]


# -- cells and labels ----------------------------------------------------------------------------------------


def test_unknown_label_unknown_split_and_pool_without_weak_label(ws: Workspace, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(7):
        png(data / f"{i}.png")
    rows = [["0.png", "cat", "train", ""], ["1.png", "dog", "Train", ""], ["2.png", "bird", "test", ""],
            ["3.png", "Cat", "test", ""], ["4.png", "cat", "validation", ""], ["5.png", "", "pool", ""],
            ["6.png", "", "pool", "dog"], ["", "cat", "train", ""]]
    manifest = write_manifest(data / "m.csv", rows)

    report = ingest_manifest(ws, manifest, progress=QUIET)

    check(report, {3: ("unknown_label", "label 'bird' is not a class (cat, dog)"),
                   4: ("unknown_label", "did you mean 'cat'?"),
                   5: ("unknown_split", "split 'validation' is not one of train, test"),
                   6: ("missing_weak_label", "pool rows need a weak_label"),
                   8: ("empty_path", "the path cell is empty")})
    assert any("read 'Train' (1 rows) as train" in n for n in report.notes)
    assert stored(ws, manifest) == [("0.png", "train", "cat", 8, 6), ("1.png", "train", "dog", 8, 6),
                                    ("6.png", "pool", "dog", 8, 6)]


def test_integer_labels_sort_numerically_and_one_point_zero_is_one(ws: Workspace, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(6):
        png(data / f"{i}.png")
    pd.DataFrame({"path": [f"{i}.png" for i in range(4)], "label": [2, 10, 1, 10],
                  "split": "train"}).to_parquet(data / "ints.parquet")
    strings = write_manifest(data / "s.csv", [["4.png", "1.0", "test", ""], ["5.png", "", "pool", "10.00"]])

    first = ingest_manifest(ws, data / "ints.parquet", progress=QUIET)
    second = ingest_manifest(ws, strings, progress=QUIET)  # a second manifest into the same workspace

    assert first.classes == ["1", "2", "10"] and ws.class_names() == ["1", "2", "10"]
    check(second, {})
    assert any("'1.0' -> '1'" in n and "'10.00' -> '10'" in n for n in second.notes)
    assert [r[2] for r in stored(ws, data / "ints.parquet")] == ["2", "10", "1", "10"]
    assert stored(ws, strings) == [("4.png", "test", "1", 8, 6), ("5.png", "pool", "10", 8, 6)]
    assert ws.df("SELECT image_id, label FROM images ORDER BY image_id").fillna(-1).values.tolist() == [
        [0, 1], [1, 2], [2, 0], [3, 2], [4, 0], [5, -1]]


def test_case_variants_stay_two_classes_with_a_note(ws: Workspace, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(3):
        png(data / f"{i}.png")
    manifest = write_manifest(data / "m.csv", [["0.png", "cat", "train", ""], ["1.png", "Cat", "train", ""],
                                               ["2.png", "cat", "train", ""]])

    report = ingest_manifest(ws, manifest, progress=QUIET)

    check(report, {})
    assert report.classes == ["Cat", "cat"]
    assert any("'Cat' and 'cat' differ only in case" in n and "'Cat': 1 row(s), 'cat': 2 row(s)" in n
               for n in report.notes)
    assert "note: classes 'Cat' and 'cat'" in report.summary()


# -- manifest files ---------------------------------------------------------------------------------------


def test_missing_and_extra_columns(ws: Workspace, tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    wrong = write_manifest(tmp_path / "wrong.csv", [["a.png", "cat", "train"]], ["file", "class", "split"])
    with pytest.raises(IngestError, match=r"no 'path', 'label' column \(found: file, class, split\).*"
                                          r"Rename 'file' for 'path', 'class' for 'label'"):
        ingest_manifest(ws, wrong)
    colon = write_manifest(tmp_path / "colon.csv", [["a.png:cat:train"]], ["path:label:split"])
    with pytest.raises(IngestError, match="read as a single column: are the columns separated by something other"):
        ingest_manifest(ws, colon)
    assert ws.scalar("SELECT count(*) FROM images") == 0
    extra = write_manifest(tmp_path / "extra.csv", [["a.png", "cat", "train", "x", "y"]],
                           ["path", "label", "split", "note", "Source"])
    report = ingest_manifest(ws, extra, progress=QUIET)
    check(report, {})
    assert report.notes == [] and report.metadata == {"note": "text", "source": "text"}  # kept, lowercase
    image_id = int(ws.scalar("SELECT image_id FROM images"))
    assert image_metadata(ws, [image_id]).loc[image_id].to_dict() == {"note": "x", "source": "y"}


@pytest.mark.parametrize(("content", "pattern"), [
    (b"", "is empty"), (b"\xef\xbb\xbf\r\n  \n", "is empty"), (b"path,label,split\n", "has a header but no rows"),
    (b"path;label;split\r\n;;\r\n;;\r\n", "has a header but no rows"),
    (b"\xef\xbb\xbfpath,label\ncaf\xe9.png,cat\n", r"starts with a UTF-8 byte-order mark but is not UTF-8: "
                                                   r"byte 0xe9 at line 2, byte 4"),
    (b"path,label,split\na.png,cat,train,extra\n", "line 2 has 4 cells but the header has 3"),
    (b"PK\x03\x04rest", r"is a zip file \(an Excel .xlsx workbook\?\)"),
])
def test_unreadable_manifests_name_the_problem(ws: Workspace, tmp_path: Path, content: bytes, pattern: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    with pytest.raises(IngestError, match=pattern):
        ingest_manifest(ws, manifest)
    assert ws.scalar("SELECT count(*) FROM images") == 0 and ws.class_names() == []


def test_excel_csv_with_bom_semicolons_and_empty_rows(ws: Workspace, tmp_path: Path) -> None:
    data = tmp_path / "data"
    png(data / "élan.png")
    png(data / "b.png")
    text = "Path;Label;Split\r\nélan.png;chat_été;train\r\n;;\r\nb.png;chien;test\r\nmissing.png;chat_été;test\r\n"
    manifest = data / "excel.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))

    report = ingest_manifest(ws, manifest, progress=QUIET)

    assert report.notes == ["excel.csv was read as semicolon-separated.",
                            "excel.csv: skipped 1 row(s) whose every cell is empty (line 3)."]
    assert report.classes == ["chat_été"]
    check(report, {2: ("unknown_label", "label 'chien' is not a class"), 3: ("missing_file", "missing.png")},
          line_of={2: 4, 3: 5}.__getitem__)  # the lines count the skipped empty row, the rows do not
    assert report.n_rows == 3
    assert stored(ws, manifest) == [("élan.png", "train", "chat_été", 8, 6)]


def test_latin1_manifest_is_read_with_a_note(ws: Workspace, tmp_path: Path) -> None:
    data = tmp_path / "data"
    png(data / "café.png")
    png(data / "b.png")
    manifest = write_manifest(data / "m.csv", [["b.png", "chat", "train", ""], ["café.png", "été", "train", ""]],
                              encoding="latin-1")

    report = ingest_manifest(ws, manifest, progress=QUIET)

    check(report, {})
    assert report.notes[0].startswith("m.csv is not UTF-8 (byte 0xe9 at line 3, byte 4 of the line")
    assert "read as cp1252" in report.notes[0]
    assert stored(ws, manifest) == [("b.png", "train", "chat", 8, 6), ("café.png", "train", "été", 8, 6)]


def test_parquet_manifest(ws: Workspace, tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    pd.DataFrame({"path": ["a.png", "b.png", None], "label": ["cat", None, None], "split": ["train", "pool", None],
                  "weak_label": [None, "cat", None]}).to_parquet(tmp_path / "m.parquet")

    report = ingest_manifest(ws, tmp_path / "m.parquet", progress=QUIET)

    check(report, {}, csv_lines=False)
    assert report.notes == ["m.parquet: skipped 1 row(s) whose every cell is empty (row 3)."]
    assert stored(ws, tmp_path / "m.parquet") == [("a.png", "train", "cat", 8, 6), ("b.png", "pool", "cat", 8, 6)]


# -- the workspace -------------------------------------------------------------------------------------------


def test_reingest_succeeds_with_nothing_new_and_all_bad_still_fails(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    good = write_manifest(tmp_path / "good.csv", [["a.png", "cat", "train", ""], ["b.png", "cat", "test", ""],
                                                  ["gone.png", "cat", "test", ""]])
    bad = write_manifest(tmp_path / "bad.csv", [["gone.png", "cat", "test", ""], ["a.png", "cat", "vaL", ""]])
    args = ["--workspace", str(tmp_path / "w"), "--manifest"]

    assert ingest_job.main(args + [str(good)]) == 0
    capsys.readouterr()
    assert ingest_job.main(args + [str(good)]) == 0

    out = capsys.readouterr().out
    assert "0 of 3 rows added" in out and "Nothing new was added: 2 row(s) of the input are already in the workspace" in out
    assert "row 1 (line 2): duplicate_path: " in out and "row 3 (line 4): missing_file: " in out
    assert ingest_job.main(args + [str(bad)]) == 1
    ws = Workspace.open(tmp_path / "w")
    assert [j.state for j in ws.jobs().list()] == ["failed", "succeeded", "succeeded"]  # newest first
    assert "missing_file: 1" in ws.jobs().list()[0].error and ws.scalar("SELECT count(*) FROM images") == 2
