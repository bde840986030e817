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
import urllib.parse
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import chain, pairwise
from typing import Any

import orjson

from mongol.errors import StoreError, StoreMoved
from mongol.stores import Hit, sqlite_rows
from mongol.stores.sqlite_standard import StandardDays

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
BUSY_TIMEOUT_MS = 10_000
DELETE_CHUNK = 20_000

HOUR_US = sqlite_rows.HOUR_US
SCHEMA_VERSION = 2

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
-- The standard reports (mongol.standard): every insert of new hits takes the next change number and
-- marks each (site, hour) it touched with it; a report recomputes the days whose marks are newer
-- than the number it kept with the day. Deletes mark nothing: kept days outlive the raw hits.
CREATE TABLE IF NOT EXISTS change_seq (seq INTEGER NOT NULL);  -- one row, made by _migrate
CREATE TABLE IF NOT EXISTS changed_hours (
    site TEXT NOT NULL,      -- hits.site, '' when NULL
    hour INTEGER NOT NULL,   -- start of the UTC hour, microseconds since the epoch
    seq  INTEGER NOT NULL,   -- the change number of the latest insert into it
    PRIMARY KEY (site, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS purged (site TEXT PRIMARY KEY, cutoff INTEGER NOT NULL);  -- '' for every site
CREATE TABLE IF NOT EXISTS standard_days (
    report TEXT NOT NULL,    -- site and time zone
    day    TEXT NOT NULL,    -- YYYY-MM-DD in that zone
    seq    INTEGER NOT NULL, -- the newest change mark the figures include
    totals TEXT NOT NULL,    -- JSON [pageviews, visitors, bots]
    doc    TEXT NOT NULL,    -- JSON: hours and tables
    PRIMARY KEY (report, day)
) WITHOUT ROWID;
"""
MARK_CHANGED = """INSERT INTO changed_hours (site, hour, seq) VALUES (?, ?, ?)
ON CONFLICT DO UPDATE SET seq = excluded.seq"""

# Each statement gives back, per hit it inserted or deleted: time, and its key in pageviews_hourly.
HOURLY_KEY = ("time, coalesce(site, ''), coalesce(doc -> '$.url', ''), coalesce(doc -> '$.title', ''), "
              "doc ->> '$.pageviews'")


ROWS_PER_INSERT = 200  # 800 parameters: below the 999 of SQLite builds older than 3.32


def _insert_rows_sql(count: int) -> str:
    return "INSERT OR IGNORE INTO hits (id, time, site, doc) VALUES " + ",".join(["(?, ?, ?, ?)"] * count)


INSERT_ROWS = _insert_rows_sql(ROWS_PER_INSERT)


def _inserts(rows: list[tuple]) -> Iterator[tuple[str, list]]:
    """The statements and parameters that insert `rows`, ROWS_PER_INSERT to a statement."""
    for start in range(0, len(rows), ROWS_PER_INSERT):
        part = rows[start:start + ROWS_PER_INSERT]
        sql = INSERT_ROWS if len(part) == ROWS_PER_INSERT else _insert_rows_sql(len(part))
        yield sql, list(chain.from_iterable(part))

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
            sums[key] = [sqlite_rows.number(views), 1]
        else:
            entry[0] += sqlite_rows.number(views)
            entry[1] += 1
    return sums


# A top-level field of the hit named ? that is the string ?, or a list holding it (any name works:
# the name is compared as a key, never spliced into a JSON path).
MATCH_FIELD = """EXISTS (SELECT 1 FROM json_each(doc) AS f WHERE f.key = ? AND (
    f.type = 'text' AND f.value = ?
    OR f.type = 'array' AND EXISTS (SELECT 1 FROM json_each(f.value) AS v WHERE v.type = 'text' AND v.value = ?)))"""


MATCH_TRUE = "EXISTS (SELECT 1 FROM json_each(doc) AS f WHERE f.key = ? AND f.type = 'true')"


def _inode(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def to_us(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact, no float rounding)."""
    return (moment - EPOCH) // ONE_US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


class SQLiteStore(StandardDays):
    blocking = True

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.description = f"SQLite file {self.path}"
        if sqlite3.sqlite_version_info < (3, 38):
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old for the embedded store (needs 3.38+)")
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA cache_size = -16384")  # 16 MiB: the indexes' hot pages stay in memory
            self._db.executescript(SCHEMA)
            if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                self._migrate()
            self._inode = _inode(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the SQLite store {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        """Version 1 added pageviews_hourly: fill it from the hits already stored; version 2 the change
        marks: every hour already stored counts as changed."""
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version < 1:
                self._db.execute("DELETE FROM pageviews_hourly")
                self._db.execute(FILL_HOURLY)
            if version < 2:
                self._db.execute("INSERT INTO change_seq SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM change_seq)")
                self._db.execute("UPDATE change_seq SET seq = seq + 1")
                self._db.execute("INSERT OR IGNORE INTO changed_hours SELECT DISTINCT site, hour, "
                                 "(SELECT seq FROM change_seq) FROM pageviews_hourly")
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

    def wait_at_most(self, seconds: float) -> None:
        """Wait no longer than this for another process's lock from now on (a stop's deadline)."""
        self._db.execute(f"PRAGMA busy_timeout = {max(1, min(int(seconds * 1000), BUSY_TIMEOUT_MS))}")

    def ping(self) -> None:
        try:
            self._db.execute("SELECT 1 FROM hits LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"the SQLite store {self.path} is not usable: {exc}") from exc

    def insert_many(self, hits: list[Hit]) -> int:
        return self.insert_records([{**hit, "time": to_us(hit["time"])} for hit in hits])

    def insert_lines(self, lines: list[bytes]) -> int:
        return self.insert_records([orjson.loads(line) for line in lines])

    def insert_records(self, records: list[Hit]) -> int:
        self._check_file()
        rows, keys = sqlite_rows.rows(records)
        with self._transaction():
            # INSERT OR IGNORE says only how many rows went in. When some were there already (a
            # segment read again after a crash), the batch goes in again saying which: RETURNING costs
            # half as much again, so only then.
            self._db.execute("SAVEPOINT batch")
            if self._insert_rows(rows) != len(rows):
                self._db.execute("ROLLBACK TO batch")
                new = self._insert_rows_returning(rows)
                keys = [key for row, key in zip(rows, keys, strict=True) if (row[1], row[0]) in new]
            self._db.execute("RELEASE batch")
            self._add_hourly(sqlite_rows.sums(keys))
        return len(keys)

    def _insert_rows(self, rows: list[tuple]) -> int:
        """INSERT OR IGNORE the rows, ROWS_PER_INSERT to a statement (half the CPU of one statement per
        row); how many went in."""
        return sum(self._db.execute(sql, params).rowcount for sql, params in _inserts(rows))

    def _insert_rows_returning(self, rows: list[tuple]) -> set[tuple[int, str]]:
        """As _insert_rows; the (time, id) of the rows that went in."""
        new: set[tuple[int, str]] = set()
        for sql, params in _inserts(rows):
            new.update(self._db.execute(sql + " RETURNING time, id", params))
        return new

    def _add_hourly(self, sums: dict[tuple, list]) -> None:
        self._db.executemany(ADD_HOURLY, [(*key, views, hits) for key, (views, hits) in sums.items()])
        if sums:
            seq = self._db.execute("UPDATE change_seq SET seq = seq + 1 RETURNING seq").fetchone()[0]
            self._db.executemany(MARK_CHANGED, [(site, hour, seq) for hour, site in {k[:2] for k in sums}])

    def _check_file(self) -> None:
        """One stat per batch: a file removed or replaced under us would take the batch into a file
        nobody can open any more."""
        try:
            moved = _inode(self.path) != self._inode
        except FileNotFoundError:
            moved = True
        if moved:
            raise StoreMoved(f"the SQLite file {self.path} was removed or replaced while mongol-serve had it open; "
                             "opening it again")

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
              site: str | None = None, match: dict[str, str | bool] | None = None) -> int:
        where, args = self._where(start, end, site)
        for name, value in (match or {}).items():
            where += " AND " if where else " WHERE "
            if isinstance(value, bool):  # a flag: true, or absent (anything but true)
                where += ("" if value else "NOT ") + MATCH_TRUE
                args.append(name)
            else:
                where += MATCH_FIELD
                args += [name, value, value]
        return self._db.execute(f"SELECT count(*) FROM hits{where}", args).fetchone()[0]

    def hit_source(self, start: datetime | None, site: str | None, fields: frozenset[str] | None) -> "SQLiteHits":
        """The window's hits for map/reduce workers that read the file themselves (see SQLiteHits)."""
        return SQLiteHits.plan(self._db, self.path, None if start is None else to_us(start), site, fields)

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
        with self._transaction():  # before deleting: a kept day older than this is never recomputed
            self._db.execute("INSERT INTO purged VALUES (?, ?) ON CONFLICT DO UPDATE SET cutoff = "
                             "max(cutoff, excluded.cutoff)", ("" if site is None else site, to_us(cutoff)))
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


class SQLiteHits:
    """A window of hits that map/reduce workers read themselves (a mongol.mapreduce.HitSource).

    Each worker opens the file read-only (WAL lets readers run beside the writer) and has SQLite
    concatenate the raw `doc` texts of `batch` hits at a time: no JSON is parsed in SQLite or decoded
    in Python, so each hit is parsed once, by JavaScript. The parent hands out parts of
    `part_batches` batches, cut one of two ways:

    - by rowid (`rows` is the table's first and last rowid), when most of the table is in the window:
      the workers scan the table in rowid order and skip the rows outside the window, which costs far
      less than going through an index, and the parent reads nothing to cut the parts;
    - by time, when the window is a small share of the table: the parent walks the time index (or
      the site's) to find the time every `batch` hits, and the workers read through that index.

    The hits read are those of the window up to the latest time stored when the source was made (and,
    by rowid, no later row): the workers read in several transactions, so a hit removed or replayed
    meanwhile by another process may or may not be seen.
    """

    #: Read by rowid when at least this share of the rowids from first to last (sampled) are hits in
    #: the window: a scan by rowid then reads little besides them.
    ROWID_SHARE = 0.5
    SAMPLES, SAMPLE_ROWS = 16, 64

    def __init__(self, path: str, site: str | None, start_us: int | None, end_us: int | None,
                 fields: frozenset[str] | None, rows: tuple[int, int] | None = None, share: float = 1.0,
                 batch: int = 1000, part_batches: int = 10) -> None:
        self.path = path
        self.site = site
        self.start_us = start_us
        #: One past the latest time when the source was made; None when there are no hits.
        self.end_us = end_us
        #: None, or the hit fields the mapper can see: `_id` and `time` are left out unless named.
        self.fields = fields
        #: (first, last) rowid to read by rowid, else None to read by time; the share of rowids in the window.
        self.rows = rows
        self.share = share
        #: At most how many hits per batch (as mongol.mapreduce.BATCH_SIZE), batches per part.
        self.batch = batch
        self.part_batches = part_batches
        self._db: sqlite3.Connection | None = None  # the store's connection in the parent, the worker's own in one

    @classmethod
    def plan(cls, db: sqlite3.Connection, path: str, start_us: int | None, site: str | None,
             fields: frozenset[str] | None) -> "SQLiteHits":
        """The source for a window, its way of reading chosen from a sample of the table's rows."""
        source = cls(path, site, start_us, None, fields)
        source._db = db
        where, args = source._where(start_us, None)
        latest = db.execute(f"SELECT max(time) FROM hits{where}", args).fetchone()[0]
        if latest is None:
            return source
        source.end_us = latest + 1
        first = db.execute("SELECT min(rowid) FROM hits").fetchone()[0]
        last = db.execute("SELECT max(rowid) FROM hits").fetchone()[0]
        condition, args = source._condition(start_us, source.end_us)
        step = max((last - first + 1) // cls.SAMPLES, cls.SAMPLE_ROWS)
        slots = matching = 0
        for low in range(first, last + 1, step):
            high = min(low + cls.SAMPLE_ROWS, last + 1)
            m = db.execute(f"SELECT total({condition}) FROM hits NOT INDEXED WHERE rowid >= ? AND rowid < ?",
                           [*args, low, high]).fetchone()[0]
            slots, matching = slots + high - low, matching + int(m)
        source.share = matching / slots
        if source.share >= cls.ROWID_SHARE:
            source.rows = (first, last)
        return source

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_db": None}

    def _condition(self, low: int | None, high: int | None, after: bool = False) -> tuple[str, list]:
        clauses, args = [], []
        if self.site is not None:
            clauses.append("site = ?")
            args.append(self.site)
        if low is not None:
            clauses.append("time > ?" if after else "time >= ?")
            args.append(low)
        if high is not None:
            clauses.append("time < ?")
            args.append(high)
        return " AND ".join(clauses) or "1", args

    def _where(self, low: int | None, high: int | None, after: bool = False) -> tuple[str, list]:
        condition, args = self._condition(low, high, after)
        return " WHERE " + condition, args

    def count(self) -> int:
        if self.end_us is None:
            return 0
        where, args = self._where(self.start_us, self.end_us)
        return self._db.execute(f"SELECT count(*) FROM hits{where}", args).fetchone()[0]

    def parts(self) -> Iterator[tuple[int, list]]:
        """By rowid, [first, end): the rows first <= rowid < end, in batches of `batch` rowids.
        By time, [t0, t1, ..., tn]: batch i is the hits with t(i) <= time < t(i+1) (t0 None: no lower
        bound); a batch holds `batch` hits, the last one fewer, and more only when more than `batch`
        hits share one time (the worker then cuts it)."""
        if self.end_us is None:
            return
        if self.rows is not None:
            first, last = self.rows
            span = self.batch * self.part_batches
            for low in range(first, last + 1, span):
                end = min(low + span, last + 1)
                yield round((end - low) * self.share), [low, end]
            return
        low = self.start_us
        bounds: list[int | None] = [low]
        while True:
            # The time `batch` hits after `low`, strictly after so that batches always advance.
            where, args = self._where(low, self.end_us, after=True)
            row = self._db.execute(f"SELECT time FROM hits{where} ORDER BY time LIMIT 1 OFFSET ?",
                                   [*args, self.batch - 1]).fetchone()
            if row is None:
                bounds.append(self.end_us)
                yield self.batch * (len(bounds) - 1), bounds
                return
            low = row[0]
            bounds.append(low)
            if len(bounds) > self.part_batches:
                yield self.batch * (len(bounds) - 1), bounds
                bounds = [low]

    def _connect(self) -> sqlite3.Connection:
        uri = "file:" + urllib.parse.quote(self.path) + "?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)

    def read(self, part: list) -> Iterator[tuple[int, str, bool]]:
        """The hits of one part, as mongol.mapreduce.HitSource.read describes: the docs as stored,
        with `_id` and `time` (milliseconds, as SQLite divides) only when the mapper may see them."""
        want_id = self.fields is None or "_id" in self.fields
        want_time = self.fields is None or "time" in self.fields
        columns = ", ".join(["count(*)", "group_concat(doc)"] + ["json_group_array(id)"] * want_id
                            + ["json_group_array(time / 1000)"] * want_time)
        try:
            if self._db is None:
                self._db = self._connect()
            if self.rows is not None:
                condition, args = self._condition(self.start_us, self.end_us)
                for low in range(part[0], part[1], self.batch):
                    row = self._db.execute(f"SELECT {columns} FROM hits NOT INDEXED WHERE rowid >= ? AND rowid < ? "
                                           f"AND {condition}", [low, min(low + self.batch, part[1]), *args]).fetchone()
                    if row[0]:
                        yield _batch(row, want_id, want_time)
                return
            for low, high in pairwise(part):
                where, args = self._where(low, high)
                row = self._db.execute(f"SELECT {columns} FROM (SELECT doc, id, time FROM hits{where} "
                                       f"LIMIT {self.batch + 1})", args).fetchone()
                if row[0] > self.batch:  # many hits at one time: cut them into batches here
                    yield from self._fetch(where, args, want_id, want_time)
                elif row[0]:
                    yield _batch(row, want_id, want_time)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the SQLite store {self.path}: {exc}") from exc

    def _fetch(self, where: str, args: list, want_id: bool, want_time: bool) -> Iterator[tuple[int, str, bool]]:
        columns = ", ".join(["doc"] + ["id"] * want_id + ["time / 1000"] * want_time)
        cursor = self._db.execute(f"SELECT {columns} FROM hits{where}", args)
        while rows := cursor.fetchmany(self.batch):
            values = list(zip(*rows, strict=True))
            docs = ",".join(values[0])
            ids = orjson.dumps(values[1]).decode() if want_id else "null"
            times = orjson.dumps(values[-1]).decode() if want_time else "null"
            yield len(rows), f"[[{docs}],{ids},{times}]", _tagged(docs)


def _batch(row: tuple, want_id: bool, want_time: bool) -> tuple[int, str, bool]:
    """A batch from (count, docs, [ids JSON], [times JSON]) as SQLite aggregated them."""
    count, docs, *rest = row
    ids = rest.pop(0) if want_id else "null"
    times = rest.pop(0) if want_time else "null"
    return count, f"[[{docs}],{ids},{times}]", _tagged(docs)


def _tagged(docs: str) -> bool:
    """Whether JSON text may hold a tag (a key starting with NUL, which JSON writes \\u0000). A backslash
    is looked for first: much quicker, and most hits have none."""
    return "\\" in docs and "\\u0000" in docs
