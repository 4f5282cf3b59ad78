"""Every paid image reaches its user, through the real discord.py client against the fake
Discord: private buttons stay private, buttons answer within Discord's 3 s whatever the store
does, and results the interaction cannot carry are delivered another way or refunded."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from bot.discord_bot import ImageBot
from bot.errors import StoreError
from bot.providers.base import GeneratedImage, ImageRequest
from bot.runtime import open_runtime
from bot.stores.local import LocalImageStore
from cogs import delivery
from cogs.progress import CHANNEL_EDIT_INTERVAL
from tests.conftest import CountingProvider
from tests.fakes.discord import FakeChannel
from tests.test_discord_limits import BigProvider

SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
SMALL = {"model": SDXL, "width": 256, "height": 256}  # quick to render, and free
PAID = {"model": "@cf/black-forest-labs/flux-1-schnell", "width": 1024, "height": 1024}
SCHNELL_MICRO_USD = 634


class SlowDeletes(LocalImageStore):
    """The local store, taking 5 seconds to delete (a slow or struggling store)."""

    async def delete(self, key: str) -> None:
        await asyncio.sleep(5.0)
        await super().delete(key)


class UnreadableStore(LocalImageStore):
    """Stores images, then cannot read them back (a disk that failed after the write)."""

    async def get(self, key: str) -> bytes:
        raise StoreError("The image store could not be read.")


def has_result(message) -> bool:
    return bool(message.embeds)


def progress_edits(interaction):
    """Edits of the reply that are not the result."""
    return [e for e in interaction.events if e.kind == "edit" and not e.body.get("embeds")]


def public_messages(fake):
    return [m for m in fake.messages.values() if not m.ephemeral and not m.deleted]


async def imagine(fake, options, user=None, **extra):
    interaction = await fake.slash("imagine", {**SMALL, **options},
                                   user=user or fake.member, **extra)  # fmt: skip
    await interaction.wait_for_callback()
    return interaction


async def test_reroll_and_variations_of_a_private_result_are_private(
    fake_discord, bot_harness, local_runtime
):
    await bot_harness.start(ImageBot(local_runtime))
    first = await imagine(fake_discord, {"prompt": "a secret garden", "private": True})
    private = await first.wait_for_message(has_result)
    assert private.ephemeral
    image_id = private.embeds[0]["footer"]["text"]
    for action in ("reroll", "vary"):
        click = await fake_discord.click(private, f"img:{action}:{image_id}")
        await click.wait_for_callback()
        assert click.callback_type == 5 and click.callback.ephemeral  # private "thinking…"
        answer = await click.wait_for_message(has_result, timeout=10)
        assert answer.ephemeral, action
        made = await local_runtime.ledger.get_image(answer.embeds[0]["footer"]["text"])
        assert made.id != image_id and made.user_id == str(fake_discord.member.id)
    details = await fake_discord.click(private, f"img:info:{image_id}")
    shown = await details.wait_for_message(has_result)
    assert shown.ephemeral
    fields = {f["name"]: f["value"] for f in shown.embeds[0]["fields"]}
    assert fields["Delivered"] == "as the reply"
    delete = await fake_discord.click(private, f"img:delete:{image_id}")
    edited = await delete.wait_for_message(lambda m: "was deleted by" in m.content)
    assert edited.id == private.id and edited.ephemeral
    assert public_messages(fake_discord) == []  # nothing reached the channel


async def test_buttons_on_a_public_result_still_answer_in_public(
    fake_discord, bot_harness, local_runtime
):
    await bot_harness.start(ImageBot(local_runtime))
    first = await imagine(fake_discord, {"prompt": "a public fountain"})
    public = await first.wait_for_message(has_result)
    image_id = public.embeds[0]["footer"]["text"]
    click = await fake_discord.click(public, f"img:reroll:{image_id}")
    assert not (await click.wait_for_message(has_result, timeout=10)).ephemeral


async def test_delete_with_a_five_second_store_is_acknowledged_in_time(
    fake_discord, bot_harness, local_runtime
):
    store = local_runtime.service.store
    assert isinstance(store, LocalImageStore)
    local_runtime.service.store = SlowDeletes(store.root, store.base_url)
    await bot_harness.start(ImageBot(local_runtime))
    fake_discord.ack_deadline = 3.0  # like Discord: a later acknowledgement is refused
    made = await imagine(fake_discord, {"prompt": "a sandcastle", "count": 2, "separate": True})
    message = await made.wait_for_message(has_result)
    gone, kept = (e["footer"]["text"] for e in message.embeds)

    delete = await fake_discord.click(message, f"img:delete:{gone}")

    await delete.wait_for_callback()
    assert delete.callback_type == 6 and not delete.rejected  # acknowledged, in time
    edited = await delete.wait_for_message(lambda m: "was deleted by" in m.content, timeout=10)
    assert edited.id == message.id
    assert [e["footer"]["text"] for e in edited.embeds] == [kept]
    assert all(kept in custom_id for custom_id in edited.custom_ids)
    assert (await local_runtime.ledger.get_image(gone)).is_deleted
    assert not (await local_runtime.ledger.get_image(kept)).is_deleted



async def test_a_result_that_cannot_be_attached_is_refunded_and_the_user_told(
    fake_discord, bot_harness, local_runtime
):
    store = local_runtime.store
    assert isinstance(store, LocalImageStore)
    # The Discord front has the bytes read back to attach them (the local store is private).
    local_runtime.service.store = UnreadableStore(store.root, store.base_url)
    await bot_harness.start(ImageBot(local_runtime))
    made = await imagine(fake_discord, {"prompt": "a lost postcard"})
    reply = await made.wait_for_message(lambda m: "could not be read" in m.content)
    assert reply.ephemeral
    ledger = local_runtime.ledger
    assert (await ledger.user_usage(str(fake_discord.member.id),
                                    str(fake_discord.guild.id))).images == 0  # fmt: skip
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
    [image] = await local_runtime.service.user_images(str(fake_discord.member.id))
    assert image.prompt == "a lost postcard"  # still the owner's, findable


async def test_a_job_done_before_the_first_edit_is_due_shows_no_progress(
    fake_discord, bot_harness, local_runtime
):
    await bot_harness.start(ImageBot(local_runtime))
    made = await imagine(fake_discord, {"prompt": "a quick doodle"})
    await made.wait_for_message(has_result)
    assert progress_edits(made) == []
    [final] = [e for e in made.events if e.kind == "edit"]
    assert final.body["embeds"]


async def test_fifty_jobs_in_one_channel_share_a_progress_budget_and_all_arrive(
    fake_discord, bot_harness, make_settings
):
    env = {"MAX_CONCURRENT_JOBS": 8, "QUOTA_USER_DAILY_IMAGES": 100, "QUOTA_USER_DAILY_USD": 10}
    async with open_runtime(make_settings(**env)) as runtime:
        runtime.service.provider = CountingProvider(delay=1.5)
        users = [fake_discord.add_user(f"user{n}") for n in range(50)]
        await bot_harness.start(ImageBot(runtime))
        interactions = await asyncio.gather(*(
            imagine(fake_discord, {"prompt": f"busy channel picture {n}"}, user=user)
            for n, user in enumerate(users)
        ))  # fmt: skip
        await asyncio.gather(*(i.wait_for_message(has_result, timeout=60) for i in interactions))
        await asyncio.sleep(CHANNEL_EDIT_INTERVAL * 2)  # an edit sent after the result would land
        per_job = [len(progress_edits(i)) for i in interactions]
        times = sorted(e.at for i in interactions for e in progress_edits(i))
        busiest = max((sum(1 for t in times if start <= t < start + 1.0) for start in times),
                      default=0)  # fmt: skip
        print(f"50 jobs in one channel: {sum(per_job)} progress edits, at most {max(per_job)} "
              f"per job, at most {busiest} in one second; {fake_discord.rate_limited} answered "
              "429")  # fmt: skip
        assert busiest <= 2  # one a second per channel, whatever the arrival jitter
        assert fake_discord.rate_limited == 0  # results wait their turn in the channel instead
        for interaction in interactions:  # the result is the last edit: nothing went after it
            assert interaction.events[-1].kind == "edit" and interaction.events[-1].body["embeds"]
        jobs = [await runtime.ledger.job_by_key(f"discord:{i.id}") for i in interactions]
        assert all(j is not None and j.delivery == "interaction" for j in jobs)
        assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


# -- when the interaction can no longer carry the result -------------------------------------


def posted_results(messages):
    return [m for m in messages if m.embeds and not m.deleted]


async def delivery_of(runtime, interaction):
    """Wait (up to 20 s) until the job of ``interaction`` has a recorded delivery; the job."""
    async with asyncio.timeout(20.0):
        while True:
            job = await runtime.ledger.job_by_key(f"discord:{interaction.id}")
            if job is not None and job.delivery is not None:
                return job
            await asyncio.sleep(0.05)


@pytest.fixture
async def slow_runtime(make_settings):
    """A runtime whose provider takes 3 s: longer than the 2-second tokens below."""
    async with open_runtime(make_settings()) as runtime:
        runtime.service.provider = CountingProvider(delay=3.0)
        yield runtime


async def test_a_job_outliving_its_token_is_posted_in_the_channel_mentioning_only_its_user(
    fake_discord, bot_harness, slow_runtime
):
    fake_discord.token_lifetime = 2.0
    await bot_harness.start(ImageBot(slow_runtime))
    made = await imagine(fake_discord, {"prompt": "a slow comet, @everyone"})
    channel = fake_discord.guild.channel

    job = await delivery_of(slow_runtime, made)

    assert job.state == "settled" and job.delivery == "channel"
    [posted] = posted_results(fake_discord.channel_messages[channel.id])
    member = fake_discord.member
    assert posted.mentions == [member.id] and not posted.mention_everyone
    allowed = posted.allowed_mentions or {}
    assert allowed["parse"] == [] and [int(u) for u in allowed["users"]] == [member.id]
    assert posted.embeds[0]["footer"]["text"] in {i.id for i in
                                                  await slow_runtime.service.user_images(
                                                      str(member.id))}  # fmt: skip
    assert sorted(c.split(":")[1] for c in posted.custom_ids) == ["delete", "edit", "info",
                                                                  "reroll", "vary"]  # fmt: skip
    assert posted.files  # the same attachment as the reply would have had
    assert made.calls_after_dead == 0  # the first 401 was the last call on that token


async def test_when_the_channel_refuses_the_result_comes_by_dm(
    fake_discord, bot_harness, slow_runtime
):
    fake_discord.token_lifetime = 2.0
    fake_discord.guild.channel.can_send = False
    await bot_harness.start(ImageBot(slow_runtime))
    made = await imagine(fake_discord, {"prompt": "a slow lighthouse"})

    job = await delivery_of(slow_runtime, made)

    assert job.state == "settled" and job.delivery == "dm"
    [sent] = posted_results(fake_discord.dm_messages[fake_discord.member.id])
    assert sent.custom_ids and sent.files
    assert fake_discord.channel_messages[fake_discord.guild.channel.id] == []
    assert made.calls_after_dead == 0


async def test_when_no_way_shows_it_the_job_is_refunded_and_the_image_stays_findable(
    fake_discord, bot_harness, slow_runtime, caplog
):
    fake_discord.token_lifetime = 2.0
    fake_discord.guild.channel.can_send = False
    fake_discord.member.accepts_dms = False
    await bot_harness.start(ImageBot(slow_runtime))
    member = str(fake_discord.member.id)
    made = await imagine(fake_discord, {"prompt": "a slow rainbow", **PAID})

    job = await delivery_of(slow_runtime, made)

    assert job.state == "refunded" and job.delivery == "undelivered"
    assert job.micro_usd == SCHNELL_MICRO_USD  # what was charged, and given back
    ledger = slow_runtime.ledger
    usage = await ledger.user_usage(member, str(fake_discord.guild.id))
    assert usage.images == 0 and usage.micro_usd == 0
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
    [image] = await slow_runtime.service.user_images(member)
    assert image.job_id == job.id and image.prompt == "a slow rainbow"
    choices = await fake_discord.autocomplete("imagine", "image_id", "", {"prompt": "x"},
                                              user=fake_discord.member)  # fmt: skip
    assert [c["value"] for c in choices] == [image.id]
    [warning] = [r for r in caplog.records if "could not be shown anywhere" in r.message]
    assert warning.levelname == "WARNING"
    assert "401 50027" in warning.message and "403 50013" in warning.message
    assert "403 50007" in warning.message and "$0.000634" in warning.message
    assert made.token not in warning.message
    assert made.calls_after_dead == 0


async def test_a_private_result_outliving_its_token_goes_by_dm_never_to_the_channel(
    fake_discord, bot_harness, slow_runtime
):
    fake_discord.token_lifetime = 2.0
    await bot_harness.start(ImageBot(slow_runtime))
    made = await imagine(fake_discord, {"prompt": "a slow secret", "private": True})

    job = await delivery_of(slow_runtime, made)

    assert job.delivery == "dm"
    assert posted_results(fake_discord.dm_messages[fake_discord.member.id])
    assert fake_discord.channel_messages[fake_discord.guild.channel.id] == []


async def test_a_private_result_is_refunded_rather_than_shown_in_the_channel(
    fake_discord, bot_harness, slow_runtime
):
    fake_discord.token_lifetime = 2.0
    fake_discord.member.accepts_dms = False
    await bot_harness.start(ImageBot(slow_runtime))
    made = await imagine(fake_discord, {"prompt": "a slow diary page", "private": True})

    job = await delivery_of(slow_runtime, made)

    assert job.state == "refunded" and job.delivery == "undelivered"
    assert fake_discord.channel_messages[fake_discord.guild.channel.id] == []


async def test_a_deleted_thinking_message_means_the_result_is_posted_in_the_channel(
    fake_discord, bot_harness, slow_runtime
):
    await bot_harness.start(ImageBot(slow_runtime))
    made = await imagine(fake_discord, {"prompt": "a slow mountain"})
    fake_discord.delete_message(made.original.id)  # a moderator, while the job runs

    job = await delivery_of(slow_runtime, made)

    assert job.delivery == "channel"
    assert posted_results(fake_discord.channel_messages[fake_discord.guild.channel.id])
    assert made.calls_after_dead == 0


async def test_a_429_outlasting_the_retries_on_the_result_is_delivered_another_way(
    fake_discord, bot_harness, make_settings
):
    async with open_runtime(make_settings()) as runtime:
        runtime.service.provider = CountingProvider(delay=0.5)  # done before any progress edit
        await bot_harness.start(ImageBot(runtime))
        made = await imagine(fake_discord, {"prompt": "a rate-limited sunset"})
        fake_discord.force_429(5, retry_after=0.05)  # discord.py tries five times, then gives up

        job = await delivery_of(runtime, made)

        assert job.state == "settled" and job.delivery == "channel"
        assert len([e for e in made.events if e.kind == "rate_limited"]) == 5
        assert posted_results(fake_discord.channel_messages[fake_discord.guild.channel.id])


async def test_a_job_known_to_outlast_its_token_says_so_and_never_touches_it_late(
    fake_discord, bot_harness, make_settings, monkeypatch
):
    """Tokens of 4 s here (Discord's are 15 minutes): the bot knows each deadline from the
    interaction's creation, tells the user where the result will go, and makes no call on a
    token it knows is at its end, so Discord never answers it 401."""
    fake_discord.token_lifetime = 4.0
    monkeypatch.setattr(delivery, "TOKEN_LIFETIME", timedelta(seconds=4))
    monkeypatch.setattr(delivery, "SAFETY_MARGIN", timedelta(seconds=1))
    guild = fake_discord.guild
    other = FakeChannel(fake_discord.snowflake(), "other", guild.id, position=1)
    guild.channels.append(other)  # its own progress budget: the queued job's edit is not paced
    async with open_runtime(make_settings(MAX_JOBS_PER_USER=1)) as runtime:
        runtime.service.provider = CountingProvider(delay=3.5)
        await bot_harness.start(ImageBot(runtime))
        made = await imagine(fake_discord, {"prompt": "a slow glacier"})
        queued = await imagine(fake_discord, {"prompt": "a slow glacier, later"}, channel=other)

        jobs = [await delivery_of(runtime, made), await delivery_of(runtime, queued)]

        assert [job.delivery for job in jobs] == ["channel", "channel"]
        late = "I'll post the result in this channel and mention you"
        notes = [e.body.get("content") or "" for e in progress_edits(made)]
        assert any("Generating" in n and late in n for n in notes)
        notes = [e.body.get("content") or "" for e in progress_edits(queued)]
        assert any("position **1**" in n and late in n for n in notes)
        for channel in guild.channels:
            assert len(posted_results(fake_discord.channel_messages[channel.id])) == 1
        assert fake_discord.invalid_requests == 0 and not made.rejected and not queued.rejected


class SlowBigProvider(BigProvider):
    """Four of its images need two messages, and they come after the 2-second tokens below."""

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        await asyncio.sleep(2.5)
        return await super().generate(request)


async def test_a_result_in_two_messages_outliving_its_token_is_posted_whole_in_the_channel(
    fake_discord, bot_harness, local_runtime
):
    fake_discord.token_lifetime = 2.0
    local_runtime.service.provider = SlowBigProvider()
    await bot_harness.start(ImageBot(local_runtime))
    made = await imagine(fake_discord, {"prompt": "four noisy skies", "count": 4,
                                        "separate": True})

    job = await delivery_of(local_runtime, made)

    assert job.delivery == "channel" and job.state == "settled"
    posted = posted_results(fake_discord.channel_messages[fake_discord.guild.channel.id])
    assert [len(p.files) for p in posted] == [3, 1]
    assert all(p.mentions == [fake_discord.member.id] for p in posted)
    assert sum(len(p.embeds) for p in posted) == 4 and made.calls_after_dead == 0
