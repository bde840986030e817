"""mongol.client against a running mongol-serve: hits from a web application's requests and from jobs,
never blocking or raising into the caller, retried until the server takes them."""

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mongol.client import Client
from tests.conftest import BIN, START_TIMEOUT, by_url, http_get, stored, wait_until

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0"




@pytest.fixture
def client():
    clients = []

    def make(*args, **kwargs):
        clients.append(Client(*args, **kwargs))
        return clients[-1]

    yield make
    for c in clients:
        c.close(1)


def test_hits_from_requests_and_jobs(start_server, store_uri, store, client):
    server = start_server("--db", store_uri, "--flush-interval", "0.05", "--trusted-sender", "127.0.0.1")
    mongol = client(server.url, site="example.com")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/blog/post", "QUERY_STRING": "id=3",
               "HTTP_HOST": "www.shop.example:8000", "HTTP_USER_AGENT": FIREFOX, "REMOTE_ADDR": "198.51.100.7",
               "HTTP_REFERER": "https://search.example/?q=x"}
    assert mongol.track(environ, title="A post") is True
    assert mongol.track({**environ, "PATH_INFO": "/private", "QUERY_STRING": "", "HTTP_DNT": "1"}) is True
    hosted = client(server.url)
    assert hosted.track({**environ, "PATH_INFO": "/host", "QUERY_STRING": ""}) is True
    assert mongol.hit("/newsletter/sent", kind="event", campaign="november", tags=["a", "b"]) is True
    assert mongol.hit("/api/orders", ua=FIREFOX, ip="2001:db8:1::9", user_id="customer-42") is True
    assert mongol.flush(10) and hosted.flush(10)
    hits = by_url(store, 5)
    post = hits["/blog/post?id=3"]
    assert (post["site"], post["title"], post["referrer"]) == ("example.com", "A post", "https://search.example/?q=x")
    assert (post["_ua"], post["_ip"], post["_browser"], post["pageviews"]) == (FIREFOX, "198.51.100.0", "Firefox", 1)
    assert "_visitor" in post and "_visitor" not in hits["/private"]
    assert hits["/host"]["site"] == "shop.example"  # without a site, the request's host
    job = hits["/newsletter/sent"]
    assert (job["pageviews"], job["t"], job["campaign"], job["tags"]) == (0, "event", "november", ["a", "b"])
    assert job["_ua"].startswith("mongol.client/") and "_bot" not in job  # the sender's own, not a bot's
    assert hits["/api/orders"]["_ip"] == "2001:db8:1::"
    assert (mongol.sent, mongol.dropped, mongol.failures) == (4, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving_on(port, store_uri, tmp_path) -> Iterator[None]:
    """mongol-serve started on a port chosen beforehand (a client is already sending to it)."""
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "mongol-serve"), f"127.0.0.1:{port}", "--db", store_uri, "--workers", "1",
                                 "--flush-interval", "0.05"], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")})
    try:
        wait_until(lambda: proc.poll() is None and http_get(f"http://127.0.0.1:{port}/healthz")[2].startswith(b"ok"),
                   START_TIMEOUT, "mongol-serve on the chosen port")
        yield
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()


def test_hits_wait_for_the_server_and_keep_their_time(store_uri, store, client, tmp_path):
    """Hits wait in the queue while the server is down, retried with backoff; each is stored with
    the time it was queued, not when it was sent."""
    port = free_port()
    mongol = client(f"http://127.0.0.1:{port}", site="s", backoff=0.05, max_backoff=0.2, retries=1000)
    queued = time.time()
    assert mongol.hit("/while-down") is True
    wait_until(lambda: mongol.failures >= 3, 10, "the client to retry")
    with serving_on(port, store_uri, tmp_path):
        assert mongol.flush(20)
        [hit] = stored(store, 1)
        assert hit["url"] == "/while-down" and abs(hit["time"].timestamp() - queued) < 1.0
        assert mongol.sent == 1 and mongol.dropped == 0


def test_never_blocks_and_never_raises(client):
    """A server that accepts connections and never answers: the caller goes on; the queue is bounded."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(100)
        mongol = client(f"http://127.0.0.1:{hung.getsockname()[1]}", site="s", max_queue=3, timeout=60)
        started = time.monotonic()
        results = [mongol.hit(f"/{i}") for i in range(6)]
        assert time.monotonic() - started < 10  # far less than one request's timeout
        assert results == [True, True, True, False, False, False]
        assert mongol.dropped == 3
        assert mongol.hit() is False and mongol.hit("/x", site="") is False  # nothing to send: not raised
        assert mongol.hit("/x", **{"weird": object(), "n": 3}) is False  # queue still full, and no exception
        assert mongol.track({"HTTP_HOST": object()}) is False
        assert mongol.flush(0.2) is False


def test_a_hit_the_server_refuses_does_not_take_the_batch_with_it(store_uri, store, client, tmp_path):
    port = free_port()
    mongol = client(f"http://127.0.0.1:{port}", site="s", backoff=0.05, max_backoff=0.2, retries=1000)
    mongol.hit("/first")  # the thread retries this one alone while the next three queue up: one batch
    wait_until(lambda: mongol.failures >= 1, 10, "the client to retry")
    mongol.hit("/good-1")
    mongol.hit("/refused", **{f"p{i}": "1" for i in range(300)})  # mongol-serve takes at most 256 parameters
    mongol.hit("/good-2")
    with serving_on(port, store_uri, tmp_path):
        assert mongol.flush(20)
        assert sorted(h["url"] for h in stored(store, 3)) == ["/first", "/good-1", "/good-2"]
    assert (mongol.sent, mongol.dropped) == (3, 1)


def test_gives_up_after_retries_with_backoff(client):
    """Nothing listens: each of `retries` attempts fails, the waits between them double (each at
    least half its nominal delay), and then the hit is dropped."""
    port = free_port()  # bound, then closed: connections are refused
    mongol = client(f"http://127.0.0.1:{port}", site="s", retries=4, backoff=0.1, max_backoff=60)
    started = time.monotonic()
    assert mongol.hit("/never") is True
    assert mongol.flush(30)
    elapsed = time.monotonic() - started
    assert (mongol.failures, mongol.dropped, mongol.sent) == (4, 1, 0)
    assert elapsed >= 0.5 * (0.1 + 0.2 + 0.4)  # three waits, between four attempts
    assert elapsed < 20


@pytest.mark.slow
def test_a_server_stalled_past_the_timeout_stores_each_hit_once(start_server, store_uri, store, client, tmp_path):
    """The workers stop (SIGSTOP) for longer than the client's timeout: the client sends again, and later the
    server answers both the first requests (the kernel kept them) and the retries. The hit's id and time
    from the client (hid, ht, from a trusted sender) make each one hit."""
    from mongol.writer import read_status

    spool = tmp_path / "spool"
    server = start_server("--db", store_uri, "--spool", str(spool), "--flush-interval", "0.05",
                          "--trusted-sender", "127.0.0.1", "--workers", "1")
    mongol = client(server.url, site="s", timeout=0.5, backoff=0.2, max_backoff=0.5)
    writer = read_status(spool)["pid"]
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    workers = [int(p) for p in children
               if int(p) != writer]
    for n in range(10):
        assert mongol.hit(f"/before/{n}", n=n)
    assert mongol.flush(20)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        for n in range(10, 40):
            assert mongol.hit(f"/stalled/{n}", n=n)
        wait_until(lambda: mongol.failures >= 3, 20, "the client to time out and send again")
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    assert mongol.flush(30)
    wait_until(lambda: store.count() >= 40, 30, "40 hits stored")
    counts: dict[int, int] = {}
    for hit in store.hits():
        counts[int(hit["n"])] = counts.get(int(hit["n"]), 0) + 1
    assert set(counts) == set(range(40)) and set(counts.values()) == {1}, counts
    assert (mongol.sent, mongol.dropped) == (40, 0)
    print(f"stalled server: 40 sent, {mongol.failures} requests timed out and sent again, 40 stored once each")


def test_keeps_retrying_while_the_queue_has_room(store_uri, store, client, tmp_path):
    """No limit on attempts by default: a long outage drops nothing while the queue has room."""
    port = free_port()
    mongol = client(f"http://127.0.0.1:{port}", site="s", backoff=0.01, max_backoff=0.02)
    assert mongol.hit("/through-the-outage")
    wait_until(lambda: mongol.failures >= 30, 20, "many more attempts than the old limit of 8")
    with serving_on(port, store_uri, tmp_path):
        assert mongol.flush(20)
        assert [h["url"] for h in stored(store, 1)] == ["/through-the-outage"]
    assert (mongol.sent, mongol.dropped) == (1, 0)
