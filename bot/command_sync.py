"""Slash-command sync that happens only when the commands changed, in exactly one scope.

Discord allows 200 command creates a day per server and re-syncing on every start spends them
and delays start-up, so each scope's schema hash is kept in ``DATA_DIR/discord_commands.json``
(per application, so a new bot token on the same data syncs afresh) and a scope is synced only
when its hash differs. The commands live either globally or (with
``DISCORD_GUILD_ID``, for development) in one server, never both: switching empties the scope
that was used before, so Discord never shows a command twice. Delete the file to force a sync
(for example after changing commands by hand in the Developer Portal).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import discord
from discord import app_commands

log = logging.getLogger(__name__)

STATE_FILE = "discord_commands.json"
GLOBAL = "global"


def schema_hash(payload: list[dict[str, Any]]) -> str:
    """A stable fingerprint of what a bulk overwrite would send."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


EMPTY = schema_hash([])


def _payload(tree: app_commands.CommandTree[Any], guild: discord.Object | None) -> list[Any]:
    return [command.to_dict(tree) for command in tree.get_commands(guild=guild)]


def _load(path: Path) -> dict[str, str]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(state, dict):
        return {}
    return {str(k): str(v) for k, v in state.items()}


def _save(path: Path, state: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(temporary, path)


async def sync_commands(
    tree: app_commands.CommandTree[Any], data_dir: Path, guild_id: int | None
) -> list[str]:
    """Sync the tree where it belongs if its schema changed; empty scopes used before. Returns
    the scopes written (``"global"`` or a server id), for the log."""
    path = data_dir / STATE_FILE
    state = _load(path)
    app = f"{tree.client.application_id}/"  # keys are "<application id>/<scope>"
    stored = {key.removeprefix(app): value for key, value in state.items() if key.startswith(app)}
    active = str(guild_id) if guild_id else GLOBAL
    if guild_id:
        tree.copy_global_to(guild=discord.Object(id=guild_id))
    wanted = dict.fromkeys(stored, EMPTY)
    if guild_id:
        wanted.setdefault(GLOBAL, EMPTY)  # a global copy from an earlier run would show twice
    active_guild = discord.Object(id=guild_id) if guild_id else None
    wanted[active] = schema_hash(_payload(tree, active_guild))
    written = []
    for scope, digest in sorted(wanted.items()):
        if stored.get(scope) == digest:
            continue
        if scope == active:
            await tree.sync(guild=active_guild)
        elif scope == GLOBAL:
            await tree.client.http.bulk_upsert_global_commands(tree.client.application_id, [])
        else:
            app_id = tree.client.application_id
            await tree.client.http.bulk_upsert_guild_commands(app_id, int(scope), [])
        state[app + scope] = digest
        _save(path, state)
        written.append(scope)
    log.info("commands: %s", f"synced {', '.join(written)}" if written else "unchanged, no sync")
    return written
