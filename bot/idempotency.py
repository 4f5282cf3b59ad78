"""Idempotency keys bound to their request: a fingerprint of the normalised request is stored
with the job, and a key sent again with a different request is refused, never answered with
the first request's result (Stripe's rule)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from bot.errors import IdempotencyKeyReused
from bot.ledger import Job
from bot.requests import GenerateRequest
from bot.validation import clean_text

# Not part of what was asked: the key itself, how the answer is delivered or paid for, and
# the channel's age restriction (where it was asked; it only decides whether it is checked).
_NOT_THE_REQUEST = frozenset({"idempotency_key", "allowance_hold", "age_restricted"})


def _digest(parts: dict[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _normalised(name: str, value: Any) -> Any:
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    if name in ("prompt", "negative_prompt") and isinstance(value, str):
        return clean_text(value)
    return value


def request_fingerprint(request: GenerateRequest) -> str:
    """The request as the service will understand it: text cleaned, bytes hashed, and only
    fields that take part in equality (so callbacks such as ``progress`` never count)."""
    return _digest(
        {
            f.name: _normalised(f.name, getattr(request, f.name))
            for f in dataclasses.fields(request)
            if f.compare and f.name not in _NOT_THE_REQUEST
        }
    )


def upload_fingerprint(data: bytes, user_id: str, guild_id: str) -> str:
    return _digest({"upload": hashlib.sha256(data).hexdigest(), "user": user_id,
                    "guild": guild_id})  # fmt: skip


def check_same_request(job: Job, fingerprint: str) -> None:
    """Raise IdempotencyKeyReused when ``job`` was made for a different request. Jobs written
    before fingerprints existed have none and are trusted."""
    if job.fingerprint is not None and job.fingerprint != fingerprint:
        raise IdempotencyKeyReused()
