"""Image formats: sniffing by magic bytes, reading sizes from headers without decoding,
the content types and the limits every image check shares.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from PIL import Image

from bot.errors import InvalidImage

CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
}
ACCEPTED_TYPES = "PNG, JPEG, WebP or GIF"

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_SIDE = 12_000
DEFAULT_MAX_PIXELS = 100_000_000
# Pillow's own decompression-bomb threshold (89.5 MP by default) is only a backstop behind the
# header checks below; align it with the documented 100 MP limit so nothing in between is
# refused. Set once at import, before any decoding thread exists.
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, DEFAULT_MAX_PIXELS)
MAX_FRAMES = 1000

FITS = ("scale-down", "contain", "cover", "crop", "pad")
VARIANT_MAX_SIDE = 4096
VARIANT_MAX_PIXELS = VARIANT_MAX_SIDE * VARIANT_MAX_SIDE  # 16.8 MP: any box the grammar allows
VARIANT_MAX_CHARS = 200

PREVIEW_MIN_SIDE = 16
PREVIEW_MAX_SIDE = 4096

_RESAMPLE = Image.Resampling.LANCZOS
_MB = 1024 * 1024
_KB = 1024

# Everything Pillow or our own header readers raise for bytes that are not a sound image.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, struct.error, EOFError, IndexError, TypeError)


# --------------------------------------------------------------------------- sniffing & headers


def sniff_format(data: bytes) -> str | None:
    """Name the format from magic bytes alone: 'png', 'jpeg', 'webp', 'gif', or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _describe_unsupported(data: bytes) -> str | None:
    """Best-effort name of a well-known format we refuse, so the error message can say it."""
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<?xml", b"<svg", b"<!doctype svg")) or b"<svg" in head:
        return "SVG"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC/HEIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if data.startswith(b"%PDF"):
        return "PDF"
    return None


@dataclass(frozen=True)
class _Header:
    """What the header says, read without decoding any pixels."""

    width: int
    height: int
    frames: int
    # Bounding box of every frame (GIF frames may reach outside the logical screen).
    extent_width: int
    extent_height: int


class _HeaderError(ValueError):
    """The header could not be read: truncated or malformed."""


def _u16be(data: bytes, offset: int) -> int:
    if offset + 2 > len(data):
        raise _HeaderError("truncated")
    return int(struct.unpack_from(">H", data, offset)[0])


def _u32be(data: bytes, offset: int) -> int:
    if offset + 4 > len(data):
        raise _HeaderError("truncated")
    return int(struct.unpack_from(">I", data, offset)[0])


def _uint_le(data: bytes, offset: int, size: int) -> int:
    if offset + size > len(data):
        raise _HeaderError("truncated")
    return int.from_bytes(data[offset : offset + size], "little")


def _png_header(data: bytes) -> _Header:
    if data[12:16] != b"IHDR":
        raise _HeaderError("PNG does not start with IHDR")
    width, height = _u32be(data, 16), _u32be(data, 20)
    frames = 1
    # Walk the chunks before the pixel data looking for an APNG animation-control chunk.
    pos = 8
    while pos + 8 <= len(data):
        length, kind = _u32be(data, pos), data[pos + 4 : pos + 8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"acTL":
            frames = max(1, _u32be(data, pos + 8))
            break
        pos += 12 + length
    return _Header(width, height, frames, width, height)


_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


def _jpeg_header(data: bytes) -> _Header:
    pos = 2
    while pos < len(data):
        if data[pos] != 0xFF:  # stray bytes between segments: skip them like libjpeg does
            pos += 1
            continue
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos >= len(data):
            break
        marker = data[pos]
        pos += 1
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0xD9, 0xDA):
            raise _HeaderError("JPEG has no frame header before its image data")
        length = _u16be(data, pos)
        if marker in _JPEG_SOF:
            height, width = _u16be(data, pos + 3), _u16be(data, pos + 5)
            return _Header(width, height, 1, width, height)
        if length < 2:
            raise _HeaderError("bad JPEG segment length")
        pos += length
    raise _HeaderError("JPEG frame header not found")


def _webp_header(data: bytes) -> _Header:
    kind, body = data[12:16], 20
    if kind == b"VP8 ":
        if data[body + 3 : body + 6] != b"\x9d\x01\x2a":
            raise _HeaderError("bad VP8 start code")
        width = _uint_le(data, body + 6, 2) & 0x3FFF
        height = _uint_le(data, body + 8, 2) & 0x3FFF
        return _Header(width, height, 1, width, height)
    if kind == b"VP8L":
        if data[body : body + 1] != b"\x2f":
            raise _HeaderError("bad VP8L signature")
        bits = _uint_le(data, body + 1, 4)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return _Header(width, height, 1, width, height)
    if kind == b"VP8X":
        flags = _uint_le(data, body, 1)
        width = _uint_le(data, body + 4, 3) + 1
        height = _uint_le(data, body + 7, 3) + 1
        frames = 1
        if flags & 0x02:  # animation: count the ANMF chunks
            frames, pos = 0, 12
            while pos + 8 <= len(data):
                if data[pos : pos + 4] == b"ANMF":
                    frames += 1
                pos += 8 + ((_uint_le(data, pos + 4, 4) + 1) & ~1)
            frames = max(frames, 1)
        return _Header(width, height, frames, width, height)
    raise _HeaderError("unknown WebP chunk")


def _gif_skip_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data):
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos
    return pos


def _gif_header(data: bytes) -> _Header:
    width, height = _uint_le(data, 6, 2), _uint_le(data, 8, 2)
    packed = _uint_le(data, 10, 1)
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    frames, extent_w, extent_h = 0, width, height
    while pos < len(data):
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _gif_skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor
            left, top = _uint_le(data, pos + 1, 2), _uint_le(data, pos + 3, 2)
            frame_w, frame_h = _uint_le(data, pos + 5, 2), _uint_le(data, pos + 7, 2)
            flags = _uint_le(data, pos + 9, 1)
            frames += 1
            extent_w, extent_h = max(extent_w, left + frame_w), max(extent_h, top + frame_h)
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            pos = _gif_skip_sub_blocks(data, pos + 1)  # LZW minimum code size, then data
        else:  # stray byte: Pillow skips these too
            pos += 1
    if frames == 0:
        raise _HeaderError("GIF holds no image")
    return _Header(width, height, frames, extent_w, extent_h)


_HEADER_READERS = {
    "png": _png_header,
    "jpeg": _jpeg_header,
    "webp": _webp_header,
    "gif": _gif_header,
}


def _read_header(data: bytes, fmt: str) -> _Header:
    try:
        header = _HEADER_READERS[fmt](data)
    except (_HeaderError, struct.error, IndexError) as exc:
        raise InvalidImage(
            "The image is corrupt or truncated: its header could not be read.", problem="corrupt"
        ) from exc
    if header.width <= 0 or header.height <= 0:
        raise InvalidImage(
            "The image is corrupt: its header claims a zero size.", problem="corrupt"
        )
    return header


def _sniff_or_refuse(data: bytes) -> str:
    if not data:
        raise InvalidImage("The file is empty.", problem="empty")
    fmt = sniff_format(data)
    if fmt is None:
        known = _describe_unsupported(data)
        lead = f"{known} images are not supported" if known else "This is not a supported image"
        raise InvalidImage(f"{lead}. Accepted types: {ACCEPTED_TYPES}.", problem="unsupported_type")
    return fmt


@dataclass(frozen=True)
class ImageInfo:
    """What we know about an accepted image."""

    format: str
    content_type: str
    width: int
    height: int
    animated: bool
    frames: int


def probe(data: bytes) -> ImageInfo:
    """Describe an image from its magic bytes and header only (no pixel decoding, no limits)."""
    fmt = _sniff_or_refuse(data)
    header = _read_header(data, fmt)
    return ImageInfo(
        fmt, CONTENT_TYPES[fmt], header.width, header.height, header.frames > 1, header.frames
    )


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header (raw, before any EXIF rotation)."""
    info = probe(data)
    return info.width, info.height
