"""The `BlobStore` port as a table of bytes, in the backend's own database.

Each call is its own statement and commits on its own; a write issued on SQLite from
inside one of the backend's open transactions joins that transaction (see `_engine`).
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, select

from stagewise._errors import BlobNotFoundError
from stagewise_sql._engine import Database
from stagewise_sql._schema import blobs
from stagewise_sql._statements import upsert

_GET = select(blobs.c.data).where(blobs.c.key == bindparam("key"))
_HAS = select(blobs.c.key).where(blobs.c.key == bindparam("key"))
_DELETE = delete(blobs).where(blobs.c.key == bindparam("key"))


class SqlBlobStore:
    """The `BlobStore` port on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, key: str, data: bytes) -> None:
        async with self._db.single(write=True) as link:
            await link.execute(upsert(blobs, self._db.dialect), {"key": key, "data": bytes(data)})

    async def get(self, key: str) -> bytes:
        """The blob's bytes.

        Raises:
            BlobNotFoundError: no blob has that key.
        """
        async with self._db.single(write=False) as link:
            data = (await link.execute(_GET, {"key": key})).scalar_one_or_none()
        if data is None:
            raise BlobNotFoundError(key)
        return bytes(data)

    async def has(self, key: str) -> bool:
        async with self._db.single(write=False) as link:
            return (await link.execute(_HAS, {"key": key})).first() is not None

    async def delete(self, key: str) -> None:
        async with self._db.single(write=True) as link:
            await link.execute(_DELETE, {"key": key})

    async def list(self, prefix: str) -> list[str]:
        """Keys starting with `prefix`, sorted (byte-wise, as Python sorts strings)."""
        stmt = select(blobs.c.key).order_by(blobs.c.key)
        if prefix:
            stmt = stmt.where(blobs.c.key >= prefix)
            upper = _successor(prefix)
            if upper is not None:
                stmt = stmt.where(blobs.c.key < upper)
        async with self._db.single(write=False) as link:
            keys = list((await link.execute(stmt)).scalars())
        # The range is exact; the check covers prefixes without a successor.
        return [k for k in keys if k.startswith(prefix)]


def _successor(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with `prefix`.

    Keys in [prefix, successor) are exactly the keys starting with `prefix` (a range an
    index serves; LIKE would be case-insensitive on SQLite and need escaping).
    """
    last = ord(prefix[-1])
    if last >= 0x10FFFF or 0xD7FF <= last < 0xE000:
        return None  # no encodable successor; scan from prefix and filter
    return prefix[:-1] + chr(last + 1)
