"""Server-side tracking over real HTTP, on both stores: Measurement Protocol names on the pixel,
`POST /collect` and `POST /batch`, and who may say what the visitor's address and User-Agent are."""

import urllib.parse
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from mongol.app import GIF
from tests.conftest import by_url, http_get, raw_request, stored

IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.5 Mobile/15E148 Safari/604.1")




@pytest.fixture
def serve(start_server, store_uri, store):
    def start(*args):
        return start_server("--db", store_uri, "--flush-interval", "0.05", *args)
    return start


def post(server, path, body, headers=b""):
    body = body.encode() if isinstance(body, str) else body
    return raw_request(server.port, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n"
                       b"Content-Type: application/x-www-form-urlencoded\r\n" + headers
                       + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def form(**fields):
    return urllib.parse.urlencode(fields)


def test_pixel_reads_measurement_protocol_names_when_v_is_1(serve, store):
    server = serve()
    query = form(v=1, tid="example.com", dl="https://www.other.org/page?x=1", dt="A page", dr="https://ref.example/",
                 cid="555", t="pageview", z="123456", ds="web", cd1="kept", aip="1")
    status, _, body = http_get(f"{server.url}/collect?{query}", {"User-Agent": "ua"})
    assert (status, body) == (200, GIF)
    # without v=1, the same names stay fields of their own, as any pixel parameter
    http_get(f"{server.url}/p.gif?site=s&url=/plain&t=x&z=1&dt=y&cid=7")
    hits = by_url(store, 2)
    mp = hits["/page?x=1"]
    assert mp["site"] == "example.com"  # tid names the site; dl gave the url
    assert (mp["title"], mp["referrer"], mp["t"], mp["ds"], mp["cd1"], mp["pageviews"]) == (
        "A page", "https://ref.example/", "pageview", "web", "kept", 1)
    assert not {"v", "tid", "dl", "dt", "dr", "cid", "z", "aip"} & set(mp)
    plain = hits["/plain"]
    assert (plain["t"], plain["z"], plain["dt"], plain["cid"], plain["pageviews"]) == ("x", "1", "y", "7", 1)


@pytest.mark.parametrize(("fields", "site", "url"), [
    ({"dh": "host.example", "dp": "/path"}, "host.example", "/path"),
    ({"dl": "http://www.a.example/x?y=1", "dp": "/wins"}, "a.example", "/wins"),
    ({"tid": "UA-1-1", "dh": "host.example", "dp": "/p"}, "UA-1-1", "/p"),
    ({"site": "mine", "url": "/mine", "tid": "t", "dl": "http://d.example/d"}, "mine", "/mine"),
])
def test_where_site_and_url_come_from(serve, store, fields, site, url):
    server = serve()
    assert post(server, "/collect", form(**fields))[0] == 204
    [hit] = stored(store, 1)
    assert (hit["site"], hit["url"]) == (site, url)


def test_collect_and_batch_answer_204_and_store_every_hit(serve, store):
    server = serve()
    status, headers, body = post(server, "/collect", form(v=1, tid="s", dp="/one", t="pageview"))
    assert (status, body) == (204, b"") and "content-length" not in headers
    lines = "\n".join(form(v=1, tid="s", dp=f"/b{i}", cid=f"c{i % 2}") for i in range(20))
    assert post(server, "/batch", lines + "\n")[0] == 204
    hits = by_url(store, 21)
    assert set(hits) == {"/one", *(f"/b{i}" for i in range(20))}
    assert len({hits[f"/b{i}"]["_visitor"] for i in range(20)}) == 2  # one per cid
    assert all(h["_ua"] == "" and h["_ip"] == "127.0.0.0" for h in hits.values())


def test_events_count_no_pageview_and_qt_moves_the_time_back(serve, store):
    server = serve()
    before = datetime.now(UTC)
    post(server, "/collect", form(tid="s", dp="/event", t="event", ec="mail", ea="sent"))
    post(server, "/collect", form(tid="s", dp="/late", qt=3_600_000))
    post(server, "/collect", form(tid="s", dp="/too-late", qt=5 * 3_600_000))
    hits = by_url(store, 3)
    event = hits["/event"]
    assert (event["pageviews"], event["event_category"], event["event_action"], event["event"]) == (0, "mail", "sent",
                                                                                                    "sent")
    assert abs(hits["/late"]["time"] - (before - timedelta(hours=1))) < timedelta(seconds=5)
    assert hits["/too-late"]["time"] >= before - timedelta(milliseconds=1)  # over 4 hours: ignored


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/collect", "", 400, b"missing site and url"),
    ("/collect", "tid=s&dp=/&pad=" + "x" * 8192, 413, b"body over 8192 bytes"),
    ("/collect", "tid=s&t=pageview", 400, b"missing site and url"),  # a page view names its page
    ("/batch", "\n".join(["tid=s&dp=/"] * 21), 413, b"more than 20 hits"),
    ("/batch", "\n".join(["tid=s&dp=/&pad=" + "x" * 4000] * 5), 413, b"body over 16384 bytes"),
])
def test_bad_server_requests_store_nothing(serve, store, path, body, status, message):
    server = serve()
    got, headers, text = post(server, path, body)
    assert got == status and message in text and headers["content-type"].startswith("text/plain")
    assert post(server, "/collect", form(tid="s", dp="/after"))[0] == 204
    assert [h["url"] for h in stored(store, 1)] == ["/after"]
    assert server.signal() == 0
    assert store.count() == 1


def test_other_methods_on_the_server_paths(serve):
    server = serve()
    status, headers, _ = http_get(server.url + "/collect?tid=s&dp=/", method="PUT")
    assert status == 405 and headers["allow"] == "GET, HEAD, POST"


def test_ua_and_uip_count_only_from_a_trusted_sender(serve, store):
    untrusted = serve()
    fields = form(tid="s", dp="/untrusted", ua=IPHONE, uip="198.51.100.7")
    post(untrusted, "/collect", fields, b"User-Agent: my-backend/1.0\r\n")
    [hit] = stored(store, 1)
    assert (hit["_ua"], hit["_ip"]) == ("my-backend/1.0", "127.0.0.0")  # the sender's own
    assert not {"ua", "uip"} & set(hit)
    assert untrusted.signal() == 0
    trusted = serve("--trusted-sender", "127.0.0.0/8")
    post(trusted, "/collect", form(tid="s", dp="/trusted", ua=IPHONE, uip="198.51.100.7"))
    post(trusted, "/collect", form(tid="s", dp="/trusted-again", ua=IPHONE, uip="198.51.100.8"))
    post(trusted, "/collect", form(tid="s", dp="/bad-uip", uip="not-an-address"))
    http_get(f"{trusted.url}/p.gif?{form(v=1, tid='s', dp='/pixel', uip='2001:db8::1')}")
    hits = by_url(store, 5)
    assert (hits["/trusted"]["_ua"], hits["/trusted"]["_ip"]) == (IPHONE, "198.51.100.0")
    assert hits["/trusted"]["_browser"] == "Mobile Safari"
    assert hits["/trusted"]["_visitor"] != hits["/trusted-again"]["_visitor"]  # hashed from the whole address
    assert hits["/bad-uip"]["_ip"] == "127.0.0.0"
    assert hits["/pixel"]["_ip"] == "2001:db8::"


def test_dnt_from_the_sending_server(serve, store):
    server = serve("--trusted-sender", "127.0.0.1")
    post(server, "/collect", form(tid="s", dp="/dnt", uip="198.51.100.7", ua="u", cid="1", dnt=1))
    post(server, "/collect", form(tid="s", dp="/header", uip="198.51.100.7", ua="u"), b"Sec-GPC: 1\r\n")
    hits = by_url(store, 2)
    assert not [h for h in hits.values() if "_visitor" in h]
    assert not [h for h in hits.values() if "dnt" in h]



def test_uid_says_who_the_visitor_is_before_cid_and_address(serve, store):
    server = serve("--trusted-sender", "127.0.0.0/8")
    firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0"
    for path, fields in [
        ("/a", {"uid": "customer-1", "cid": "c1", "ua": IPHONE, "uip": "198.51.100.7"}),
        ("/b", {"uid": "customer-1", "cid": "c2", "ua": firefox, "uip": "203.0.113.9"}),  # same uid, all else new
        ("/c", {"uid": "customer-2", "cid": "c1", "ua": IPHONE, "uip": "198.51.100.7"}),  # /a's but the uid
        ("/d", {"cid": "customer-1", "ua": IPHONE, "uip": "198.51.100.7"}),  # a cid is never taken for a uid
        ("/e", {"uid": "", "cid": "c2", "ua": IPHONE, "uip": "198.51.100.7"}),  # an empty uid: the cid decides
        ("/f", {"cid": "c2", "ua": firefox, "uip": "203.0.113.9"}),
    ]:
        assert post(server, "/collect", form(v=1, tid="s", dp=path, **fields))[0] == 204
    hits = by_url(store, 6)
    visitor = {path: hit["_visitor"] for path, hit in hits.items()}
    assert visitor["/a"] == visitor["/b"]
    assert len({visitor["/a"], visitor["/c"], visitor["/d"], visitor["/e"]}) == 4
    assert visitor["/e"] == visitor["/f"]
    assert (hits["/b"]["_ua"], hits["/b"]["_ip"]) == (firefox, "203.0.113.0")  # ua and uip still count
    for hit in hits.values():
        assert not {"uid", "cid", "ua", "uip", "v"} & set(hit)
        assert len(hit["_visitor"]) == 16 and int(hit["_visitor"], 16) >= 0  # a hash, never the id as sent
        assert not [value for value in hit.values() if "customer-" in str(value) or str(value) in ("c1", "c2")]


# Every hit type, bad lines in a batch, the debug endpoint, encodings (issue: every hit a sender sends)

@pytest.mark.parametrize(("fields", "expected"), [
    ({"t": "event", "ec": "video", "ea": "play", "el": "intro", "ev": "3"},
     {"pageviews": 0, "event": "play", "event_category": "video", "event_action": "play", "event_label": "intro",
      "event_value": "3"}),
    ({"t": "exception", "exd": "IOException", "exf": "1"},
     {"pageviews": 0, "exception_description": "IOException", "exception_fatal": "1"}),
    ({"t": "timing", "utc": "db", "utv": "query", "utt": "120", "utl": "users"},
     {"pageviews": 0, "timing_category": "db", "timing_variable": "query", "timing_time": "120",
      "timing_label": "users"}),
    ({"t": "transaction", "ti": "T1", "ta": "shop", "tr": "9.90", "ts": "1", "tt": "0.5", "cu": "EUR"},
     {"pageviews": 0, "transaction_id": "T1", "transaction_affiliation": "shop", "transaction_revenue": "9.90",
      "transaction_shipping": "1", "transaction_tax": "0.5", "currency": "EUR"}),
    ({"t": "item", "ti": "T1", "in": "Socks", "ip": "2.5", "iq": "2", "ic": "S1", "iv": "clothes"},
     {"pageviews": 0, "transaction_id": "T1", "item_name": "Socks", "item_price": "2.5", "item_quantity": "2",
      "item_code": "S1", "item_category": "clothes"}),
    ({"t": "social", "sn": "mastodon", "sa": "boost", "st": "/post"},
     {"pageviews": 0, "social_network": "mastodon", "social_action": "boost", "social_target": "/post"}),
    ({"t": "screenview", "cd": "Settings", "an": "App", "av": "1.2", "aid": "org.app"},
     {"pageviews": 1, "url": "Settings", "screen_name": "Settings", "app_name": "App", "app_version": "1.2",
      "app_id": "org.app"}),
])
def test_every_hit_type_is_stored(serve, store, fields, expected):
    server = serve()
    assert post(server, "/collect", form(v=1, tid="app.example", cid="1", n="1", **fields))[0] == 204
    [hit] = stored(store, 1)
    assert hit["site"] == "app.example" and hit["t"] == fields["t"]
    assert {k: hit.get(k) for k in expected} == expected
    assert not {"ec", "ea", "exd", "utc", "ti", "in", "sn", "cd", "an"} & set(hit)


def test_a_batch_stores_its_good_lines_and_reports_the_bad_ones(serve, store):
    server = serve("--workers", "1")  # each serving process logs a kind once a minute
    lines = ["tid=s&dp=/good1", "title=no-site", "tid=s&dp=/good2", "tid=s&dp=/&pad=" + "x" * 8200,
             "tid=s&t=event&ea=e"]
    status, headers, body = post(server, "/batch", "\n".join(lines))
    assert status == 200 and headers["content-type"] == "application/json"
    answer = orjson.loads(body)
    assert (answer["hits"], answer["stored"], answer["invalid"]) == (5, 3, 2)
    assert [e["hit"] for e in answer["errors"]] == [2, 4]
    assert sorted(h.get("url", "(event)") for h in stored(store, 3)) == ["(event)", "/good1", "/good2"]
    assert post(server, "/batch", "title=no-site\ntitle=again")[0] == 200  # nothing to re-send: not a 4xx
    assert server.signal() == 0
    assert store.count() == 3
    log = server.log()
    assert log.count("dropped a bad line of a /batch (no site") == 1, log  # once per kind, not per hit
    assert log.count("dropped a bad line of a /batch (query too long") == 1


def test_debug_collect_validates_and_stores_nothing(serve, store):
    server = serve()
    status, headers, body = http_get(server.url + "/debug/collect?" + form(v=1, tid="s", dp="/debug", t="pageview"))
    assert status == 200 and headers["content-type"] == "application/json"
    answer = orjson.loads(body)
    assert answer["hitParsingResult"][0]["valid"] is True and answer["hitParsingResult"][0]["parserMessage"] == []
    status, _, body = post(server, "/debug/collect", form(v=1, t="pageview"))
    result = orjson.loads(body)["hitParsingResult"][0]
    assert status == 200 and result["valid"] is False
    assert "missing site" in result["parserMessage"][0]["description"]
    assert post(server, "/collect", form(tid="s", dp="/after"))[0] == 204
    assert [h["url"] for h in stored(store, 1)] == ["/after"]
    assert server.signal() == 0
    assert store.count() == 1


@pytest.mark.parametrize("path", ["/j/collect", "/r/collect"])
def test_analytics_js_paths_take_a_post(serve, store, path):
    server = serve()
    assert post(server, path, form(v=1, tid="s", dp=path, cid="1"))[0] == 204
    assert [h["url"] for h in stored(store, 1)] == [path]


def test_gzip_bodies_are_read_and_a_zip_bomb_is_413(serve, store):
    import gzip

    server = serve()
    one = gzip.compress(form(tid="s", dp="/zipped").encode())
    assert post(server, "/collect", one, b"Content-Encoding: gzip\r\n")[0] == 204
    batch = gzip.compress("\n".join(form(tid="s", dp=f"/zb{i}") for i in range(3)).encode())
    assert post(server, "/batch", batch, b"Content-Encoding: gzip\r\n")[0] == 204
    bomb = gzip.compress(b"tid=s&dp=/&pad=" + b"x" * 5_000_000)  # 5 MB in about 5 KB
    status, _, body = post(server, "/collect", bomb, b"Content-Encoding: gzip\r\n")
    assert status == 413 and b"once decompressed" in body
    assert post(server, "/collect", b"\x1f\x8b broken", b"Content-Encoding: gzip\r\n")[0] == 400
    assert post(server, "/collect", form(tid="s", dp="/br"), b"Content-Encoding: br\r\n")[0] == 415
    assert sorted(h["url"] for h in stored(store, 4)) == ["/zb0", "/zb1", "/zb2", "/zipped"]


def test_a_hit_may_have_8192_bytes(serve, store):
    server = serve()
    base = form(tid="s", dp="/big", pad="")
    assert post(server, "/collect", base + "x" * (8192 - len(base)))[0] == 204
    assert post(server, "/collect", base + "x" * (8193 - len(base)))[0] == 413
    assert [h["url"] for h in stored(store, 1)] == ["/big"]


def test_a_sending_programs_user_agent_is_no_bot(serve, store):
    # python-requests, Go-http-client... are on the crawler list, rightly for a pixel; a POSTed hit always
    # comes from a program, so only the visitor's User-Agent (`ua`, from a trusted sender) says "bot"
    server = serve("--trusted-sender", "127.0.0.1")
    agent = b"User-Agent: python-requests/2.32.3\r\n"
    assert post(server, "/collect", form(tid="s", dp="/plain", cid="1"), agent)[0] == 204
    assert post(server, "/collect", form(tid="s", dp="/visitor-bot", cid="1", ua="Googlebot/2.1"), agent)[0] == 204
    assert post(server, "/collect", form(tid="s", dp="/visitor", cid="1", ua=IPHONE), agent)[0] == 204
    http_get(f"{server.url}/p.gif?site=s&url=/pixel", {"User-Agent": "python-requests/2.32.3"})
    hits = by_url(store, 4)
    assert (hits["/plain"].get("_bot"), hits["/plain"]["_sender_ua"]) == (None, True)
    assert hits["/plain"]["_ua"] == "python-requests/2.32.3"
    assert hits["/visitor-bot"]["_bot"] is True and "_sender_ua" not in hits["/visitor-bot"]
    assert hits["/visitor"].get("_bot") is None and hits["/visitor"]["_browser"] == "Mobile Safari"
    assert hits["/pixel"]["_bot"] is True  # a program loading the pixel is one
