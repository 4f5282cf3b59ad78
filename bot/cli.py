"""``python -m bot``: the command line. Sub-commands are thin fronts over the same service.

- (none)   run the Discord bot and the built-in web server
- serve    run only the web server (hosts local-store images)
- sync     sync the slash commands over REST (no gateway) and exit
- imagine  generate an image and print its hosted URL
- models   the catalog with prices
- usage    a day's totals
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.catalog import Catalog
from bot.config import Settings, load_settings, read_environment
from bot.config_values import PostgresUrl
from bot.errors import BotError, ConfigError
from bot.logs import configure_logging
from bot.money import format_neurons, format_usd
from bot.requests import GenerateRequest, GenerationResult, Progress
from bot.runtime import Runtime, catalog_of, open_runtime
from bot.service import ImageService
from bot.shutdown import drain, one_shot, stop_signals

log = logging.getLogger("bot")

EXIT_ERROR = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Discord image bot: Cloudflare Workers AI + Cloudflare Images, or the "
        "embedded local backend. With no sub-command, runs the Discord bot.",
    )
    commands = parser.add_subparsers(dest="command")

    imagine = commands.add_parser("imagine", help="generate an image and print its URL")
    imagine.add_argument("prompt")
    imagine.add_argument("--model", help="model id or short name (see 'models')")
    imagine.add_argument("--width", type=int)
    imagine.add_argument("--height", type=int)
    imagine.add_argument("--seed", type=int)
    imagine.add_argument("--steps", type=int)
    imagine.add_argument("--negative", help="negative prompt")
    imagine.add_argument("--count", type=int, default=1, help="1 to 4 images")
    imagine.add_argument("--enhance", action="store_true", help="rewrite the prompt first")
    imagine.add_argument("--fresh", action="store_true", help="skip the cache")
    imagine.add_argument("--user", default="cli", help="charge this user id (default: cli)")
    imagine.add_argument("--json", action="store_true", help="print JSON")

    models = commands.add_parser("models", help="list the models and their prices")
    models.add_argument("--json", action="store_true")

    usage = commands.add_parser("usage", help="totals for one UTC day")
    usage.add_argument("--day", type=date.fromisoformat, help="YYYY-MM-DD (default: today)")
    usage.add_argument("--json", action="store_true")

    commands.add_parser("serve", help="run only the built-in web server and HTTP API")
    commands.add_parser(
        "sync", help="sync the slash commands (if they changed) over REST, then exit"
    )

    migrate = commands.add_parser(
        "migrate", help="copy the SQLite ledger into an empty PostgreSQL database"
    )
    migrate.add_argument("--to", required=True, metavar="postgresql://…", help="the target")
    apikey = commands.add_parser("apikey", help="manage HTTP API keys")
    actions = apikey.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key for a Discord user id")
    create.add_argument("--user", required=True, help="the Discord user id the key acts as")
    create.add_argument("--guild", default="", help="count against this server's quotas")
    create.add_argument("--name", default="API key")
    revoke = actions.add_parser("revoke", help="revoke a key by its id (key_…)")
    revoke.add_argument("key_id")
    listing = actions.add_parser("list", help="a user's keys")
    listing.add_argument("--user", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(read_environment(Path(".env")))
    except ConfigError as exc:
        print(f"configuration error: {exc.user_message}", file=sys.stderr)
        return EXIT_CONFIG
    quiet = ("imagine", "models", "usage", "apikey", "migrate")
    env_level = "WARNING" if args.command in quiet else settings.log_level
    configure_logging(env_level, [*_secrets(settings), *_url_password(getattr(args, "to", None))])
    if args.command in (None, "sync") and not settings.discord_token:
        print(
            "DISCORD_TOKEN is not set: put the bot's token in the environment or .env to run "
            "the Discord bot (try 'python -m bot imagine \"a prompt\"' without one).",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        return asyncio.run(_main(args, settings))
    except ConfigError as exc:
        print(f"configuration error: {exc.user_message}", file=sys.stderr)
        return EXIT_CONFIG
    except BotError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.user_message, "code": exc.code}))
        else:
            print(f"error: {exc.user_message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _secrets(settings: Settings) -> list[str]:
    return [
        value
        for value in (
            settings.discord_token,
            settings.cloudflare_api_token,
            settings.cloudflare_images_signing_key,
            settings.gallery_secret,
            *_url_password(settings.database_url),
        )
        if value
    ]


def _url_password(url: str | None) -> list[str]:
    password = urlsplit(url).password if url else None
    return [password] if password else []


async def _main(args: argparse.Namespace, settings: Settings) -> int:
    """The bot and ``serve`` drain on a stop signal (``_serve``, ``run_discord``); any other
    command is one-shot: the first SIGTERM or SIGINT cancels it and exits 128 + its number."""
    if args.command in (None, "serve"):
        return await _run(args, settings)
    status, signum = await one_shot(_run(args, settings))
    if signum is not None:
        name = signal.Signals(signum).name
        if getattr(args, "json", False):
            print(json.dumps({"error": f"stopped by {name}", "code": "stopped"}))
        else:
            print(f"stopped by {name}", file=sys.stderr)
    return status


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "models":
        return _print_models(catalog_of(settings), args.json)
    if args.command == "migrate":
        return await _migrate(settings, args.to)
    log.info("backends: %s", settings.backend_reason)
    # A sync touches no job: it must not settle or refund what running processes hold.
    async with open_runtime(settings, recover=args.command != "sync") as runtime:
        if args.command == "imagine":
            return await _imagine(runtime, args)
        if args.command == "usage":
            return await _usage(runtime, args)
        if args.command == "serve":
            return await _serve(runtime)
        if args.command == "apikey":
            return await _apikey(runtime, args)
        if args.command == "sync":
            from bot.discord_bot import sync_only

            written = await sync_only(runtime)
            print(f"commands synced: {', '.join(written)}" if written else "commands unchanged")
            return 0
        from bot.discord_bot import run_discord

        await run_discord(runtime)
        return 0


async def _migrate(settings: Settings, url: str) -> int:
    """Copy the SQLite ledger into an empty PostgreSQL database (bot.ledger_move)."""
    from bot.ledger_move import migrate_to_postgres

    print(await migrate_to_postgres(settings.database_path, PostgresUrl().parse("--to", url)))
    return 0


async def _imagine(runtime: Runtime, args: argparse.Namespace) -> int:
    job_ids: list[str] = []

    def progress(event: Progress) -> None:
        if event.job_id and not job_ids:
            job_ids.append(event.job_id)
        if not args.json and event.stage == "queued":
            print(f"queued: position {event.position}", file=sys.stderr)

    try:
        result = await _generate(runtime, args, progress)
    except asyncio.CancelledError:  # a stop signal (``one_shot``): say what became of the job
        print(await _stopped_job(runtime, job_ids[0] if job_ids else None), file=sys.stderr)
        raise
    await runtime.service.record_delivery(result.job_id, "cli")
    if args.json:
        print(json.dumps(_result_json(result, runtime.service), indent=2))
        return 0
    for image in result.images:
        print(image.url)
        path = runtime.service.local_file(image)
        if path is not None:
            print(f"  file: {path}")
        seed = image.seed if image.seed is not None else "n/a"
        print(f"  {image.model} · {image.width}×{image.height} · seed {seed} · id {image.id}")
    if result.enhanced:
        print(f"prompt used: {result.prompt_used}")
    cost = "free (cached)" if result.cached else format_usd(result.cost.micro_usd)
    print(
        f"cost: {cost} ({format_neurons(result.cost.milli_neurons)} Neurons) · left today: "
        f"{result.remaining.images} images, {format_usd(result.remaining.micro_usd)}"
    )
    if result.failed:
        print(f"{result.failed} image(s) failed and were not charged", file=sys.stderr)
    if runtime.service.renders_previews:
        print("(local preview renderer: set Cloudflare credentials for AI images)")
    return 0


async def _generate(
    runtime: Runtime, args: argparse.Namespace, progress: Callable[[Progress], None]
) -> GenerationResult:
    return await runtime.service.generate(
        GenerateRequest(
            prompt=args.prompt,
            user_id=args.user,
            model=args.model,
            width=args.width,
            height=args.height,
            seed=args.seed,
            steps=args.steps,
            negative_prompt=args.negative,
            count=args.count,
            enhance=args.enhance,
            fresh=args.fresh,
            progress=progress,
        )
    )


async def _stopped_job(runtime: Runtime, job_id: str | None) -> str:
    """What a stop signal left of the image job: refunded, or (its images stored) charged."""
    if job_id is None:
        return "stopped before the image was made: it was not charged"
    charged = await runtime.service.job_charge(job_id)
    if charged is None:
        return f"job {job_id} stopped before it finished: refunded, the image was not charged"
    return f"job {job_id} had stored its image(s): charged {format_usd(charged)} (see 'usage')"


def _result_json(result: GenerationResult, service: ImageService) -> dict[str, Any]:
    from bot.public import image_to_public, usd  # --json only: the bot never loads pydantic

    images = []
    for image in result.images:
        item = image_to_public(image)
        path = service.local_file(image)
        if path is not None:
            item["file"] = str(path)
        images.append(item)
    return {
        "job_id": result.job_id,
        "images": images,
        "prompt": result.prompt,
        "prompt_used": result.prompt_used,
        "cached": result.cached,
        "cost": usd(result.cost.micro_usd),
        "cost_micro_usd": result.cost.micro_usd,
        "cost_milli_neurons": result.cost.milli_neurons,
        "failed": result.failed,
        "remaining": {
            "images": result.remaining.images,
            "cost": usd(result.remaining.micro_usd),
            "resets_at": result.remaining.resets_at.isoformat(),
        },
    }


def _print_models(catalog: Catalog, as_json: bool) -> int:
    models = catalog.enabled_image_models()
    if as_json:
        from bot.public import model_json

        print(json.dumps([model_json(m) for m in models], indent=2))
        return 0
    for m in models:
        cost = m.default_cost()
        print(f"{m.id}\n  {m.name}: {m.description}")
        print(
            f"  {format_usd(cost.micro_usd)} per image at {m.default_width}×{m.default_height}"
            f", {m.default_steps} steps ({format_neurons(cost.milli_neurons)} Neurons)"
            f" · ~{m.typical_seconds:g} s · {', '.join(sorted(m.capabilities))}"
        )
        if m.price_note:
            print(f"  ({m.price_note})")
    return 0


async def _usage(runtime: Runtime, args: argparse.Namespace) -> int:
    day = (args.day or date.fromisoformat(runtime.service.today())).isoformat()
    report = await runtime.service.usage_report(day)
    if args.json:
        from bot.public import report_json

        print(json.dumps({"day": day, **report_json(report)}, indent=2))
        return 0
    print(f"{day} (UTC): {report.total_images} images, {format_usd(report.total_micro_usd)}"
          f" ({format_neurons(report.total_milli_neurons)} Neurons), average "
          f"{format_usd(report.average_micro_usd)} per image")  # fmt: skip
    for user in report.users:
        print(f"  {user.user_id}: {user.images} images, {format_usd(user.micro_usd)}")
    return 0


async def _apikey(runtime: Runtime, args: argparse.Namespace) -> int:
    keys = runtime.keys
    if args.action == "create":
        if not args.user.isdigit() or (args.guild and not args.guild.isdigit()):
            print("error: --user and --guild are Discord ids (digits)", file=sys.stderr)
            return EXIT_ERROR
        key, plaintext = await keys.create(user_id=args.user, guild_id=args.guild, name=args.name)
        print(f"key id:          {key.id}")
        print(f"key:             {plaintext}")
        print(f"webhook secret:  {key.webhook_secret}")
        print("The key is shown only now; it is stored as a hash.", file=sys.stderr)
        return 0
    if args.action == "revoke":
        key = await keys.revoke(args.key_id, requester_id="", is_admin=True)
        print(f"revoked {key.id} ({key.name}, {key.hint}) of user {key.user_id}")
        return 0
    for key in await keys.list(args.user):
        state = f"revoked {key.revoked_at[:10]}" if key.revoked_at else "active"
        print(f"{key.id}  {key.hint}  {key.name}  made {key.created_at[:10]}  {state}")
    return 0


async def _serve(runtime: Runtime) -> int:
    """The web server until SIGTERM or SIGINT, then the clean stop of ``bot.shutdown``: new
    work refused (503) while running jobs finish, the listener closed, and (leaving
    ``open_runtime``) the lease given up and the ledger closed."""
    from bot.web.app import start_web_server

    with stop_signals() as stop:
        runner = await start_web_server(runtime)
        print(f"serving on {runtime.settings.public_base_url} (Ctrl+C to stop)", file=sys.stderr)
        try:
            await stop.requested.wait()
            await drain(runtime.service, runtime.settings.shutdown_grace_seconds)
        finally:
            await runner.cleanup()
    return 0
