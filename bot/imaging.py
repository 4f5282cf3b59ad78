"""Image handling with Pillow: sniffing, upload validation, variants and the local preview renderer.

Everything here is synchronous and CPU-bound; async callers run it through ``asyncio.to_thread``.
Untrusted bytes are only ever judged by their content (magic bytes and headers), never by a name.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import math
import random
import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps

from bot.errors import InvalidImage, InvalidRequest

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_BOUNDS",
    "FITS",
    "ImageInfo",
    "Variant",
    "VariantBounds",
    "image_size",
    "parse_variant",
    "probe",
    "render_preview",
    "render_preview_from",
    "render_variant",
    "sniff_format",
    "validate_upload",
]

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


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """A delivery variant: 'public' (the original) or a resize, named canonically."""

    name: str  # 'public' or the canonical options string, e.g. 'w=512,h=512,fit=cover'
    width: int | None
    height: int | None
    fit: str

    @property
    def is_public(self) -> bool:
        return self.name == "public"


PUBLIC = Variant("public", None, None, "scale-down")

_VARIANT_KEYS = {"w": "w", "width": "w", "h": "h", "height": "h", "fit": "fit"}
_OPTION = re.compile(r"\s*([a-z]+)\s*=\s*([a-z0-9-]+)\s*")


def parse_variant(text: str, *, max_side: int = VARIANT_MAX_SIDE) -> Variant:
    """Parse 'public' or Cloudflare-style options ('w=512,h=256,fit=cover', any order).

    Equal requests yield the same canonical ``name`` ('w=W,h=H,fit=F'), usable as a cache key.
    """

    def bad(message: str) -> InvalidRequest:
        return InvalidRequest("variant", message)

    if len(text) > VARIANT_MAX_CHARS:
        raise bad(f"The variant is too long (at most {VARIANT_MAX_CHARS} characters).")
    cleaned = text.strip().lower()
    if not cleaned:
        raise bad("The variant is empty; use 'public' or options such as 'w=512,fit=cover'.")
    if cleaned == "public":
        return PUBLIC

    options: dict[str, str] = {}
    for part in cleaned.split(","):
        match = _OPTION.fullmatch(part)
        if match is None:
            raise bad(f"Cannot read variant option {part.strip()!r}; expected key=value.")
        raw_key, value = match.groups()
        key = _VARIANT_KEYS.get(raw_key)
        if key is None:
            raise bad(f"Unknown variant option {raw_key!r}; use w, h and fit.")
        if key in options:
            raise bad(f"Variant option {key!r} is given more than once.")
        options[key] = value

    sides: dict[str, int] = {}
    for key in ("w", "h"):
        if key in options:
            value = options[key]
            if not value.isdigit() or not 1 <= int(value) <= max_side:
                raise bad(f"Variant {key} must be a whole number from 1 to {max_side}.")
            sides[key] = int(value)
    if not sides:
        raise bad("A variant needs a width (w=) or a height (h=), or use 'public'.")
    fit = options.get("fit", "scale-down")
    if fit not in FITS:
        raise bad(f"Unknown fit {fit!r}; use one of {', '.join(FITS)}.")

    width, height = sides.get("w"), sides.get("h")
    parts = [f"{key}={sides[key]}" for key in ("w", "h") if key in sides]
    return Variant(",".join([*parts, f"fit={fit}"]), width, height, fit)


@dataclass(frozen=True)
class _Plan:
    """How to turn a source of a given size into a variant."""

    scaled: tuple[int, int]  # size of the whole source after scaling
    canvas: tuple[int, int]  # output size
    mode: str  # 'scale' (canvas == scaled), 'crop' (centre crop) or 'pad' (centre on canvas)


@dataclass(frozen=True)
class VariantBounds:
    """The largest output a variant may have: each side and all pixels together."""

    max_side: int = VARIANT_MAX_SIDE
    max_pixels: int = VARIANT_MAX_PIXELS


DEFAULT_BOUNDS = VariantBounds()


def _check_output(plan: _Plan, variant: Variant, bounds: VariantBounds) -> None:
    """Refuse a plan whose output would exceed the bounds, before any pixel is decoded.

    The output is the largest thing a variant allocates besides the decoded source: a crop
    resamples only the part it keeps, and a pad scales into its canvas.
    """
    width, height = plan.canvas
    too_long = max(width, height) > bounds.max_side
    if too_long or width * height > bounds.max_pixels:
        limit = (
            f"each side at most {bounds.max_side} pixels"
            if too_long
            else f"at most {_format_megapixels(bounds.max_pixels)}"
        )
        raise InvalidRequest(
            "variant",
            f"The variant {variant.name!r} would be {width}×{height} pixels; a variant may "
            f"have {limit}. Give both w and h with fit=cover or fit=crop to cut a long image.",
            width=width,
            height=height,
            max_side=bounds.max_side,
            max_pixels=bounds.max_pixels,
        )


def _plan(source: tuple[int, int], variant: Variant, bounds: VariantBounds | None = None) -> _Plan:
    """The plan for this source and variant; with ``bounds``, InvalidRequest if it is too big."""
    plan = _unbounded_plan(source, variant)
    if bounds is not None:
        _check_output(plan, variant, bounds)
    return plan


def _unbounded_plan(source: tuple[int, int], variant: Variant) -> _Plan:
    sw, sh = source
    w, h, fit = variant.width, variant.height, variant.fit
    if w is None and h is None:
        raise InvalidRequest("variant", "A variant needs a width or a height.")
    if fit not in FITS:
        raise InvalidRequest("variant", f"Unknown fit {fit!r}.")

    def scaled_by(scale: float) -> tuple[int, int]:
        return max(1, round(sw * scale)), max(1, round(sh * scale))

    scales = [side / source_side for side, source_side in ((w, sw), (h, sh)) if side is not None]
    fit_scale, cover_scale = min(scales), max(scales)
    both = len(scales) == 2
    if fit == "scale-down" or (fit == "crop" and not both):
        size = scaled_by(min(fit_scale, 1.0))
        return _Plan(size, size, "scale")
    if fit == "contain" or (fit in ("cover", "pad") and not both):
        size = scaled_by(fit_scale)
        return _Plan(size, size, "scale")
    assert w is not None and h is not None
    if fit == "cover" or (fit == "crop" and cover_scale < 1.0):  # larger source: crop = cover
        scaled = scaled_by(cover_scale)
        return _Plan((max(scaled[0], w), max(scaled[1], h)), (w, h), "crop")
    if fit == "crop":  # the source is not larger: keep its scale, trim what overflows the box
        canvas = (min(sw, w), min(sh, h))
        return _Plan(source, canvas, "crop" if canvas != source else "scale")
    return _Plan(scaled_by(fit_scale), (w, h), "pad")  # pad


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )


def _normalise_mode(img: Image.Image, *, for_jpeg: bool) -> Image.Image:
    """Bring any decoded mode to one that resizes well and the output format can store."""
    if for_jpeg:
        if img.mode in ("RGB", "L"):
            return img
        if _has_alpha(img):
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return img.convert("RGB")
    if img.mode in ("RGB", "RGBA", "L", "LA"):
        return img
    return img.convert("RGBA" if _has_alpha(img) else "RGB")


def _exif_orientation_swaps(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112) in (5, 6, 7, 8)
    except _DECODE_ERRORS:
        return False


def _encode(img: Image.Image, fmt: str, icc_profile: bytes | None) -> bytes:
    buffer = io.BytesIO()
    extra: dict[str, object] = {"icc_profile": icc_profile} if icc_profile else {}
    if fmt == "jpeg":
        img.save(buffer, "JPEG", quality=90, **extra)
    elif fmt == "webp":
        img.save(buffer, "WEBP", quality=90, **extra)
    else:
        img.save(buffer, "PNG", compress_level=6, **extra)
    return buffer.getvalue()


def render_variant(
    data: bytes, variant: Variant, bounds: VariantBounds = DEFAULT_BOUNDS
) -> tuple[bytes, str]:
    """Produce a variant's bytes and content type.

    'public' returns the input untouched. Resizes honour EXIF rotation, drop metadata other
    than the colour profile, keep PNG/JPEG/WebP and turn GIFs into a PNG of the first frame.
    Fits follow Cloudflare Images: scale-down, contain, cover, crop (cover that never
    enlarges) and pad (transparent, or white for JPEG). An output beyond ``bounds`` (each
    side, all pixels) is refused with InvalidRequest before the source is decoded.
    """
    if variant.is_public:
        fmt = _sniff_or_refuse(data)
        return data, CONTENT_TYPES[fmt]

    fmt, _ = _checked_header(data, max_side=DEFAULT_MAX_SIDE, max_pixels=DEFAULT_MAX_PIXELS)
    out_fmt = "png" if fmt == "gif" else fmt
    for_jpeg = out_fmt == "jpeg"

    with _decoding(), _open(data, fmt) as source:
        icc_profile = source.info.get("icc_profile")
        swaps = _exif_orientation_swaps(source)
        raw_w, raw_h = source.size
        oriented = (raw_h, raw_w) if swaps else (raw_w, raw_h)
        plan = _plan(oriented, variant, bounds)
        if fmt == "jpeg" and plan.scaled[0] < oriented[0] and plan.scaled[1] < oriented[1]:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: never smaller than what we need.
            need = (plan.scaled[1], plan.scaled[0]) if swaps else plan.scaled
            source.draft(source.mode, need)
        source.load()
        ImageOps.exif_transpose(source, in_place=True)
        img = _normalise_mode(source, for_jpeg=for_jpeg)

        cw, ch = img.size
        sw, sh = plan.scaled
        if plan.mode == "crop":
            ow, oh = plan.canvas
            if (sw, sh) == (cw, ch):
                left, top = (cw - ow) // 2, (ch - oh) // 2
                img = img.crop((left, top, left + ow, top + oh))
            else:  # resample only the part we keep, straight from the source
                fx, fy = cw / sw, ch / sh
                box = (
                    (sw - ow) / 2 * fx,
                    (sh - oh) / 2 * fy,
                    (sw + ow) / 2 * fx,
                    (sh + oh) / 2 * fy,
                )
                img = img.resize((ow, oh), _RESAMPLE, box=box)
        else:
            if (sw, sh) != (cw, ch):
                img = img.resize((sw, sh), _RESAMPLE)
            if plan.mode == "pad":
                if for_jpeg:
                    canvas = Image.new(img.mode, plan.canvas, 255 if img.mode == "L" else "white")
                else:
                    padded_mode = "LA" if img.mode in ("L", "LA") else "RGBA"
                    img = img.convert(padded_mode)
                    canvas = Image.new(padded_mode, plan.canvas, 0)
                canvas.paste(img, ((plan.canvas[0] - sw) // 2, (plan.canvas[1] - sh) // 2))
                img = canvas

        return _encode(img, out_fmt, icc_profile), CONTENT_TYPES[out_fmt]


# --------------------------------------------------------------------------- local preview


def _check_preview_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if not PREVIEW_MIN_SIDE <= value <= PREVIEW_MAX_SIDE:
            raise InvalidRequest(
                name, f"{name} must be from {PREVIEW_MIN_SIDE} to {PREVIEW_MAX_SIDE} pixels."
            )


def _preview_rng(prompt: str, seed: int, width: int, height: int, neg: str | None) -> random.Random:
    """A generator fixed by a SHA-256 of every input, so renders are reproducible anywhere."""
    key = json.dumps([prompt, seed, width, height, neg], ensure_ascii=False).encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest(), "big"))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def _render_scene(rng: random.Random, width: int, height: int) -> Image.Image:
    """A seeded abstract composition: a rotated two-colour gradient plus translucent shapes."""
    base_hue = rng.random()
    scheme = rng.choice((0.08, 0.33, 0.5, 0.42))  # analogous, triadic, complementary, split
    palette = [
        _hsv(base_hue + scheme * i + rng.uniform(-0.03, 0.03), rng.uniform(0.45, 0.9), v)
        for i, v in enumerate((0.25, 0.95, 0.7, 0.85, 0.55))
    ]

    # Gradient: rotate a small ramp, cut its centre (always fully covered), then upscale.
    ramp = Image.linear_gradient("L").resize((182, 182))
    mask = ramp.rotate(rng.uniform(0, 360), Image.Resampling.BILINEAR).crop((27, 27, 155, 155))
    mask = mask.resize((width, height), Image.Resampling.BILINEAR)
    img = Image.composite(
        Image.new("RGB", (width, height), palette[0]),
        Image.new("RGB", (width, height), palette[1]),
        mask,
    )

    draw = ImageDraw.Draw(img, "RGBA")  # RGBA fills are blended onto the RGB canvas
    unit = min(width, height)
    for _ in range(rng.randint(6, 12)):
        r, g, b = rng.choice(palette[1:])
        fill = (r, g, b, rng.randint(60, 170))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        size = unit * rng.uniform(0.08, 0.35)
        kind = rng.choice(("circle", "rect", "polygon"))
        if kind == "circle":
            draw.ellipse((cx - size, cy - size, cx + size, cy + size), fill=fill)
        elif kind == "rect":
            half_w, half_h = size * rng.uniform(0.5, 1.5), size * rng.uniform(0.5, 1.5)
            radius = int(min(half_w, half_h) * rng.uniform(0, 0.5))
            draw.rounded_rectangle(
                (cx - half_w, cy - half_h, cx + half_w, cy + half_h), radius=radius, fill=fill
            )
        else:
            sides = rng.randint(3, 6)
            start = rng.uniform(0, math.tau)
            points = [
                (
                    cx + size * math.cos(start + i * math.tau / sides),
                    cy + size * math.sin(start + i * math.tau / sides),
                )
                for i in range(sides)
            ]
            draw.polygon(points, fill=fill)
    return img


_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int) -> _Font:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # older Pillow or no FreeType: fixed bitmap font
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: _Font, limit: float) -> str:
    """Shorten text with an ellipsis until it fits ``limit`` pixels."""
    if draw.textlength(text, font=font) <= limit:
        return text
    while text and draw.textlength(text + "…", font=font) > limit:
        text = text[:-1]
    return text.rstrip() + "…" if text else ""


def _draw_caption(img: Image.Image, prompt: str, seed: int) -> None:
    """A translucent band at the bottom naming the prompt and saying this is a local preview."""
    width, height = img.size
    if width < 64 or height < 48:  # too small for legible text: leave the picture alone
        return
    font_size = max(9, min(28, min(width, height) // 40))
    font = _font(font_size)
    bitmap = not isinstance(font, ImageFont.FreeTypeFont)
    line_gap = font_size // 3
    band = 2 * font_size + 3 * line_gap
    draw = ImageDraw.Draw(img, "RGBA")
    draw.rectangle((0, height - band, width, height), fill=(0, 0, 0, 150))

    summary = " ".join(prompt.split())
    summary = summary[:60] + ("…" if len(summary) > 60 else "") if summary else "(no prompt)"
    footer = f"local preview · seed {seed}"
    if bitmap:  # the bitmap font only knows Latin-1
        summary = summary.encode("latin-1", "replace").decode("latin-1")
        footer = f"local preview - seed {seed}"
    limit = width - 2 * line_gap
    draw.text(
        (line_gap, height - band + line_gap),
        _fit_text(draw, summary, font, limit),
        font=font,
        fill=(255, 255, 255, 255),
    )
    draw.text(
        (line_gap, height - band + 2 * line_gap + font_size),
        _fit_text(draw, footer, font, limit),
        font=font,
        fill=(210, 210, 210, 255),
    )


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def render_preview(
    prompt: str, *, seed: int, width: int, height: int, negative_prompt: str | None = None
) -> bytes:
    """Local preview renderer (not AI): a deterministic abstract PNG seeded by the inputs.

    The same inputs always give byte-identical output; any change of prompt or seed gives a
    visibly different picture. A caption band names the prompt, the seed and what this is.
    """
    _check_preview_size(width, height)
    img = _render_scene(_preview_rng(prompt, seed, width, height, negative_prompt), width, height)
    _draw_caption(img, prompt, seed)
    return _png(img)


def render_preview_from(
    init_image: bytes, prompt: str, *, seed: int, width: int, height: int, strength: float
) -> bytes:
    """Local image-to-image preview: the init image (cover-fitted) blended with a seeded render.

    ``strength`` 0 keeps the init image, 1 gives the fresh render; output is a captioned PNG.
    """
    _check_preview_size(width, height)
    if not 0.0 <= strength <= 1.0:  # also refuses NaN
        raise InvalidRequest("strength", "strength must be from 0 to 1.")
    fmt, _ = _checked_header(init_image, max_side=DEFAULT_MAX_SIDE, max_pixels=DEFAULT_MAX_PIXELS)
    with _decoding(), _open(init_image, fmt) as source:
        if fmt == "jpeg":
            swaps = _exif_orientation_swaps(source)
            oriented = (source.size[1], source.size[0]) if swaps else source.size
            need = _plan(oriented, Variant("cover", width, height, "cover")).scaled
            source.draft(source.mode, (need[1], need[0]) if swaps else need)
        source.load()
        ImageOps.exif_transpose(source, in_place=True)
        base = _normalise_mode(source, for_jpeg=True).convert("RGB")
        base = ImageOps.fit(base, (width, height), _RESAMPLE)
    fresh = _render_scene(_preview_rng(prompt, seed, width, height, None), width, height)
    img = Image.blend(base, fresh, strength)
    _draw_caption(img, prompt, seed)
    return _png(img)
