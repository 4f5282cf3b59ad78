"""The ❌ Cancel button and /queue end to end: the real discord.py client against the fake
Discord, the real service on the embedded backends, a real SQLite file. The provider is held
open by a gate, so a job stays queued or generating for as long as a test needs."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import pytest

from bot.discord_bot import ImageBot
from bot.runtime import open_runtime
from cogs.cancel import CANCELLED, STOPPED, WITHDRAWN
from tests.test_cancel import GatedProvider, until
from tests.test_discord_delivery import SMALL, public_messages

TOO_LATE = "Already generating — you'll still get the image privately, and it is charged."


def cancel_id(message) -> str | None:
    return next((c for c in message.custom_ids if c.startswith("job:cancel:")), None)


async def imagine(fake, runtime, prompt, user=None):
    """/imagine, returning once its job holds a slot or its place in line (so jobs queue in
    the order the tests send them)."""
    scheduler = runtime.service.scheduler
    before = scheduler.running + scheduler.waiting
    interaction = await fake.slash("imagine", {**SMALL, "prompt": prompt},
                                   user=user or fake.member)  # fmt: skip
    await interaction.wait_for_callback()
    await until(lambda: scheduler.running + scheduler.waiting > before)
    return interaction


async def with_cancel_button(interaction, stage: str):
    """The job's progress message once it shows ``stage`` and the ❌ button (the first
    progress edit is due 2 s after the command)."""
    return await interaction.wait_for_message(
        lambda m: bool(cancel_id(m)) and stage in m.content, timeout=30
    )


async def one_waiting(fake, runtime, *, first: bool = True):
    """A second job waiting behind a first (started here unless ``first`` is False): its
    interaction, its progress message with the ❌ button, and its job id."""
    if first:
        await imagine(fake, runtime, "the first picture")
    second = await imagine(fake, runtime, "the second picture")
    queued = await with_cancel_button(second, "In the queue")
    return second, queued, job_id_of(queued)


async def press(fake, message, user, **who):
    click = await fake.click(message, cancel_id(message), user=user, **who)
    await click.wait_for_callback()
    assert click.callback_type == 6  # acknowledged first (a deferred update)
    answer = await click.wait_for_message(lambda m: m.ephemeral)
    return click, answer.content


def job_id_of(message) -> str:
    found = cancel_id(message)
    assert found is not None
    return found.removeprefix("job:cancel:")


async def job_of(runtime, job_id):
    return await runtime.ledger.get_job(job_id)


async def usage_of(runtime, fake, user):
    return await runtime.ledger.user_usage(str(user.id), str(fake.guild.id))


@pytest.fixture
async def gated(make_settings):
    """One job at a time; each provider call waits for ``provider.gate``."""
    async with open_runtime(make_settings(MAX_CONCURRENT_JOBS=1)) as runtime:
        provider = GatedProvider()
        runtime.service.provider = provider
        yield runtime, provider
        provider.gate.set()
        await runtime.service.drain(10.0)  # every job the test left finishes


async def test_cancel_while_queued_refunds_and_says_cancelled_and_twice_is_once(
    fake_discord, bot_harness, gated
):
    runtime, provider = gated
    await bot_harness.start(ImageBot(runtime))
    first = await imagine(fake_discord, runtime, "the first picture")
    second, queued, job_id = await one_waiting(fake_discord, runtime, first=False)
    job = await job_of(runtime, job_id)
    assert job.state == "reserved" and job.micro_usd > 0

    # Two presses at once (the button is still there for both): one cancel, one "already".
    clicks = [await fake_discord.click(queued, cancel_id(queued)) for _ in range(2)]
    answers = [(await c.wait_for_message(lambda m: m.ephemeral)).content for c in clicks]
    [cancelled] = [a for a in answers if a.startswith("❌ Cancelled")]
    assert "reserved is released" in cancelled and "nothing is charged" in cancelled
    assert [a for a in answers if a != cancelled] == ["This job was already cancelled."]
    shown = await second.wait_for_message(lambda m: m.content == CANCELLED)
    assert shown.id == queued.id and not shown.custom_ids and not shown.embeds
    job = await job_of(runtime, job_id)
    assert (job.state, job.error_code) == ("refunded", "cancelled")

    provider.gate.set()
    result = await first.wait_for_message(lambda m: bool(m.embeds), timeout=15)
    made = await runtime.ledger.get_job(
        (await runtime.ledger.get_image(result.embeds[0]["footer"]["text"])).job_id
    )
    assert provider.calls == 1  # the cancelled job never reached the provider
    usage = await usage_of(runtime, fake_discord, fake_discord.member)
    assert (usage.images, usage.micro_usd) == (1, made.micro_usd)
    assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_cancel_while_generating_delivers_privately_and_charges(
    fake_discord, bot_harness, gated
):
    runtime, provider = gated
    await bot_harness.start(ImageBot(runtime))
    made = await imagine(fake_discord, runtime, "a picture already on its way")
    running = await with_cancel_button(made, "Generating")
    _, answer = await press(fake_discord, running, fake_discord.member)
    assert answer == TOO_LATE
    provider.gate.set()

    private = await made.wait_for_message(lambda m: bool(m.embeds), timeout=30)
    assert private.ephemeral and private.id != running.id
    reply = await made.wait_for_message(lambda m: m.id == running.id and m.content == WITHDRAWN)
    assert not reply.embeds and not reply.custom_ids
    assert not [m for m in public_messages(fake_discord) if m.embeds]  # never in the channel
    image = await runtime.ledger.get_image(private.embeds[0]["footer"]["text"])
    job = await runtime.ledger.get_job(image.job_id)
    for _ in range(200):  # the delivery is recorded once Discord has answered the message
        if job.delivery is not None:
            break
        await asyncio.sleep(0.02)
        job = await runtime.ledger.get_job(image.job_id)
    assert job.state == "settled" and job.delivery == "interaction" and job.micro_usd > 0
    usage = await usage_of(runtime, fake_discord, fake_discord.member)
    assert (usage.images, usage.micro_usd) == (1, job.micro_usd)


async def test_a_stranger_is_refused_and_an_admin_may_cancel(fake_discord, bot_harness, gated):
    runtime, _ = gated
    await bot_harness.start(ImageBot(runtime))
    second, queued, job_id = await one_waiting(fake_discord, runtime)
    stranger = fake_discord.add_user("stranger")

    _, refusal = await press(fake_discord, queued, stranger)
    assert refusal == "Only the person who started this job, or a server admin, can cancel it."
    assert (await job_of(runtime, job_id)).state == "reserved"
    # Manage Server taken away: no longer an admin, so refused too.
    _, refusal = await press(fake_discord, queued, fake_discord.admin, permissions="0")
    assert "Only the person" in refusal

    _, answer = await press(fake_discord, queued, fake_discord.admin)
    assert answer.startswith("❌ Cancelled")
    await second.wait_for_message(lambda m: m.content == CANCELLED)
    job = await job_of(runtime, job_id)
    assert (job.state, job.error_code, job.user_id) == (
        "refunded", "cancelled", str(fake_discord.member.id)
    )


async def test_the_button_works_after_a_restart(fake_discord, bot_harness, gated):
    runtime, _ = gated
    # SHUTDOWN_GRACE_SECONDS=0: the stop refunds the running jobs at once
    no_grace = replace(runtime, settings=replace(runtime.settings, shutdown_grace_seconds=0))
    await bot_harness.start(ImageBot(no_grace))
    _, queued, job_id = await one_waiting(fake_discord, runtime)
    await bot_harness.restart(ImageBot(runtime), expect_sync=False)
    assert (await job_of(runtime, job_id)).state == "refunded"

    click, answer = await press(fake_discord, queued, fake_discord.member)  # a new bot
    assert answer == ("This job is no longer running: it was stopped and refunded, nothing was "
                      "charged.")  # fmt: skip
    edited = await click.wait_for_message(lambda m: m.id == queued.id and m.content == STOPPED)
    assert not edited.custom_ids
    assert (await usage_of(runtime, fake_discord, fake_discord.member)).micro_usd == 0


def timestamps(text: str) -> list[int]:
    return [int(t) for t in re.findall(r"<t:(\d+):R>", text)]


async def test_queue_shows_places_etas_and_the_servers_queue(fake_discord, bot_harness, gated):
    runtime, _ = gated
    await bot_harness.start(ImageBot(runtime))
    for n, user in enumerate([fake_discord.member, fake_discord.member, fake_discord.admin,
                              fake_discord.member]):  # fmt: skip
        await imagine(fake_discord, runtime, f"queued picture {n} @everyone", user=user)

    asked = await fake_discord.slash("queue", {}, user=fake_discord.member)
    reply = await asked.wait_for_message()
    assert reply.ephemeral and not reply.mention_everyone
    lines = reply.content.splitlines()
    assert lines[0] == "**Your jobs in this server**"
    assert "🎨 generating" in lines[1] and "queued picture 0" in lines[1]
    assert "⏳ waiting, place **1** of 3" in lines[2] and "queued picture 1" in lines[2]
    assert "⏳ waiting, place **3** of 3" in lines[3] and "queued picture 3" in lines[3]
    assert "queued picture 2" not in reply.content  # the admin's job is not the member's
    etas = [timestamps(line)[0] for line in lines[1:4]]
    assert etas == sorted(etas)
    assert lines[4] == ("This server: **3** waiting, **1** generating; the bot's whole queue: "
                        "**3** waiting.")  # fmt: skip

    other = await fake_discord.slash("queue", {}, user=fake_discord.add_user("idle"))
    idle = await other.wait_for_message()
    assert idle.content.startswith("You have no jobs running in this server.")
    assert "**3** waiting" in idle.content
