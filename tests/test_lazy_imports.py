"""What the bot process loads at start-up: libraries only some deployments use wait until
they are needed (asyncpg for DATABASE_URL, Jinja2 for the first gallery page), each a few MB of
resident memory in every process that never uses them. The same goes for the HTTP API's code
(pydantic, the body and reply models, the handlers: ~7 MB), loaded on the first API request on a
worker thread, and for the HTTP bodies' pydantic validators: each is built on its model's first
use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.public import Health, PublicImage
from bot.web.hosting import health
from bot.web.http import json_response
from bot.web.routes import api_document

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    probe = f"{code}; import sys; print(' '.join(m for m in {modules!r} if m in sys.modules))"
    result = subprocess.run(  # noqa: S603 (fixed argv, no shell)
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True,
        timeout=120,
    )
    return result.stdout.split()


API_CODE = ("pydantic", "pydantic_core", "bot.public", "bot.web.bodies", "bot.web.api",
            "bot.web.openapi")  # fmt: skip


def test_the_bot_process_starts_without_asyncpg_jinja2_or_the_api_code() -> None:
    code = "import bot.cli, bot.runtime, bot.discord_bot, bot.web.app"
    for extension in ("imagine", "library", "templates", "usage", "quota", "channels",
                      "content", "apikeys", "gallery", "queue"):  # fmt: skip
        code += f", cogs.{extension}"
    assert loaded_after(code, ("asyncpg", "jinja2", *API_CODE)) == []


def test_they_load_when_used() -> None:
    code = "from bot.web.gallery import templates; templates()"
    assert loaded_after(code, ("jinja2",)) == ["jinja2"]
    code = "import bot.ledger.postgres"
    assert loaded_after(code, ("asyncpg",)) == ["asyncpg"]


def test_http_bodies_build_their_validators_on_first_use() -> None:
    code = (
        "import bot.runtime, bot.web.app; from bot.public import Health, ErrorBody;"
        " from bot.web.bodies import GenerateBody;"
        " print('built' if any(m.__pydantic_complete__ for m in (Health, ErrorBody, GenerateBody))"
        " else 'deferred');"
        " ErrorBody(error='x', details={}).to_json();"
        " print('used' if ErrorBody.__pydantic_complete__ else 'not built')"
    )
    assert loaded_after(code, ()) == ["deferred", "used"]


@pytest.fixture(scope="module")
def first_requests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real web server in a fresh interpreter: the bot's requests, then the first API ones."""
    result = subprocess.run(  # noqa: S603 (fixed argv, no shell)
        [sys.executable, "-m", "tests.first_api_request", str(tmp_path_factory.mktemp("lazy"))],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def test_a_server_that_answers_no_api_request_never_loads_the_api_code(
    first_requests: dict[str, Any],
) -> None:
    assert first_requests["served"] == [200, 200]  # a placeholder, and its image hosted here
    assert first_requests["health"][0] == 200
    assert first_requests["before"] == []


def test_the_first_api_request_loads_it_off_the_loop_and_answers_as_before(
    first_requests: dict[str, Any],
) -> None:
    assert set(first_requests["after"]) == set(API_CODE)
    main_thread = "MainThread"  # where the event loop runs
    assert first_requests["imported_on"]["bot.web.api"] != main_thread
    assert first_requests["imported_on"]["pydantic"] != main_thread
    status, created = first_requests["created"]
    assert status == 201 and created["prompt"] == "a lazy heron"
    assert PublicImage.model_validate(created).to_json() == created  # the documented shape
    assert first_requests["fetched"] == [200, created]
    status, refused = first_requests["refused"]  # the body is parsed with its model
    assert status == 400 and refused["details"]["field"] == "prompt"
    assert first_requests["document"] == [200, api_document()]


@pytest.mark.parametrize(
    ("status", "checks"),
    [
        ("ok", {"database": "ok", "migrations": "ok", "provider": "ok", "store": "ok"}),
        ("degraded", {"database": "ok", "store": "The image store is unavailable: « é »"}),
        ("stopping", {"process": "stopping"}),
        ("ok", {}),
    ],
)
def test_healthz_is_byte_identical_to_its_model(status: str, checks: dict[str, str]) -> None:
    """/healthz is built as a plain dict (no pydantic): the bytes the Health model made."""
    modelled = Health(status=status, checks=checks).to_json()  # type: ignore[arg-type]
    assert json_response(health(status, checks)).body == json_response(modelled).body


def test_the_live_healthz_is_what_the_health_model_sends(first_requests: dict[str, Any]) -> None:
    status, text = first_requests["health"]
    assert status == 200
    body = json.loads(text)
    assert body["status"] == "ok" and body["checks"]
    expected = json_response(Health.model_validate(body).to_json()).body
    assert isinstance(expected, bytes) and text.encode() == expected
