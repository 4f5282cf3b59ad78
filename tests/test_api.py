"""The HTTP API over real sockets on 127.0.0.1: the same service, quotas and ledger as Discord."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
from aiohttp import web
from PIL import Image

from bot.config import Settings
from bot.runtime import Runtime, open_runtime
from bot.web.app import build_web_app
from tests.conftest import FAKE_SIGNING_KEY, SECRETS, CountingProvider, png

# The ledger-level tests run on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_ledgers

SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"


@dataclass
class ApiClient:
    runtime: Runtime
    http: httpx.AsyncClient
    key: str
    user_id: str
    base_url: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return await self.http.post(path, json=body, headers=headers, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return await self.http.get(path, headers=headers, **kwargs)

    async def delete(self, path: str) -> httpx.Response:
        return await self.http.delete(path, headers=self.auth)


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    async def no_secret_in_responses(request: web.Request, response: web.StreamResponse) -> None:
        body = getattr(response, "body", None)
        if isinstance(body, bytes):
            assert not any(s.encode() in body for s in SECRETS), request.path

    app.on_response_prepare.append(no_secret_in_responses)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def start_api(make_settings: Callable[..., Settings]):
    """Start a runtime + the web app with these settings; yields a factory of clients."""
    stack: list[Any] = []

    async def start(user_id: str = "42", guild_id: str = "", **env: Any) -> ApiClient:
        context = open_runtime(make_settings(**env))
        runtime = await context.__aenter__()
        runner, base = await serve(build_web_app(runtime))
        http = httpx.AsyncClient(base_url=base, timeout=30)
        stack.append((context, runner, http))
        _, plaintext = await runtime.keys.create(user_id=user_id, guild_id=guild_id, name="t")
        return ApiClient(runtime, http, plaintext, user_id, base)

    yield start
    for context, runner, http in reversed(stack):
        await http.aclose()
        await runner.cleanup()
        await context.__aexit__(None, None, None)


@pytest.fixture
async def api(start_api) -> AsyncIterator[ApiClient]:
    client = await start_api()
    yield client


async def test_generate_returns_the_image_record_field_by_field(api):
    response = await api.post("/api/generate", {"prompt": "a lighthouse at dusk",
                                                 "metadata": {"campaign": "spring"}})  # fmt: skip
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"].startswith("img_")
    assert body["prompt"] == "a lighthouse at dusk"
    assert body["model"] == "@cf/black-forest-labs/flux-1-schnell"
    assert body["storage_key"] == body["id"]
    assert body["url"].endswith(f"/images/{body['id']}/public")
    assert (body["width"], body["height"]) == (1024, 1024)
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None
    assert body["user_id"] == "42"
    assert body["cost"] == 0.000634 and body["cost_micro_usd"] == 634
    assert body["cached"] is False and body["is_deleted"] is False
    assert body["metadata"] == {"campaign": "spring"}
    again = await api.post("/api/generate", {"prompt": "a lighthouse at dusk"})
    assert again.status_code == 201 and again.json()["cached"] is True
    assert again.json()["cost"] == 0


@pytest.mark.parametrize(
    ("body", "status", "error", "field"),
    [
        ({"prompt": "ab"}, 400, "Invalid prompt", "prompt"),
        ({"prompt": 5}, 400, "Invalid prompt", "prompt"),
        ({}, 400, "Invalid prompt", "prompt"),
        ({"prompt": "a red fox", "model": "nope"}, 400, "Invalid model", "model"),
        ({"prompt": "a red fox", "width": 512}, 400, "Invalid request", "width"),
        ({"prompt": "a red fox", "steps": True}, 400, "Invalid request", "steps"),
        ({"prompt": "a red fox", "colour": "red"}, 400, "Invalid request", "colour"),
        ({"prompt": "a red fox", "seed": -1}, 400, "Invalid request", "seed"),
        ({"prompt": "a red fox", "metadata": "a"}, 400, "Invalid request", "metadata"),
        ({"prompt": "a red fox", "metadata": {"a": "b" * 1017}}, 400, "Invalid request",
         "metadata"),
        ({"prompt": "a red fox", "image_id": "img_0000"}, 404, "Not found", None),
        ({"prompt": "a red fox", "template_id": "nope"}, 404, "Not found", None),
        ({"prompt": "a red fox", "count": 2}, 400, "Invalid request", "count"),
    ],
)
async def test_bad_generate_requests(api, body, status, error, field):
    response = await api.post("/api/generate", body)
    assert response.status_code == status
    payload = response.json()
    assert payload["error"] == error
    assert payload["details"]["message"]
    if field:
        assert payload["details"]["field"] == field
    if error == "Invalid model":
        assert payload["details"]["model"] == "nope"
    assert (await api.runtime.ledger.user_usage("42")).images == 0


async def test_malformed_bodies_are_clear_4xx(api):
    cases = [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"prompt=a+cat", "application/x-www-form-urlencoded", 415),
        (json.dumps({"prompt": "x" * 200_000}).encode(), "application/json", 413),
    ]
    for content, content_type, status in cases:
        response = await api.http.post(
            "/api/generate", content=content,
            headers={**api.auth, "Content-Type": content_type},
        )  # fmt: skip
        assert response.status_code == status, content[:20]
        assert set(response.json()) == {"error", "details"}


async def test_authentication_failures(api):
    missing = await api.http.post("/api/generate", json={"prompt": "a red fox"})
    wrong = await api.http.post("/api/generate", json={"prompt": "a red fox"},
                                headers={"Authorization": "Bearer cfib_wrong"})  # fmt: skip
    basic = await api.http.get("/api/images", headers={"Authorization": "Basic abc"})
    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response.json()["error"] == "Unauthorized"
    keys = await api.runtime.keys.list("42")
    await api.runtime.keys.revoke(keys[0].id, requester_id="42")
    revoked = await api.get("/api/images")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["details"]["message"]
    public = await api.http.get("/api/models")
    assert public.status_code == 200


async def test_keys_are_stored_only_as_hashes(api):
    [key] = await api.runtime.keys.list("42")
    assert key.key_hash == hashlib.sha256(api.key.encode()).hexdigest()
    rows = await api.runtime.ledger.database.all("SELECT * FROM api_keys")
    assert api.key not in json.dumps([dict(r) for r in rows])


async def test_over_quota_is_403_with_the_limit_and_reset(start_api):
    api = await start_api(QUOTA_USER_DAILY_IMAGES=1)
    assert (await api.post("/api/generate", {"prompt": "first one"})).status_code == 201
    response = await api.post("/api/generate", {"prompt": "second one"})
    assert response.status_code == 403
    details = response.json()["details"]
    assert response.json()["error"] == "Quota exceeded"
    assert details["limit"] == "user_daily_images"
    assert datetime.fromisoformat(details["resets_at"]).hour == 0


async def test_rate_limit_per_key(start_api):
    api = await start_api(API_RATE_PER_MINUTE=3)
    for _attempt in range(3):  # fixed clock minutes: again with a new key if one began mid-way
        minute = int(time.time()) // 60
        statuses = [(await api.get("/api/images")).status_code for _ in range(4)]
        if int(time.time()) // 60 == minute:
            break
        _, api.key = await api.runtime.keys.create(user_id=api.user_id, name="again")
    assert statuses == [200, 200, 200, 429]
    limited = await api.get("/api/images")
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"] == "Too many requests"


async def test_idempotency_key_is_charged_once(api):
    headers = {"Idempotency-Key": "order-17"}
    first = await api.post("/api/generate", {"prompt": "a paper crane", "fresh": True},
                           headers=headers)  # fmt: skip
    second = await api.post("/api/generate", {"prompt": "a paper crane", "fresh": True},
                            headers=headers)  # fmt: skip
    assert first.json()["id"] == second.json()["id"]
    assert (await api.runtime.ledger.user_usage("42")).images == 1


async def test_images_listing_paging_get_and_delete(start_api):
    api = await start_api()
    other = await start_api(user_id="7")
    ids = [(await api.post("/api/generate", {"prompt": f"picture number {n}"})).json()["id"]
           for n in range(3)]  # fmt: skip
    page = (await api.get("/api/images", params={"limit": 2})).json()
    assert [i["id"] for i in page["images"]] == ids[::-1][:2]
    rest = (await api.get("/api/images", params={"limit": 2, "before": page["next"]})).json()
    assert [i["id"] for i in rest["images"]] == ids[:1] and rest["next"] is None
    assert (await api.get(f"/api/images/{ids[0]}")).json()["id"] == ids[0]
    # The other key lives in another runtime; use it against this server's ledger too.
    _, other_plain = await api.runtime.keys.create(user_id="7", name="other")
    stranger = {"Authorization": f"Bearer {other_plain}"}
    assert (await api.http.get(f"/api/images/{ids[0]}", headers=stranger)).status_code == 404
    assert (await api.http.delete(f"/api/images/{ids[0]}", headers=stranger)).status_code == 404
    deleted = await api.delete(f"/api/images/{ids[0]}")
    assert deleted.status_code == 200 and deleted.json()["is_deleted"] is True
    assert (await api.get(f"/api/images/{ids[0]}")).status_code == 404
    served = await api.http.get(f"/images/{ids[0]}/public")
    assert served.status_code == 404
    assert other.user_id == "7"


async def test_models_are_public_with_prices(api):
    models = (await api.http.get("/api/models")).json()["models"]
    schnell = next(m for m in models if m["id"].endswith("flux-1-schnell"))
    assert schnell["cost_per_image"] == 0.000634 and schnell["speed_seconds"] > 0
    assert "text-to-image" in schnell["capabilities"]
    assert (schnell["price_published"], schnell["price_source"]) == (True, "cloudflare")
    assert schnell["price_note"] is None
    assert not any("llama" in m["id"] for m in models)
    sdxl = next(m for m in models if m["id"] == SDXL)
    assert (sdxl["price_published"], sdxl["price_source"]) == (False, "default")
    assert sdxl["cost_per_image"] == 0.002 and "not published" in sdxl["price_note"]


async def test_templates_crud_and_use(start_api):
    api = await start_api(guild_id="555")
    created = await api.post("/api/templates", {"name": "Ink", "prompt": "ink sketch of {prompt}",
                                                "model": SDXL})  # fmt: skip
    assert created.status_code == 201
    template = created.json()
    assert template["id"].startswith("tpl_") and template["model"] == SDXL
    assert (await api.post("/api/templates", {"name": "ink", "prompt": "again"})).status_code == 409
    listed = (await api.get("/api/templates")).json()["templates"]
    assert [t["name"] for t in listed] == ["Ink"]
    used = await api.post("/api/generate", {"prompt": "a whale", "template_id": template["id"],
                                            "width": 512, "height": 512})  # fmt: skip
    assert used.json()["prompt"] == "ink sketch of a whale" and used.json()["model"] == SDXL
    assert (await api.get(f"/api/templates/{template['id']}")).json()["name"] == "Ink"
    assert (await api.delete(f"/api/templates/{template['id']}")).status_code == 200
    assert (await api.get(f"/api/templates/{template['id']}")).status_code == 404


async def test_cost_analytics(start_api):
    api = await start_api(guild_id="555")
    for n in range(2):
        await api.post("/api/generate", {"prompt": f"analytics picture {n}"})
    await api.post("/api/generate", {"prompt": "free one", "model": SDXL, "width": 256,
                                     "height": 256})  # fmt: skip
    report = (await api.get("/api/analytics/costs")).json()
    # SDXL's price is not published: it is charged at the operator's default, $0.002.
    assert report["total_images"] == 3 and report["total_cost"] == 0.003268
    assert report["average_cost"] == 0.001089  # 3,268 / 3 µ$, rounded down to the micro-dollar
    assert report["by_model"][SDXL] == {"images": 1, "cost": 0.002}
    assert sum(d["images"] for d in report["by_day"].values()) == 3
    server = await api.get("/api/analytics/costs", params={"scope": "server"})
    assert server.status_code == 403
    bad = await api.get("/api/analytics/costs", params={"from": "2026-13-01"})
    assert bad.status_code == 400 and bad.json()["details"]["field"] == "from"


async def test_admin_keys_see_the_servers_costs(start_api):
    api = await start_api(user_id="999", guild_id="555", BOT_ADMIN_IDS="999")
    await api.post("/api/generate", {"prompt": "an admin's picture"})
    server = await api.get("/api/analytics/costs", params={"scope": "server"})
    assert server.status_code == 200 and server.json()["total_images"] == 1


async def test_upload_multipart_and_by_url(start_api):
    api = await start_api(ALLOW_PRIVATE_URLS="true")
    files = {"file": ("cat.png", png(200, 100), "image/png")}
    uploaded = await api.http.post("/api/upload", files=files, headers=api.auth)
    assert uploaded.status_code == 201
    image = uploaded.json()["image"]
    assert (image["width"], image["height"], image["kind"]) == (200, 100, "upload")
    hosted = await api.http.get(f"/images/{uploaded.json()['id']}/public")
    assert hosted.content == png(200, 100)
    by_url = await api.post("/api/upload", {"url": f"{api.base_url}/images/{image['id']}/public"})
    assert by_url.status_code == 201 and by_url.json()["image"]["width"] == 200
    img2img = await api.post("/api/generate", {"prompt": "make it blue",
                                               "image_id": uploaded.json()["id"]})  # fmt: skip
    assert img2img.json()["source_image_id"] == uploaded.json()["id"]
    bad = await api.http.post("/api/upload", files={"file": ("x.png", b"nope", "image/png")},
                              headers=api.auth)  # fmt: skip
    assert bad.status_code == 400 and bad.json()["details"]["field"] == "image"
    missing = await api.http.post("/api/upload", files={"other": ("x", b"1")}, headers=api.auth)
    assert missing.status_code == 400 and missing.json()["details"]["field"] == "file"


async def test_upload_by_url_refuses_private_addresses_by_default(api):
    response = await api.post("/api/upload", {"url": f"{api.base_url}/healthz"})
    assert response.status_code == 400
    assert response.json()["details"]["code"] == "unsafe_url"
    plain_http = await api.post("/api/upload", {"url": "http://93.184.216.34/cat.png"})
    assert plain_http.status_code == 400


class WebhookReceiver:
    """A local endpoint that records signed webhook deliveries."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read()))
        self.arrived.set()
        return web.Response(text="ok")


async def test_batch_runs_items_and_signs_its_webhook(start_api):
    api = await start_api(ALLOW_PRIVATE_URLS="true")
    receiver = WebhookReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner, base = await serve(app)
    try:
        prompts = ["a red kite", "a blue kite", "ab"]  # the last one is invalid
        accepted = await api.post("/api/batch/generate",
                                  {"prompts": prompts, "webhook_url": f"{base}/hook"})  # fmt: skip
        assert accepted.status_code == 202
        batch_id = accepted.json()["id"]
        await asyncio.wait_for(receiver.arrived.wait(), 30)
        [(headers, body)] = receiver.deliveries
        [key] = await api.runtime.keys.list("42")
        expected = hmac.new(key.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Signature-256"], f"sha256={expected}")
        payload = json.loads(body)
        assert payload["id"] == batch_id and payload["status"] == "done"
        assert [i["status"] for i in payload["items"]] == ["done", "done", "failed"]
        assert payload["items"][2]["error"]["code"] == "invalid_prompt"
        assert payload["items"][0]["image"]["prompt"] == "a red kite"
        # The hook has the body before the sender has its answer and records the delivery.
        for _ in range(600):
            polled = (await api.get(f"/api/batch/{batch_id}")).json()
            if polled["webhook"]["state"] != "pending":
                break
            await asyncio.sleep(0.05)
        assert polled["counts"] == {"queued": 0, "running": 0, "done": 2, "failed": 1}
        assert polled["webhook"] == {"state": "delivered", "attempts": 1}
        assert (await api.runtime.ledger.user_usage("42")).images == 2
    finally:
        await runner.cleanup()


async def test_batch_bigger_than_what_remains_is_refused_whole(start_api):
    api = await start_api(QUOTA_USER_DAILY_IMAGES=2)
    refused = await api.post("/api/batch/generate", {"prompts": ["one a", "two b", "three c"]})
    assert refused.status_code == 403 and "Nothing was started" in refused.json()["details"][
        "message"]  # fmt: skip
    assert (await api.runtime.ledger.user_usage("42")).images == 0
    private_hook = {"prompts": ["one a"], "webhook_url": "http://127.0.0.1:9/x"}
    private = await api.post("/api/batch/generate", private_hook)
    assert private.status_code == 400 and private.json()["details"]["field"] == "webhook_url"
    other = await api.get("/api/batch/bat_nope")
    assert other.status_code == 404


async def test_placeholder_generates_once_and_serves_exact_sizes(start_api):
    api = await start_api()
    provider = CountingProvider()
    api.runtime.service.provider = provider
    first = await api.http.get("/800x600/sunglasses-sloth")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(first.content)).size == (800, 600)
    second = await api.http.get("/300x300/sunglasses-sloth")
    assert Image.open(io.BytesIO(second.content)).size == (300, 300)
    assert provider.calls == 1  # one generation serves every size
    assert first.headers["X-Image-Id"] == second.headers["X-Image-Id"]
    record = await api.runtime.ledger.get_image(first.headers["X-Image-Id"])
    assert record.prompt == "sunglasses sloth" and record.prompt_used != record.prompt
    assert record.user_id == "placeholder"
    no_key = await api.http.get("/800x600/sunglasses-sloth?redo")
    assert no_key.status_code == 401
    redone = await api.http.get("/800x600/sunglasses-sloth?redo", headers=api.auth)
    assert redone.status_code == 200 and provider.calls == 2
    assert redone.headers["X-Image-Id"] != first.headers["X-Image-Id"]
    assert (await api.runtime.ledger.get_image(redone.headers["X-Image-Id"])).user_id == "42"


@pytest.mark.parametrize("path", ["/10x600/small", "/5000x600/huge", "/800x600/Bad_Slug!",
                                  "/800x600/ab", "/0x0/zero"])  # fmt: skip
async def test_bad_placeholder_paths_get_a_page_of_examples(api, path):
    response = await api.http.get(path)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "/800x600/sunglasses-sloth" in response.text


async def test_concurrent_placeholder_misses_generate_once(start_api):
    api = await start_api()
    provider = CountingProvider(delay=0.2)
    api.runtime.service.provider = provider
    responses = await asyncio.gather(*(api.http.get(f"/{w}x200/racing-snail")
                                       for w in (100, 200, 300, 400)))  # fmt: skip
    assert all(r.status_code == 200 for r in responses) and provider.calls == 1


async def test_anonymous_placeholders_have_their_own_quota(start_api):
    api = await start_api(PLACEHOLDER_DAILY_IMAGES=0)
    response = await api.http.get("/400x300/tiny-dragon")
    assert response.status_code == 403 and response.json()["error"] == "Quota exceeded"
    assert (await api.runtime.ledger.usage("all", "")).images == 0


async def test_health(api):
    response = await api.http.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


async def test_unknown_routes_and_methods_are_json(api):
    missing = await api.get("/api/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]
    wrong_method = await api.http.put("/api/generate", headers=api.auth)
    assert wrong_method.status_code == 405 and "Allow" in wrong_method.headers


async def test_keys_without_a_server_keep_personal_templates(start_api):
    api = await start_api()
    created = await api.post("/api/templates", {"name": "mine", "prompt": "pastel {prompt}"})
    assert created.status_code == 201
    used = await api.post("/api/generate", {"prompt": "a snail", "template_id": "mine"})
    assert used.json()["prompt"] == "pastel a snail"
    _, other = await api.runtime.keys.create(user_id="7", name="other")
    theirs = await api.http.get("/api/templates", headers={"Authorization": f"Bearer {other}"})
    assert theirs.json()["templates"] == []


async def test_unicode_oddities_are_cleaned_or_refused_never_a_500(api):
    headers = {**api.auth, "Content-Type": "application/json"}
    cases = {
        b'{"\\ud800": 1, "prompt": "abc"}': 400,
        b'{"prompt": "a \\ud800 cat \\u0000 \\u202e dog"}': 201,
        b'{"prompt": "\\u0000\\u0000\\u0000"}': 400,
        b'{"prompt": "\\ufeffa\\u200bb"}': 400,
    }
    for content, status in cases.items():
        response = await api.http.post("/api/generate", content=content, headers=headers)
        assert response.status_code == status, content
    made = await api.http.post("/api/generate", content=b'{"prompt": "a \\ud800 cat \\u0000 dog"}',
                               headers=headers)  # fmt: skip
    assert made.json()["prompt"] == "a cat dog"


async def test_get_on_the_batch_submission_path_is_405(api):
    response = await api.get("/api/batch/generate")
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    assert (await api.get("/api/batch/not-a-batch-id")).status_code == 404


async def test_api_links_are_signed_when_served_and_work_after_7_days(
    start_api, cloudflare_env, fake_cloudflare, monkeypatch
):
    """With a signing key, on Cloudflare Images: what /api/images/{id} and /api/images return
    a week and a day later is signed then, so it is served (the fake checks exp)."""
    offset = [0.0]

    def moved_clock() -> float:
        return time.time() + offset[0]

    fake_cloudflare.signing_key = FAKE_SIGNING_KEY
    fake_cloudflare.clock = moved_clock
    api = await start_api(**cloudflare_env, CLOUDFLARE_IMAGES_SIGNING_KEY=FAKE_SIGNING_KEY)
    monkeypatch.setattr(api.runtime.store, "_clock", moved_clock)
    made = (await api.post("/api/generate", {"prompt": "a harbour at dawn"})).json()
    files = {"file": ("a.png", png(), "image/png")}
    upload = (await api.http.post("/api/upload", headers=api.auth, files=files)).json()
    async with httpx.AsyncClient() as delivery:
        for link in (made["url"], upload["url"]):
            assert (await delivery.get(link)).status_code == 200

        offset[0] = 8 * 24 * 3600.0
        assert (await delivery.get(made["url"])).status_code == 403  # the old link expired
        listed = (await api.get("/api/images")).json()
        links = [
            (await api.get(f"/api/images/{image_id}")).json()["url"]
            for image_id in (made["id"], upload["id"])
        ]
        links += [image["url"] for image in listed["images"]]
        assert len(links) == 4
        for link in links:
            assert (await delivery.get(link)).status_code == 200, link


async def test_an_api_result_is_recorded_as_delivered_by_the_api(api):
    body = (await api.post("/api/generate", {"prompt": "a weather vane"})).json()
    image = await api.runtime.ledger.get_image(body["id"])
    assert await api.runtime.service.delivery_of(image.job_id) == "api"
