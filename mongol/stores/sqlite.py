"""The embedded store: one SQLite file in WAL mode, a table made for hits.

mongol-serve appends while a cron `mongol-report` reads and deletes from another
process: WAL lets readers run beside the single writer, and `busy_timeout` makes
either side wait its turn instead of failing. Deletes go in chunks so that a big
purge never holds the write lock for long.

Beside the hits, `pageviews_hourly` keeps the default report's sums per hour (site, url,
title), updated in the same transaction as every insert and delete: the default report over
millions of hits adds up a few thousand hourly rows, plus the raw hits of the window's first,
partial hour, and gives exactly what summing the hits gives.
"""

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from mongol.errors import StoreError
from mongol.stores import Hit

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
BUSY_TIMEOUT_MS = 10_000
DELETE_CHUNK = 20_000

HOUR_US = 3600 * 1_000_000
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS hits (
    id   TEXT NOT NULL,     -- the hit's _id: replaying a hit twice stores it once
    time INTEGER NOT NULL,  -- microseconds since 1970-01-01 UTC
    site TEXT,              -- the site parameter, when it is a single string
    doc  TEXT NOT NULL      -- every other field of the hit, as a JSON object
);
CREATE UNIQUE INDEX IF NOT EXISTS hits_time_id ON hits (time, id);
CREATE INDEX IF NOT EXISTS hits_site_time ON hits (site, time);
CREATE TABLE IF NOT EXISTS pageviews_hourly (
    hour  INTEGER NOT NULL,  -- start of the hour, microseconds since the epoch
    site  TEXT NOT NULL,     -- hits.site, '' when NULL
    url   TEXT NOT NULL,     -- JSON text of the hit's url, '' when it has none (title likewise)
    title TEXT NOT NULL,
    views NOT NULL,          -- the sum of the hits' pageviews
    hits  INTEGER NOT NULL,  -- how many hits: a row goes when its last hit does
    PRIMARY KEY (hour, site, url, title)
) WITHOUT ROWID;
"""

# Each statement gives back, per hit it inserted or deleted: time, and its key in pageviews_hourly.
HOURLY_KEY = ("time, coalesce(site, ''), coalesce(doc -> '$.url', ''), coalesce(doc -> '$.title', ''), "
              "doc ->> '$.pageviews'")

INSERT_RECORDS = f"""INSERT OR IGNORE INTO hits (id, time, site, doc)
SELECT value ->> '$._id', value ->> '$.time',
       iif(json_type(value, '$.site') = 'text', value ->> '$.site', NULL),
       json_remove(value, '$._id', '$.time')
FROM json_each(?)
RETURNING {HOURLY_KEY}"""

ADD_HOURLY = """INSERT INTO pageviews_hourly (hour, site, url, title, views, hits) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET views = views + excluded.views, hits = hits + excluded.hits"""
TAKE_HOURLY = """UPDATE pageviews_hourly SET views = views - ?, hits = hits - ?
WHERE hour = ? AND site = ? AND url = ? AND title = ?"""
DROP_EMPTY_HOURLY = "DELETE FROM pageviews_hourly WHERE hour = ? AND site = ? AND url = ? AND title = ? AND hits <= 0"

FILL_HOURLY = f"""INSERT INTO pageviews_hourly (hour, site, url, title, views, hits)
SELECT time - time % {HOUR_US}, coalesce(site, ''), coalesce(doc -> '$.url', ''), coalesce(doc -> '$.title', ''),
       total(doc ->> '$.pageviews'), count(*)
FROM hits GROUP BY 1, 2, 3, 4"""


def _by_hour(rows: Iterable[tuple]) -> dict[tuple, list]:
    """Rows from HOURLY_KEY summed per (hour, site, url, title): [views, hits]."""
    sums: dict[tuple, list] = {}
    for time_us, site, url, title, views in rows:
        key = (time_us - time_us % HOUR_US, site, url, title)
        entry = sums.get(key)
        if entry is None:
            sums[key] = [_number(views), 1]
        else:
            entry[0] += _number(views)
            entry[1] += 1
    return sums


def _sql_text(text: str) -> str:
    """A string literal for SQL."""
    return "'" + text.replace("'", "''").replace("\x00", "' || char(0) || '") + "'"


def _json_path(name: str) -> str:
    """The JSON path of a top-level field named like a JavaScript identifier (what mapper_fields gives)."""
    return '$."' + name + '"'


def _number(value: object) -> float:
    """pageviews as SQL's total() reads it: a number, else 0."""
    if isinstance(value, int | float):
        return value
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0

# A top-level field of the hit named ? that is the string ?, or a list holding it (any name works:
# the name is compared as a key, never spliced into a JSON path).
MATCH_FIELD = """EXISTS (SELECT 1 FROM json_each(doc) AS f WHERE f.key = ? AND (
    f.type = 'text' AND f.value = ?
    OR f.type = 'array' AND EXISTS (SELECT 1 FROM json_each(f.value) AS v WHERE v.type = 'text' AND v.value = ?)))"""


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
            if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the SQLite store {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        """Version 1 added pageviews_hourly: fill it from the hits already stored."""
        with self._transaction():
            if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                self._db.execute("DELETE FROM pageviews_hourly")
                self._db.execute(FILL_HOURLY)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def ping(self) -> None:
        try:
            self._db.execute("SELECT 1 FROM hits LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"the SQLite store {self.path} is not usable: {exc}") from exc

    def insert_many(self, hits: list[Hit]) -> int:
        return self.insert_lines([orjson.dumps({**hit, "time": to_us(hit["time"])}) for hit in hits])

    def insert_lines(self, lines: list[bytes]) -> int:
        # The whole batch is one JSON array bound to one statement: no Python work per hit, and
        # one step of the engine per new row (a step per row in a busy process queues for the GIL).
        payload = (b"[" + b",".join(lines) + b"]").decode("utf-8", "replace")
        with self._transaction():
            sums = _by_hour(self._db.execute(INSERT_RECORDS, (payload,)))
            self._db.executemany(ADD_HOURLY, [(*key, views, hits) for key, (views, hits) in sums.items()])
        return sum(hits for _, hits in sums.values())

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
              site: str | None = None, match: dict[str, str] | None = None) -> int:
        where, args = self._where(start, end, site)
        for name, value in (match or {}).items():
            where += (" AND " if where else " WHERE ") + MATCH_FIELD
            args += [name, value, value]
        return self._db.execute(f"SELECT count(*) FROM hits{where}", args).fetchone()[0]

    def json_batches(self, start: datetime | None, site: str | None, fields: frozenset[str] | None,
                     date_tag: str, size: int = 1000) -> Iterator[tuple[int, bytes]]:
        """The window's hits for the JavaScript engine, written by SQLite itself: (count, JSON array)
        per `size` hits, each hit with only `fields` (all when None; an absent field stays absent),
        `time` as {date_tag: milliseconds}. No hit is decoded or encoded in Python."""
        time_json = f"json_object({_sql_text(date_tag)}, time / 1000)"
        if fields is None or 2 * len(fields) > 100:  # SQLite functions take at most 127 arguments
            expression = f"json_set(doc, '$._id', id, '$.time', {time_json})"
        else:
            parts = []
            for name in sorted(fields):
                value = {"_id": "id", "time": time_json}.get(name, f"doc -> {_sql_text(_json_path(name))}")
                parts += [_sql_text(name), value]
            # json_patch drops the members that are null: fields the hit does not have.
            expression = f"json_patch('{{}}', json_object({', '.join(parts)}))" if parts else "'{}'"
        where, args = self._where(start, None, site)
        cursor = self._db.execute(f"SELECT {expression} FROM hits{where}", args)
        while rows := cursor.fetchmany(size):
            yield len(rows), ("[" + ",".join(row[0] for row in rows) + "]").encode()

    def pageviews_by_page(self, start: datetime | None = None,
                          site: str | None = None) -> Iterator[tuple[dict[str, Any], Any]]:
        site_sql, site_args = (" AND site = ?", [site]) if site is not None else ("", [])
        first_full_hour = None if start is None else -(-to_us(start) // HOUR_US) * HOUR_US
        totals: dict[tuple[str, str], float] = {}
        rows = self._db.execute("SELECT url, title, sum(views) FROM pageviews_hourly WHERE hour >= ?" + site_sql
                                + " GROUP BY url, title", [first_full_hour or 0, *site_args]).fetchall()
        if start is not None and to_us(start) < first_full_hour:  # the window's first, partial hour: raw hits
            rows += self._db.execute(
                "SELECT coalesce(doc -> '$.url', ''), coalesce(doc -> '$.title', ''), total(doc ->> '$.pageviews')"
                " FROM hits WHERE time >= ? AND time < ?" + site_sql + " GROUP BY 1, 2",
                [to_us(start), first_full_hour, *site_args]).fetchall()
        for url, title, views in rows:
            totals[url, title] = totals.get((url, title), 0) + views
        for (url, title), views in totals.items():
            key = {}
            if url:
                key["url"] = orjson.loads(url)
            if title:
                key["title"] = orjson.loads(title)
            yield key, views

    def delete_before(self, cutoff: datetime, site: str | None = None) -> int:
        where, args = self._where(None, cutoff, site)
        deleted = 0
        while True:
            with self._transaction():
                sums = _by_hour(self._db.execute(
                    f"DELETE FROM hits WHERE rowid IN (SELECT rowid FROM hits{where} LIMIT {DELETE_CHUNK})"
                    f" RETURNING {HOURLY_KEY}", args))
                self._db.executemany(TAKE_HOURLY, [(views, hits, *key) for key, (views, hits) in sums.items()])
                self._db.executemany(DROP_EMPTY_HOURLY, list(sums))
            n = sum(hits for _, hits in sums.values())
            deleted += n
            if n < DELETE_CHUNK:
                return deleted

    def close(self) -> None:
        self._db.close()
