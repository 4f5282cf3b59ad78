"""API keys: made for a Discord user, shown once, stored only as a SHA-256 hash.

A key's generations count against its user's quotas (and its server's, when it was made in a
server), exactly as if the user had typed /imagine there.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from bot.api_rate import ApiRateLimit
from bot.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from bot.ledger import Ledger
from bot.ledger.records import ApiKey, new_id
from bot.logs import register_secret
from bot.validation import clean_text

KEY_PREFIX = "cfib_"
MAX_KEYS_PER_USER = 10


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


class ApiKeys:
    def __init__(self, ledger: Ledger, per_minute: int = 60) -> None:
        self.ledger = ledger
        self._rate = ApiRateLimit(ledger.limits, per_minute)

    async def rate_wait(self, key_id: str) -> int | None:
        """Count one request of the key against API_RATE_PER_MINUTE (shared by every
        process): None when it may go ahead, else the seconds to wait."""
        return await self._rate.wait_for(key_id)

    async def create(
        self, *, user_id: str, guild_id: str = "", name: str = ""
    ) -> tuple[ApiKey, str]:
        """A new key and its plaintext, which is never stored and cannot be shown again."""
        label = clean_text(name)[:50] or "API key"
        active = [k for k in await self.ledger.api_keys_of(user_id) if k.revoked_at is None]
        if len(active) >= MAX_KEYS_PER_USER:
            raise InvalidRequest(
                "name", f"You already have {MAX_KEYS_PER_USER} keys; revoke one first."
            )
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        webhook_secret = secrets.token_urlsafe(32)
        register_secret(webhook_secret)
        key = ApiKey(
            id=new_id("key"),
            user_id=user_id,
            guild_id=guild_id,
            name=label,
            key_hash=hash_key(plaintext),
            hint=f"{plaintext[:9]}…{plaintext[-4:]}",
            webhook_secret=webhook_secret,
            created_at=self.ledger.now_iso(),
        )
        await self.ledger.add_api_key(key)
        return key, plaintext

    async def authenticate(self, plaintext: str | None) -> ApiKey:
        if not plaintext or not plaintext.startswith(KEY_PREFIX) or len(plaintext) > 200:
            raise Unauthorized("A valid API key is required (Authorization: Bearer <key>).")
        digest = hash_key(plaintext)
        key = await self.ledger.api_key_by_hash(digest)
        if key is None or not hmac.compare_digest(key.key_hash, digest) or key.revoked_at:
            raise Unauthorized("That API key is not valid or was revoked.")
        return key

    async def list(self, user_id: str) -> list[ApiKey]:
        return await self.ledger.api_keys_of(user_id)

    async def revoke(self, key_id: str, *, requester_id: str, is_admin: bool = False) -> ApiKey:
        key = await self.ledger.get_api_key(key_id)
        if key is None or (key.user_id != requester_id and not is_admin):
            raise NotFound("No such API key.")
        if key.revoked_at:
            raise Forbidden("That key was already revoked.")
        await self.ledger.revoke_api_key(key.id)
        return key
