"""CrashRecovery on a real SQLite file and real image files: what a crash left open is closed
once, images already recorded are not recorded twice, an upload found in the store is kept free
of charge, and a second run changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from bot.catalog import ZERO_COST, Cost
from bot.config import Settings
from bot.ledger.ledger import Ledger, NewJob
from bot.ledger.records import new_id
from bot.recovery import CrashRecovery, RecoveryReport
from bot.requests import GenerateRequest
from bot.runtime import open_runtime
from tests.conftest import png

SCHNELL = "@cf/black-forest-labs/flux-1-schnell"
UNIT = Cost(634, 57_600)


def stopped_process(ledger: Ledger) -> Ledger:
    """The same database as a process that has since stopped sees it: the jobs it reserves
    name an owner that holds no lease, so they are orphans for this process's recovery."""
    return Ledger(ledger.database, ledger.defaults, instance_id="a-stopped-process")


def generate_params(*image_ids: str) -> dict[str, object]:
    return {"prompt": "a crash", "prompt_used": "a crash", "steps": 4,
            "unit_micro_usd": UNIT.micro_usd, "unit_milli_neurons": UNIT.milli_neurons,
            "cache_scope": None,
            "slots": [{"id": i, "seed": n} for n, i in enumerate(image_ids)]}  # fmt: skip


async def test_recorded_images_count_once_and_only_the_unrecorded_are_recovered(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_runtime(make_settings(), recover=False) as runtime:
        ledger, store = runtime.ledger, runtime.store
        made = (await runtime.service.generate(GenerateRequest("a template", user_id="u0")))
        template = made.images[0]
        recorded_id, stored_id, lost_id = new_id("img"), new_id("img"), new_id("img")
        ids = (recorded_id, stored_id, lost_id)
        job = await stopped_process(ledger).reserve(
            NewJob("generate", "u1", "", Cost(3 * UNIT.micro_usd, 3 * UNIT.milli_neurons), 3,
                   SCHNELL, None, generate_params(*ids)),
            await ledger.limits_for("u1", ""),
        )  # fmt: skip
        await ledger.set_state(job.id, "storing", list(ids))
        for image_id in (recorded_id, stored_id):
            await store.put(image_id, png(), "image/png", {})
        await ledger.add_image(replace(template, id=recorded_id, job_id=job.id, user_id="u1"))

        report = await CrashRecovery(ledger, store).run()

        assert report == RecoveryReport(settled=1, refunded=0, images_recovered=1)
        images = await ledger.images_for_job(job.id)
        assert sorted(i.id for i in images) == sorted((recorded_id, stored_id))
        settled = await ledger.get_job(job.id)
        assert settled is not None and settled.state == "settled"
        assert (settled.images, settled.micro_usd) == (2, 2 * UNIT.micro_usd)
        usage = await ledger.user_usage("u1")
        assert (usage.images, usage.micro_usd, usage.milli_neurons) == (
            2, 2 * UNIT.micro_usd, 2 * UNIT.milli_neurons,
        )  # fmt: skip
        found = next(i for i in images if i.id == stored_id)
        assert (found.width, found.height, found.content_type) == (64, 48, "image/png")
        assert found.metadata["recovered"] == "true"
        assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_an_upload_found_in_the_store_is_kept_and_not_charged(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_runtime(make_settings(), recover=False) as runtime:
        ledger, store = runtime.ledger, runtime.store
        image_id = new_id("img")
        data = png(30, 20)
        job = await stopped_process(ledger).reserve(
            NewJob("upload", "u1", "", ZERO_COST, 0, None, None,
                   {"slots": [{"id": image_id}], "metadata": {"ref": "a-42"}}, bytes=len(data)),
            await ledger.limits_for("u1", ""),
        )  # fmt: skip
        await ledger.set_state(job.id, "storing", [image_id])
        await store.put(image_id, data, "image/png", {})

        assert await CrashRecovery(ledger, store).run() == RecoveryReport(1, 0, 1)

        [upload] = await ledger.images_for_job(job.id)
        assert (upload.kind, upload.cost_micro_usd, upload.bytes) == ("upload", 0, len(data))
        assert upload.metadata == {"ref": "a-42", "recovered": "true"}
        assert (await ledger.get_job(job.id)).state == "settled"  # type: ignore[union-attr]


async def test_jobs_that_stored_nothing_are_refunded_and_a_second_run_changes_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_runtime(make_settings(), recover=False) as runtime:
        ledger, store = runtime.ledger, runtime.store
        limits = await ledger.limits_for("u1", "")
        jobs = []
        for state in ("reserved", "generating", "storing"):
            planned = new_id("img")  # never stored
            job = await stopped_process(ledger).reserve(
                NewJob("generate", "u1", "", UNIT, 1, SCHNELL, None, generate_params(planned)),
                limits,
            )
            if state != "reserved":
                await ledger.set_state(job.id, state, [planned])
            jobs.append(job.id)
        assert (await ledger.user_usage("u1")).images == 3  # held while open

        assert await CrashRecovery(ledger, store).run() == RecoveryReport(0, 3, 0)

        for job_id in jobs:
            job = await ledger.get_job(job_id)
            assert job is not None
            assert (job.state, job.error_code) == ("refunded", "interrupted")
        usage = await ledger.user_usage("u1")
        assert (usage.images, usage.micro_usd, usage.milli_neurons) == (0, 0, 0)
        assert await CrashRecovery(ledger, store).run() == RecoveryReport()
        assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
