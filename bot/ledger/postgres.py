"""The ledger's PostgreSQL core (asyncpg): a connection pool, grouped write transactions under
one writer lock, migrations, and a full, busy or unreachable server mapped to
``LedgerUnavailable``. Same interface as the SQLite core (``bot.ledger.core``).

Why one writer lock: the reservation is an ``INSERT … SELECT … WHERE <the counters still
allow it>``. Under READ COMMITTED two such statements in two processes can both read the
counters before either commits, and both pass: the quota would be overshot. So every write
transaction first takes one transaction-scoped advisory lock (``pg_advisory_xact_lock``), which
serialises writers across every process and connection as SQLite's single writer does, and each
statement's snapshot, taken after the lock, sees every earlier commit. Taking it first, before any
row lock, also means two writers can never deadlock on counter rows. Concurrent writes of one
process share a transaction (group commit, as in SQLite), so the lock and the commit are paid
once per batch, and the batch is three round trips whatever its size (``_pipelined``). Reads go
straight to the pool and never wait for the lock.

Why every write still takes it (not only reservations): each change of a job's charge updates
its user's, its server's and the one daily 'all' counter row, in that order, inside the batch's
transaction; two unlocked multi-statement transactions would hold an 'all' row and wait for a
user row the other holds (a deadlock), and every one of them waits for the 'all' row anyway.

Parameters: the concern modules write qmark (``?``) or named (``:name``) statements;
``translate`` turns them into ``$n`` here, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bot.errors import LedgerUnavailable
from bot.ledger.core import Clock, ConstraintViolation, LedgerDatabase, Params, utc_now
from bot.ledger.group_commit import BatchedWrites, Outcome
from bot.ledger.migrations_postgres import MIGRATIONS
from bot.refusals import database_unavailable

log = logging.getLogger(__name__)

WRITER_LOCK = 0x1ED6E2_01  # pg_advisory_xact_lock key: one writer at a time, every process
MIGRATION_LOCK = 0x1ED6E2_02  # two processes starting together migrate once
_LOCK = f"SELECT pg_advisory_xact_lock({WRITER_LOCK})"
_BEGIN_LOCKED = f"BEGIN; {_LOCK}"  # one round trip (the simple query protocol)
_DATA_CHANGE = re.compile(r"\s*(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_LITERALS = re.compile(r"'(?:[^']|'')*'")
_MARKS = re.compile(r"\$(\d+)")
_TOKENS = re.compile(r"'(?:[^']|'')*'|::|\?|(?<![:\w]):([A-Za-z_]\w*)")


def masked_url(url: str) -> str:
    """The URL with its password replaced by ``***``: safe for a message or a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


@lru_cache(maxsize=1024)
def _translated(sql: str) -> tuple[str, tuple[str, ...] | int]:
    """``sql`` with ``$n`` marks, and the parameter names in order (or the count of ``?``)."""
    names: list[str] = []
    marks = 0

    def mark(match: re.Match[str]) -> str:
        nonlocal marks
        found = match.group(0)
        if found == "?":
            marks += 1
            return f"${marks}"
        name = match.group(1)
        if name is None:  # a string literal or a ``::`` cast, unchanged
            return found
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    text = _TOKENS.sub(mark, sql)
    if names and marks:
        raise ValueError("a statement mixes ? and :name parameters")
    return text, tuple(names) if names else marks


def translate(sql: str, params: Params) -> tuple[str, Sequence[Any]]:
    """A qmark or named statement and its parameters in asyncpg's ``$n`` style."""
    text, spec = _translated(sql)
    if isinstance(params, dict):
        assert isinstance(spec, tuple), "named parameters for a statement without names"
        return text, [params[name] for name in spec]
    return text, params


def _decode_numeric(text: str) -> int | Decimal:
    """SUM() of BIGINT is NUMERIC in PostgreSQL; the ledger's sums are whole numbers."""
    return Decimal(text) if "." in text or "e" in text.lower() else int(text)


async def _prepare_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "numeric", encoder=str, decoder=_decode_numeric, schema="pg_catalog", format="text"
    )


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """A connection going back to the pool keeps its session: the ledger never changes one
    (no SET, no session advisory lock, no LISTEN or cursor on a pooled connection; a
    transaction left open is still rolled back by asyncpg), so the default reset, a round trip
    of four statements after every batch and every read, has nothing to undo."""


def _row_count(status: str) -> int:
    """'INSERT 0 1', 'UPDATE 3', 'DELETE 0' → the number of rows."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _is_unavailable(exc: BaseException) -> bool:
    """A server that is down, unreachable, out of room or shutting down (not a bug in a
    statement): classes 08 (connection), 53 (resources), 57 (operator), 40 (rollback)."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and state[:2] in ("08", "53", "57", "40")


def _unavailable(exc: BaseException) -> LedgerUnavailable:
    full = getattr(exc, "sqlstate", "") == "53100"  # disk_full
    if full:
        log.error("the database is full: %s", type(exc).__name__)
    else:
        log.warning("database unavailable: %s", type(exc).__name__)
    return database_unavailable(full=full)


def _batch_failure(exc: Exception) -> BaseException:
    """What the callers of a batch that failed as a whole see."""
    return _unavailable(exc) if _is_unavailable(exc) else exc


class PostgresDatabase(LedgerDatabase):
    """Open with ``await PostgresDatabase.open(url, clock)``."""

    dialect = "postgresql"
    expected_schema_version = len(MIGRATIONS)

    def __init__(self, pool: asyncpg.Pool, clock: Clock, url: str = "") -> None:
        super().__init__(clock)
        self.pool = pool
        self._url = url
        self._writes = BatchedWrites(self._run_batch, _batch_failure)
        self._listener: asyncpg.Connection | None = None  # LISTEN's own connection
        self._listened: set[str] = set()
        self._listen_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, url: str, clock: Clock = utc_now, *, pool_size: int = 8
    ) -> PostgresDatabase:
        """Connect (a pool of ``pool_size``) and migrate; LedgerUnavailable if unreachable."""
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, init=_prepare_connection, timeout=10,
                reset=_keep_session,
            )  # fmt: skip
        except Exception as exc:
            if _is_unavailable(exc) or isinstance(exc, asyncpg.PostgresError):
                log.error("cannot reach the PostgreSQL ledger at %s", masked_url(url))
                raise _unavailable(exc) from None
            raise
        database = cls(pool, clock, url)
        try:
            await database._migrate()
        except BaseException:
            await pool.close()
            raise
        return database

    async def close(self) -> None:
        await self._cancel_retries()
        await self._writes.drain()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=5)
        await self.pool.close()

    async def listen(self, channel: str, callback: Callable[[str], None]) -> bool:
        """LISTEN on a connection of this process's own (opened on first use, and again if it
        was lost); a notification is delivered when the transaction that sent it commits."""
        async with self._listen_lock:
            if self._listener is None or self._listener.is_closed():
                self._listened.clear()
                try:
                    self._listener = await asyncpg.connect(self._url, timeout=10)
                except Exception as exc:
                    log.warning("cannot LISTEN now (%s); polling", type(exc).__name__)
                    self._listener = None
                    return False
            if channel not in self._listened:

                def notified(_c: object, _pid: int, _channel: str, payload: str) -> None:
                    callback(payload)

                try:
                    await self._listener.add_listener(channel, notified)
                except Exception as exc:
                    log.warning("cannot LISTEN now (%s); polling", type(exc).__name__)
                    return False
                self._listened.add(channel)
            return True

    async def _migrate(self) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            version = await connection.fetchval("SELECT max(version) FROM schema_version") or 0
            for number, script in enumerate(MIGRATIONS, start=1):
                if number > version:
                    await connection.execute(script)
                    log.info("database migrated to schema version %d", number)
            if version < len(MIGRATIONS):
                await connection.execute("DELETE FROM schema_version")
                await connection.execute(
                    "INSERT INTO schema_version (version) VALUES ($1)", len(MIGRATIONS)
                )

    async def schema_version(self) -> int:
        return await self.scalar("SELECT COALESCE(max(version), 0) FROM schema_version")

    # -- statements ------------------------------------------------------------------------

    async def all(self, sql: str, params: Params = ()) -> list[Any]:
        text, args = translate(sql, params)
        try:
            async with self.pool.acquire() as connection:
                return list(await connection.fetch(text, *args))
        except Exception as exc:
            if _is_unavailable(exc):
                raise _unavailable(exc) from None
            raise

    async def write(self, sql: str, params: Params = ()) -> int:
        """One atomic statement, its changed row count. Writes that arrive together share
        one transaction (and one commit), under the writer lock."""
        text, args = translate(sql, params)
        return await self._writes.write(text, args)

    async def _run_batch(self, statements: list[tuple[str, Sequence[Any]]]) -> list[Outcome]:
        """One transaction for the batch. If one statement breaks a constraint the batch runs
        again in order, each statement in a savepoint of one transaction, so that it fails
        alone (as in SQLite's group commit) and the batch still commits once."""
        async with self.pool.acquire() as connection:
            try:
                return await _pipelined(connection, statements)
            except asyncpg.IntegrityConstraintViolationError as exc:
                if len(statements) == 1:
                    return [ConstraintViolation(str(exc))]
            return await _one_by_one(connection, statements)


def _groups(
    statements: list[tuple[str, Sequence[Any]]],
) -> dict[str, list[tuple[int, Sequence[Any]]]]:
    """The batch's statements by text (in order of first appearance), with their places."""
    groups: dict[str, list[tuple[int, Sequence[Any]]]] = {}
    for index, (text, args) in enumerate(statements):
        groups.setdefault(text, []).append((index, args))
    return groups


@lru_cache(maxsize=1024)
def _marked(text: str) -> str | None:
    """The statement returning a row per changed row, each carrying one more parameter (its
    place in its group), so that a group of it can be pipelined (``fetchmany`` returns the
    group's rows together) and each execution's row count read back; None for a statement
    that is not a plain INSERT, UPDATE or DELETE. Counting in a ``WITH … SELECT count(*)``
    instead cost the server ~20 us more a reserve+settle pair."""
    if _DATA_CHANGE.match(text) is None or "RETURNING" in text.upper():
        return None
    marks = _MARKS.findall(_LITERALS.sub("", text))
    mark = max((int(n) for n in marks), default=0) + 1
    return f"{text.rstrip()} RETURNING CAST(${mark} AS INTEGER)"


async def _pipelined(
    connection: asyncpg.Connection, statements: list[tuple[str, Sequence[Any]]]
) -> list[Outcome]:
    """The batch in one transaction and few round trips: BEGIN and the writer lock in one,
    each group of one statement text in one (asyncpg pipelines its executions), COMMIT in
    one. Statements of a batch come from concurrent callers, so running a group together
    changes nothing a caller could tell from an order they arrived in; a statement that
    needed another one's row first (a foreign key) fails the batch, which then runs in order."""
    outcomes: list[Outcome] = [0] * len(statements)
    await connection.execute(_BEGIN_LOCKED)
    try:
        for text, members in _groups(statements).items():
            marked = _marked(text)
            if marked is None or len(members) == 1:
                for index, args in members:
                    outcomes[index] = _row_count(await connection.execute(text, *args))
                continue
            places = [(*args, place) for place, (_, args) in enumerate(members)]
            changed = Counter(row[0] for row in await connection.fetchmany(marked, places))
            for place, (index, _) in enumerate(members):
                outcomes[index] = changed[place]
        await connection.execute("COMMIT")
    except BaseException:
        await _roll_back(connection)
        raise
    return outcomes


async def _one_by_one(
    connection: asyncpg.Connection, statements: list[tuple[str, Sequence[Any]]]
) -> list[Outcome]:
    """The batch in order in one transaction, each statement in a savepoint of its own."""
    outcomes: list[Outcome] = []
    async with connection.transaction():
        await connection.execute(_LOCK)
        for text, args in statements:
            try:
                async with connection.transaction():
                    outcomes.append(_row_count(await connection.execute(text, *args)))
            except asyncpg.IntegrityConstraintViolationError as exc:
                outcomes.append(ConstraintViolation(str(exc)))
    return outcomes


async def _roll_back(connection: asyncpg.Connection) -> None:
    """After a failed batch; a connection that is gone is discarded by the pool anyway."""
    if not connection.is_closed():
        with contextlib.suppress(Exception):
            await connection.execute("ROLLBACK")
