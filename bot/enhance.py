"""Prompt enhancement: the instructions sent to a text model and the cleanup of its answer."""

from __future__ import annotations

import hashlib
import re

from bot.validation import clean_text

SYSTEM_PROMPT = (
    "You rewrite short image prompts into one detailed prompt for a text-to-image model. "
    "Keep the user's subject and intent; add concrete details of composition, lighting, style "
    "and setting. Answer with the rewritten prompt only: no preamble, no quotes, no lists, "
    "at most 60 words."
)
MAX_TOKENS = 160
_PREAMBLE = re.compile(
    r"^(?:sure[,!.]?\s*|here(?:'s| is)[^:]*:\s*|(?:enhanced|rewritten|improved)?\s*prompt:\s*)+",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’`"


def tidy_answer(answer: str, original: str, max_chars: int) -> str:
    """Strip preambles, quotes and markup; fall back to the original if little is left."""
    text = clean_text(answer.replace("*", " "))
    text = _PREAMBLE.sub("", text).strip().strip(_QUOTES).strip()
    if len(text) < len(original) or len(text) < 3:
        return original
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0]
    return text


_STYLES = (
    "cinematic lighting, shallow depth of field",
    "soft morning light, pastel palette",
    "dramatic chiaroscuro, rich contrast",
    "golden hour glow, warm tones",
    "studio lighting, crisp detail",
    "moody atmosphere, volumetric fog",
)
_DETAILS = (
    "highly detailed",
    "intricate textures",
    "sharp focus",
    "wide-angle composition",
    "centered composition",
    "rule of thirds framing",
)


def offline_enhance(prompt: str) -> str:
    """The local backend's deterministic stand-in for a text model: same input, same output."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    style = _STYLES[digest[0] % len(_STYLES)]
    detail = _DETAILS[digest[1] % len(_DETAILS)]
    return f"{prompt}, {style}, {detail}, professional quality"
