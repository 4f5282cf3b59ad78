"""API keys on a real SQLite ledger: shown once and stored only as a hash, refused when unknown,
malformed or revoked, at most ten active per user, revoked only by their owner or an admin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.api_keys import KEY_PREFIX, MAX_KEYS_PER_USER, ApiKeys, hash_key
from bot.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from bot.ledger import Ledger


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    ledger = await Ledger.open(tmp_path / "keys.sqlite3")
    try:
        yield ledger
    finally:
        await ledger.close()


async def test_a_key_is_shown_once_and_only_its_hash_is_stored(
    ledger: Ledger, tmp_path: Path
) -> None:
    keys = ApiKeys(ledger)
    key, plaintext = await keys.create(user_id="u1", guild_id="g1", name="my script")
    assert plaintext.startswith(KEY_PREFIX) and len(plaintext) > 40
    assert key.key_hash == hash_key(plaintext) != plaintext
    assert key.hint == f"{plaintext[:9]}…{plaintext[-4:]}"
    assert (key.user_id, key.guild_id, key.name) == ("u1", "g1", "my script")
    assert (await keys.authenticate(plaintext)).id == key.id
    on_disk = await asyncio.to_thread(
        lambda: b"".join(p.read_bytes() for p in tmp_path.glob("keys.sqlite3*"))
    )  # the database and its write-ahead log, as they are on disk
    assert plaintext.encode() not in on_disk
    assert plaintext[len(KEY_PREFIX) :].encode() not in on_disk
    assert key.key_hash.encode() in on_disk


@pytest.mark.parametrize(
    "presented",
    [None, "", "not-a-key", KEY_PREFIX, KEY_PREFIX + "x" * 300, "Bearer " + KEY_PREFIX + "abc"],
)
async def test_missing_and_malformed_keys_are_unauthorized(
    ledger: Ledger, presented: str | None
) -> None:
    await ApiKeys(ledger).create(user_id="u1")
    with pytest.raises(Unauthorized):
        await ApiKeys(ledger).authenticate(presented)


async def test_a_wrong_or_revoked_key_is_refused(ledger: Ledger) -> None:
    keys = ApiKeys(ledger)
    key, plaintext = await keys.create(user_id="u1")
    with pytest.raises(Unauthorized):
        await keys.authenticate(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B"))
    await keys.revoke(key.id, requester_id="u1")
    with pytest.raises(Unauthorized) as refused:
        await keys.authenticate(plaintext)
    assert "revoked" in refused.value.user_message
    assert plaintext not in refused.value.user_message


async def test_ten_active_keys_per_user_and_revoking_one_frees_a_place(ledger: Ledger) -> None:
    keys = ApiKeys(ledger)
    made = [(await keys.create(user_id="u1"))[0] for _ in range(MAX_KEYS_PER_USER)]
    with pytest.raises(InvalidRequest) as refused:
        await keys.create(user_id="u1")
    assert refused.value.details["field"] == "name"
    await keys.create(user_id="u2")  # another user's count is their own
    await keys.revoke(made[0].id, requester_id="u1")
    await keys.create(user_id="u1")
    listed = await keys.list("u1")
    assert len(listed) == MAX_KEYS_PER_USER + 1
    assert sum(k.revoked_at is None for k in listed) == MAX_KEYS_PER_USER


async def test_only_the_owner_or_an_admin_revokes_and_only_once(ledger: Ledger) -> None:
    keys = ApiKeys(ledger)
    key, _ = await keys.create(user_id="owner")
    with pytest.raises(NotFound):  # someone else's key is not even said to exist
        await keys.revoke(key.id, requester_id="stranger")
    with pytest.raises(NotFound):
        await keys.revoke("key_no-such-key", requester_id="owner")
    assert (await keys.revoke(key.id, requester_id="admin", is_admin=True)).id == key.id
    with pytest.raises(Forbidden):
        await keys.revoke(key.id, requester_id="owner")


async def test_names_are_cleaned_clipped_and_defaulted(ledger: Ledger) -> None:
    keys = ApiKeys(ledger)
    default, _ = await keys.create(user_id="u1", name="  \x00\x1b ")
    assert default.name == "API key"
    long, _ = await keys.create(user_id="u1", name="n" * 80)
    assert long.name == "n" * 50
    assert {k.name for k in await keys.list("u1")} == {"API key", "n" * 50}
