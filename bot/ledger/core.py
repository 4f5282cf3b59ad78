"""What every ledger database offers the concern modules, whichever the dialect: statements in
qmark (``?``) or named (``:name``) style, rows read by name or position, a refused constraint
as ``ConstraintViolation``, a busy, full or unreachable database as ``LedgerUnavailable``.

``Database`` (SQLite, ``bot.ledger.database``) and ``PostgresDatabase``
(``bot.ledger.postgres``) implement ``all``, ``write``, ``ping``, ``schema_version`` and
``close``; the rest is shared here. ``dialect`` ("sqlite" or "postgresql") is how a concern
module chooses between two spellings of one statement kept side by side.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from bot.errors import LedgerUnavailable
from bot.ledger.records import utc_day


def is_postgres_url(location: object) -> bool:
    """Whether a ledger location names PostgreSQL (DATABASE_URL) rather than a SQLite file."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Params = Sequence[Any] | dict[str, Any]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ConstraintViolation(Exception):
    """The database refused a write that breaks a constraint (unique, check, foreign key)."""


def insert_statement(table: str, columns: Sequence[str]) -> str:
    """``INSERT INTO table (columns) VALUES (?, …)``; a ``$n`` dialect translates the marks."""
    placeholders = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"  # noqa: S608


class LedgerDatabase(ABC):
    """The interface the concern modules use; subclasses run the statements."""

    dialect = ""
    expected_schema_version = 0  # how many migrations this dialect's code applies

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._retries: set[asyncio.Task[None]] = set()

    @abstractmethod
    async def all(self, sql: str, params: Params = ()) -> list[Any]:
        ...

    @abstractmethod
    async def write(self, sql: str, params: Params = ()) -> int:
        """One atomic statement, its changed row count."""
        ...

    @abstractmethod
    async def schema_version(self) -> int:
        ...

    @abstractmethod
    async def close(self) -> None:
        ...

    async def ping(self) -> None:
        await self.scalar("SELECT 1")

    async def listen(self, channel: str, callback: Callable[[str], None]) -> bool:
        """Call ``callback(payload)`` for each notification on ``channel``; False when this
        database has none (SQLite), or cannot listen now: the caller polls instead."""
        return False

    async def check_schema(self) -> None:
        """Readiness: the schema is the one this code migrates to (not behind, not ahead)."""
        version = await self.schema_version()
        if version != self.expected_schema_version:
            raise LedgerUnavailable(
                f"The database schema is at version {version}; this code expects "
                f"{self.expected_schema_version}."
            )

    async def scalar(self, sql: str, params: Params = ()) -> int:
        row = await self.one(sql, params)
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def one(self, sql: str, params: Params = ()) -> Any:
        rows = await self.all(sql, params)
        return rows[0] if rows else None

    async def write_eventually(self, sql: str, params: Params, what: str) -> int | None:
        """A write that must land (a settlement, a refund). Never raises for a locked, full or
        unreachable database: it is retried in the background until it lands (crash recovery
        covers a stop meanwhile), and None says it was deferred."""
        try:
            return await self.write(sql, params)
        except LedgerUnavailable as exc:
            log.warning("could not close %s now (%s); retrying in the background",
                        what, exc.code)  # fmt: skip
            task = asyncio.create_task(self._write_later(sql, params, what))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return None

    async def _write_later(self, sql: str, params: Params, what: str) -> None:
        delay = 0.5
        for _ in range(40):  # about 10 minutes in all
            await asyncio.sleep(delay)
            try:
                await self.write(sql, params)
                return
            except LedgerUnavailable:
                delay = min(delay * 2, 30.0)
        log.error("%s is still open; the next start's recovery will close it", what)

    async def _cancel_retries(self) -> None:
        for task in list(self._retries):
            task.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)

    # -- time ------------------------------------------------------------------------------

    def now_iso(self) -> str:
        return self.clock().astimezone(UTC).isoformat(timespec="milliseconds")

    def today(self) -> str:
        return utc_day(self.clock())
