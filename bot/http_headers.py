"""Small facts read from HTTP responses, shared by every outbound client."""

from __future__ import annotations

import email.utils
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
