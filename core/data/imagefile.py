"""Opening an image file the one way every part of the project does: size limit, EXIF orientation, RGB.

:func:`read_rgb` is the single decode path: ingest's check (core.data.validate), the model inputs
(core.data.images.load_rgb) and the thumbnails all call it, so an image that ingest accepts decodes the
same way for training, embedding and the app. It

1. opens the file and refuses it, before decoding any pixel, when it has more than the pixel limit
   (:func:`max_image_pixels`: ``DCD_MAX_IMAGE_PIXELS`` or :data:`MAX_IMAGE_PIXELS`), raising
   :class:`ImageTooLargeError` (a ``ValueError``) that states the size, the limit and how to raise it;
2. decodes it (the first frame of an animation or a multi-page TIFF);
3. applies its EXIF orientation (:func:`orient`), so a phone photo shot upright is upright;
4. converts it to 8-bit RGB (:func:`to_rgb`): 16-bit is scaled, not clipped; alpha is composited on white.

PIL's own guard (``PIL.Image.MAX_IMAGE_PIXELS``, process-wide) is raised to the limit when it is lower,
so that it does not refuse what the limit allows; it is never lowered or disabled. This module does not
import torch; core.data.images builds the model-ready arrays on top of it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageOps

#: Images with more pixels than this are refused (100 megapixels: a 10000 x 10000 scan; PIL's own
#: decompression-bomb limit is ~89 megapixels with an error at twice that). Override it with the
#: environment variable :data:`MAX_PIXELS_ENV`, or per call (the ingest job's ``--max-pixels``).
MAX_IMAGE_PIXELS = 100_000_000
MAX_PIXELS_ENV = "DCD_MAX_IMAGE_PIXELS"

#: Modes holding more than 8 bits per sample, taken as 0..65535 and scaled to 0..255 (high byte).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: Modes with transparency; composited on :data:`BACKGROUND` instead of dropping the alpha channel.
ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")
BACKGROUND = (255, 255, 255)

ImageSource = str | Path | IO[bytes]


class ImageTooLargeError(ValueError):
    """The image has more pixels than the decode limit (a decompression bomb, or a huge scan)."""


def max_image_pixels(override: int | None = None) -> int:
    """The decode limit in pixels: ``override`` if given, else ``$DCD_MAX_IMAGE_PIXELS``, else 100 M."""
    if override is not None:
        value, origin = override, "max_pixels"
    else:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return MAX_IMAGE_PIXELS
        origin = f"${MAX_PIXELS_ENV}"
        try:
            value = int(text.replace("_", "")) if text.replace("_", "").isdigit() else int(float(text))
        except ValueError:
            raise ValueError(f"{origin} must be a number of pixels such as 100000000 or 1e8, "
                             f"got {text!r}") from None
    if int(value) < 1:
        raise ValueError(f"{origin} must be a positive number of pixels, got {value!r}")
    return int(value)


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels"


def _too_large(source: ImageSource, size: str, pixels: int, limit: int) -> ImageTooLargeError:
    where = safe_text(str(source)) if isinstance(source, (str, Path)) else "the image"
    suggest = max(limit, pixels)
    return ImageTooLargeError(
        f"{where} is {size}{_megapixels(pixels)}, over the decode limit of {_megapixels(limit)} "
        f"(a decompression-bomb guard). If you trust the file, raise the limit: --max-pixels {suggest} "
        f"for ingest, or {MAX_PIXELS_ENV}={suggest} for every job.")


def _let_pil_open(limit: int) -> None:
    """Raise PIL's own bomb limit (never lower or disable it) so that it does not refuse what we allow."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < limit:
        Image.MAX_IMAGE_PIXELS = limit


def open_image(source: ImageSource, *, max_pixels: int | None = None) -> Image.Image:
    """Open ``source`` lazily (the header only), refusing it if it has more pixels than the limit.

    Raises :class:`ImageTooLargeError` for too many pixels, and PIL's errors (``OSError``,
    ``PIL.UnidentifiedImageError`` ...) for a file that is not an image. The caller closes the image.
    """
    limit = max_image_pixels(max_pixels)
    _let_pil_open(limit)
    try:
        im = Image.open(source)
    except Image.DecompressionBombError as exc:  # more than twice PIL's limit: refused while opening
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(source, "", int(found.group(1)) if found else limit + 1, limit) from exc
    width, height = im.size
    if width * height > limit:
        im.close()
        raise _too_large(source, f"{width} x {height} pixels, ", width * height, limit)
    return im


def orient(im: Image.Image) -> Image.Image:
    """``im`` turned upright by its EXIF orientation tag (in place; decodes it); unreadable EXIF is ignored."""
    try:
        turn = im.getexif().get(ExifTags.Base.Orientation, 1) not in (None, 1)
    except Exception:  # malformed EXIF (PIL raises several types): the pixels are still good
        turn = False
    if turn:
        ImageOps.exif_transpose(im, in_place=True)
    return im


def _scale_16bit(im: Image.Image) -> Image.Image:
    values = np.asarray(im)
    high = (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    return Image.fromarray(high, mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB, whatever its mode.

    16-bit and 32-bit integer grey (``I;16*``, ``I``) is scaled from 0..65535 to 0..255 (PIL's
    ``convert`` would clip it: nearly everything white); transparency (``RGBA``, ``LA``, ``PA``, a palette
    with a transparent colour) is composited on white; ``CMYK`` (without colour management), palette,
    grey, 1-bit and ``YCbCr`` go through PIL's ``convert``; ``F`` (float) is clipped to 0..255 as PIL does.
    """
    if im.mode == "RGB":
        return im
    if im.mode in SIXTEEN_BIT_MODES:
        return _scale_16bit(im).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ALPHA_MODES:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def read_rgb(source: ImageSource, *, max_pixels: int | None = None,
             draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``source`` to an upright 8-bit RGB image (see the module docstring for each step).

    ``draft`` lets JPEG decode at a reduced scale no smaller than that size (fast for thumbnails and
    model inputs). Raises :class:`ImageTooLargeError` above the pixel limit, PIL's errors otherwise.
    """
    with open_image(source, max_pixels=max_pixels) as im:
        if draft is not None and im.format == "JPEG":
            im.draft("RGB", draft)
        im.load()
        out = to_rgb(orient(im))
        return out.copy() if out is im else out


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8 text: undecodable file-name bytes (lone surrogates) shown as ``\\xe9``."""
    if is_utf8(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the file name's original bytes
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be stored as UTF-8 (file names that were not UTF-8 hold lone surrogates)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
