"""CloudflareAPI, CloudflareProvider and CloudflareImagesStore against the fake, over sockets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import logging
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from bot import cloudflare_api
from bot.catalog import load_catalog
from bot.cloudflare_api import (
    AccountLimiter,
    CloudflareAPI,
    next_utc_midnight,
)
from bot.cloudflare_limits import SlidingWindowLimiter
from bot.errors import (
    BotError,
    ContentFlagged,
    DailyAllocationExhausted,
    NotFound,
    PaidPlanRequired,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    StoreError,
)
from bot.http_headers import retry_after_seconds
from bot.providers.base import ImageRequest
from bot.providers.cloudflare import CloudflareProvider
from bot.stores import cloudflare as store_module
from bot.stores.cloudflare import CloudflareImagesStore, fit_metadata
from tests.fakes.cloudflare import FakeCloudflare, FilePart

TOKEN = "cfut_SECRET-token-7f3a9c2e5b1d"
ACCOUNT = "acct0123456789"
HASH = "hashAbC123"
SIGNING_KEY = "images-signing-key-42"
CATALOG = load_catalog(None)
SCHNELL = "@cf/black-forest-labs/flux-1-schnell"
SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
PHOENIX = "@cf/leonardo/phoenix-1.0"
LUCID = "@cf/leonardo/lucid-origin"
IMG2IMG = "@cf/runwayml/stable-diffusion-v1-5-img2img"
FLUX2_DEV = "@cf/black-forest-labs/flux-2-dev"
KLEIN = "@cf/black-forest-labs/flux-2-klein-4b"
LLAMA = "@cf/meta/llama-3.1-8b-instruct-fp8-fast"


def png_bytes(size: int = 16, colour: str = "blue") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


class FakeClock:
    """A monotonic clock that only moves when something sleeps on it; records the sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class RecordingSleep:
    """Records backoff delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def fake():
    async with FakeCloudflare(account_id=ACCOUNT, api_token=TOKEN, account_hash=HASH) as server:
        yield server


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0, connect=1.0)) as client:
        yield client


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


def make_api(fake, http, sleep, **overrides) -> CloudflareAPI:
    options = {"account_id": ACCOUNT, "api_token": TOKEN, "base_url": fake.api_base}
    options.update(overrides)
    return CloudflareAPI(http, sleep=sleep, **options)


@pytest.fixture
def api(fake, http, sleeps) -> CloudflareAPI:
    return make_api(fake, http, sleeps)


@pytest.fixture
def provider(api) -> CloudflareProvider:
    return CloudflareProvider(api)


@pytest.fixture
def store(api, fake) -> CloudflareImagesStore:
    return CloudflareImagesStore(api, account_hash=HASH, delivery_url=fake.delivery_base)


@pytest.fixture
def signed_store(api, fake) -> CloudflareImagesStore:
    fake.signing_key = SIGNING_KEY
    return CloudflareImagesStore(
        api, account_hash=HASH, delivery_url=fake.delivery_base, signing_key=SIGNING_KEY
    )


def image_request(model_id: str, **values) -> ImageRequest:
    spec = CATALOG.get(model_id)
    small = 1024 if spec.fixed_size else 256
    fields = {"prompt": "a red fox", "width": small, "height": small, "steps": spec.default_steps}
    fields.update(values)
    return ImageRequest(model=spec, **fields)


def last_ai_body(fake):
    return fake.ai_requests()[-1].body


# --- request building ---------------------------------------------------------------------


async def test_schnell_sends_only_prompt_and_steps_and_jpeg_in_envelope_is_sniffed(provider, fake):
    image = await provider.generate(
        image_request(SCHNELL, seed=5, negative_prompt="blurry", guidance=3.0)
    )
    call = fake.ai_requests()[-1]
    assert call.path == f"/client/v4/accounts/{ACCOUNT}/ai/run/{SCHNELL}"
    assert call.content_type == "application/json"
    assert call.body == {"prompt": "a red fox", "steps": 4}
    assert "authorization" not in {k.lower() for k in call.headers}
    assert (image.format, image.content_type) == ("jpeg", "image/jpeg")
    assert image.data.startswith(b"\xff\xd8\xff")


async def test_sdxl_json_body_uses_num_steps_and_raw_png(provider, fake):
    image = await provider.generate(
        image_request(SDXL, seed=7, negative_prompt="blurry", guidance=6.5, steps=12)
    )
    assert last_ai_body(fake) == {
        "prompt": "a red fox",
        "num_steps": 12,
        "width": 256,
        "height": 256,
        "seed": 7,
        "negative_prompt": "blurry",
        "guidance": 6.5,
    }
    assert (image.format, image.content_type) == ("png", "image/png")
    assert Image.open(io.BytesIO(image.data)).size == (256, 256)


@pytest.mark.parametrize("negative", ["", "   ", None])
async def test_empty_negative_prompt_is_never_sent(provider, fake, negative):
    image = await provider.generate(image_request(PHOENIX, negative_prompt=negative))
    body = last_ai_body(fake)
    assert "negative_prompt" not in body
    assert body["guidance"] == 2.0  # the catalog default when the request has none
    assert image.format == "jpeg"


async def test_img2img_sends_image_b64_and_strength(provider, fake):
    init = png_bytes()
    await provider.generate(image_request(IMG2IMG, init_image=init, strength=0.4))
    body = last_ai_body(fake)
    assert base64.b64decode(body["image_b64"]) == init
    assert body["strength"] == 0.4


async def test_flux2_is_multipart_with_string_fields_and_input_image(provider, fake):
    init = png_bytes()
    image = await provider.generate(
        image_request(FLUX2_DEV, seed=9, guidance=3.5, steps=10, init_image=init)
    )
    call = fake.ai_requests()[-1]
    assert call.content_type == "multipart/form-data"
    assert call.body == {
        "prompt": "a red fox",
        "steps": "10",
        "width": "256",
        "height": "256",
        "seed": "9",
        "guidance": "3.5",
        "input_image_0": FilePart("image.png", "image/png", init),
    }
    assert image.format == "png"


async def test_klein_bare_prompt_is_still_multipart_without_steps(provider, fake):
    await provider.generate(image_request(KLEIN))
    call = fake.ai_requests()[-1]
    assert call.content_type == "multipart/form-data"
    assert call.body == {"prompt": "a red fox", "width": "256", "height": "256"}


async def test_fake_flux2_rejects_json_and_it_is_not_retried(api, fake):
    with pytest.raises(ProviderRejected, match="multipart"):
        await api.request("POST", f"/ai/run/{FLUX2_DEV}", json={"prompt": "x"})
    assert fake.ai_calls == 1


@pytest.mark.parametrize("model_id", [m.id for m in CATALOG.enabled_image_models()])
async def test_every_catalog_image_model_generates(provider, fake, model_id):
    image = await provider.generate(image_request(model_id))
    assert image.format in {"png", "jpeg"}
    assert fake.ai_calls == 1


async def test_init_image_for_text_only_model_is_refused_before_any_call(provider, fake):
    with pytest.raises(BotError, match="starting image"):
        await provider.generate(image_request(SDXL, init_image=png_bytes()))
    assert fake.ai_calls == 0


async def test_unknown_model_is_rejected_by_name(provider, fake):
    spec = replace(CATALOG.get(SDXL), id="@cf/nobody/no-such-model")
    with pytest.raises(ProviderRejected, match="no-such-model"):
        await provider.generate(replace(image_request(SDXL), model=spec))
    assert fake.ai_calls == 1


# --- response shapes ----------------------------------------------------------------------


async def test_image_typed_answer_for_a_json_model_works(provider, fake):
    fake.inject("wrong_type_image")
    image = await provider.generate(image_request(SCHNELL))
    assert image.format == "jpeg"
    assert fake.ai_calls == 1


async def test_json_envelope_for_a_raw_image_model_works(provider, fake):
    fake.inject("wrong_type_json")
    image = await provider.generate(image_request(SDXL))
    assert image.format == "png"
    assert fake.ai_calls == 1


async def test_lucid_envelope_png(provider):
    image = await provider.generate(image_request(LUCID))
    assert image.content_type == "image/png"


async def test_not_an_image_is_a_provider_error_without_retry(provider, fake):
    fake.inject("not_image")
    with pytest.raises(ProviderError, match="not an image") as caught:
        await provider.generate(image_request(SDXL))
    assert not isinstance(caught.value, ProviderUnavailable)
    assert fake.ai_calls == 1


@pytest.mark.parametrize(
    "body", [{"result": {}}, {"result": {"image": "!!not base64!!"}}, {"result": None}, []]
)
def test_envelope_without_a_valid_image_is_malformed(body):
    with pytest.raises(ProviderError, match="malformed"):
        CloudflareProvider._decode_envelope(body)


async def test_malformed_json_is_retried_once(provider, fake):
    fake.inject("malformed")
    await provider.generate(image_request(SCHNELL))
    assert fake.ai_calls == 2


async def test_malformed_json_twice_gives_up(provider, fake, sleeps):
    fake.inject("malformed", times=2)
    with pytest.raises(ProviderUnavailable, match="broken response"):
        await provider.generate(image_request(SCHNELL))
    assert fake.ai_calls == 2


# --- retries --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["429", "500", "3040"])
async def test_retryable_faults_are_retried_then_succeed(provider, fake, sleeps, kind):
    fake.inject(kind, times=2, retry_after=0.25)
    image = await provider.generate(image_request(SDXL))
    assert image.format == "png"
    assert fake.ai_calls == 3
    assert len(sleeps.delays) == 2


async def test_retry_after_is_honoured(provider, fake, sleeps):
    fake.inject("429", retry_after=7)
    await provider.generate(image_request(SDXL))
    # The account limiter waits out the pause (measured from when it began).
    assert sleeps.delays == [pytest.approx(7.0, abs=0.5)]


async def test_retry_after_beyond_the_budget_gives_up_at_once(fake, http, sleeps):
    provider = CloudflareProvider(make_api(fake, http, sleeps, max_total_seconds=5))
    fake.inject("429", retry_after=30)
    with pytest.raises(ProviderRateLimited) as caught:
        await provider.generate(image_request(SDXL))
    assert caught.value.retry_after == 30
    assert fake.ai_calls == 1
    assert sleeps.delays == []


async def test_backoff_is_full_jitter_and_capped(api):
    for attempt in range(1, 10):
        delay = api.backoff(attempt)
        assert 0 <= delay <= min(api.backoff_max, api.backoff_base * 2 ** (attempt - 1))


async def test_daily_allocation_is_not_retried(provider, fake, sleeps):
    fake.inject("3036")
    with pytest.raises(DailyAllocationExhausted) as caught:
        await provider.generate(image_request(SDXL))
    assert "00:00 UTC" in str(caught.value)
    assert caught.value.resets_at == next_utc_midnight()
    assert fake.ai_calls == 1
    assert sleeps.delays == []


def test_next_utc_midnight():
    now = datetime(2025, 3, 31, 23, 59, tzinfo=UTC)
    assert next_utc_midnight(now) == datetime(2025, 4, 1, tzinfo=UTC)
    assert next_utc_midnight(now + timedelta(minutes=1)) == datetime(2025, 4, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("400", ProviderRejected, "incomplete request"),
        ("401", ProviderAuthError, "credentials were refused"),
        ("403", ProviderAuthError, "credentials were refused"),
        ("5035", PaidPlanRequired, "needs the Workers Paid plan"),
        ("5016", PaidPlanRequired, "needs the Workers Paid plan"),
        ("413", ProviderRejected, "too large"),
    ],
)
async def test_client_errors_are_not_retried(provider, fake, sleeps, kind, error, message):
    fake.inject(kind)
    with pytest.raises(error, match=message):
        await provider.generate(image_request(SDXL))
    assert fake.ai_calls == 1
    assert sleeps.delays == []


async def test_wrong_token_is_an_auth_error(fake, http, sleeps):
    provider = CloudflareProvider(make_api(fake, http, sleeps, api_token="wrong"))
    with pytest.raises(ProviderAuthError):
        await provider.generate(image_request(SDXL))
    with pytest.raises(ProviderAuthError):
        await provider.check()
    assert len(fake.calls) == 2


async def test_flagged_content_is_retried_once(provider, fake):
    fake.inject("3030")
    await provider.generate(image_request(SDXL))
    assert fake.ai_calls == 2


async def test_flagged_content_twice_raises_content_flagged(provider, fake):
    fake.inject("3030", times=3)
    with pytest.raises(ContentFlagged, match="Try rewording it"):
        await provider.generate(image_request(SDXL))
    assert fake.ai_calls == 2


async def test_retries_are_bounded(provider, fake, sleeps):
    fake.fault_rate = 1.0
    fake.fault_kinds = ("500", "3040")
    with pytest.raises(ProviderUnavailable, match="not answering") as caught:
        await provider.generate(image_request(SDXL))
    assert not isinstance(caught.value, ProviderRateLimited)
    assert fake.ai_calls == 4
    assert len(sleeps.delays) == 3


async def test_rate_limited_until_the_end_is_rate_limited(provider, fake):
    fake.inject("429", times=4, retry_after=1)
    with pytest.raises(ProviderRateLimited):
        await provider.generate(image_request(SDXL))
    assert fake.ai_calls == 4


@pytest.fixture
async def quick_http():
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.2, connect=1.0)) as client:
        yield client


async def test_timeout_is_retried(fake, quick_http, sleeps):
    provider = CloudflareProvider(make_api(fake, quick_http, sleeps))
    fake.inject("timeout")
    await provider.generate(image_request(SDXL))
    assert fake.ai_calls == 2


async def test_timeouts_until_the_end_give_up(fake, quick_http, sleeps):
    provider = CloudflareProvider(make_api(fake, quick_http, sleeps, max_attempts=2))
    fake.inject("timeout", times=2)
    with pytest.raises(ProviderUnavailable, match="not answering"):
        await provider.generate(image_request(SDXL))
    assert fake.ai_calls == 2


async def test_total_time_is_bounded_even_with_a_slow_client_timeout(fake, http, sleeps):
    provider = CloudflareProvider(make_api(fake, http, sleeps, max_total_seconds=0.3))
    fake.inject("timeout")
    started = asyncio.get_running_loop().time()
    with pytest.raises(ProviderUnavailable):
        await provider.generate(image_request(SDXL))
    assert asyncio.get_running_loop().time() - started < 1.5
    assert fake.ai_calls == 1


async def test_connection_refused_is_retried_then_unavailable(http, sleeps):
    api = CloudflareAPI(
        http, account_id=ACCOUNT, api_token=TOKEN, base_url="http://127.0.0.1:9", sleep=sleeps
    )
    with pytest.raises(ProviderUnavailable):
        await CloudflareProvider(api).check()
    with pytest.raises(ProviderUnavailable):
        await api.request("GET", "/ai/models/search")
    assert len(sleeps.delays) == 3


async def test_token_never_leaks_into_logs_or_errors(fake, http, sleeps, caplog):
    caplog.set_level(logging.DEBUG)
    api = make_api(fake, http, sleeps)
    provider = CloudflareProvider(api)
    store = CloudflareImagesStore(api, account_hash=HASH, delivery_url=fake.delivery_base)
    errors: list[BaseException] = []
    faults = {"400": 1, "401": 1, "3036": 1, "413": 1, "not_image": 1, "malformed": 2}
    faults |= {"3030": 2, "500": 4, "429": 4}
    for kind, times in faults.items():
        fake.inject(kind, times=times)
        try:
            await provider.generate(image_request(SDXL))
        except BotError as exc:
            errors.append(exc)
    fake.inject("500", times=4, path_contains="/images")
    for call in (store.put("img_1", png_bytes(), "image/png", {}), store.get("missing")):
        try:
            await call
        except BotError as exc:
            errors.append(exc)
    bad = CloudflareProvider(make_api(fake, http, sleeps, api_token=TOKEN[::-1]))
    try:
        await bad.check()
    except BotError as exc:
        errors.append(exc)
    assert len(errors) == 12
    texts = [caplog.text, repr(api), repr(store)]
    texts += [f"{e!s} {e!r} {e.details} {e.__cause__!r} {e.__context__!r}" for e in errors]
    assert caplog.records
    for text in texts:
        assert TOKEN not in text
        assert TOKEN[::-1] not in text


def test_safe_text_strips_secrets_urls_and_control_characters(api):
    text = api._safe_text(f"bad {TOKEN} at https://x.example/{ACCOUNT}\n\x00 now " + "z" * 500)
    assert TOKEN not in text and ACCOUNT not in text and "https://" not in text
    assert "\n" not in text and len(text) <= 160


async def test_retries_are_logged_at_info_with_status_and_attempt(provider, fake, caplog):
    caplog.set_level(logging.INFO, logger="bot.cloudflare_api")
    fake.inject("3040")
    await provider.generate(image_request(SDXL))
    (record,) = [
        r for r in caplog.records if r.levelno == logging.INFO and r.name == "bot.cloudflare_api"
    ]
    assert "status 429" in record.getMessage()
    assert "code 3040" in record.getMessage()
    assert "attempt 1/4" in record.getMessage()


# --- text model and health ---------------------------------------------------------------


async def test_complete_sends_messages_and_reads_usage(provider, fake):
    answer = await provider.complete(
        CATALOG.get(LLAMA), "You improve prompts.", "a fox", max_tokens=120
    )
    assert answer.text.endswith("a fox")
    assert (answer.input_tokens, answer.output_tokens) == (21, 9)
    assert last_ai_body(fake) == {
        "messages": [
            {"role": "system", "content": "You improve prompts."},
            {"role": "user", "content": "a fox"},
        ],
        "max_tokens": 120,
        "temperature": 0.7,
    }


async def test_complete_estimates_tokens_without_usage(provider, fake):
    fake.text_usage = False
    answer = await provider.complete(CATALOG.get(LLAMA), "abcd", "efgh1", max_tokens=50)
    assert answer.input_tokens == 3  # ceil(9 / 4)
    assert answer.output_tokens == -(-len(answer.text) // 4)


async def test_provider_check(provider, fake):
    await provider.check()
    assert fake.calls[-1].path.endswith("/ai/models/search")
    assert fake.calls[-1].body == {"per_page": "1"}


# --- limiter --------------------------------------------------------------------------------


async def test_limiter_lets_720_start_and_makes_the_721st_wait():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(720, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(720):
        await limiter.acquire()
    assert clock.sleeps == []
    clock.now += 10
    await limiter.acquire()
    assert clock.sleeps == [50.0]
    assert clock.now == start + 60
    assert limiter._times.maxlen == 720  # memory stays bounded
    assert list(limiter._times) == [start + 60]  # the first 720 starts left the window


async def test_limiter_waiters_are_served_in_order():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, window=10, clock=clock, sleep=clock.sleep)
    order: list[int] = []

    async def start(n: int) -> None:
        await limiter.acquire()
        order.append(n)

    await asyncio.gather(*(start(n) for n in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert clock.now == 1000 + 20


async def test_account_limiter_counts_a_slot_until_a_window_after_its_answer():
    clock = FakeClock()
    limiter = AccountLimiter(3, window=10, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        async with limiter.slot("generation"):
            clock.now += 1  # answered one second after it was sent
    assert clock.now == 1003 and clock.sleeps == []
    async with limiter.slot("storage"):  # the first answer (t=1001) leaves the window at 1011
        assert clock.now == 1011
    assert limiter._times.maxlen == 3  # memory stays bounded


async def test_account_limiter_waits_for_requests_still_in_flight():
    clock = FakeClock()
    limiter = AccountLimiter(2, window=10, clock=clock, sleep=clock.sleep)
    release = asyncio.Event()
    entered: list[float] = []

    async def slow() -> None:
        async with limiter.slot("generation"):
            await release.wait()

    async def late() -> None:
        async with limiter.slot("storage"):
            entered.append(clock.now)

    slow_calls = [asyncio.create_task(slow()) for _ in range(2)]
    waiting = asyncio.create_task(late())
    for _ in range(5):
        await asyncio.sleep(0)
    assert entered == []  # both slots are in flight, with no answer yet
    clock.now += 100
    release.set()
    await asyncio.gather(*slow_calls, waiting)
    assert entered == [1100 + 10]  # a window after the first answer


async def test_account_limiter_takes_turns_between_generation_and_storage():
    clock = FakeClock()
    limiter = AccountLimiter(1, window=10, clock=clock, sleep=clock.sleep)
    order: list[str] = []

    async def call(name: str) -> None:
        async with limiter.slot("storage" if name.startswith("s") else "generation"):
            order.append(name)

    # Six generations queue before two uploads; once the uploads wait, they go every other turn
    # (g0 went at once, g1 was already at the front when the uploads arrived).
    await asyncio.gather(*(call(f"g{n}") for n in range(6)), call("s0"), call("s1"))
    assert order == ["g0", "g1", "s0", "g2", "s1", "g3", "g4", "g5"]
    assert clock.now == 1000 + 7 * 10


async def test_account_limiter_pause_holds_back_every_kind():
    clock = FakeClock()
    limiter = AccountLimiter(100, window=10, clock=clock, sleep=clock.sleep)
    limiter.pause(300)
    assert limiter.paused_for == 300
    async with limiter.slot("generation"):
        assert clock.now == 1300
    limiter.pause(30)
    async with limiter.slot("storage"):
        assert clock.now == 1330


async def test_a_429_on_generation_pauses_storage_too(fake, http):
    clock = FakeClock()
    api = make_api(fake, http, clock.sleep, clock=clock, max_total_seconds=5)
    provider = CloudflareProvider(api)
    store = CloudflareImagesStore(api, account_hash=HASH, delivery_url=fake.delivery_base)
    fake.inject("429", retry_after=30)
    with pytest.raises(ProviderRateLimited):  # 30 s is past this call's 5 s budget
        await provider.generate(image_request(SDXL))
    blocked_at = clock.now
    await store.put("img_after", png_bytes(), "image/png", {})
    assert clock.now >= blocked_at + 30  # the upload waited out the account's block
    assert [c.path.rsplit("/", 2)[-2:] for c in fake.calls][-1] == ["images", "v1"]


async def test_a_call_that_fails_while_the_account_is_paused_past_its_budget_gives_up(fake):
    clock = FakeClock()
    api: CloudflareAPI | None = None

    async def another_call_meets_the_block(response: httpx.Response) -> None:
        assert api is not None
        api.account.pause(300)

    hooks = {"response": [another_call_meets_the_block]}
    async with httpx.AsyncClient(timeout=2.0, event_hooks=hooks) as client:
        api = make_api(fake, client, clock.sleep, clock=clock, max_total_seconds=5)
        fake.inject("500", path_contains="/images/")
        with pytest.raises(StoreError):
            await CloudflareImagesStore(api, account_hash=HASH).get("img_x")
    # 300 s of pause is past the call's 5 s budget: it gives up now instead of waiting for it.
    assert clock.sleeps == [] and len(fake.calls) == 1


async def test_a_429_without_retry_after_pauses_for_the_block_period(fake, http):
    clock = FakeClock()
    api = make_api(
        fake, http, clock.sleep, clock=clock, account_block_seconds=300, max_total_seconds=600
    )
    fake.inject("429", retry_after=None)
    await CloudflareProvider(api).generate(image_request(SDXL))  # retried after the block
    assert clock.sleeps == [300.0]
    assert fake.ai_calls == 2


async def test_capacity_429_pauses_only_the_call_that_met_it(provider, fake, sleeps, api):
    fake.inject("3040")
    await provider.generate(image_request(SDXL))
    assert api.account.paused_for == 0  # 3040 is this model's capacity, not the account's limit


@pytest.mark.parametrize("kind", ["500", "3040", "429"])
async def test_retry_after_is_honoured_on_every_status_that_carries_it(
    provider, fake, sleeps, kind
):
    fake.inject(kind, retry_after=3, retry_after_on_any_status=True)
    await provider.generate(image_request(SDXL))
    assert sleeps.delays == [pytest.approx(3.0, abs=0.5)]


def test_retry_after_ms_wins_over_retry_after():
    response = httpx.Response(429, headers={"retry-after-ms": "1500", "retry-after": "9"})
    assert retry_after_seconds(response) == 1.5
    assert retry_after_seconds(httpx.Response(429, headers={"retry-after-ms": "x"})) is None


async def test_fake_cloudflare_enforces_the_account_limit_on_every_route(fake, http):
    fake.account_limit, fake.account_window, fake.account_block_seconds = 3, 60.0, 60.0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    base = f"{fake.api_base}/accounts/{ACCOUNT}"
    for _ in range(3):
        assert (await http.get(f"{base}/images/v1/stats", headers=headers)).status_code == 200
    over = await http.get(f"{base}/images/v1/stats", headers=headers)
    assert over.status_code == 429
    assert 59 < float(over.headers["retry-after"]) <= 60
    # Blocked: every route, generation included, for the whole block period.
    run = await http.post(f"{base}/ai/run/{SDXL}", json={"prompt": "x"}, headers=headers)
    assert run.status_code == 429 and run.json()["errors"][0]["code"] == 971
    assert (fake.api_requests, fake.account_429s) == (5, 2)


async def test_api_rate_limits_only_rate_limited_calls(fake, http):
    clock = FakeClock()
    api = make_api(fake, http, clock.sleep, clock=clock, text_to_image_per_minute=2)
    provider = CloudflareProvider(api)
    for _ in range(3):
        await provider.generate(image_request(SDXL))
    assert clock.sleeps == [60.0]
    for _ in range(3):
        await provider.check()
    assert clock.sleeps == [60.0]
    assert fake.ai_calls == 3


# --- Cloudflare Images ----------------------------------------------------------------------


async def test_put_without_signing_key_uses_our_id(store, fake, http):
    data = png_bytes()
    stored = await store.put("img_abc", data, "image/png", {"prompt": "a fox", "user": "42"})
    assert stored.key == "img_abc"
    assert stored.url == f"{fake.delivery_base}/{HASH}/img_abc/public"
    call = fake.calls[-1]
    assert call.content_type == "multipart/form-data"
    assert call.body["id"] == "img_abc"
    assert "requireSignedURLs" not in call.body
    assert call.body["file"] == FilePart("img_abc.png", "image/png", data)
    assert fake.images["img_abc"] == (data, {"prompt": "a fox", "user": "42"}, False)
    response = await http.get(stored.url)
    assert response.status_code == 200
    assert response.content == data
    flexible = await http.get(store.url("img_abc", "w=400,h=300,fit=cover"))
    assert flexible.content == data


async def test_put_trims_huge_metadata_to_1024_bytes(store, fake):
    metadata = {"prompt": "é" * 5000, "emoji": "🦊" * 400, "user": "42"}
    metadata.update({f"key{i}": "v" * 60 for i in range(40)})
    await store.put("img_big", png_bytes(), "image/png", metadata)
    sent = fake.calls[-1].body["metadata"]
    assert len(sent.encode()) <= 1024
    assert json.loads(sent)["user"] == "42"
    assert "img_big" in fake.images


def test_fit_metadata_always_fits():
    rng = random.Random(7)
    alphabet = 'abcxyz é漢🦊"\\\n'
    for _ in range(100):
        meta = {
            "".join(rng.choices(alphabet, k=rng.randint(1, 300))): "".join(
                rng.choices(alphabet, k=rng.randint(0, 900))
            )
            for _ in range(rng.randint(0, 30))
        }
        meta["image_id"] = "img_0123456789"
        encoded = fit_metadata(meta, keep={"image_id"})
        assert len(encoded.encode()) <= 1024
        assert json.loads(encoded)["image_id"] == "img_0123456789"
    small = {"a": "b"}
    assert json.loads(fit_metadata(small)) == small


def test_fit_metadata_keeps_json_values_exactly_or_drops_them_whole():
    own = {"ref": "a-42", "n": 7, "ok": True, "nested": {"tags": ["a", 1, None]}}
    meta = {"image_id": "img_0123456789", "user": "42", "metadata": own}
    assert json.loads(fit_metadata(meta, keep={"image_id"})) == meta  # numbers stay numbers
    too_big = {**meta, "metadata": {**own, "pad": "x" * 1000}}
    fitted = json.loads(fit_metadata(too_big, keep={"image_id"}))
    assert "metadata" not in fitted  # never cut into: kept exactly or not at all
    assert fitted == {"image_id": "img_0123456789", "user": "42"}


async def test_put_twice_with_the_same_id_reuses_the_first_upload(store, fake):
    first = await store.put("img_dup", png_bytes(), "image/png", {})
    second = await store.put("img_dup", png_bytes(), "image/png", {})
    assert first == second
    assert fake.uploads == 2
    assert list(fake.images) == ["img_dup"]


async def test_put_with_signing_key_requires_signed_urls(signed_store, fake, http):
    data = png_bytes(colour="green")
    stored = await signed_store.put("img_sig", data, "image/png", {"prompt": "p"})
    body = fake.calls[-1].body
    assert body["requireSignedURLs"] == "true"
    assert "id" not in body
    assert json.loads(body["metadata"]) == {"image_id": "img_sig", "prompt": "p"}
    assert stored.key != "img_sig"
    assert fake.images[stored.key].require_signed

    url = urlsplit(stored.url)
    query = parse_qs(url.query)
    (exp,), (sig,) = query["exp"], query["sig"]
    path = url.path.removeprefix("/delivery")
    assert path == f"/{HASH}/{stored.key}/public"
    expected = hmac.new(SIGNING_KEY.encode(), f"{path}?exp={exp}".encode(), hashlib.sha256)
    assert sig == expected.hexdigest()
    assert abs(int(exp) - (datetime.now(UTC).timestamp() + 7 * 24 * 3600)) < 5

    assert (await http.get(stored.url)).content == data
    unsigned = f"{fake.delivery_base}/{HASH}/{stored.key}/public"
    assert (await http.get(unsigned)).status_code == 403
    assert (await http.get(stored.url.replace(sig, "0" * 64))).status_code == 403


async def test_signed_url_expires(api, fake, http):
    fake.signing_key = SIGNING_KEY
    old = CloudflareImagesStore(
        api,
        account_hash=HASH,
        delivery_url=fake.delivery_base,
        signing_key=SIGNING_KEY,
        clock=lambda: 1_000_000.0,
    )
    stored = await old.put("img_old", png_bytes(), "image/png", {})
    assert (await http.get(stored.url)).status_code == 403


def test_url_format_escapes_percent_and_uses_fixed_clock(api):
    store = CloudflareImagesStore(api, account_hash="h", delivery_url="https://cdn.example/")
    assert (
        store.url("a%b", "w=400,h=300,fit=cover")
        == "https://cdn.example/h/a%25b/w=400,h=300,fit=cover"
    )
    signed = CloudflareImagesStore(
        api, account_hash="h", signing_key="k", signed_url_ttl_seconds=60, clock=lambda: 100.5
    )
    digest = hmac.new(b"k", b"/h/a%25b/public?exp=160", hashlib.sha256).hexdigest()
    assert signed.url("a%b") == f"https://imagedelivery.net/h/a%25b/public?exp=160&sig={digest}"


async def test_get_delete_and_find(store, fake):
    data = png_bytes(colour="red")
    await store.put("img_1", data, "image/png", {})
    assert await store.get("img_1") == data
    assert await store.find("img_1") == "img_1"
    assert await store.find("img_none") is None
    await store.delete("img_1")
    assert "img_1" not in fake.images
    await store.delete("img_1")  # already gone: fine
    with pytest.raises(NotFound):
        await store.get("img_1")


@pytest.mark.parametrize("meta_key", ["meta", "metadata"])
async def test_find_with_signing_key_searches_the_listing(signed_store, fake, meta_key):
    fake.meta_key = meta_key
    keys = [
        (await signed_store.put(f"img_{n}", png_bytes(), "image/png", {})).key for n in range(3)
    ]
    assert await signed_store.find("img_1") == keys[1]
    assert await signed_store.find("img_missing") is None
    listing = [c for c in fake.calls if c.path.endswith("/images/v2")]
    assert listing[0].body == {"per_page": "100", "sort_order": "desc"}


async def test_find_reads_at_most_three_pages(signed_store, fake, monkeypatch):
    monkeypatch.setattr(store_module, "_FIND_PAGE_SIZE", 2)
    keys = [
        (await signed_store.put(f"img_{n}", png_bytes(), "image/png", {})).key for n in range(7)
    ]
    assert await signed_store.find("img_2") == keys[2]  # third page, newest first
    listing = [c for c in fake.calls if c.path.endswith("/images/v2")]
    assert [c.body.get("continuation_token") for c in listing] == [None, "2", "4"]
    assert await signed_store.find("img_0") is None  # fourth page: not searched
    assert len([c for c in fake.calls if c.path.endswith("/images/v2")]) == 6


async def test_store_check(store, fake):
    await store.check()
    assert fake.calls[-1].path.endswith("/images/v1/stats")


@pytest.mark.parametrize("kind", ["500", "401", "413", "400"])
async def test_store_failures_are_store_errors(store, fake, kind):
    fake.inject(kind, times=4, path_contains="/images")
    with pytest.raises(StoreError) as caught:
        await store.put("img_x", png_bytes(), "image/png", {})
    assert not isinstance(caught.value, ProviderError)


async def test_store_failures_on_every_call(store, fake, http, sleeps):
    await store.put("img_y", png_bytes(), "image/png", {})
    fake.fault_rate, fake.fault_kinds, fake.fault_path = 1.0, ("500",), "/images"
    for call in (store.get("img_y"), store.delete("img_y"), store.find("img_y"), store.check()):
        with pytest.raises(StoreError):
            await call
    broken = CloudflareImagesStore(
        make_api(fake, http, sleeps, api_token="nope"), account_hash=HASH
    )
    fake.fault_rate = 0.0
    with pytest.raises(StoreError, match="credentials"):
        await broken.check()


async def test_store_retries_transient_faults(store, fake):
    fake.inject("500", path_contains="/images/v1")
    await store.put("img_r", png_bytes(), "image/png", {})
    assert fake.uploads == 2
    assert "img_r" in fake.images


def test_provider_error_map_for_a_non_model_404():
    failure = cloudflare_api.Failure("GET", "/ai/models/search", "http", status=404)
    assert "endpoint" in str(cloudflare_api.provider_error(failure))
