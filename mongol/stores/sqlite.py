"""The embedded store: one SQLite file in WAL mode, a table made for hits.

mongol-serve appends while a cron `mongol-report` reads and deletes from another
process: WAL lets readers run beside the single writer, and `busy_timeout` makes
either side wait its turn instead of failing. Deletes go in chunks so that a big
purge never holds the write lock for long.
"""

import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from mongol.errors import StoreError
from mongol.stores import Hit

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
BUSY_TIMEOUT_MS = 30_000
DELETE_CHUNK = 20_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS hits (
    id   TEXT PRIMARY KEY,  -- the hit's _id: replaying a hit twice stores it once
    time INTEGER NOT NULL,  -- microseconds since 1970-01-01 UTC
    site TEXT,              -- the site parameter, when it is a single string
    doc  TEXT NOT NULL      -- every other field of the hit, as a JSON object
);
CREATE INDEX IF NOT EXISTS hits_time ON hits (time);
CREATE INDEX IF NOT EXISTS hits_site_time ON hits (site, time);
"""


INSERT_RECORDS = """INSERT OR IGNORE INTO hits (id, time, site, doc)
SELECT value ->> '$._id', value ->> '$.time',
       iif(json_type(value, '$.site') = 'text', value ->> '$.site', NULL),
       json_remove(value, '$._id', '$.time')
FROM json_each(?)
"""


def to_us(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact, no float rounding)."""
    return (moment - EPOCH) // ONE_US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


class SQLiteStore:
    blocking = True

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.description = f"SQLite file {self.path}"
        if sqlite3.sqlite_version_info < (3, 38):
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old for the embedded store (needs 3.38+)")
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the SQLite store {self.path}: {exc}") from exc

    def ping(self) -> None:
        try:
            self._db.execute("SELECT 1 FROM hits LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"the SQLite store {self.path} is not usable: {exc}") from exc

    def insert_many(self, hits: list[Hit]) -> int:
        return self.insert_lines([orjson.dumps({**hit, "time": to_us(hit["time"])}) for hit in hits])

    def insert_lines(self, lines: list[bytes]) -> int:
        # The whole batch is one JSON array bound to one statement: no Python work per hit, and
        # one step of the engine (a step per row in a busy process queues for the GIL at every row).
        payload = b"[" + b",".join(lines) + b"]"
        return self._db.execute(INSERT_RECORDS, (payload.decode("utf-8", "replace"),)).rowcount

    def _where(self, start: datetime | None, end: datetime | None, site: str | None) -> tuple[str, list]:
        clauses, args = [], []
        if site is not None:
            clauses.append("site = ?")
            args.append(site)
        if start is not None:
            clauses.append("time >= ?")
            args.append(to_us(start))
        if end is not None:
            clauses.append("time < ?")
            args.append(to_us(end))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    def hits(self, start: datetime | None = None, end: datetime | None = None,
             site: str | None = None) -> Iterator[Hit]:
        where, args = self._where(start, end, site)
        cursor = self._db.execute(f"SELECT id, time, doc FROM hits{where} ORDER BY time", args)
        for hit_id, us, doc in cursor:
            hit = orjson.loads(doc)
            hit["_id"] = hit_id
            hit["time"] = from_us(us)
            yield hit

    def count(self, start: datetime | None = None, end: datetime | None = None,
              site: str | None = None) -> int:
        where, args = self._where(start, end, site)
        return self._db.execute(f"SELECT count(*) FROM hits{where}", args).fetchone()[0]

    def pageviews_by_page(self, start: datetime | None = None,
                          site: str | None = None) -> Iterator[tuple[dict[str, Any], Any]]:
        where, args = self._where(start, None, site)
        query = f"SELECT doc -> '$.url', doc -> '$.title', sum(doc ->> '$.pageviews') FROM hits{where} GROUP BY 1, 2"
        for url, title, total in self._db.execute(query, args):
            key = {}
            if url is not None:
                key["url"] = orjson.loads(url)
            if title is not None:
                key["title"] = orjson.loads(title)
            yield key, total

    def delete_before(self, cutoff: datetime, site: str | None = None) -> int:
        where, args = self._where(None, cutoff, site)
        deleted = 0
        while True:
            with self._db:
                n = self._db.execute(
                    f"DELETE FROM hits WHERE rowid IN (SELECT rowid FROM hits{where} LIMIT {DELETE_CHUNK})",
                    args).rowcount
            deleted += n
            if n < DELETE_CHUNK:
                return deleted

    def close(self) -> None:
        self._db.close()
