"""Server-side tracking over real HTTP, on both stores: Measurement Protocol names on the pixel,
`POST /collect` and `POST /batch`, and who may say what the visitor's address and User-Agent are."""

import urllib.parse
from datetime import UTC, datetime, timedelta

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
                 cid="555", t="pageview", z="123456", ds="web", ec="kept")
    status, _, body = http_get(f"{server.url}/collect?{query}", {"User-Agent": "ua"})
    assert (status, body) == (200, GIF)
    # without v=1, the same names stay fields of their own, as any pixel parameter
    http_get(f"{server.url}/p.gif?site=s&url=/plain&t=x&z=1&dt=y&cid=7")
    hits = by_url(store, 2)
    mp = hits["/page?x=1"]
    assert mp["site"] == "example.com"  # tid names the site; dl gave the url
    assert (mp["title"], mp["referrer"], mp["t"], mp["ds"], mp["ec"], mp["pageviews"]) == (
        "A page", "https://ref.example/", "pageview", "web", "kept", 1)
    assert not {"v", "tid", "dl", "dt", "dr", "cid", "z"} & set(mp)
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
    assert (hits["/event"]["pageviews"], hits["/event"]["ec"], hits["/event"]["ea"]) == (0, "mail", "sent")
    assert abs(hits["/late"]["time"] - (before - timedelta(hours=1))) < timedelta(seconds=5)
    assert hits["/too-late"]["time"] >= before - timedelta(milliseconds=1)  # over 4 hours: ignored


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/collect", "", 400, b"missing site and url"),
    ("/collect", "tid=s&dp=/&pad=" + "x" * 8000, 413, b"body over 8000 bytes"),
    ("/batch", "\n".join(["tid=s&dp=/"] * 21), 413, b"more than 20 hits"),
    ("/batch", "\n".join(["tid=s&dp=/&pad=" + "x" * 4000] * 5), 413, b"body over 16384 bytes"),
    ("/batch", "tid=s&dp=/fine\ntitle=no-site\ntid=s&dp=/fine2", 400, b"hit 2 of the batch: missing site"),
    ("/batch", "tid=s&dp=/fine\ntid=s&dp=/&pad=" + "x" * 8000, 413, b"hit 2 of the batch is over 8000"),
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
