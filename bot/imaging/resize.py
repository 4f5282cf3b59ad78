"""Variants: the Cloudflare variant grammar (w=…,h=…,fit=…), bounded output sizes, and
rendering one variant of an original.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, ImageOps

from bot.errors import InvalidRequest
from bot.imaging.formats import (
    _DECODE_ERRORS,
    _RESAMPLE,
    CONTENT_TYPES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    FITS,
    VARIANT_MAX_CHARS,
    VARIANT_MAX_PIXELS,
    VARIANT_MAX_SIDE,
    _sniff_or_refuse,
)
from bot.imaging.uploads import (
    _checked_header,
    _decoding,
    _format_megapixels,
    _open,
)

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
