"""Visitors without personal data, over real HTTP on both stores: daily hashed ids, cookies, anonymised
addresses, DNT and GPC, prefetches."""

import os
import re
import stat
import time
from datetime import UTC, datetime, timedelta

import pytest

from mongol import tracking
from mongol.app import GIF
from mongol.tracking import COOKIE_NAME, DAY_US, SALT_PREFIX, Salts, Tracker, Tracking, anonymise_ip
from tests.conftest import by_url, http_get, stored, wait_until

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 "
          "Safari/537.36")
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0"




@pytest.fixture
def serve(start_server, store_uri, store, tmp_path):
    """Start mongol-serve on the fresh store with a known spool folder, behind a trusted proxy
    (127.0.0.1), so that tests choose the client address with X-Forwarded-For."""
    def start(*args):
        return start_server("--db", store_uri, "--spool", str(tmp_path / "spool"), "--flush-interval", "0.05",
                            "--trusted-proxy", "127.0.0.1", *args)
    return start


def get(server, query, ip="203.0.113.9", ua=CHROME, **headers):
    headers = {"X-Forwarded-For": ip, "User-Agent": ua, **headers}
    status, response_headers, body = http_get(f"{server.url}/p.gif?{query}", headers)
    assert (status, body) == (200, GIF)
    return response_headers


def test_visitor_id_is_a_daily_hash_of_site_address_and_agent(serve, store):
    server = serve()
    get(server, "site=a.org&url=/1")
    get(server, "site=a.org&url=/2")                       # same visitor, another page
    get(server, "site=b.org&url=/3")                       # same person, another site
    get(server, "site=a.org&url=/4", ua=FIREFOX)           # another browser
    get(server, "site=a.org&url=/5", ip="203.0.113.10")    # another address in the same /24
    hits = by_url(store, 5)
    ids = {url: hit["_visitor"] for url, hit in hits.items()}
    assert all(re.fullmatch(r"[0-9a-f]{16}", v) for v in ids.values())
    assert ids["/1"] == ids["/2"]
    assert len({ids["/1"], ids["/3"], ids["/4"], ids["/5"]}) == 4
    # the address is stored anonymised; the hash was made from the whole one
    assert {hit["_ip"] for hit in hits.values()} == {"203.0.113.0"}


def test_visitor_id_is_the_same_across_workers_and_restarts(serve, store, tmp_path):
    server = serve("--workers", "2")
    processes = set()

    def both_workers_answered():
        get(server, f"site=a.org&url=/w{len(processes)}-{time.monotonic_ns()}")
        processes.update(h["_id"][8:18] for h in store.hits())  # an id's middle part names its process
        return len(processes) >= 2

    wait_until(both_workers_answered, 30, "hits answered by both workers")
    assert server.signal() == 0
    hits = list(store.hits())
    assert len({h["_visitor"] for h in hits}) == 1
    salts = list((tmp_path / "spool").glob(SALT_PREFIX + "*"))
    assert [p.name for p in salts] == [SALT_PREFIX + datetime.now(UTC).strftime("%Y-%m-%d")]
    assert stat.S_IMODE(salts[0].stat().st_mode) == 0o600
    server = serve()
    get(server, "site=a.org&url=/after-restart")
    assert by_url(store, len(hits) + 1)["/after-restart"]["_visitor"] == hits[0]["_visitor"]


def test_salts_older_than_yesterday_are_deleted_at_start(serve, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    today = datetime.now(UTC).date()
    names = {d: SALT_PREFIX + (today - timedelta(days=d)).isoformat() for d in (1, 2, 9)}
    for name in names.values():
        (spool / name).write_bytes(os.urandom(32))
    serve()
    wait_until(lambda: not (spool / names[2]).exists() and not (spool / names[9]).exists(), 10, "old salts deleted")
    assert (spool / names[1]).exists()  # yesterday's stays until the end of today


def test_mongol_ingest_deletes_old_salts_while_it_runs(tmp_path, monkeypatch):
    """mongol-ingest's receiving loop calls Ingest.housekeep every second, busy or idle (mongol.ingest.run):
    salts older than yesterday go then too, not only at start and when the day changes."""
    from mongol import tracking
    from mongol.ingest import Ingest

    monkeypatch.setattr(tracking, "PURGE_EVERY", 0.0)  # look at every call, not once a minute
    ingest = Ingest(lambda hit: True, tracker=Tracker(Tracking(), Salts(tmp_path)))  # its start's purge is past
    today = datetime.now(UTC).date()
    old, yesterday = (tmp_path / (SALT_PREFIX + (today - timedelta(days=d)).isoformat()) for d in (2, 1))
    for path in (old, yesterday):
        path.write_bytes(os.urandom(32))
    ingest.housekeep()
    assert not old.exists()
    assert yesterday.exists()  # for hits that cross midnight


def test_ids_differ_from_one_day_to_the_next(tmp_path):
    """The same visitor on two days (the server's clock cannot be moved: the tracker is given the time)."""
    tracker = Tracker(Tracking(), Salts(tmp_path))
    environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": "site=a.org&url=/", "REMOTE_ADDR": "203.0.113.9",
               "HTTP_USER_AGENT": CHROME}
    now = time.time_ns() // 1000
    today = [tracker.make(environ, now_us=now)[0]["_visitor"] for _ in range(2)]
    yesterday = tracker.make(environ, now_us=now - DAY_US)[0]["_visitor"]
    assert today[0] == today[1] != yesterday
    assert "_visitor" not in tracker.make(environ, now_us=now - 3 * DAY_US)[0]  # its salt is gone
    assert Tracker(Tracking(), Salts(tmp_path)).make(environ, now_us=now)[0]["_visitor"] == today[0]


def test_remembered_ids_are_bounded_and_the_same_as_hashed_ones(tmp_path, monkeypatch):
    """A process remembers at most VISITOR_CACHE ids; what it remembers is what a fresh process hashes."""
    monkeypatch.setattr(tracking, "VISITOR_CACHE", 3)
    tracker, fresh = Tracker(Tracking(), Salts(tmp_path)), Tracker(Tracking(), Salts(tmp_path))
    now = time.time_ns() // 1000
    for round_ in range(3):
        for n in range(5):
            environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": "site=a.org&url=/", "REMOTE_ADDR": f"203.0.113.{n}",
                       "HTTP_USER_AGENT": CHROME}
            got = tracker.make(environ, now_us=now)[0]["_visitor"]
            assert got == fresh.make(environ, now_us=now)[0]["_visitor"], (round_, n)
            fresh._visitors.clear()
            assert len(tracker._visitors) <= 3


@pytest.mark.parametrize(("ip", "anonymised"), [
    ("203.0.113.9", "203.0.113.0"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1::"),
    ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8:ffff::"),
    ("::ffff:198.51.100.77", "::ffff:198.51.100.0"),
])
def test_addresses_are_anonymised_unless_full_ip(ip, anonymised):
    assert anonymise_ip(ip) == anonymised


def test_address_is_stored_anonymised_by_default_and_whole_with_full_ip(serve, store):
    server = serve()
    get(server, "site=a&url=/v4", ip="198.51.100.77")
    get(server, "site=a&url=/v6", ip="2001:db8:1:2:3:4:5:6")
    hits = by_url(store, 2)
    assert (hits["/v4"]["_ip"], hits["/v6"]["_ip"]) == ("198.51.100.0", "2001:db8:1::")
    assert server.signal() == 0
    server = serve("--full-ip")
    get(server, "site=a&url=/full", ip="2001:db8:1:2:3:4:5:6")
    get(server, "site=a&url=/dnt", ip="198.51.100.77", DNT="1")
    hits = by_url(store, 4)
    assert hits["/full"]["_ip"] == "2001:db8:1:2:3:4:5:6"
    assert hits["/dnt"]["_ip"] == "198.51.100.0"  # a visitor who asked not to be tracked keeps it hidden


@pytest.mark.parametrize("header", [{"DNT": "1"}, {"Sec-GPC": "1"}])
def test_dnt_and_gpc_record_no_visitor_id(serve, store, header):
    server = serve()
    get(server, "site=a&url=/opted-out", **header)
    get(server, "site=a&url=/dnt-0", DNT="0")
    hits = by_url(store, 2)
    assert "_visitor" not in hits["/opted-out"] and hits["/opted-out"]["pageviews"] == 1
    assert "_visitor" in hits["/dnt-0"]


def test_dnt_skip_stores_nothing(serve, store):
    server = serve("--dnt", "skip")
    get(server, "site=a&url=/dnt", DNT="1")
    get(server, "site=a&url=/gpc", **{"Sec-GPC": "1"})
    get(server, "site=a&url=/counted")
    assert [h["url"] for h in stored(store, 1)] == ["/counted"]
    assert server.signal() == 0
    assert store.count() == 1


def test_cookie_mode_sets_a_random_first_party_id(serve, store):
    server = serve("--cookie")
    headers = get(server, "site=a&url=/first")
    cookie = headers["set-cookie"]
    value = re.match(rf"{COOKIE_NAME}=([0-9a-f]{{32}}); ", cookie).group(1)
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert attributes == {"max-age", "path", "secure", "httponly", "samesite", "partitioned"}
    assert "SameSite=None" in cookie and "Max-Age=34128000" in cookie
    # the browser sends it back: same visitor, from anywhere, and no new cookie
    again = get(server, "site=a&url=/second", ip="198.51.100.1", ua=FIREFOX,
                Cookie=f"other=1; {COOKIE_NAME}={value}; x{COOKIE_NAME}=0")
    assert "set-cookie" not in again
    forged = get(server, "site=a&url=/forged", Cookie=f"{COOKIE_NAME}=not-an-id")
    opted_out = get(server, "site=a&url=/dnt", DNT="1")
    assert "set-cookie" in forged and "set-cookie" not in opted_out
    hits = by_url(store, 4)
    assert hits["/first"]["_visitor"] == hits["/second"]["_visitor"] == value
    assert re.fullmatch(r"[0-9a-f]{32}", hits["/forged"]["_visitor"]) and hits["/forged"]["_visitor"] != value
    assert "_visitor" not in hits["/dnt"]


@pytest.mark.parametrize("header", [{"Sec-Purpose": "prefetch"}, {"Sec-Purpose": "prefetch;prerender"},
                                    {"Purpose": "prefetch"}, {"X-Moz": "prefetch"}])
def test_prefetch_is_answered_but_not_a_pageview(serve, store, header):
    server = serve()
    get(server, "site=a&url=/prefetched", **header)
    get(server, "site=a&url=/viewed")
    assert [h["url"] for h in stored(store, 1)] == ["/viewed"]
    assert server.signal() == 0
    assert store.count() == 1
