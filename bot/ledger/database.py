"""The ledger's SQLite core: one connection, group-committed writes, migrations, background
checkpoints, and a busy or full database mapped to ``LedgerUnavailable``.

Everything SQLite-specific about *running* statements lives here (``bot.ledger.postgres`` is
the PostgreSQL core, with the same interface, ``bot.ledger.core.LedgerDatabase``): the
PRAGMAs, ``PRAGMA user_version`` as the schema version, ``BEGIN IMMEDIATE`` (in
``GroupCommit``), the WAL checkpointer, the ``sqlite3`` error classes and the words "locked",
"busy" and "full" in their messages. The concern modules never see a driver: a refused
constraint reaches them as ``ConstraintViolation``. The schema in ``migrations`` is SQLite's
spelling (``WITHOUT ROWID``, triggers using the scalar ``MAX()``, ``COLLATE NOCASE``);
``migrations_postgres`` keeps the same numbered migrations in PostgreSQL's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite

from bot.errors import LedgerUnavailable
from bot.ledger.core import (
    Clock,
    ConstraintViolation,
    LedgerDatabase,
    Params,
    insert_statement,
    utc_now,
)
from bot.ledger.group_commit import GroupCommit
from bot.ledger.migrations import MIGRATIONS
from bot.logs import quiet_chatty_libraries
from bot.metrics import Metrics
from bot.refusals import database_unavailable

log = logging.getLogger(__name__)

__all__ = ["Clock", "ConstraintViolation", "Database", "insert_statement", "utc_now"]


def _unavailable(exc: sqlite3.OperationalError) -> LedgerUnavailable:
    """A database that is locked, full or failing, as a user-safe domain error."""
    full = "full" in str(exc).lower()
    if full:
        log.error("the database is full: %s", exc)
    else:
        log.warning("database unavailable: %s", exc)
    return database_unavailable(full=full)


def _is_lock(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class Database(LedgerDatabase):
    """The connection every concern shares. Open with ``await Database.open(path, clock)``."""

    CHECKPOINT_SECONDS = 1.0
    dialect = "sqlite"
    expected_schema_version = len(MIGRATIONS)

    def __init__(
        self, connection: aiosqlite.Connection, clock: Clock, metrics: Metrics | None = None
    ) -> None:
        super().__init__(clock)
        self.connection = connection
        seconds = (metrics or Metrics()).ledger_seconds
        self._read_seconds = seconds.labels("read")
        self._write_seconds = seconds.labels("write")
        self._writes = GroupCommit(connection)
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_connection: aiosqlite.Connection | None = None

    @classmethod
    async def open(
        cls, path: Path, clock: Clock = utc_now, metrics: Metrics | None = None
    ) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        quiet_chatty_libraries()  # the driver logs statement parameters (secrets, prompts)
        connection = await aiosqlite.connect(path, isolation_level=None)
        connection.row_factory = aiosqlite.Row
        database: Database | None = None
        try:
            await connection.execute("PRAGMA busy_timeout = 10000")
            await connection.execute("PRAGMA journal_mode = WAL")
            await connection.execute("PRAGMA synchronous = NORMAL")
            await connection.execute("PRAGMA foreign_keys = ON")
            # Checkpoints run in the background (below), not inside a writer's commit.
            await connection.execute("PRAGMA wal_autocheckpoint = 0")
            database = cls(connection, clock, metrics)
            await database._migrate()
            # Its own connection, opened here and closed in ``close``: a connect left to the
            # task could still be running in its thread after ``close`` (a cancel does not stop
            # a thread) and create the file again once its folder is being removed.
            database._checkpoint_connection = await aiosqlite.connect(path, isolation_level=None)
            await database._checkpoint_connection.execute("PRAGMA busy_timeout = 1000")
        except BaseException:
            await connection.close()
            if database is not None and database._checkpoint_connection is not None:
                await database._checkpoint_connection.close()
            raise
        database._checkpointer = asyncio.create_task(database._checkpoint_forever())
        return database

    async def close(self) -> None:
        await self._cancel_retries()
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        if self._checkpoint_connection is not None:  # waits for a checkpoint still running
            await self._checkpoint_connection.close()
        # ValueError: the driver's connection is already gone; there is nothing to flush.
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await self.connection.close()

    async def _checkpoint_forever(self) -> None:
        """Copy the WAL back into the database from a connection of its own, so that no
        request's commit pays for it (SQLite's automatic checkpoint runs inside a commit)."""
        assert self._checkpoint_connection is not None
        while True:
            await asyncio.sleep(self.CHECKPOINT_SECONDS)
            try:
                await self._checkpoint_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint failed: %s", exc)

    async def _migrate(self) -> None:
        version = await self.schema_version()
        for number, script in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            await self.connection.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
            log.info("database migrated to schema version %d", number)

    async def schema_version(self) -> int:
        return await self.scalar("PRAGMA user_version")

    async def ping(self) -> None:
        await self.scalar("SELECT 1")

    # -- statements ------------------------------------------------------------------------

    async def all(self, sql: str, params: Params = ()) -> list[Any]:
        started = time.perf_counter()
        try:
            return list(await self.connection.execute_fetchall(sql, params))
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from None
        finally:
            self._read_seconds.observe(time.perf_counter() - started)

    async def write(self, sql: str, params: Params = ()) -> int:
        """One atomic statement (group-committed), its changed row count; retried briefly if
        another process holds the database, then LedgerUnavailable."""
        for attempt in range(3):
            started = time.perf_counter()
            try:
                return await self._writes.write(sql, params)
            except sqlite3.IntegrityError as exc:
                raise ConstraintViolation(str(exc)) from None
            except sqlite3.OperationalError as exc:
                if not _is_lock(exc) or attempt == 2:
                    raise _unavailable(exc) from None
            finally:
                self._write_seconds.observe(time.perf_counter() - started)
            await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")
