"""Batches are atomic: a batch holds its whole image allowance at submission or is refused
whole, even when submissions race; a revoked key cancels what its batches have not started
(real SQLite, the HTTP API over real sockets)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from bot.catalog import ZERO_COST
from bot.errors import QuotaExceeded
from bot.ledger import Ledger
from bot.ledger.ledger import NewJob
from bot.ledger.records import ApiKey, Batch, BatchItem, new_id
from tests import test_api
from tests.conftest import CountingProvider

# The ledger-level tests run on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_ledgers

start_api = test_api.start_api  # the HTTP API fixture


def prompts(batch: int, size: int) -> list[str]:
    return [f"batch {batch} picture {n}" for n in range(size)]


async def left_by_a_restart(api: test_api.ApiClient, key: ApiKey, items: int) -> str:
    """A running batch as a stopped process left it: its items queued, no hold."""
    batch = Batch(
        id=new_id("bat"), key_id=key.id, user_id=key.user_id, guild_id=key.guild_id,
        model=None, webhook_url=None, state="running", webhook_state=None,
        webhook_attempts=0, created_at=api.runtime.ledger.now_iso(), finished_at=None,
        items=[BatchItem(batch_id="", position=n, prompt=f"left over {n}", state="queued")
               for n in range(items)],
    )  # fmt: skip
    await api.runtime.ledger.add_batch(batch)
    return batch.id


async def books_are_exact(api: test_api.ApiClient) -> None:
    assert await api.runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_five_racing_batches_with_three_images_left_accept_exactly_one(start_api):
    api = await start_api(QUOTA_USER_DAILY_IMAGES=3)
    responses = await asyncio.gather(
        *(api.post("/api/batch/generate", {"prompts": prompts(b, 3)}) for b in range(5))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202, 403, 403, 403, 403]
    for refused in (r for r in responses if r.status_code == 403):
        assert refused.json()["details"]["limit"] == "user_daily_images"
        assert "Nothing was started" in refused.json()["details"]["message"]
    await api.runtime.batches.wait_idle()
    [accepted] = [r for r in responses if r.status_code == 202]
    batch = (await api.get(f"/api/batch/{accepted.json()['id']}")).json()
    assert batch["counts"]["done"] == 3
    assert (await api.runtime.ledger.user_usage(api.user_id)).images == 3
    await books_are_exact(api)


async def test_racing_batches_accept_as_many_as_fit_and_never_more(start_api):
    api = await start_api(QUOTA_USER_DAILY_IMAGES=5)
    responses = await asyncio.gather(
        *(api.post("/api/batch/generate", {"prompts": prompts(b, 2)}) for b in range(6))
    )
    assert sorted(r.status_code for r in responses) == [202, 202] + [403] * 4
    await api.runtime.batches.wait_idle()
    assert (await api.runtime.ledger.user_usage(api.user_id)).images == 4
    await books_are_exact(api)


async def slow_batch(api: test_api.ApiClient, size: int) -> str:
    """Submit a batch whose images each take 0.3 s; its id."""
    api.runtime.service.provider = CountingProvider(delay=0.3)
    accepted = await api.post("/api/batch/generate", {"prompts": prompts(0, size)})
    assert accepted.status_code == 202
    return str(accepted.json()["id"])


async def test_a_held_allowance_is_not_taken_by_other_requests(start_api):
    api = await start_api(QUOTA_USER_DAILY_IMAGES=3)
    batch_id = await slow_batch(api, 3)
    meanwhile = await api.post("/api/generate", {"prompt": "a sneaky extra picture"})
    assert meanwhile.status_code == 403
    await api.runtime.batches.wait_idle()
    batch = (await api.get(f"/api/batch/{batch_id}")).json()
    assert batch["counts"] == {"queued": 0, "running": 0, "done": 3, "failed": 0}
    await books_are_exact(api)


async def test_what_a_batch_does_not_use_is_given_back(start_api):
    api = await start_api(QUOTA_USER_DAILY_IMAGES=3)
    first = await api.post("/api/generate", {"prompt": "batch 0 picture 0"})
    assert first.status_code == 201
    # one item is a free cache hit and one is invalid: neither draws on the hold
    accepted = await api.post("/api/batch/generate",
                              {"prompts": ["batch 0 picture 0", "ab"]})  # fmt: skip
    assert accepted.status_code == 202
    await api.runtime.batches.wait_idle()
    remaining = await api.runtime.service.remaining(api.user_id, "")
    assert remaining.images == 2
    await books_are_exact(api)


async def test_a_revoked_key_cancels_its_batch_and_refunds_the_rest(start_api):
    api = await start_api(QUOTA_USER_DAILY_IMAGES=10)
    batch_id = await slow_batch(api, 6)
    [key] = await api.runtime.keys.list(api.user_id)
    await api.runtime.keys.revoke(key.id, requester_id=api.user_id)
    await api.runtime.batches.wait_idle()
    batch = await api.runtime.ledger.get_batch(batch_id)
    assert batch is not None
    done = [i for i in batch.items if i.state == "done"]
    cancelled = [i for i in batch.items if i.error_code == "cancelled"]
    assert len(done) <= 2 and len(done) + len(cancelled) == 6  # only those already running
    assert (await api.runtime.ledger.user_usage(api.user_id)).images == len(done)
    assert (await api.runtime.service.remaining(api.user_id, "")).images == 10 - len(done)
    await books_are_exact(api)


async def test_a_batch_resumed_after_a_restart_stops_for_a_revoked_key(start_api):
    api = await start_api(QUOTA_USER_DAILY_IMAGES=10)
    runtime = api.runtime
    [key] = await runtime.keys.list(api.user_id)
    batch_id = await left_by_a_restart(api, key, 3)
    await runtime.keys.revoke(key.id, requester_id=api.user_id)
    assert await runtime.batches.resume() == 1
    await runtime.batches.wait_idle()
    batch = await runtime.ledger.get_batch(batch_id)
    assert batch is not None and batch.state == "done"
    assert [i.error_code for i in batch.items] == ["cancelled"] * 3
    assert (await runtime.ledger.user_usage(api.user_id)).images == 0
    await books_are_exact(api)


async def test_a_resumed_batch_holds_its_remaining_allowance_again(start_api):
    api = await start_api(QUOTA_USER_DAILY_IMAGES=3)
    runtime = api.runtime
    [key] = await runtime.keys.list(api.user_id)
    batch_id = await left_by_a_restart(api, key, 3)
    runtime.service.provider = CountingProvider(delay=0.3)
    await runtime.batches.resume()
    for _ in range(1000):  # until the resumed batch has reserved something
        left = (await runtime.service.remaining(api.user_id, "")).images
        if left < 3:
            break
        await asyncio.sleep(0.01)
    assert left == 0  # all three at once, not item by item
    assert (await api.post("/api/generate", {"prompt": "jumping the queue"})).status_code == 403
    await runtime.batches.wait_idle()
    batch = await runtime.ledger.get_batch(batch_id)
    assert batch is not None and [i.state for i in batch.items] == ["done"] * 3
    await books_are_exact(api)


async def test_hammered_holds_and_plain_reservations_never_pass_the_limit(ledger_location):
    ledger = await Ledger.open(ledger_location)
    try:
        limits = await ledger.limits_for("u1", "g1")
        limits = replace(limits, user_images=20)

        def job(images: int = 1) -> NewJob:
            return NewJob("generate", "u1", "g1", ZERO_COST, images)

        holds = [(await ledger.reserve(job(3), limits)).id for _ in range(4)]
        drawn = [ledger.reserve(job(), limits, hold=h) for h in holds for _ in range(3)]
        plain = [ledger.reserve(job(), limits) for _ in range(40)]
        outcomes = await asyncio.gather(*drawn, *plain, return_exceptions=True)
        assert not any(isinstance(o, BaseException) for o in outcomes[:12])  # all held
        assert sum(not isinstance(o, BaseException) for o in outcomes[12:]) == 8
        refused = [o for o in outcomes[12:] if isinstance(o, BaseException)]
        assert all(isinstance(o, QuotaExceeded) for o in refused)
        for hold in holds:
            assert (await ledger.get_job(hold)).images == 0  # type: ignore[union-attr]
            await ledger.refund(hold, "released")
        assert (await ledger.user_usage("u1", "g1")).images == 20
        assert (await ledger.audit())["counter_mismatches"] == 0
    finally:
        await ledger.close()
