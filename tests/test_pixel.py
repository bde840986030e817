"""mongol-serve over real HTTP, on both stores: the pixel, the hit it stores, and hostile input."""

import io
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from mongol.app import GIF
from tests.conftest import http_get, raw_request, stored


@pytest.fixture
def served(start_server, store_uri, store):
    """mongol-serve on a fresh store, with the store opened for reading back."""
    return start_server("--db", store_uri, "--flush-interval", "0.05"), store



def test_gif_is_a_transparent_1x1_gif89a(served):
    server, _ = served
    status, headers, body = http_get(server.url + "/pixel.gif?site=a&url=/")
    assert status == 200
    assert body == GIF and len(body) == 43 and body.startswith(b"GIF89a")
    image = Image.open(io.BytesIO(body))
    assert image.format == "GIF" and image.size == (1, 1)
    assert image.info["transparency"] == image.getpixel((0, 0))
    assert image.convert("RGBA").getpixel((0, 0))[3] == 0
    assert headers["content-type"] == "image/gif"
    assert headers["content-length"] == "43"
    assert headers["cache-control"] == "no-store"
    assert "pragma" not in headers  # no meaning in a response
    assert headers["expires"] == "Thu, 01 Jan 1970 00:00:00 GMT"  # for HTTP/1.0 caches: an HTTP date, past


@pytest.mark.parametrize("path", ["/", "/pixel.gif", "/a/b/c.png", "/healthz/x"])
def test_any_path_answers_the_pixel(served, path):
    server, store = served
    status, _, body = http_get(f"{server.url}{path}?site=s&url={path}")
    assert (status, body) == (200, GIF)
    assert stored(store, 1)[0]["url"] == path


def test_head_answers_like_get_and_records_nothing(served):
    server, store = served
    status, headers, body = http_get(server.url + "/p.gif?site=a&url=/head", method="HEAD")
    assert status == 200 and body == b""
    assert headers["content-type"] == "image/gif" and headers["content-length"] == "43"
    assert http_get(server.url + "/p.gif", method="HEAD")[0] == 400
    http_get(server.url + "/p.gif?site=a&url=/get")
    assert [h["url"] for h in stored(store, 1)] == ["/get"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_refused(served, method):
    server, _ = served
    status, headers, _ = http_get(server.url + "/p.gif?site=a&url=/", method=method)
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_browser_request_takes_site_and_url_from_the_referer(served):
    server, store = served
    before = datetime.now(UTC)
    http_get(server.url + "/pixel.gif?title=Home", {
        "Referer": "https://www.www.example.com/blog/post?id=3&x=y",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Test/1.0",
    })
    after = datetime.now(UTC)
    [hit] = stored(store, 1)
    assert len(hit["_id"]) == 24
    assert hit["site"] == "www.example.com"  # only the leading www. goes
    assert hit["url"] == "/blog/post?id=3&x=y"
    assert hit["title"] == "Home"
    assert hit["pageviews"] == 1
    assert hit["_ip"] == "127.0.0.0"  # anonymised by default (tests/test_visitors.py)
    assert hit["_ua"] == "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"
    assert hit["time"].tzinfo is not None and hit["time"].utcoffset() == timedelta(0)
    assert before - timedelta(milliseconds=1) <= hit["time"] <= after
    assert set(hit) == {"_id", "site", "url", "title", "pageviews", "_ip", "_ua", "time",
                        "_visitor", "_browser", "_os", "_device"}  # tests/test_visitors.py, test_enrich.py


def test_parameters_win_over_the_referer(served):
    server, store = served
    http_get(server.url + "/p.gif?site=mine.org&url=/from/params", {"Referer": "http://other.net/ref"})
    http_get(server.url + "/p.gif?site=only-site.org", {"Referer": "http://www.other.net/ref?q=1"})
    http_get(server.url + "/p.gif?url=/only-url", {"Referer": "http://other.net/ref"})
    hits = stored(store, 3)
    assert [(h["site"], h["url"]) for h in hits] == [
        ("mine.org", "/from/params"), ("only-site.org", "/ref?q=1"), ("other.net", "/only-url")]


def test_one_page_is_one_url_however_it_is_encoded(served):
    # From the Referer (as browsers send it), from the script (location.pathname, percent-encoded, sent
    # encoded once more) and from a server's url parameter (plain text, encoded once): one key.
    server, store = served
    http_get(server.url + "/p.gif?n=1", {"Referer": "http://a.org/posts/%C3%BCn?q=%C3%A4"})
    http_get(server.url + "/p.gif?site=a.org&url=%2Fposts%2F%25C3%25BCn%3Fq%3D%25C3%25A4&n=2")
    http_get(server.url + "/p.gif?site=a.org&url=/posts/%C3%BCn?q=%C3%A4&n=3")
    http_get(server.url + "/p.gif?site=a.org&url=/100%25-off&n=4")  # a literal %: not an escape
    hits = {h["n"]: h["url"] for h in stored(store, 4)}
    assert hits == {"1": "/posts/\u00fcn?q=\u00e4", "2": "/posts/\u00fcn?q=\u00e4", "3": "/posts/\u00fcn?q=\u00e4",
                    "4": "/100%-off"}


def test_time_has_full_precision(served):
    server, store = served
    for i in range(5):
        http_get(f"{server.url}/p.gif?site=a&url=/{i}")
    times = [h["time"] for h in stored(store, 5)]
    assert any(t.second or t.microsecond for t in times)  # not truncated to the minute
    assert times == sorted(times)
    assert len({t.microsecond // 1000 for t in times}) > 1


def test_repeated_parameters_become_lists(served):
    server, store = served
    http_get(server.url + "/p.gif?site=a&url=/&tag=x&tag=y&tag=z&one=1&empty=&flag")
    [hit] = stored(store, 1)
    assert hit["tag"] == ["x", "y", "z"]
    assert hit["one"] == "1" and hit["empty"] == "" and hit["flag"] == ""


def test_site_and_url_given_twice_keep_the_first(served):
    server, store = served
    http_get(server.url + "/p.gif?site=a.org&site=b.org&url=/1&url=/2")
    [hit] = stored(store, 1)
    assert (hit["site"], hit["url"]) == ("a.org", "/1")
    assert store.count(site="a.org") == 1 and store.count(site="b.org") == 0


@pytest.mark.parametrize("headers", [{}, {"Referer": "not a url"}, {"Referer": "/relative/path"},
                                     {"Referer": "http://[::1"}, {"Referer": "mailto:x@example.com"}])
def test_no_site_and_url_is_400_and_stores_nothing(served, headers):
    server, store = served
    status, response_headers, body = http_get(server.url + "/p.gif?title=x", headers)
    assert status == 400
    assert response_headers["content-type"].startswith("text/plain")
    assert b"site" in body and len(body) < 200
    # a valid hit after it is the only one stored
    http_get(server.url + "/p.gif?site=a&url=/ok")
    assert [h["url"] for h in stored(store, 1)] == ["/ok"]
    assert store.count() == 1


def test_healthz(served):
    server, _ = served
    status, _, body = http_get(server.url + "/healthz")
    assert status == 200 and body.startswith(b"ok")


# Hostile input ---------------------------------------------------------------------------------

def test_operator_and_dotted_names_are_escaped(served):
    server, store = served
    http_get(server.url + "/p.gif?site=a&url=/&$where=1&a.b.c=2&$gt.x=3&%24set=4&n%00ul=5&%00=6&x$=7")
    [hit] = stored(store, 1)
    assert hit["\uff04where"] == "1"
    assert hit["a\uff0eb\uff0ec"] == "2"
    assert hit["\uff04gt\uff0ex"] == "3"
    assert hit["\uff04set"] == "4"
    assert hit["nul"] == "5"
    assert hit["x$"] == "7"
    assert not [k for k in hit if k.startswith("$") or "." in k or "\x00" in k]


def test_clients_cannot_set_server_fields(served):
    server, store = served
    before = datetime.now(UTC)
    http_get(server.url + "/p.gif?site=a&url=/&time=2001-01-01&pageviews=1000&_id=aaaaaaaaaaaaaaaaaaaaaaaa"
             "&_ip=6.6.6.6&_ua=forged&_anything=1", {"User-Agent": "real-agent"})
    [hit] = stored(store, 1)
    assert hit["time"] >= before - timedelta(milliseconds=1)
    assert hit["pageviews"] == 1
    assert hit["_id"] != "a" * 24
    assert hit["_ip"] == "127.0.0.0" and hit["_ua"] == "real-agent"
    assert "_anything" not in hit


def test_invalid_utf8_and_bad_escapes(served):
    server, store = served
    # bytes outside ASCII are not allowed raw in a request target (RFC 9112 3.2): the HTTP server refuses them
    assert raw_request(server.port, b"GET /p.gif?site=a&url=/raw\xff\xfe HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n")[0] == 400
    status, _, _ = raw_request(server.port, b"GET /p.gif?site=a&url=/raw%ff%fe&t=%ff%fe%zz%4&%c3%28=v"
                                            b"&mix=%c3%a9%20%ff HTTP/1.1\r\n"
                                            b"Host: x\r\nUser-Agent: agent\xff\r\nConnection: close\r\n\r\n")
    assert status == 200
    [hit] = stored(store, 1)
    assert hit["url"] == "/raw\ufffd\ufffd"
    assert hit["t"] == "\ufffd\ufffd%zz%4"
    assert hit["\ufffd("] == "v"
    assert hit["mix"] == "\u00e9 \ufffd"
    assert hit["_ua"] == "agent\ufffd"


def test_referer_with_invalid_utf8(served):
    server, store = served
    status, _, _ = raw_request(server.port, b"GET /p.gif HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                            b"Referer: http://www.example.com/caf\xc3\xa9/\xff\r\n\r\n")
    assert status == 200
    [hit] = stored(store, 1)
    assert (hit["site"], hit["url"]) == ("example.com", "/caf\u00e9/\ufffd")


def test_thousands_of_parameters_are_refused(served):
    server, store = served
    many = "&".join(f"p{i}=1" for i in range(2000))
    status, _, body = http_get(f"{server.url}/p.gif?site=a&url=/&{many[:7000]}")
    assert status == 400 and b"parameters" in body
    fine = "&".join(f"p{i}=v" for i in range(250))
    assert http_get(f"{server.url}/p.gif?site=a&url=/&{fine}")[0] == 200
    [hit] = stored(store, 1)
    assert len([k for k in hit if k.startswith("p") and k != "pageviews"]) == 250


@pytest.mark.parametrize("size", [8001, 8150, 100_000, 3_000_000])
def test_huge_query_strings_are_414(served, size):
    server, store = served
    query = "site=a&url=/&v=" + "x" * size
    status, _, _ = raw_request(server.port, f"GET /p.gif?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                               .encode())
    assert status == 414
    assert http_get(server.url + "/healthz")[0] == 200
    http_get(server.url + "/p.gif?site=a&url=/after")
    assert [h["url"] for h in stored(store, 1)] == ["/after"]


def test_largest_accepted_value_is_stored_whole(served):
    server, store = served
    value = "\u00e9" * 2600  # 7800 bytes once percent-encoded as UTF-8... below the 8000-byte limit
    query = "site=a&url=/&v=" + "%C3%A9" * 1300
    assert len(query) < 8000
    assert http_get(f"{server.url}/p.gif?{query}")[0] == 200
    [hit] = stored(store, 1)
    assert hit["v"] == value[:1300]


def test_server_survives_garbage(served):
    server, store = served
    garbage = [b"\x00\x01\x02\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"BREW /pot HTCPCP/1.0\r\n\r\n"]
    for request in garbage:
        try:
            status, _, _ = raw_request(server.port, request)
            assert status < 500
        except (ConnectionError, OSError, ValueError):
            pass  # the server may just close the connection on garbage
    assert http_get(server.url + "/healthz")[0] == 200
    http_get(server.url + "/p.gif?site=a&url=/still-here")
    assert [h["url"] for h in stored(store, 1)] == ["/still-here"]


# Client IP behind proxies ------------------------------------------------------------------------

def test_x_forwarded_for_is_ignored_without_trusted_proxies(served):
    server, store = served
    http_get(server.url + "/p.gif?site=a&url=/", {"X-Forwarded-For": "203.0.113.9"})
    assert stored(store, 1)[0]["_ip"] == "127.0.0.0"


def test_x_forwarded_for_from_a_trusted_proxy(start_server, store_uri, store):
    server = start_server("--db", store_uri, "--flush-interval", "0.05", "--trusted-proxy", "127.0.0.0/8",
                          "--trusted-proxy", "10.0.0.1")
    http_get(server.url + "/p.gif?site=a&url=/1", {"X-Forwarded-For": "203.0.113.9, 10.0.0.1"})
    http_get(server.url + "/p.gif?site=a&url=/2", {"X-Forwarded-For": "198.51.100.7, 203.0.113.9, 10.0.0.1"})
    http_get(server.url + "/p.gif?site=a&url=/3", {"X-Forwarded-For": "garbage"})
    http_get(server.url + "/p.gif?site=a&url=/4")
    assert [h["_ip"] for h in stored(store, 4)] == ["203.0.113.0", "203.0.113.0", "127.0.0.0", "127.0.0.0"]


# Stopping --------------------------------------------------------------------------------------

@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_flushes_the_queue_and_exits_0(start_server, store_uri, store, signame):
    import signal

    server = start_server("--db", store_uri, "--flush-interval", "3600", "--batch-size", "100000")
    for i in range(200):
        assert http_get(f"{server.url}/p.gif?site=a&url=/{i}")[0] == 200
    assert store.count() == 0  # nothing is written before the interval or a full batch...
    assert server.signal(getattr(signal, signame)) == 0  # ...until the signal
    assert sorted(h["url"] for h in store.hits()) == sorted(f"/{i}" for i in range(200))
    assert "stopped, 200 hits stored" in server.log()


def test_many_hits_all_arrive(served):
    server, store = served
    n = 300
    for i in range(n):
        http_get(f"{server.url}/p.gif?site=s{i % 3}&url=/{i}")
    hits = stored(store, n)
    assert len(hits) == n and len({h["_id"] for h in hits}) == n
    assert store.count(site="s1") == 100
