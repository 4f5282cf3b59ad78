"""The local preview renderer: a deterministic picture (shapes and a caption, not AI) for the
embedded default with no Cloudflare account.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import math
import random

from PIL import Image, ImageDraw, ImageFont, ImageOps

from bot.errors import InvalidRequest
from bot.imaging.formats import (
    _RESAMPLE,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    PREVIEW_MAX_SIDE,
    PREVIEW_MIN_SIDE,
)
from bot.imaging.resize import (
    Variant,
    _exif_orientation_swaps,
    _normalise_mode,
    _plan,
)
from bot.imaging.uploads import (
    _checked_header,
    _decoding,
    _open,
)

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
