"""Signed, expiring links to the web gallery: who may see what, until when.

A link carries its grant (the user, the server, whether it is the server's gallery) and its
expiry, followed by an HMAC-SHA256 of both under a secret only the bot knows. Nothing is stored:
verifying is recomputing the MAC (compared in constant time) and reading the clock. The token is
one URL-safe run of characters, so the log filter can mask it like any secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot.config import Settings
from bot.errors import Forbidden
from bot.logs import register_secret

MAC_CHARS = 43  # an HMAC-SHA256 in unpadded base64url
SECRET_FILE = "gallery.secret"  # noqa: S105 (a file name, not a secret)


class LinkRefused(Forbidden):
    """The link is missing, altered or expired (the pages answer 403)."""


@dataclass(frozen=True)
class GalleryAccess:
    """What one link grants: ``user_id``'s images, or with ``server`` the server's."""

    user_id: str
    guild_id: str
    server: bool
    expires_at: int  # Unix seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class GalleryLinks:
    def __init__(self, secret: bytes, hours: int, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.hours = hours
        self._clock = clock

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def token(self, user_id: str, guild_id: str, *, server: bool = False) -> str:
        """A token granting this view for the next GALLERY_LINK_HOURS."""
        expires = int(self._clock()) + self.hours * 3600
        grant = {"u": user_id, "g": guild_id, "s": int(server), "e": expires}
        payload = _b64(json.dumps(grant, separators=(",", ":")).encode())
        token = payload + self._mac(payload)
        register_secret(token)
        return token

    def verify(self, token: str | None) -> GalleryAccess:
        """The grant of a genuine, unexpired token; LinkRefused otherwise (one message for
        every reason, so a guesser learns nothing)."""
        refused = LinkRefused("This gallery link is not valid or has expired; ask /gallery again.")
        if not token or len(token) <= MAC_CHARS or len(token) > 1024 or not token.isascii():
            raise refused
        payload, mac = token[:-MAC_CHARS], token[-MAC_CHARS:]
        if not hmac.compare_digest(self._mac(payload), mac):
            raise refused
        try:
            grant = json.loads(_unb64(payload))
            access = GalleryAccess(
                str(grant["u"]), str(grant["g"]), bool(grant["s"]), int(grant["e"])
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise refused from None
        if access.expires_at <= self._clock():
            raise refused
        return access


def gallery_secret(settings: Settings) -> bytes:
    """GALLERY_SECRET, else a random secret generated once into DATA_DIR (owner-only)."""
    if settings.gallery_secret:
        return settings.gallery_secret.encode()
    path = Path(settings.data_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        kept = path.read_bytes().strip()
        if len(kept) >= 32:
            return kept
        descriptor = os.open(path, os.O_WRONLY | os.O_TRUNC)  # cut short by a crash: anew
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_urlsafe(48))
    return path.read_bytes().strip()
