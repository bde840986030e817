"""Spool lines as rows of the SQLite store's `hits` table, with the sums they add to `pageviews_hourly`,
worked out in Python so that SQLite parses no JSON on the insert path (orjson decodes a line in a
third of the time SQLite's json_each and json_remove take, and faster than cutting it as text).

A row is (id, time, site, doc): `doc` is the line without `_id` and `time`. The hourly key is
(hour, site or '', url, title), where url and title are the JSON texts of those values as SQL's
`doc -> '$.url'` gives them back from `doc` (the text as orjson wrote it), or '' when absent: a
purge reads the keys back from the stored docs in SQL, so the two must agree byte for byte. A line
that is no hit with a string `_id` and an integer `time` makes the whole batch go to the SQL
statement instead.
"""

from typing import Any

import orjson

HOUR_US = 3600 * 1_000_000
_NONE = object()


def number(value: object) -> float:
    """pageviews as SQL's total() reads it: a number, else 0."""
    if isinstance(value, int | float):
        return value
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def rows(lines: list[bytes]) -> tuple[list[tuple], dict[tuple, list]] | None:
    """The `hits` rows of spool lines, and their sums per hourly key: [views, hits]; None when a line
    is not a hit the SQL statement would store the same way (see the module's docstring)."""
    out = []
    sums: dict[tuple, list] = {}
    for line in lines:
        found = _row(line)
        if found is None:
            return None
        row, key, views = found
        out.append(row)
        entry = sums.get(key)
        if entry is None:
            sums[key] = [views, 1]
        else:
            entry[0] += views
            entry[1] += 1
    return out, sums


def _row(line: bytes) -> tuple[tuple, tuple, Any] | None:
    """Row, key and pageviews of any line holding a hit, decoded by orjson; None for one that holds none."""
    dumps = orjson.dumps
    try:
        hit = orjson.loads(line)
        hit_id = hit.pop("_id")
        us = hit.pop("time")
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        return None
    if type(hit_id) is not str or type(us) is not int:
        return None
    site = hit.get("site")
    if type(site) is not str:
        site = None
    url, title = hit.get("url", _NONE), hit.get("title", _NONE)
    key = (us - us % HOUR_US, site or "", "" if url is _NONE else dumps(url).decode(),
           "" if title is _NONE else dumps(title).decode())
    return (hit_id, us, site, dumps(hit).decode()), key, number(hit.get("pageviews"))
