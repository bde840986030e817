"""The standard reports of one site (a section with `standard = yes`), kept per day and published for the dashboard.

Each run recomputes, natively on the store (Store.standard_rows), only the days whose hits changed since they
were last computed: every insert marks the (site, UTC hour) it touched with a new change number, and a kept
day remembers the newest mark it includes. The kept days live in the store, so they outlive the raw hits: a
day that starts before the newest purge cutoff of its site is never recomputed from what is left of it (a
late hit for such a day, a replay of a spool older than the purge, is left out of its figures).

The rows a store gives for spans of time (Store.standard_rows): (figure, day, hour, key, value) with
    pageviews   hour set: the sum of `pageviews` of the hour's hits that are not bots
    bots        hour set: how many bot hits
    visitors    hour set, or None for the whole day: distinct `_visitor` of human page views
    pages       key [url, title]: page views (human hits with pageviews > 0)
    entry-pages key [url]: page views without `_internal` (the visit began there)
    sources     key [_source] (null: direct): page views without `_internal`
    campaigns   key [utm_source, utm_medium, utm_campaign]: page views without `_internal` with either
    browsers, os, devices, countries   key [_browser] (_os, _device, _country): page views
    events      key [event]: how many human hits with an `event`
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from mongol.jsonp import plain, publish, render
from mongol.reportconfig import ReportSpec
from mongol.stores import Store

TABLES = ("pages", "entry-pages", "sources", "campaigns", "browsers", "os", "devices", "countries", "events")
#: Rows of each table per day in the published files; the rest is summed in `rest`.
PUBLISHED_ROWS = 100
#: Days recomputed per query: bounds what one aggregation holds in memory.
CHUNK_DAYS = 7
EPOCH_DAY = date(1970, 1, 1)
HOUR = timedelta(hours=1)


def report_key(spec: ReportSpec) -> str:
    """What the kept days of a section are filed under: its site and time zone."""
    return f"{spec.site} {spec.timezone}"


def day_start(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant a local day begins."""
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def local_days(hour: datetime, zone: ZoneInfo) -> set[date]:
    """The local days a UTC hour [hour, hour + 1h) falls in (two where a day begins inside it)."""
    return {hour.astimezone(zone).date(), (hour + HOUR - timedelta(microseconds=1)).astimezone(zone).date()}


def _offset(moment: datetime, zone: ZoneInfo) -> timedelta:
    return moment.astimezone(zone).utcoffset() or timedelta(0)


def segments(days: list[date], zone: ZoneInfo) -> list[tuple[datetime, datetime, timedelta]]:
    """[start, end) spans in UTC of consecutive local days, cut where the zone's offset changes."""
    spans: list[tuple[datetime, datetime, timedelta]] = []
    for day in days:
        start, end = day_start(day, zone), day_start(day + timedelta(days=1), zone)
        first, last = _offset(start, zone), _offset(end - timedelta(seconds=1), zone)
        pieces = [(start, end, first)]
        if first != last:  # a transition inside the day: find its second
            lo, hi = 0, int((end - start).total_seconds())
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if _offset(start + timedelta(seconds=mid), zone) == first else (lo, mid)
            cut = start + timedelta(seconds=hi)
            pieces = [(start, cut, first), (cut, end, last)]
        for piece in pieces:
            if spans and spans[-1][1] == piece[0] and spans[-1][2] == piece[2]:
                spans[-1] = (spans[-1][0], piece[1], piece[2])
            else:
                spans.append(piece)
    return spans


def _ranked(counts: dict[tuple, float]) -> list[list]:
    """Rows [*key, count], the biggest first, ties in key order."""
    return [[*key, count] for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], repr(kv[0])))]


def build_day(rows: Iterable[tuple]) -> tuple[list, dict]:
    """One day's rows (figure, hour, key, value) as its totals [pageviews, visitors, bots] and its figures."""
    hours: dict[int, list] = {}
    tables: dict[str, dict[tuple, float]] = {name: {} for name in TABLES}
    visitors = 0
    titles: dict[object, tuple[float, str]] = {}
    for figure, hour, key, value in rows:
        if figure in ("pageviews", "bots", "visitors") and hour is not None:
            hours.setdefault(int(hour), [0, 0, 0])[("pageviews", "visitors", "bots").index(figure)] += value
        elif figure == "visitors":
            visitors += value
        elif figure == "pages":  # one row per url, with its most viewed title
            url, title = key
            table = tables["pages"]
            table[(url,)] = table.get((url,), 0) + value
            if title is not None and (value, str(title)) > titles.get(url, (0, "")):
                titles[url] = (value, str(title))
        else:
            key = tuple(key)
            tables[figure][key] = tables[figure].get(key, 0) + value
    doc: dict = {"hours": [[h, *values] for h, values in sorted(hours.items())]}
    for name in TABLES:
        doc[name] = _ranked(tables[name])
    doc["pages"] = [[url, titles.get(url, (0, None))[1], n] for url, n in doc["pages"]]
    totals = [sum(v[0] for v in hours.values()), visitors, sum(v[2] for v in hours.values())]
    doc = plain(doc)
    return plain(totals), doc


@dataclass
class Update:
    recomputed: list[date]
    frozen: list[date]  # changed, but older than the purge: kept as they were


def changed_days(store: Store, spec: ReportSpec) -> tuple[dict[date, int], dict[str, tuple[int, list]]]:
    """The days with marks newer than their kept figures (and the newest mark of each), and the kept days."""
    zone = ZoneInfo(spec.timezone)
    kept = store.kept_days(report_key(spec))
    newest: dict[date, int] = {}
    for hour, seq in store.changed_hours(spec.site):
        for day in local_days(hour, zone):
            if seq > newest.get(day, -1):
                newest[day] = seq
    return {day: seq for day, seq in newest.items()
            if day.isoformat() not in kept or seq > kept[day.isoformat()][0]}, kept


def update(store: Store, spec: ReportSpec, dry_run: bool = False) -> Update:
    """Recompute and keep the changed days of a standard section."""
    zone = ZoneInfo(spec.timezone)
    changed, kept = changed_days(store, spec)
    horizon = store.purge_horizon(spec.site)
    recompute = sorted(day for day in changed if day.isoformat() not in kept or horizon is None
                       or day_start(day, zone) >= horizon)
    frozen = sorted(set(changed) - set(recompute))
    if dry_run:
        return Update(recompute, frozen)
    key = report_key(spec)
    for chunk in _chunks(recompute):
        wanted = {(day - EPOCH_DAY).days: day for day in chunk}
        rows: dict[date, list] = {day: [] for day in chunk}
        for figure, number, hour, row_key, value in store.standard_rows(spec.site, segments(chunk, zone)):
            day = wanted.get(int(number))
            if day is not None:
                rows[day].append((figure, hour, row_key, value))
        store.keep_days(key, {day.isoformat(): (changed[day], *build_day(day_rows)) for day, day_rows in rows.items()})
    if frozen:
        docs = store.kept_docs(key, frozen[0].isoformat(), frozen[-1].isoformat())
        store.keep_days(key, {day.isoformat(): (changed[day], kept[day.isoformat()][1], docs[day.isoformat()])
                              for day in frozen})
    return Update(recompute, frozen)


def _chunks(days: list[date]) -> Iterable[list[date]]:
    """Runs of consecutive days, at most CHUNK_DAYS each."""
    chunk: list[date] = []
    for day in days:
        if chunk and (day - chunk[-1] != timedelta(days=1) or len(chunk) >= CHUNK_DAYS):
            yield chunk
            chunk = []
        chunk.append(day)
    if chunk:
        yield chunk


def published_day(doc: dict) -> dict:
    """A kept day as published: each table cut to PUBLISHED_ROWS, what is cut summed in `rest`."""
    out = dict(doc)
    rest = {}
    for name in TABLES:
        rows = doc.get(name, [])
        if len(rows) > PUBLISHED_ROWS:
            out[name] = rows[:PUBLISHED_ROWS]
            rest[name] = sum(row[-1] for row in rows[PUBLISHED_ROWS:])
    if rest:
        out["rest"] = rest
    return out


def month_path(spec: ReportSpec, month: str) -> Path:
    return spec.output / spec.name / f"{month}.json"


def publish_files(store: Store, spec: ReportSpec, now: datetime, result: Update) -> int:
    """Write SECTION.json (every kept day's totals) and SECTION/YYYY-MM.json for each month that changed
    or whose file is missing; returns how many files were written."""
    key = report_key(spec)
    kept = store.kept_days(key)
    months = sorted({day[:7] for day in kept})
    touched = {day.isoformat()[:7] for day in result.recomputed + result.frozen}
    written = 0
    for month in months:
        path = month_path(spec, month)
        if month in touched or not path.exists():
            docs = store.kept_docs(key, f"{month}-01", f"{month}-31")
            publish(path, render(spec.callback, {
                "site": spec.site, "month": month,
                "days": {day: published_day(docs[day]) for day in sorted(docs)}}))
            written += 1
    zone = ZoneInfo(spec.timezone)
    publish(spec.path, render(spec.callback, {
        "standard": 1, "site": spec.site, "timezone": spec.timezone, "generated": now,
        "today": now.astimezone(zone).date().isoformat(), "months": months,
        "days": [[day, *kept[day][1]] for day in sorted(kept)]}))
    return written + 1
