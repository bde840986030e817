"""Campaigns, referrers, events and screen widths (mongol.sources, mongol.hit): a table of requests
and the fields they give, first as units, then through a real mongol-serve on both stores; and what
the pixel's host answers that is no hit (/mongol.js, /robots.txt, /favicon.ico)."""

import gzip
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mongol import assets
from mongol.app import GIF
from mongol.hit import hit_from_environ
from mongol.sources import bare_host, referrer_host, split_campaign
from tests.conftest import http_get, stored

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"}
SERVER_FIELDS = {"_id", "time", "pageviews", "_ip", "_ua", "_visitor", "_browser", "_os", "_device"}

# (query parameters, Referer header, the fields the hit gets besides the server's own, its pageviews)
ROWS = [
    # a direct visit: no referrer at all, or an empty one (document.referrer of a typed address)
    ({"site": "shop.test", "url": "/"}, None, {"site": "shop.test", "url": "/"}, 1),
    ({"site": "shop.test", "url": "/", "referrer": ""}, None, {"site": "shop.test", "url": "/"}, 1),
    # an external referrer keeps its full address; its host without www. is the source
    ({"site": "shop.test", "url": "/", "referrer": "https://www.News.Test/item?id=1"}, None,
     {"site": "shop.test", "url": "/", "referrer": "https://www.News.Test/item?id=1", "_source": "news.test"}, 1),
    ({"site": "shop.test", "url": "/", "referrer": "http://user@sub.news.test:8080/x"}, None,
     {"site": "shop.test", "url": "/", "referrer": "http://user@sub.news.test:8080/x", "_source": "sub.news.test"}, 1),
    ({"site": "shop.test", "url": "/", "referrer": "android-app://com.example.reader/"}, None,
     {"site": "shop.test", "url": "/", "referrer": "android-app://com.example.reader/",
      "_source": "com.example.reader"}, 1),
    # only a leading www. goes: www.www.shop.test is another host
    ({"site": "shop.test", "url": "/", "referrer": "https://www.www.shop.test/"}, None,
     {"site": "shop.test", "url": "/", "referrer": "https://www.www.shop.test/", "_source": "www.shop.test"}, 1),
    # the same site, with or without www. on either side, in any case: internal, no referrer kept
    ({"site": "shop.test", "url": "/b", "referrer": "https://www.shop.test/a?x=1"}, None,
     {"site": "shop.test", "url": "/b", "_internal": True}, 1),
    ({"site": "www.Shop.test", "url": "/b", "referrer": "http://SHOP.test./a"}, None,
     {"site": "www.Shop.test", "url": "/b", "_internal": True}, 1),
    # a subdomain is another site
    ({"site": "shop.test", "url": "/", "referrer": "https://blog.shop.test/"}, None,
     {"site": "shop.test", "url": "/", "referrer": "https://blog.shop.test/", "_source": "blog.shop.test"}, 1),
    # not a URL: kept as given, no source
    ({"site": "shop.test", "url": "/", "referrer": "not a url"}, None,
     {"site": "shop.test", "url": "/", "referrer": "not a url"}, 1),
    ({"site": "shop.test", "url": "/", "referrer": "http://[::1"}, None,
     {"site": "shop.test", "url": "/", "referrer": "http://[::1"}, 1),
    # campaigns out of url, the rest of the query kept in order
    ({"site": "shop.test", "url": "/offer?id=3&utm_source=news%20letter&utm_medium=email&x=&utm_campaign=spring"
      "&utm_term=red+shoes&utm_content=top&y=2"}, None,
     {"site": "shop.test", "url": "/offer?id=3&x=&y=2", "utm_source": "news letter", "utm_medium": "email",
      "utm_campaign": "spring", "utm_term": "red shoes", "utm_content": "top"}, 1),
    # only campaign parameters: the ? goes too; a fragment stays
    ({"site": "shop.test", "url": "/offer?utm_source=a&utm_campaign=b"}, None,
     {"site": "shop.test", "url": "/offer", "utm_source": "a", "utm_campaign": "b"}, 1),
    ({"site": "shop.test", "url": "/offer?utm_source=a#part"}, None,
     {"site": "shop.test", "url": "/offer#part", "utm_source": "a"}, 1),
    # ref= is the source when there is no utm_source, and goes from url in any case
    ({"site": "shop.test", "url": "/?ref=producthunt&p=1"}, None,
     {"site": "shop.test", "url": "/?p=1", "utm_source": "producthunt"}, 1),
    ({"site": "shop.test", "url": "/?ref=producthunt&utm_source=mail"}, None,
     {"site": "shop.test", "url": "/", "utm_source": "mail"}, 1),
    # as parameters; a parameter wins over the url's; the first of several values; empty is no value
    ({"site": "shop.test", "url": "/?utm_source=url&utm_medium=url", "utm_source": "param"}, None,
     {"site": "shop.test", "url": "/", "utm_source": "param", "utm_medium": "url"}, 1),
    ({"site": "shop.test", "url": "/", "ref": "hn"}, None, {"site": "shop.test", "url": "/", "utm_source": "hn"}, 1),
    ({"site": "shop.test", "url": "/?utm_source=&utm_medium=cpc&utm_medium=x", "utm_campaign": ["c1", "c2"],
      "utm_term": ""}, None, {"site": "shop.test", "url": "/", "utm_medium": "cpc", "utm_campaign": "c1"}, 1),
    # names that merely look alike stay
    ({"site": "shop.test", "url": "/?utm_sources=1&href=2&pref=3&UTM_SOURCE=4"}, None,
     {"site": "shop.test", "url": "/?utm_sources=1&href=2&pref=3&UTM_SOURCE=4"}, 1),
    # a url taken from the Referer header (the plain <img> pixel) loses its campaign too
    ({"title": "Home"}, "https://www.shop.test/landing?utm_source=ads&utm_campaign=x1&k=v",
     {"site": "shop.test", "url": "/landing?k=v", "title": "Home", "utm_source": "ads", "utm_campaign": "x1"}, 1),
    # events: pageviews 0, the name and props as given; an empty name is a page view
    ({"site": "shop.test", "url": "/pricing", "event": "signup", "props": '{"plan":"pro"}'}, None,
     {"site": "shop.test", "url": "/pricing", "event": "signup", "props": '{"plan":"pro"}'}, 0),
    ({"site": "shop.test", "url": "/", "event": ["a", "b"]}, None, {"site": "shop.test", "url": "/", "event": "a"}, 0),
    ({"site": "shop.test", "url": "/", "event": ""}, None, {"site": "shop.test", "url": "/"}, 1),
    # screen: a width in digits, or nothing
    ({"site": "shop.test", "url": "/", "screen": "1440"}, None, {"site": "shop.test", "url": "/", "screen": "1440"}, 1),
    ({"site": "shop.test", "url": "/", "screen": ["390", "1"]}, None,
     {"site": "shop.test", "url": "/", "screen": "390"}, 1),
    ({"site": "shop.test", "url": "/", "screen": "wide"}, None, {"site": "shop.test", "url": "/"}, 1),
    ({"site": "shop.test", "url": "/", "screen": "1234567"}, None, {"site": "shop.test", "url": "/"}, 1),
    # clients cannot forge the server's fields
    ({"site": "shop.test", "url": "/", "_source": "forged", "_internal": "1"}, None,
     {"site": "shop.test", "url": "/"}, 1),
]


def encode(params: dict) -> str:
    return urllib.parse.urlencode(params, doseq=True)


@pytest.mark.parametrize(("params", "referer", "fields", "views"), ROWS)
def test_fields_of_a_hit(params, referer, fields, views):
    environ = {"QUERY_STRING": encode(params), "REMOTE_ADDR": "203.0.113.9"}
    if referer:
        environ["HTTP_REFERER"] = referer
    hit = hit_from_environ(environ)
    assert hit.pop("pageviews") == views
    own = {k: v for k, v in hit.items() if k not in SERVER_FIELDS}
    assert own == fields


def test_a_page_viewed_again_gives_the_same_fields_in_a_hit_of_its_own(tmp_path):
    """What a query string and Referer give is worked out once (mongol.hit.page_fields): the next views
    of a page get the same fields, each in a new hit with its own id, and a hit changed after it was
    made changes no other."""
    from mongol.tracking import Salts, Tracker, Tracking

    tracker = Tracker(Tracking(), Salts(tmp_path))
    makers = {"plain": hit_from_environ, "tracker": lambda environ: tracker.make(environ)[0]}
    for name, make in makers.items():
        for params, referer, fields, views in ROWS:
            environ = {"QUERY_STRING": encode(params), "REMOTE_ADDR": "203.0.113.9"}
            if referer:
                environ["HTTP_REFERER"] = referer
            first = make(environ)
            first["site"] = "changed"
            first["extra"] = "added"
            second = make(dict(environ))
            assert second["_id"] != first["_id"], name
            assert second.pop("pageviews") == views, (name, params)
            assert {k: v for k, v in second.items() if k not in SERVER_FIELDS} == fields, (name, params)
    # the Referer is part of what is kept: the same query with another Referer is another page
    a = hit_from_environ({"QUERY_STRING": "", "HTTP_REFERER": "https://a.test/x", "REMOTE_ADDR": "203.0.113.9"})
    b = hit_from_environ({"QUERY_STRING": "", "HTTP_REFERER": "https://b.test/y", "REMOTE_ADDR": "203.0.113.9"})
    assert (a["site"], a["url"], b["site"], b["url"]) == ("a.test", "/x", "b.test", "/y")


def test_what_is_kept_of_pages_stays_small_whatever_clients_send():
    from mongol import hit as hit_module

    hit_module._cached_page.cache_clear()
    long_referer = "https://a.test/" + "x" * hit_module.PAGE_KEY_CHARS
    for n in range(hit_module.PAGE_CACHE + 500):
        hit_from_environ({"QUERY_STRING": f"site=a.test&url=/{n}", "REMOTE_ADDR": "203.0.113.9"})
        hit_from_environ({"QUERY_STRING": f"n={n}", "HTTP_REFERER": long_referer, "REMOTE_ADDR": "203.0.113.9"})
    info = hit_module._cached_page.cache_info()
    assert info.currsize == hit_module.PAGE_CACHE  # the oldest pages went, long keys never came in
    assert info.misses == hit_module.PAGE_CACHE + 500


@pytest.mark.parametrize(("url", "rest", "found"), [
    ("/", "/", {}),
    ("/a?b=1", "/a?b=1", {}),
    ("/a?utm_source=x", "/a", {"utm_source": "x"}),
    ("/a?b=1&utm_source=x&c=%2F", "/a?b=1&c=%2F", {"utm_source": "x"}),
    ("/a?utm%5Fsource=x", "/a", {"utm_source": "x"}),  # an escaped name is the same name
    ("/a?utm_source=%E2%82%AC", "/a", {"utm_source": "\u20ac"}),
    ("/a?utm_source=x&utm_source=y", "/a", {"utm_source": "x"}),
    ("/a#utm_source=x", "/a#utm_source=x", {}),  # a fragment is the page's own business
    ("/a#x?utm_source=x", "/a#x?utm_source=x", {}),
    ("/a?b=1&utm_source=x#y?utm_medium=z", "/a?b=1#y?utm_medium=z", {"utm_source": "x"}),
])
def test_split_campaign(url, rest, found):
    assert split_campaign(url) == (rest, found)


@pytest.mark.parametrize(("referrer", "host"), [
    ("https://www.a.test/", "a.test"), ("https://WWW.A.TEST:443/x", "a.test"), ("https://a.test./", "a.test"),
    ("//a.test/", None), ("/relative", None), ("", None), ("http://[::1]:80/", "::1"), ("http://[::1", None),
])
def test_referrer_host(referrer, host):
    assert referrer_host(referrer) == host


def slow_referrer_host(referrer: str) -> str | None:
    """referrer_host without its fast path: urlsplit alone."""
    try:
        parts = urllib.parse.urlsplit(referrer)
        host = parts.hostname
    except ValueError:
        return None
    return bare_host(host) if parts.scheme and host else None


SCHEMES = st.sampled_from(["http", "https", "HTTPS", "android-app", "a+b.c-d", "1x", "", "-"])
SEPARATORS = st.sampled_from(["://", ":/", "//", ":", ""])
PIECES = st.sampled_from(["", ":", "/", "?", "#", "@", "[", "]", "[::1]", "\\", " ", "\t", "\n", ":80", ":x",
                          "www.", "WWW.", "example.com", "Ex.Test.", "%41", "\u00e9", "user:pw@", "x", "."])
URLS = st.tuples(SCHEMES, SEPARATORS, st.lists(PIECES, max_size=5)).map(lambda t: t[0] + t[1] + "".join(t[2]))


@settings(max_examples=1000, deadline=None)
@given(URLS)
def test_referrer_host_fast_path_agrees_with_urlsplit(referrer):
    assert referrer_host(referrer) == slow_referrer_host(referrer)


# Through mongol-serve, on both stores ---------------------------------------------------------

@pytest.fixture
def served(start_server, store_uri, store):
    return start_server("--db", store_uri, "--flush-interval", "0.05"), store


def test_each_row_through_the_server(served):
    """Every row of the table, each with its own number `n`: the stored hits are exactly those sent."""
    server, store = served
    answered = set()
    for n, (params, referer, _, _) in enumerate(ROWS):
        headers = {**BROWSER, "Referer": referer} if referer else BROWSER
        status, _, body = http_get(f"{server.url}/pixel.gif?{encode(params)}&n={n}", headers)
        assert (status, body) == (200, GIF)
        answered.add(str(n))
    hits = {h["n"]: h for h in stored(store, len(ROWS))}
    assert set(hits) == answered and store.count() == len(ROWS)
    for n, (_, _, fields, views) in enumerate(ROWS):
        hit = hits[str(n)]
        assert hit["pageviews"] == views, n
        own = {k: v for k, v in hit.items() if k not in SERVER_FIELDS and k != "n"}
        assert own == fields, n
        assert hit.get("_internal", True) is True  # a real boolean in both stores


def test_measurement_protocol_names_get_the_same_treatment(served):
    server, store = served
    query = encode({"v": 1, "tid": "shop.test", "dl": "https://shop.test/p?utm_source=mp&q=1",
                    "dr": "https://www.search.test/?q=shoes", "t": "pageview", "n": "mp"})
    assert http_get(f"{server.url}/collect?{query}")[0] == 200
    internal = encode({"v": 1, "tid": "shop.test", "dp": "/next", "dr": "https://shop.test/p", "n": "mp2"})
    assert http_get(f"{server.url}/collect?{internal}")[0] == 200
    events = [{"t": "event", "ec": "mail", "ea": "sent", "n": "ev1"}, {"t": "event", "ec": "video", "n": "ev2"},
              {"t": "event", "ea": "x", "event": "mine", "n": "ev3"}, {"t": "event", "n": "ev4"},
              {"t": "timing", "ea": "y", "n": "ev5"}]
    for fields in events:
        assert http_get(f"{server.url}/collect?{encode({'v': 1, 'tid': 'shop.test', 'dp': '/e', **fields})}")[0] == 200
    hits = {h["n"]: h for h in stored(store, 2 + len(events))}
    assert set(hits) == {"mp", "mp2", "ev1", "ev2", "ev3", "ev4", "ev5"}
    # t=event names a custom event: its action, else its category, unless `event` is given
    assert [(hits[f"ev{i}"].get("event"), hits[f"ev{i}"]["pageviews"]) for i in range(1, 6)] == [
        ("sent", 0), ("video", 0), ("mine", 0), (None, 0), (None, 0)]
    mp = hits["mp"]
    assert (mp["url"], mp["utm_source"], mp["referrer"], mp["_source"]) == (
        "/p?q=1", "mp", "https://www.search.test/?q=shoes", "search.test")
    assert hits["mp2"]["_internal"] is True and "referrer" not in hits["mp2"]


# What is no hit -------------------------------------------------------------------------------

def test_the_script_robots_and_favicon_are_no_hits(served):
    server, store = served
    status, headers, body = http_get(server.url + "/mongol.js")
    shipped = (Path(assets.__file__).parent / "static" / "mongol.js").read_bytes()
    assert status == 200 and body == shipped
    assert len(body) < 5000  # "a few KB at most"
    assert headers["vary"] == "Accept-Encoding" and "content-encoding" not in headers
    status, zipped, packed = http_get(server.url + "/mongol.js", {"Accept-Encoding": "br, gzip;q=0.5"})
    assert (status, zipped["content-encoding"], gzip.decompress(packed)) == (200, "gzip", shipped)
    assert len(packed) < 2048 and zipped["etag"] != headers["etag"]
    assert http_get(server.url + "/mongol.js", {"Accept-Encoding": "gzip;q=0"})[2] == shipped
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["cache-control"] == "public, max-age=3600"
    assert headers["x-content-type-options"] == "nosniff"
    assert int(headers["content-length"]) == len(body)
    etag = headers["etag"]
    status, again, body = http_get(server.url + "/mongol.js", {"If-None-Match": etag})
    assert (status, body, again["etag"]) == (304, b"", etag)
    status, head, body = http_get(server.url + "/mongol.js", method="HEAD")
    assert (status, body, head["content-length"]) == (200, b"", headers["content-length"])
    # with a Referer and parameters, as browsers and crawlers ask: still no hit
    page = {"Referer": "https://www.shop.test/a"}
    status, headers, body = http_get(server.url + "/robots.txt?site=s&url=/r", page)
    assert (status, body) == (200, b"User-agent: *\nDisallow: /\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    status, headers, body = http_get(server.url + "/favicon.ico", page)
    assert status == 404 and headers["content-type"].startswith("text/plain")
    assert http_get(server.url + "/favicon.ico", method="HEAD")[0] == 404
    assert http_get(server.url + "/mongol.js", method="POST")[0] == 405
    # the pixel after them is the only hit
    http_get(server.url + "/pixel.gif?site=s&url=/marker&n=last")
    assert [h["n"] for h in stored(store, 1)] == ["last"]
    assert store.count() == 1


def test_start_up_log_names_the_pixel_and_the_script(start_server, tmp_path):
    server = start_server("--db", f"sqlite://{tmp_path}/hits.db")
    base = server.url
    assert f"tracking pixel {base}/pixel.gif, script {base}/mongol.js" in server.log()


@pytest.mark.parametrize(("header", "gzip_ok"), [
    ("gzip", True), ("gzip, deflate, br, zstd", True), ("br;q=1.0, GZIP;q=0.8", True), ("gzip;q=0", False),
    ("gzip; q=0.000", False), ("gzip;q=0.001", True), ("x-gzip", False), ("", False), ("identity", False),
])
def test_accepts_gzip(header, gzip_ok):
    assert assets.accepts_gzip(header) is gzip_ok


def test_served_urls_for_wildcard_and_ipv6_addresses():
    import socket

    assert assets.served_urls("0.0.0.0", 8000).startswith(f"pixel http://{socket.gethostname()}:8000/pixel.gif")
    assert "script http://[::1]:8000/mongol.js" in assets.served_urls("::1", 8000)
