"""API keys as stored: a hash of the secret, a hint, and the webhook secret (masked in logs
from the moment it is read). Portable SQL."""

from __future__ import annotations

from typing import Any

from bot.ledger.core import LedgerDatabase, insert_statement
from bot.ledger.records import ApiKey
from bot.logs import register_secret

INSERT_KEY_SQL = insert_statement("api_keys", ApiKey.COLUMNS)
KEY_BY_HASH_SQL = "SELECT * FROM api_keys WHERE key_hash = ?"
KEY_BY_ID_SQL = "SELECT * FROM api_keys WHERE id = ?"
KEYS_OF_USER_SQL = "SELECT * FROM api_keys WHERE user_id = ? ORDER BY created_at"
REVOKE_SQL = "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"


def _api_key(row: Any) -> ApiKey:
    """An API key row; its webhook secret is masked in every log from now on."""
    key = ApiKey.from_row(row)
    register_secret(key.webhook_secret)
    return key


class ApiKeyTable:
    def __init__(self, db: LedgerDatabase) -> None:
        self._db = db

    async def add(self, key: ApiKey) -> None:
        await self._db.write(INSERT_KEY_SQL, tuple(getattr(key, c) for c in ApiKey.COLUMNS))

    async def by_hash(self, key_hash: str) -> ApiKey | None:
        row = await self._db.one(KEY_BY_HASH_SQL, (key_hash,))
        return _api_key(row) if row else None

    async def get(self, key_id: str) -> ApiKey | None:
        row = await self._db.one(KEY_BY_ID_SQL, (key_id,))
        return _api_key(row) if row else None

    async def of_user(self, user_id: str) -> list[ApiKey]:
        return [_api_key(r) for r in await self._db.all(KEYS_OF_USER_SQL, (user_id,))]

    async def revoke(self, key_id: str) -> bool:
        return await self._db.write(REVOKE_SQL, (self._db.now_iso(), key_id)) == 1
