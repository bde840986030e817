"""scripts/lighttpd-mongol.conf as shipped, in Debian's lighttpd: the report folder (dashboard included)
served at /stats/ of the stats host, and every other URL of that host proxied to a real mongol-serve."""

import shutil
import socket
import subprocess
from functools import partial
from pathlib import Path

import pytest

from mongol.app import GIF
from mongol.stores import open_store
from tests.conftest import BIN, START_TIMEOUT, raw_request, wait_until

ROOT = Path(__file__).parent.parent
SNIPPET = (ROOT / "scripts" / "lighttpd-mongol.conf").read_text()
DEBIAN_MODULES = [Path("/etc/lighttpd/conf-available", name) for name in ("10-proxy.conf", "05-setenv.conf")]

LIGHTTPD_CONF = """\
server.document-root = "{prefix}/www"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{prefix}/error.log"
index-file.names = ( "index.html" )
{modules}
include "{prefix}/mongol.conf"
"""


def snippet_for_test(mongol_port: int, reports: Path) -> str:
    """The shipped snippet with the test's report folder and mongol-serve's port."""
    text = SNIPPET
    for old, new in [('"/var/www/mongol/"', f'"{reports}/"'), ('"port" => 8000', f'"port" => {mongol_port}')]:
        assert text.count(old) == 1, f"scripts/lighttpd-mongol.conf changed: no {old!r} in it"
        text = text.replace(old, new)
    return text


def lighttpd_ready(proc: subprocess.Popen, port: int) -> object:
    """True once lighttpd answers (404 for a report that does not exist), "exited" if it died."""
    if proc.poll() is not None:
        return "exited"
    try:
        return get(port, "/stats/none.json")[0] == 404
    except OSError:
        return False


def get(port: int, target: str, host: str = "stats.example.com", headers: bytes = b"") -> tuple:
    return raw_request(port, f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
                       + headers + b"\r\n")


@pytest.fixture
def lighttpd(tmp_path, start_server):
    """lighttpd on a free port with the shipped snippet (beside what `lighty-enable-mod proxy setenv`
    adds, as README says to run), in front of mongol-serve on the test's SQLite store."""
    binary = shutil.which("lighttpd") or shutil.which("lighttpd", path="/usr/local/sbin:/usr/sbin:/sbin")
    if binary is None or not all(path.exists() for path in DEBIAN_MODULES):
        pytest.fail("lighttpd is not installed: apt-get install lighttpd")
    server = start_server("--db", f"sqlite://{tmp_path}/hits.db", "--trusted-proxy", "127.0.0.1")
    prefix = tmp_path / "lighttpd"
    reports = tmp_path / "reports"
    for folder in (prefix / "www", reports):
        folder.mkdir(parents=True)
    (prefix / "mongol.conf").write_text(snippet_for_test(server.port, reports))
    modules = "\n".join(f'include "{path}"' for path in DEBIAN_MODULES)
    procs = []
    try:
        for _ in range(5):  # a free port may be taken between finding and binding it: try another
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            conf = prefix / "lighttpd.conf"
            conf.write_text(LIGHTTPD_CONF.format(prefix=prefix, port=port, modules=modules))
            checked = subprocess.run([binary, "-tt", "-f", str(conf)], capture_output=True, text=True, timeout=30)
            assert checked.returncode == 0, checked.stderr
            proc = subprocess.Popen([binary, "-D", "-f", str(conf)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            if wait_until(partial(lighttpd_ready, proc, port), START_TIMEOUT, "lighttpd to answer") is True:
                yield port, reports, f"sqlite://{tmp_path}/hits.db"
                return
        pytest.fail("lighttpd did not start:\n" + (prefix / "error.log").read_text(errors="replace"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


def test_the_pixel_and_the_reports_behind_lighttpd(lighttpd, tmp_path):
    port, reports, db = lighttpd
    status, headers, body = get(port, "/pixel.gif?title=Home", headers=b"Referer: https://www.example.com/blog/\r\n")
    assert (status, headers["content-type"], body) == (200, "image/gif", GIF)
    for _ in range(2):
        assert get(port, "/pixel.gif?site=b.org&url=/about")[0] == 200
    store = open_store(db)
    try:
        wait_until(lambda: store.count() == 3, 10, "the hits sent through lighttpd to be stored")
    finally:
        store.close()

    config = tmp_path / "reports.cfg"
    config.write_text(f"[top]\noutput = {reports}\n")
    done = subprocess.run([str(BIN / "mongol-report"), str(config), "--db", db], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    written = (reports / "top.json").read_bytes()
    assert b'"url":"/about"' in written and b'"url":"/blog/"' in written

    status, headers, body = get(port, "/stats/top.json")
    assert (status, body) == (200, written)
    assert headers["content-type"] == "application/javascript; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    for target, file, kind in [("/stats/", "index.html", "text/html"),
                               ("/stats/dashboard.js", "dashboard.js", "application/javascript"),
                               ("/stats/dashboard.css", "dashboard.css", "text/css"),
                               ("/stats/reports.js", "reports.js", "application/javascript")]:
        status, headers, body = get(port, target)
        assert status == 200, target
        assert body == (reports / file).read_bytes()
        assert headers["content-type"] == f"{kind}; charset=utf-8", target
    # only the public paths reach mongol-serve: not /healthz and /metrics, nor any other path of the host
    for target in ("/healthz", "/metrics", "/metrics?x", "/other.gif?site=a&url=/"):
        status, _, body = get(port, target)
        assert status == 404 and b"mongol" not in body and body != GIF, target
    collect = b"POST /collect HTTP/1.1\r\nHost: stats.example.com\r\nConnection: close\r\n" \
              b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 17\r\n\r\ntid=b.org&dp=%2Fx"
    assert raw_request(port, collect)[0] == 204
    # another host's /stats/ is the same folder; the rest of another host is not mongol-serve's
    assert get(port, "/stats/top.json", host="www.example.com")[2] == written
    assert get(port, "/pixel.gif?site=c.org&url=/", host="www.example.com")[0] == 404
