"""mongol-ingest behind a real nginx: requests nginx answers with empty_gif become the hits mongol-serve
would have stored, on both stores; plus the datagram parsing on its own."""

import io
import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import orjson
import pytest
from PIL import Image

from mongol.app import GIF, NO_CACHE
from mongol.cli.ingest import ingest_spool, parse_listen
from mongol.hit import RequestError
from mongol.ingest import BadLine, Ingest, environ_from_entry, is_pixel_hit, open_udp, parse_datagram, run, time_us
from mongol.location import default_spool
from mongol.stores import open_store
from mongol.tracking import Salts, Tracker, Tracking
from mongol.writer import STATUS
from tests.conftest import BIN, START_TIMEOUT, raw_request, stored, wait_until
from tests.test_enrich import AGENTS

ROOT = Path(__file__).parent.parent
SNIPPET = (ROOT / "scripts" / "nginx-mongol.conf").read_text()

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{snippet}
}}
"""


def snippet_for_test(port: int, syslog_port: int, reports: Path) -> str:
    """scripts/nginx-mongol.conf as shipped, but on a loopback port without TLS, logging to `syslog_port`."""
    text = SNIPPET
    for old, new in [("listen 443 ssl;", f"listen 127.0.0.1:{port};"), ("listen [::]:443 ssl;", ""),
                     ("ssl_certificate     /etc/ssl/certs/stats.example.com.pem;", ""),
                     ("ssl_certificate_key /etc/ssl/private/stats.example.com.key;", ""),
                     ("syslog:server=127.0.0.1:5514,", f"syslog:server=127.0.0.1:{syslog_port},"),
                     ("alias /var/www/mongol/;", f"alias {reports}/;")]:
        assert text.count(old) == 1, f"scripts/nginx-mongol.conf changed: no {old!r} in it"
        text = text.replace(old, new)
    return text


def line(entry: str, header: bytes = b"<190>Nov 22 10:00:00 mongol: ") -> bytes:
    return header + entry.encode("latin-1")


ENTRY = ('{"time":"1795860000.123","addr":"203.0.113.7","method":"GET","uri":"/p.gif?title=Home",'
         '"status":"200","referer":"https://www.example.com/blog/post?id=3","ua":"Mozilla/5.0","xff":""}')
# The same request in today's log_format, which also carries the headers mongol.tracking reads.
PRIVACY_KEYS = '"dnt":"","gpc":"","sec_purpose":"","purpose":"","x_purpose":"","x_moz":""'
ENTRY_NOW = ENTRY[:-1] + "," + PRIVACY_KEYS + "}"


# Datagrams, without nginx --------------------------------------------------------------------------

def test_a_line_becomes_the_environ_the_pixel_reads():
    entry = parse_datagram(line(ENTRY))
    assert time_us(entry) == 1795860000_123000
    assert is_pixel_hit(entry)
    assert environ_from_entry(entry) == {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/p.gif", "QUERY_STRING": "title=Home", "REMOTE_ADDR": "203.0.113.7",
        "HTTP_REFERER": "https://www.example.com/blog/post?id=3", "HTTP_USER_AGENT": "Mozilla/5.0"}


def test_the_privacy_and_prefetch_headers_reach_the_environ_and_old_lines_still_parse():
    old = parse_datagram(line(ENTRY))  # a line of the log_format before these keys: no such header
    assert not {"HTTP_DNT", "HTTP_SEC_GPC", "HTTP_SEC_PURPOSE", "HTTP_PURPOSE"} & set(environ_from_entry(old))
    empty = parse_datagram(line(ENTRY_NOW))  # nginx logs a header the request lacks as ""
    assert environ_from_entry(empty) == environ_from_entry(old)
    full = ENTRY_NOW
    for key, value in [("dnt", "1"), ("gpc", "1"), ("sec_purpose", "prefetch;prerender"), ("purpose", "prefetch"),
                       ("x_purpose", "preview"), ("x_moz", "prefetch")]:
        full = full.replace(f'"{key}":""', f'"{key}":"{value}"')
    assert environ_from_entry(parse_datagram(line(full))) == {
        **environ_from_entry(old), "HTTP_DNT": "1", "HTTP_SEC_GPC": "1", "HTTP_SEC_PURPOSE": "prefetch;prerender",
        "HTTP_PURPOSE": "prefetch", "HTTP_X_PURPOSE": "preview", "HTTP_X_MOZ": "prefetch"}


def test_opt_outs_and_prefetches_as_mongol_serve_treats_them(tmp_path):
    now = ENTRY_NOW.replace("1795860000.123", f"{time.time():.3f}")  # a day whose salt exists
    hits = []
    ingest = Ingest(lambda hit: hits.append(hit) or True, tracker=Tracker(Tracking(), Salts(tmp_path)))
    ingest(line(now))
    ingest(line(now.replace('"dnt":""', '"dnt":"1"')))
    ingest(line(now.replace('"gpc":""', '"gpc":"1"')))
    ingest(line(now.replace('"dnt":""', '"dnt":"0"')))
    ingest(line(ENTRY.replace("1795860000.123", f"{time.time():.3f}")))  # the old format: no opt-out known
    for key, value in [("sec_purpose", "prefetch"), ("purpose", "prefetch"), ("x_purpose", "preview"),
                       ("x_moz", "prefetch"), ("sec_purpose", "prefetch;prerender")]:
        ingest(line(now.replace(f'"{key}":""', f'"{key}":"{value}"')))
    ingest(line(now.replace('"sec_purpose":""', '"sec_purpose":"prefetch"').replace(  # refused before all else
        '"https://www.example.com/blog/post?id=3"', '""')))
    assert (ingest.received, ingest.spooled, ingest.prefetched, ingest.rejected, ingest.ignored) == (11, 5, 5, 1, 0)
    assert [len(hit.get("_visitor", "")) for hit in hits] == [16, 0, 0, 16, 16]
    assert hits[0]["_visitor"] == hits[3]["_visitor"] == hits[4]["_visitor"]
    assert {hit["_ip"] for hit in hits} == {"203.0.113.0"}
    assert ", 5 prefetches (no page view), " in ingest.summary()
    skipping = Ingest(lambda hit: True, tracker=Tracker(Tracking(dnt="skip"), Salts(tmp_path)))
    skipping(line(now.replace('"gpc":""', '"gpc":"1"')))
    assert (skipping.spooled, skipping.ignored) == (0, 1)


def test_run_calls_idle_every_second_even_while_busy():
    sock = open_udp("127.0.0.1", 0, poll=30)  # no timeout in this test: only the busy path calls idle
    handled, idled = [], []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(3):
                sender.sendto(b"%d" % i, sock.getsockname())
        run(sock, handled.append, lambda: len(handled) < 3, idle=lambda: idled.append(len(handled)), every=0)
    finally:
        sock.close()
    assert handled == [b"0", b"1", b"2"] and idled == [1, 2, 3]


@pytest.mark.parametrize("header", [b"<190>Nov 22 10:00:00 mongol: ", b"<190>Nov  2 10:00:00 mongol: ",
                                    b"<134>Jan 01 00:00:00 web-1.example.com mongol_2: "])
def test_syslog_headers_as_nginx_writes_them(header):
    assert parse_datagram(line(ENTRY, header))["addr"] == "203.0.113.7"


@pytest.mark.parametrize("data", [
    b"", b"garbage", b"<190>" + ENTRY.encode(), b"Nov 22 10:00:00 mongol: " + ENTRY.encode(),
    line("not json"), line('["a list"]'), line(ENTRY[:-10]),
    line(ENTRY.replace('"status":"200",', "")), line(ENTRY.replace('"200"', "200")),
])
def test_what_is_not_an_nginx_line(data):
    with pytest.raises(BadLine):
        parse_datagram(data)


@pytest.mark.parametrize(("msec", "us"), [("1795860000.123", 1795860000_123000), ("1795860000", 1795860000_000000),
                                          ("1795860000.5", 1795860000_500000), ("0.000", 0)])
def test_nginx_msec_is_the_hit_time(msec, us):
    assert time_us({"time": msec}) == us


@pytest.mark.parametrize("msec", ["", "-1.000", "1e9", "abc", "1.2.3", "1.1234567", " 1.000"])
def test_bad_times(msec):
    with pytest.raises(BadLine):
        time_us({"time": msec})


def test_escaped_and_raw_bytes_reach_the_hit_as_through_the_pixel():
    # escape=json writes " and \ escaped, control bytes as \u00XX, bytes from 0x80 as they are
    entry = (r'{"time":"1.0","addr":"1.2.3.4","method":"GET",'
             r'"uri":"/p?site=a&url=/caf\xc3\xa9\xff&e=%C3%A9&q=\"\\\u0001",'
             r'"status":"200","referer":"","ua":"agent\xff \u001b","xff":""}')
    entry = entry.replace(r"\xc3", "\xc3").replace(r"\xa9", "\xa9").replace(r"\xff", "\xff")
    hits = []
    Ingest(lambda hit: hits.append(hit) or True)(line(entry))
    [hit] = hits
    assert hit["url"] == "/caf\u00e9\ufffd"
    assert hit["e"] == "\u00e9"
    assert hit["q"] == '"\\\x01'
    assert hit["_ua"] == "agent\ufffd \x1b"
    assert hit["time"] == 1_000_000


def test_counts_what_it_drops():
    hits = []
    ingest = Ingest(lambda hit: hits.append(hit) or True)
    ingest(line(ENTRY))
    ingest(line(ENTRY.replace('"GET"', '"HEAD"')))
    ingest(line(ENTRY.replace('"GET"', '"POST"').replace('"200"', '"405"')))
    ingest(line(ENTRY.replace('"200"', '"404"')))
    ingest(line(ENTRY.replace('"https://www.example.com/blog/post?id=3"', '""')))  # 400: no site and url
    ingest(line(ENTRY.replace("title=Home", "x=" + "y" * 8000)))  # 414
    ingest(line(ENTRY.replace("title=Home", "&".join(["p=1"] * 300))))  # 400: too many parameters
    ingest(line(ENTRY.replace("Home", "\\u1234")))  # nginx never escapes above \u001f: forged
    ingest(b"garbage")
    assert (ingest.received, ingest.spooled, ingest.ignored, ingest.rejected, ingest.malformed) == (9, 1, 3, 3, 2)
    assert ingest.summary().startswith("9 datagrams received, 1 hits spooled, 3 lines mongol-serve would have")
    refusing = Ingest(lambda hit: False)
    refusing(line(ENTRY))
    assert (refusing.spooled, refusing.refused) == (0, 1)


def test_a_refusal_is_logged_at_most_once_a_minute(caplog):
    ingest = Ingest(lambda hit: True)
    bad = line(ENTRY.replace('"https://www.example.com/blog/post?id=3"', '""'))
    for _ in range(5):
        ingest(bad)
    assert [r.getMessage() for r in caplog.records] == [
        "dropped a line that mongol-serve would have refused: 400 Bad Request, missing site and url: pass both "
        "as parameters or send a Referer: '/p.gif?title=Home' from 203.0.113.7"]
    assert ingest.rejected == 5
    with pytest.raises(RequestError):  # the same request through the pixel's own code
        from mongol.hit import hit_from_environ

        hit_from_environ(environ_from_entry(parse_datagram(bad)))


@pytest.mark.parametrize(("text", "address"), [("5514", ("127.0.0.1", 5514)), (":5514", ("127.0.0.1", 5514)),
                                               ("0.0.0.0:514", ("0.0.0.0", 514)), ("[::1]:0", ("::1", 0))])
def test_listen_address(text, address):
    assert parse_listen(text) == address


def test_own_spool_unless_mongol_serve_drains_it(tmp_path):
    uri = f"sqlite://{tmp_path}/hits.db"
    assert ingest_spool(uri, None, own_writer=True) == tmp_path / "hits.spool-ingest"
    assert ingest_spool(uri, None, own_writer=False) == default_spool(uri) == tmp_path / "hits.spool"
    assert ingest_spool(uri, tmp_path / "s", own_writer=True) == tmp_path / "s"


# The real programs ---------------------------------------------------------------------------------


def nginx_ready(proc: subprocess.Popen, port: int) -> object:
    """True once nginx answers (the reports folder is empty: 404), "exited" if it died (its port was taken)."""
    if proc.poll() is not None:
        return "exited"
    try:
        return raw_request(port, b"GET /stats/none.json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")[0] == 404
    except OSError:
        return False


@pytest.fixture
def start_nginx(tmp_path):
    """Start nginx (Debian's nginx-light) on a free port with scripts/nginx-mongol.conf's server, logging the
    pixel to mongol-ingest on `syslog_port`."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/local/sbin:/usr/sbin:/sbin")
    if nginx is None:
        pytest.fail("nginx is not installed: apt-get install nginx-light")
    procs: list[subprocess.Popen] = []

    def start(syslog_port: int) -> int:
        prefix = tmp_path / "nginx"
        (prefix / "reports").mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # a free port may be taken between finding and binding it: try another
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            conf = prefix / "nginx.conf"
            conf.write_text(NGINX_CONF.format(prefix=prefix,
                                              snippet=snippet_for_test(port, syslog_port, prefix / "reports")))
            with open(prefix / "stderr.log", "ab") as log:
                proc = subprocess.Popen([nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            procs.append(proc)
            if wait_until(partial(nginx_ready, proc, port), START_TIMEOUT, "nginx to answer") is True:
                return port
        pytest.fail("nginx did not start:\n" + (prefix / "error.log").read_text(errors="replace"))

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def request(port: int, target: bytes, headers: bytes = b"", method: bytes = b"GET") -> int:
    return raw_request(port, method + b" " + target + b" HTTP/1.1\r\nHost: stats.example.com\r\nConnection: close\r\n"
                       + headers + b"\r\n")[0]


# Each request goes to nginx (in front of mongol-ingest) and to mongol-serve: (n, method, target, headers,
# mongol-serve's status). Every hit carries its `n`, to pair the two stores' hits.
REQUESTS = [
    (1, b"GET", b"/pixel.gif?title=Home&n=1",
     b"Referer: https://www.www.example.com/blog/post?id=3&x=y\r\nUser-Agent: Mozilla/5.0 (X11) Test/1.0\r\n", 200),
    (2, b"GET", b"/pixel.gif?site=mine.org&url=/from/params&n=2", b"Referer: http://other.net/ref\r\n", 200),
    (3, b"GET", b"/pixel.gif?site=only-site.org&n=3", b"Referer: http://www.other.net/ref?q=1\r\n", 200),
    (4, b"GET", b"/pixel.gif?site=a&url=/&n=4&$where=1&a.b.c=2&$gt.x=3&%24set=4&n%00ul=5&%00=6&x$=7", b"", 200),
    (5, b"GET", b"/pixel.gif?site=a&url=/&n=5&time=2001-01-01&pageviews=1000&_id=aaaaaaaaaaaaaaaaaaaaaaaa"
                b"&_ip=6.6.6.6&_ua=forged&_anything=1", b"User-Agent: real-agent\r\n", 200),
    (6, b"GET", b"/pixel.gif?site=a&site=b&url=/1&url=/2&n=6&tag=x&tag=y&empty=&flag", b"", 200),
    # (invalid UTF-8 percent-encoded: mongol-serve's HTTP server refuses raw bytes outside ASCII in a target)
    (7, b"GET", b"/pixel.gif?site=a&url=/raw%ff%fe&n=7&t=%ff%fe%zz%4&%c3%28=v", b"User-Agent: agent\xff\r\n", 200),
    (8, b"GET", b"/pixel.gif?n=8", b"Referer: http://www.example.com/caf\xc3\xa9/\xff\r\n", 200),
    (9, b"GET", b"/pixel.gif?site=a&url=/xff&n=9", b"X-Forwarded-For: 6.6.6.6\r\n", 200),
    (10, b"GET", b"/pixel.gif?title=x&n=10", b"", 400),
    (11, b"GET", b"/pixel.gif?title=x&n=11", b"Referer: not a url\r\n", 400),
    (12, b"GET", b"/pixel.gif?site=a&url=/&n=12&" + b"&".join(b"p%d=1" % i for i in range(300)), b"", 400),
    (13, b"GET", b"/pixel.gif?site=a&url=/&n=13&pad=" + b"x" * 8000, b"", 414),
    (14, b"HEAD", b"/pixel.gif?site=a&url=/head&n=14", b"", 200),
    (15, b"POST", b"/pixel.gif?site=a&url=/post&n=15", b"Content-Length: 0\r\n", 405),
    (17, b"GET", b"/pixel.gif?site=a&url=/dnt&n=17", b"DNT: 1\r\nUser-Agent: agent\r\n", 200),
    (18, b"GET", b"/pixel.gif?site=a&url=/gpc&n=18", b"Sec-GPC: 1\r\nUser-Agent: agent\r\n", 200),
    (19, b"GET", b"/pixel.gif?site=a&url=/prefetch&n=19", b"Sec-Purpose: prefetch;prerender\r\n", 200),
    (20, b"GET", b"/pixel.gif?site=a&url=/purpose&n=20", b"Purpose: prefetch\r\n", 200),
    (21, b"GET", b"/pixel.gif?site=a&url=/not-opted-out&n=21", b"DNT: 0\r\nUser-Agent: agent\r\n", 200),
    (16, b"GET", b"/pixel.gif?site=a&url=/last&n=16", b"", 200),
]
STORED = {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 18, 21}
OPTED_OUT = {17, 18}  # no visitor id


def by_n(store) -> dict[str, dict]:
    return {h["n"]: h for h in store.hits()}


def test_requests_to_nginx_become_the_hits_mongol_serve_stores(store_uri, store, start_ingest, start_nginx,
                                                               start_server, tmp_path):
    ingester = start_ingest("--db", store_uri)
    nginx = start_nginx(ingester.port)
    serve_uri = f"sqlite://{tmp_path}/serve.db"
    server = start_server("--db", serve_uri, "--flush-interval", "0.05")
    for n, method, target, headers, status in REQUESTS:
        assert request(nginx, target, headers, method) == (405 if method == b"POST" else 200), n
        assert request(server.port, target, headers, method) == status, n
    serve_store = open_store(serve_uri)
    try:
        wait_until(lambda: "16" in by_n(store), 10, "the last hit through nginx")
        wait_until(lambda: "16" in by_n(serve_store), 10, "the last hit through mongol-serve")
        ingested, served = by_n(store), by_n(serve_store)
    finally:
        serve_store.close()
    assert set(ingested) == set(served) == {str(n) for n in STORED}
    for n in ingested:
        mine, theirs = dict(ingested[n]), dict(served[n])
        assert len(mine.pop("_id")) == len(theirs.pop("_id")) == 24
        assert abs(mine.pop("time") - theirs.pop("time")) < timedelta(seconds=5)
        visitor = 0 if int(n) in OPTED_OUT else 16  # ids differ: salts of two spool folders
        assert len(mine.pop("_visitor", "")) == len(theirs.pop("_visitor", "")) == visitor, n
        assert mine == theirs, n
    assert ingested["1"]["site"] == "www.example.com" and ingested["1"]["url"] == "/blog/post?id=3&x=y"
    assert ingested["1"]["_ua"] == "Mozilla/5.0 (X11) Test/1.0" and ingested["1"]["_ip"] == "127.0.0.0"
    assert ingested["4"]["\uff04where"] == "1" and ingested["4"]["a\uff0eb\uff0ec"] == "2"
    assert ingested["5"]["pageviews"] == 1 and "_anything" not in ingested["5"]
    assert ingested["7"]["url"] == "/raw\ufffd\ufffd" and ingested["7"]["_ua"] == "agent\ufffd"
    assert ingested["9"]["_ip"] == "127.0.0.0"
    log = ingester.log()
    assert "dropped a line that mongol-serve would have refused: 400 Bad Request, missing site and url" in log
    assert log.count("dropped a line") == 1  # at most once a minute
    assert ingester.signal(timeout=60) == 0
    assert "21 datagrams received, 13 hits spooled, 4 lines mongol-serve would have refused, 2 not pixel hits " \
           "(HEAD, other methods, errors), 2 prefetches (no page view), 0 malformed" in ingester.log()


def test_nginx_answers_the_pixel_as_mongol_serve_does(start_ingest, start_nginx):
    nginx = start_nginx(start_ingest("--no-writer").port)
    # a browser's conditional request still gets the GIF, so that every view reaches the log
    status, headers, body = raw_request(nginx, b"GET /pixel.gif?site=a&url=/ HTTP/1.1\r\nHost: t\r\n"
                                               b"If-Modified-Since: Thu, 01 Jan 2099 00:00:00 GMT\r\n"
                                               b"Connection: close\r\n\r\n")
    assert status == 200 and len(body) == len(GIF) == 43  # not the same bytes: both a transparent 1x1 GIF89a
    image = Image.open(io.BytesIO(body))
    assert image.format == "GIF" and image.size == (1, 1) and image.convert("RGBA").getpixel((0, 0))[3] == 0
    assert headers["content-type"] == "image/gif"
    for name, value in NO_CACHE:
        assert headers[name.lower()] == value


def test_hit_time_is_when_nginx_answered(store_uri, store, start_ingest, start_nginx):
    ingester = start_ingest("--db", store_uri)
    nginx = start_nginx(ingester.port)
    times = []
    for i in range(5):
        before = datetime.now(UTC)
        assert request(nginx, b"/pixel.gif?site=t&url=/%d" % i, b"Referer: http://t/\r\n") == 200
        times.append((before, datetime.now(UTC)))
        time.sleep(0.02)  # distinct milliseconds
    wait_until(lambda: store.count() == 5, 10, "5 hits")
    hits = sorted(store.hits(), key=lambda h: h["url"])
    for hit, (before, after) in zip(hits, times, strict=True):
        assert hit["time"].utcoffset() == timedelta(0)
        assert before - timedelta(milliseconds=1) <= hit["time"] <= after  # nginx's $msec has milliseconds
        assert int(hit["_id"][:8], 16) == int(hit["time"].timestamp())  # the id's seconds are the hit's
    assert [h["time"] for h in hits] == sorted(h["time"] for h in hits)


def spooled_lines(folder: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in folder.glob("*.jsonl"))


def send(port: int, count: int, site: str = "s") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(count):
            sock.sendto(line(ENTRY.replace("title=Home", f"site={site}&url=/{i}")), ("127.0.0.1", port))


def test_sigterm_stores_what_is_spooled(store_uri, store, start_ingest, tmp_path):
    # the writer looks at the spool once, at start, then sleeps an hour: only the stop can store the hits
    ingester = start_ingest("--db", store_uri, "--spool", str(tmp_path / "spool"), "--flush-interval", "3600")
    # The writer answers "ready" once the store is open, and looks at the spool a moment later:
    # datagrams sent before that look would be stored by it. Its status file says it has looked.
    wait_until(lambda: (tmp_path / "spool" / STATUS).exists(), 10, "the writer's first look at the spool")
    send(ingester.port, 200)
    wait_until(lambda: spooled_lines(tmp_path / "spool") == 200, 10, "200 spooled hits")
    assert store.count() == 0
    assert ingester.signal(timeout=60) == 0
    assert store.count(site="s") == 200
    assert spooled_lines(tmp_path / "spool") == 0
    assert "200 datagrams received, 200 hits spooled" in ingester.log()


def test_no_writer_leaves_the_hits_to_mongol_serve(start_ingest, tmp_path):
    uri = f"sqlite://{tmp_path}/hits.db"
    ingester = start_ingest("--db", uri, "--no-writer")
    send(ingester.port, 20)
    wait_until(lambda: spooled_lines(default_spool(uri)) == 20, 10, "20 hits in mongol-serve's spool")
    assert ingester.signal(timeout=60) == 0
    assert "storing hits in" not in ingester.log()
    store = open_store(uri)
    try:
        assert store.count() == 0
    finally:
        store.close()


def test_bad_usage_and_busy_port(start_ingest):
    done = subprocess.run([str(BIN / "mongol-ingest"), "not:an:address"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.startswith("mongol-ingest: error: bad address")
    ingester = start_ingest("--no-writer")
    done = subprocess.run([str(BIN / "mongol-ingest"), f"127.0.0.1:{ingester.port}", "--no-writer"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip() == f"mongol-ingest: error: cannot listen on udp 127.0.0.1:{ingester.port}: " \
                                  "Address already in use"


def test_unreachable_store_is_one_warning_and_it_keeps_receiving(start_ingest):
    # as mongol-serve: the hits wait in the spool until the store answers
    ingester = start_ingest("--db", "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=300")
    [warning] = [line for line in ingester.log().splitlines() if "WARNING" in line]
    assert "cannot reach MongoDB 127.0.0.1:1" in warning and "serving anyway" in warning
    assert "Traceback" not in ingester.log()


# mongol-serve's privacy and enrichment options, on mongol-ingest ------------------------------------

def datagram(url: str, addr: str = "203.0.113.200", ua: str = "", **headers: str) -> bytes:
    """A line of today's log_format: a pixel request for site `a` now (a day whose salt exists)."""
    entry = {"time": f"{time.time():.3f}", "addr": addr, "method": "GET", "uri": f"/p.gif?site=a&url={url}",
             "status": "200", "referer": "", "ua": ua, "xff": "", **dict.fromkeys(
                 ("dnt", "gpc", "sec_purpose", "purpose", "x_purpose", "x_moz"), ""), **headers}
    return line(orjson.dumps(entry).decode())


def send_datagrams(port: int, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data in datagrams:
            sock.sendto(data, ("127.0.0.1", port))


def by_url_after_last(store, urls: list[str]) -> dict[str, dict]:
    """The stored hits by url, once the hit for `/last` (sent after `urls`) is stored."""
    wait_until(lambda: store.count(match={"url": "/last"}) == 1, 10, "the hit sent last")
    hits = {h["url"]: h for h in store.hits()}
    assert set(hits) <= {*urls, "/last"}
    hits.pop("/last")
    return hits


@pytest.mark.parametrize(("args", "expected"), [
    ((), {"/plain": ("127.0.0.0", 16), "/dnt": ("127.0.0.0", 0), "/gpc": ("127.0.0.0", 0)}),
    (("--full-ip",), {"/plain": ("127.0.0.1", 16), "/dnt": ("127.0.0.0", 0), "/gpc": ("127.0.0.0", 0)}),
    (("--full-ip", "--dnt", "skip"), {"/plain": ("127.0.0.1", 16)}),
])
def test_full_ip_and_dnt_through_nginx(store_uri, store, start_ingest, start_nginx, args, expected):
    ingester = start_ingest("--db", store_uri, "--no-ua-parse", *args)
    nginx = start_nginx(ingester.port)
    urls = ["/dnt", "/gpc", "/plain"]
    for url, header in zip([*urls, "/last"], [b"DNT: 1\r\n", b"Sec-GPC: 1\r\n", b"", b""], strict=True):
        target = b"/pixel.gif?site=a&url=" + url.encode()
        assert request(nginx, target, b"User-Agent: agent\r\n" + header) == 200, url
    hits = by_url_after_last(store, urls)
    # the last octet kept with --full-ip, except for opted-out browsers; with --dnt skip they store nothing
    assert {url: (hit["_ip"], len(hit.get("_visitor", ""))) for url, hit in hits.items()} == expected
    assert ingester.signal(timeout=60) == 0
    assert f"4 datagrams received, {len(expected) + 1} hits spooled" in ingester.log()


@pytest.mark.parametrize(("args", "expected"), [
    ((), {"/chrome": (None, "Chrome"), "/googlebot": (True, "Googlebot")}),
    (("--drop-bots",), {"/chrome": (None, "Chrome")}),
    (("--no-ua-parse",), {"/chrome": (None, None), "/googlebot": (None, None)}),
])
def test_bots_and_user_agents(store_uri, store, start_ingest, args, expected):
    ingester = start_ingest("--db", store_uri, *args)
    send_datagrams(ingester.port, *(datagram(f"/{name}", ua=AGENTS[name][0]) for name in ("chrome", "googlebot")),
                   datagram("/last"))
    hits = by_url_after_last(store, ["/chrome", "/googlebot"])
    assert {url: (hit.get("_bot"), hit.get("_browser")) for url, hit in hits.items()} == expected


PLACES = [("/berlin", "203.0.113.200", {}), ("/tokyo", "2001:db8:1:2::77", {}), ("/nowhere", "192.0.2.1", {}),
          ("/dnt", "203.0.113.200", {"dnt": "1"})]


@pytest.mark.parametrize(("args", "berlin"), [((), "203.0.113.0"), (("--full-ip",), "203.0.113.200")])
def test_places_from_geoip(store_uri, store, start_ingest, geoip, args, berlin):
    ingester = start_ingest("--db", store_uri, "--geoip", str(geoip), "--no-ua-parse", *args)
    send_datagrams(ingester.port, *(datagram(url, addr, **headers) for url, addr, headers in PLACES),
                   datagram("/last"))
    hits = by_url_after_last(store, [url for url, _, _ in PLACES])
    # Berlin's anonymised address is in Hamburg's block: the place is that of the whole address
    assert {url: (hit.get("_country"), hit.get("_city")) for url, hit in hits.items()} == {
        "/berlin": ("DE", "Berlin"), "/tokyo": ("JP", "Tokyo"), "/nowhere": (None, None), "/dnt": ("DE", "Berlin")}
    assert (hits["/berlin"]["_ip"], hits["/dnt"]["_ip"]) == (berlin, "203.0.113.0")
    assert not [hit for hit in hits.values() if "_geo_ip" in hit]  # the whole address never reaches the store


def test_with_no_writer_mongol_serve_enriches(tmp_path, start_ingest, geoip):
    uri = f"sqlite://{tmp_path}/hits.db"
    done = subprocess.run([str(BIN / "mongol-ingest"), "127.0.0.1:0", "--db", uri, "--no-writer", "--drop-bots"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == "mongol-ingest: error: --drop-bots is the writer's: with --no-writer, give it to " \
                                  "the mongol-serve that stores the hits"
    # --geoip here spools the whole address for the place mongol-serve's writer finds with its own --geoip
    ingester = start_ingest("--db", uri, "--no-writer", "--geoip", str(geoip))
    send_datagrams(ingester.port, datagram("/berlin", ua=AGENTS["googlebot"][0]), datagram("/last"))
    wait_until(lambda: spooled_lines(default_spool(uri)) == 2, 10, "2 hits in mongol-serve's spool")
    assert ingester.signal(timeout=60) == 0
    writer = subprocess.Popen([str(BIN / "mongol-serve"), "--workers", "0", "--db", uri, "--geoip", str(geoip),
                               "--drop-bots"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = open_store(uri)
    try:
        [hit] = stored(store, 1)
        assert (hit["url"], hit["_ip"], hit["_country"], hit["_city"]) == ("/last", "203.0.113.0", "DE", "Berlin")
        assert "_geo_ip" not in hit
    finally:
        writer.terminate()
        assert writer.wait(30) == 0
        store.close()
