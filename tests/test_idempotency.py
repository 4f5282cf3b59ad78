"""Idempotency keys are bound to their request: a reuse with a different body is refused (409
over HTTP), the same body replays, and whole keys are compared (real SQLite, real sockets)."""

from __future__ import annotations

import asyncio

import pytest

from bot.errors import IdempotencyKeyReused
from bot.ledger.migrations import MIGRATIONS
from bot.requests import GenerateRequest
from tests import test_api
from tests.conftest import png

# The ledger-level tests run on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_ledgers

start_api = test_api.start_api  # the HTTP API fixture
api = test_api.api


def ask(prompt: str, **fields: object) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, user_id="u1", idempotency_key="order-17",
                           **fields)  # type: ignore[arg-type]  # fmt: skip


async def test_same_key_different_request_is_refused_and_charges_nothing(local_runtime):
    service, ledger = local_runtime.service, local_runtime.ledger
    first = await service.generate(ask("a paper crane", fresh=True))
    for other in (ask("a paper boat", fresh=True), ask("a paper crane", fresh=True, seed=7),
                  ask("a paper crane", fresh=False)):  # fmt: skip
        with pytest.raises(IdempotencyKeyReused) as refused:
            await service.generate(other)
        assert refused.value.http_status == 409
    assert (await ledger.user_usage("u1")).images == 1
    again = await service.generate(ask("  a paper\ncrane ", fresh=True))  # normalised: same
    assert again.replayed and [i.id for i in again.images] == [i.id for i in first.images]
    assert (await ledger.job_by_key("order-17")).fingerprint is not None  # type: ignore[union-attr]
    assert await ledger.schema_version() == len(MIGRATIONS)


async def test_concurrent_reuses_with_different_bodies_make_one_image(local_runtime):
    service = local_runtime.service
    outcomes = await asyncio.gather(
        *(service.generate(ask(f"a paper crane number {n}", fresh=True)) for n in range(6)),
        return_exceptions=True,
    )
    made = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len({r.images[0].id for r in made}) == 1  # one request won the key
    assert all(isinstance(o, IdempotencyKeyReused) for o in outcomes if o not in made)
    assert (await local_runtime.ledger.user_usage("u1")).images == 1


async def test_an_upload_key_reused_for_other_bytes_is_refused(local_runtime):
    service = local_runtime.service
    first = await service.upload(png(40, 30), user_id="u1", idempotency_key="up-1")
    assert (await service.upload(png(40, 30), user_id="u1", idempotency_key="up-1")).id == first.id
    with pytest.raises(IdempotencyKeyReused):
        await service.upload(png(41, 30), user_id="u1", idempotency_key="up-1")


async def test_http_reuse_is_409_and_the_same_body_replays(api):
    headers = {"Idempotency-Key": "order-17"}
    body = {"prompt": "a paper crane", "fresh": True}
    first = await api.post("/api/generate", body, headers=headers)
    assert first.status_code == 201
    replay = await api.post("/api/generate", {"fresh": True, "prompt": "a paper crane "},
                            headers=headers)  # fmt: skip
    assert replay.status_code == 201 and replay.json()["id"] == first.json()["id"]
    reused = await api.post("/api/generate", {"prompt": "a paper boat", "fresh": True},
                            headers=headers)  # fmt: skip
    assert reused.status_code == 409
    assert reused.json()["error"] == "Idempotency-Key reused"
    assert reused.json()["details"]["code"] == "idempotency_key_reused"
    assert (await api.runtime.ledger.user_usage("42")).images == 1


async def test_keys_that_differ_only_after_200_characters_are_distinct(api):
    body = {"prompt": "a paper crane", "fresh": True}
    stem = "k" * 200
    one = await api.post("/api/generate", body, headers={"Idempotency-Key": stem + "1"})
    two = await api.post("/api/generate", body, headers={"Idempotency-Key": stem + "2"})
    assert one.status_code == two.status_code == 201
    assert one.json()["id"] != two.json()["id"]
    assert (await api.runtime.ledger.user_usage("42")).images == 2
