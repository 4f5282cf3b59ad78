"""Content moderation: Llama Guard 3's hazard categories, reading its verdict, and the local
backend's deterministic stand-in.

Workers AI's ``@cf/meta/llama-guard-3-8b`` answers ``result.response`` either as an object
``{"safe": bool, "categories": ["S12", ...]}`` (when asked with ``response_format``
``json_object``) or as Llama Guard's own text, ``safe`` or ``unsafe`` then a line of
comma-separated categories; ``verdict_of`` reads both. The offline stand-in matches a small word
list per category, whole words, any case: honest about being a list, not a model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# Llama Guard 3's categories (the MLCommons hazard taxonomy), as people read them.
CATEGORIES: dict[str, str] = {
    "S1": "Violent crimes",
    "S2": "Non-violent crimes",
    "S3": "Sex-related crimes",
    "S4": "Child sexual exploitation",
    "S5": "Defamation",
    "S6": "Specialized advice",
    "S7": "Privacy",
    "S8": "Intellectual property",
    "S9": "Indiscriminate weapons",
    "S10": "Hate",
    "S11": "Suicide and self-harm",
    "S12": "Sexual content",
    "S13": "Elections",
    "S14": "Code interpreter abuse",
}
MAX_TOKENS = 32  # "unsafe\nS1,S10" or the JSON verdict: a few tokens
# Llama Guard wraps the text in its own instructions and category list, billed as input tokens.
TEMPLATE_TOKENS = 230
_CODE = re.compile(r"\bS(1[0-4]|[1-9])\b")

# The stand-in's words: a few clear ones per category, so tests and the embedded default
# refuse the obvious and let ordinary prompts through.
_OFFLINE_WORDS: dict[str, tuple[str, ...]] = {
    "S1": ("murder", "massacre", "behead", "torture"),
    "S2": ("shoplifting", "counterfeit money", "burglary"),
    "S3": ("sexual assault", "rape"),
    "S4": ("child abuse material",),
    "S5": ("defamatory",),
    "S6": ("overdose dosage",),
    "S7": ("home address of", "doxx"),
    "S8": ("pirated",),
    "S9": ("nerve gas", "pipe bomb", "bioweapon", "dirty bomb"),
    "S10": ("racial slur", "ethnic cleansing"),
    "S11": ("suicide", "self-harm"),
    "S12": ("nude", "naked", "porn", "explicit sex", "topless"),
    "S13": ("ballot stuffing", "voter fraud"),
    "S14": ("rm -rf",),
}
_OFFLINE_PATTERNS = {
    code: re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)",
                     re.IGNORECASE)
    for code, words in _OFFLINE_WORDS.items()
}  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """A moderation model's answer and the tokens it was billed for."""

    safe: bool
    categories: tuple[str, ...] = ()
    input_tokens: int = 0
    output_tokens: int = 0


def category_names(codes: tuple[str, ...]) -> str:
    """``Sexual content (S12)``; several joined with commas; an unknown code as itself."""
    if not codes:
        return "Unsafe content"
    return ", ".join(f"{CATEGORIES[c]} ({c})" if c in CATEGORIES else c for c in codes)


def moderated_text(prompt: str, negative_prompt: str | None) -> str:
    """What is checked: the prompt, and the negative prompt on its own line when there is one."""
    return f"{prompt}\n{negative_prompt}" if negative_prompt else prompt


def estimate_input_tokens(text: str) -> int:
    """At least what the model bills for ``text`` (about 4 characters a token; 3 to be safe)."""
    return TEMPLATE_TOKENS + math.ceil(len(text) / 3) + 8


def verdict_of(response: Any) -> tuple[bool, tuple[str, ...]] | None:
    """(safe, categories) from ``result.response`` in either shape; None if it is neither."""
    if isinstance(response, dict) and isinstance(response.get("safe"), bool):
        raw = response.get("categories") or []
        if not isinstance(raw, list):
            return None
        codes = tuple(dict.fromkeys(str(c).strip().upper() for c in raw if str(c).strip()))
        return response["safe"], () if response["safe"] else codes
    if isinstance(response, str):
        lines = response.strip().splitlines()
        first = lines[0].strip().lower() if lines else ""
        if first == "safe":
            return True, ()
        if first == "unsafe":
            rest = " ".join(lines[1:]).upper()
            return False, tuple(dict.fromkeys(f"S{n}" for n in _CODE.findall(rest)))
    return None


def offline_verdict(text: str) -> Verdict:
    """The local backend's stand-in: the categories whose words occur in ``text``; billed as
    Llama Guard would bill it, so quotas behave as they will in production."""
    codes = tuple(code for code, pattern in _OFFLINE_PATTERNS.items() if pattern.search(text))
    return Verdict(
        safe=not codes,
        categories=codes,
        input_tokens=TEMPLATE_TOKENS + math.ceil(len(text) / 4),
        output_tokens=1 if not codes else 1 + 2 * len(codes),
    )
