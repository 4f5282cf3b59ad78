"""The grid: /imagine count 2-4 answers with one numbered picture and U1-U4 / V1-V4 buttons.

End to end through the real discord.py client against the fake Discord, the real service on
the embedded backends and a real SQLite file; the composition itself is checked on its bytes.
"""

from __future__ import annotations

import io
import os
import threading

import pytest
from PIL import Image, ImageChops, ImageStat

from bot import imaging
from bot.discord_bot import ImageBot
from bot.errors import InvalidImage
from bot.imaging.grid import BACKGROUND, compose_grid, grid_shape
from bot.runtime import open_runtime
from tests.conftest import png
from tests.test_discord_imagine import SDXL, has_result, imagine

SMALL = {"model": SDXL, "width": 256, "height": 256}
UNIT_MICRO_USD = 634  # FLUX.1 schnell, 1024×1024, 4 steps


def grid_ids(message) -> list[str]:
    """The image ids under a grid, in the order of their numbers (from the U buttons)."""
    ups = [c for c in message.custom_ids if c.startswith("grid:up:")]
    return [c.split(":")[3] for c in sorted(ups)]


def decoded(file) -> Image.Image:
    image = Image.open(io.BytesIO(file.data))
    image.load()
    return image


def cells_of(grid: Image.Image, columns: int, rows: int, side: int) -> list[Image.Image]:
    gap = (grid.width - columns * side) // (columns + 1)
    return [
        grid.crop((gap + c * (side + gap), gap + r * (side + gap),
                   gap + c * (side + gap) + side, gap + r * (side + gap) + side))
        for r in range(rows)
        for c in range(columns)
    ]  # fmt: skip


def differ(a: Image.Image, b: Image.Image) -> bool:
    return max(ImageStat.Stat(ImageChops.difference(a, b)).mean) > 8


async def usage_of(runtime, fake_discord, user):
    return await runtime.ledger.user_usage(str(user.id), str(fake_discord.guild.id))


async def test_count_4_is_one_numbered_2x2_grid_and_each_image_is_charged_on_its_own(
    fake_discord, bot_harness, local_runtime
):
    await bot_harness.start(ImageBot(local_runtime))
    made = await imagine(fake_discord, {"prompt": "four lighthouses", "count": 4})
    message = await made.wait_for_message(has_result)

    [sent] = message.files  # the grid alone: no image is attached one by one
    assert sent.filename == "grid.jpg"
    grid = decoded(sent)
    assert grid.format == "JPEG" and grid.size == (2 * 1024 + 3 * 16, 2 * 1024 + 3 * 16)
    cells = cells_of(grid, 2, 2, 1024)
    assert all(differ(a, b) for i, a in enumerate(cells) for b in cells[i + 1 :])
    [embed] = message.embeds
    assert embed["image"]["url"] == "attachment://grid.jpg"
    buttons = {b["custom_id"]: b["label"] for b in message.buttons}
    ids = grid_ids(message)
    assert buttons == {
        **{f"grid:up:{n}:{image_id}": f"U{n}" for n, image_id in enumerate(ids, 1)},
        **{f"grid:vary:{n}:{image_id}": f"V{n}" for n, image_id in enumerate(ids, 1)},
    }
    assert [len(row["components"]) for row in message.components] == [4, 4]

    ledger = local_runtime.ledger
    records = await ledger.images_by_ids(ids)
    assert len({r.id for r in records}) == 4 and len({r.seed for r in records}) == 4
    for number, record in enumerate(sorted(records, key=lambda r: ids.index(r.id)), 1):
        assert f"**{number}** · [Hosted image]({record.url})" in embed["description"]
        assert record.cost_micro_usd == UNIT_MICRO_USD and not record.cached
    job = await ledger.get_job(records[0].job_id)
    assert job is not None and job.state == "settled" and job.images == 4
    assert job.micro_usd == 4 * UNIT_MICRO_USD
    assert sorted(r.id for r in await ledger.images_for_job(job.id)) == sorted(ids)  # no grid
    usage = await usage_of(local_runtime, fake_discord, fake_discord.member)
    assert (usage.images, usage.micro_usd) == (4, 4 * UNIT_MICRO_USD)
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Cost"] == "$0.002536 for 4" and fields["Left today"] == "21 images · $0.047464"
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_u2_and_v3_work_after_a_restart_with_a_new_runtime(
    fake_discord, bot_harness, make_settings
):
    settings = make_settings()
    async with open_runtime(settings) as runtime:
        await bot_harness.start(ImageBot(runtime))
        made = await imagine(fake_discord, {"prompt": "four paper boats", "count": 4})
        grid = await made.wait_for_message(has_result)
        await bot_harness.stop()
    ids = grid_ids(grid)

    async with open_runtime(settings) as runtime:  # nothing kept in memory from before
        await bot_harness.start(ImageBot(runtime), expect_sync=False)
        clicker = fake_discord.admin
        before = await usage_of(runtime, fake_discord, clicker)
        upscale = await fake_discord.click(grid, f"grid:up:2:{ids[1]}", user=clicker)
        alone = await upscale.wait_for_message(has_result)
        assert alone.id != grid.id and not alone.ephemeral and "Image **2**" in alone.content
        [embed] = alone.embeds
        assert embed["footer"]["text"] == ids[1]
        [full] = alone.files  # the image itself, full size, as a single result shows it
        assert full.filename == f"{ids[1]}.png" and decoded(full).size == (1024, 1024)
        assert sorted(alone.custom_ids) == sorted(
            f"img:{a}:{ids[1]}" for a in ("reroll", "vary", "edit", "info", "delete")
        )
        assert await usage_of(runtime, fake_discord, clicker) == before  # U is free

        vary = await fake_discord.click(grid, f"grid:vary:3:{ids[2]}", user=clicker)
        varied = await vary.wait_for_message(has_result)
        record = await runtime.ledger.get_image(varied.embeds[0]["footer"]["text"])
        assert record.source_image_id == ids[2] and record.user_id == str(clicker.id)
        job = await runtime.ledger.get_job(record.job_id)
        assert job is not None and job.state == "settled" and job.micro_usd > 0
        after = await usage_of(runtime, fake_discord, clicker)
        assert (after.images, after.micro_usd) == (1, job.micro_usd)
        assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


@pytest.mark.parametrize(("count", "shape"), [(2, (2, 1)), (3, (2, 2))])
async def test_two_side_by_side_three_in_a_2x2_with_the_fourth_cell_empty(
    fake_discord, bot_harness, local_runtime, count, shape
):
    await bot_harness.start(ImageBot(local_runtime))
    made = await imagine(fake_discord, {"prompt": "small tiles", "count": count, **SMALL})
    message = await made.wait_for_message(has_result)
    [sent] = message.files
    grid = decoded(sent)
    columns, rows = shape
    gap = 4  # cells of 256 px keep their size (never enlarged), gaps scale with them
    assert grid.size == (columns * 256 + (columns + 1) * gap, rows * 256 + (rows + 1) * gap)
    cells = cells_of(grid, columns, rows, 256)
    assert all(differ(a, b) for i, a in enumerate(cells[:count]) for b in cells[i + 1 : count])
    if count == 3:
        empty = ImageStat.Stat(cells[3]).mean
        assert all(abs(c - b) < 3 for c, b in zip(empty, BACKGROUND, strict=True))
    assert len(grid_ids(message)) == count
    assert [len(row["components"]) for row in message.components] == [count, count]


async def test_a_private_grid_stays_private_and_so_do_its_buttons(
    fake_discord, bot_harness, local_runtime
):
    await bot_harness.start(ImageBot(local_runtime))
    made = await imagine(fake_discord, {"prompt": "secret tiles", "count": 2, "private": True,
                                        **SMALL})  # fmt: skip
    grid = await made.wait_for_message(has_result)
    assert grid.ephemeral and [f.filename for f in grid.files] == ["grid.jpg"]
    ids = grid_ids(grid)
    upscale = await fake_discord.click(grid, f"grid:up:1:{ids[0]}")
    alone = await upscale.wait_for_message(has_result)
    assert alone.ephemeral and alone.embeds[0]["footer"]["text"] == ids[0]
    vary = await fake_discord.click(grid, f"grid:vary:2:{ids[1]}")
    varied = await vary.wait_for_message(has_result)
    assert varied.ephemeral
    record = await local_runtime.ledger.get_image(varied.embeds[0]["footer"]["text"])
    assert record.private and record.source_image_id == ids[1]
    channel = fake_discord.channel_messages.get(fake_discord.guild.channel.id, [])
    assert not [m for m in channel if m.files or m.embeds]  # nothing went to the channel


async def test_the_grid_is_composed_off_the_event_loop(
    fake_discord, bot_harness, local_runtime, monkeypatch
):
    loop_thread = threading.get_ident()
    threads: list[int] = []
    real = imaging.compose_grid

    def watched(*args, **kwargs):
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(imaging, "compose_grid", watched)
    await bot_harness.start(ImageBot(local_runtime))
    made = await imagine(fake_discord, {"prompt": "watched tiles", "count": 2, **SMALL})
    await made.wait_for_message(has_result)
    assert threads and loop_thread not in threads


async def test_separate_and_a_grid_that_cannot_be_made_show_each_image_with_its_buttons(
    fake_discord, bot_harness, local_runtime, monkeypatch
):
    await bot_harness.start(ImageBot(local_runtime))
    made = await imagine(fake_discord, {"prompt": "apart", "count": 2, "separate": True, **SMALL})
    message = await made.wait_for_message(has_result)
    assert len(message.embeds) == 2 and len(message.files) == 2
    assert not [c for c in message.custom_ids if c.startswith("grid:")]

    def broken(*args, **kwargs):
        raise InvalidImage("The image is corrupt or truncated and could not be decoded.")

    monkeypatch.setattr(imaging, "compose_grid", broken)
    made = await imagine(fake_discord, {"prompt": "no grid today", "count": 2, **SMALL})
    message = await made.wait_for_message(has_result)  # paid for, so shown anyway
    assert len(message.embeds) == 2 and len(message.custom_ids) == 10
    assert {f.filename.split(".")[0] for f in message.files} == {
        e["footer"]["text"] for e in message.embeds
    }


async def test_a_grid_on_cloudflare_images_reads_each_image_back_and_links_them(
    fake_discord, bot_harness, make_settings, cloudflare_env
):
    async with open_runtime(make_settings(**cloudflare_env, QUOTA_USER_DAILY_USD=1)) as runtime:
        await bot_harness.start(ImageBot(runtime))
        made = await imagine(fake_discord, {"prompt": "hosted tiles", "count": 3})
        message = await made.wait_for_message(has_result, timeout=15)
        assert [f.filename for f in message.files] == ["grid.jpg"]
        records = await runtime.ledger.images_by_ids(grid_ids(message))
        assert len(records) == 3
        description = message.embeds[0]["description"]
        assert all(r.storage_key in description for r in records)  # the hosted URLs


# -- the composition on its own --------------------------------------------------------------


def test_sources_larger_than_a_cell_are_shrunk_and_numbers_sit_in_the_corners() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    sources = [png(2048, 1536, name) for name in ("red", "lime", "blue", "yellow")]
    grid = compose_grid(sources, cell_side=1024)
    assert (grid.columns, grid.rows) == (2, 2)
    assert [(r - left, b - t) for left, t, r, b in grid.cells] == [(1024, 768)] * 4
    image = Image.open(io.BytesIO(grid.data)).convert("RGB")
    gap = 768 // 64
    assert image.size == grid.size == (2 * 1024 + 3 * gap, 2 * 768 + 3 * gap)
    for (left, top, right, bottom), colour in zip(grid.cells, colours, strict=True):
        # the top edge of the dark badge (16 px in, 69 px wide), above its number
        badge = ImageStat.Stat(image.crop((left + 36, top + 18, left + 64, top + 26))).mean
        inside = ImageStat.Stat(image.crop((right - 60, bottom - 60, right - 30, bottom - 30))).mean
        assert all(abs(i - c) < 8 for i, c in zip(inside, colour, strict=True))
        assert all(b <= 0.5 * c + 8 for b, c in zip(badge, colour, strict=True))


def test_a_grid_too_large_for_its_limit_is_re_encoded_smaller_or_refused() -> None:
    noise = Image.frombytes("RGB", (512, 512), os.urandom(512 * 512 * 3))
    out = io.BytesIO()
    noise.save(out, "PNG")
    sources = [out.getvalue()] * 4
    loose = compose_grid(sources)
    tight = compose_grid(sources, max_bytes=len(loose.data) - 1)
    assert len(tight.data) < len(loose.data)
    with pytest.raises(InvalidImage):
        compose_grid(sources, max_bytes=10_000)
    with pytest.raises(InvalidImage):
        compose_grid([png(), b"not an image"])
    with pytest.raises(ValueError, match="2 to 4"):
        grid_shape(5)
