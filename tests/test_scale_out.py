"""Scale-out for real: 2 shard processes (``python -m bot``, shards 0 and 1 of 2) and 2 ``python
-m bot serve`` processes on one PostgreSQL ledger, the sharded fake Discord and a fake Cloudflare
failing 20% of generations in the test process.

1,000 requests from 50 users over 4 servers (2 on each shard) through Discord and the HTTP API
together, with quotas that refuse some. Afterwards the books are exact to the micro-dollar (per
user, server and day: settled charges = counters = the images Cloudflare answered × the price),
nobody is over a quota, nothing is reserved, every image made was delivered. Identical requests
sent at once to one process make one generation. Then one shard process is killed with SIGKILL
mid-load: the others settle or refund its jobs after its lease runs out, without it; started
again, its earlier messages' buttons work.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from bot.api_keys import ApiKeys
from bot.ledger import Ledger
from tests.conftest import FAKE_CF_TOKEN, SECRETS
from tests.fakes.cloudflare import FakeCloudflare
from tests.fakes.discord import FakeDiscord, FakeGuild, FakeUser
from tests.scale_harness import (
    GUILD_DAILY_MICRO_USD,
    PRICE_MICRO_USD,
    SMALL,
    USER_DAILY_IMAGES,
    Cluster,
    Outcome,
    via_api,
    via_discord,
)
from tests.test_fault_campaign import final_messages
from tests.test_shard_processes import has_result

FAKE_ACCOUNT_LIMIT = 6000  # per 5 minutes; the processes share 5,000 (cluster_env)
REQUESTS = 1000
USERS = 50
GROUP = 8  # identical requests sent at once
IN_FLIGHT = 48  # requests outstanding at once (the fake Discord enforces the 3 s ack deadline)
FAULT_KINDS = ("429", "500", "3040", "timeout", "malformed", "3030")


async def make_keys(url: str, users: list[FakeUser], home: dict[int, FakeGuild]) -> dict[int, str]:
    """One API key per user, bound to the user's server (so both fronts share its quotas)."""
    ledger = await Ledger.open(url)
    try:
        keys = ApiKeys(ledger)
        made = {}
        for user in users:
            _, plaintext = await keys.create(user_id=str(user.id), guild_id=str(home[user.id].id))
            made[user.id] = plaintext
        return made
    finally:
        await ledger.close()


async def audit(url: str) -> dict[str, int]:
    ledger = await Ledger.open(url)
    try:
        return await ledger.audit()
    finally:
        await ledger.close()


async def rows(url: str, sql: str) -> list[Any]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


async def check_books(url: str, cloudflare: FakeCloudflare, exact: set[str]) -> None:
    """Exact to the micro-dollar per user, server and day: each settled charge is its images ×
    the price, the counters equal the charges (``audit``), and the images made for each prompt
    are what the fake Cloudflare answered for it (for ``exact`` prompts; for the others, those
    a killed process may have been answered for without storing, at most that). Nobody over
    their quota, nothing reserved."""
    assert await audit(url) == {"counter_mismatches": 0, "open_jobs": 0}
    charged = await rows(url, """
        SELECT user_id, guild_id, day, SUM(images) AS images, SUM(micro_usd) AS usd
          FROM jobs WHERE state = 'settled' GROUP BY user_id, guild_id, day""")  # fmt: skip
    made = await rows(url, """
        SELECT i.user_id, i.guild_id, j.day, i.prompt, i.cost_micro_usd
          FROM images i JOIN jobs j ON j.id = i.job_id
         WHERE i.kind = 'generated' AND i.cached = 0""")  # fmt: skip
    assert made and all(r["cost_micro_usd"] == PRICE_MICRO_USD for r in made)
    unpaid = await rows(url, """
        SELECT i.id, i.prompt, j.state, j.images, j.error_code, j.note
          FROM images i JOIN jobs j ON j.id = i.job_id
         WHERE i.kind = 'generated' AND i.cached = 0 AND (j.state != 'settled'
            OR j.images != (SELECT COUNT(*) FROM images k WHERE k.job_id = j.id
                            AND k.cached = 0))""")  # fmt: skip
    assert unpaid == [], [dict(r) for r in unpaid]  # no image recorded without its charge
    per_scope = Counter((r["user_id"], r["guild_id"], r["day"]) for r in made)
    per_guild: Counter[tuple[str, str]] = Counter()
    for r in charged:
        scope = (r["user_id"], r["guild_id"], r["day"])
        assert (r["images"], r["usd"]) == (per_scope[scope], per_scope[scope] * PRICE_MICRO_USD)
        assert r["images"] <= USER_DAILY_IMAGES, scope  # no user over its quota
        per_guild[(r["guild_id"], r["day"])] += r["usd"]
    assert sum(per_scope.values()) == sum(r["images"] for r in charged)
    assert max(per_guild.values()) <= GUILD_DAILY_MICRO_USD  # no server over its budget
    by_prompt = Counter(r["prompt"] for r in made)
    for prompt, answered in cloudflare.answered.items():
        if prompt in exact:
            assert by_prompt[prompt] == answered, prompt
        else:
            assert by_prompt[prompt] <= answered, prompt
    assert set(by_prompt) <= set(cloudflare.answered)  # nothing charged Cloudflare did not make


async def recorded_ids(url: str) -> set[str]:
    return {r["id"] for r in await rows(url, "SELECT id FROM images WHERE kind = 'generated'")}


async def one_flight_groups(
    client: httpx.AsyncClient, bases: list[str], keys: dict[int, str], users: list[FakeUser],
    cloudflare: FakeCloudflare,
) -> list[Outcome]:  # fmt: skip
    """Identical requests at once make one generation, whether they reach one serve process or
    are split across both (single-flight is shared through the ledger's ``flights``)."""
    one, split = "one flight in one process", "one flight across two processes"
    group_one = [via_api(client, bases[0], keys[u.id], one) for u in users[0 : 4 * GROUP : 4]]
    group_split = [via_api(client, bases[n % 2], keys[u.id], split)
                   for n, u in enumerate(users[1 : 4 * GROUP : 4])]  # fmt: skip
    outcomes = await asyncio.gather(*group_one, *group_split)
    assert all(o.kind == "image" for o in outcomes), [o.detail for o in outcomes]
    assert cloudflare.answered[one] == 1
    assert cloudflare.answered[split] == 1
    return list(outcomes)


async def main_load(
    client: httpx.AsyncClient, discord: FakeDiscord, bases: list[str], keys: dict[int, str],
    users: list[FakeUser], home: dict[int, FakeGuild],
) -> list[Outcome]:  # fmt: skip
    """REQUESTS requests, each user's half through Discord and half through the API (both
    serve processes), in a shuffled order, IN_FLIGHT at a time."""
    plan = [(i, n) for i in range(USERS) for n in range(REQUESTS // USERS)]
    random.Random(2026).shuffle(plan)
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int, n: int) -> Outcome:
        user, prompt = users[i], f"scale u{i} n{n}"
        async with gate:
            if n % 2 == 0:
                return await via_discord(discord, user, home[user.id], prompt)
            return await via_api(client, bases[(i + n) % 2], keys[user.id], prompt)

    return list(await asyncio.gather(*(one(i, n) for i, n in plan)))


async def kill_mid_load(
    cluster: Cluster, users: list[FakeUser], guilds: list[FakeGuild]
) -> tuple[float, list[str]]:
    """/imagine to shard 1's fresh servers; SIGKILL shard 1 once some results are shown and
    an upload is stored but not yet answered (so not recorded: the fake says, not a count of
    what was shown, which also counts results recorded but on their way), some still running.
    Its prompts, and the seconds until the others closed its jobs."""
    discord, cloudflare = cluster.discord, cluster.cloudflare
    cloudflare.upload_reply_latency = 1.0  # a window where uploads landed unrecorded
    others = ("shard0", "serve0", "serve1")
    lines_before = len(cluster.recovery_lines(*others))
    prompts = [f"late u{i} n{n}" for i in range(len(users)) for n in range(4)]
    interactions = [
        await discord.slash("imagine", {"prompt": p, **SMALL}, user=users[k // 4],
                            guild=guilds[k % len(guilds)])
        for k, p in enumerate(prompts)
    ]  # fmt: skip
    for _ in range(3000):
        shown = sum(1 for i in interactions if any(has_result(m) for m in i.messages))
        if shown and cloudflare.unanswered_uploads and shown < len(interactions):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the load never reached the state to kill it in")
    cluster.kill("shard1")
    killed_at = time.monotonic()
    await cluster.processes["shard1"].wait()
    assert (await audit(cluster.database_url))["open_jobs"] >= 1  # the killed process's
    for _ in range(1200):  # its lease is 2 s; every process sweeps every 2/3 s
        closed = len(cluster.recovery_lines(*others)) > lines_before
        if closed and (await audit(cluster.database_url))["open_jobs"] == 0:
            return time.monotonic() - killed_at, prompts
        await asyncio.sleep(0.05)
    raise AssertionError("no live process closed the killed process's jobs")


async def buttons_after_restart(
    discord: FakeDiscord, url: str, cloudflare: FakeCloudflare, shown: list[tuple[Any, Outcome]],
    owner: dict[str, FakeUser],
) -> None:  # fmt: skip
    """Details and Delete on messages shard 1 posted before it was killed, answered by the
    process started again; Details on one of shard 0's, answered by shard 0."""
    on_one = [(m, o) for m, o in shown if o.interaction.shard == 1]
    on_zero = [(m, o) for m, o in shown if o.interaction.shard == 0]
    for (message, outcome), shard in ((on_one[0], 1), (on_zero[0], 0)):
        image_id = outcome.image_ids[0]
        details = await discord.click(message, f"img:info:{image_id}")
        info = await details.wait_for_message(lambda m: bool(m.embeds), 60)
        assert details.shard == shard and image_id in str(info.embeds[0])
    message, outcome = on_one[1]
    image_id = outcome.image_ids[0]
    assert image_id in cloudflare.images
    await discord.click(message, f"img:delete:{image_id}", user=owner[outcome.prompt])
    for _ in range(1200):
        deleted = await rows(url, f"SELECT is_deleted FROM images WHERE id = '{image_id}'")  # noqa: S608
        if deleted[0]["is_deleted"] and image_id not in cloudflare.images:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the Delete button of the restarted process's message did nothing")


@pytest.mark.timeout(900)
async def test_scale_out_on_one_postgresql(tmp_path: Path, postgres_url: str) -> None:
    started = time.monotonic()
    async with (
        FakeDiscord() as discord,
        FakeCloudflare(api_token=FAKE_CF_TOKEN, account_id="acct-test") as cloudflare,
    ):
        discord.channel_rate = None  # about Cloudflare's faults and the books, not pacing
        # The load makes a few thousand API calls in minutes: the fake's account limit is raised
        # above the processes' one shared budget (cluster_env), and must never block the account.
        cloudflare.account_limit = FAKE_ACCOUNT_LIMIT
        guilds = [discord.add_guild(f"Server {n}", shard=(n % 2, 2)) for n in range(4)]
        late_guilds = [discord.add_guild(f"Late {n}", shard=(1, 2)) for n in range(2)]
        users = [discord.add_user(f"user{n}") for n in range(USERS)]
        late_users = [discord.add_user(f"late{n}") for n in range(10)]
        home = {u.id: guilds[n % 4] for n, u in enumerate(users)}
        keys = await make_keys(postgres_url, users, home)
        cluster = Cluster(discord, cloudflare, postgres_url, tmp_path)
        try:
            await cluster.start_shard(0)
            await discord.wait_until(lambda: discord.sync_count == 1, 120)
            await cluster.start_shard(1)
            bases = [await cluster.start_serve(0), await cluster.start_serve(1)]
            limits = httpx.Limits(max_connections=IN_FLIGHT * 2)
            async with httpx.AsyncClient(timeout=300, limits=limits) as client:
                groups = await one_flight_groups(client, bases, keys, users, cloudflare)
                cloudflare.fault_rate = 0.2
                cloudflare.fault_kinds = FAULT_KINDS
                cloudflare.hang_seconds = 4.0  # past the processes' 3 s Cloudflare timeout
                outcomes = await main_load(client, discord, bases, keys, users, home)
            load_seconds = time.monotonic() - started
            kinds = Counter((o.front, o.kind) for o in outcomes)
            print(f"scale-out: {kinds}, {cloudflare.ai_calls} Workers AI calls")
            errors = [o.detail for o in outcomes if o.kind == "error"]
            print(f"scale-out: errors {errors[:5]}")
            assert cloudflare.account_429s == 0  # one shared budget kept all four under it
            assert {k for _, k in kinds} <= {"image", "quota", "error"}, kinds
            assert kinds[("discord", "image")] and kinds[("api", "image")]
            assert kinds[("discord", "quota")] and kinds[("api", "quota")]
            everything = groups + outcomes
            await check_books(postgres_url, cloudflare, {o.prompt for o in everything})
            delivered = {image_id for o in everything for image_id in o.image_ids}
            assert await recorded_ids(postgres_url) == delivered  # every image made was shown

            recovered_in, late = await kill_mid_load(cluster, late_users, late_guilds)
            closers = cluster.recovery_lines("shard0", "serve0", "serve1")
            print(f"scale-out: load {load_seconds:.0f} s; the killed shard's jobs closed "
                  f"{recovered_in:.1f} s after the kill: {closers}")  # fmt: skip
            await check_books(postgres_url, cloudflare, {o.prompt for o in everything})
            recorded = await recorded_ids(postgres_url)
            assert set(cloudflare.images) <= recorded  # nothing stored goes unrecorded
            found = sum(int(line.split(" stored image(s)")[0].split()[-1]) for line in closers)
            assert found >= 1  # uploads stored but not recorded when it died: recorded, charged
            assert all(p in late for p in cloudflare.answered if p.startswith("late "))

            await cluster.start_shard(1)
            shown = [(final_messages(o.interaction)[0], o) for o in outcomes
                     if o.front == "discord" and o.kind == "image"]  # fmt: skip
            owner = {f"scale u{i} n{n}": users[i] for i in range(USERS) for n in range(20)}
            await buttons_after_restart(discord, postgres_url, cloudflare, shown, owner)
            assert await audit(postgres_url) == {"counter_mismatches": 0, "open_jobs": 0}
        finally:
            codes = await cluster.stop_all()
        # Every process, shard or ``serve``, drains and exits 0 on SIGTERM (bot/shutdown.py).
        expected = {"shard0": 0, "shard1": 0, "serve0": 0, "serve1": 0}
        assert codes == expected, (codes, cluster.logs)
        assert not discord.errors
    for log in sorted(cluster.root.glob("*.log")):  # after the run
        text = log.read_text(errors="replace")  # no process logged a secret (DATABASE_URL's)
        assert not any(secret in text for secret in SECRETS), log.name
    print(f"scale-out: wall time {time.monotonic() - started:.0f} s")
