"""Image files a person uploads in the app: checked one by one, the good ones saved under the workspace's
``artifacts/uploads/<token>/``, where a job ingests them (core.dcd.failure.failure_from_upload). The app
writes these files, never the workspace's database.

A file is refused, with a message that names it, when it is empty, larger than :data:`UPLOAD_MAX_BYTES`,
has more pixels than :data:`UPLOAD_MAX_PIXELS` (a decompression bomb is refused before it is decoded) or
does not decode as an image; the other files are saved all the same::

    saved = save_uploads(ws, [("bird.jpg", data), ("notes.txt", b"...")])
    saved.folder, saved.saved, saved.refused     # refused: {"notes.txt": "notes.txt is not an image ..."}
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from core.data.imagefile import ImageTooLargeError, read_rgb
from core.store.workspace import Workspace

UPLOAD_MAX_BYTES = 20 * 1024 * 1024  # an uploaded image: at most 20 MB
UPLOAD_MAX_PIXELS = 40_000_000  # and 40 megapixels
#: What the upload widgets accept (the file's content is checked anyway).
UPLOAD_TYPES = ("png", "jpg", "jpeg", "webp", "bmp")
#: The folder of ``artifacts/`` that holds uploads, one sub-folder per upload.
UPLOADS = "uploads"


def upload_problem(name: str, data: bytes) -> str | None:
    """Why the uploaded file ``name`` (its bytes ``data``) cannot be used as an image, or None."""
    if not data:
        return f"{name} is empty (0 bytes)"
    if len(data) > UPLOAD_MAX_BYTES:
        return (f"{name} is {len(data) / 2**20:.1f} MB; upload images of at most {UPLOAD_MAX_BYTES // 2**20} MB "
                f"each")
    try:
        read_rgb(io.BytesIO(data), max_pixels=UPLOAD_MAX_PIXELS)
    except (ImageTooLargeError, Image.DecompressionBombError):
        return f"{name} has more than {UPLOAD_MAX_PIXELS / 1e6:.0f} megapixels; upload a smaller image"
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError ...)
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        return f"{name} is not an image that can be read ({first})"
    return None


def safe_name(name: str, index: int) -> str:
    """A file name for upload ``index`` called ``name`` by the person's browser: its last part, letters, digits,
    ``.``, ``-`` and ``_`` only, prefixed with the index so that two uploads never share a name."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name).replace("\\", "/")).name).strip("._") or "image"
    return f"{index:03d}-{base[-80:]}"


@dataclass(frozen=True)
class SavedUploads:
    """An upload: its folder (``artifacts/uploads/<token>``; None when no file was good), the names of the files
    saved there (as given), and {name as given: why} for the files refused."""

    folder: Path | None
    saved: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)


def save_uploads(ws: Workspace, files: Sequence[tuple[str, bytes]]) -> SavedUploads:
    """Check each uploaded file (``(name, bytes)``, :func:`upload_problem`) and save the good ones in a new
    folder ``artifacts/uploads/<token>/`` of ``ws``."""
    if ws.read_only:
        raise ValueError(f"{ws.root} is open read-only: uploads are saved by the full app, not a viewer")
    refused: dict[str, str] = {}
    good: list[tuple[str, bytes]] = []
    for name, data in files:
        problem = upload_problem(name, data)
        if problem is None:
            good.append((name, data))
        else:
            refused[name] = problem
    if not good:
        return SavedUploads(None, (), refused)
    folder = ws.artifact_dir(UPLOADS, uuid.uuid4().hex[:12])
    for i, (name, data) in enumerate(good):
        (folder / safe_name(name, i)).write_bytes(data)
    return SavedUploads(folder, tuple(name for name, _ in good), refused)


def upload_files(folder: str | Path) -> list[Path]:
    """The files of an upload folder, by name (hidden files left out)."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise ValueError(f"no upload folder {folder}: save the images first (core.data.uploads.save_uploads, or "
                         f"any folder of image files)")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
