"""A clean stop of ``python -m bot serve`` on SIGTERM or SIGINT, as a real process: new work is
refused with 503 and Retry-After, the running job finishes (charged once) or, past
SHUTDOWN_GRACE_SECONDS, is cancelled and refunded; the lease is given up at once (no live lease
left for others to wait out), the ledger is closed and the exit status is 0. A second signal
exits at once. (The Discord process: tests/test_shard_processes.py stops its shards so.)"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import sys
from pathlib import Path

import httpx
import pytest

from bot.ledger import Ledger
from bot.shutdown import StopSignals, stop_signals
from tests.test_kill9 import bot_env, create_key, free_port, start_server

LONG_LEASE = "3600"  # only a release can empty the instances table within a test


def live_instances(data: Path) -> int:
    with sqlite3.connect(data / "bot.sqlite3") as db:
        return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])


async def until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(1000):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def stop_mid_job(  # type: ignore[no-untyped-def]
    tmp_path: Path, fake, grace: str, signum: int
) -> tuple[httpx.Response, httpx.Response, httpx.Response, int, Path]:
    """A server with one generation running (at the fake's /ai/run) is sent ``signum``. The
    answers to that generation, to a new one and to /healthz sent during the stop; the exit
    status; the data directory."""
    data = tmp_path / "data"
    data.mkdir()
    env = {**bot_env(data, free_port(), fake, "cloudflare"),
           "SHUTDOWN_GRACE_SECONDS": grace, "JOB_LEASE_SECONDS": LONG_LEASE}  # fmt: skip
    key = await create_key(env, tmp_path)
    log = tmp_path / "server.log"
    server = await start_server(env, tmp_path, log)
    base = f"http://127.0.0.1:{env['WEB_PORT']}"
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        running = asyncio.create_task(
            client.post("/api/generate", json={"prompt": "a lighthouse"}, headers=auth)
        )

        async def generating() -> bool:
            return fake.ai_calls > 0

        await until(generating, "the job reached the provider")
        server.send_signal(signum)

        async def stopping() -> bool:
            return (await client.get("/healthz")).status_code == 503

        await until(stopping, "/healthz said the server is stopping")
        health = await client.get("/healthz")
        refused = await client.post("/api/generate", json={"prompt": "a ship"}, headers=auth)
        answered = await running
    status = await asyncio.wait_for(server.wait(), 120)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    return answered, refused, health, status, data


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_mid_job_lets_it_finish_refuses_new_work_and_gives_the_lease_up(
    tmp_path, fake_cloudflare, signum
):
    fake_cloudflare.latency = 2.0  # the job is at the provider when the signal comes
    answered, refused, health, status, data = await stop_mid_job(
        tmp_path, fake_cloudflare, "60", signum
    )
    assert answered.status_code == 201  # the running job finished
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert refused.json()["details"]["code"] == "shutting_down"
    assert health.json() == {"status": "stopping", "checks": {"process": "stopping"}}
    assert status == 0
    assert live_instances(data) == 0  # released at once, not left to run out in an hour
    ledger = await Ledger.open(data / "bot.sqlite3")
    try:
        assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
        usage = await ledger.user_usage("77")
        assert usage.images == 1  # charged once: the new request made nothing
        assert usage.micro_usd == answered.json()["cost_micro_usd"] > 0
    finally:
        await ledger.close()


async def test_a_job_longer_than_the_grace_is_refunded_and_nothing_is_left_open(
    tmp_path, fake_cloudflare
):
    fake_cloudflare.latency = 600.0  # far longer than the grace (ends when the fake closes)
    answered, refused, _, status, data = await stop_mid_job(
        tmp_path, fake_cloudflare, "1", signal.SIGTERM
    )
    assert answered.status_code == 503 and "nothing was charged" in answered.text
    assert answered.headers["Retry-After"] == "5"
    assert refused.status_code == 503
    assert status == 0
    assert live_instances(data) == 0
    ledger = await Ledger.open(data / "bot.sqlite3")
    try:
        assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
        usage = await ledger.user_usage("77")
        assert (usage.images, usage.micro_usd) == (0, 0)
    finally:
        await ledger.close()


async def test_a_second_signal_exits_at_once(tmp_path, fake_cloudflare):
    fake_cloudflare.latency = 600.0
    data = tmp_path / "data"
    data.mkdir()
    env = {**bot_env(data, free_port(), fake_cloudflare, "cloudflare"),
           "SHUTDOWN_GRACE_SECONDS": "3600"}  # fmt: skip
    key = await create_key(env, tmp_path)
    server = await start_server(env, tmp_path)
    base = f"http://127.0.0.1:{env['WEB_PORT']}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        running = asyncio.create_task(
            client.post("/api/generate", json={"prompt": "a lighthouse"},
                        headers={"Authorization": f"Bearer {key}"})
        )  # fmt: skip

        async def generating() -> bool:
            return fake_cloudflare.ai_calls > 0

        await until(generating, "the job reached the provider")
        server.send_signal(signal.SIGTERM)

        async def stopping() -> bool:
            return (await client.get("/healthz")).status_code == 503

        await until(stopping, "the server is stopping")
        server.send_signal(signal.SIGTERM)  # the job would hold the stop for an hour
        assert await asyncio.wait_for(server.wait(), 60) == 128 + signal.SIGTERM
        with pytest.raises(httpx.TransportError):
            await running


async def test_stop_signals_count_in_process(caplog: pytest.LogCaptureFixture) -> None:
    """The first signal asks for the stop (once), the second exits with 128 + its number; the
    handlers are put back on the way out."""
    caplog.set_level(logging.WARNING, "bot.shutdown")
    stops: list[None] = []
    exits: list[int] = []
    with stop_signals(lambda: stops.append(None)) as signals:
        assert isinstance(signals, StopSignals)
        signals.exit = exits.append
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(signals.requested.wait(), 30)
        assert (stops, exits) == ([None], [])
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            if exits:
                break
            await asyncio.sleep(0.01)
    assert (stops, exits) == ([None], [128 + signal.SIGTERM])
    assert "SIGINT: stopping" in caplog.text and "SIGTERM again: exiting now" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# -- one-shot commands: `python -m bot imagine` stopped mid-generation -----------------------


async def imagine_stopped(  # type: ignore[no-untyped-def]
    tmp_path: Path, fake, signum: int, *extra: str
) -> tuple[int, str, str, Path]:
    """``python -m bot imagine`` sent ``signum`` while its job is at the fake's /ai/run: exit
    status, stdout, stderr, the data directory."""
    data = tmp_path / "data"
    data.mkdir()
    env = {**bot_env(data, free_port(), fake, "cloudflare"), "JOB_LEASE_SECONDS": LONG_LEASE}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "imagine", "a lighthouse", "--user", "77", *extra,
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip

    async def generating() -> bool:
        return fake.ai_calls > 0

    await until(generating, "the job reached the provider")
    process.send_signal(signum)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode(), data


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_one_shot_imagine_stopped_mid_job_refunds_it_and_exits_128_plus_the_signal(
    tmp_path, fake_cloudflare, signum
):
    fake_cloudflare.latency = 600.0  # the job stays at the provider until the signal
    status, out, err, data = await imagine_stopped(tmp_path, fake_cloudflare, signum)
    name = signal.Signals(signum).name
    assert status == 128 + signum, err
    assert "Traceback" not in err and out == "", err
    assert "stopped before it finished: refunded, the image was not charged" in err
    assert err.rstrip().endswith(f"stopped by {name}")
    assert live_instances(data) == 0  # its lease given up, nothing left for recovery
    ledger = await Ledger.open(data / "bot.sqlite3")
    try:
        assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
        rows = await ledger.database.all("SELECT state FROM jobs WHERE kind = 'generate'")
        assert [row[0] for row in rows] == ["refunded"]  # reserved, then refunded by the stop
        usage = await ledger.user_usage("77")
        assert (usage.images, usage.micro_usd) == (0, 0)
    finally:
        await ledger.close()


async def test_a_one_shot_imagine_stopped_says_so_in_json(tmp_path, fake_cloudflare):
    fake_cloudflare.latency = 600.0
    status, out, err, _ = await imagine_stopped(
        tmp_path, fake_cloudflare, signal.SIGTERM, "--json"
    )
    assert status == 128 + signal.SIGTERM and "Traceback" not in err
    assert json.loads(out) == {"error": "stopped by SIGTERM", "code": "stopped"}
