"""Delete and moderation mean gone, and private results stay private: on the local store (its
web server over a real socket) and on Cloudflare Images (the fake Cloudflare over sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from bot.config import Settings
from bot.errors import BotError, NotFound
from bot.requests import GenerateRequest
from bot.runtime import Runtime, open_runtime
from bot.service import ImageService
from tests.conftest import CountingProvider
from tests.test_web import serve

PROMPT = "a lighthouse at dusk"


def ask(user_id: str, **fields: Any) -> GenerateRequest:
    return GenerateRequest(prompt=PROMPT, user_id=user_id, guild_id="g1", **fields)


@pytest.fixture(params=["local", "cloudflare"])
async def backend(
    request: pytest.FixtureRequest,
    make_settings: Callable[..., Settings],
    cloudflare_env: dict[str, str],
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    """A runtime on one store, and an HTTP client that fetches its image URLs for real."""
    env = cloudflare_env if request.param == "cloudflare" else {}
    async with open_runtime(make_settings(**env)) as runtime:
        runner, base = await serve(runtime)
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                if request.param == "local":
                    runtime = _with_base(runtime, base)
                yield runtime, http
        finally:
            await runner.cleanup()


def _with_base(runtime: Runtime, base: str) -> Runtime:
    """The local store hands out URLs on the test server's real port."""
    runtime.store.base_url = base  # type: ignore[attr-defined]
    return runtime


async def status_of(http: httpx.AsyncClient, url: str) -> int:
    return (await http.get(url)).status_code


async def test_an_owners_delete_kills_its_url_and_the_cache_hit_keeps_its_own_copy(backend):
    runtime, http = backend
    service, store = runtime.service, runtime.store
    original = (await service.generate(ask("u1"))).images[0]
    hit = (await service.generate(ask("u2"))).images[0]
    assert hit.cached and hit.url == original.url  # shared bytes, shared URL
    picture = (await http.get(original.url)).content

    await service.delete_image(original.id, requester_id="u1")

    assert await status_of(http, original.url) == 404  # dead on the store itself
    with pytest.raises(NotFound):
        await store.get(original.storage_key)
    kept = await runtime.ledger.get_image(hit.id)
    assert not kept.is_deleted and kept.url != original.url
    served = await http.get(kept.url)
    assert served.status_code == 200 and served.content == picture
    third = (await service.generate(ask("u3"))).images[0]  # the cache now leads to u2's copy
    assert third.cached and third.storage_key == kept.storage_key

    await service.delete_image(hit.id, requester_id="u2")
    assert await status_of(http, kept.url) == 404  # u2's URL (shared with u3) died...
    u3 = await runtime.ledger.get_image(third.id)  # ...u3 got a copy at a URL of their own
    assert u3.url != kept.url and await status_of(http, u3.url) == 200
    await service.delete_image(third.id, requester_id="u3")
    assert await status_of(http, u3.url) == 404  # the last owner's delete removes the bytes
    assert not (await service.generate(ask("u4"))).cached


async def test_a_moderators_delete_takes_down_every_copy(backend):
    runtime, http = backend
    service = runtime.service
    original = (await service.generate(ask("u1"))).images[0]
    hits = [(await service.generate(ask(user))).images[0] for user in ("u2", "u3")]

    await service.delete_image(hits[0].id, requester_id="mod", is_admin=True)

    for image in (original, *hits):
        assert (await runtime.ledger.get_image(image.id)).is_deleted
    assert await status_of(http, original.url) == 404
    with pytest.raises(NotFound):
        await runtime.store.get(original.storage_key)
    assert not (await service.generate(ask("u4"))).cached


async def test_a_failed_store_delete_leaves_the_image_live_and_a_retry_finishes(
    make_settings, cloudflare_env, fake_cloudflare
):
    async with open_runtime(make_settings(**cloudflare_env)) as runtime:
        service = runtime.service
        original = (await service.generate(ask("u1"))).images[0]
        await service.generate(ask("u2"))
        hit = (await service.generate(ask("u2"))).images[0]
        fake_cloudflare.inject("403", path_contains="/images/v1/" + original.storage_key)
        with pytest.raises(BotError):
            await service.delete_image(original.id, requester_id="u1")
        assert not (await runtime.ledger.get_image(original.id)).is_deleted
        assert original.storage_key in fake_cloudflare.images
        await service.delete_image(original.id, requester_id="u1")
        assert original.storage_key not in fake_cloudflare.images
        kept = await runtime.ledger.get_image(hit.id)
        assert kept.storage_key in fake_cloudflare.images
        # a moderator's delete that the store refuses marks nothing deleted
        fake_cloudflare.inject("403", path_contains="/images/v1/" + kept.storage_key)
        with pytest.raises(BotError):
            await service.delete_image(kept.id, requester_id="mod", is_admin=True)
        assert not (await runtime.ledger.get_image(kept.id)).is_deleted
        assert kept.storage_key in fake_cloudflare.images


async def test_a_private_result_is_never_another_users_cache_hit(local_runtime):
    service = local_runtime.service
    mine = (await service.generate(ask("u1", private=True))).images[0]
    for other in (ask("u2"), ask("u2", private=True)):
        theirs = (await service.generate(other)).images[0]
        assert not theirs.cached and theirs.storage_key != mine.storage_key
    again = (await service.generate(ask("u1", private=True))).images[0]
    assert again.cached and again.storage_key == mine.storage_key  # the owner's own cache
    public = (await service.generate(ask("u3"))).images[0]
    assert public.storage_key != mine.storage_key


async def test_single_flight_never_joins_two_users_private_requests(make_settings):
    provider = CountingProvider(delay=0.3)
    async with open_runtime(make_settings()) as runtime:
        service = ImageService(
            ledger=runtime.ledger, provider=provider, store=runtime.store,
            catalog=runtime.catalog, scheduler=runtime.service.scheduler,
            default_model=runtime.settings.default_model,
            enhance_model=runtime.settings.enhance_model,
        )  # fmt: skip
        results = await asyncio.gather(
            service.generate(ask("u1", private=True)),
            service.generate(ask("u2", private=True)),
            service.generate(ask("u3")),
            service.generate(ask("u4")),  # joins u3: both public in g1
        )
        keys = [r.images[0].storage_key for r in results]
        assert provider.calls == 3
        assert len({keys[0], keys[1], keys[2]}) == 3 and keys[3] == keys[2]


async def test_every_sharer_deleting_at_once_leaves_no_bytes_and_no_live_record(
    backend, fake_cloudflare
):
    runtime, http = backend
    service = runtime.service
    images = [(await service.generate(ask(f"u{n}"))).images[0] for n in range(8)]
    assert len({i.storage_key for i in images}) == 1
    outcomes = await asyncio.gather(
        *(service.delete_image(i.id, requester_id=i.user_id) for i in images),
        return_exceptions=True,
    )
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    for image in images:
        assert (await runtime.ledger.get_image(image.id)).is_deleted
    assert await status_of(http, images[0].url) == 404
    folder = runtime.settings.data_dir / "images"
    assert not [p for p in folder.rglob("img_*") if p.is_file()]  # no copy left behind...
    assert not fake_cloudflare.images  # ...on either store


async def test_a_private_result_is_not_the_servers_to_reuse_by_id(local_runtime):
    """A shared result of the server works as another member's starting image and shows in the
    server's gallery; a private one is its owner's alone."""

    def made(user_id: str, prompt: str, **fields: Any) -> GenerateRequest:
        return GenerateRequest(prompt=prompt, user_id=user_id, guild_id="g1", **fields)

    service, gallery = local_runtime.service, local_runtime.gallery
    shared = (await service.generate(made("u1", "a shared kite"))).images[0]
    private = (await service.generate(made("u1", "a secret kite", private=True))).images[0]
    assert private.private and not shared.private
    assert (await local_runtime.ledger.get_image(private.id)).private  # stored as such
    assert (await service.visible_image(shared.id, "u2", "g1")).id == shared.id
    with pytest.raises(NotFound):
        await service.visible_image(private.id, "u2", "g1")
    assert (await service.visible_image(private.id, "u1", "g1")).id == private.id
    with pytest.raises(NotFound):  # nor as someone else's starting image
        await service.generate(made("u2", "a variation", image_id=private.id))
    server_view = await gallery.page("u9", "g1", server=True, page=0, per_page=10)
    assert [i.id for i in server_view.images] == [shared.id]
    own_view = await gallery.page("u1", "g1", server=False, page=0, per_page=10)
    assert {i.id for i in own_view.images} == {shared.id, private.id}
