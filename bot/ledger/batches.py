"""API batches and their items. A new batch's rows are written together (one group commit).
Portable SQL."""

from __future__ import annotations

import asyncio

from bot.ledger.core import LedgerDatabase
from bot.ledger.records import Batch, BatchItem

INSERT_BATCH_SQL = (
    "INSERT INTO batches (id, key_id, user_id, guild_id, model, webhook_url, state, "
    "webhook_state, created_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)"
)
INSERT_ITEM_SQL = (
    "INSERT INTO batch_items (batch_id, position, prompt, state, error_code, "
    "error_message) VALUES (?, ?, ?, ?, ?, ?)"
)
UPDATE_ITEM_SQL = (
    "UPDATE batch_items SET state = ?, image_id = ?, error_code = ?, error_message = ? "
    "WHERE batch_id = ? AND position = ?"
)
FINISH_SQL = "UPDATE batches SET state = 'done', finished_at = ? WHERE id = ?"
WEBHOOK_SQL = "UPDATE batches SET webhook_state = ?, webhook_attempts = ? WHERE id = ?"
BATCH_SQL = "SELECT * FROM batches WHERE id = ?"
ITEMS_SQL = "SELECT * FROM batch_items WHERE batch_id = ? ORDER BY position"
UNFINISHED_SQL = "SELECT id FROM batches WHERE state = 'running'"


class BatchTable:
    def __init__(self, db: LedgerDatabase) -> None:
        self._db = db

    async def add(self, batch: Batch) -> None:
        webhook_state = "pending" if batch.webhook_url else None
        batch_row = (batch.id, batch.key_id, batch.user_id, batch.guild_id, batch.model,
                     batch.webhook_url, webhook_state, batch.created_at)  # fmt: skip
        writes = [self._db.write(INSERT_BATCH_SQL, batch_row)]
        writes += [
            self._db.write(
                INSERT_ITEM_SQL,
                (
                    batch.id,
                    item.position,
                    item.prompt,
                    item.state,
                    item.error_code,
                    item.error_message,
                ),
            )
            for item in batch.items
        ]
        for outcome in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def update_item(
        self,
        batch_id: str,
        position: int,
        state: str,
        image_id: str | None,
        error_code: str | None,
        error_message: str | None,
    ) -> None:
        params = (state, image_id, error_code, error_message, batch_id, position)
        await self._db.write(UPDATE_ITEM_SQL, params)

    async def finish(self, batch_id: str) -> None:
        await self._db.write(FINISH_SQL, (self._db.now_iso(), batch_id))

    async def record_webhook(self, batch_id: str, state: str, attempts: int) -> None:
        await self._db.write(WEBHOOK_SQL, (state, attempts, batch_id))

    async def get(self, batch_id: str) -> Batch | None:
        row = await self._db.one(BATCH_SQL, (batch_id,))
        if row is None:
            return None
        items = await self._db.all(ITEMS_SQL, (batch_id,))
        return Batch.from_row(row, [BatchItem.from_row(r) for r in items])

    async def unfinished(self) -> list[str]:
        return [r[0] for r in await self._db.all(UNFINISHED_SQL)]
