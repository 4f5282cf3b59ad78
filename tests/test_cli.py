"""The command line as a user runs it: ``python -m bot …`` in an empty folder, clean environment.

Each test runs the real entry point as a subprocess with only PATH and HOME set (plus what the
test sets), so nothing from the developer's shell (DISCORD_TOKEN, Cloudflare credentials, a
``.env`` in the repository) can leak in. The data folder is the default ``./data`` of that
empty working directory.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import FAKE_CF_TOKEN, FAKE_DISCORD_TOKEN, FAKE_SIGNING_KEY

SCHNELL = "@cf/black-forest-labs/flux-1-schnell"
SCHNELL_MICRO_USD = 634  # 57.6 Neurons at $0.011 per 1,000, rounded up to a micro-dollar
URL_RE = re.compile(r"^http://127\.0\.0\.1:8787/images/(img_[0-9a-f]{20})/public$")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUBPROCESS_TIMEOUT = 60


def run_bot(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m bot ARGS`` in ``cwd`` with a clean environment and a timeout; prompts are
    not moderated unless ``env`` says so (the prices below are the images' alone)."""
    clean = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(cwd)}
    clean["MODERATION_MODEL"] = "off"
    clean.update(env or {})
    return subprocess.run(  # noqa: S603 (fixed argv, no shell)
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


def run_json(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    result = run_bot(cwd, *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """Assert a failure with exactly one line on stderr and no traceback; return that line."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_png_file(path: Path, root: Path) -> None:
    assert path.is_file()
    assert path.resolve().is_relative_to(root.resolve()), "images live under ./data"
    assert path.read_bytes().startswith(PNG_MAGIC)
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (1024, 1024)


# --------------------------------------------------------------------------- happy path


def test_the_default_checks_prompts_and_charges_the_check(tmp_path: Path) -> None:
    """With MODERATION_MODEL at its default, the embedded stand-in refuses in one line (exit 1,
    the category named, no image) and a fine prompt's cost includes its check."""
    default = {"MODERATION_MODEL": "@cf/meta/llama-guard-3-8b"}
    refused = run_bot(tmp_path, "imagine", "a nude portrait", env=default)
    line = one_line_error(refused, 1)
    assert "Sexual content (S12)" in line and "$0.000113" in line
    made = run_json(tmp_path, "imagine", "a lighthouse at dusk", env=default)
    assert made["cost_micro_usd"] == 634 + 113  # the image, and its check


def test_imagine_cache_fresh_users_usage_and_models(tmp_path: Path) -> None:
    # 1. Plain text output: the hosted URL, the local file and the cost line.
    first = run_bot(tmp_path, "imagine", "a lighthouse at dusk")
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    lines = first.stdout.splitlines()
    url_match = URL_RE.match(lines[0])
    assert url_match, first.stdout
    file_lines = [line for line in lines if line.strip().startswith("file:")]
    assert len(file_lines) == 1, first.stdout
    first_file = Path(file_lines[0].split("file:", 1)[1].strip())
    assert_png_file(first_file, tmp_path)
    assert first_file.name == url_match.group(1)
    cost_lines = [line for line in lines if line.startswith("cost:")]
    assert len(cost_lines) == 1, first.stdout
    assert "$0.000634" in cost_lines[0]
    assert "57.6 Neurons" in cost_lines[0]
    assert "24 images" in cost_lines[0]  # 25 a day by default, one used

    # 2. The same request again is served from the cache, free, pointing at the same bytes.
    cached = run_json(tmp_path, "imagine", "a lighthouse at dusk")
    assert cached["cached"] is True
    assert cached["cost"] == 0
    assert cached["cost_micro_usd"] == 0
    assert cached["images"][0]["cost"] == 0
    assert cached["images"][0]["url"] == lines[0]
    assert Path(cached["images"][0]["file"]) == first_file.resolve()

    # 3. --fresh skips the cache: a new image, charged.
    fresh = run_json(tmp_path, "imagine", "a lighthouse at dusk", "--fresh")
    assert fresh["cached"] is False
    assert fresh["cost"] == 0.000634
    assert fresh["cost_micro_usd"] == SCHNELL_MICRO_USD
    assert fresh["cost_milli_neurons"] == 57_600
    image = fresh["images"][0]
    for key in ("id", "url", "width", "height", "model", "cost", "file"):
        assert key in image, key
    assert image["model"] == SCHNELL
    assert (image["width"], image["height"]) == (1024, 1024)
    assert image["cost"] == 0.000634
    assert image["user_id"] == "cli"
    fresh_match = URL_RE.match(image["url"])
    assert fresh_match
    assert fresh_match.group(1) != url_match.group(1)
    assert image["id"] != cached["images"][0]["id"]
    assert_png_file(Path(image["file"]), tmp_path)
    assert Path(image["file"]) != first_file.resolve()

    # 4. --user charges that user.
    alice = run_json(tmp_path, "imagine", "a fox in the snow", "--user", "alice")
    assert alice["cached"] is False
    assert alice["images"][0]["user_id"] == "alice"
    assert alice["cost_micro_usd"] == SCHNELL_MICRO_USD

    # 5. The day's usage: totals equal the sum of what was charged (the cache hit was free).
    usage = run_json(tmp_path, "usage")
    users = {u["user_id"]: u for u in usage["users"]}
    assert set(users) == {"cli", "alice"}
    assert users["alice"]["images"] == 1
    assert users["alice"]["cost"] == 0.000634
    assert users["cli"]["images"] == 2
    assert users["cli"]["cost_micro_usd"] == 2 * SCHNELL_MICRO_USD
    for user in usage["users"]:
        assert set(user) >= {"user_id", "images", "cost"}
    # The first run printed $0.000634 (checked above); the cache hit cost nothing.
    charged = [SCHNELL_MICRO_USD, fresh["cost_micro_usd"], alice["cost_micro_usd"]]
    assert usage["total_images"] == 3 == sum(u["images"] for u in usage["users"])
    assert usage["total_cost_micro_usd"] == sum(charged)
    assert usage["total_cost"] == pytest.approx(sum(charged) / 1_000_000, abs=1e-12)
    assert usage["total_cost"] == pytest.approx(sum(u["cost"] for u in usage["users"]), abs=1e-12)
    assert usage["average_cost"] == 0.000634

    # 6. The catalog: image models only, with the price per image.
    models = run_json(tmp_path, "models")
    by_id = {m["id"]: m for m in models}
    assert by_id[SCHNELL]["cost_per_image"] == 0.000634
    assert by_id[SCHNELL]["cost_per_image_micro_usd"] == SCHNELL_MICRO_USD
    assert not any("llama" in m["id"] for m in models)
    assert not any("text-generation" in m["capabilities"] for m in models)
    unpublished = [m for m in models if not m["price_published"]]
    assert unpublished and all(m["cost_per_image"] > 0 for m in unpublished)
    listing = run_bot(tmp_path, "models")
    assert "(Price not published by Cloudflare; charged at the operator's default" in listing.stdout
    hidden = run_json(tmp_path, "models", env={"UNPUBLISHED_MODEL_PRICE_USD": "off"})
    assert {m["id"] for m in hidden} == {m["id"] for m in models if m["price_published"]}


# --------------------------------------------------------------------------- request errors


def test_user_quota_applies_to_the_cli(tmp_path: Path) -> None:
    env = {"QUOTA_USER_DAILY_IMAGES": "1"}
    ok = run_bot(tmp_path, "imagine", "a lighthouse at dusk", env=env)
    assert ok.returncode == 0, ok.stderr
    refused = run_bot(tmp_path, "imagine", "a lighthouse at dusk", "--fresh", env=env)
    line = one_line_error(refused, 1)
    assert "of your 1 images" in line
    assert refused.stdout == ""


def test_invalid_input_exits_1_and_charges_nothing(tmp_path: Path) -> None:
    cases = [
        (("imagine", "ab"), ("prompt", "3 characters")),
        # A valid prompt, so the size check (not the prompt check) is what refuses it.
        (("imagine", "a red bicycle", "--width", "300"), ("1024×1024",)),
        (("imagine", "a red bicycle", "--model", "nope"), ("model", "nope")),
    ]
    for args, words in cases:
        line = one_line_error(run_bot(tmp_path, *args), 1)
        assert line.startswith("error: "), line
        for word in words:
            assert word in line, (args, line)
    usage = run_json(tmp_path, "usage")
    assert usage["total_images"] == 0
    assert usage["total_cost"] == 0
    assert usage["users"] == []


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"IMAGE_PROVIDER": "bogus"}, "IMAGE_PROVIDER"),
        ({"QUOTA_USER_DAILY_USD": "abc"}, "QUOTA_USER_DAILY_USD"),
        ({"WEB_PORT": "99999"}, "WEB_PORT"),
        ({"IMAGE_PROVIDER": "cloudflare"}, "CLOUDFLARE_ACCOUNT_ID"),
        ({"MODELS_FILE": "no-such-models.toml"}, "MODELS_FILE"),
        ({"ALLOW_PRIVATE_URLS": "maybe"}, "ALLOW_PRIVATE_URLS"),
    ],
    ids=["provider", "usd", "port", "cloudflare-no-credentials", "models-file", "switch"],
)
def test_bad_configuration_exits_2_naming_the_variable(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    line = one_line_error(run_bot(tmp_path, "imagine", "a red bicycle", env=env), 2)
    assert variable in line
    assert line.startswith("configuration error:")


@pytest.mark.parametrize("spelling", ["1", "yes", "on", "TRUE"])
def test_switches_in_dotenv_accept_the_usual_spellings(tmp_path: Path, spelling: str) -> None:
    (tmp_path / ".env").write_text(f"ALLOW_PRIVATE_URLS={spelling}\n", encoding="utf-8")
    result = run_bot(tmp_path, "models")
    assert result.returncode == 0, result.stderr
    assert SCHNELL in result.stdout


def test_secrets_in_a_bad_configuration_are_never_printed(tmp_path: Path) -> None:
    env = {
        "CLOUDFLARE_API_TOKEN": FAKE_CF_TOKEN,
        "CLOUDFLARE_ACCOUNT_ID": "acct-test",
        "CLOUDFLARE_IMAGES_SIGNING_KEY": FAKE_SIGNING_KEY,
        "DISCORD_TOKEN": FAKE_DISCORD_TOKEN,
        "IMAGE_STORE": "cloudflare",  # but no CLOUDFLARE_IMAGE_ACCOUNT_HASH
    }
    result = run_bot(tmp_path, "imagine", "a red bicycle", env=env)
    line = one_line_error(result, 2)
    assert "CLOUDFLARE_IMAGE_ACCOUNT_HASH" in line
    for secret in (FAKE_CF_TOKEN, FAKE_SIGNING_KEY, FAKE_DISCORD_TOKEN):
        assert secret not in result.stdout
        assert secret not in result.stderr


def test_a_bad_amount_is_not_echoed(tmp_path: Path) -> None:
    secret = "TEST-SECRET-not-an-amount-5e1c"
    result = run_bot(tmp_path, "imagine", "a red bicycle", env={"QUOTA_USER_DAILY_USD": secret})
    line = one_line_error(result, 2)
    assert "QUOTA_USER_DAILY_USD" in line
    assert secret not in result.stdout + result.stderr


def test_running_the_bot_without_a_token_exits_2(tmp_path: Path) -> None:
    line = one_line_error(run_bot(tmp_path), 2)
    assert "DISCORD_TOKEN" in line


def test_dotenv_is_loaded_and_the_real_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("QUOTA_USER_DAILY_IMAGES=0\n", encoding="utf-8")
    refused = run_bot(tmp_path, "imagine", "a lighthouse at dusk")
    line = one_line_error(refused, 1)
    assert "of your 0 images" in line

    allowed = run_bot(
        tmp_path, "imagine", "a lighthouse at dusk", env={"QUOTA_USER_DAILY_IMAGES": "5"}
    )
    assert allowed.returncode == 0, allowed.stderr
    assert URL_RE.match(allowed.stdout.splitlines()[0])
    assert "4 images" in allowed.stdout  # the limit of 5 from the environment, one used


def test_apikey_create_list_and_revoke(tmp_path):
    created = run_bot(tmp_path, "apikey", "create", "--user", "1234", "--name", "ci")
    assert created.returncode == 0
    lines = dict(line.split(":", 1) for line in created.stdout.splitlines())
    key_id, key = lines["key id"].strip(), lines["key"].strip()
    assert key.startswith("cfib_") and lines["webhook secret"].strip()
    listed = run_bot(tmp_path, "apikey", "list", "--user", "1234")
    assert key_id in listed.stdout and "active" in listed.stdout and key not in listed.stdout
    revoked = run_bot(tmp_path, "apikey", "revoke", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert "revoked" in run_bot(tmp_path, "apikey", "list", "--user", "1234").stdout
    bad = run_bot(tmp_path, "apikey", "create", "--user", "not-a-number")
    assert bad.returncode == 1


def test_a_cli_result_is_recorded_as_delivered_on_the_command_line(tmp_path: Path) -> None:
    made = run_json(tmp_path, "imagine", "a tin lantern")
    with sqlite3.connect(tmp_path / "data" / "bot.sqlite3") as db:
        [(delivery,)] = db.execute(
            "SELECT delivery FROM jobs JOIN images ON images.job_id = jobs.id WHERE images.id = ?",
            (made["images"][0]["id"],),
        ).fetchall()
    assert delivery == "cli"
