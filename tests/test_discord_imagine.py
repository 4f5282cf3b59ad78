"""/imagine end to end: the real discord.py client against the fake Discord, the real service
on the embedded backends, a real SQLite file."""

from __future__ import annotations

import asyncio
import io
import itertools

import pytest
from PIL import Image

from bot.discord_bot import ImageBot
from bot.runtime import open_runtime
from tests.conftest import CountingProvider, png

SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"


def has_result(message) -> bool:
    return bool(message.embeds) or "deleted" in message.content


async def imagine(fake_discord, options, user=None, **extra):
    interaction = await fake_discord.slash("imagine", options, user=user or fake_discord.member,
                                           **extra)  # fmt: skip
    await interaction.wait_for_callback()
    return interaction


async def test_imagine_defers_then_shows_the_hosted_image_with_buttons(
    fake_discord, bot_harness, local_runtime
):
    await bot_harness.start(ImageBot(local_runtime))
    interaction = await imagine(fake_discord, {"prompt": "a lighthouse at dusk"})
    assert interaction.callback_type == 5  # deferred first
    message = await interaction.wait_for_message(has_result)
    assert not message.ephemeral
    [embed] = message.embeds
    image_id = embed["footer"]["text"]
    record = await local_runtime.ledger.get_image(image_id)
    assert record.user_id == str(fake_discord.member.id)
    assert record.guild_id == str(fake_discord.guild.id)
    assert embed["url"] == record.url
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Cost"] == "$0.000634" and fields["Size"] == "1024×1024"
    assert fields["Left today"] == "24 images · $0.049366"
    assert record.url in fields["Link"]
    # The local store is on 127.0.0.1, which Discord cannot reach: the file is attached too.
    [sent] = message.files
    assert sent.filename == f"{image_id}.png"
    assert Image.open(io.BytesIO(sent.data)).size == (1024, 1024)
    assert embed["image"]["url"] == f"attachment://{image_id}.png"
    assert sorted(message.custom_ids) == sorted(
        f"img:{action}:{image_id}" for action in ("reroll", "vary", "edit", "info", "delete")
    )


async def test_private_result_is_ephemeral_and_cache_hit_says_free(
    fake_discord, bot_harness, local_runtime
):
    await bot_harness.start(ImageBot(local_runtime))
    first = await imagine(fake_discord, {"prompt": "a quiet harbour", "private": True})
    assert (await first.wait_for_message(has_result)).ephemeral
    second = await imagine(fake_discord, {"prompt": "a quiet harbour"})
    public = await second.wait_for_message(has_result)
    assert "free" not in public.content  # a private result is never shared through the cache
    third = await imagine(fake_discord, {"prompt": "a quiet harbour"})
    message = await third.wait_for_message(has_result)
    assert "free" in message.content
    fields = {f["name"]: f["value"] for f in message.embeds[0]["fields"]}
    assert fields["Cost"] == "free (cached)"


async def test_options_reach_the_service(fake_discord, bot_harness, local_runtime):
    await bot_harness.start(ImageBot(local_runtime))
    interaction = await imagine(fake_discord, {
        "prompt": "a red bicycle", "model": SDXL, "aspect_ratio": "16:9", "seed": 42,
        "steps": 10, "count": 2, "negative_prompt": "blurry",
    })  # fmt: skip
    message = await interaction.wait_for_message(has_result)
    assert len(message.embeds) == 1 and [f.filename for f in message.files] == ["grid.jpg"]
    ups = sorted(c for c in message.custom_ids if c.startswith("grid:up:"))
    records = [await local_runtime.ledger.get_image(c.split(":")[3]) for c in ups]
    assert [r.seed for r in records] == [42, 43]
    assert all(r.model == SDXL and r.steps == 10 and r.negative_prompt == "blurry"
               for r in records)  # fmt: skip
    assert records[0].width > records[0].height


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"prompt": "ab"}, "at least 3 characters"),
        ({"prompt": "a red bicycle", "width": 512}, "always makes 1024×1024"),
        ({"prompt": "a red bicycle", "model": "nope"}, "Unknown or disabled model"),
        ({"prompt": "a red bicycle", "template": "missing"}, "No template named"),
    ],
)
async def test_bad_requests_get_a_private_error_and_cost_nothing(
    fake_discord, bot_harness, local_runtime, options, expected
):
    await bot_harness.start(ImageBot(local_runtime))
    interaction = await imagine(fake_discord, options)
    reply = await interaction.wait_for_message(lambda m: expected in m.content)
    assert reply.ephemeral
    assert all(m.deleted or m.ephemeral for m in interaction.messages) or not [
        m for m in interaction.messages if not m.ephemeral and not m.deleted
    ]
    usage = await local_runtime.ledger.user_usage(str(fake_discord.member.id),
                                                  str(fake_discord.guild.id))  # fmt: skip
    assert usage.images == 0


async def test_over_quota_says_which_limit_and_when_it_resets(
    fake_discord, bot_harness, make_settings
):
    async with open_runtime(make_settings(QUOTA_USER_DAILY_IMAGES=1)) as runtime:
        await bot_harness.start(ImageBot(runtime))
        first = await imagine(fake_discord, {"prompt": "first picture"})
        await first.wait_for_message(has_result)
        second = await imagine(fake_discord, {"prompt": "second picture"})
        reply = await second.wait_for_message(lambda m: "images for today" in m.content)
        assert reply.ephemeral and "<t:" in reply.content and ":R>" in reply.content


async def test_attachment_starts_image_to_image(fake_discord, bot_harness, local_runtime):
    await bot_harness.start(ImageBot(local_runtime))
    attachment = fake_discord.add_attachment("start.png", png(300, 200), "image/png")
    interaction = await imagine(fake_discord, {"prompt": "make it autumn", "image": attachment})
    message = await interaction.wait_for_message(has_result)
    record = await local_runtime.ledger.get_image(message.embeds[0]["footer"]["text"])
    source = await local_runtime.ledger.get_image(record.source_image_id)
    assert source.kind == "upload" and (source.width, source.height) == (300, 200)
    bad = fake_discord.add_attachment("notes.png", b"not an image at all", "image/png")
    refused = await imagine(fake_discord, {"prompt": "make it autumn", "image": bad})
    reply = await refused.wait_for_message(lambda m: "Accepted types" in m.content)
    assert reply.ephemeral


async def test_buttons_work_and_keep_working_after_a_restart(
    fake_discord, bot_harness, local_runtime
):
    await bot_harness.start(ImageBot(local_runtime))
    interaction = await imagine(fake_discord, {"prompt": "a paper boat", "model": SDXL,
                                               "width": 256, "height": 256})  # fmt: skip
    message = await interaction.wait_for_message(has_result)
    image_id = message.embeds[0]["footer"]["text"]
    await bot_harness.restart(ImageBot(local_runtime), expect_sync=False)  # commands unchanged

    details = await fake_discord.click(message, f"img:info:{image_id}", user=fake_discord.admin)
    info = await details.wait_for_message(lambda m: bool(m.embeds))
    assert info.ephemeral and image_id in str(info.embeds[0])

    reroll = await fake_discord.click(message, f"img:reroll:{image_id}", user=fake_discord.admin)
    rerolled = await reroll.wait_for_message(has_result)
    new_record = await local_runtime.ledger.get_image(rerolled.embeds[0]["footer"]["text"])
    assert new_record.id != image_id and new_record.user_id == str(fake_discord.admin.id)
    assert new_record.prompt == "a paper boat" and new_record.model == SDXL

    vary = await fake_discord.click(message, f"img:vary:{image_id}", user=fake_discord.member)
    varied = await vary.wait_for_message(has_result)
    varied_record = await local_runtime.ledger.get_image(varied.embeds[0]["footer"]["text"])
    assert varied_record.source_image_id == image_id

    refused = await fake_discord.click(message, f"img:delete:{image_id}", user=fake_discord.admin,
                                       permissions="0")  # fmt: skip
    reply = await refused.wait_for_message(lambda m: "Only the person" in m.content)
    assert reply.ephemeral
    delete = await fake_discord.click(message, f"img:delete:{image_id}", user=fake_discord.member)
    await delete.wait_for_callback()
    assert delete.callback_type == 6  # acknowledged first, then the message itself is edited
    edited = await delete.wait_for_message(lambda m: "was deleted by" in m.content)
    assert edited.id == message.id and not edited.embeds and not edited.custom_ids
    assert (await local_runtime.ledger.get_image(image_id)).is_deleted


async def test_200_imagine_at_once_are_all_acknowledged(fake_discord, bot_harness, make_settings):
    settings = make_settings(MAX_QUEUE=1000, QUOTA_USER_DAILY_IMAGES=1000, QUOTA_USER_DAILY_USD=10,
                             QUOTA_DAILY_NEURONS=100_000,
                             DISCORD_CHANNEL_MESSAGES_PER_10S=0)  # fmt: skip
    async with open_runtime(settings) as runtime:
        await bot_harness.start(ImageBot(runtime))
        fake_discord.ack_deadline = 3.0  # like Discord: a later acknowledgement is refused
        # 200 results in one channel cannot all be shown within the channel-wide limit (the
        # fake's 50 edits per 10 s): the bot spaces them (DISCORD_CHANNEL_MESSAGES_PER_10S),
        # which takes about 50 s. This test is about acknowledgements, so it is off here.
        fake_discord.channel_rate = None
        interactions = await asyncio.gather(*(
            fake_discord.slash("imagine", {"prompt": f"burst picture {n}", "model": SDXL,
                                           "width": 256, "height": 256},
                               user=fake_discord.member)
            for n in range(200)
        ))  # fmt: skip
        await asyncio.gather(*(i.wait_for_callback(timeout=30) for i in interactions))
        assert all(i.callback_type == 5 for i in interactions)
        latencies = sorted(i.latency for i in interactions)
        print(f"200 at once: max acknowledgement {latencies[-1] * 1000:.0f} ms")
        results = await asyncio.gather(
            *(i.wait_for_message(has_result, timeout=60) for i in interactions)
        )
        assert all(not m.ephemeral for m in results)
        assert (await runtime.ledger.audit())["open_jobs"] == 0


async def test_progress_shows_queue_position_then_generating(fake_discord, bot_harness,
                                                             make_settings):  # fmt: skip
    async with open_runtime(make_settings(MAX_JOBS_PER_USER=1)) as runtime:
        # Long enough that the queued state outlasts the first edit (due after 2 s, one per
        # second in a channel): shorter states are coalesced away.
        runtime.service.provider = CountingProvider(delay=4.0)
        await bot_harness.start(ImageBot(runtime))
        first = await imagine(fake_discord, {"prompt": "slow picture one"})
        second = await imagine(fake_discord, {"prompt": "slow picture two"})
        await second.wait_for_message(lambda m: bool(m.embeds), timeout=20)
        edits = [e for e in second.events if e.kind == "edit"]
        contents = [e.body.get("content") or "" for e in edits]
        assert any("position **1**" in c for c in contents)
        assert any("Generating with" in c and ":R>" in c for c in contents)
        progress_edits = [e for e in edits if not e.body.get("embeds")]
        gaps = [b.at - a.at for a, b in itertools.pairwise(progress_edits)]
        # The throttle's guarantee (a lower bound, so a slow machine cannot break it).
        assert all(gap >= 1.9 for gap in gaps)
        assert (await first.wait_for_message(lambda m: bool(m.embeds))).embeds


async def test_image_id_autocomplete_offers_the_users_own_images(fake_discord, bot_harness,
                                                                  local_runtime):  # fmt: skip
    await bot_harness.start(ImageBot(local_runtime))
    made = await imagine(fake_discord, {"prompt": "a copper kettle"})
    image_id = (await made.wait_for_message(has_result)).embeds[0]["footer"]["text"]
    choices = await fake_discord.autocomplete("imagine", "image_id", "", {"prompt": "x"},
                                              user=fake_discord.member)  # fmt: skip
    assert [c["value"] for c in choices] == [image_id]
    assert "copper kettle" in choices[0]["name"]
    others = await fake_discord.autocomplete("imagine", "image_id", "", {"prompt": "x"},
                                             user=fake_discord.admin)  # fmt: skip
    assert others == []
    models = await fake_discord.autocomplete("imagine", "model", "schnell", {"prompt": "x"})
    assert [c["value"] for c in models] == ["@cf/black-forest-labs/flux-1-schnell"]


async def test_commands_sync_to_the_development_server_when_set(fake_discord, bot_harness,
                                                                make_settings):  # fmt: skip
    settings = make_settings(DISCORD_GUILD_ID=fake_discord.guild.id)
    async with open_runtime(settings) as runtime:
        await bot_harness.start(ImageBot(runtime))
        synced = fake_discord.commands(guild=fake_discord.guild)
        assert {"imagine", "upload", "models", "templates", "usage", "quota",
                "blocklist"} <= set(synced)  # fmt: skip
        assert fake_discord.commands() == {}


async def test_a_model_that_needs_the_paid_plan_says_so_privately_and_charges_nothing(
    fake_discord, bot_harness, fake_cloudflare, make_settings, cloudflare_env
):
    async with open_runtime(make_settings(**cloudflare_env)) as runtime:
        await bot_harness.start(ImageBot(runtime))
        fake_cloudflare.inject("5035")  # 403: "This model requires the Workers Paid plan"
        interaction = await imagine(fake_discord, {"prompt": "a red bicycle"})
        message = await interaction.wait_for_message(lambda m: "Paid plan" in m.content)
        assert message.ephemeral
        assert "needs the Workers Paid plan" in message.content
        assert "credentials" not in message.content  # not the bad-token message
        member, guild = str(fake_discord.member.id), str(fake_discord.guild.id)
        assert (await runtime.ledger.user_usage(member, guild)).images == 0
        assert fake_cloudflare.ai_calls == 1  # not retried
