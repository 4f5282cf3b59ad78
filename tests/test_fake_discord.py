"""The fake Discord drives the real discord.py client: login, READY, command sync, slash commands
with options and attachments, defer + followup with file/embed/button, ephemeral replies,
autocomplete, edits/deletes/message updates and Discord's rules, persistent dynamic buttons
across a bot restart, and a burst of interactions. The bot is an ImageBot without extensions,
with test-only commands added to its tree."""

from __future__ import annotations

import asyncio
import io
import re
import time
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands

from bot.discord_bot import ImageBot
from bot.runtime import Runtime
from tests.conftest import png
from tests.fakes.discord import (
    EPHEMERAL,
    MANAGE_GUILD,
    BotHarness,
    CommandHidden,
    FakeDiscord,
    patched_discord_endpoints,
)

STYLES = ("anime", "analog film", "cinematic", "pixel art", "watercolour")


class RenderButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"render:(?P<job>[0-9]+)"
):
    """A persistent button whose custom_id carries a job id."""

    def __init__(self, job: int) -> None:
        button: discord.ui.Button[Any] = discord.ui.Button(
            label="Again", style=discord.ButtonStyle.primary, custom_id=f"render:{job}"
        )
        super().__init__(button)
        self.job = job

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RenderButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        tag = getattr(interaction.client, "tag", "?")
        await interaction.response.send_message(f"again {self.job} by {tag}", ephemeral=True)


class CardView(discord.ui.View):
    """A plain (message-bound) view: clicks route by the response's message id."""

    @discord.ui.button(label="Flip", custom_id="card:flip")
    async def flip(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content="flipped", view=None)


def build_bot(runtime: Runtime, tag: str, seen: list[dict[str, Any]]) -> ImageBot:
    """An ImageBot without extensions, plus test-only commands on its tree."""
    bot = ImageBot(runtime, extensions=())
    bot.tag = tag  # type: ignore[attr-defined]
    bot.add_dynamic_items(RenderButton)
    tree = bot.tree

    @tree.command(name="inspect", description="Echo what arrived")
    async def inspect(
        interaction: discord.Interaction,
        prompt: str,
        steps: app_commands.Range[int, 1, 50],
        image: discord.Attachment,
        strength: float = 0.5,
    ) -> None:
        data = await image.read()
        seen.append(
            {
                "prompt": prompt,
                "steps": steps,
                "strength": strength,
                "filename": image.filename,
                "content_type": image.content_type,
                "data": data,
                "user": interaction.user.id,
                "can_manage": interaction.permissions.manage_guild,
            }
        )
        await interaction.response.send_message(f"{len(data)} bytes", ephemeral=True)

    @tree.command(name="render", description="Defer, then a file, an embed and a button")
    async def render(interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.defer(thinking=True)
        embed = discord.Embed(title=prompt).set_image(url="attachment://render.png")
        view = discord.ui.View(timeout=None).add_item(RenderButton(42))
        file = discord.File(io.BytesIO(png()), "render.png")
        await interaction.followup.send(embed=embed, file=file, view=view)

    @tree.command(name="secret", description="Only you can see this")
    async def secret(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("hush", ephemeral=True)

    @tree.command(name="style", description="Pick a style")
    async def style(interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(name)

    @style.autocomplete("name")
    async def style_names(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=s, value=s) for s in STYLES if current.lower() in s]

    @tree.command(name="ping", description="Defer, then answer")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.followup.send("pong")

    @tree.command(name="card", description="A reply with a file and a view")
    async def card(interaction: discord.Interaction) -> None:
        file = discord.File(io.BytesIO(b"card-bytes"), "card.txt")
        await interaction.response.send_message("card", file=file, view=CardView())

    @tree.command(name="steps", description="Fetch, edit twice, delete, answer privately, edit")
    async def steps(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.original_response()
        one = discord.File(io.BytesIO(b"1"), "one.txt")
        await interaction.edit_original_response(content="working", attachments=[one])
        two = discord.File(io.BytesIO(b"2"), "two.txt")
        await interaction.edit_original_response(content="done", attachments=[two])
        await interaction.delete_original_response()
        private = await interaction.followup.send("private", ephemeral=True, wait=True)
        await private.edit(content="private, edited")

    @tree.command(name="oops", description="Ephemeral followup after a public defer")
    async def oops(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.followup.send("meant to be private", ephemeral=True)

    admin = app_commands.Group(
        name="admin",
        description="Admin",
        default_permissions=discord.Permissions(manage_guild=True),
    )
    quota = app_commands.Group(name="quota", description="Quotas", parent=admin)

    @quota.command(name="set", description="Set a user's quota")
    async def quota_set(
        interaction: discord.Interaction, user: discord.Member, amount: int
    ) -> None:
        seen.append({"user": user.id, "name": user.name, "amount": amount})
        await interaction.response.send_message(f"{user.name}: {amount}", ephemeral=True)

    tree.add_command(admin)
    return bot


async def test_login_ready_and_sync(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    bot = await bot_harness.start(build_bot(local_runtime, "one", []))
    assert bot.is_ready() and bot.user is not None
    assert bot.user.id == fake_discord.bot_user.id
    assert bot.application_id == fake_discord.application_id
    guild = bot.get_guild(fake_discord.guild.id)
    assert guild is not None and guild.text_channels[0].name == "general"
    assert set(fake_discord.commands()) == {
        *("inspect", "render", "secret", "style", "ping", "card", "steps", "oops", "admin")
    }
    admin = fake_discord.commands()["admin"]
    assert admin["default_member_permissions"] == str(MANAGE_GUILD)
    assert admin["options"][0]["type"] == 2  # subcommand group
    paths = [(r.method, r.path) for r in fake_discord.requests]
    assert ("GET", "/api/v10/users/@me") in paths
    assert ("PUT", f"/api/v10/applications/{fake_discord.application_id}/commands") in paths
    assert fake_discord.unhandled == [] and fake_discord.errors == []


async def test_slash_options_attachment_and_ephemeral(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    seen: list[dict[str, Any]] = []
    await bot_harness.start(build_bot(local_runtime, "one", seen))
    picture = png(20, 10, "red")
    upload = fake_discord.add_attachment("cat.png", picture)
    interaction = await fake_discord.slash(
        "inspect", {"prompt": "a cat", "steps": "12", "image": upload}, user=fake_discord.admin
    )
    callback = await interaction.wait_for_callback()
    assert callback.type == 4 and callback.ephemeral and callback.flags & EPHEMERAL
    assert seen == [
        {
            "prompt": "a cat",
            "steps": 12,
            "strength": 0.5,
            "filename": "cat.png",
            "content_type": "image/png",
            "data": picture,
            "user": fake_discord.admin.id,
            "can_manage": True,
        }
    ]
    message = await interaction.wait_for_message()
    assert message.content == f"{len(picture)} bytes" and message.ephemeral
    assert interaction.response_message_id == message.id

    # attachments= with (filename, bytes); explicit permissions string; a normal member
    other = await fake_discord.slash(
        "inspect",
        {"prompt": "x", "steps": 3, "strength": 0.75},
        attachments={"image": ("dog.jpg", b"jpeg-bytes")},
        permissions="0",
    )
    await other.wait_for_callback()
    assert seen[-1]["data"] == b"jpeg-bytes" and seen[-1]["strength"] == 0.75
    assert seen[-1]["user"] == fake_discord.member.id and seen[-1]["can_manage"] is False

    secret = await fake_discord.slash("secret")
    assert (await secret.wait_for_callback()).body["data"]["flags"] == EPHEMERAL
    in_dm = await fake_discord.slash("secret", dm=True, user=fake_discord.admin)
    assert (await in_dm.wait_for_message()).guild_id is None

    # subcommand group, user option resolved to a member; hidden from non-admins
    quota = await fake_discord.slash(
        "admin quota set", {"user": fake_discord.member, "amount": 7}, user=fake_discord.admin
    )
    assert (await quota.wait_for_message()).content == "member: 7"
    assert seen[-1] == {"user": fake_discord.member.id, "name": "member", "amount": 7}
    with pytest.raises(CommandHidden):
        await fake_discord.slash(
            "admin", {"user": fake_discord.admin, "amount": 1}, subcommand="quota set"
        )
    assert fake_discord.errors == []


async def test_defer_followup_file_embed_button_and_autocomplete(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    await bot_harness.start(build_bot(local_runtime, "one", []))
    interaction = await fake_discord.slash("render", {"prompt": "a lighthouse"})
    callback = await interaction.wait_for_callback()
    assert callback.type == 5 and not callback.ephemeral
    message = await interaction.wait_for_message()
    assert [e.kind for e in interaction.events] == ["callback", "followup"]
    # the first followup after a defer edits the "thinking" message
    assert message.id == interaction.response_message_id and not message.loading
    assert [(f.filename, f.data) for f in message.files] == [("render.png", png())]
    assert message.embeds[0]["title"] == "a lighthouse"
    assert message.embeds[0]["image"]["url"] == "attachment://render.png"
    assert message.custom_ids == ["render:42"] and message.buttons[0]["label"] == "Again"
    assert interaction.events[1].files[0].filename == "render.png"

    choices = await fake_discord.autocomplete("style", "name", "an")
    assert [c["value"] for c in choices] == ["anime", "analog film"]


async def test_edits_deletes_updates_and_discord_rules(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    await bot_harness.start(build_bot(local_runtime, "one", []))
    card = await fake_discord.slash("card")
    callback = await card.wait_for_callback()
    assert callback.type == 4 and [f.filename for f in callback.files] == ["card.txt"]
    message = await card.wait_for_message()
    assert message.files[0].data == b"card-bytes" and message.custom_ids == ["card:flip"]
    flip = await fake_discord.click(message, "card:flip")
    assert (await flip.wait_for_callback()).type == 7
    assert message.content == "flipped" and message.components == [] and flip.original is message

    steps = await fake_discord.slash("steps")
    final = await steps.wait_for_message(lambda m: m.content == "private, edited")
    kinds = ["callback", "fetch", "edit", "edit", "delete", "followup", "edit"]
    assert [e.kind for e in steps.events] == kinds
    assert [f.filename for f in steps.events[3].files] == ["two.txt"]
    assert steps.events[6].message is final and final.edited is not None
    assert final.ephemeral and steps.messages == [final] and steps.original.deleted  # type: ignore[union-attr]

    # Discord: the first followup after a public defer edits the thinking message, stays public
    oops = await fake_discord.slash("oops")
    shown = await oops.wait_for_message()
    assert oops.events[-1].ephemeral and not shown.ephemeral
    assert shown.id == oops.response_message_id

    # a second acknowledgement is refused like Discord does
    url = f"{fake_discord.api_base}/interactions/{oops.id}/{oops.token}/callback"
    async with aiohttp.ClientSession() as session, session.post(url, json={"type": 5}) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == 40060
    assert oops.rejected[0].error == "400 40060: Interaction has already been acknowledged."

    with pytest.raises(LookupError, match="not synced"):
        await fake_discord.slash("nope")
    with pytest.raises(KeyError, match="no option 'colour'"):
        await fake_discord.slash("render", {"colour": "red"})
    assert fake_discord.errors == [] and fake_discord.unhandled == []


async def test_dynamic_button_survives_a_restart(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    await bot_harness.start(build_bot(local_runtime, "first", []))
    rendered = await fake_discord.slash("render", {"prompt": "a fox"})
    message = await rendered.wait_for_message(lambda m: bool(m.custom_ids))

    click = await fake_discord.click(message, "render:42", user=fake_discord.admin)
    reply = await click.wait_for_message()
    assert reply.content == "again 42 by first" and reply.ephemeral

    await bot_harness.restart(build_bot(local_runtime, "second", []))
    assert fake_discord.identify_count == 2
    again = await fake_discord.click(message.id, "render:42")
    assert (await again.wait_for_message()).content == "again 42 by second"
    assert fake_discord.commands()["render"]["id"] == rendered.payload["data"]["id"]


async def test_many_interactions_at_once(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    await bot_harness.start(build_bot(local_runtime, "one", []))
    count = 200
    interactions = await asyncio.gather(*(fake_discord.slash("ping") for _ in range(count)))
    async with asyncio.timeout(20):
        await asyncio.gather(
            *(i.wait_for_message(lambda m: m.content == "pong") for i in interactions)
        )
    assert all(i.callback_type == 5 for i in interactions)
    latencies = sorted(i.latency or 0.0 for i in interactions)
    print(
        f"\n{count} interactions at once: dispatch→callback max {latencies[-1] * 1000:.0f} ms, "
        f"median {latencies[count // 2] * 1000:.0f} ms"
    )
    assert len({i.response_message_id for i in interactions}) == count
    assert fake_discord.errors == [] and fake_discord.unhandled == []


async def test_endpoints_are_restored_and_a_bad_token_is_refused() -> None:
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with FakeDiscord(token="right") as fake, patched_discord_endpoints(fake):
        assert fake.api_base == discord.http.Route.BASE
        client = discord.Client(intents=discord.Intents.default())
        started = time.monotonic()
        with pytest.raises(discord.LoginFailure):
            await client.login("wrong")
        await client.close()
        assert time.monotonic() - started < 5
    assert base == discord.http.Route.BASE
    assert gateway == discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
