"""The placeholder service on the embedded backends (real SQLite, real files): the path parsed
with clear refusals, one generation per slug however many ask at once, every size cut from it,
its own daily quota, and a deleted image made again."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import pytest
from PIL import Image

from bot import imaging
from bot.config import Settings
from bot.errors import InvalidRequest, QuotaExceeded
from bot.placeholders import PLACEHOLDER_USER, parse_placeholder
from bot.runtime import Runtime, open_runtime


def test_the_path_becomes_a_size_and_a_prompt() -> None:
    assert parse_placeholder("800x600", "sunglasses-sloth") == (800, 600, "sunglasses sloth")
    assert parse_placeholder("16x4096", "a_b-c") == (16, 4096, "a b c")


@pytest.mark.parametrize(
    ("size", "slug", "field"),
    [("800", "sloth", "size"), ("15x600", "sloth", "size"), ("800x4097", "sloth", "size"),
     ("0800x600x", "sloth", "size"), ("800x600", "Sloth", "slug"), ("800x600", "-sloth", "slug"),
     ("800x600", "a b", "slug"), ("800x600", "ab", "slug"), ("800x600", "x" * 201, "slug")],
)  # fmt: skip
def test_a_bad_path_names_its_part(size: str, slug: str, field: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_placeholder(size, slug)
    assert refused.value.details["field"] == field


def test_the_size_obeys_the_variant_bounds() -> None:
    bounds = imaging.VariantBounds(max_side=1000, max_pixels=500_000)
    assert parse_placeholder("1000x500", "sloth", bounds)[:2] == (1000, 500)
    with pytest.raises(InvalidRequest, match="1000 pixels"):
        parse_placeholder("1001x16", "sloth", bounds)
    with pytest.raises(InvalidRequest, match="500,000 pixels"):
        parse_placeholder("1000x501", "sloth", bounds)


async def placeholder_images(runtime: Runtime) -> int:
    return (await runtime.ledger.user_usage(PLACEHOLDER_USER)).images


async def test_one_generation_per_slug_and_every_size_cut_from_it(local_runtime: Runtime) -> None:
    service = local_runtime.placeholders
    firsts = await asyncio.gather(
        *(service.image_for("sleepy-otter", "sleepy otter", redo_by=None) for _ in range(20))
    )
    assert len({image.id for image in firsts}) == 1
    assert await placeholder_images(local_runtime) == 1
    again = await service.image_for("sleepy-otter", "sleepy otter", redo_by=None)
    assert again.id == firsts[0].id
    assert again.metadata["placeholder"] == "sleepy-otter"
    for width, height in ((800, 600), (16, 4096), (123, 45)):
        data, content_type = await service.render(again, width, height)
        with Image.open(io.BytesIO(data)) as picture:
            assert (picture.size, content_type) == ((width, height), "image/png")
    assert await placeholder_images(local_runtime) == 1  # sizes cost nothing


async def test_anonymous_placeholders_stop_at_their_own_daily_quota(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_runtime(make_settings(PLACEHOLDER_DAILY_IMAGES=2)) as runtime:
        service = runtime.placeholders
        for slug in ("red-fox", "blue-jay"):
            await service.image_for(slug, slug.replace("-", " "), redo_by=None)
        with pytest.raises(QuotaExceeded):
            await service.image_for("green-frog", "green frog", redo_by=None)
        await service.image_for("red-fox", "red fox", redo_by=None)  # known slugs still serve
        assert await placeholder_images(runtime) == 2
        # A user's own quota is not touched by anonymous placeholders.
        assert (await runtime.ledger.user_usage("u1")).images == 0


async def test_a_deleted_placeholder_image_is_made_again(local_runtime: Runtime) -> None:
    service = local_runtime.placeholders
    first = await service.image_for("lost-kite", "lost kite", redo_by=None)
    await local_runtime.service.delete_image(first.id, requester_id=PLACEHOLDER_USER)
    second = await service.image_for("lost-kite", "lost kite", redo_by=None)
    assert second.id != first.id
    assert await local_runtime.ledger.placeholder("lost-kite") == second.id
