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
from bot.runtime import Runtime, open_runtime
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


class NoteModal(discord.ui.Modal, title="A note"):
    """A modal with one prefilled text input; submitting "again" answers with a second modal,
    which Discord refuses (a modal submit cannot open a modal)."""

    text: discord.ui.TextInput[NoteModal] = discord.ui.TextInput(
        label="Text", default="draft", max_length=20
    )

    def __init__(self, title: str = "A note") -> None:
        super().__init__(title=title)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        if self.text.value == "again":
            await interaction.response.send_modal(NoteModal())
        else:
            await interaction.response.send_message(f"noted: {self.text.value}", ephemeral=True)


def build_bot(runtime: Runtime, tag: str, seen: list[dict[str, Any]]) -> ImageBot:
    """An ImageBot without extensions, plus test-only commands on its tree."""
    bot = ImageBot(runtime, extensions=())
    bot.tag = tag  # type: ignore[attr-defined]
    # Commands that leave contexts and installs unset, to test Discord's defaults in the fake
    # (ImageBot itself sets them from its settings).
    bot.tree.allowed_contexts = app_commands.AppCommandContext()
    bot.tree.allowed_installs = app_commands.AppInstallationType()
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

    @tree.command(name="note", description="Open a modal")
    async def note(interaction: discord.Interaction, title: str = "A note") -> None:
        await interaction.response.send_modal(NoteModal(title))

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
        *("inspect", "render", "secret", "style", "ping", "card", "steps", "oops", "note", "admin")
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


async def test_modals_open_submit_and_follow_discord_rules(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    await bot_harness.start(build_bot(local_runtime, "one", []))
    opened = await fake_discord.slash("note")
    assert (await opened.wait_for_callback()).type == 9 and opened.messages == []
    assert opened.modal is not None and opened.modal["title"] == "A note"
    [[text_input]] = [row["components"] for row in opened.modal["components"]]
    assert text_input["type"] == 4 and text_input["value"] == "draft"

    submitted = await fake_discord.submit_modal(opened, {})
    assert submitted.type == 5
    assert submitted.payload["data"]["custom_id"] == opened.modal["custom_id"]
    reply = await submitted.wait_for_message()
    assert reply.content == "noted: draft" and reply.ephemeral

    opened = await fake_discord.slash("note")
    await opened.wait_for_callback()
    with pytest.raises(ValueError, match="longer than max_length"):
        await fake_discord.submit_modal(opened, {text_input["custom_id"]: "x" * 21})
    with pytest.raises(ValueError, match="required"):
        await fake_discord.submit_modal(opened, {text_input["custom_id"]: ""})
    again = await fake_discord.submit_modal(opened, {text_input["custom_id"]: "again"})
    await again.wait_until(lambda: again.rejected)
    assert "40004" in (again.rejected[0].error or "") and again.modal is None

    too_long = await fake_discord.slash("note", {"title": "t" * 46})
    await too_long.wait_until(lambda: too_long.rejected)
    assert "modal title must be 1-45 long" in (too_long.rejected[0].error or "")
    assert too_long.callback is None and fake_discord.errors == []


async def test_dynamic_button_survives_a_restart(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    await bot_harness.start(build_bot(local_runtime, "first", []))
    rendered = await fake_discord.slash("render", {"prompt": "a fox"})
    message = await rendered.wait_for_message(lambda m: bool(m.custom_ids))

    click = await fake_discord.click(message, "render:42", user=fake_discord.admin)
    reply = await click.wait_for_message()
    assert reply.content == "again 42 by first" and reply.ephemeral

    # the same commands: ImageBot does not sync them again
    await bot_harness.restart(build_bot(local_runtime, "second", []), expect_sync=False)
    assert fake_discord.identify_count == 2
    again = await fake_discord.click(message.id, "render:42")
    assert (await again.wait_for_message()).content == "again 42 by second"
    assert fake_discord.commands()["render"]["id"] == rendered.payload["data"]["id"]


async def test_many_interactions_at_once(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    await bot_harness.start(build_bot(local_runtime, "one", []))
    # 200 answers in one channel within a second exceed the channel's limit (50 per 10 s): this
    # test is about the burst of acknowledgements, so the channel limit is off here.
    fake_discord.channel_rate = None
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


# -- Discord at its edges ------------------------------------------------------------------------


def build_edge_bot(runtime: Runtime, seen: list[Any], gate: asyncio.Event) -> ImageBot:
    """``build_bot`` plus commands that meet Discord's limits; outcomes are appended to ``seen``
    as ``"ok"`` or ``"<status> <code>"``."""
    bot = build_bot(runtime, "edge", [])
    bot.allowed_mentions = None  # no client default, to see what the fake makes of none at all
    tree = bot.tree

    async def attempt(call: Any) -> Any:
        try:
            result = await call
        except discord.HTTPException as exc:
            seen.append(f"{exc.status} {exc.code}")
            return None
        seen.append("ok")
        return result

    @tree.command(name="hold", description="Defer, wait for the test, then answer twice")
    async def hold(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await gate.wait()
        await attempt(interaction.followup.send("late"))
        await attempt(interaction.edit_original_response(content="later"))

    @tree.command(name="post", description="Post in the channel, or DM the user")
    async def post(interaction: discord.Interaction, where: str) -> None:
        await interaction.response.defer(ephemeral=True)
        view = discord.ui.View(timeout=None).add_item(RenderButton(7))
        target: Any = interaction.user if where == "dm" else interaction.channel
        message = await attempt(target.send(f"posted in {where}", view=view))
        if message is not None:
            await attempt(message.edit(content=f"edited in {where}"))
        await interaction.followup.send("done")

    @tree.command(name="say", description="Repeat the text; allow '', 'none' or 'me' to ping")
    async def say(interaction: discord.Interaction, text: str, allow: str = "") -> None:
        mentions = {
            "": discord.utils.MISSING,
            "none": discord.AllowedMentions.none(),
            "me": discord.AllowedMentions(everyone=False, roles=False, users=[interaction.user]),
        }[allow]
        await interaction.response.send_message(text, allowed_mentions=mentions)

    @tree.command(name="embeds", description="count embeds of size characters each")
    async def embeds(interaction: discord.Interaction, count: int, size: int) -> None:
        await interaction.response.defer()
        many = [discord.Embed(description="x" * size) for _ in range(count)]
        await attempt(interaction.followup.send(embeds=many))

    @tree.command(name="files", description="count files of size MiB each")
    async def files(interaction: discord.Interaction, count: int, size: int) -> None:
        await interaction.response.defer()
        data = b"\0" * (size * 1024 * 1024)
        sent = [discord.File(io.BytesIO(data), f"f{n}.bin") for n in range(count)]
        await attempt(interaction.followup.send(files=sent))

    @tree.command(name="guildonly", description="Only in servers")
    @app_commands.allowed_contexts(guilds=True, dms=False, private_channels=False)
    async def guildonly(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("here")

    @tree.command(name="anywhere", description="Everywhere, user installs too")
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def anywhere(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("anywhere")

    @tree.command(name="owneronly", description="Administrators only")
    @app_commands.default_permissions()
    async def owneronly(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("admin")

    @tree.command(name="longstyle", description="Autocomplete with a choice too long")
    async def longstyle(interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(name)

    @longstyle.autocomplete("name")
    async def long_names(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name="n" * 101, value="v")]

    return bot


async def webhook_request(fake: FakeDiscord, method: str, interaction: Any, tail: str = "") -> Any:
    """A raw request on an interaction's webhook: (status, JSON body, headers)."""
    url = f"{fake.api_base}/webhooks/{fake.application_id}/{interaction.token}{tail}"
    payload = {"content": "raw"} if method in ("POST", "PATCH") else None
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=payload) as resp,
    ):
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body, resp.headers


async def until(check: Any, wait: float = 5.0) -> None:
    """Poll ``check()`` (for state the bot changes after the fake has answered)."""
    async with asyncio.timeout(wait):
        while not check():  # noqa: ASYNC110 - the bot's own state has no event to wait on
            await asyncio.sleep(0.01)


async def outcome(
    fake: FakeDiscord, seen: list[Any], name: str, options: dict[str, Any], wait: float = 5.0
) -> Any:
    """Run a command of ``build_edge_bot`` and return the outcome it appended."""
    before = len(seen)
    await fake.slash(name, options)
    await until(lambda: len(seen) > before, wait)
    return seen[-1]


async def test_a_token_dies_after_its_lifetime_and_dead_calls_are_counted(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    seen: list[Any] = []
    gate = asyncio.Event()
    await bot_harness.start(build_edge_bot(local_runtime, seen, gate))
    fake_discord.token_lifetime = 0.3  # like Discord's 15 minutes, shortened
    old = await fake_discord.slash("hold")
    await old.wait_for_callback()
    await asyncio.sleep(0.4)
    gate.set()
    await until(lambda: len(seen) == 2)
    assert seen == ["401 50027", "401 50027"]
    assert old.calls_after_dead == 1 and old.dead
    assert [e.error for e in old.rejected] == ["401 50027: Invalid Webhook Token"] * 2
    assert fake_discord.invalid_requests == 2

    # expire() ends a token at once, whatever its age; a live one works
    fake_discord.token_lifetime = 900.0
    gate.clear()
    seen.clear()
    alive, expired = await fake_discord.slash("hold"), await fake_discord.slash("hold")
    await alive.wait_for_callback()
    await expired.wait_for_callback()
    expired.expire()
    gate.set()
    await until(lambda: len(seen) == 4)
    assert sorted(seen) == ["401 50027", "401 50027", "ok", "ok"]
    assert alive.calls_after_dead == 0 and not alive.dead and alive.messages[0].content == "later"
    assert expired.calls_after_dead == 1

    # an unknown token is 404 10015; a message a moderator deleted is 404 10008
    status, body, _ = await webhook_request(fake_discord, "PATCH", alive, "x/messages/@original")
    assert (status, body["code"]) == (404, 10015)
    fake_discord.delete_message(alive.messages[0].id)
    status, body, _ = await webhook_request(fake_discord, "PATCH", alive, "/messages/@original")
    assert (status, body["code"]) == (404, 10008) and alive.dead
    status, _, _ = await webhook_request(fake_discord, "GET", alive, "/messages/@original")
    assert status == 404 and alive.calls_after_dead == 1
    assert fake_discord.invalid_requests == 4  # 404s do not count, 401s do
    assert fake_discord.errors == []


async def test_channel_messages_dms_and_their_refusals(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    seen: list[Any] = []
    await bot_harness.start(build_edge_bot(local_runtime, seen, asyncio.Event()))
    channel, member = fake_discord.guild.channel, fake_discord.member
    posted = await fake_discord.slash("post", {"where": "channel"})
    await posted.wait_for_message(lambda m: m.content == "done")
    [message] = fake_discord.channel_messages[channel.id]
    assert message.content == "edited in channel" and message.edited is not None
    assert fake_discord.messages[message.id] is message and message.interaction_id is None
    click = await fake_discord.click(message, "render:7")
    assert (await click.wait_for_message()).content == "again 7 by edge"

    dm = await fake_discord.slash("post", {"where": "dm"})
    await dm.wait_for_message(lambda m: m.content == "done")
    [direct] = fake_discord.dm_messages[member.id]
    assert direct.content == "edited in dm" and direct.guild_id is None
    assert direct.channel_id == fake_discord.dm_channel(member).id
    in_dm = await fake_discord.click(direct, "render:7")
    assert in_dm.payload["user"]["id"] == str(member.id) and in_dm.payload["context"] == 1
    assert (await in_dm.wait_for_message()).content == "again 7 by edge"
    assert seen == ["ok", "ok", "ok", "ok"]

    seen.clear()
    channel.can_send, member.accepts_dms = False, False
    for where in ("channel", "dm"):
        refused = await fake_discord.slash("post", {"where": where})
        await refused.wait_for_message(lambda m: m.content == "done")
    assert seen == ["403 50013", "403 50007"] and fake_discord.invalid_requests == 2
    assert len(fake_discord.channel_messages[channel.id]) == 1
    assert len(fake_discord.dm_messages[member.id]) == 1

    # a moderator deletes the channel message: the bot's edit is refused
    fake_discord.delete_message(message.id)
    url = f"{fake_discord.api_base}/channels/{channel.id}/messages/{message.id}"
    headers = {"Authorization": f"Bot {fake_discord.token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.patch(url, json={"content": "again"}) as resp,
    ):
        assert resp.status == 404 and (await resp.json())["code"] == 10008
    assert fake_discord.errors == [] and fake_discord.unhandled == []


async def test_mentions_follow_allowed_mentions(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    await bot_harness.start(build_edge_bot(local_runtime, [], asyncio.Event()))
    admin, member = fake_discord.admin, fake_discord.member
    text = f"<@{member.id}> <@!{admin.id}> @everyone [x](https://evil.example)"
    pings = {}
    for allow in ("", "none", "me"):
        said = await fake_discord.slash("say", {"text": text, "allow": allow})
        pings[allow] = await said.wait_for_message()
    assert pings[""].allowed_mentions is None  # not sent: Discord parses everything
    assert pings[""].mentions == [member.id, admin.id] and pings[""].mention_everyone
    assert pings["none"].allowed_mentions == {"parse": []}
    assert pings["none"].mentions == [] and not pings["none"].mention_everyone
    assert pings["me"].mentions == [member.id] and not pings["me"].mention_everyone

    # parse "users" together with a users list is refused, as Discord does
    said = await fake_discord.slash("say", {"text": "hi"})
    await said.wait_for_message()
    bad = {"content": "x", "allowed_mentions": {"parse": ["users"], "users": [str(member.id)]}}
    url = f"{fake_discord.api_base}/webhooks/{fake_discord.application_id}/{said.token}"
    async with aiohttp.ClientSession() as session, session.post(url, json=bad) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == 50035


async def test_webhook_and_channel_rate_limits_answer_429_with_headers(
    bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    fake = bot_harness.fake
    fake.webhook_rate, fake.channel_rate = (3, 60.0), (5, 60.0)  # windows longer than the test
    await bot_harness.start(build_edge_bot(local_runtime, [], asyncio.Event()))
    said = await fake.slash("say", {"text": "one"})
    await said.wait_for_message()
    answers = [await webhook_request(fake, "PATCH", said, "/messages/@original") for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    assert [h["X-RateLimit-Remaining"] for _, _, h in answers[:3]] == ["2", "1", "0"]
    _, body, headers = answers[3]
    assert body["global"] is False and 0 < body["retry_after"] <= 60
    assert headers["X-RateLimit-Limit"] == "3" and float(headers["X-RateLimit-Reset-After"]) > 0
    assert headers["X-RateLimit-Bucket"] == answers[0][2]["X-RateLimit-Bucket"]
    assert headers["Via"] and int(headers["Retry-After"]) >= 1
    assert [e.kind for e in said.events].count("rate_limited") == 1
    assert fake.rate_limited == fake.invalid_requests == 1

    # the channel's window counts writes of every token (and of the bot's own messages) there
    other = await fake.slash("say", {"text": "two"})
    await other.wait_for_message()
    statuses = [(await webhook_request(fake, "POST", other))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]  # 3 edits of "one" + 2 followups: the channel's 5
    assert fake.rate_limited == 2


async def test_a_429_that_outlasts_discord_py_retries(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    seen: list[Any] = []
    gate = asyncio.Event()
    gate.set()
    await bot_harness.start(build_edge_bot(local_runtime, seen, gate))
    fake_discord.force_429(5, retry_after=0.01)  # discord.py tries five times, then raises
    await fake_discord.slash("hold")
    await until(lambda: len(seen) == 2)
    assert seen == ["429 0", "ok"] and fake_discord.rate_limited == 5
    fake_discord.force_429(2, retry_after=0.01)  # fewer than five: retried, then delivered
    await fake_discord.slash("hold")
    await until(lambda: len(seen) == 4)
    assert seen[2:] == ["ok", "ok"] and fake_discord.rate_limited == 7


async def test_message_size_limits(
    fake_discord: FakeDiscord, bot_harness: BotHarness, local_runtime: Runtime
) -> None:
    seen: list[Any] = []
    await bot_harness.start(build_edge_bot(local_runtime, seen, asyncio.Event()))
    sizes = ((3, 1900), (4, 1900), (10, 600), (1, 4097))
    embeds = [
        await outcome(fake_discord, seen, "embeds", {"count": c, "size": s}) for c, s in sizes
    ]
    # 6,000 characters over all embeds of one message (exactly 6,000 is fine); description 4,096
    assert embeds == ["ok", "400 50035", "ok", "400 50035"]
    files = [  # 18 MiB pass, 27 MiB exceed 25 MiB per request
        await outcome(fake_discord, seen, "files", {"count": c, "size": 9}, 30) for c in (2, 3)
    ]
    assert files == ["ok", "413 40005"]

    with pytest.raises(TimeoutError):  # a choice name over 100 characters is refused
        await fake_discord.autocomplete("longstyle", "name", "", timeout=1.0)
    [asked] = [i for i in fake_discord.interactions.values() if i.type == 4]
    assert asked.rejected and "50035" in (asked.rejected[0].error or "")


async def test_install_contexts_and_default_permissions_decide_where_commands_show(
    fake_discord: FakeDiscord, bot_harness: BotHarness, make_settings: Any
) -> None:
    # the bot's own check lets everything through: this is about what the fake offers
    settings = make_settings(DISCORD_ALLOW_DMS="true", DISCORD_ALLOW_USER_INSTALL="true")
    async with open_runtime(settings) as runtime:
        await bot_harness.start(build_edge_bot(runtime, [], asyncio.Event()))
        assert fake_discord.commands()["guildonly"]["contexts"] == [0]
        here = await fake_discord.slash("guildonly")
        assert (await here.wait_for_message()).content == "here"
        for where in ({"dm": True}, {"private": True}, {"user_install": True}):
            with pytest.raises(CommandHidden):
                await fake_discord.slash("guildonly", **where)  # type: ignore[arg-type]
        # no contexts set: every context, but only the guild install (the app's default)
        dm = await fake_discord.slash("secret", dm=True)
        assert (await dm.wait_for_message()).content == "hush"
        with pytest.raises(CommandHidden):
            await fake_discord.slash("secret", user_install=True)
        anywhere = await fake_discord.slash("anywhere", private=True)
        assert (await anywhere.wait_for_message()).content == "anywhere"
        assert anywhere.payload["context"] == 2
        assert anywhere.payload["authorizing_integration_owners"] == {
            "1": str(fake_discord.member.id)
        }

        # default_member_permissions "0": administrators only, Manage Server is not enough
        with pytest.raises(CommandHidden):
            await fake_discord.slash("owneronly", user=fake_discord.admin)
        allowed = await fake_discord.slash("owneronly", permissions=str(1 << 3))
        assert (await allowed.wait_for_message()).content == "admin"
        with pytest.raises(CommandHidden):
            await fake_discord.autocomplete("guildonly", "name", "", dm=True)
