"""Upload validation: the header checks, then a real decode in a guarded block, so every
hostile file is a clear InvalidImage with its problem code.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from bot.errors import InvalidImage
from bot.imaging.formats import (
    _DECODE_ERRORS,
    _KB,
    _MB,
    CONTENT_TYPES,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    MAX_FRAMES,
    ImageInfo,
    _Header,
    _read_header,
    _sniff_or_refuse,
)

# --------------------------------------------------------------------------- validation


def _format_bytes(size: int, *, round_up: bool = False) -> str:
    """Human size; sizes over a limit are rounded up so they never print equal to the limit."""
    for unit, name in ((_MB, "MB"), (_KB, "KB")):
        if size >= unit:
            value = size / unit
            value = math.ceil(value * 100) / 100 if round_up else value
            return f"{value:.2f}".rstrip("0").rstrip(".") + f" {name}"
    return f"{size} bytes"


def _format_megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:.1f}".removesuffix(".0") + " megapixels"


def _pixel_limit(max_pixels: int) -> int:
    """Our limit, but never above Pillow's own bomb threshold, so Pillow never warns or raises."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow_limit is None else min(max_pixels, pillow_limit)


def _check_dimensions(header: _Header, *, max_side: int, max_pixels: int) -> None:
    width = max(header.width, header.extent_width)
    height = max(header.height, header.extent_height)
    if width > max_side or height > max_side:
        raise InvalidImage(
            f"The image is {width}×{height} pixels; each side must be at most {max_side} pixels.",
            problem="too_wide",
        )
    limit = _pixel_limit(max_pixels)
    if width * height > limit:
        raise InvalidImage(
            f"The image is {width}×{height} ({_format_megapixels(width * height)}); "
            f"the limit is {_format_megapixels(limit)}.",
            problem="too_many_pixels",
        )


def _check_frames(frames: int, width: int, height: int, *, max_pixels: int) -> None:
    """An animation's pixels count over all its frames together, as Cloudflare Images counts
    them: 100 frames of 1000×1000 are the whole 100-megapixel allowance."""
    if frames > MAX_FRAMES:
        raise InvalidImage(
            f"The animation has {frames} frames; the limit is {MAX_FRAMES}.",
            problem="too_many_frames",
        )
    total = frames * width * height
    if frames > 1 and total > max_pixels:
        raise InvalidImage(
            f"The animation has {frames} frames of {width}×{height}, "
            f"{_format_megapixels(total)} over all frames; the limit is "
            f"{_format_megapixels(max_pixels)} over all frames together.",
            problem="animation_too_many_pixels",
        )


@contextmanager
def _decoding() -> Iterator[None]:
    """Turn anything Pillow raises on bad bytes into an InvalidImage a user can read."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise InvalidImage(
            "The image has too many pixels to process safely.", problem="too_many_pixels"
        ) from exc
    except MemoryError as exc:
        raise InvalidImage(
            "The image needs too much memory to decode.", problem="too_many_pixels"
        ) from exc
    except (*_DECODE_ERRORS, zlib.error) as exc:
        raise InvalidImage(
            "The image is corrupt or truncated and could not be decoded.", problem="corrupt"
        ) from exc


def _open(data: bytes, fmt: str) -> Image.Image:
    """Open with only the sniffed format's plugin, so Pillow cannot reinterpret the bytes."""
    return Image.open(io.BytesIO(data), formats=[fmt.upper()])


def _checked_header(data: bytes, *, max_side: int, max_pixels: int) -> tuple[str, _Header]:
    fmt = _sniff_or_refuse(data)
    header = _read_header(data, fmt)
    _check_dimensions(header, max_side=max_side, max_pixels=max_pixels)
    return fmt, header


def validate_upload(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_side: int = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageInfo:
    """Accept a user upload only if it is a sound PNG/JPEG/WebP/GIF within every limit.

    Cheap checks run first (size, magic bytes, header dimensions and frame counts), so that a
    decompression bomb is refused before a single pixel is allocated; only then is every frame
    fully decoded, which catches corrupt and truncated files. Raises InvalidImage with a
    ``problem`` of empty, too_large, unsupported_type, corrupt, too_wide, too_many_pixels,
    too_many_frames or animation_too_many_pixels (``max_pixels`` bounds all frames together).
    """
    if not data:
        raise InvalidImage("The file is empty.", problem="empty")
    if len(data) > max_bytes:
        raise InvalidImage(
            f"The image is {_format_bytes(len(data), round_up=True)}; "
            f"the limit is {_format_bytes(max_bytes)}.",
            problem="too_large",
        )
    fmt, header = _checked_header(data, max_side=max_side, max_pixels=max_pixels)
    _check_frames(header.frames, header.extent_width, header.extent_height, max_pixels=max_pixels)

    with _decoding(), _open(data, fmt) as img:
        width, height = img.size
        if (width, height) != (header.width, header.height):
            _check_dimensions(
                _Header(width, height, header.frames, width, height),
                max_side=max_side,
                max_pixels=max_pixels,
            )
        frames = int(getattr(img, "n_frames", 1))
        _check_frames(frames, width, height, max_pixels=max_pixels)
        for index in range(frames):
            if index:
                img.seek(index)
            img.load()

    return ImageInfo(fmt, CONTENT_TYPES[fmt], header.width, header.height, frames > 1, frames)
