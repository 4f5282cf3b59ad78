"""Content rules over the HTTP API and on Workers AI: the fake Cloudflare's Llama Guard decides
by prompt content and bills tokens; a refused prompt is a 403 "Content refused" naming the
category with only the check charged; the check is recorded and priced as a model call;
Cloudflare's own flagged-content error is a refusal and is refunded; a failed check lets
nothing through and charges nothing. Also the verdict parser and the offline stand-in."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from bot.catalog import Cost
from bot.config import Settings
from bot.errors import ConfigError, InvalidRequest
from bot.moderation import category_names, offline_verdict, verdict_of
from bot.runtime import Runtime, open_runtime
from bot.web.app import build_web_app
from tests.test_api import ApiClient, serve

GUARD = "@cf/meta/llama-guard-3-8b"
SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
FLUX_USD = 634


@pytest.fixture
async def start_api(make_settings: Callable[..., Settings]) -> AsyncIterator[Any]:
    stack: list[Any] = []

    async def start(**env: Any) -> ApiClient:
        context = open_runtime(make_settings(**{"MODERATION_MODEL": GUARD, **env}))
        runtime = await context.__aenter__()
        runner, base = await serve(build_web_app(runtime))
        http = httpx.AsyncClient(base_url=base, timeout=30)
        stack.append((context, runner, http))
        _, plaintext = await runtime.keys.create(user_id="42", guild_id="g1", name="t")
        return ApiClient(runtime, http, plaintext, "42", base)

    yield start
    for context, runner, http in reversed(stack):
        await http.aclose()
        await runner.cleanup()
        await context.__aexit__(None, None, None)


async def jobs(runtime: Runtime) -> list[dict[str, Any]]:
    rows = await runtime.ledger.database.all(
        "SELECT kind, state, model, micro_usd, milli_neurons, params, note, error_code "
        "FROM jobs ORDER BY created_at"
    )
    return [dict(r) | {"params": json.loads(r["params"])} for r in rows]


def guard_nano(words: int, unsafe: bool) -> int:
    """The fake Llama Guard's bill: 212 template tokens + 1 per word in at $0.48/M; 6 tokens
    out (12 when unsafe) at $0.03/M."""
    return (212 + words) * 480 + (12 if unsafe else 6) * 30


async def test_cloudflare_check_is_recorded_priced_and_refuses_with_403(
    start_api, cloudflare_env, fake_cloudflare
):  # type: ignore[no-untyped-def]
    api = await start_api(**cloudflare_env)
    ok = await api.post("/api/generate", {"prompt": "a quiet harbour at dawn"})
    assert ok.status_code == 201, ok.text
    assert fake_cloudflare.guard_checks == ["a quiet harbour at dawn"]
    guard_call = next(c for c in fake_cloudflare.calls if c.path.endswith(GUARD))
    assert guard_call.body["response_format"] == {"type": "json_object"}
    assert guard_call.body["messages"] == [{"role": "user", "content": "a quiet harbour at dawn"}]
    [check, image] = await jobs(api.runtime)
    expected = Cost.from_nano_usd(guard_nano(5, False))
    assert (check["kind"], check["state"], check["model"]) == ("enhance", "settled", GUARD)
    assert check["params"] == {"step": "moderation"}
    assert (check["micro_usd"], check["milli_neurons"]) == (105, expected.milli_neurons)
    assert expected.micro_usd == 105 and image["micro_usd"] == FLUX_USD

    refused = await api.post("/api/generate", {"prompt": "an erotic statue"})
    assert refused.status_code == 403
    body = refused.json()
    assert body["error"] == "Content refused"
    assert body["details"]["category"] == "S12" and body["details"]["code"] == "content_refused"
    assert "Sexual content (S12)" in body["details"]["message"]
    used = await api.runtime.ledger.user_usage("42", "g1")
    assert (used.images, used.micro_usd) == (1, 105 + FLUX_USD + 104)  # the refusal: its check
    assert [j["kind"] for j in await jobs(api.runtime)] == ["enhance", "generate", "enhance"]


async def test_the_negative_prompt_is_checked_too(
    start_api, cloudflare_env, fake_cloudflare
):  # type: ignore[no-untyped-def]
    api = await start_api(**cloudflare_env)
    refused = await api.post("/api/generate", {"prompt": "a marble statue", "model": SDXL,
                                               "negative_prompt": "gore"})  # fmt: skip
    assert refused.status_code == 403 and refused.json()["details"]["category"] == "S1"
    assert fake_cloudflare.guard_checks == ["a marble statue\ngore"]
    assert not any(c.path.endswith(SDXL) for c in fake_cloudflare.calls)


async def test_cloudflare_flagged_content_is_a_refusal_and_refunded(
    start_api, cloudflare_env, fake_cloudflare
):  # type: ignore[no-untyped-def]
    api = await start_api(**cloudflare_env)
    fake_cloudflare.inject("3030", times=2, path_contains="flux-1-schnell")  # retried once
    refused = await api.post("/api/generate", {"prompt": "a harmless looking lamp"})
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert body["error"] == "Content refused" and body["details"]["category"] == "flagged"
    assert "content filter" in body["details"]["message"]
    [check, image] = await jobs(api.runtime)
    assert (image["kind"], image["state"], image["error_code"]) == (
        "generate", "refunded", "content_flagged"
    )
    used = await api.runtime.ledger.user_usage("42", "g1")
    assert (used.images, used.micro_usd) == (0, check["micro_usd"])  # only the check


async def test_a_failed_check_lets_nothing_through_and_charges_nothing(
    start_api, cloudflare_env, fake_cloudflare
):  # type: ignore[no-untyped-def]
    api = await start_api(**cloudflare_env)
    fake_cloudflare.inject("400", times=5, path_contains="llama-guard")
    failed = await api.post("/api/generate", {"prompt": "a quiet harbour"})
    assert failed.status_code == 502
    assert "content check is unavailable" in failed.json()["details"]["message"]
    assert not any(c.path.endswith("flux-1-schnell") for c in fake_cloudflare.calls)
    used = await api.runtime.ledger.user_usage("42", "g1")
    assert (used.images, used.micro_usd) == (0, 0)
    [check] = await jobs(api.runtime)
    assert check["state"] == "refunded"


async def test_local_stand_in_refuses_over_the_api_and_a_retry_is_not_charged_twice(
    start_api
):  # type: ignore[no-untyped-def]
    api = await start_api()
    headers = {"Idempotency-Key": "retry-me"}
    for _ in range(2):
        refused = await api.post("/api/generate", {"prompt": "plans for a pipe bomb"},
                                 headers=headers)  # fmt: skip
        assert refused.status_code == 403
        assert refused.json()["details"]["category"] == "S9"
    [check] = await jobs(api.runtime)
    assert check["note"] == "moderation:S9" and check["micro_usd"] > 0
    used = await api.runtime.ledger.user_usage("42", "g1")
    assert used.micro_usd == check["micro_usd"]


async def test_moderation_off_checks_nothing(
    start_api, cloudflare_env, fake_cloudflare
):  # type: ignore[no-untyped-def]
    api = await start_api(**cloudflare_env, MODERATION_MODEL="off")
    assert (await api.post("/api/generate", {"prompt": "an erotic statue"})).status_code == 201
    assert fake_cloudflare.guard_checks == []
    assert [j["kind"] for j in await jobs(api.runtime)] == ["generate"]


async def test_content_rule_is_stored_and_checked(local_runtime):  # type: ignore[no-untyped-def]
    assert await local_runtime.ledger.schema_version() >= 8  # the content rule came with 8
    admin = local_runtime.admin
    assert await admin.adult_content("g1") == "off"
    await admin.set_adult_content("g1", "age_restricted")
    assert await admin.adult_content("g1") == "age_restricted"
    assert (await local_runtime.ledger.policy("u", "g1")).adult_content == "age_restricted"
    with pytest.raises(InvalidRequest):
        await admin.set_adult_content("g1", "anything goes")
    await admin.set_adult_content("g1", "off")
    assert await admin.adult_content("g1") == "off"
    assert await admin.adult_content("") == "off"  # DMs have no rule to loosen


def test_unknown_moderation_model_is_a_config_error(
    make_settings: Callable[..., Settings],
) -> None:
    from bot.runtime import catalog_of, check_catalog

    for model in ("@cf/nobody/no-such-guard", "@cf/meta/llama-3.1-8b-instruct-fp8-fast"):
        settings = make_settings(MODERATION_MODEL=model)
        with pytest.raises(ConfigError, match="MODERATION_MODEL"):
            check_catalog(settings, catalog_of(settings))
    assert make_settings(MODERATION_MODEL="OFF").moderation_model is None


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ({"safe": True, "categories": []}, (True, ())),
        ({"safe": False, "categories": ["S12", "s1"]}, (False, ("S12", "S1"))),
        ("safe", (True, ())),
        ("unsafe\nS1,S10", (False, ("S1", "S10"))),
        (" unsafe \n S14 ", (False, ("S14",))),
        ("I cannot help with that", None),
        ({"safe": "no"}, None),
        (None, None),
    ],
)
def test_verdict_of_reads_both_shapes(response: Any, expected: Any) -> None:
    assert verdict_of(response) == expected


def test_offline_stand_in_is_deterministic_whole_words() -> None:
    assert offline_verdict("a lighthouse at dusk").safe
    assert offline_verdict("Denuded hills").safe  # not a whole word
    unsafe = offline_verdict("NUDE figure, pipe bomb")
    assert (unsafe.safe, unsafe.categories) == (False, ("S9", "S12"))
    assert category_names(unsafe.categories) == "Indiscriminate weapons (S9), Sexual content (S12)"
    assert offline_verdict("a cat") == offline_verdict("a cat")
