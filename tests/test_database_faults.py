"""The database locked by another process, or out of space: a clear error, nothing charged,
and the bot serves again as soon as the fault passes (through the service and Discord)."""

from __future__ import annotations

import sqlite3

import pytest

from bot.errors import LedgerUnavailable
from bot.requests import GenerateRequest


def ask(prompt: str) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, user_id="u1", guild_id="g1", fresh=True)


async def fill_the_disk(ledger) -> None:  # type: ignore[no-untyped-def]
    """Compact the file, then allow it not one more page: the next row needs one."""
    await ledger.database.connection.execute("VACUUM")
    pages = (await ledger.database.all("PRAGMA page_count"))[0][0]
    await ledger.database.connection.execute(f"PRAGMA max_page_count = {pages}")


async def free_the_disk(ledger) -> None:  # type: ignore[no-untyped-def]
    await ledger.database.connection.execute("PRAGMA max_page_count = 1073741823")


async def test_a_locked_database_is_a_clear_error_and_charges_nothing(local_runtime):
    ledger = local_runtime.ledger
    db = ledger.database.connection
    await db.execute("PRAGMA busy_timeout = 100")  # don't wait 10 s in a test
    blocker = sqlite3.connect(local_runtime.settings.database_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(LedgerUnavailable) as refused:
            await local_runtime.service.generate(ask("while locked"))
        assert "nothing was charged" in refused.value.user_message
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert (await ledger.user_usage("u1", "g1")).images == 0
    made = await local_runtime.service.generate(ask("after the lock"))  # serving again
    assert made.images and (await ledger.user_usage("u1", "g1")).images == 1
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_a_full_disk_is_a_clear_error_and_charges_nothing(local_runtime):
    """Real requests until the capped file is full: the one that fails charges nothing and
    leaves nothing stored; once there is room again, the bot serves."""
    ledger, service = local_runtime.ledger, local_runtime.service
    await fill_the_disk(ledger)
    refused = None
    try:
        for n in range(1000):
            before = await ledger.user_usage("u1", "g1")
            try:
                await service.generate(ask(f"until the disk is full {n}"))
            except LedgerUnavailable as exc:
                refused = exc
                break
    finally:
        await free_the_disk(ledger)
    assert refused is not None and "storage is full" in refused.user_message
    assert await ledger.user_usage("u1", "g1") == before  # the refused request cost nothing
    images_dir = local_runtime.settings.data_dir / "images"
    stored = {p.name for p in images_dir.rglob("img_*")}
    recorded = await ledger.images_by_ids(sorted(stored))
    assert {image.id for image in recorded} == stored  # nothing stored without a record
    assert (await service.generate(ask("after the disk was freed"))).images
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_a_settlement_that_meets_a_lock_lands_once_the_lock_goes(local_runtime):
    """The image was made; its charge is recorded as soon as the database is free."""
    ledger = local_runtime.ledger
    await ledger.database.connection.execute("PRAGMA busy_timeout = 50")
    from bot.catalog import Cost
    from bot.ledger.ledger import NewJob

    limits = await ledger.limits_for("u1", "g1")
    job = await ledger.reserve(NewJob("generate", "u1", "g1", Cost(634, 57_600), 1, "m"), limits)
    blocker = sqlite3.connect(local_runtime.settings.database_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        assert await ledger.settle(job.id, 1, Cost(634, 57_600)) is False  # deferred, no error
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    for _ in range(100):
        if (await ledger.get_job(job.id)).state == "settled":
            break
        import asyncio

        await asyncio.sleep(0.05)
    assert (await ledger.get_job(job.id)).state == "settled"
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_closing_the_ledger_leaves_no_connection_opening_behind(tmp_path, monkeypatch):
    """A ledger closed right after it opened (a request refused at once) leaves no thread that
    could still open its file: tests/test_properties.py once found its temporary folder not
    empty at teardown, a file the WAL checkpointer's connect, cancelled but still pending in its
    driver thread, created while the folder was being removed. Every connect made after
    ``open`` returns is held here, as a loaded machine would hold it; there must be none."""
    import asyncio
    import threading

    from bot.ledger.database import Database

    before = set(threading.enumerate())
    database = await Database.open(tmp_path / "bot.sqlite3")
    held = threading.Event()
    late: list[object] = []
    connect = sqlite3.connect

    def held_connect(*args, **kwargs):  # type: ignore[no-untyped-def]
        late.append(args)
        held.wait(30)
        return connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", held_connect)
    for _ in range(5):
        await asyncio.sleep(0)  # the loop runs whatever open() started
    await database.close()
    connects_after_open = list(late)
    held.set()  # before: the checkpointer's connect, cancelled, still waiting in its thread
    for thread in set(threading.enumerate()) - before:
        thread.join(30)  # the driver's threads end once closed
    assert connects_after_open == []
