"""Usage reports for people: summaries, a 30-day chart (PNG) and a CSV export.

Front-agnostic: Discord attaches the files, the HTTP API can serve them. Drawing runs in a
thread; money stays integer micro-dollars until it is formatted.
"""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass
from datetime import date, timedelta

from PIL import Image, ImageDraw, ImageFont

from bot.ledger import Job, Ledger, UsageReport
from bot.money import format_usd, micro_to_usd_decimal


@dataclass(frozen=True)
class PersonalUsage:
    today: UsageReport
    month: UsageReport


@dataclass(frozen=True)
class ServerUsage:
    report: UsageReport
    days: list[str]
    chart_png: bytes
    csv_bytes: bytes


def day_range(last_day: str, days: int) -> list[str]:
    """The ``days`` UTC days ending with ``last_day``, oldest first."""
    end = date.fromisoformat(last_day)
    return [(end - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


async def personal_usage(ledger: Ledger, guild_id: str, user_id: str) -> PersonalUsage:
    today = ledger.today()
    month_start = today[:8] + "01"
    return PersonalUsage(
        today=await ledger.report(today, today, guild_id=guild_id, user_id=user_id),
        month=await ledger.report(month_start, today, guild_id=guild_id, user_id=user_id),
    )


async def server_usage(ledger: Ledger, guild_id: str, days: int = 30) -> ServerUsage:
    span = day_range(ledger.today(), days)
    report = await ledger.report(span[0], span[-1], guild_id=guild_id)
    jobs = await ledger.settled_jobs(span[0], span[-1], guild_id=guild_id)
    chart = await asyncio.to_thread(usage_chart, report, span)
    return ServerUsage(report, span, chart, usage_csv(jobs))


def usage_csv(jobs: list[Job]) -> bytes:
    """One row per settled charge, costs in exact decimal dollars."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["created_at", "day", "user_id", "kind", "model", "images", "cost_usd",
                     "cost_micro_usd", "neurons", "job_id"])  # fmt: skip
    for job in jobs:
        writer.writerow([
            job.created_at, job.day, job.user_id, job.kind, job.model or "", job.images,
            f"{micro_to_usd_decimal(job.micro_usd):f}", job.micro_usd,
            f"{job.milli_neurons / 1000:.3f}", job.id,
        ])  # fmt: skip
    return out.getvalue().encode("utf-8")


def usage_chart(report: UsageReport, days: list[str], width: int = 900, height: int = 360) -> bytes:
    """Bars of money spent per day (images per day in the labels), as a PNG."""
    image = Image.new("RGB", (width, height), (32, 34, 37))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = 70, 20, 40, 50
    spend = [report.by_day.get(day, (0, 0))[1] for day in days]
    counts = [report.by_day.get(day, (0, 0))[0] for day in days]
    peak = max(spend) or 1
    plot_w, plot_h = width - left - right, height - top - bottom
    draw.text((left, 10), f"Last {len(days)} days: {report.total_images} images, "
              f"{format_usd(report.total_micro_usd)}", fill=(230, 230, 230), font=font)  # fmt: skip
    for tick in range(5):
        y = top + plot_h - plot_h * tick // 4
        draw.line([(left, y), (width - right, y)], fill=(70, 72, 76))
        draw.text((5, y - 6), format_usd(peak * tick // 4), fill=(180, 180, 180), font=font)
    slot = plot_w / len(days)
    for index, (day, micro, count) in enumerate(zip(days, spend, counts, strict=True)):
        x0 = left + index * slot + slot * 0.15
        x1 = left + (index + 1) * slot - slot * 0.15
        bar = plot_h * micro // peak
        if bar or count:
            draw.rectangle([(x0, top + plot_h - max(bar, 1)), (x1, top + plot_h)],
                           fill=(246, 130, 31))  # fmt: skip
        if index % 5 == 0 or index == len(days) - 1:
            draw.text((x0, top + plot_h + 8), day[5:], fill=(180, 180, 180), font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
