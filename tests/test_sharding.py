"""Sharding (issue 10, item 4) through the real discord.py client against the sharded fake
Discord: SHARD_COUNT / SHARD_IDS, each connection getting only its own guilds, commands synced by
shard 0's process only (or ``python -m bot sync``), and buttons working from any process."""

from __future__ import annotations

from typing import Any

import discord
import pytest
from aiohttp import ClientSession, WSMsgType

from bot.config import load_settings
from bot.discord_bot import ImageBot, ShardedImageBot, make_bot, sync_only
from bot.errors import ConfigError
from bot.runtime import open_runtime
from tests.fakes.discord import FAKE_TOKEN, BotHarness, FakeDiscord

SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
SMALL = {"model": SDXL, "width": 256, "height": 256}


class QuickShardedBot(ShardedImageBot):
    """The sharded bot without discord.py's 5 s pause between IDENTIFYs (Discord's identify
    rate limit, which the fake does not enforce)."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        return None


def received(bot: discord.Client) -> list[int]:
    """Record the ids of the interactions this bot's gateway delivered to it."""
    ids: list[int] = []

    async def note(interaction: discord.Interaction) -> None:
        ids.append(interaction.id)

    bot.add_listener(note, "on_interaction")
    return ids


def puts(fake: FakeDiscord) -> list[str]:
    return [r.path for r in fake.requests if r.method == "PUT"]


def guild_creates(fake: FakeDiscord, shard: tuple[int, int]) -> set[int]:
    [session] = [s for s in fake.sessions() if s.shard == shard]
    return {int(e.split(":")[1]) for e in session.dispatched if e.startswith("GUILD_CREATE:")}


def has_result(message: Any) -> bool:
    """A result message: an embed whose footer is the image id."""
    footer = message.embeds[0].get("footer", {}) if message.embeds else {}
    return str(footer.get("text", "")).startswith("img_")


def on_shard(fake: FakeDiscord, shard: int) -> set[int]:
    return {g.id for g in fake.guilds if (g.id >> 22) % 2 == shard}


# -- settings ---------------------------------------------------------------------------------


def test_shard_settings_accept_lists_and_ranges() -> None:
    assert load_settings({}).shard_count is None and load_settings({}).shard_ids is None
    settings = load_settings({"SHARD_COUNT": "8", "SHARD_IDS": "4-6, 0"})
    assert (settings.shard_count, settings.shard_ids) == (8, (0, 4, 5, 6))
    assert settings.syncs_commands
    assert not load_settings({"SHARD_COUNT": "2", "SHARD_IDS": "1"}).syncs_commands
    assert load_settings({"SHARD_COUNT": "2"}).syncs_commands  # every shard, 0 among them


@pytest.mark.parametrize(
    ("env", "variable", "problem"),
    [
        ({"SHARD_COUNT": "2", "SHARD_IDS": "0,2"}, "SHARD_IDS", "below SHARD_COUNT"),
        ({"SHARD_COUNT": "4", "SHARD_IDS": "0-2,1"}, "SHARD_IDS", "more than once"),
        ({"SHARD_COUNT": "4", "SHARD_IDS": "one"}, "SHARD_IDS", "such as 0,1 or 0-3"),
        ({"SHARD_COUNT": "4", "SHARD_IDS": "3-1"}, "SHARD_IDS", "goes down"),
        ({"SHARD_COUNT": "4", "SHARD_IDS": "0,,1"}, "SHARD_IDS", "such as 0,1 or 0-3"),
        ({"SHARD_IDS": "0"}, "SHARD_IDS", "needs SHARD_COUNT"),
        ({"SHARD_COUNT": "0"}, "SHARD_COUNT", "at least 1"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "0-99999999"}, "SHARD_IDS", "below 65536"),
    ],
)
def test_bad_shard_settings_are_one_clear_line(env: dict[str, str], variable: str,
                                               problem: str) -> None:  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        load_settings(env)
    assert refused.value.variable == variable and problem in refused.value.user_message
    assert "\n" not in refused.value.user_message


def test_the_cli_names_the_bad_variable(monkeypatch, capsys, tmp_path) -> None:
    from bot.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHARD_COUNT", "2")
    monkeypatch.setenv("SHARD_IDS", "0,5")
    assert main(["models"]) == 2
    assert capsys.readouterr().err.strip() == (
        "configuration error: SHARD_IDS: must be below SHARD_COUNT (shards count from 0)"
    )


# -- the sharded fake ---------------------------------------------------------------------------


async def _identify(fake: FakeDiscord, shard: Any) -> int | None:
    """IDENTIFY over a raw websocket with ``shard``; the close code the fake answers with."""
    async with ClientSession() as http, http.ws_connect(fake.gateway_url) as ws:
        hello = await ws.receive_json()
        assert hello["op"] == 10
        await ws.send_json({"op": 2, "d": {"token": FAKE_TOKEN, "intents": 0, "shard": shard,
                                           "properties": {}}})  # fmt: skip
        message = await ws.receive()
        if message.type == WSMsgType.TEXT:
            return None
        return ws.close_code


async def test_the_fake_closes_invalid_shards_and_asks_for_sharding(fake_discord) -> None:
    assert await _identify(fake_discord, [2, 2]) == 4010
    assert await _identify(fake_discord, [0, 0]) == 4010
    assert await _identify(fake_discord, "0") == 4010
    assert await _identify(fake_discord, [0, 1]) is None  # READY
    fake_discord.max_guilds_per_shard = 1
    fake_discord.add_guild("Second")  # two guilds on one shard: too many
    assert await _identify(fake_discord, [0, 1]) == 4011


async def test_gateway_bot_recommends_shards(fake_discord) -> None:
    fake_discord.recommended_shards = 3
    async with ClientSession() as http:
        headers = {"Authorization": f"Bot {FAKE_TOKEN}"}
        async with http.get(f"{fake_discord.api_base}/gateway/bot", headers=headers) as answer:
            info = await answer.json()
    assert info["shards"] == 3 and info["session_start_limit"]["max_concurrency"] == 1


# -- one process, two shards ------------------------------------------------------------------


async def test_two_shards_in_one_process_get_only_their_own_guilds(
    fake_discord, bot_harness, make_settings
):
    zero = fake_discord.add_guild("Shard Zero", shard=(0, 2))
    one = fake_discord.add_guild("Shard One", shard=(1, 2))
    async with open_runtime(make_settings(SHARD_COUNT=2, SHARD_IDS="0,1")) as runtime:
        bot = make_bot(runtime)
        assert isinstance(bot, ShardedImageBot)  # what `python -m bot` would run
        bot = await bot_harness.start(QuickShardedBot(runtime))
        assert sorted(bot.shards) == [0, 1] and bot.shard_count == 2
        identified = [m["d"]["shard"] for m in fake_discord.gateway_received if m["op"] == 2]
        assert sorted(identified) == [[0, 2], [1, 2]]
        for shard in (0, 1):
            assert guild_creates(fake_discord, (shard, 2)) == on_shard(fake_discord, shard)
        assert {g.id for g in bot.guilds} == {g.id for g in fake_discord.guilds}
        assert len(puts(fake_discord)) == 1  # shard 0 is here: this process syncs

        for guild, shard in ((zero, 0), (one, 1)):
            made = await fake_discord.slash("imagine", {"prompt": "a kite", **SMALL},
                                            guild=guild)  # fmt: skip
            assert (await made.wait_for_message(has_result)).guild_id == guild.id
            assert made.shard == shard
            found = bot.get_guild(guild.id)
            assert found is not None and found.shard_id == shard


async def test_an_unsharded_bot_is_todays_single_connection(fake_discord, bot_harness,
                                                            local_runtime):  # fmt: skip
    bot = make_bot(local_runtime)
    assert type(bot) is ImageBot
    await bot_harness.start(bot)
    [session] = fake_discord.sessions()
    assert session.shard == (0, 1)
    assert not any(r.path.endswith("/gateway/bot") for r in fake_discord.requests)


# -- two processes: shard 0 and shard 1 -------------------------------------------------------


async def test_two_shard_processes_split_the_guilds_and_only_shard_0_syncs(
    fake_discord, make_settings, tmp_path
):
    zero = fake_discord.add_guild("Shard Zero", shard=(0, 2))
    one = fake_discord.add_guild("Shard One", shard=(1, 2))
    database = str(tmp_path / "shared.sqlite3")  # one ledger for both (SQLite WAL)
    first = make_settings(SHARD_COUNT=2, SHARD_IDS="0", DATABASE_PATH=database)
    second = make_settings(SHARD_COUNT=2, SHARD_IDS="1", DATABASE_PATH=database,
                           DATA_DIR=str(tmp_path / "other"))  # fmt: skip
    async with (
        open_runtime(first) as runtime_0, open_runtime(second) as runtime_1,
        BotHarness(fake_discord) as harness_0, BotHarness(fake_discord) as harness_1,
    ):  # fmt: skip
        # Shard 1's process starts first, with no record of any sync: it still never PUTs.
        bot_1 = await harness_1.start(QuickShardedBot(runtime_1), expect_sync=False)
        assert puts(fake_discord) == [] and fake_discord.sync_count == 0
        bot_0 = await harness_0.start(QuickShardedBot(runtime_0))
        assert len(puts(fake_discord)) == 1
        assert {g.id for g in bot_0.guilds} == on_shard(fake_discord, 0) >= {zero.id}
        assert {g.id for g in bot_1.guilds} == on_shard(fake_discord, 1) >= {one.id}
        got_0, got_1 = received(bot_0), received(bot_1)

        made_0 = await fake_discord.slash("imagine", {"prompt": "a mill", **SMALL}, guild=zero)
        made_1 = await fake_discord.slash("imagine", {"prompt": "a kiln", **SMALL}, guild=one)
        await made_0.wait_for_message(has_result)
        message = await made_1.wait_for_message(has_result)
        assert (got_0, got_1) == ([made_0.id], [made_1.id])

        # Shard 1's process goes away; a replacement (another process, its own memory, the
        # same ledger) takes shard 1: the old message's buttons work there.
        image_id = message.embeds[0]["footer"]["text"]
        await harness_1.stop()
        async with open_runtime(second) as replacement:
            bot_r = await harness_1.start(QuickShardedBot(replacement), expect_sync=False)
            got_r = received(bot_r)
            details = await fake_discord.click(message, f"img:info:{image_id}")
            info = await details.wait_for_message(lambda m: bool(m.embeds))
            assert image_id in str(info.embeds[0])
            reroll = await fake_discord.click(message, f"img:reroll:{image_id}")
            rerolled = await reroll.wait_for_message(has_result)
            record = await replacement.ledger.get_image(rerolled.embeds[0]["footer"]["text"])
            assert record.prompt == "a kiln" and record.id != image_id
            assert got_r == [details.id, reroll.id] and got_0 == [made_0.id]
            await harness_1.stop()
    assert len(puts(fake_discord)) == 1


# -- python -m bot sync -----------------------------------------------------------------------


async def test_sync_subcommand_syncs_over_rest_without_a_gateway(fake_discord, make_settings):
    """Even configured as shard 1 (which never syncs when it runs), ``sync`` syncs."""
    settings = make_settings(DISCORD_TOKEN=FAKE_TOKEN, SHARD_COUNT=2, SHARD_IDS="1")
    async with open_runtime(settings, recover=False) as runtime:
        assert await sync_only(runtime) == ["global"]
        assert "imagine" in fake_discord.commands()
        assert await sync_only(runtime) == []  # unchanged: nothing written
    assert len(puts(fake_discord)) == 1
    assert fake_discord.identify_count == 0 and fake_discord.gateway_received == []
