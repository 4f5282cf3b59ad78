"""The pipeline on the embedded backends with a real SQLite file and real files on disk."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace

import pytest
from PIL import Image

from bot.catalog import Cost
from bot.errors import (
    Busy,
    Forbidden,
    InvalidImage,
    InvalidModel,
    InvalidPrompt,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    ShuttingDown,
)
from bot.ledger import Template
from bot.ledger.ledger import NewJob
from bot.ledger.records import new_id
from bot.requests import GenerateRequest, Progress
from bot.scheduler import JobScheduler
from tests.conftest import CountingProvider, png

# The ledger-level tests run on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_ledgers

SCHNELL = "@cf/black-forest-labs/flux-1-schnell"
SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"


def ask(prompt: str = "a lighthouse at dusk", **fields: object) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, user_id=str(fields.pop("user_id", "u1")),
                           **fields)  # type: ignore[arg-type]  # fmt: skip


async def test_generate_hosts_records_and_charges(local_runtime):
    service = local_runtime.service
    result = await service.generate(ask(guild_id="g1"))
    [image] = result.images
    assert image.id.startswith("img_") and image.model == SCHNELL
    assert (image.width, image.height) == (1024, 1024)
    assert image.url == f"{local_runtime.settings.public_base_url}/images/{image.id}/public"
    stored = await local_runtime.store.get(image.storage_key)
    assert stored.startswith(b"\x89PNG")
    assert image.cost_micro_usd == 634 and image.cost_milli_neurons == 57_600
    assert result.cost == Cost(634, 57_600) and not result.cached
    assert result.remaining.images == 24
    assert result.remaining.micro_usd == 50_000 - 634
    assert await local_runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_cache_hit_is_free_and_says_so_and_fresh_bypasses_it(local_runtime):
    service = local_runtime.service
    first = await service.generate(ask(seed=5, model=SDXL, width=512, height=512))
    again = await service.generate(ask(seed=5, model=SDXL, width=512, height=512))
    assert again.cached and again.cost == Cost(0, 0)
    assert again.images[0].storage_key == first.images[0].storage_key
    assert again.images[0].id != first.images[0].id
    fresh = await service.generate(ask(seed=5, model=SDXL, width=512, height=512, fresh=True))
    assert not fresh.cached
    assert fresh.images[0].storage_key != first.images[0].storage_key
    usage = await local_runtime.ledger.user_usage("u1")
    assert usage.images == 2  # the hit counted nothing


async def test_cache_scope_guild_keeps_servers_apart(local_runtime):
    service = local_runtime.service
    await service.generate(ask(guild_id="g1"))
    same = await service.generate(ask(guild_id="g1", user_id="u2"))
    other = await service.generate(ask(guild_id="g2", user_id="u3"))
    assert same.cached and not other.cached


async def test_concurrent_identical_requests_generate_once(local_runtime):
    provider = CountingProvider(delay=0.05)
    local_runtime.service.provider = provider
    results = await asyncio.gather(
        *(local_runtime.service.generate(ask(user_id=f"u{i}", guild_id="g")) for i in range(8))
    )
    assert provider.calls == 1
    assert sum(not r.cached for r in results) == 1
    assert len({r.images[0].storage_key for r in results}) == 1
    report = await local_runtime.ledger.report(local_runtime.ledger.today(),
                                               local_runtime.ledger.today())  # fmt: skip
    assert report.total_images == 1 and report.total_micro_usd == 634


async def test_same_idempotency_key_twice_is_charged_once_and_returns_the_first(local_runtime):
    service = local_runtime.service
    first, second = await asyncio.gather(
        service.generate(ask(idempotency_key="interaction-42", fresh=True)),
        service.generate(ask(idempotency_key="interaction-42", fresh=True)),
    )
    third = await service.generate(ask(idempotency_key="interaction-42", fresh=True))
    ids = {tuple(i.id for i in r.images) for r in (first, second, third)}
    assert len(ids) == 1
    assert (await local_runtime.ledger.user_usage("u1")).images == 1
    assert third.replayed


async def test_quota_of_10_under_200_concurrent_requests_gives_exactly_10(make_settings):
    from bot.runtime import open_runtime

    settings = make_settings(QUOTA_USER_DAILY_IMAGES=10, MAX_QUEUE=1000)
    async with open_runtime(settings) as runtime:
        outcomes = await asyncio.gather(
            *(runtime.service.generate(ask(f"picture number {i}", model=SDXL, width=256,
                                           height=256)) for i in range(200)),
            return_exceptions=True,
        )  # fmt: skip
        made = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
        assert len(made) == 10 and len(refused) == 190
        assert "10 of your 10 images" in refused[0].user_message
        assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"prompt": "  a\x00 "}, InvalidPrompt, "prompt"),
        ({"prompt": "x" * 2049}, InvalidPrompt, "prompt"),
        ({"model": "@cf/nobody/nothing"}, InvalidModel, "model"),
        ({"model": "@cf/meta/llama-3.1-8b-instruct-fp8-fast"}, InvalidModel, "model"),
        ({"model": SDXL, "width": 4096}, InvalidRequest, "width"),
        ({"model": SDXL, "height": 500}, InvalidRequest, "height"),
        ({"width": 512}, InvalidRequest, "width"),
        ({"aspect_ratio": "16:9"}, InvalidRequest, "aspect_ratio"),
        ({"steps": 9}, InvalidRequest, "steps"),
        ({"seed": -1}, InvalidRequest, "seed"),
        ({"count": 5}, InvalidRequest, "count"),
        ({"negative_prompt": "blurry"}, InvalidRequest, "negative_prompt"),
        ({"model": SDXL, "guidance": 99.0}, InvalidRequest, "guidance"),
        ({"strength": 0.5}, InvalidRequest, "strength"),
    ],
)
async def test_bad_requests_name_the_field_and_charge_nothing(local_runtime, fields, error, field):
    fields = dict(fields)  # the parameters are shared by both ledgers' runs
    prompt = fields.pop("prompt", "a lighthouse at dusk")
    with pytest.raises(error) as raised:
        await local_runtime.service.generate(ask(prompt, **fields))
    assert raised.value.field == field
    assert (await local_runtime.ledger.user_usage("u1")).images == 0


async def test_prompt_is_cleaned_of_control_characters(local_runtime):
    result = await local_runtime.service.generate(ask("  a\u200b red\n\tfox\x07  "))
    assert result.images[0].prompt == "a red fox"


async def test_aspect_ratio_and_sizes(local_runtime):
    result = await local_runtime.service.generate(ask(model=SDXL, aspect_ratio="16:9"))
    image = result.images[0]
    assert image.width > image.height and image.width % 8 == 0 and image.height % 8 == 0
    assert abs(image.width / image.height - 16 / 9) < 0.02


async def test_count_makes_distinct_images_and_charges_each(local_runtime):
    result = await local_runtime.service.generate(ask(count=3, seed=100, model=SDXL, width=256,
                                                      height=256))  # fmt: skip
    assert [i.seed for i in result.images] == [100, 101, 102]
    assert len({i.storage_key for i in result.images}) == 3
    assert (await local_runtime.ledger.user_usage("u1")).images == 3


async def test_template_is_applied(local_runtime):
    ledger = local_runtime.ledger
    await ledger.add_template(Template(
        id=new_id("tpl"), guild_id="g1", name="house", prompt="watercolour of {prompt}, soft",
        created_by="admin", created_at=ledger.now_iso(), model=SDXL, aspect_ratio="3:2",
        negative_prompt="text",
    ))  # fmt: skip
    result = await local_runtime.service.generate(ask("an old bridge", guild_id="g1",
                                                      template="HOUSE"))  # fmt: skip
    image = result.images[0]
    assert image.prompt == "watercolour of an old bridge, soft"
    assert image.model == SDXL and image.negative_prompt == "text"
    assert image.width > image.height
    with pytest.raises(NotFound):
        await local_runtime.service.generate(ask(guild_id="g1", template="nope"))


async def test_enhance_uses_and_records_the_rewritten_prompt(local_runtime):
    result = await local_runtime.service.generate(ask("a cat", enhance=True))
    assert result.enhanced and result.prompt == "a cat"
    assert result.prompt_used.startswith("a cat, ") and len(result.prompt_used) > 20
    assert result.images[0].prompt_used == result.prompt_used
    jobs = await local_runtime.ledger.report(local_runtime.ledger.today(),
                                             local_runtime.ledger.today())  # fmt: skip
    assert "@cf/meta/llama-3.1-8b-instruct-fp8-fast" in jobs.by_model


# The scheduler's queue positions, not the ledger's: arrival order at the queue follows the
# ledger's round trips, which over PostgreSQL's sockets can reorder the three requests.
@pytest.mark.sqlite_only
async def test_progress_reports_queue_position_then_stages(make_settings):
    from bot.runtime import open_runtime

    async with open_runtime(make_settings(MAX_JOBS_PER_USER=1)) as runtime:
        runtime.service.provider = CountingProvider(delay=0.05)
        events: list[list[Progress]] = [[], [], []]
        await asyncio.gather(*(
            runtime.service.generate(ask(f"prompt number {i}", fresh=True,
                                         progress=events[i].append))
            for i in range(3)
        ))  # fmt: skip
        stages = [[e.stage for e in ev] for ev in events]
        assert stages[0] == ["generating", "storing", "done"]
        assert [e.position for e in events[2] if e.stage == "queued"] == [2, 1]
        assert stages[2][-3:] == ["generating", "storing", "done"]
        assert events[0][0].eta is not None


async def test_scheduler_limits_per_user_and_overall_and_refuses_past_the_queue():
    scheduler = JobScheduler(max_per_user=2, max_running=3, max_queue=4)
    running: list[str] = []
    peak_user: dict[str, int] = {}
    release = asyncio.Event()

    async def job(user: str) -> None:
        async with scheduler.slot(user):
            running.append(user)
            peak_user[user] = max(peak_user.get(user, 0), running.count(user))
            await release.wait()
            running.remove(user)

    tasks = [asyncio.create_task(job(u)) for u in ("a", "a", "a", "b", "b", "c")]
    await asyncio.sleep(0.01)
    assert scheduler.running == 3 and scheduler.waiting == 3
    tasks.append(asyncio.create_task(job("d")))  # the 4th waiter fits
    await asyncio.sleep(0.01)
    with pytest.raises(Busy):
        await job("d")
    release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes == [None] * 7
    assert max(peak_user.values()) <= 2
    assert scheduler.running == 0 and scheduler.waiting == 0


async def test_cancelled_waiter_leaves_the_queue_and_gives_nothing_back_twice():
    scheduler = JobScheduler(max_per_user=1, max_running=1, max_queue=10)
    gate = asyncio.Event()

    async def hold() -> None:
        async with scheduler.slot("a"):
            await gate.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert scheduler.waiting == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert scheduler.waiting == 0
    gate.set()
    await holder
    assert scheduler.running == 0


async def test_upload_validates_hosts_and_records(local_runtime):
    record = await local_runtime.service.upload(png(300, 200), user_id="u1", guild_id="g1")
    assert record.kind == "upload" and (record.width, record.height) == (300, 200)
    assert record.content_type == "image/png"
    assert await local_runtime.store.get(record.storage_key) == png(300, 200)
    with pytest.raises(InvalidImage) as bad:
        await local_runtime.service.upload(b"GIF89a-not-really", user_id="u1")
    assert bad.value.problem == "corrupt"
    with pytest.raises(InvalidImage):
        await local_runtime.service.upload(b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                                           user_id="u1")  # fmt: skip
    assert await local_runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_image_to_image_from_an_upload_and_from_an_attachment(local_runtime):
    service = local_runtime.service
    upload = await service.upload(png(640, 480, "orange"), user_id="u1", guild_id="g1")
    result = await service.generate(ask("make it stormy", image_id=upload.id, guild_id="g1",
                                        strength=0.3))  # fmt: skip
    image = result.images[0]
    assert image.source_image_id == upload.id
    assert image.model == "@cf/black-forest-labs/flux-2-klein-4b"
    attached = await service.generate(ask("make it sunny", init_image=png(200, 200, "blue")))
    source = await local_runtime.ledger.get_image(attached.images[0].source_image_id)
    assert source.kind == "upload"
    with pytest.raises(NotFound):  # someone else's image from another server
        await service.generate(ask("steal it", image_id=upload.id, user_id="u9", guild_id="g2"))
    with pytest.raises(InvalidRequest) as wrong_model:
        await service.generate(ask("x y z", image_id=upload.id, guild_id="g1", model=SCHNELL))
    assert wrong_model.value.field == "model"


async def test_delete_checks_ownership_and_keeps_bytes_a_cache_hit_still_uses(local_runtime):
    service = local_runtime.service
    original = (await service.generate(ask(guild_id="g1"))).images[0]
    hit = (await service.generate(ask(guild_id="g1", user_id="u2"))).images[0]
    with pytest.raises(Forbidden):
        await service.delete_image(original.id, requester_id="u2")
    await service.delete_image(original.id, requester_id="u1")
    with pytest.raises(NotFound):  # the original's bytes are gone from their key...
        await local_runtime.store.get(original.storage_key)
    hit = await local_runtime.ledger.get_image(hit.id)  # ...u2 keeps a copy of their own
    assert hit.storage_key != original.storage_key
    assert await local_runtime.store.get(hit.storage_key)
    await service.delete_image(hit.id, requester_id="admin", is_admin=True)
    with pytest.raises(NotFound):
        await local_runtime.store.get(hit.storage_key)
    assert (await local_runtime.ledger.get_image(hit.id)).is_deleted
    with pytest.raises(NotFound):
        await service.delete_image(hit.id, requester_id="u2")
    again = await service.generate(ask(guild_id="g1"))
    assert not again.cached  # deleted images are not served from the cache


async def test_crash_recovery_settles_stored_images_and_refunds_the_rest(make_settings):
    from bot.runtime import open_runtime

    settings = make_settings()
    async with open_runtime(settings) as runtime:
        ledger, store = runtime.ledger, runtime.store
        unit = Cost(634, 57_600)
        limits = await ledger.limits_for("u1", "")
        stored_id, lost_id = new_id("img"), new_id("img")
        params = {"prompt": "a crash", "prompt_used": "a crash", "width": 1024, "height": 1024,
                  "steps": 4, "unit_micro_usd": 634, "unit_milli_neurons": 57_600,
                  "cache_scope": None,
                  "slots": [{"id": stored_id, "seed": 1, "cache_key": "k1"},
                            {"id": lost_id, "seed": 2, "cache_key": "k2"}]}  # fmt: skip
        storing = await ledger.reserve(
            NewJob("generate", "u1", "", Cost(2 * 634, 2 * 57_600), 2, SCHNELL, None, params),
            limits,
        )
        await ledger.set_state(storing.id, "storing", [stored_id, lost_id])
        await store.put(stored_id, png(), "image/png", {})
        generating = await ledger.reserve(NewJob("generate", "u1", "", unit, 1, SCHNELL), limits)
        await ledger.set_state(generating.id, "generating")
    # "Crash": the runtime closed with both jobs open. Start again.
    async with open_runtime(settings) as runtime:
        ledger = runtime.ledger
        assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
        recovered = await ledger.get_image(stored_id)
        assert recovered.metadata["recovered"] == "true" and recovered.cost_micro_usd == 634
        assert (await ledger.get_job(storing.id)).state == "settled"
        assert (await ledger.get_job(generating.id)).state == "refunded"
        usage = await ledger.user_usage("u1")
        assert (usage.images, usage.micro_usd) == (1, 634)
        with pytest.raises(NotFound):
            await ledger.get_image(lost_id)


async def test_usage_report_matches_the_images(local_runtime):
    service = local_runtime.service
    await service.generate(ask(user_id="a", fresh=True))
    await service.generate(ask("another picture", user_id="a", fresh=True))
    await service.generate(ask("third picture", user_id="b", model=SDXL, fresh=True))
    report = await service.usage_report(local_runtime.ledger.today())
    assert report.total_images == 3
    # SDXL's price is not published: the operator's default, $0.002, is charged.
    assert report.total_micro_usd == 2 * 634 + 2_000
    assert report.average_micro_usd == (2 * 634 + 2_000) // 3
    by_user = [(u.user_id, u.images, u.micro_usd) for u in report.users]
    assert by_user == [("b", 1, 2000), ("a", 2, 1268)]


def test_replace_keeps_records_frozen():
    image = Image.new("RGB", (2, 2))
    out = io.BytesIO()
    image.save(out, "PNG")
    assert replace(Progress("queued", position=1), position=2).position == 2


async def test_drain_lets_jobs_finish_then_refunds_the_rest_and_refuses_new_work(local_runtime):
    service = local_runtime.service
    service.provider = CountingProvider(delay=0.2)
    quick = asyncio.create_task(service.generate(ask("finishes in time", fresh=True)))
    await asyncio.sleep(0.05)
    assert await service.drain(grace_seconds=1.0) == 0
    assert (await quick).images
    service.closing = False
    service.provider = CountingProvider(delay=30)
    slow = asyncio.create_task(service.generate(ask("never finishes", fresh=True)))
    await asyncio.sleep(0.05)
    assert await service.drain(grace_seconds=0.1) == 1
    with pytest.raises(asyncio.CancelledError):
        await slow
    with pytest.raises(ShuttingDown):
        await service.generate(ask("after shutdown began"))
    assert await local_runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
    assert (await local_runtime.ledger.user_usage("u1")).images == 1


async def test_queue_positions_are_announced_sparsely_far_back():
    scheduler = JobScheduler(max_per_user=1, max_running=1, max_queue=100)
    gate = asyncio.Event()
    heard: list[int] = []

    async def hold(user: str, report=None) -> None:  # type: ignore[no-untyped-def]
        async with scheduler.slot(user, report):
            await gate.wait()

    tasks = [asyncio.create_task(hold("first"))]
    tasks += [asyncio.create_task(hold(f"u{n}")) for n in range(40)]
    tasks.append(asyncio.create_task(hold("watcher", heard.append)))  # 41st in the queue
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*tasks)
    assert heard[0] == 41  # told its place at once
    assert heard[1:] == [40, 30, *range(20, 0, -1)]  # then every tenth, then every place
