"""Both dialects' migrations build the same ledger: after all of them, SQLite and PostgreSQL
hold the same tables, columns (name, nullability, broad type), primary keys, unique
constraints, checks (by column) and foreign keys, at the same schema version."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from bot.ledger import Ledger
from bot.ledger.migrations import MIGRATIONS
from bot.ledger.migrations_postgres import MIGRATIONS as POSTGRES_MIGRATIONS

TYPE_CLASS = {
    "integer": "integer", "bigint": "integer", "text": "text", "citext": "text",
    "real": "real", "double precision": "real",
}  # fmt: skip
Schema = dict[str, dict[str, Any]]


def sqlite_schema(path: Path) -> Schema:
    schema: Schema = {}
    with sqlite3.connect(path) as db:
        tables = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        for table, sql in tables:
            columns = db.execute(
                'SELECT name, type, "notnull", pk FROM pragma_table_info(?)', (table,)
            ).fetchall()
            pk = tuple(name for name, *_, order in sorted(columns, key=lambda c: c[3]) if order)
            uniques = set()
            for index, _unique, origin in db.execute(
                'SELECT name, "unique", origin FROM pragma_index_list(?)', (table,)
            ).fetchall():
                if origin == "u":
                    cols = db.execute("SELECT name FROM pragma_index_info(?)", (index,)).fetchall()
                    uniques.add(tuple(c[0] for c in cols))
            foreign = {
                (row[3], row[2], row[4])
                for row in db.execute("SELECT * FROM pragma_foreign_key_list(?)", (table,))
            }
            schema[table] = {
                "columns": {
                    name: (TYPE_CLASS[kind.lower()], bool(notnull) or name in pk)
                    for name, kind, notnull, _ in columns
                },
                "primary_key": pk,
                "unique": uniques,
                "checks": set(re.findall(r"CHECK \((\w+)", sql)),
                "foreign_keys": foreign,
            }
    return schema


async def postgres_schema(url: str) -> Schema:
    db = await asyncpg.connect(url)
    try:
        schema: Schema = {}
        tables = await db.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_type = 'BASE TABLE' AND table_name != 'schema_version'"
        )
        for (table,) in tables:
            columns = await db.fetch(
                "SELECT column_name, data_type, udt_name, is_nullable "
                "FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = $1",
                table,
            )
            constraints = await db.fetch(
                "SELECT c.contype::text AS contype, array_agg(a.attname ORDER BY k.ord) AS cols, "
                "max(f.relname) AS target, max(fa.attname) AS target_col "
                "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
                "CROSS JOIN unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) "
                "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
                "LEFT JOIN pg_class f ON f.oid = c.confrelid "
                "LEFT JOIN pg_attribute fa ON fa.attrelid = c.confrelid "
                "AND fa.attnum = c.confkey[1] "
                "WHERE t.relname = $1 GROUP BY c.oid, c.contype",
                table,
            )
            kind = {
                c["column_name"]: c["udt_name"] if c["data_type"] == "USER-DEFINED"
                else c["data_type"]
                for c in columns
            }  # fmt: skip
            schema[table] = {
                "columns": {
                    c["column_name"]: (TYPE_CLASS[kind[c["column_name"]]], c["is_nullable"] == "NO")
                    for c in columns
                },
                "primary_key": next(
                    (tuple(c["cols"]) for c in constraints if c["contype"] == "p"), ()
                ),
                "unique": {tuple(c["cols"]) for c in constraints if c["contype"] == "u"},
                "checks": {c["cols"][0] for c in constraints if c["contype"] == "c"},
                "foreign_keys": {
                    (c["cols"][0], c["target"], c["target_col"])
                    for c in constraints
                    if c["contype"] == "f"
                },
            }
        return schema
    finally:
        await db.close()


async def test_both_dialects_hold_the_same_schema(tmp_path: Path, postgres_url: str) -> None:
    assert len(MIGRATIONS) == len(POSTGRES_MIGRATIONS)
    sqlite_ledger = await Ledger.open(tmp_path / "parity.sqlite3")
    postgres_ledger = await Ledger.open(postgres_url)
    try:
        assert await sqlite_ledger.schema_version() == len(MIGRATIONS)
        assert await postgres_ledger.schema_version() == len(MIGRATIONS)
    finally:
        await sqlite_ledger.close()
        await postgres_ledger.close()
    lite = sqlite_schema(tmp_path / "parity.sqlite3")
    postgres = await postgres_schema(postgres_url)
    assert sorted(lite) == sorted(postgres)
    for table in lite:
        for part in ("columns", "primary_key", "unique", "checks", "foreign_keys"):
            assert lite[table][part] == postgres[table][part], (table, part)
    # The comparison is not vacuous: it saw the constraints that keep the money exact.
    assert lite["usage_counters"]["primary_key"] == ("day", "scope", "scope_id")
    assert ("idempotency_key",) in lite["jobs"]["unique"]
    assert {"kind", "state", "delivery"} <= lite["jobs"]["checks"]
    assert ("key_id", "api_keys", "id") in lite["batches"]["foreign_keys"]


async def test_migrating_twice_applies_nothing_again(postgres_url: str) -> None:
    first = await Ledger.open(postgres_url)
    await first.close()
    again = await Ledger.open(postgres_url)
    try:
        assert await again.schema_version() == len(POSTGRES_MIGRATIONS)
    finally:
        await again.close()
