"""Usage reports from a real ledger: personal today/month, a server's 30 days with a CSV of every
charge (exact decimal dollars, other servers left out) and a chart PNG."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

import pytest
from PIL import Image

from bot.reports import personal_usage, server_usage, usage_csv
from bot.requests import GenerateRequest
from bot.runtime import Runtime

# The ledger-level tests run on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_ledgers

SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
SCHNELL_MICRO = 634  # FLUX.1 schnell at 1024×1024, 4 steps
SDXL_MICRO = 2_000  # unpublished price: the operator's default


async def make(runtime: Runtime, prompt: str, user: str, guild: str, **more: object) -> None:
    await runtime.service.generate(
        GenerateRequest(prompt, user_id=user, guild_id=guild, fresh=True, **more)  # type: ignore[arg-type]
    )


async def three_in_g1_one_in_g2(runtime: Runtime) -> None:
    await make(runtime, "a red boat", "a", "g1")
    await make(runtime, "a blue boat", "a", "g1")
    await make(runtime, "a green boat", "b", "g1", model=SDXL)
    await make(runtime, "a boat elsewhere", "a", "g2")


async def test_personal_usage_is_this_server_only_today_and_this_month(
    local_runtime: Runtime,
) -> None:
    await three_in_g1_one_in_g2(local_runtime)
    mine = await personal_usage(local_runtime.ledger, "g1", "a")
    for report in (mine.today, mine.month):
        assert (report.total_images, report.total_micro_usd) == (2, 2 * SCHNELL_MICRO)
    today = local_runtime.ledger.today()
    assert (mine.today.start_day, mine.today.end_day) == (today, today)
    assert (mine.month.start_day, mine.month.end_day) == (today[:8] + "01", today)


async def test_server_usage_covers_30_days_with_every_charge_in_the_csv(
    local_runtime: Runtime,
) -> None:
    await three_in_g1_one_in_g2(local_runtime)
    usage = await server_usage(local_runtime.ledger, "g1")
    today = date.fromisoformat(local_runtime.ledger.today())
    assert usage.days == [(today - timedelta(days=n)).isoformat() for n in range(29, -1, -1)]
    assert usage.report.total_images == 3
    assert usage.report.total_micro_usd == 2 * SCHNELL_MICRO + SDXL_MICRO
    rows = list(csv.DictReader(io.StringIO(usage.csv_bytes.decode("utf-8"))))
    assert sorted((r["user_id"], int(r["cost_micro_usd"])) for r in rows) == [
        ("a", SCHNELL_MICRO), ("a", SCHNELL_MICRO), ("b", SDXL_MICRO),
    ]  # fmt: skip
    for row in rows:  # exact decimal dollars, never a float's digits
        assert Decimal(row["cost_usd"]) * 1_000_000 == int(row["cost_micro_usd"])
        assert row["day"] == today.isoformat() and row["images"] == "1"
    assert sum(int(r["cost_micro_usd"]) for r in rows) == usage.report.total_micro_usd
    with Image.open(io.BytesIO(usage.chart_png)) as chart:
        assert (chart.format, chart.size) == ("PNG", (900, 360))
        # Today's bar (the last one) is drawn in the bar colour; an empty day's is not.
        assert chart.getpixel((900 - 20 - 10, 360 - 50 - 2)) == (246, 130, 31)
        assert chart.getpixel((70 + 10, 360 - 50 - 2)) != (246, 130, 31)


async def test_csv_amounts_are_exact_at_the_smallest_units(local_runtime: Runtime) -> None:
    await make(local_runtime, "a tiny charge", "a", "g1")
    [job] = await local_runtime.ledger.settled_jobs("2000-01-01", "2999-12-31")
    rows = list(csv.reader(io.StringIO(usage_csv([
        replace(job, micro_usd=1, milli_neurons=1),
        replace(job, micro_usd=123_456_789, milli_neurons=57_600),
    ]).decode("utf-8"))))  # fmt: skip
    header, *values = rows
    at = {name: index for index, name in enumerate(header)}
    assert [(v[at["cost_usd"]], v[at["neurons"]]) for v in values] == [
        ("0.000001", "0.001"), ("123.456789", "57.600"),
    ]  # fmt: skip
