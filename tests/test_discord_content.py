"""Issue 11 item 3 through the real client against the fake Discord: content rules with a
moderation model. A refused prompt gets a private answer naming the category and costs only the
check; a server that allows adult content in age-restricted channels is not checked there (a
thread follows its parent) and is checked everywhere else, before the cache; DMs are checked;
/content is for admins only."""

from __future__ import annotations

import json

import pytest

from bot.discord_bot import ImageBot
from bot.runtime import open_runtime
from tests.fakes.discord import MANAGE_GUILD, CommandHidden
from tests.test_discord_roles_channels import reply, run, text_of

GUARD = "@cf/meta/llama-guard-3-8b"
IMAGE_USD = 634  # FLUX.1 schnell, 1024×1024, 4 steps
REFUSAL = "refused by the server's content rules"


async def made(interaction):  # type: ignore[no-untyped-def]
    return await interaction.wait_for_message(lambda m: bool(m.embeds) and "footer" in m.embeds[0])


async def jobs(runtime):  # type: ignore[no-untyped-def]
    rows = await runtime.ledger.database.all(
        "SELECT kind, state, model, micro_usd, params, note FROM jobs ORDER BY created_at"
    )
    return [dict(r) | {"params": json.loads(r["params"])} for r in rows]


def check_usd(prompt: str, unsafe: int = 0) -> int:
    """The local stand-in's bill for one check: 230 template tokens + 1 per 4 characters at
    $0.48/M, 1 (+2 per category) output tokens at $0.03/M, rounded up to the micro-dollar."""
    nano = (230 + -(-len(prompt) // 4)) * 480 + (1 + 2 * unsafe) * 30
    return -(-nano // 1000)


async def test_refused_prompt_answers_privately_and_costs_only_the_check(
    fake_discord, bot_harness, make_settings
):  # type: ignore[no-untyped-def]
    async with open_runtime(make_settings(MODERATION_MODEL=GUARD)) as runtime:
        await bot_harness.start(ImageBot(runtime))
        refused = await run(fake_discord, "imagine", {"prompt": "a nude portrait"})
        answer = await reply(refused, REFUSAL)
        assert answer.ephemeral
        assert "Sexual content (S12)" in answer.content
        assert "failed" not in answer.content.lower()
        assert f"${check_usd('a nude portrait', 1) / 1e6:.6f}" in answer.content
        member, guild = str(fake_discord.member.id), str(fake_discord.guild.id)
        used = await runtime.ledger.user_usage(member, guild)
        assert (used.images, used.micro_usd) == (0, check_usd("a nude portrait", 1)) == (0, 113)
        [check] = await jobs(runtime)  # no image job at all
        assert (check["kind"], check["state"], check["model"]) == ("enhance", "settled", GUARD)
        assert check["params"] == {"step": "moderation"} and check["note"] == "moderation:S12"

        fine = await run(fake_discord, "imagine", {"prompt": "a lighthouse at dusk"})
        await made(fine)
        used = await runtime.ledger.user_usage(member, guild)
        assert used.images == 1
        assert used.micro_usd == 113 + check_usd("a lighthouse at dusk") + IMAGE_USD
        assert [j["kind"] for j in await jobs(runtime)] == ["enhance", "enhance", "generate"]
        assert (await runtime.ledger.audit()) == {"counter_mismatches": 0, "open_jobs": 0}


async def test_age_restricted_channels_when_the_server_allows_threads_follow_parent(
    fake_discord, bot_harness, make_settings
):  # type: ignore[no-untyped-def]
    guild = fake_discord.guild
    general = guild.channel
    after_dark = fake_discord.add_channel(guild, "after-dark", nsfw=True)
    dark_thread = fake_discord.add_thread(after_dark, "more")
    plain_thread = fake_discord.add_thread(general, "chatter")
    async with open_runtime(make_settings(MODERATION_MODEL=GUARD)) as runtime:
        await bot_harness.start(ImageBot(runtime))
        admin = fake_discord.admin
        shown = await reply(await run(fake_discord, "content show", user=admin), "Adult content")
        assert shown.ephemeral and "**off**" in shown.content
        set_ = await run(fake_discord, "content adult", {"setting": "age_restricted"}, user=admin)
        assert "age-restricted channels only" in (await reply(set_, "Adult content")).content
        assert await runtime.admin.adult_content(str(guild.id)) == "age_restricted"

        for where, prompt in ((after_dark, "a nude portrait"), (dark_thread, "a nude statue")):
            await made(await run(fake_discord, "imagine", {"prompt": prompt}, channel=where))
        assert [j["kind"] for j in await jobs(runtime)] == ["generate", "generate"]  # no check

        # the same prompt is in the server's cache now: elsewhere it is still refused
        for where in (general, plain_thread):
            refused = await run(fake_discord, "imagine", {"prompt": "a nude portrait"},
                                channel=where)  # fmt: skip
            assert (await reply(refused, "Sexual content (S12)")).ephemeral
        member = str(fake_discord.member.id)
        used = await runtime.ledger.user_usage(member, str(guild.id))
        assert used.images == 2
        assert used.micro_usd == 2 * IMAGE_USD + 2 * check_usd("a nude portrait", 1)
        quota = await reply(await run(fake_discord, "quota"), "Content rules")
        assert "age-restricted channels only" in text_of(quota)


async def test_age_restricted_channel_is_checked_when_the_server_setting_is_off(
    fake_discord, bot_harness, make_settings
):  # type: ignore[no-untyped-def]
    after_dark = fake_discord.add_channel(fake_discord.guild, "after-dark", nsfw=True)
    async with open_runtime(make_settings(MODERATION_MODEL=GUARD)) as runtime:
        await bot_harness.start(ImageBot(runtime))
        refused = await run(fake_discord, "imagine", {"prompt": "a nude portrait"},
                            channel=after_dark)  # fmt: skip
        assert (await reply(refused, REFUSAL)).ephemeral
        await made(await run(fake_discord, "imagine", {"prompt": "a quiet harbour"},
                             channel=after_dark))  # fmt: skip
        assert [(j["kind"], j["note"]) for j in await jobs(runtime)] == [
            ("enhance", "moderation:S12"), ("enhance", "moderation:safe"), ("generate", None),
        ]  # fmt: skip


async def test_dms_are_checked(
    fake_discord, bot_harness, make_settings
):  # type: ignore[no-untyped-def]
    settings = make_settings(MODERATION_MODEL=GUARD, DISCORD_ALLOW_DMS="true")
    async with open_runtime(settings) as runtime:
        await runtime.admin.set_adult_content(str(fake_discord.guild.id), "age_restricted")
        await bot_harness.start(ImageBot(runtime))
        refused = await run(fake_discord, "imagine", {"prompt": "a naked giant"}, dm=True)
        answer = await reply(refused, REFUSAL)
        assert answer.ephemeral and "Sexual content (S12)" in answer.content
        used = await runtime.ledger.user_usage(str(fake_discord.member.id), "")
        assert (used.images, used.micro_usd) == (0, check_usd("a naked giant", 1))


async def test_the_content_command_is_for_admins_only(
    fake_discord, bot_harness, make_settings
):  # type: ignore[no-untyped-def]
    async with open_runtime(make_settings(MODERATION_MODEL=GUARD)) as runtime:
        await bot_harness.start(ImageBot(runtime))
        assert fake_discord.commands()["content"]["default_member_permissions"] == str(
            MANAGE_GUILD
        )
        member = fake_discord.member
        for name, options in (("content adult", {"setting": "age_restricted"}),
                              ("content show", {})):  # fmt: skip
            with pytest.raises(CommandHidden):
                await fake_discord.slash(name, options, user=member, permissions="0")
        fake_discord.guild.opened_commands |= {"content"}
        refused = await run(fake_discord, "content adult", {"setting": "age_restricted"},
                            permissions="0")  # fmt: skip
        assert (await reply(refused, "Only server admins")).ephemeral
        assert await runtime.admin.adult_content(str(fake_discord.guild.id)) == "off"


async def test_cloudflare_flagged_content_is_shown_as_a_refusal_and_not_charged(
    fake_discord, bot_harness, make_settings, cloudflare_env, fake_cloudflare
):  # type: ignore[no-untyped-def]
    async with open_runtime(make_settings(**cloudflare_env)) as runtime:
        await bot_harness.start(ImageBot(runtime))
        fake_cloudflare.inject("3030", times=2, path_contains="flux-1-schnell")  # retried once
        refused = await run(fake_discord, "imagine", {"prompt": "an innocent teapot"})
        answer = await reply(refused, "content filter")
        assert answer.ephemeral and "not charged" in answer.content
        assert "failed" not in answer.content.lower()
        [job] = await jobs(runtime)
        assert (job["kind"], job["state"]) == ("generate", "refunded")
        used = await runtime.ledger.user_usage(str(fake_discord.member.id),
                                               str(fake_discord.guild.id))  # fmt: skip
        assert (used.images, used.micro_usd) == (0, 0)
