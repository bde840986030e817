"""The standard reports on the embedded store: their SQL, and SQLiteStore's methods for them (mongol.standard
describes the figures; the tables are in mongol.stores.sqlite's SCHEMA)."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson

HOUR_US = 3600 * 1_000_000
DAY_US = 24 * HOUR_US
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    return (moment - EPOCH) // ONE_US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)

# The fields the standard figures read, once per hit; `bot` and `internal` are 0 or 1.
STANDARD_TEMP = """CREATE TEMP TABLE IF NOT EXISTS std (day INTEGER, hour INTEGER, pv REAL, bot INTEGER, visitor,
    internal INTEGER, url, title, source, us, um, uc, browser, os, device, country, event)"""
STANDARD_FILL = f"""INSERT INTO temp.std SELECT (time + ?) / {DAY_US}, (time + ?) % {DAY_US} / {HOUR_US},
    coalesce(doc ->> '$.pageviews', 0), coalesce(doc ->> '$._bot', 0) = 1, doc -> '$._visitor',
    coalesce(doc ->> '$._internal', 0) = 1, doc -> '$.url', doc -> '$.title', doc -> '$._source',
    doc -> '$.utm_source', doc -> '$.utm_medium', doc -> '$.utm_campaign', doc -> '$._browser', doc -> '$._os',
    doc -> '$._device', doc -> '$._country', doc -> '$.event'
    FROM hits WHERE site = ? AND time >= ? AND time < ?"""
_VIEWS = "FROM temp.std WHERE bot = 0 AND pv > 0"
_ENTRIES = _VIEWS + " AND internal = 0"
STANDARD_QUERIES = (
    ("pageviews", "SELECT day, hour, NULL, total(pv) FROM temp.std WHERE bot = 0 GROUP BY 1, 2"),
    ("bots", "SELECT day, hour, NULL, count(*) FROM temp.std WHERE bot = 1 GROUP BY 1, 2"),
    ("visitors", f"SELECT day, hour, NULL, count(DISTINCT visitor) {_VIEWS} GROUP BY 1, 2"),
    ("visitors", f"SELECT day, NULL, NULL, count(DISTINCT visitor) {_VIEWS} GROUP BY 1"),
    ("pages", f"SELECT day, NULL, json_array(json(url), json(title)), total(pv) {_VIEWS} GROUP BY 1, url, title"),
    ("entry-pages", f"SELECT day, NULL, json_array(json(url)), total(pv) {_ENTRIES} GROUP BY 1, url"),
    ("sources", f"SELECT day, NULL, json_array(json(source)), total(pv) {_ENTRIES} GROUP BY 1, source"),
    ("campaigns", f"SELECT day, NULL, json_array(json(us), json(um), json(uc)), total(pv) {_ENTRIES}"
                  " AND (us IS NOT NULL OR uc IS NOT NULL) GROUP BY 1, us, um, uc"),
    *((name, f"SELECT day, NULL, json_array(json({column})), total(pv) {_VIEWS} AND {column} IS NOT NULL "
             f"GROUP BY 1, {column}")
      for name, column in (("browsers", "browser"), ("os", "os"), ("devices", "device"), ("countries", "country"))),
    ("events", "SELECT day, NULL, json_array(json(event)), count(*) FROM temp.std WHERE bot = 0 AND event IS NOT NULL"
               " GROUP BY 1, event"),
)


class StandardDays:
    """SQLiteStore's part for the standard reports: its `_db` connection and `_transaction()`."""

    def changed_hours(self, site: str) -> list[tuple[datetime, int]]:
        """Every UTC hour of `site` that ever received hits, with the change number of its latest insert."""
        rows = self._db.execute("SELECT hour, seq FROM changed_hours WHERE site = ?", (site,))
        return [(from_us(hour), seq) for hour, seq in rows]

    def purge_horizon(self, site: str) -> datetime | None:
        """The latest cutoff before which hits of `site` were deleted, or None."""
        row = self._db.execute("SELECT max(cutoff) FROM purged WHERE site IN ('', ?)", (site,)).fetchone()
        return None if row[0] is None else from_us(row[0])

    def standard_rows(self, site: str, spans: list[tuple[datetime, datetime, timedelta]]) -> Iterator[tuple]:
        """The standard figures of `site`'s hits in `spans` ([start, end) in UTC, each with the offset of its
        clock from UTC), as mongol.standard describes. One read of the hits into a temporary table of the
        fields needed (in memory: a chunk of days), every figure a GROUP BY over it."""
        self._db.execute("PRAGMA temp_store = MEMORY")
        self._db.execute("BEGIN")
        try:
            self._db.execute(STANDARD_TEMP)
            self._db.execute("DELETE FROM temp.std")
            for start, end, offset in spans:
                off = offset // ONE_US
                self._db.execute(STANDARD_FILL, (off, off, site, to_us(start), to_us(end)))
            for figure, sql in STANDARD_QUERIES:
                for day, hour, key, value in self._db.execute(sql):
                    yield figure, day, hour, orjson.loads(key) if key is not None else None, value
            self._db.execute("DELETE FROM temp.std")
        finally:
            self._db.execute("COMMIT")

    def kept_days(self, report: str) -> dict[str, tuple[int, list]]:
        """The kept days of a standard report: {day: (change number, [pageviews, visitors, bots])}."""
        rows = self._db.execute("SELECT day, seq, totals FROM standard_days WHERE report = ?", (report,))
        return {day: (seq, orjson.loads(totals)) for day, seq, totals in rows}

    def kept_docs(self, report: str, first: str, last: str) -> dict[str, dict]:
        """The kept figures of the days first..last (YYYY-MM-DD, inclusive)."""
        rows = self._db.execute("SELECT day, doc FROM standard_days WHERE report = ? AND day BETWEEN ? AND ?",
                                (report, first, last))
        return {day: orjson.loads(doc) for day, doc in rows}

    def keep_days(self, report: str, days: dict[str, tuple[int, list, dict]]) -> None:
        """Store (replace) kept days: {day: (change number, totals, doc)}."""
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO standard_days VALUES (?, ?, ?, ?, ?)", [
                (report, day, seq, orjson.dumps(totals).decode(), orjson.dumps(doc).decode())
                for day, (seq, totals, doc) in days.items()])
