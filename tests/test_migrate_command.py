"""``python -m bot migrate --to postgresql://…``: a SQLite ledger with something in every table
is copied into an empty PostgreSQL database exactly (row for row), the copy keeps working
(triggers on), and a non-empty target is refused with one line and nothing written."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from bot.catalog import Cost
from bot.config import Settings
from bot.ledger import Ledger, Limits, Template
from bot.ledger.ledger import NewJob
from bot.requests import GenerateRequest
from bot.runtime import open_runtime
from tests.postgres_server import run_async
from tests.test_cli import one_line_error, run_bot


async def fill(settings: Settings) -> None:
    """Something in every table: charges, refunds, images, a template, keys, a batch, quota
    policy, a reset, an allowed channel and a placeholder, a lease, the shared limits, a flight."""
    async with open_runtime(settings) as runtime:
        service, ledger = runtime.service, runtime.ledger
        # another process's lease (this runtime gives its own up when it closes), and its
        # generation in flight
        another = Ledger(ledger.database, ledger.defaults, "another-process")
        await another.leases.register(60)
        assert await another.flights.claim("cache-key-1", "guild:g1")
        await service.generate(GenerateRequest(prompt="a red fox", user_id="u1", guild_id="g1"))
        await service.generate(GenerateRequest(prompt="a blue owl", user_id="u2", guild_id="g1"))
        job = await ledger.reserve(
            NewJob("generate", "u3", "g2", Cost(1234, 5678), 1, "m", "key-1"),
            Limits(10, 10**9, 10**9, 10**12),
        )
        await ledger.refund(job.id, "provider", "failed")
        await ledger.add_template(Template("tpl_1", "g1", "Cosy", "{prompt}, warm", "u1",
                                           ledger.now_iso()))  # fmt: skip
        key, _ = await runtime.keys.create(user_id="u1")
        await runtime.batches.submit(key, ["a cat", "a dog"], None, None)
        for _ in range(2000):
            if not await ledger.unfinished_batches():
                break
            await asyncio.sleep(0.01)
        await ledger.set_user_quota("g1", "u2", 7, 9000)
        await ledger.set_guild_quota("g1", 500_000, 20, None)
        await ledger.set_blocklist("g1", ["gore"])
        await ledger.set_role_quota("g1", "r1", 40, None)
        await ledger.allow_channel("g1", "c1")
        await ledger.reset_user_day("g1", "u1", "admin")
        await ledger.set_placeholder("400x300/a-fox", "img_x")
        # the shared limits: an API rate window, a Cloudflare grant and a pause
        await runtime.keys.rate_wait(key.id)
        await ledger.limits.grant(16, 1000, 390_000)
        await ledger.limits.pause(ledger.limits.now_ms() + 5000)


def sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )]  # fmt: skip
        return {
            t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr)  # noqa: S608
            for t in tables
        }


async def postgres_rows(url: str, tables: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    db = await asyncpg.connect(url)
    try:
        found = {}
        for table in tables:
            columns = await db.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = $1 "
                "ORDER BY ordinal_position",
                table,
            )
            names = ", ".join(c[0] for c in columns)
            rows = await db.fetch(f"SELECT {names} FROM {table}")  # noqa: S608
            found[table] = sorted((tuple(r) for r in rows), key=repr)
        return found
    finally:
        await db.close()


def migrate(data: Path, url: str) -> subprocess.CompletedProcess[str]:
    """The real entry point, as a process: ``python -m bot migrate --to URL``."""
    return run_bot(data.parent, "migrate", "--to", url, env={"DATA_DIR": str(data)})


def test_every_row_is_copied_and_a_second_copy_is_refused(
    make_settings: Callable[..., Settings], empty_postgres_url: str
) -> None:
    settings = make_settings()
    run_async(fill(settings))
    source = sqlite_rows(settings.database_path)
    assert all(source[t] for t in source), [t for t in source if not source[t]]

    done = migrate(settings.data_dir, empty_postgres_url)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "verified" in out and f"{sum(map(len, source.values()))} rows" in out
    copied = run_async(postgres_rows(empty_postgres_url, list(source)))
    assert copied == source

    async def still_works() -> None:
        ledger = await Ledger.open(empty_postgres_url)
        try:
            assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
            before = await ledger.user_usage("u2", "g1")
            await ledger.reserve(NewJob("generate", "u2", "g1", Cost(634, 1), 1, "m", None),
                                 Limits(10, 10**9, 10**9, 10**12))  # fmt: skip
            assert (await ledger.user_usage("u2", "g1")).images == before.images + 1
            assert await ledger.schema_version() == await ledger_version(settings)
        finally:
            await ledger.close()

    run_async(still_works())
    err = one_line_error(migrate(settings.data_dir, empty_postgres_url), 1)
    assert err.startswith("error: ") and "is not empty" in err
    assert run_async(postgres_rows(empty_postgres_url, ["jobs"]))["jobs"] != []


async def ledger_version(settings: Settings) -> int:
    ledger = await Ledger.open(settings.database_path)
    try:
        return await ledger.schema_version()
    finally:
        await ledger.close()


def test_a_bad_target_is_one_line_without_the_password(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    run_async(ledger_version(settings))  # an empty ledger to copy
    url = "postgresql://bot:TEST-SECRET-pg-password-5e1@127.0.0.1:9/ledger"
    err = one_line_error(migrate(settings.data_dir, url), 1)
    assert "127.0.0.1:9" in err and "TEST-SECRET" not in err
    assert "--to" in one_line_error(migrate(settings.data_dir, "mysql://x"), 2)
