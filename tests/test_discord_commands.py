"""Commands where they belong (issue 8, item 7), through the real client and the fake Discord:
guild install only unless the operator turns DMs or user installs on, the bot's own check behind
Discord's, and command sync only when the schema changed, in exactly one scope."""

from __future__ import annotations

import json

import pytest

from bot.command_sync import STATE_FILE
from bot.discord_bot import ImageBot
from bot.runtime import open_runtime
from tests.fakes.discord import BotHarness, CommandHidden, FakeDiscord

SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
SMALL = {"model": SDXL, "width": 256, "height": 256}
SERVER_ONLY = ("templates", "quota", "quota-admin", "usage-admin", "blocklist")


def puts(fake):  # type: ignore[no-untyped-def]
    return [(r.path, len(r.body)) for r in fake.requests if r.method == "PUT"]


async def test_commands_are_synced_only_when_their_schema_changed(
    fake_discord, bot_harness, make_settings
):
    async with open_runtime(make_settings()) as runtime:
        await bot_harness.start(ImageBot(runtime))
        assert len(puts(fake_discord)) == 1
        ids = {name: c["id"] for name, c in fake_discord.commands().items()}
        await bot_harness.restart(ImageBot(runtime), expect_sync=False)
        assert len(puts(fake_discord)) == 1  # unchanged: no PUT at all
        assert {name: c["id"] for name, c in fake_discord.commands().items()} == ids
        made = await fake_discord.slash("imagine", {"prompt": "after a restart", **SMALL})
        assert (await made.wait_for_message(lambda m: bool(m.embeds))).embeds
        await bot_harness.stop()
    async with open_runtime(make_settings(DISCORD_ALLOW_DMS="true")) as runtime:
        await bot_harness.start(ImageBot(runtime))  # the schema changed: one PUT
        assert len(puts(fake_discord)) == 2
        assert fake_discord.commands()["imagine"]["contexts"] == [0, 1]
        state = json.loads((runtime.settings.data_dir / STATE_FILE).read_text())
        assert set(state) == {f"{fake_discord.application_id}/global"}


async def test_a_development_server_and_global_commands_never_both_exist(
    fake_discord, bot_harness, make_settings
):
    guild = fake_discord.guild
    api = f"/api/v10/applications/{fake_discord.application_id}"
    async with open_runtime(make_settings(DISCORD_GUILD_ID=guild.id)) as runtime:
        await bot_harness.start(ImageBot(runtime))
        assert "imagine" in fake_discord.commands(guild) and fake_discord.commands() == {}
        count = len(fake_discord.commands(guild))
        assert sorted(puts(fake_discord)) == [
            (f"{api}/commands", 0),  # a global copy from before would be listed twice: emptied
            (f"{api}/guilds/{guild.id}/commands", count),
        ]
        await bot_harness.stop()
    async with open_runtime(make_settings()) as runtime:  # back to global commands
        await bot_harness.start(ImageBot(runtime))
        assert "imagine" in fake_discord.commands() and fake_discord.commands(guild) == {}
        assert len(puts(fake_discord)) == 4
        await bot_harness.restart(ImageBot(runtime), expect_sync=False)
        assert len(puts(fake_discord)) == 4


async def test_dms_and_user_installs_are_off_by_default(fake_discord, bot_harness, local_runtime):
    await bot_harness.start(ImageBot(local_runtime))
    imagine = fake_discord.commands()["imagine"]
    assert (imagine["contexts"], imagine["integration_types"]) == ([0], [0])
    for where in ({"dm": True}, {"private": True}, {"user_install": True}):
        with pytest.raises(CommandHidden):
            await fake_discord.slash("imagine", {"prompt": "in a DM"}, **where)
    works = await fake_discord.slash("imagine", {"prompt": "in the server", **SMALL})
    assert (await works.wait_for_message(lambda m: bool(m.embeds))).guild_id is not None

    # a client still showing an old copy of the commands: the bot refuses by itself, for free
    imagine["contexts"] = [0, 1, 2]
    refused = await fake_discord.slash("imagine", {"prompt": "sneaking in", **SMALL}, dm=True)
    reply = await refused.wait_for_message()
    assert reply.ephemeral and "not in DMs" in reply.content
    usage = await local_runtime.ledger.user_usage(str(fake_discord.member.id), "")
    assert (usage.images, usage.micro_usd) == (0, 0)


async def test_the_operator_can_turn_dms_and_user_installs_on(
    fake_discord, bot_harness, make_settings
):
    settings = make_settings(DISCORD_ALLOW_DMS="true", DISCORD_ALLOW_USER_INSTALL="true")
    async with open_runtime(settings) as runtime:
        await bot_harness.start(ImageBot(runtime))
        commands = fake_discord.commands()
        assert commands["imagine"]["contexts"] == [0, 1, 2]
        assert commands["imagine"]["integration_types"] == [0, 1]
        in_dm = await fake_discord.slash("imagine", {"prompt": "in a DM", **SMALL}, dm=True)
        result = await in_dm.wait_for_message(lambda m: bool(m.embeds))
        assert result.guild_id is None
        elsewhere = await fake_discord.slash("imagine", {"prompt": "a friend's DM", **SMALL},
                                             private=True)  # fmt: skip
        assert (await elsewhere.wait_for_message(lambda m: bool(m.embeds))).embeds
        for name in SERVER_ONLY:  # a server's settings and budgets need a server
            assert commands[name]["contexts"] == [0] and commands[name]["integration_types"] == [0]
            with pytest.raises(CommandHidden):
                await fake_discord.slash(name, {}, dm=True, user=fake_discord.admin)


async def test_another_application_on_the_same_data_syncs_afresh(bot_harness, local_runtime):
    await bot_harness.start(ImageBot(local_runtime))
    await bot_harness.stop()
    async with FakeDiscord() as other, BotHarness(other) as harness:  # a new bot token
        await harness.start(ImageBot(local_runtime))
        assert len(puts(other)) == 1 and "imagine" in other.commands()
