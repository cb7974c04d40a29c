"""The Attribution Mosaic: one picture per slice tiled from its members' high-attribution regions.

Each tile is one member image cropped around the region its attribution map weights most (``mode="crop"``:
a square of ``crop_frac`` of the image side centred on the map's centre of mass above half its peak), or
the whole image with the map blended over it (``mode="overlay"``). Errors get a red border. Members are
chosen errors first, then nearest to the slice centroid. ``layout="grid"`` tiles them row by row
(:func:`grid_shape`); ``layout="confusion"`` makes four panels TP / FP / FN / TN, one-vs-rest for the
slice's dominant predicted class (the positive class: FP = predicted it, labelled otherwise), each headed
with its count among all the slice's members and how many of them are shown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from core.data.imagefile import read_rgb
from core.store.files import atomic_path

MODES = ("crop", "overlay")
LAYOUTS = ("grid", "confusion")
CELLS = ("TP", "FP", "FN", "TN")
GAP = 2
BORDER = 2
HEADER = 14
BACKGROUND = (32, 32, 32)
ERROR_COLOUR = (230, 40, 40)


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the near-square grid holding ``n`` tiles (cols = ceil(sqrt(n)))."""
    if n < 1:
        return (0, 0)
    cols = math.ceil(math.sqrt(n))
    return (math.ceil(n / cols), cols)


def mosaic_size(n: int, tile: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid mosaic of ``n`` tiles of ``tile`` px."""
    rows, cols = grid_shape(n)
    return (max(1, cols * tile + (cols - 1) * GAP), max(1, rows * tile + (rows - 1) * GAP))


def attribution_box(heatmap: np.ndarray, width: int, height: int, crop_frac: float = 0.5) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the square crop centred on the map's high-attribution region."""
    if not 0 < crop_frac <= 1:
        raise ValueError(f"crop_frac must be in (0, 1], got {crop_frac}")
    h = np.asarray(heatmap, dtype=np.float64)
    peak = h.max()
    if peak <= 0:
        cy, cx = 0.5, 0.5
    else:
        w = np.where(h >= 0.5 * peak, h, 0.0)
        ys, xs = np.mgrid[:h.shape[0], :h.shape[1]]
        cy = float((w * (ys + 0.5)).sum() / w.sum() / h.shape[0])
        cx = float((w * (xs + 0.5)).sum() / w.sum() / h.shape[1])
    side = max(1, int(round(crop_frac * min(width, height))))
    left = int(round(np.clip(cx * width - side / 2, 0, width - side)))
    top = int(round(np.clip(cy * height - side / 2, 0, height - side)))
    return (left, top, left + side, top + side)


def _heat_rgb(heatmap: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A red-yellow rendering of a [0, 1] map at ``size``."""
    m = Image.fromarray((np.clip(heatmap, 0, 1) * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    v = np.asarray(m, np.float32) / 255.0
    rgb = np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], -1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def make_tile(path: str | Path, heatmap: np.ndarray, *, tile: int = 64, mode: str = "crop",
              crop_frac: float = 0.5, error: bool = False) -> Image.Image:
    """One member's tile (``tile`` x ``tile`` RGB); a crossed grey tile when the image cannot be read."""
    if mode not in MODES:
        raise ValueError(f"mosaic mode must be one of {MODES}, got {mode!r}")
    try:
        img = read_rgb(path)  # the same upright 8-bit RGB the model saw
        if mode == "crop":
            img = img.crop(attribution_box(heatmap, img.width, img.height, crop_frac))
            img = img.resize((tile, tile), Image.Resampling.BILINEAR)
        else:
            img = img.resize((tile, tile), Image.Resampling.BILINEAR)
            img = Image.blend(img, _heat_rgb(heatmap, (tile, tile)), 0.45)
    except (OSError, ValueError, Image.DecompressionBombError):  # moved, deleted or unreadable since ingest: keep the mosaic, mark the gap
        img = Image.new("RGB", (tile, tile), (200, 200, 200))
        draw = ImageDraw.Draw(img)
        draw.line([0, 0, tile - 1, tile - 1], fill=(150, 150, 150), width=2)
        draw.line([0, tile - 1, tile - 1, 0], fill=(150, 150, 150), width=2)
    if error:
        ImageDraw.Draw(img).rectangle([0, 0, tile - 1, tile - 1], outline=ERROR_COLOUR, width=BORDER)
    return img


def tile_grid(tiles: Sequence[Image.Image], tile: int) -> Image.Image:
    """Tiles row by row in a near-square grid (see :func:`grid_shape`)."""
    rows, cols = grid_shape(len(tiles))
    out = Image.new("RGB", mosaic_size(len(tiles), tile), BACKGROUND)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out.paste(t, (c * (tile + GAP), r * (tile + GAP)))
    return out


def confusion_cells(labels: np.ndarray, pred: np.ndarray, positive: int) -> np.ndarray:
    """TP / FP / FN / TN of each member, one-vs-rest for class ``positive``."""
    lab = np.asarray(labels) == positive
    prd = np.asarray(pred) == positive
    return np.where(lab & prd, "TP", np.where(~lab & prd, "FP", np.where(lab & ~prd, "FN", "TN")))


def choose_members(members: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to ``n`` members: errors first, then those nearest the centroid."""
    order = members.assign(_err=~members.correct.fillna(True).astype(bool))
    sort_cols = ["_err", "distance"] if "distance" in order else ["_err"]
    asc = [False, True][:len(sort_cols)]
    return order.sort_values(sort_cols, ascending=asc).head(n).drop(columns="_err")


def make_mosaic(paths: Sequence[str], heatmaps: np.ndarray, *, errors: Sequence[bool] | None = None,
                cells: Sequence[str] | None = None, cell_counts: dict[str, int] | None = None, tile: int = 64,
                mode: str = "crop", crop_frac: float = 0.5) -> Image.Image:
    """The mosaic of the given members (already chosen). With ``cells``, four labelled TP/FP/FN/TN panels,
    each headed with how many members of the slice fall in it (``cell_counts``) and how many are shown."""
    if len(paths) != len(heatmaps):
        raise ValueError(f"{len(paths)} paths but {len(heatmaps)} heatmaps")
    errs = list(errors) if errors is not None else [False] * len(paths)
    tiles = [make_tile(p, h, tile=tile, mode=mode, crop_frac=crop_frac, error=e)
             for p, h, e in zip(paths, heatmaps, errs)]
    if cells is None:
        return tile_grid(tiles, tile) if tiles else Image.new("RGB", (tile, tile), BACKGROUND)
    panels = []
    for cell in CELLS:
        sel = [t for t, c in zip(tiles, cells) if c == cell]
        body = tile_grid(sel, tile) if sel else Image.new("RGB", (tile, tile), BACKGROUND)
        panel = Image.new("RGB", (body.width, body.height + HEADER), BACKGROUND)
        panel.paste(body, (0, HEADER))
        total = (cell_counts or {}).get(cell, len(sel))
        head = f"{cell}: {total}" + (f" ({len(sel)} shown)" if total != len(sel) else "")
        ImageDraw.Draw(panel).text((2, 1), head, fill=(235, 235, 235))
        panels.append(panel)
    w = max(panels[0].width + panels[1].width, panels[2].width + panels[3].width) + 3 * GAP * 2
    h = max(panels[0].height, panels[1].height) + max(panels[2].height, panels[3].height) + 3 * GAP * 2
    out = Image.new("RGB", (w, h), (60, 60, 60))
    out.paste(panels[0], (0, 0))
    out.paste(panels[1], (panels[0].width + 3 * GAP, 0))
    y2 = max(panels[0].height, panels[1].height) + 3 * GAP
    out.paste(panels[2], (0, y2))
    out.paste(panels[3], (panels[2].width + 3 * GAP, y2))
    return out


def save_png(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def slice_mosaic(part: pd.DataFrame, heat_of: dict[int, np.ndarray], positive: int, *, n_tiles: int,
                 layout: str, tile: int, mode: str) -> Image.Image:
    if layout not in LAYOUTS:
        raise ValueError(f"mosaic layout must be one of {LAYOUTS}, got {layout!r}")
    if n_tiles < 1:
        raise ValueError(f"n_tiles must be at least 1, got {n_tiles}")
    if layout == "confusion":
        part = part.assign(_cell=confusion_cells(part.label.fillna(-1).astype(int), part.pred.astype(int),
                                                 positive))
        chosen = pd.concat([choose_members(g, max(1, n_tiles // 4)) for _, g in part.groupby("_cell")])
        cells = chosen._cell.tolist()
        counts = {c: int(n) for c, n in part._cell.value_counts().items()}
    else:
        chosen, cells, counts = choose_members(part, n_tiles), None, None
    heat = np.stack([heat_of[int(i)] for i in chosen.image_id])
    return make_mosaic(chosen.path.tolist(), heat, errors=(~chosen.correct.fillna(True).astype(bool)).tolist(),
                       cells=cells, cell_counts=counts, tile=tile, mode=mode)


