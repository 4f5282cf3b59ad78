"""What the bot process loads at start-up: libraries only some deployments use wait until
they are needed (asyncpg for DATABASE_URL, Jinja2 for the first gallery page), each a few MB of
resident memory in every process that never uses them. The same goes for the HTTP bodies'
pydantic validators: each is built on its model's first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    probe = f"{code}; import sys; print(' '.join(m for m in {modules!r} if m in sys.modules))"
    result = subprocess.run(  # noqa: S603 (fixed argv, no shell)
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True,
        timeout=120,
    )
    return result.stdout.split()


def test_the_bot_process_starts_without_asyncpg_or_jinja2() -> None:
    code = "import bot.cli, bot.runtime, bot.discord_bot, bot.web.app"
    for extension in ("imagine", "library", "templates", "usage", "quota", "gallery", "queue"):
        code += f", cogs.{extension}"
    assert loaded_after(code, ("asyncpg", "jinja2")) == []


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
