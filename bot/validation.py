"""Turning what a user typed into parameters a model accepts, or a clear error naming the field.

Pure functions: no I/O, so every front gets the same answers and tests need no fixtures.
"""

from __future__ import annotations

import math
import re
import unicodedata

from bot.catalog import ModelSpec
from bot.errors import InvalidPrompt, InvalidRequest

MIN_PROMPT = 3
MAX_SEED = 2**32 - 1
MAX_COUNT = 4
# A request's metadata as compact UTF-8 JSON, at most: what Cloudflare Images stores per image.
METADATA_LIMIT = 1024
ASPECT_RATIOS = ("1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3")
_WHITESPACE = re.compile(r"\s+")
_MB = 1024 * 1024


def format_megabytes(size: int) -> str:
    """A byte count for people: '10 MB', '2.5 MB', or bytes when under 0.01 MB."""
    text = f"{size / _MB:.2f}".rstrip("0").rstrip(".")
    return f"{text} MB" if text != "0" else f"{size} bytes"


def clean_text(text: str) -> str:
    """Drop control and format characters (newlines become spaces), collapse whitespace."""
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if char in "\t\n\r" or category == "Zs":
            kept.append(" ")
        elif category in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        else:
            kept.append(char)
    return _WHITESPACE.sub(" ", "".join(kept)).strip()


def clean_prompt(prompt: str, max_chars: int = 2048) -> str:
    cleaned = clean_text(prompt)
    if len(cleaned) < MIN_PROMPT:
        raise InvalidPrompt(f"The prompt must be at least {MIN_PROMPT} characters long.")
    if len(cleaned) > max_chars:
        raise InvalidPrompt(
            f"The prompt is {len(cleaned)} characters long; the limit is {max_chars}."
        )
    return cleaned


def clean_negative(text: str | None, spec: ModelSpec) -> str | None:
    if text is None:
        return None
    cleaned = clean_text(text)
    if not cleaned:
        return None
    if not spec.supports_negative_prompt:
        raise InvalidRequest("negative_prompt", f"{spec.name} does not take a negative prompt.")
    if len(cleaned) > spec.max_prompt_chars:
        raise InvalidRequest(
            "negative_prompt",
            f"The negative prompt is too long (limit {spec.max_prompt_chars} characters).",
        )
    return cleaned


def _snap(value: float, spec: ModelSpec) -> int:
    snapped = round(value / spec.size_multiple) * spec.size_multiple
    return max(spec.min_side, min(spec.max_side, snapped))


def resolve_size(
    spec: ModelSpec, width: int | None, height: int | None, aspect_ratio: str | None
) -> tuple[int, int]:
    """Explicit sizes win; else an aspect ratio at the model's default area; else defaults."""
    if spec.fixed_size:
        size = (spec.default_width, spec.default_height)
        square_ok = aspect_ratio in (None, "1:1") or size[0] != size[1]
        for field, given, expected in (("width", width, size[0]), ("height", height, size[1])):
            if given is not None and given != expected:
                raise _fixed_size_error(spec, field)
        if not square_ok:
            raise _fixed_size_error(spec, "aspect_ratio")
        return size
    if aspect_ratio is not None and (width is None or height is None):
        if aspect_ratio not in ASPECT_RATIOS:
            raise InvalidRequest(
                "aspect_ratio", f"Aspect ratio must be one of {', '.join(ASPECT_RATIOS)}."
            )
        a, b = (int(x) for x in aspect_ratio.split(":"))
        area = spec.default_width * spec.default_height
        if width is not None:
            return _check_side(spec, "width", width), _snap(width * b / a, spec)
        if height is not None:
            return _snap(height * a / b, spec), _check_side(spec, "height", height)
        return _snap(math.sqrt(area * a / b), spec), _snap(math.sqrt(area * b / a), spec)
    w = _check_side(spec, "width", width if width is not None else spec.default_width)
    h = _check_side(spec, "height", height if height is not None else spec.default_height)
    return w, h


def _fixed_size_error(spec: ModelSpec, field: str) -> InvalidRequest:
    return InvalidRequest(
        field,
        f"{spec.name} always makes {spec.default_width}×{spec.default_height} images; "
        "choose another model for other sizes.",
    )


def _check_side(spec: ModelSpec, field: str, value: int) -> int:
    if not spec.min_side <= value <= spec.max_side:
        raise InvalidRequest(
            field,
            f"{field.capitalize()} must be between {spec.min_side} and {spec.max_side} pixels "
            f"for {spec.name}.",
        )
    if value % spec.size_multiple:
        raise InvalidRequest(
            field, f"{field.capitalize()} must be a multiple of {spec.size_multiple} pixels."
        )
    return value


def resolve_steps(spec: ModelSpec, steps: int | None) -> int:
    if steps is None:
        return spec.default_steps
    if spec.fixed_steps and steps != spec.default_steps:
        raise InvalidRequest("steps", f"{spec.name} always uses {spec.default_steps} steps.")
    if not spec.min_steps <= steps <= spec.max_steps:
        raise InvalidRequest(
            "steps",
            f"Steps must be between {spec.min_steps} and {spec.max_steps} for {spec.name}.",
        )
    return steps


def resolve_guidance(spec: ModelSpec, guidance: float | None) -> float | None:
    if spec.guidance is None:
        if guidance is not None:
            raise InvalidRequest("guidance", f"{spec.name} does not take a guidance value.")
        return None
    low, high, default = spec.guidance
    if guidance is None:
        return default
    if not (math.isfinite(guidance) and low <= guidance <= high):
        raise InvalidRequest("guidance", f"Guidance must be between {low:g} and {high:g}.")
    return guidance


def resolve_seed(seed: int | None) -> int | None:
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InvalidRequest("seed", f"Seed must be between 0 and {MAX_SEED}.")
    return seed


def resolve_strength(spec: ModelSpec, strength: float | None, has_image: bool) -> float | None:
    if strength is None:
        return 0.6 if has_image and spec.supports_strength else None
    if not has_image:
        raise InvalidRequest("strength", "Strength only applies when starting from an image.")
    if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise InvalidRequest("strength", "Strength must be between 0 and 1.")
    return strength if spec.supports_strength else None


def resolve_count(count: int) -> int:
    if not 1 <= count <= MAX_COUNT:
        raise InvalidRequest("count", f"Count must be between 1 and {MAX_COUNT}.")
    return count
