"""The dashboard end to end: hits in a real SQLite store, the real mongol-report CLI, the output folder
served by a real static server (and opened from disk), drawn by Debian's Chromium driven with Playwright.

Expected numbers are computed here in plain Python from the inserted hits, and compared with what the
page shows (table cells, SVG points and bars). The screenshot lands in test-artifacts/dashboard.png.
"""

import configparser
import itertools
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mongol import dashboard
from mongol.hit import new_id
from mongol.reportconfig import load
from mongol.stores import open_store
from tests.conftest import BIN, http_get, wait_until

ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",  # Playwright adds --headless
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE_TITLE = '</script><img src=x onerror="window.__pwned=1"><b>bold</b>'
HOSTILE_URL = "/search?q=<script>window.__pwned=2</script>"


def example_section(name: str) -> str:
    """The options of a section of reports.cfg.example (not its DEFAULT ones), as config text."""
    example = configparser.ConfigParser(interpolation=None)
    assert example.read(ROOT / "reports.cfg.example")
    return "".join(f"{k} = {v}".replace("\n", "\n    ") + "\n" for k, v in example[name].items()
                   if k not in example.defaults())


PER_HOUR = example_section("pageviews-per-hour")  # time = days:2, order = A, limit = 0
PER_DAY = example_section("pageviews-per-day")  # time = weeks:5: the old hits too
CONFIG = f"""
[DEFAULT]
output = OUT
time = days:2

[pageviews-per-hour]
{PER_HOUR}
[pageviews-per-day]
{PER_DAY}
[top]

[languages]
limit = 0
mapper = function () {{ emit(this.lang, {{views: this.pageviews, hits: 1}}); }}
reducer = function (key, values) {{
    var r = {{views: 0, hits: 0}};
    values.forEach(function (v) {{ r.views += v.views; r.hits += v.hits; }});
    return r;
  }}

[sites]
callback = mongol.top
limit = 3
mapper = function () {{ emit(this.site, this.pageviews); }}
reducer = function (key, values) {{ return Array.sum(values); }}
"""

# The hits ----------------------------------------------------------------------------------------

NOW = datetime.now(UTC)
PAGES = [("/", "Home"), ("/blog", "Blog"), ("/blog/post-1", "First post"), ("/about", None),
         ("/contact", "Contact us"), (HOSTILE_URL, HOSTILE_TITLE)]
POPULARITY = [0, 0, 1, 0, 2, 0, 1, 3, 0, 1, 2, 4, 0, 1, 5, 0, 2, 1]  # indexes of PAGES: some are viewed more


def make_hits() -> list[dict]:
    """Two days of hits, hour by hour, of varying pages, sites, languages and pageviews; and older ones
    (three, four and eight days ago) that the two-day windows must leave out, and the five-week one count:
    the days with no hits between them break the per-day line."""
    hits = []
    for h in range(46):
        for i in range(1 + (h * 7) % 5):
            when = NOW - timedelta(hours=h, minutes=3 + 11 * i)
            url, title = PAGES[POPULARITY[(h * 5 + i) % len(POPULARITY)]]
            fields = {"title": title} if title else {}
            hits.append({"_id": new_id(when.timestamp()), "time": when, "site": ["a.org", "b.org", "c.org", "d.org"][
                (h + i) % 4], "url": url, "lang": ["en", "fr", "de"][(h * 2 + i) % 3],
                "pageviews": 2 if (h + i) % 7 == 0 else 1, **fields})
    for days in (3, 4, 8):
        when = NOW - timedelta(days=days)
        hits.append({"_id": new_id(when.timestamp()), "time": when, "site": "old.org", "url": "/old",
                     "title": "Old", "lang": "la", "pageviews": 1})
    return hits


def in_window(hits: list[dict]) -> list[dict]:
    return [h for h in hits if h["time"] > NOW - timedelta(days=2)]


def pageviews_by(hits: list[dict], key: Callable[[dict], object]) -> Counter:
    counts: Counter = Counter()
    for h in hits:
        counts[key(h)] += h["pageviews"]
    return counts


def report(config: Path, db: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mongol-report"), str(config), "--db", db, *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@dataclass
class Built:
    """An output folder written by mongol-report, with the hits it was made from."""

    folder: Path
    hits: list[dict]
    started: datetime
    finished: datetime


def build(tmp: Path, config_text: str, hits: list[dict]) -> Built:
    db = f"sqlite://{tmp}/hits.db"
    store = open_store(db)
    try:
        store.insert_many(hits)
    finally:
        store.close()
    config = tmp / "reports.cfg"
    config.write_text(config_text.replace("OUT", str(tmp / "out")))
    started = datetime.now(UTC)
    result = report(config, db)
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""
    return Built(tmp / "out", hits, started, datetime.now(UTC))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("dashboard"), CONFIG, make_hits())


# The browser -------------------------------------------------------------------------------------

@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    """Serve a folder with `python -m http.server` on a free port; returns its base URL."""
    procs: list[subprocess.Popen] = []

    def serve(folder: Path) -> str:
        with open(tmp_path / f"http-{len(procs)}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                                     "--directory", str(folder)], stdout=subprocess.PIPE, stderr=log,
                                    stdin=subprocess.DEVNULL, text=True)
        procs.append(proc)
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        port = re.search(r" port (\d+) ", line)
        assert port, f"http.server did not start: {line!r}"
        url = f"http://127.0.0.1:{port.group(1)}/"
        wait_until(lambda: http_get(url)[0] == 200, 10, "the static server")
        return url

    yield serve
    for proc in procs:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


@dataclass
class Visit:
    """A page opened in the browser, with everything it said on the console."""

    page: object
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return self.console + self.errors + self.failed_requests

    def panels(self) -> dict[str, dict]:
        return {panel["name"]: panel for panel in self.page.evaluate(READ_PANELS)}


READ_PANELS = """() => Array.from(document.querySelectorAll("section.report")).map((s) => ({
  name: s.querySelector("h2").textContent,
  state: s.dataset.state,
  shape: s.dataset.shape || null,
  stale: s.classList.contains("is-stale"),
  count: s.querySelector(".meta .count")?.textContent ?? null,
  meta: s.querySelector(".meta").textContent,
  problem: s.querySelector(".problem")?.textContent ?? null,
  headers: Array.from(s.querySelectorAll("thead th"), (th) => th.textContent),
  rows: Array.from(s.querySelectorAll("tbody tr"), (tr) => Array.from(tr.cells, (td) => td.textContent)),
  points: Array.from(s.querySelectorAll("svg circle"), (c) => [c.dataset.time, Number(c.dataset.value)]),
  dots: Array.from(s.querySelectorAll("svg circle"), (c) => [c.getAttribute("cx"), c.getAttribute("cy")]),
  lines: Array.from(s.querySelectorAll("svg path.line"), (p) => p.getAttribute("d")),
  bars: Array.from(s.querySelectorAll("svg .bar-row"), (g) => ({
    title: g.querySelector("title").textContent,
    label: g.querySelector(".bar-label").textContent,
    value: g.querySelector(".bar-value").textContent,
    width: Number(g.querySelector("rect.bar").getAttribute("width")),
  })),
}))"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Callable[[str], Visit]]:
    """Open URLs in headless Chromium (a fresh profile in tmp_path); returns once the page has drawn."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (README)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900}, timezone_id="Pacific/Chatham")  # UTC+12:45: times must be UTC

        def visit(url: str) -> Visit:
            page = context.new_page()
            seen = Visit(page)
            page.on("console", lambda m: seen.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda exc: seen.errors.append(f"uncaught: {exc}"))
            page.on("requestfailed", lambda r: seen.failed_requests.append(f"failed: {r.url} {r.failure}"))
            page.goto(url)
            page.wait_for_selector("html[data-state=done]", timeout=15000)
            return seen

        try:
            yield visit
        finally:
            context.close()


# Expected panels ---------------------------------------------------------------------------------

def number(text: str) -> float:
    return float(text.replace(",", ""))


def check_line(panel: dict) -> None:
    """The points are in time order, and the line goes through every one of them: one M or L per point, at
    the point's circle; a new path (starting with M) after each gap of more than 1.5 steps (a period with no
    results), as the JS does."""
    times = [datetime.fromisoformat(t) for t, _ in panel["points"]]
    assert all(a < b for a, b in itertools.pairwise(times)), times
    step = min(b - a for a, b in itertools.pairwise(times))
    breaks = sum(1 for a, b in itertools.pairwise(times) if len(times) >= 3 and b - a > 1.5 * step)
    assert len(panel["lines"]) == 1 + breaks, panel["lines"]
    vertices = []
    for d in panel["lines"]:
        commands = re.findall(r"([ML])(-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)", d)
        assert "".join(c + x + "," + y for c, x, y in commands) == d  # nothing else in the path
        assert [c for c, _, _ in commands] == ["M"] + ["L"] * (len(commands) - 1)
        vertices += [[x, y] for _, x, y in commands]
    assert vertices == panel["dots"] and len(vertices) == len(times)
    xs = [float(x) for x, _ in vertices]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)  # left to right: earlier times first


def check_time_series(panel: dict, expected: list[tuple[datetime, float]], label: str) -> None:
    assert panel["shape"] == "timeseries" and panel["state"] == "ok"
    assert panel["count"] == f"{len(expected)} results"
    assert [tuple(point) for point in panel["points"]] == [
        (t.strftime("%Y-%m-%dT%H:00:00.000Z"), v) for t, v in expected]
    assert panel["headers"] == ["#", "Time (UTC)", "Value"]
    assert [(row[1], number(row[2])) for row in panel["rows"]] == [(t.strftime(label), v) for t, v in expected]
    check_line(panel)


def check_per_hour(panel: dict, hits: list[dict]) -> None:
    hours = pageviews_by(in_window(hits), lambda h: h["time"].replace(minute=0, second=0, microsecond=0))
    check_time_series(panel, sorted(hours.items()), "%Y-%m-%d %H:00 UTC")


def check_per_day(panel: dict, hits: list[dict]) -> None:
    five_weeks = [h for h in hits if h["time"] > NOW - timedelta(weeks=5)]
    days = pageviews_by(five_weeks, lambda h: h["time"].replace(hour=0, minute=0, second=0, microsecond=0))
    assert len(days) >= 5  # today, yesterday, 3, 4 and 8 days ago (and the day before yesterday, early in a day)
    check_time_series(panel, sorted(days.items()), "%Y-%m-%d 00:00 UTC")


def check_top(panel: dict, hits: list[dict]) -> None:
    pages = pageviews_by(in_window(hits), lambda h: (h["url"], h.get("title", "")))
    assert panel["shape"] == "bars" and panel["state"] == "ok"
    assert panel["count"] == f"{len(pages)} results"  # 6 pages: under the default limit of 10
    assert panel["headers"] == ["#", "url", "title", "Value"]
    shown = [((url, title), number(value)) for _, url, title, value in panel["rows"]]
    assert dict(shown) == pages and len(shown) == len(pages)
    assert [v for _, v in shown] == sorted(pages.values(), reverse=True)
    assert [number(bar["value"]) for bar in panel["bars"]] == [v for _, v in shown]
    assert [bar["title"] for bar in panel["bars"]] == [
        (f"{url} · {title}" if title else url) + f": {v:g}" for (url, title), v in shown]
    widths = [bar["width"] for bar in panel["bars"]]  # bars from zero: proportional to the values
    assert all(abs(w / widths[0] - v / shown[0][1]) < 0.01 for w, (_, v) in zip(widths, shown, strict=True))


def check_languages(panel: dict, hits: list[dict]) -> None:
    views = pageviews_by(in_window(hits), lambda h: h["lang"])
    counts = Counter(h["lang"] for h in in_window(hits))
    assert panel["shape"] == "table" and panel["state"] == "ok" and not panel["bars"]
    assert panel["count"] == "3 results"
    assert panel["headers"] == ["#", "Key", "views", "hits"]
    assert {row[1]: (number(row[2]), number(row[3])) for row in panel["rows"]} == {
        lang: (views[lang], counts[lang]) for lang in views}


def check_sites(panel: dict, hits: list[dict]) -> None:
    sites = sorted(pageviews_by(in_window(hits), lambda h: h["site"]).items(), key=lambda kv: (-kv[1], kv[0]))
    assert panel["shape"] == "bars" and panel["count"] == "3 results"  # limit = 3, callback mongol.top
    assert [(row[1], number(row[2])) for row in panel["rows"]] == sites[:3]
    assert [(bar["label"], number(bar["value"])) for bar in panel["bars"]] == sites[:3]


CHECKS = {"pageviews-per-hour": check_per_hour, "pageviews-per-day": check_per_day, "top": check_top,
          "languages": check_languages, "sites": check_sites}


# Tests -------------------------------------------------------------------------------------------

def test_every_report_drawn_with_the_right_numbers_over_http(built, static_server, browser):
    base = static_server(built.folder)
    visit = browser(base + "index.html")
    panels = visit.panels()
    assert list(panels) == list(CHECKS)  # the config's order
    for name, check in CHECKS.items():
        check(panels[name], built.hits)
    generated = datetime.fromisoformat(visit.page.get_attribute("#generated", "datetime"))
    assert built.started <= generated <= built.finished
    assert visit.page.title() == "Mongol reports"
    assert visit.problems() == []
    ARTIFACTS.mkdir(exist_ok=True)
    visit.page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)


def test_works_from_disk(built, browser):
    visit = browser((built.folder / "index.html").as_uri())
    panels = visit.panels()
    for name, check in CHECKS.items():
        check(panels[name], built.hits)
    assert visit.problems() == []


def test_user_data_is_shown_as_text(built, static_server, browser):
    visit = browser(static_server(built.folder) + "index.html")
    page = visit.page
    assert page.evaluate("document.querySelectorAll('img, b, body script:not([src])').length") == 0
    assert page.evaluate("window.__pwned") is None
    cells = page.evaluate("Array.from(document.querySelectorAll('[data-report=top] td'), (td) => td.textContent)")
    assert HOSTILE_TITLE in cells and HOSTILE_URL in cells
    labels = page.evaluate("Array.from(document.querySelectorAll('[data-report=top] .bar-row title'), "
                           "(t) => t.textContent)")
    assert any(label.startswith(f"{HOSTILE_URL} · {HOSTILE_TITLE}: ") for label in labels)
    assert visit.problems() == []


def test_failed_sections_missing_and_stale_files(tmp_path, static_server, browser):
    """A section that never succeeded is "not available"; one that failed this time keeps its previous file,
    flagged as not updated; a listed file gone from disk shows an error in its own panel only."""
    first = f"[DEFAULT]\noutput = OUT\ntime = days:2\n[good]\n[flaky]\n{PER_HOUR}[gone]\n[never]\n"
    built = build(tmp_path, first, make_hits())
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
    os.utime(built.folder / "flaky.json", (hour_ago, hour_ago))  # as if written by a run an hour ago
    (built.folder / "never.json").unlink()  # as if its section had never succeeded
    boom = "mapper = function () { throw new Error('boom'); }\n"
    config = tmp_path / "reports.cfg"
    config.write_text(f"[DEFAULT]\noutput = {built.folder}\ntime = days:2\n[good]\n[flaky]\n{boom}[gone]\n"
                      f"[never]\n{boom}")
    result = report(config, f"sqlite://{tmp_path}/hits.db")
    assert result.returncode == 1
    assert "2 of 4 sections failed: flaky, never" in result.stderr and "dashboard" not in result.stderr
    (built.folder / "gone.json").unlink()  # listed as written, then removed before the page loads it

    visit = browser(static_server(built.folder) + "index.html")
    panels = visit.panels()
    assert list(panels) == ["good", "flaky", "gone", "never"]
    assert panels["good"]["state"] == "ok" and not panels["good"]["stale"]
    assert panels["flaky"]["state"] == "ok" and panels["flaky"]["stale"] and panels["flaky"]["points"]
    assert "not updated by the last run" in panels["flaky"]["meta"]
    assert panels["gone"]["state"] == "error"
    assert panels["gone"]["problem"] == "Not available: gone.json could not be loaded."
    assert panels["never"]["state"] == "missing"
    assert "never.json has not been written yet" in panels["never"]["problem"]
    assert visit.errors == []
    assert [m for m in visit.console if "404" not in m] == []  # only the request for gone.json failed


def test_dry_run_and_config_errors_write_no_dashboard(tmp_path):
    open_store(f"sqlite://{tmp_path}/hits.db").close()
    config = tmp_path / "reports.cfg"
    config.write_text(f"[s]\noutput = {tmp_path}/out\n")
    assert report(config, f"sqlite://{tmp_path}/hits.db", "--dry-run").returncode == 0
    config.write_text(f"[s]\noutput = {tmp_path}/out\norder = X\n")
    assert report(config, f"sqlite://{tmp_path}/hits.db").returncode == 2
    assert not (tmp_path / "out").exists()


def test_a_foreign_index_html_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("<h1>my own page</h1>\n")
    open_store(f"sqlite://{tmp_path}/hits.db").close()
    config = tmp_path / "reports.cfg"
    config.write_text(f"[s]\noutput = {out}\n")
    result = report(config, f"sqlite://{tmp_path}/hits.db")
    assert result.returncode == 1
    assert result.stderr == (f"mongol-report: dashboard failed: {out}/index.html exists and was not written by "
                             "mongol-report; not replacing it (move it away, or write the reports to another "
                             "folder)\n")
    assert (out / "index.html").read_text() == "<h1>my own page</h1>\n"
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "s.json"]  # the report is written


def test_each_folder_gets_the_page_and_a_manifest_of_its_sections(tmp_path):
    config = tmp_path / "reports.cfg"
    config.write_text(f"[DEFAULT]\noutput = {tmp_path}/a\n[one]\ntime = weeks:1 days:2 hours:6\n"
                      f"[two]\noutput = {tmp_path}/b/\nsite = example.com\ncallback = mongol.top\n"
                      f"[three]\noutput = {tmp_path}/a/.\n")
    specs = load(config, mongodb=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.json").write_text("results([]);\n")
    now = datetime(2026, 11, 22, 14, 0, tzinfo=UTC)
    assert dashboard.write_dashboards(specs, now) == [tmp_path / "a", tmp_path / "b"]
    for folder in ("a", "b"):
        for name in dashboard.ASSETS:
            assert (tmp_path / folder / name).read_bytes() == (ROOT / "mongol" / "dashboard" / name).read_bytes()

    def manifest(folder: str) -> dict:
        text = (tmp_path / folder / "reports.js").read_text()
        return json.loads(re.fullmatch(r"/\* mongol-report dashboard: .* \*/\nmongolDashboard\((.*)\);\n", text,
                                       re.DOTALL).group(1))

    one_written = datetime.fromtimestamp((tmp_path / "a" / "one.json").stat().st_mtime, UTC)
    assert manifest("a") == {"generated": "2026-11-22T14:00:00.000Z", "reports": [
        {"name": "one", "file": "one.json", "callback": "results", "site": None, "window": "1 week 2 days 6 hours",
         "written": one_written.isoformat(timespec="milliseconds").replace("+00:00", "Z")},
        {"name": "three", "file": "three.json", "callback": "results", "site": None, "window": None,
         "written": None}]}
    assert manifest("b")["reports"] == [{"name": "two", "file": "two.json", "callback": "mongol.top",
                                         "site": "example.com", "window": None, "written": None}]
    # a second run replaces its own files, leaving no temporary file behind
    dashboard.write_dashboards(specs, now + timedelta(hours=1))
    assert manifest("b")["generated"] == "2026-11-22T15:00:00.000Z"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted([*dashboard.ASSETS, "reports.js"])


def test_the_page_is_self_contained():
    """No CDN, no third-party code: every URL in the shipped files is a file of the folder (or SVG's namespace)."""
    for name in dashboard.ASSETS:
        text = dashboard.asset(name).decode()
        assert "mongol-report dashboard" in text  # the marker that lets the next run replace it
        assert set(re.findall(r"\w+://[^\s\"')]+", text)) <= {"http://www.w3.org/2000/svg"}, name
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text
    html = dashboard.asset("index.html").decode()
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == ["data:,", "dashboard.css", "standard.js", "dashboard.js"]
