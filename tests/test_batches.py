"""BatchService on the embedded backends (real SQLite, real files): a refused batch starts and
holds nothing, a batch's allowance is held for it from submission, items fail alone, and a
batch is only ever shown to its own user."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.config import Settings
from bot.errors import InvalidModel, InvalidRequest, NotFound, QuotaExceeded
from bot.public import public_batch
from bot.requests import GenerateRequest
from bot.runtime import Runtime, open_runtime


async def nothing_was_started(runtime: Runtime, user_id: str) -> None:
    assert await runtime.ledger.unfinished_batches() == []
    assert (await runtime.ledger.user_usage(user_id)).images == 0
    assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


@pytest.mark.parametrize(
    ("prompts", "model", "webhook", "error", "field"),
    [
        ([], None, None, InvalidRequest, "prompts"),
        ([f"picture {n}" for n in range(51)], None, None, InvalidRequest, "prompts"),
        (["a picture"], "@cf/nobody/no-such-model", None, InvalidModel, "model"),
        (["a picture"], None, "http://127.0.0.1:9/hook", InvalidRequest, "webhook_url"),
        (["a picture"], None, "https://10.0.0.1/hook", InvalidRequest, "webhook_url"),
    ],
)
async def test_a_refused_batch_starts_and_holds_nothing(
    local_runtime: Runtime,
    prompts: list[str],
    model: str | None,
    webhook: str | None,
    error: type[Exception],
    field: str,
) -> None:
    key, _ = await local_runtime.keys.create(user_id="u1")
    with pytest.raises(error) as refused:
        await local_runtime.batches.submit(key, prompts, model, webhook)
    assert refused.value.details["field"] == field  # type: ignore[attr-defined]
    await nothing_was_started(local_runtime, "u1")


async def test_the_whole_allowance_is_held_from_submission_and_items_fail_alone(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_runtime(make_settings(QUOTA_USER_DAILY_IMAGES=3)) as runtime:
        key, _ = await runtime.keys.create(user_id="u1")
        batch = await runtime.batches.submit(
            key, ["a red kite", "a blue\x00 kite", "ab"], None, None
        )
        # Held at submission: nothing is left for a request of the same user meanwhile.
        with pytest.raises(QuotaExceeded):
            await runtime.service.generate(GenerateRequest("a cutting-in", user_id="u1"))
        await runtime.batches.wait_idle()
        done = await runtime.batches.get(batch.id, key)
        shown = public_batch(done, await runtime.batches.images_of(done)).to_json()
        assert shown["status"] == "done"
        assert shown["counts"] == {"queued": 0, "running": 0, "done": 2, "failed": 1}
        assert [i["prompt"] for i in shown["items"]] == ["a red kite", "a blue kite", "ab"]
        assert shown["items"][2]["error"]["code"] == "invalid_prompt"
        assert shown["items"][2]["image"] is None
        assert {i["image"]["id"] for i in shown["items"][:2]} == {
            i.image_id for i in done.items[:2]
        }
        # The failed item's share of the hold went back: exactly one image is left.
        assert (await runtime.ledger.user_usage("u1")).images == 2
        await runtime.service.generate(GenerateRequest("one more", user_id="u1"))
        with pytest.raises(QuotaExceeded):
            await runtime.service.generate(GenerateRequest("one too many", user_id="u1"))
        assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_a_batch_is_shown_only_to_its_own_user(local_runtime: Runtime) -> None:
    owner, _ = await local_runtime.keys.create(user_id="owner")
    second_key, _ = await local_runtime.keys.create(user_id="owner", name="second")
    stranger, _ = await local_runtime.keys.create(user_id="stranger")
    batch = await local_runtime.batches.submit(owner, ["a quiet harbour"], None, None)
    await local_runtime.batches.wait_idle()
    assert (await local_runtime.batches.get(batch.id, second_key)).id == batch.id
    for key, batch_id in ((stranger, batch.id), (owner, "bat_no-such-batch")):
        with pytest.raises(NotFound):
            await local_runtime.batches.get(batch_id, key)


async def test_racing_submissions_never_hold_more_than_the_allowance(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_runtime(make_settings(QUOTA_USER_DAILY_IMAGES=10)) as runtime:
        key, _ = await runtime.keys.create(user_id="u1")
        outcomes = await asyncio.gather(
            *(runtime.batches.submit(key, [f"race {b} item {n}" for n in range(3)], None, None)
              for b in range(8)),
            return_exceptions=True,
        )  # fmt: skip
        accepted = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(accepted) == 3  # 3 × 3 = 9 ≤ 10; a fourth would need 12
        assert all(isinstance(o, QuotaExceeded) for o in outcomes if o not in accepted)
        await runtime.batches.wait_idle()
        assert (await runtime.ledger.user_usage("u1")).images == 9
        assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_a_stop_leaves_unstarted_items_queued_for_the_resumption(
    local_runtime: Runtime,
) -> None:
    """Items the stop refuses (ShuttingDown) are not failed: the batch stays unfinished with
    them queued, its hold given back, and the next start's resume makes them."""
    key, _ = await local_runtime.keys.create(user_id="u1")
    batch = await local_runtime.batches.submit(key, ["a red kite", "a green kite"], None, None)
    local_runtime.service.closing = True  # the stop comes before any item started
    await local_runtime.batches.wait_idle()
    stopped = await local_runtime.batches.get(batch.id, key)
    assert [item.state for item in stopped.items] == ["queued", "queued"]
    assert await local_runtime.ledger.unfinished_batches() == [batch.id]
    assert (await local_runtime.ledger.user_usage("u1")).images == 0
    assert await local_runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}

    local_runtime.service.closing = False  # started again
    assert await local_runtime.batches.resume() == 1
    await local_runtime.batches.wait_idle()
    resumed = await local_runtime.batches.get(batch.id, key)
    assert [item.state for item in resumed.items] == ["done", "done"]
    assert resumed.state != "running"
    assert (await local_runtime.ledger.user_usage("u1")).images == 2
