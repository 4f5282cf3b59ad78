"""UTC days: what daily quotas, Cloudflare's free allocation and reports count by."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta


def utc_day(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


def next_utc_midnight(moment: datetime | None = None) -> datetime:
    """When today's counts reset: the next 00:00 UTC after ``moment`` (default: now)."""
    tomorrow = (moment or datetime.now(UTC)).astimezone(UTC).date() + timedelta(days=1)
    return datetime.combine(tomorrow, time(0, 0), tzinfo=UTC)
