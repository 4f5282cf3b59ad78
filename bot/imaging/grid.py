"""The grid of a multi-image result: 2 to 4 images in one picture, each cell numbered 1-4.

Layouts: two images side by side (2×1); three or four in a 2×2, the fourth cell of three left
as background so every number keeps its place (1 2 / 3 ·), as U3/V3 under it expect. Each
source is decoded at reduced size where the format allows (JPEG draft) and shrunk to at most
``cell_side`` pixels a side before it is placed, so memory is bounded by the cells, not by the
sources. The grid is a JPEG, re-encoded at a lower quality until it fits ``max_bytes``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps

from bot.errors import InvalidImage
from bot.imaging.formats import _RESAMPLE, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from bot.imaging.preview import _font
from bot.imaging.resize import _normalise_mode
from bot.imaging.uploads import _checked_header, _decoding, _open

CELL_SIDE = 1024
GRID_MAX_BYTES = 8 * 1024 * 1024  # well under Discord's 10 MiB per attachment
BACKGROUND = (43, 45, 49)  # Discord's dark theme, so the gaps read as the message's own
QUALITIES = (85, 70, 55, 40)


@dataclass(frozen=True)
class Grid:
    """A composed grid: JPEG bytes, its layout, and where each image sits in it."""

    data: bytes
    content_type: str
    columns: int
    rows: int
    cells: tuple[tuple[int, int, int, int], ...]  # (left, top, right, bottom) of image n+1
    size: tuple[int, int]


def grid_shape(count: int) -> tuple[int, int]:
    """(columns, rows) for ``count`` images: 2×1 for two, 2×2 for three or four."""
    if not 2 <= count <= 4:
        raise ValueError(f"a grid holds 2 to 4 images, not {count}")
    return (2, 1) if count == 2 else (2, 2)


def compose_grid(
    images: Sequence[bytes], *, cell_side: int = CELL_SIDE, max_bytes: int = GRID_MAX_BYTES
) -> Grid:
    """The numbered grid of ``images`` (2 to 4 encoded images, in order). InvalidImage if one
    cannot be decoded, or if even the lowest quality does not fit ``max_bytes``."""
    columns, rows = grid_shape(len(images))
    cells = [_cell(data, cell_side) for data in images]
    cell_w, cell_h = max(c.width for c in cells), max(c.height for c in cells)
    gap = max(4, min(cell_w, cell_h) // 64)
    size = (columns * cell_w + (columns + 1) * gap, rows * cell_h + (rows + 1) * gap)
    canvas = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(canvas, "RGBA")
    boxes = []
    for index, cell in enumerate(cells):
        column, row = index % columns, index // columns
        left = gap + column * (cell_w + gap) + (cell_w - cell.width) // 2
        top = gap + row * (cell_h + gap) + (cell_h - cell.height) // 2
        canvas.paste(cell, (left, top))
        boxes.append((left, top, left + cell.width, top + cell.height))
        _badge(draw, index + 1, left, top, min(cell.width, cell.height))
    return Grid(_jpeg(canvas, max_bytes), "image/jpeg", columns, rows, tuple(boxes), size)


def _cell(data: bytes, side: int) -> Image.Image:
    """One source as RGB, at most ``side`` pixels a side, upright (EXIF orientation applied)."""
    fmt, _ = _checked_header(data, max_side=DEFAULT_MAX_SIDE, max_pixels=DEFAULT_MAX_PIXELS)
    with _decoding(), _open(data, fmt) as source:
        if fmt == "jpeg":  # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below ``side``
            source.draft("RGB", (side, side))
        source.load()
        upright = ImageOps.exif_transpose(source)
        img = _normalise_mode(upright, for_jpeg=True).convert("RGB")
        img.thumbnail((side, side), _RESAMPLE, reducing_gap=3.0)
        return img


def _badge(draw: ImageDraw.ImageDraw, number: int, left: int, top: int, side: int) -> None:
    """The cell's number in a dark rounded square in its top-left corner."""
    badge = max(16, side // 11)
    margin = max(3, side // 48)
    box = (left + margin, top + margin, left + margin + badge, top + margin + badge)
    draw.rounded_rectangle(box, radius=badge // 4, fill=(0, 0, 0, 170))
    font, white = _font(int(badge * 0.7)), (255, 255, 255, 255)
    if isinstance(font, ImageFont.FreeTypeFont):
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        draw.text(centre, str(number), font=font, fill=white, anchor="mm")
    else:  # the fixed bitmap font knows no anchors
        draw.text((box[0] + badge // 3, box[1] + badge // 4), str(number), font=font, fill=white)


def _jpeg(img: Image.Image, max_bytes: int) -> bytes:
    for quality in QUALITIES:
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=quality)
        if buffer.tell() <= max_bytes:
            return buffer.getvalue()
    raise InvalidImage("The grid would be too large to send.", problem="too_large")
