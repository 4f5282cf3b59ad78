"""Small facts read from HTTP responses, and how long to wait before trying again, shared by
every outbound client (Cloudflare, uploads by URL, webhooks)."""

from __future__ import annotations

import email.utils
import random
from datetime import UTC, datetime

import httpx


def retry_after_seconds(response: httpx.Response, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None when absent/bad.

    ``retry-after-ms`` (milliseconds, sent by Cloudflare and honoured by its SDK) wins when
    present and valid."""
    milliseconds = response.headers.get("retry-after-ms", "").strip()
    try:
        return max(0.0, float(milliseconds) / 1000)
    except ValueError:
        pass
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def media_type(content_type: str) -> str:
    """The media type of a Content-Type header, lower case, without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    kind = media_type(content_type)
    return kind == "application/json" or kind.endswith("+json")


def full_jitter(
    attempt: int, base: float, ceiling: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, …): uniform in
    [0, min(ceiling, base·2^(attempt-1))], so many clients retrying at once spread out."""
    return (rng or random).uniform(0.0, min(ceiling, base * 2 ** (attempt - 1)))
