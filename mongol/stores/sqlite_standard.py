"""The SQL of the standard reports on the embedded store (mongol.standard describes the figures)."""

HOUR_US = 3600 * 1_000_000
DAY_US = 24 * HOUR_US

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
