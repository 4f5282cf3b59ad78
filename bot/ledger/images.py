"""Image records: generated and uploaded images, their cache keys and where their bytes are.

One statement per operation; the prefix search keeps two spellings side by side, chosen by
the database's ``dialect``: SQLite's ``LIKE`` is case-insensitive for ASCII, PostgreSQL's
``ILIKE`` is the same search. Booleans are stored as 0/1 in both (see ``ImageRecord.to_row``).
"""

from __future__ import annotations

from bot.errors import NotFound
from bot.ledger.core import LedgerDatabase, insert_statement
from bot.ledger.records import OPEN_STATES, ImageRecord

INSERT_IMAGE_SQL = insert_statement("images", ImageRecord.COLUMNS)
# The fenced insert: written only while its job is open and still this process's, so a process
# that stalled past its lease never records an image crash recovery recorded (or refunded)
# meanwhile. An INSERT … SELECT gives PostgreSQL no column types, so the numbers say theirs.
_TYPES = dict.fromkeys(("width", "height", "steps", "seed", "bytes", "cost_micro_usd",
                        "cost_milli_neurons", "cached", "is_deleted", "private"), "BIGINT")
_TYPES.update(guidance="DOUBLE PRECISION", strength="DOUBLE PRECISION")
_TYPED = ", ".join(f"CAST(? AS {_TYPES[c]})" if c in _TYPES else "?" for c in ImageRecord.COLUMNS)
INSERT_OWN_IMAGE_SQL = (
    f"INSERT INTO images ({', '.join(ImageRecord.COLUMNS)}) SELECT {_TYPED} "  # noqa: S608
    f"WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ? AND state IN {OPEN_STATES!r} AND owner = ?)"
)
IMAGE_BY_ID_SQL = "SELECT * FROM images WHERE id = ?"
IMAGES_OF_JOB_SQL = "SELECT * FROM images WHERE job_id = ? ORDER BY created_at, id"
CACHED_SQL = (
    "SELECT * FROM images WHERE cache_key = ? AND cache_scope = ? AND is_deleted = 0 "
    "ORDER BY cached, created_at LIMIT 1"
)
_USER_IMAGES = (
    "SELECT * FROM images WHERE user_id = ? AND is_deleted = 0 "
    "AND (CAST(? AS TEXT) IS NULL OR created_at < ?) "
    "AND (id {like} ? OR prompt {like} ?) ORDER BY created_at DESC LIMIT ?"
)
USER_IMAGES_SQL = {
    "sqlite": _USER_IMAGES.format(like="LIKE"),
    "postgresql": _USER_IMAGES.format(like="ILIKE"),
}
# A server's view (no user) leaves out private results: they are their owner's alone.
GALLERY_WHERE = (
    "is_deleted = 0 AND (CAST(? AS TEXT) IS NULL OR user_id = ?) "
    "AND (CAST(? AS TEXT) IS NULL OR guild_id = ?) AND (CAST(? AS TEXT) IS NOT NULL OR private = 0)"
)
GALLERY_COUNT_SQL = f"SELECT COUNT(*) FROM images WHERE {GALLERY_WHERE}"  # noqa: S608
GALLERY_PAGE_SQL = (
    f"SELECT * FROM images WHERE {GALLERY_WHERE} "  # noqa: S608
    "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
)
MARK_DELETED_SQL = (
    "UPDATE images SET is_deleted = 1, deleted_at = ? WHERE id = ? AND is_deleted = 0"
)
LIVE_AT_SQL = (
    "SELECT * FROM images WHERE storage_key = ? AND is_deleted = 0 ORDER BY created_at, id"
)
MOVE_STORAGE_SQL = (
    "UPDATE images SET storage_key = ?, url = ? WHERE storage_key = ? AND is_deleted = 0 "
    "AND id != ?"
)
MARK_DELETED_AT_SQL = (
    "UPDATE images SET is_deleted = 1, deleted_at = ? WHERE storage_key = ? AND is_deleted = 0"
)


class ImageTable:
    """Every read and write of image records."""

    def __init__(self, db: LedgerDatabase) -> None:
        self._db = db

    async def add(self, image: ImageRecord) -> None:
        await self._db.write(INSERT_IMAGE_SQL, image.to_row())

    async def add_own(self, image: ImageRecord, owner: str) -> bool:
        """Record an image of a job ``owner`` still runs; False (nothing written) if not."""
        params = (*image.to_row(), image.job_id, owner)
        return await self._db.write(INSERT_OWN_IMAGE_SQL, params) == 1

    async def get(self, image_id: str) -> ImageRecord:
        row = await self._db.one(IMAGE_BY_ID_SQL, (image_id,))
        if row is None:
            raise NotFound(f"No image with id {image_id}.")
        return ImageRecord.from_row(row)

    async def of_job(self, job_id: str) -> list[ImageRecord]:
        return [ImageRecord.from_row(r) for r in await self._db.all(IMAGES_OF_JOB_SQL, (job_id,))]

    async def by_ids(self, image_ids: list[str]) -> list[ImageRecord]:
        found = {}
        for image_id in image_ids:
            row = await self._db.one(IMAGE_BY_ID_SQL, (image_id,))
            if row is not None:
                found[image_id] = ImageRecord.from_row(row)
        return [found[i] for i in image_ids if i in found]

    async def find_cached(self, cache_key: str, cache_scope: str) -> ImageRecord | None:
        row = await self._db.one(CACHED_SQL, (cache_key, cache_scope))
        return ImageRecord.from_row(row) if row else None

    async def of_user(
        self, user_id: str, *, limit: int, before: str | None, prefix: str
    ) -> list[ImageRecord]:
        """A user's live images, newest first; ``prefix`` filters ids or prompts."""
        rows = await self._db.all(
            USER_IMAGES_SQL[self._db.dialect],
            (user_id, before, before, f"{prefix}%", f"%{prefix}%", limit),
        )
        return [ImageRecord.from_row(r) for r in rows]

    async def gallery_page(
        self, *, user_id: str | None, guild_id: str | None, limit: int, offset: int
    ) -> tuple[list[ImageRecord], int]:
        """One page of live images (a user's, a server's, or one user's in one server), newest
        first, and how many there are in all."""
        params = (user_id, user_id, guild_id, guild_id, user_id)
        total = await self._db.scalar(GALLERY_COUNT_SQL, params)
        rows = await self._db.all(GALLERY_PAGE_SQL, (*params, limit, offset))
        return [ImageRecord.from_row(r) for r in rows], total

    async def mark_deleted(self, image_id: str) -> bool:
        return await self._db.write(MARK_DELETED_SQL, (self._db.now_iso(), image_id)) == 1

    async def live_at(self, storage_key: str) -> list[ImageRecord]:
        """The live records (an original and its cache hits) whose bytes are at this key."""
        return [ImageRecord.from_row(r) for r in await self._db.all(LIVE_AT_SQL, (storage_key,))]

    async def move_storage(self, old_key: str, new_key: str, new_url: str, except_id: str) -> int:
        """Point every live record at ``old_key`` but one to a copy of its bytes at
        ``new_key``."""
        return await self._db.write(MOVE_STORAGE_SQL, (new_key, new_url, old_key, except_id))

    async def mark_deleted_at(self, storage_key: str) -> int:
        """Mark every live record at this key deleted (a moderator's delete)."""
        return await self._db.write(MARK_DELETED_AT_SQL, (self._db.now_iso(), storage_key))
