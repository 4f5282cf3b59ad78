"""Moving up: ``python -m bot migrate --to postgresql://…`` copies the SQLite ledger at
DATABASE_PATH into an empty PostgreSQL database, exactly, and proves it.

The target must hold no tables (a non-empty target is refused before anything is written).
The target is migrated to the same schema version, then every table is copied row by row in
one transaction with the counter triggers switched off (the counters are copied as they are:
re-deriving them on insert would count every charge twice). Before the commit the copy is
checked: per table, the row count and the sum of every integer column (money, counters,
sizes) must equal the source's, or nothing is kept. Stop the bot while it runs: the source is
read in one read transaction, so a write after it began is not copied.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from bot.errors import Conflict, LedgerUnavailable, NotFound
from bot.ledger.database import Database
from bot.ledger.postgres import PostgresDatabase, masked_url

log = logging.getLogger(__name__)

CHUNK = 2000  # rows read and written at a time: memory stays bounded for any ledger
Totals = dict[str, tuple[int, ...]]


def _tables(source: sqlite3.Connection) -> list[tuple[str, list[str], list[str]]]:
    """Each table in creation order (parents before children), its columns and its integer
    columns."""
    names = [
        row[0]
        for row in source.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY rowid"
        )
    ]
    tables = []
    for name in names:
        info = source.execute("SELECT name, type FROM pragma_table_info(?)", (name,)).fetchall()
        tables.append(
            (name, [c[0] for c in info], [c[0] for c in info if c[1].upper() == "INTEGER"])
        )
    return tables


def _totals_sql(table: str, integers: list[str]) -> str:
    sums = "".join(f", COALESCE(SUM({c}), 0)" for c in integers)
    return f"SELECT COUNT(*){sums} FROM {table}"  # noqa: S608 (names from the schema)


async def _empty(url: str) -> bool:
    try:
        connection = await asyncpg.connect(url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise LedgerUnavailable(f"Cannot reach {masked_url(url)} ({type(exc).__name__}).") from None
    try:
        count = await connection.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        return int(count) == 0
    finally:
        await connection.close()


async def migrate_to_postgres(sqlite_path: Path, url: str) -> str:
    """Copy the ledger; a one-line report. Conflict if the target is not empty (nothing is
    written), NotFound if there is no SQLite ledger."""
    if not await asyncio.to_thread(sqlite_path.is_file):
        raise NotFound(f"No SQLite ledger at {sqlite_path} (DATABASE_PATH) to copy.")
    if not await _empty(url):
        raise Conflict(
            f"{masked_url(url)} is not empty: migrate copies into an empty database only, "
            "so nothing was written."
        )
    source_db = await Database.open(sqlite_path)  # brings the source to the current schema
    await source_db.close()
    target_db = await PostgresDatabase.open(url)
    await target_db.close()
    source = sqlite3.connect(sqlite_path, check_same_thread=False, isolation_level=None)
    target = await asyncpg.connect(url)
    try:
        await asyncio.to_thread(source.execute, "BEGIN")  # one consistent snapshot
        copied = await _copy(source, target)
    finally:
        source.close()
        await target.close()
    rows = sum(count for count, *_ in copied.values())
    return (
        f"copied {rows} rows in {len(copied)} tables from {sqlite_path} to {masked_url(url)}; "
        "row counts and integer totals verified equal"
    )


async def _copy(source: sqlite3.Connection, target: asyncpg.Connection) -> Totals:
    tables = await asyncio.to_thread(_tables, source)
    async with target.transaction():
        await target.execute("ALTER TABLE jobs DISABLE TRIGGER USER")
        for table, columns, _ in tables:
            await _copy_table(source, target, table, columns)
        await target.execute("ALTER TABLE jobs ENABLE TRIGGER USER")
        expected: Totals = {}
        found: Totals = {}
        for table, _, integers in tables:
            sql = _totals_sql(table, integers)
            cursor = await asyncio.to_thread(source.execute, sql)
            row = await asyncio.to_thread(cursor.fetchone)
            expected[table] = tuple(int(v) for v in row)
            found[table] = tuple(int(v) for v in await target.fetchrow(sql))
        wrong = [t for t in expected if expected[t] != found[t]]
        if wrong:  # raising rolls the whole copy back
            raise Conflict(f"the copy's totals differ in {', '.join(wrong)}; nothing was kept")
    return found


async def _copy_table(
    source: sqlite3.Connection, target: asyncpg.Connection, table: str, columns: list[str]
) -> None:
    cursor = await asyncio.to_thread(
        source.execute, f"SELECT {', '.join(columns)} FROM {table}"  # noqa: S608
    )
    marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608
    while True:
        rows: list[Any] = await asyncio.to_thread(cursor.fetchmany, CHUNK)
        if not rows:
            return
        await target.executemany(insert, rows)
