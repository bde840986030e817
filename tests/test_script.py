"""The tracking script end to end: Debian's Chromium (Playwright) browses a small site served on
loopback whose pages load /mongol.js from a real mongol-serve, and the hits stored (SQLite and the
MongoDB wire server) are read back field by field against what each step sent.

Host names are real names mapped to 127.0.0.1 inside Chromium (--host-resolver-rules): the site is
www.shop.test, a site that links to it www.news.test, the stats host stats.test. Nothing leaves
loopback.
"""

import contextlib
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import date, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.standard_hits import expected as figures_of
from tests.test_dashboard import Visit, report, static_server  # noqa: F401 (a fixture)
from tests.test_standard_dashboard import check_view, open_view

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",  # Playwright adds --headless
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--host-resolver-rules=MAP *.test 127.0.0.1"]
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 "
          "Safari/537.36")  # HeadlessChrome's own User-Agent is on the crawler list
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/18.0 Mobile/15E148 Safari/604.1")
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

SCRIPT = '<script defer src="http://stats.test:{stats}/mongol.js"{attrs}></script>'
PAGES = {
    "index.html": ("Shop home", '<a id="about" href="/about.html">About</a>'),
    "about.html": ("About us", '<a id="app" href="/app.html">The app</a>'),
    "offer.html": ("Spring offer", ""),
    "named.html": ("Named", ""),
    "app.html": ("App", """
<button id="cart" onclick="history.pushState({}, '', '/app/cart'); document.title = 'Cart'">cart</button>
<button id="cart-again" onclick="history.pushState({}, '', '/app/cart')">cart again</button>
<button id="replace" onclick="history.replaceState({}, '', '/app/cart')">replace</button>
<button id="checkout" onclick="history.pushState({}, '', '/app/checkout?step=2'); document.title = 'Checkout'">
  checkout</button>
<button id="signup" onclick="mongol.event('signup', {plan: 'pro'})">sign up</button>
<a id="download" href="#dl" data-mongol-event="download">download</a>
<script>
  // the app's router: the title follows the url on back and forward
  addEventListener("popstate", function () {
    document.title = {"/app/cart": "Cart", "/app/checkout": "Checkout"}[location.pathname] || "App";
  });
</script>"""),
}
OFFER = "/offer.html?utm_source=newsletter&utm_medium=email&utm_campaign=spring&id=3"
NEWS = """<!doctype html><meta charset="utf-8"><meta name="referrer" content="unsafe-url"><title>News</title>
<a id="to-shop" href="http://www.shop.test:{port}/index.html">a shop</a>
<a id="campaign" href="http://www.shop.test:{port}{offer}">
  an offer</a>"""


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A static server on a free port for the shop's and the news site's pages (the files come later)."""
    folder = tmp_path / "site"
    (folder / "news").mkdir(parents=True)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, httpd.server_port
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def write_pages(folder: Path, port: int, stats: int) -> None:
    for name, (title, body) in PAGES.items():
        attrs = ' data-site="named.test"' if name == "named.html" else ""
        if name == "named.html":  # README's stub: calls made before the script has come
            body += '<script>window.mongol = {q: [], event: function () { mongol.q.push(arguments); }};' \
                    'mongol.event("early", "x");</script>'

        (folder / name).write_text(f'<!doctype html><meta charset="utf-8"><title>{title}</title>'
                                   f'{SCRIPT.format(stats=stats, attrs=attrs)}<h1>{title}</h1>{body}')
    (folder / "news" / "item.html").write_text(NEWS.format(port=port, offer=OFFER))


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query,
                                                       keep_blank_values=True).items()}


class Browsing:
    """Chromium contexts (one per visitor) that remember every request and every pixel answer."""

    def __init__(self, chromium: object) -> None:
        self.browser = chromium
        self.requests: list[str] = []
        self.pixels: list[tuple[str, dict[str, str]]] = []  # (visitor, query), in the order sent
        self.statuses: list[int] = []
        self.contexts: list[object] = []

    def requested(self, name: str) -> object:
        def record(request: object) -> None:
            self.requests.append(request.url)
            if "/pixel.gif" in request.url:
                self.pixels.append((name, query_of(request.url)))
        return record

    def visitor(self, name: str, **options: object) -> object:
        context = self.browser.new_context(**options)
        self.contexts.append(context)
        context.on("request", self.requested(name))
        context.on("response", lambda r: self.statuses.append(r.status) if "/pixel.gif" in r.url else None)
        return context.new_page()


def step(page: object, action: object, url: str, *events: str | None) -> None:
    """Do `action` and wait until the pixel has answered the hits for `url`: a view, or each of `events`
    (None standing for the view)."""
    def wanted(event: str | None) -> object:
        def match(response: object) -> bool:
            query = query_of(response.url)
            return "/pixel.gif" in response.url and query.get("url") == url and query.get("event") == event
        return match

    with contextlib.ExitStack() as waits:
        for event in events or (None,):
            waits.enter_context(page.expect_response(wanted(event), timeout=15000))
        action()


@pytest.fixture
def chromium() -> Iterator[object]:
    """Debian's Chromium, headless, with the back-forward cache that Playwright turns off by default."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (README)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                                             ignore_default_args=["--disable-back-forward-cache"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.slow
def test_a_site_browsed_with_the_script(site, start_server, store_uri, store, chromium, tmp_path,
                                        static_server):  # noqa: F811
    """Issue 12 end to end: browse, store, mongol-report's standard section, the dashboard read back."""
    folder, port = site
    server = start_server("--db", store_uri, "--flush-interval", "0.05")
    write_pages(folder, port, server.port)
    shop, news = f"http://www.shop.test:{port}", f"http://www.news.test:{port}"
    item = f"{news}/news/item.html?id=7"
    seen = Browsing(chromium)
    page = seen.visitor("reader", user_agent=CHROME, screen={"width": 1440, "height": 900})
    page.goto(item)
    step(page, lambda: page.click("#to-shop"), "/index.html")       # from another site
    page.evaluate("window.kept = 1")                                # survives the bfcache only
    step(page, lambda: page.click("#about"), "/about.html")         # internal links
    step(page, lambda: page.go_back(wait_until="commit"), "/index.html")  # back: no new arrival
    assert page.evaluate("window.kept") == 1                        # shown from the bfcache
    step(page, page.reload, "/index.html")                          # a reload: neither
    step(page, lambda: page.click("#about"), "/about.html")
    step(page, lambda: page.click("#app"), "/app.html")
    step(page, lambda: page.click("#cart"), "/app/cart")            # a single-page app
    page.click("#cart-again")                                       # the same url: no view
    page.click("#replace")
    step(page, lambda: page.click("#checkout"), "/app/checkout?step=2")
    step(page, lambda: page.click("#signup"), "/app/checkout?step=2", "signup")  # events
    step(page, lambda: page.click("#download"), "/app/checkout?step=2", "download")
    page.go_back()                                                  # #dl -> the same url: no view
    step(page, page.go_back, "/app/cart")                           # popstate
    page.goto(item)
    step(page, lambda: page.click("#campaign"), OFFER)  # a campaign link
    # typed in; data-site names the site; an event queued before the script came
    step(page, lambda: page.goto(f"{shop}/named.html"), "/named.html", None, "early")

    dnt = seen.visitor("dnt", user_agent=IPHONE, screen={"width": 390, "height": 844},
                       extra_http_headers={"DNT": "1"})
    step(dnt, lambda: dnt.goto(f"{shop}/index.html"), "/index.html")
    bot = seen.visitor("bot", user_agent=GOOGLEBOT)
    step(bot, lambda: bot.goto(f"http://shop.test:{port}/about.html"), "/about.html")
    cookies = [context.cookies() for context in seen.contexts]
    storage = page.evaluate("() => [document.cookie, localStorage.length, sessionStorage.length]")

    # (visitor, what the script sent, what the store holds besides the server's own fields)
    view = {"site": "shop.test", "screen": "1440"}
    inside = {**view, "_internal": True}
    checkout = {"site": "shop.test", "url": "/app/checkout?step=2", "title": "Checkout"}
    expected = [
        ("reader", {**view, "url": "/index.html", "title": "Shop home", "referrer": item},
         {"referrer": item, "_source": "news.test"}),
        ("reader", {**view, "url": "/about.html", "title": "About us", "referrer": f"{shop}/index.html"}, inside),
        ("reader", {**view, "url": "/index.html", "title": "Shop home", "referrer": f"{shop}/index.html"}, inside),
        ("reader", {**view, "url": "/index.html", "title": "Shop home", "referrer": f"{shop}/index.html"}, inside),
        ("reader", {**view, "url": "/about.html", "title": "About us", "referrer": f"{shop}/index.html"}, inside),
        ("reader", {**view, "url": "/app.html", "title": "App", "referrer": f"{shop}/about.html"}, inside),
        ("reader", {**view, "url": "/app/cart", "title": "Cart", "referrer": f"{shop}/app.html"}, inside),
        ("reader", {**view, **checkout, "referrer": f"{shop}/app/cart"}, inside),
        ("reader", {**checkout, "event": "signup", "props": '{"plan":"pro"}'}, {}),
        ("reader", {**checkout, "event": "download"}, {}),
        ("reader", {**view, "url": "/app/cart", "title": "Cart", "referrer": f"{shop}/app/checkout?step=2"}, inside),
        ("reader", {**view, "url": OFFER, "title": "Spring offer", "referrer": item},
         {"url": "/offer.html?id=3", "referrer": item, "_source": "news.test", "utm_source": "newsletter",
          "utm_medium": "email", "utm_campaign": "spring"}),
        ("reader", {"site": "named.test", "url": "/named.html", "title": "Named", "screen": "1440"}, {}),
        ("reader", {"site": "named.test", "url": "/named.html", "title": "Named", "event": "early", "props": "x"}, {}),
        ("dnt", {"site": "shop.test", "url": "/index.html", "title": "Shop home", "screen": "390"}, {}),
        ("bot", {"site": "shop.test", "url": "/about.html", "title": "About us", "screen": "1280"}, {"_bot": True}),
    ]
    # What the browser sent: one request per view or event, each answered with the pixel
    assert seen.statuses == [200] * len(expected)
    sent = [(who, {k: v for k, v in query.items() if k != "_"}) for who, query in seen.pixels]
    assert sent == [(who, params) for who, params, _ in expected]
    assert all(query["_"] for _, query in seen.pixels)  # a cache buster, which the server drops
    # no cookies, no storage, no request to anyone but the two sites and the stats host
    assert cookies == [[], [], []] and storage == ["", 0, 0]
    hosts = {urllib.parse.urlsplit(url).netloc for url in seen.requests}
    assert hosts <= {f"www.news.test:{port}", f"www.shop.test:{port}", f"shop.test:{port}",
                     f"stats.test:{server.port}"}
    assert {urllib.parse.urlsplit(u).path for u in seen.requests if "stats.test" in u} == {"/mongol.js", "/pixel.gif"}

    # What was stored: exactly those hits, field by field
    wait_until(lambda: store.count() >= len(expected), 15, f"{len(expected)} hits")
    hits = list(store.hits())
    assert len(hits) == len(expected)
    own = ("_id", "time", "_ip", "_ua", "_visitor", "_browser", "_os", "_device")
    def stored_as(params: dict, fields: dict) -> dict:
        hit = {k: v for k, v in params.items() if k != "referrer"}
        return {**hit, **fields, "pageviews": 0 if "event" in params else 1}

    assert sorted(repr(sorted((k, v) for k, v in h.items() if k not in own)) for h in hits) == sorted(
        repr(sorted(stored_as(params, fields).items())) for _, params, fields in expected)
    by_key = {(h["site"], h["url"], h.get("event"), h.get("_bot"), h.get("screen")): h for h in hits}
    visitors = {k: h.get("_visitor") for k, h in by_key.items()}
    readers = {v for (site, _, _, bot, screen), v in visitors.items() if site == "shop.test" and screen != "390"
               and not bot}
    readers |= {visitors[("shop.test", "/app/checkout?step=2", "signup", None, None)]}
    assert len(readers) == 1 and len(readers.pop()) == 16  # one visitor all along, events included
    assert visitors[("shop.test", "/index.html", None, None, "390")] is None  # DNT: no visitor id
    assert visitors[("shop.test", "/about.html", None, True, "1280")] is not None
    assert by_key[("shop.test", "/index.html", None, None, "390")]["_browser"] == "Mobile Safari"
    assert by_key[("shop.test", "/about.html", None, None, "1440")]["_browser"] == "Chrome"

    # The webmaster's view of it: mongol-report with a standard section, the dashboard in Chromium, and
    # every headline number and panel row for several ranges against what this visit amounts to
    config = tmp_path / "reports.cfg"
    config.write_text(f"[shop]\nstandard = yes\nsite = shop.test\ntime = days:2\noutput = {tmp_path}/out\n")
    done = report(config, store_uri)
    assert done.returncode == 0, done.stderr
    figures = figures_of(hits, site="shop.test")
    [today] = figures
    # the reader: 10 views on shop.test; the DNT visitor: 1 view, no visitor id; the bot: counted apart
    assert (figures[today]["pageviews"], figures[today]["visitors"], figures[today]["bots"]) == (11, 1, 1)
    assert figures[today]["campaigns"] == {("newsletter", "email", "spring"): 1}
    assert figures[today]["events"] == {"signup": 1, "download": 1}
    assert figures[today]["sources"] == {"news.test": 2, None: 1}  # two arrivals from news.test, the DNT one
    base = static_server(tmp_path / "out") + "index.html"
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, timezone_id="Pacific/Chatham")

    def browser(url: str) -> Visit:  # as test_dashboard's fixture, in this test's Chromium
        page = context.new_page()
        seen = Visit(page)
        page.on("pageerror", lambda exc: seen.errors.append(f"uncaught: {exc}"))
        page.on("console", lambda m: seen.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.goto(url)
        page.wait_for_selector("html[data-state=done]", timeout=15000)
        return seen

    day = date.fromisoformat(today)
    for name, (a, b) in {"today": (day, day), "7d": (day - timedelta(days=6), day),
                         "30d": (day - timedelta(days=29), day)}.items():
        _, view = open_view(browser, f"{base}#site=shop.test&range={name}")
        check_view(view, figures, a, b)



@pytest.mark.slow
@pytest.mark.parametrize("well_formed", [True, False], ids=["toWellFormed", "older-browser"])
def test_long_fields_are_cut_to_fit_the_query_limit(site, start_server, tmp_path, chromium, well_formed):
    """A page whose title, address and referrer are far longer than a query string may be (with a lone
    surrogate, which encodeURIComponent refuses): its view is still stored, each field a prefix of the
    page's own. Also in a browser without String.prototype.toWellFormed (before 2023)."""
    from mongol.stores import open_store

    folder, port = site
    db = f"sqlite://{tmp_path}/hits.db"
    server = start_server("--db", db, "--flush-interval", "0.05")
    # three bytes a character, encoded nine; lone surrogates, low and high
    title = "a\ude00 " + "\u65e5\u672c\u8a9e \ud83d\ude00" * 1500 + "\ud83d"
    (folder / "long.html").write_text(
        f'<!doctype html><meta charset="utf-8"><meta name="referrer" content="unsafe-url"><title>x</title>'
        f'<script>document.title = {title!r};'  # JavaScript reads the escapes as UTF-16
        f'{"" if well_formed else "delete String.prototype.toWellFormed;"}</script>'
        f'{SCRIPT.format(stats=server.port, attrs="")}')
    (folder / "from.html").write_text(f'<!doctype html><meta name="referrer" content="unsafe-url">'
                                      f'<a id="go" href="http://www.shop.test:{port}/long.html?q={"x" * 5000}">go</a>')
    page = Browsing(chromium).visitor("reader", user_agent=CHROME)
    page.goto(f"http://www.news.test:{port}/from.html?r={'y' * 3000}")  # Chromium sends 4 KiB of referrer at most
    with page.expect_response(lambda r: "/pixel.gif" in r.url, timeout=15000) as answer:
        page.click("#go")
    assert answer.value.status == 200
    assert len(urllib.parse.urlsplit(answer.value.url).query) < 8000
    store = open_store(db)
    try:
        wait_until(lambda: store.count() == 1, 15, "the hit")
        [hit] = store.hits()
    finally:
        store.close()
    # the title as UTF-16 says it: pairs are characters, a lone surrogate is U+FFFD
    well = title.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    assert well.startswith("a\ufffd \u65e5\u672c\u8a9e \U0001f600\u65e5")
    assert len(hit["title"]) > 100 and well.startswith(hit["title"])
    assert hit["url"].startswith("/long.html?q=xxx") and len(hit["url"]) > 2000
    assert hit["referrer"].startswith(f"http://www.news.test:{port}/from.html?r=yyy")
    assert hit["_source"] == "news.test"
