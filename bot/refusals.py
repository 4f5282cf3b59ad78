"""What the ledger's refusals say to a person.

The ledger answers in numbers (a ``Refusal``: which limit, used, allowed, requested, resets at)
and in kinds (busy or full); the words are chosen here, once, for every front and for any
database dialect.
"""

from __future__ import annotations

from collections.abc import Callable

from bot.errors import LedgerUnavailable, QuotaExceeded, Refusal
from bot.money import format_usd
from bot.validation import format_megabytes

USER_DAILY_IMAGES = "user_daily_images"
USER_DAILY_USD = "user_daily_usd"
GUILD_DAILY_USD = "guild_daily_usd"
DAILY_NEURONS = "daily_neurons"
USER_DAILY_UPLOADS = "user_daily_uploads"
USER_DAILY_UPLOAD_BYTES = "user_daily_upload_bytes"


def _left(refusal: Refusal) -> int:
    return max(0, refusal.allowed - refusal.used)


def _uploads(r: Refusal) -> str:
    if r.allowed == 0:
        return "Uploads are turned off here."
    return f"You have made {r.used} of your {r.allowed} uploads for today."


_WORDING: dict[str, Callable[[Refusal], str]] = {
    USER_DAILY_IMAGES: lambda r: f"You have used {r.used} of your {r.allowed} images for today.",
    USER_DAILY_USD: lambda r: (
        f"This would cost {format_usd(r.requested)}; you have {format_usd(_left(r))} of your "
        f"{format_usd(r.allowed)} daily budget left."
    ),
    GUILD_DAILY_USD: lambda r: (
        f"This server has used {format_usd(r.used)} of its {format_usd(r.allowed)} daily budget."
    ),
    DAILY_NEURONS: lambda r: "The bot has reached its daily image allowance for everyone.",
    USER_DAILY_UPLOADS: _uploads,
    USER_DAILY_UPLOAD_BYTES: lambda r: (
        f"This upload is {format_megabytes(r.requested)}; you have "
        f"{format_megabytes(_left(r))} of your {format_megabytes(r.allowed)} daily upload "
        "allowance left."
    ),
}


def refusal_message(refusal: Refusal) -> str:
    """The sentence a user reads for this refusal."""
    return _WORDING[refusal.limit](refusal)


def quota_exceeded(refusal: Refusal) -> QuotaExceeded:
    """The domain error for a refusal: its words, and the numbers kept on it."""
    return QuotaExceeded(
        refusal.limit, refusal_message(refusal), refusal.resets_at, refusal=refusal
    )


def database_unavailable(*, full: bool) -> LedgerUnavailable:
    """A database that is out of space, or locked by someone else: nothing was charged."""
    if full:
        return LedgerUnavailable("The bot's storage is full, so nothing was done or charged. "
                                 "The operator needs to free some space.")  # fmt: skip
    return LedgerUnavailable(
        "The bot's database is busy right now; nothing was charged. Try again in a moment."
    )
