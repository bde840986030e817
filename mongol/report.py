"""The report engine: one section of reports.cfg -> a query on the store -> a sorted, limited result.

The built-in mapper/reducer take the store's native path (SQL on SQLite, `$group` on MongoDB),
which gives exactly what the JavaScript gives; custom JavaScript runs in the embedded engine
(mongol.mapreduce) or, with `engine = server`, in MongoDB's own mapReduce command.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mongol.mapreduce import Limits, encoded_batches, map_reduce_encoded, map_reduce_source, mapper_fields
from mongol.reportconfig import ReportSpec
from mongol.stores import Store

# BSON's order of types, for sorting values and keys the way MongoDB compares them.
_NULL, _NUMBER, _STRING, _OBJECT, _ARRAY, _BINARY, _OBJECTID, _BOOLEAN, _DATE, _OTHER = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10


def bson_order(value: Any) -> tuple:
    """A sort key that orders values as MongoDB does: by type first, then by value."""
    if value is None:
        return (_NULL,)
    if isinstance(value, bool):
        return (_BOOLEAN, value)
    if isinstance(value, int | float):
        return (_NUMBER, value if value == value else float("-inf"))  # NaN sorts first among numbers
    if isinstance(value, str):
        return (_STRING, value.encode("utf-8", "surrogatepass"))
    if isinstance(value, dict):
        return (_OBJECT, tuple((bson_order(v)[0], k.encode("utf-8", "surrogatepass"), bson_order(v))
                               for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (_ARRAY, tuple(bson_order(v) for v in value))
    if isinstance(value, bytes):
        return (_BINARY, len(value), value)
    if isinstance(value, datetime):
        return (_DATE, value.timestamp())
    if type(value).__name__ == "ObjectId":
        return (_OBJECTID, str(value))
    return (_OTHER, str(value))


def sort_and_limit(pairs: Iterable[tuple[Any, Any]], descending: bool, limit: int) -> list[dict]:
    """Rows `{"_id": key, "value": value}` sorted on the value, ties in ascending key order."""
    rows = sorted(pairs, key=lambda pair: bson_order(pair[0]))
    rows.sort(key=lambda pair: bson_order(pair[1]), reverse=descending)
    if limit:
        rows = rows[:limit]
    return [{"_id": key, "value": value} for key, value in rows]


def window_start(spec: ReportSpec, now: datetime) -> datetime | None:
    return now - spec.window if spec.window else None


Batches = Iterator[tuple[int, bytes]]


def compute(spec: ReportSpec, store: Store, now: datetime,
            progress: Callable[[Batches, int], Batches] | None = None) -> list[dict]:
    """The rows of one report. `progress` may wrap the batches of hits fed to JavaScript, given how
    many hits there are; each batch is (its number of hits, its JSON). When the workers read the
    store themselves (SQLite), the JSON is b"" and the counts come as the workers report them."""
    start = window_start(spec, now)
    if spec.pipeline is not None:
        docs = store.aggregate(spec.pipeline, start, spec.site)  # type: ignore[attr-defined]
        pairs = [(doc.get("_id"), doc.get("value")) for doc in docs]
    elif spec.is_default and spec.engine == "embedded":
        pairs = list(store.pageviews_by_page(start, spec.site))
    elif spec.engine == "server":
        pairs = store.server_map_reduce(spec.mapper, spec.reducer, spec.finalize,  # type: ignore[attr-defined]
                                        start, spec.site)
    else:
        limits = Limits(cpu_seconds=spec.cpu_seconds, memory_mb=spec.memory_mb)
        if hasattr(store, "hit_source"):  # the workers read the store themselves (SQLite)
            hits = store.hit_source(start, spec.site, mapper_fields(spec.mapper))
            pairs = map_reduce_source(hits, spec.mapper, spec.reducer, spec.finalize, limits=limits,
                                      progress=progress)
        else:
            batches = encoded_batches(store.hits(start, None, spec.site), spec.mapper)
            if progress is not None:
                batches = progress(batches, store.count(start, None, spec.site))
            pairs = map_reduce_encoded(batches, spec.mapper, spec.reducer, spec.finalize, limits=limits)
    return sort_and_limit(pairs, spec.descending, spec.limit)


@dataclass(frozen=True)
class Purge:
    """What a section removes after its report is written: hits of `site` older than `cutoff`."""

    site: str
    cutoff: datetime | None  # None: nothing, because of `reason`
    reason: str = ""


def plan_purge(spec: ReportSpec, specs: list[ReportSpec], now: datetime) -> Purge | None:
    """The purge of a section with a `time` window, scoped to its site and never taking a hit that a
    section of the same file reads with a longer window (or with none)."""
    if spec.window is None:
        return None
    site = spec.purge_site
    # another standard section reads raw hits only until its days are kept (it runs first): no reader
    readers = [other for other in specs if (other.site is None or other.site == site)
               and (other is spec or not other.standard)]
    unbounded = [other.name for other in readers if other.window is None]
    if unbounded:
        return Purge(site, None, f"[{unbounded[0]}] reads them with no time window")
    longest = max(readers, key=lambda other: other.window or timedelta(0))
    reason = "" if longest is spec else f"[{longest.name}] reads them for {longest.window}"
    return Purge(site, now - longest.window, reason)  # type: ignore[operator]
