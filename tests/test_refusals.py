"""The ledger refuses in numbers (a ``Refusal`` on ``QuotaExceeded``), under concurrency, and
``bot.refusals`` words each refusal as users have always read it (real SQLite files)."""

from __future__ import annotations

import ast
import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

import bot.ledger
from bot.catalog import Cost
from bot.errors import QuotaExceeded, Refusal
from bot.ledger import Ledger, Limits
from bot.ledger.ledger import NewJob
from bot.refusals import refusal_message

COST = Cost(634, 57_600)
WIDE = 10**12
MIDNIGHT = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.fixture
async def ledger(tmp_path: Path):
    opened = await Ledger.open(tmp_path / "ledger.sqlite3", clock=lambda: MIDNIGHT.replace(day=1))
    yield opened
    await opened.close()


def ask(user: str = "u1", guild: str = "g1", images: int = 1) -> NewJob:
    return NewJob("generate", user, guild, COST, images, "m")


async def refusals_of(ledger: Ledger, jobs: list[NewJob], limits: Limits) -> list[Refusal]:
    outcomes = await asyncio.gather(
        *(ledger.reserve(j, limits) for j in jobs), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert all(isinstance(o, QuotaExceeded) or not isinstance(o, BaseException) for o in outcomes)
    assert all(r.refusal is not None and r.user_message == refusal_message(r.refusal)
               for r in refused)  # fmt: skip
    return [r.refusal for r in refused if r.refusal is not None]


async def test_100_concurrent_refusals_all_give_the_same_exact_numbers(ledger):
    refusals = await refusals_of(ledger, [ask() for _ in range(100)], Limits(10, WIDE, WIDE, WIDE))
    assert len(refusals) == 90
    assert set(refusals) == {Refusal("user_daily_images", 10, 10, 1, MIDNIGHT)}


async def test_each_limit_is_named_with_what_was_used_allowed_and_asked(ledger):
    assert await refusals_of(ledger, [ask(images=3)], Limits(2, WIDE, WIDE, WIDE)) == [
        Refusal("user_daily_images", 0, 2, 3, MIDNIGHT)
    ]
    await ledger.reserve(ask(), Limits(WIDE, WIDE, WIDE, WIDE))  # 634 µ$, 57,600 mN used
    assert await refusals_of(ledger, [ask()], Limits(WIDE, 1_000, WIDE, WIDE)) == [
        Refusal("user_daily_usd", 634, 1_000, 634, MIDNIGHT)
    ]
    assert await refusals_of(ledger, [ask(user="u2")], Limits(WIDE, WIDE, 1_000, WIDE)) == [
        Refusal("guild_daily_usd", 634, 1_000, 634, MIDNIGHT)
    ]
    assert await refusals_of(ledger, [ask(guild="g2")], Limits(WIDE, WIDE, WIDE, 100_000)) == [
        Refusal("daily_neurons", 57_600, 100_000, 57_600, MIDNIGHT)
    ]


async def test_upload_refusals_carry_their_numbers(ledger):
    upload = NewJob("upload", "u1", "g1", Cost(0, 0), 0, bytes=3_000_000)
    limits = Limits(WIDE, WIDE, WIDE, WIDE, user_uploads=1, user_upload_bytes=5_000_000)
    await ledger.reserve(upload, limits)
    second = await refusals_of(ledger, [upload], limits)
    assert second == [Refusal("user_daily_uploads", 1, 1, 1, MIDNIGHT)]
    roomy = Limits(WIDE, WIDE, WIDE, WIDE, user_uploads=5, user_upload_bytes=5_000_000)
    too_big = await ledger.upload_refusal("u1", roomy, 3_000_000)
    assert too_big is not None
    assert too_big.refusal == Refusal("user_daily_upload_bytes", 3_000_000, 5_000_000,
                                      3_000_000, MIDNIGHT)  # fmt: skip
    assert await ledger.upload_refusal("u1", roomy, 2_000_000) is None


@pytest.mark.parametrize(
    ("refusal", "words"),
    [
        (Refusal("user_daily_images", 10, 10, 1, MIDNIGHT),
         "You have used 10 of your 10 images for today."),
        (Refusal("user_daily_usd", 49_452, 50_000, 634, MIDNIGHT),
         "This would cost $0.000634; you have $0.000548 of your $0.05 daily budget left."),
        (Refusal("guild_daily_usd", 1_500_000, 1_000_000, 634, MIDNIGHT),
         "This server has used $1.50 of its $1.00 daily budget."),
        (Refusal("daily_neurons", 10, 10, 5, MIDNIGHT),
         "The bot has reached its daily image allowance for everyone."),
        (Refusal("user_daily_uploads", 3, 3, 1, MIDNIGHT),
         "You have made 3 of your 3 uploads for today."),
        (Refusal("user_daily_uploads", 0, 0, 1, MIDNIGHT), "Uploads are turned off here."),
        (Refusal("user_daily_upload_bytes", 9_437_184, 10_485_760, 2_621_440, MIDNIGHT),
         "This upload is 2.5 MB; you have 1 MB of your 10 MB daily upload allowance left."),
    ],
)  # fmt: skip
def test_each_refusal_reads_as_it_always_has(refusal: Refusal, words: str):
    assert refusal_message(refusal) == words


def test_only_the_database_core_knows_the_driver():
    """The seam for a second dialect: concern modules see no sqlite3/aiosqlite."""
    core = {"database.py", "group_commit.py"}
    folder = Path(bot.ledger.__file__).parent
    for module in sorted(folder.glob("*.py")):
        tree = ast.parse(module.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}  # fmt: skip
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom)}  # fmt: skip
        drivers = imported & {"sqlite3", "aiosqlite"}
        assert module.name in core or not drivers, f"{module.name} imports {drivers}"
        assert module.name not in core or drivers, f"{module.name} should be the core"
