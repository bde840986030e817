"""The aggregation of the standard reports on MongoDB (mongol.standard describes the figures)."""

from datetime import UTC, datetime, timedelta
from itertools import pairwise

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS

_VIEWS = {"bot": False, "pv": {"$gt": 0}}
_ENTRIES = {**_VIEWS, "internal": False}


def _by(match: dict, key: dict, value: object = "$pv") -> list[dict]:
    return [{"$match": match}, {"$group": {"_id": {"d": "$d", **key}, "n": {"$sum": value}}}]


def standard_pipeline(site: str, spans: list[tuple[datetime, datetime, timedelta]]) -> list[dict]:
    """One document of facets, each a list of {_id: {d, h?, k?}, n} as SQLiteStore.standard_rows' rows."""
    # the local clock: the offset of the span the hit falls in (spans are in time order)
    offset: object = spans[-1][2] // timedelta(milliseconds=1)
    for _, end, span_offset in reversed(spans[:-1]):
        offset = {"$cond": [{"$lt": ["$time", end]}, span_offset // timedelta(milliseconds=1), offset]}
    shifted = {"$add": [{"$subtract": ["$time", EPOCH]}, offset]}
    project = {"_id": 0, "d": {"$floor": {"$divide": [shifted, DAY_MS]}},
               "h": {"$floor": {"$divide": [{"$mod": [shifted, DAY_MS]}, HOUR_MS]}},
               "pv": {"$ifNull": ["$pageviews", 0]}, "bot": {"$eq": ["$_bot", True]},
               "internal": {"$eq": ["$_internal", True]}, "v": "$_visitor", "url": 1, "title": 1,
               "source": "$_source", "us": "$utm_source", "um": "$utm_medium", "uc": "$utm_campaign",
               "browser": "$_browser", "os": "$_os", "device": "$_device", "country": "$_country", "event": 1}
    one = {"$cond": ["$bot", 1, 0]}
    visitors = {**_VIEWS, "v": {"$ne": None}}
    facets = {
        "pageviews": _by({"bot": False}, {"h": "$h"}),
        "bots": _by({"bot": True}, {"h": "$h"}, one),
        "visitors.hour": [{"$match": visitors}, {"$group": {"_id": {"d": "$d", "h": "$h", "v": "$v"}}},
                          {"$group": {"_id": {"d": "$_id.d", "h": "$_id.h"}, "n": {"$sum": 1}}}],
        "visitors.day": [{"$match": visitors}, {"$group": {"_id": {"d": "$d", "v": "$v"}}},
                         {"$group": {"_id": {"d": "$_id.d"}, "n": {"$sum": 1}}}],
        "pages": _by(_VIEWS, {"k": ["$url", "$title"]}),
        "entry-pages": _by(_ENTRIES, {"k": ["$url"]}),
        "sources": _by(_ENTRIES, {"k": ["$source"]}),
        "campaigns": _by({**_ENTRIES, "$or": [{"us": {"$ne": None}}, {"uc": {"$ne": None}}]},
                         {"k": ["$us", "$um", "$uc"]}),
        **{name: _by({**_VIEWS, field: {"$ne": None}}, {"k": [f"${field}"]})
           for name, field in (("browsers", "browser"), ("os", "os"), ("devices", "device"),
                               ("countries", "country"))},
        "events": _by({"bot": False, "event": {"$ne": None}}, {"k": ["$event"]}, 1),
    }
    if all(a[1] == b[0] for a, b in pairwise(spans)):  # consecutive days: one index range
        window: dict = {"time": {"$gte": spans[0][0], "$lt": spans[-1][1]}}
    else:
        window = {"$or": [{"time": {"$gte": start, "$lt": end}} for start, end, _ in spans]}
    return [{"$match": {"site": site, **window}}, {"$project": project},
            {"$facet": facets}]
