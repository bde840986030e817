"""The site view of the dashboard, end to end on both stores: hits that follow issue 12's contract, the real
mongol-report with standard sections (whose `time = days:2` purges the raw hits), the folder served over HTTP
and drawn by Debian's Chromium. For several date ranges, every headline number, chart point and panel row is
read from the page and compared with what this file computes from the hits themselves."""

import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from mongol import standard
from mongol.stores import open_store
from tests.standard_hits import SITE, expected, make_hits
from tests.test_dashboard import ARTIFACTS, browser, report, static_server  # noqa: F401 (fixtures)

NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = NOW.date()
OTHER = "blog.example.org"

READ_VIEW = """() => {
  const s = document.querySelector("section.standard");
  const metric = (name) => {
    const m = s.querySelector(`[data-metric="${name}"]`);
    return {value: Number(m.dataset.value), text: m.querySelector(".metric-value")?.textContent ?? m.textContent,
            change: m.querySelector(".metric-change")?.textContent ?? null};
  };
  return {
    state: s.dataset.state, site: s.dataset.site, from: s.dataset.from, to: s.dataset.to,
    hash: location.hash, range: document.querySelector("#range").value,
    visitors: metric("visitors"), pageviews: metric("pageviews"), perVisitor: metric("views-per-visitor"),
    bots: metric("bots"),
    points: Array.from(s.querySelectorAll(".site-chart circle"), (c) => [c.dataset.time, Number(c.dataset.visitors),
                                                                          Number(c.dataset.pageviews)]),
    panels: Object.fromEntries(Array.from(s.querySelectorAll("[data-panel]"), (p) => [p.dataset.panel, {
      title: p.querySelector("h2").textContent,
      rows: Array.from(p.querySelectorAll("tbody tr"), (tr) => ({
        key: JSON.parse(tr.dataset.key), count: Number(tr.dataset.count),
        label: tr.querySelector("td.label").textContent, share: tr.querySelector("td.share").textContent,
        countText: tr.querySelector("td.count").textContent,
        title: tr.querySelector(".title")?.textContent ?? null})),
    }])),
  };
}"""

TITLES = {"pages": "Pages", "entry-pages": "Entry pages", "sources": "Sources", "campaigns": "Campaigns",
          "browsers": "Browsers", "os": "Operating systems", "devices": "Devices", "countries": "Countries",
          "events": "Events"}


@dataclass
class Folder:
    out: Path
    hits: list[dict]


@pytest.fixture
def folder(store_uri: str, tmp_path: Path) -> Folder:
    """Two runs of mongol-report: the first purges raw hits older than two days, the second (after new
    hits) can only show those days from what it kept."""
    first = make_hits(NOW - timedelta(hours=3), days=75, seed=1, per_hour=1)
    first += make_hits(NOW - timedelta(hours=3), days=3, seed=2, site=OTHER)
    config = tmp_path / "reports.cfg"
    config.write_text(f"[DEFAULT]\noutput = {tmp_path}/out\n[site]\nstandard = yes\nsite = {SITE}\ntime = days:2\n"
                      f"[blog]\nstandard = yes\nsite = {OTHER}\ntimezone = UTC\n"
                      f"[top]\nsite = {SITE}\ntime = days:2\n")
    later = make_hits(NOW, days=1, seed=3)
    for batch in (first, later):
        store = open_store(store_uri)
        try:
            store.insert_many(batch)
        finally:
            store.close()
        result = report(config, store_uri)
        assert result.returncode == 0, result.stderr
    store = open_store(store_uri)
    try:
        assert store.count(end=NOW - timedelta(days=3), site=SITE) == 0  # the old raw hits are gone
    finally:
        store.close()
    return Folder(tmp_path / "out", first + later)


# What the page should show, computed here --------------------------------------------------------

def js_round(x: float) -> int:
    return math.floor(x + 0.5)


def js_fixed(x: float, digits: int) -> str:
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def share(part: float, whole: float) -> str:
    p = part / whole * 100
    return js_fixed(p, 0 if p >= 10 or p == 0 else 1) + "%"


def change(cur: float, prev: float) -> str:
    if not prev:
        return "new" if cur else "no change"
    pct = js_round((cur - prev) / prev * 100)
    return ("+" if pct > 0 else "−" if pct < 0 else "±") + str(abs(pct))


def date_range(name: str, first: date) -> tuple[date, date]:
    day = timedelta(days=1)
    month_start = TODAY.replace(day=1)
    return {"today": (TODAY, TODAY), "yesterday": (TODAY - day, TODAY - day), "7d": (TODAY - 6 * day, TODAY),
            "30d": (TODAY - 29 * day, TODAY), "90d": (TODAY - 89 * day, TODAY), "month": (month_start, TODAY),
            "last-month": ((month_start - day).replace(day=1), month_start - day), "all": (first, TODAY)}[name]


def days_between(a: date, b: date) -> list[str]:
    return [(a + timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def check_view(view: dict, figures: dict[str, dict], a: date, b: date) -> None:
    assert view["state"] == "done" and (view["from"], view["to"]) == (a.isoformat(), b.isoformat())
    span = days_between(a, b)
    length = len(span)
    before = days_between(a - timedelta(days=length), a - timedelta(days=1))
    zero = {"pageviews": 0, "visitors": 0, "bots": 0, "hours": {}}

    def total(days: list[str], name: str) -> int:
        return sum(figures.get(d, zero)[name] for d in days)

    visitors, pageviews, bots = (total(span, n) for n in ("visitors", "pageviews", "bots"))
    assert pageviews > 0 or length == 1
    pv_visitors, pv_pageviews = total(before, "visitors"), total(before, "pageviews")
    assert (view["visitors"]["value"], view["visitors"]["text"]) == (visitors, f"{visitors:,}")
    assert (view["pageviews"]["value"], view["pageviews"]["text"]) == (pageviews, f"{pageviews:,}")
    assert view["visitors"]["change"].startswith(change(visitors, pv_visitors))
    assert view["pageviews"]["change"].startswith(change(pageviews, pv_pageviews))
    per = js_round(pageviews / visitors * 100) / 100 if visitors else 0
    assert view["perVisitor"]["value"] == per
    per_before = js_round(pv_pageviews / pv_visitors * 100) / 100 if pv_visitors else 0
    assert view["perVisitor"]["change"].startswith(change(per, per_before))
    assert view["bots"]["value"] == bots and (f"{bots:,} bot hit" in view["bots"]["text"] or not bots)

    if length == 1:  # per hour
        hours = figures.get(span[0], zero)["hours"]
        assert view["points"] == [[f"{span[0]}T{h:02d}:00", hours.get(h, (0, 0, 0))[1], hours.get(h, (0, 0, 0))[0]]
                                  for h in range(24)]
    else:
        assert view["points"] == [[d, figures.get(d, zero)["visitors"], figures.get(d, zero)["pageviews"]]
                                  for d in span]

    assert {name: panel["title"] for name, panel in view["panels"].items()} == TITLES
    titles = {url: title for d in span for url, (_, title) in figures.get(d, {}).get("pages", {}).items()}
    for name in standard.TABLES:
        counts: Counter = Counter()
        for d in span:
            for key, value in figures.get(d, {}).get(name, {}).items():
                counts[key] += value[0] if name == "pages" else value
        keys = [list(k) if name == "campaigns" else [k] for k in counts]
        ranked = sorted(zip(keys, counts.values(), strict=True),
                        key=lambda kv: (-kv[1], json.dumps(kv[0], separators=(",", ":"))))
        rows = view["panels"][name]["rows"]
        whole = sum(counts.values())
        assert [(r["key"], r["count"], r["share"], r["countText"]) for r in rows] == [
            (k, n, share(n, whole), f"{n:,}") for k, n in ranked], name
        if name in ("pages", "entry-pages"):
            assert [r["title"] for r in rows] == [titles.get(r["key"][0]) or None for r in rows]
            assert all(r["key"][0] in r["label"] for r in rows)
        if name == "sources":
            assert [r["label"] for r in rows] == [k[0] or "Direct / none" for k, _ in ranked]


# Tests -------------------------------------------------------------------------------------------

def open_view(browser, url: str) -> tuple[object, dict]:  # noqa: F811
    visit = browser(url)
    visit.page.wait_for_selector("section.standard[data-state=done]")
    assert visit.problems() == []
    return visit, visit.page.evaluate(READ_VIEW)


@pytest.mark.slow
def test_every_number_for_every_range(folder, static_server, browser):  # noqa: F811
    figures = expected(folder.hits)
    first = date.fromisoformat(min(figures))
    base = static_server(folder.out) + "index.html"
    assert first < TODAY - timedelta(days=60)  # history from before the purge
    for name in ("today", "yesterday", "7d", "30d", "90d", "month", "last-month", "all"):
        _, view = open_view(browser, f"{base}#site={SITE}&range={name}")
        assert view["site"] == SITE and view["range"] == name
        check_view(view, figures, *date_range(name, first))
    a, b = TODAY - timedelta(days=40), TODAY - timedelta(days=12)  # a custom range, all of it purged raw
    visit, view = open_view(browser, f"{base}#site={SITE}&range=custom&from={a}&to={b}")
    check_view(view, figures, a, b)
    custom = visit.page.evaluate("Array.from(document.querySelectorAll('section.report'), (s) => s.dataset.report)")
    assert custom == [*[None] * 9, "top"]  # the custom section is drawn as before, after the site panels
    assert visit.page.text_content("[data-report=top] h2") == "top"

    # the controls: the choice goes into the URL, and the URL into a fresh page
    page = visit.page
    page.select_option("#range", "30d")
    page.wait_for_selector(f"section.standard[data-state=done][data-from='{TODAY - timedelta(days=29)}']")
    assert page.evaluate("location.hash") == f"#site={SITE}&range=30d"
    page.select_option("#range", "custom")  # shows the from-to fields, holding the range shown
    page.wait_for_selector("section.standard[data-state=done] #from:visible")
    assert page.input_value("#from") == str(TODAY - timedelta(days=29)) and page.input_value("#to") == str(TODAY)
    page.fill("#from", (TODAY - timedelta(days=3)).isoformat())
    page.fill("#to", (TODAY - timedelta(days=1)).isoformat())
    page.click("#apply")
    page.wait_for_selector(f"section.standard[data-state=done][data-from='{TODAY - timedelta(days=3)}']")
    check_view(page.evaluate(READ_VIEW), figures, TODAY - timedelta(days=3), TODAY - timedelta(days=1))
    link = page.url
    page.select_option("#site", OTHER)
    page.wait_for_selector(f"section.standard[data-state=done][data-site='{OTHER}']")
    check_view(page.evaluate(READ_VIEW), expected(folder.hits, site=OTHER), TODAY - timedelta(days=3),
               TODAY - timedelta(days=1))
    _, shared = open_view(browser, link)
    assert (shared["site"], shared["from"], shared["to"]) == (SITE, str(TODAY - timedelta(days=3)),
                                                              str(TODAY - timedelta(days=1)))


def test_readable_on_a_phone_and_screenshots(folder, static_server, browser):  # noqa: F811
    base = static_server(folder.out) + "index.html"
    visit, view = open_view(browser, f"{base}#site={SITE}&range=30d")
    check_view(view, expected(folder.hits), TODAY - timedelta(days=29), TODAY)
    # titles and urls are the visitors' text: shown as text, never run or parsed as markup
    assert visit.page.evaluate("document.querySelectorAll('section.standard script, section.standard b').length") == 0
    titles = visit.page.evaluate("Array.from(document.querySelectorAll('[data-panel=pages] .title'), "
                                 "(e) => e.textContent)")
    assert "<script>alert(1)</script>" in titles
    ARTIFACTS.mkdir(exist_ok=True)
    visit.page.screenshot(path=ARTIFACTS / "standard-dashboard.png", full_page=True)  # README's docs/dashboard.png
    _, from_disk = open_view(browser, (folder.out / "index.html").as_uri() + f"#site={SITE}&range=7d")
    check_view(from_disk, expected(folder.hits), TODAY - timedelta(days=6), TODAY)  # file:// works too
    phone = visit.page
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.wait_for_function("document.documentElement.scrollWidth <= 390")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    sizes = phone.evaluate("Array.from(document.querySelectorAll('.metric-value, td.label'), "
                           "(e) => parseFloat(getComputedStyle(e).fontSize))")
    assert min(sizes) >= 12
    phone.screenshot(path=ARTIFACTS / "standard-dashboard-phone.png", full_page=False)


def test_the_readme_screenshot(tmp_path, static_server, browser):  # noqa: F811
    """docs/dashboard.png is this page (copied from test-artifacts/dashboard-site.png), checked like the others."""
    hits = make_hits(NOW, days=40, seed=4, per_hour=4, hostile=False)
    db = f"sqlite://{tmp_path}/hits.db"
    store = open_store(db)
    try:
        store.insert_many(hits)
    finally:
        store.close()
    config = tmp_path / "reports.cfg"
    config.write_text(f"[example]\noutput = {tmp_path}/out\nstandard = yes\nsite = {SITE}\n")
    assert report(config, db).returncode == 0
    visit, view = open_view(browser, static_server(tmp_path / "out") + f"index.html#site={SITE}&range=30d")
    check_view(view, expected(hits), TODAY - timedelta(days=29), TODAY)
    ARTIFACTS.mkdir(exist_ok=True)
    visit.page.screenshot(path=ARTIFACTS / "dashboard-site.png", full_page=True)
