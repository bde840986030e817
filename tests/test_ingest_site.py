"""A site's own nginx access log as the source of page views (mongol.sitelog): Mongol's site format,
ballcone's and Matomo's, each from a real nginx serving a small site, read back from the store."""

import socket
import subprocess
from functools import partial
from pathlib import Path

import pytest

from mongol import sitelog
from tests.conftest import START_TIMEOUT, raw_request, wait_until
from tests.test_ingest import NGINX_CONF

ROOT = Path(__file__).parent.parent
SNIPPET = (ROOT / "scripts" / "nginx-site-log.conf").read_text()
SYSLOG = "syslog:server=127.0.0.1:{port},tag=mongol,nohostname"
# The formats as their projects document them (ballcone's README; Matomo log-analytics' README, which
# leaves out escape=json)
BALLCONE = """log_format ballcone_json_example escape=json
    '{' '"service": "example", ' '"ip": "$remote_addr", ' '"host": "$host", ' '"path": "$request_uri", '
    '"status": "$status", ' '"referrer": "$http_referer", ' '"user_agent": "$http_user_agent", '
    '"length": $bytes_sent, ' '"generation_time_milli": $request_time, ' '"date": "$time_iso8601"' '}';"""
MATOMO = """log_format matomo '{"ip": "$remote_addr",' '"host": "$host",' '"path": "$request_uri",'
    '"status": "$status",' '"referrer": "$http_referer",' '"user_agent": "$http_user_agent",'
    '"length": $bytes_sent,' '"generation_time_milli": $request_time,' '"date": "$time_iso8601"}';"""
FORMATS = {"mongol_site": "site.test", "ballcone_json_example": "ballcone.test", "matomo": "matomo.test"}


@pytest.fixture
def site_nginx(tmp_path):
    """nginx serving a small site (pages, a stylesheet, an image, a redirect) on three servers, one per log
    format, each logging to mongol-ingest on the port it is given."""
    import shutil

    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/local/sbin:/usr/sbin:/sbin")
    if nginx is None:
        pytest.fail("nginx is not installed: apt-get install nginx-light")
    root = tmp_path / "www"
    (root / "blog").mkdir(parents=True)
    for page in ("index.html", "about.html", "blog/index.html", "blog/\u00fcber.html"):
        (root / page).write_text(f"<html><title>{page}</title></html>")
    (root / "style.css").write_text("body {}")
    (root / "logo.png").write_bytes(b"\x89PNG")
    (root / "report.pdf").write_bytes(b"%PDF")
    procs = []

    def start(syslog_port: int) -> dict[str, int]:
        prefix = tmp_path / "nginx"
        prefix.mkdir(exist_ok=True)
        ports = {}
        servers = []
        for name in FORMATS:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                ports[name] = probe.getsockname()[1]
            servers.append(f"""server {{
    listen 127.0.0.1:{ports[name]};
    root {root};
    index index.html;
    include /etc/nginx/mime.types;
    location = /old {{ return 301 /about.html; }}
    location = /blog {{ return 301 /blog/; }}
    access_log {SYSLOG.format(port=syslog_port)} {name};
}}""")
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, snippet="\n".join([SNIPPET, BALLCONE, MATOMO, *servers])))
        proc = subprocess.Popen([nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)

        def ready(port):
            assert proc.poll() is None, (prefix / "error.log").read_text()
            try:
                return raw_request(port, b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")[0] == 200
            except OSError:
                return False

        for port in ports.values():
            wait_until(partial(ready, port), START_TIMEOUT, "nginx to answer")
        return ports

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


# (method, target, headers, a page view?) for each of the three servers
REQUESTS = [
    (b"GET", b"/", b"Referer: https://news.example.org/item?id=1\r\n", True),
    (b"GET", b"/about.html", b"Referer: http://www.%s/\r\n", True),  # from another of its pages
    (b"GET", b"/blog/", b"", True),
    (b"GET", b"/blog/%C3%BCber.html", b"", True),
    (b"GET", b"/style.css", b"", False),
    (b"GET", b"/logo.png", b"", False),
    (b"GET", b"/report.pdf", b"", False),
    (b"GET", b"/old", b"", False),  # a redirect
    (b"GET", b"/missing.html", b"", False),  # 404
    (b"HEAD", b"/about.html?head", b"", None),  # not a view; logged without its method by ballcone/Matomo
    (b"POST", b"/about.html?post", b"Content-Length: 0\r\n", False),  # 405 from the static server
    (b"GET", b"/about.html?prefetch", b"Sec-Purpose: prefetch\r\n", None),  # only Mongol's format logs it
    (b"GET", b"/about.html?bot", b"User-Agent: Googlebot/2.1 (+http://www.google.com/bot.html)\r\n", True),
    (b"GET", b"/about.html?last", b"", True),
]


@pytest.mark.slow
def test_a_sites_own_access_log_in_three_formats_becomes_page_views(store_uri, store, start_ingest, site_nginx):
    ingester = start_ingest("--db", store_uri)
    ports = site_nginx(ingester.port)
    for name, port in ports.items():
        host = FORMATS[name].encode()
        for method, target, headers, _ in REQUESTS:
            agent = b"" if b"User-Agent" in headers else b"User-Agent: Mozilla/5.0 (X11; Linux) Firefox/140\r\n"
            raw_request(port, method + b" " + target + b" HTTP/1.1\r\nHost: www." + host
                        + b"\r\nConnection: close\r\n" + agent + headers.replace(b"%s", host) + b"\r\n")
    wait_until(lambda: {h["site"] for h in store.hits() if h.get("url", "").endswith("last")} == set(FORMATS.values()),
               30, "the last page view of each server")
    hits = list(store.hits())
    for name, site in FORMATS.items():
        urls = sorted(h["url"] for h in hits if h["site"] == site)
        expected = ["/", "/about.html", "/about.html?bot", "/about.html?last", "/blog/", "/blog/\u00fcber.html"]
        if name != "mongol_site":  # no method and no prefetch headers in those formats: counted as nginx logged them
            expected += ["/about.html?head", "/about.html?prefetch"]
        assert urls == sorted(expected), name
        [home] = [h for h in hits if h["site"] == site and h["url"] == "/"]
        assert home["referrer"] == "https://news.example.org/item?id=1" and home["pageviews"] == 1
        assert home["_source"] == "news.example.org" and "_internal" not in home
        [about] = [h for h in hits if h["site"] == site and h["url"] == "/about.html"]
        assert about["_internal"] is True and "referrer" not in about  # from another of its pages
        assert home["_ip"] == "127.0.0.0"  # anonymised, as by the pixel
        [bot] = [h for h in hits if h["site"] == site and h["url"] == "/about.html?bot"]
        assert bot.get("_bot") is True


@pytest.mark.parametrize(("method", "status", "uri", "content_type", "page"), [
    ("GET", "200", "/", None, True),
    ("GET", "200", "/a/b", None, True),
    ("GET", "304", "/a.html", None, True),
    ("GET", "200", "/index.php?x=1.css", None, True),
    (None, "200", "/a.HTML", None, True),
    ("GET", "200", "/a.css", None, False),
    ("GET", "200", "/feed.xml", None, False),
    ("GET", "200", "/robots.txt", None, False),
    ("GET", "200", "/.well-known/security.txt", None, False),
    ("GET", "301", "/old", None, False),
    ("GET", "404", "/missing", None, False),
    ("HEAD", "200", "/", None, False),
    ("GET", "200", "/api/thing", "application/json", False),
    ("GET", "200", "/download.pdf", "text/html; charset=utf-8", True),
])
def test_what_is_a_page_view(method, status, uri, content_type, page):
    assert sitelog.is_page(method, status, uri, content_type) is page


def test_nginx_default_escaping_is_read():
    assert sitelog.unescape_nginx(r'{"ua": "a\x22b\x5C"}') == r'{"ua": "a\u0022b\u005C"}'
