"""Group commit: concurrent single-statement writes share one transaction and one WAL commit."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiosqlite

Outcome = int | BaseException
RunBatch = Callable[[list[tuple[str, Any]]], Awaitable[list[Outcome]]]


class BatchedWrites:
    """The queue both ledger cores share: writes that arrive while a batch runs wait and run
    together as the next batch (at most ``MAX_BATCH``), each caller getting its own outcome.
    ``run_batch`` runs one batch in the dialect's way; ``failure`` turns an error that failed
    a whole batch into what its callers see (a driver error into ``LedgerUnavailable``)."""

    MAX_BATCH = 256

    def __init__(
        self, run_batch: RunBatch, failure: Callable[[Exception], BaseException] = lambda e: e
    ) -> None:
        self._run_batch = run_batch
        self._failure = failure
        self._pending: list[tuple[str, Any, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, sql: str, params: Any) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((sql, params, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def drain(self) -> None:
        """Wait for the batch in flight (at a close)."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self.MAX_BATCH]
            del self._pending[: self.MAX_BATCH]
            try:
                outcomes = await self._run_batch([(sql, params) for sql, params, _ in batch])
            except BaseException as exc:  # the whole batch failed: never leave a caller waiting
                error = self._failure(exc) if isinstance(exc, Exception) else exc
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)


class GroupCommit(BatchedWrites):
    """Writes that arrive together share one transaction, and so one WAL commit.

    A batch runs as ONE call on aiosqlite's database thread: ``BEGIN IMMEDIATE``, each
    statement, ``COMMIT``. Each statement is still atomic on its own (a failing one rolls back
    alone and only its caller sees the error), and callers get their results only after the
    COMMIT; if it fails, the batch is rolled back and every caller gets the error. Only the
    ledger's writes come through here. (aiosqlite's ``_execute``/``_conn`` are private but are
    what every aiosqlite method is built on; pyproject pins the tested versions.)
    """

    def __init__(self, db: aiosqlite.Connection) -> None:
        super().__init__(self._on_db_thread)
        self._db = db

    async def _on_db_thread(self, statements: list[tuple[str, Any]]) -> list[Outcome]:
        run_on_db_thread = cast(Callable[..., Awaitable[list[Outcome]]], self._db._execute)
        return await run_on_db_thread(_run_batch, self._db._conn, statements)

def _run_batch(
    conn: sqlite3.Connection, statements: list[tuple[str, Any]]
) -> list[int | BaseException]:
    """On the database thread: one transaction, one outcome per statement."""
    if len(statements) == 1:
        sql, params = statements[0]
        try:
            return [conn.execute(sql, params).rowcount]
        except sqlite3.Error as exc:
            return [exc]
    outcomes: list[int | BaseException] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in statements:
            try:
                outcomes.append(conn.execute(sql, params).rowcount)
            except sqlite3.Error as exc:  # this statement alone is rolled back
                outcomes.append(exc)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return outcomes
