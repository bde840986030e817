"""Journal records (decoded spool lines) as rows of the SQLite store's `hits` table, with the sums they
add to `pageviews_hourly`, worked out in Python so that SQLite parses no JSON on the insert path
(the writer has decoded each line once already, for the enrichment; SQLite's json_each and
json_remove took three times what orjson does).

A row is (id, time, site, doc): `doc` is the hit without `_id` and `time`. The hourly key is
(hour, site or '', url, title), where url and title are the JSON texts of those values as SQL's
`doc -> '$.url'` gives them back from `doc` (the text as orjson wrote it), or '' when absent: a
purge reads the keys back from the stored docs in SQL, so the two must agree byte for byte.
"""

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


def rows(hits: list[dict]) -> tuple[list[tuple], list[tuple]]:
    """The `hits` rows of journal records (which lose `_id` and `time`), and for each row its hourly
    key and pageviews."""
    out = []
    keys = []
    pages: dict[tuple, tuple[str, str]] = {}
    dumps = orjson.dumps
    for hit in hits:
        hit_id = hit.pop("_id")
        us = hit.pop("time")
        site = hit.get("site")
        if type(site) is not str:
            site = None
        page = url, title = hit.get("url", _NONE), hit.get("title", _NONE)
        if (type(url) is str or url is _NONE) and (type(title) is str or title is _NONE):
            texts = pages.get(page)  # the same few pages make most of a batch
            if texts is None:
                texts = pages[page] = _texts(page)
        else:  # a list, a number (1 and True are equal keys, with other texts)...
            texts = _texts(page)
        views = hit.get("pageviews")
        if type(views) is not int:
            views = number(views)
        out.append((hit_id, us, site, dumps(hit).decode()))
        keys.append(((us - us % HOUR_US, site or "", *texts), views))
    return out, keys


def sums(keys: list[tuple]) -> dict[tuple, list]:
    """(hourly key, pageviews) pairs from `rows`, summed per key: [views, hits]."""
    totals: dict[tuple, list] = {}
    for key, views in keys:
        entry = totals.get(key)
        if entry is None:
            totals[key] = [views, 1]
        else:
            entry[0] += views
            entry[1] += 1
    return totals


def _texts(page: tuple) -> tuple[str, str]:
    """The key's url and title texts for a hit's url and title (_NONE when absent)."""
    return tuple("" if value is _NONE else orjson.dumps(value).decode() for value in page)  # type: ignore[return-value]
