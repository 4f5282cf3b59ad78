"""The placeholder cache: which image answers each anonymous placeholder path. Portable SQL
(``ON CONFLICT … DO UPDATE`` with ``excluded`` is PostgreSQL's spelling too)."""

from __future__ import annotations

from bot.ledger.core import LedgerDatabase

PLACEHOLDER_SQL = "SELECT image_id FROM placeholders WHERE path = ?"
SET_PLACEHOLDER_SQL = """
INSERT INTO placeholders (path, image_id, created_at) VALUES (?, ?, ?)
ON CONFLICT (path) DO UPDATE SET image_id = excluded.image_id, created_at = excluded.created_at
"""


class PlaceholderTable:
    def __init__(self, db: LedgerDatabase) -> None:
        self._db = db

    async def get(self, path: str) -> str | None:
        row = await self._db.one(PLACEHOLDER_SQL, (path,))
        return row[0] if row else None

    async def set(self, path: str, image_id: str) -> None:
        await self._db.write(SET_PLACEHOLDER_SQL, (path, image_id, self._db.now_iso()))
