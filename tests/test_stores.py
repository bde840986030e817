"""The store interface, on both stores, read back through the store and through the raw database."""

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from mongol.errors import StoreError
from mongol.hit import new_id
from mongol.stores import open_store, sqlite_path

T0 = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)


def make_hit(minutes=0, site="a.org", url="/", **extra):
    when = T0 + timedelta(minutes=minutes)
    return {"_id": new_id(when.timestamp()), "time": when, "site": site, "url": url, "pageviews": 1, **extra}


def test_insert_and_read_back(store):
    hits = [make_hit(i, url=f"/{i}", tags=["x", "y"], title="T\u00e9") for i in range(5)]
    assert store.insert_many(hits) == 5
    back = list(store.hits())
    assert [h["url"] for h in back] == [f"/{i}" for i in range(5)]
    for sent, got in zip(hits, back, strict=True):
        assert got["_id"] == sent["_id"]
        assert got["tags"] == ["x", "y"] and got["title"] == "T\u00e9" and got["pageviews"] == 1
        assert got["time"].utcoffset() == timedelta(0)
        assert abs(got["time"] - sent["time"]) < timedelta(milliseconds=1)  # MongoDB keeps milliseconds


def test_a_replayed_hit_is_stored_once(store):
    first = [make_hit(0, url="/a"), make_hit(1, url="/b")]
    assert store.insert_many(first) == 2
    assert store.insert_many([first[1], make_hit(2, url="/c"), first[0]]) == 1
    assert sorted(h["url"] for h in store.hits()) == ["/a", "/b", "/c"]


def test_window_and_site(store):
    store.insert_many([make_hit(i, site="a.org" if i % 2 else "b.org") for i in range(10)])
    start, end = T0 + timedelta(minutes=2), T0 + timedelta(minutes=6)
    assert [h["time"].minute for h in store.hits(start, end)] == [2, 3, 4, 5]
    assert [h["time"].minute for h in store.hits(start, end, site="a.org")] == [3, 5]
    assert [h["time"].minute for h in store.hits(start=T0 + timedelta(minutes=8))] == [8, 9]
    assert store.count() == 10
    assert store.count(start, end) == 4
    assert store.count(site="b.org") == 5
    assert store.count(end=T0 + timedelta(minutes=1), site="b.org") == 1


def test_delete_before(store):
    store.insert_many([make_hit(i, site="a.org" if i % 2 else "b.org") for i in range(10)])
    assert store.delete_before(T0 + timedelta(minutes=4), site="a.org") == 2  # minutes 1 and 3
    assert store.count(site="a.org") == 3 and store.count(site="b.org") == 5
    assert store.delete_before(T0 + timedelta(minutes=5)) == 3  # b.org 0, 2, 4
    assert sorted(h["time"].minute for h in store.hits()) == [5, 6, 7, 8, 9]


def test_mongodb_documents_are_plain_hits(mongodb_base):
    from bson import ObjectId
    from pymongo import MongoClient

    hit = make_hit(0, title="x")
    store = open_store(f"{mongodb_base}/mongol_layout")
    store.insert_many([hit])
    store.close()
    with MongoClient(mongodb_base, tz_aware=True) as client:
        coll = client["mongol_layout"]["analytics"]
        doc = coll.find_one()
        names = {tuple(k for k, _ in index["key"].items()) for index in coll.list_indexes()}
        client.drop_database("mongol_layout")
    assert doc["_id"] == ObjectId(hit["_id"])
    assert doc["site"] == "a.org" and doc["title"] == "x" and doc["pageviews"] == 1
    assert ("time",) in names and ("site", "time") in names


def test_mongodb_uri_without_a_database_uses_mongol_and_its_options_are_pymongos(mongodb_base):
    from pymongo import MongoClient

    hit = make_hit(0)
    store = open_store(mongodb_base)
    try:
        assert "database mongol," in store.description
        store.insert_many([hit])
    finally:
        store.close()
    with MongoClient(mongodb_base) as client:
        stored = client["mongol"]["analytics"].find_one()
        client.drop_database("mongol")
    assert str(stored["_id"]) == hit["_id"]
    store = open_store(f"{mongodb_base}/mongol_options?w=majority&journal=true&serverSelectionTimeoutMS=3000")
    try:
        assert store.collection.write_concern.document == {"w": "majority", "j": True}
    finally:
        store.close()
        with MongoClient(mongodb_base) as client:
            client.drop_database("mongol_options")


def test_sqlite_layout(tmp_path):
    (tmp_path / "nested/dir").mkdir(parents=True)  # the folder must exist (tests/test_store_uris.py)
    store = open_store(f"sqlite://{tmp_path}/nested/dir/hits.db")
    store.insert_many([make_hit(0, title="x")])
    store.close()
    db = sqlite3.connect(tmp_path / "nested/dir/hits.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = db.execute("SELECT time, site, doc FROM hits").fetchone()
    assert row[0] == int(T0.timestamp()) * 1_000_000 + 123456
    assert row[1] == "a.org" and '"title":"x"' in row[2]
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"hits_time_id", "hits_site_time"} <= indexes


def test_sqlite_uri_forms():  # all of them: tests/test_store_uris.py
    assert sqlite_path("sqlite:///var/lib/mongol/m.db") == "/var/lib/mongol/m.db"
    assert sqlite_path("sqlite:////var/lib/mongol/m.db") == "/var/lib/mongol/m.db"
    with pytest.raises(StoreError):
        sqlite_path("sqlite://")


def test_bad_uris():
    with pytest.raises(StoreError, match="unknown store URI"):
        open_store("postgres://x")
    with pytest.raises(StoreError, match="cannot reach"):
        open_store("mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=200")
    for uri in ["mongodb://h:notaport/x", "mongodb://[::1/x", "mongodb://h:99999/x", "mongodb://h/in valid"]:
        with pytest.raises(StoreError, match=r"^bad MongoDB URI: "):
            open_store(uri)
    with pytest.raises(StoreError, match="cannot open the SQLite store"):
        open_store("sqlite:///proc/self/place.db")  # a folder, but no file can be made in it
    with pytest.raises(StoreError, match=r"^no SQLite store at /proc/no/such/place\.db: its folder /proc/no/such does "
                                         r"not exist"):
        open_store("sqlite:///proc/no/such/place.db")


WRITER = """
import sys
from datetime import UTC, datetime
from mongol.hit import new_id
from mongol.stores import open_store
store = open_store(sys.argv[1])
for batch in range(40):
    now = datetime.now(UTC)
    store.insert_many([{"_id": new_id(now.timestamp()), "time": now, "site": "w", "url": f"/{batch}/{i}",
                        "pageviews": 1} for i in range(250)])
store.close()
"""


def test_sqlite_writer_and_reporter_in_two_processes(tmp_path):
    """The serve process appends while a report process reads and purges: no 'database is locked'."""
    uri = f"sqlite://{tmp_path}/hits.db"
    open_store(uri).close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, uri], stderr=subprocess.PIPE)
    reader = open_store(uri)
    deleted = 0
    while writer.poll() is None:
        seen = sum(1 for _ in reader.hits(site="w"))
        assert seen >= 0
        deleted += reader.delete_before(datetime.now(UTC), site="w")
    assert writer.wait() == 0, writer.stderr.read().decode()
    writer.stderr.close()
    assert deleted + reader.count() == 40 * 250
    reader.close()


def expected_pages(hits, start=None, site=None):
    totals = {}
    for h in hits:
        if (start is None or h["time"] >= start) and (site is None or h.get("site") == site):
            key = tuple((k, h[k]) for k in ("url", "title") if k in h)
            totals[key] = totals.get(key, 0) + h["pageviews"]
    return totals


def got_pages(store, start=None, site=None):
    return {tuple(key.items()): value for key, value in store.pageviews_by_page(start, site)}


def test_pageviews_by_page_stays_exact_through_inserts_replays_and_purges(store):
    """The native default report (hourly sums on SQLite, $group on MongoDB) against a count of the hits."""
    hits = [make_hit(i * 7, site=["a.org", "b.org"][i % 2], url=f"/{i % 5}",
                     **({"title": f"T{i % 3}"} if i % 4 else {})) for i in range(400)]  # 400 hits over 46 hours
    store.insert_many(hits[:300])
    store.insert_many(hits[250:])  # 50 replayed
    starts = [None, T0, T0 + timedelta(minutes=95), T0 + timedelta(hours=20, seconds=1), T0 + timedelta(hours=60)]
    for start in starts:
        for site in (None, "a.org", "b.org"):
            assert got_pages(store, start, site) == expected_pages(hits, start, site)
    cutoff = T0 + timedelta(hours=13, minutes=17)  # in the middle of an hour
    store.delete_before(cutoff, site="a.org")
    left = [h for h in hits if not (h["time"] < cutoff and h["site"] == "a.org")]
    for start in starts:
        for site in (None, "a.org", "b.org"):
            assert got_pages(store, start, site) == expected_pages(left, start, site)
    store.delete_before(T0 + timedelta(days=30))
    assert got_pages(store) == {}


def test_sqlite_store_from_before_hourly_sums_is_migrated(tmp_path):
    uri = f"sqlite://{tmp_path}/old.db"
    hits = [make_hit(i * 13, url=f"/{i % 3}") for i in range(50)]
    store = open_store(uri)
    store.insert_many(hits)
    store.close()
    db = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    db.execute("DELETE FROM pageviews_hourly")
    db.execute("PRAGMA user_version = 0")  # as a store made before pageviews_hourly existed
    db.close()
    store = open_store(uri)
    assert got_pages(store) == expected_pages(hits)
    store.close()


TRICKY = [
    {"url": "/caf\u00e9?q=\u00e9t\u00e9", "title": "Caf\u00e9 \U0001f600 \"quoted\" back\\slash \\"},
    {"url": "/ctl", "title": "tab\there\nnewline \x01 \x1f \u2028 \x7f"},
    {"url": "/list", "title": ["one", "two"], "pageviews": "2"},
    {"url": "/nested", "title": {"a": [1, 2.5, None, True]}, "pageviews": 0.5},
    {"url": "/brace{in}a/string", "title": "t"},
    {"meta": {"url": "/inner", "title": "inner"}, "url": "/outer", "title": "outer"},
    {"url": "/flag", "pageviews": True},
    {"url": "/same", "title": True},
    {"url": "/same", "title": 1},
    {"url": "/same", "title": 1.0},
    {"url": "/null", "title": None, "pageviews": None},
    {"url": "/missing-views"},
    {"url": "/event", "pageviews": 0, "event": "click"},
    {"title": "no url", "note": '"url":"/not-a-key"'},
    {"url": "/nul\u0000byte", "title": "\u0000"},
    {"url": "/empty-site", "site": ""},
    {"url": "/escaped-site", "site": "\u00e9\\.org"},
]


@pytest.mark.parametrize("way", ["insert_records", "insert_lines", "insert_many", "with_replays"])
def test_sqlite_hourly_sums_made_in_python_are_what_sql_reads_from_the_stored_docs(tmp_path, way):
    """Rows and hourly keys are made in Python (stores/sqlite_rows.py); a purge reads the keys back
    from the stored docs in SQL (HOURLY_KEY). Both must agree byte for byte, whatever the values
    hold, on the plain path and on the one that learns which hits of a batch were new."""
    from mongol.journal import encode
    from mongol.stores import sqlite as sqlite_store

    hits = []
    for n, extra in enumerate(TRICKY * 3):
        hit = {"_id": new_id(T0.timestamp()), "time": sqlite_store.to_us(T0 + timedelta(minutes=25 * n)),
               "site": ["a.org", "b.org", ["x", "y"]][n % 3], "pageviews": 1, **extra}
        if n % 3 == 2:
            del hit["site"]
        hits.append(hit)
    lines = [encode(h).rstrip(b"\n") for h in hits]
    store = open_store(f"sqlite://{tmp_path}/{way}.db")
    if way == "insert_records":
        assert store.insert_records([orjson_loads(line) for line in lines]) == len(hits)
    elif way == "insert_lines":
        assert store.insert_lines(list(lines)) == len(hits)
    elif way == "insert_many":
        assert store.insert_many([{**h, "time": sqlite_store.from_us(h["time"])} for h in hits]) == len(hits)
    else:
        assert store.insert_lines(lines[::2]) == len(lines[::2])
        assert store.insert_lines(list(lines)) == len(lines[1::2])  # half of them stored already
    db = store._db
    stored = {i: (t, s, orjson_loads(d)) for i, t, s, d in db.execute("SELECT id, time, site, doc FROM hits")}
    for hit in hits:
        site = hit["site"] if isinstance(hit.get("site"), str) else None
        doc = {k: v for k, v in hit.items() if k not in ("_id", "time")}
        assert stored[hit["_id"]] == (hit["time"], site, doc)
    table = {(h, s, u, t): [v, n] for h, s, u, t, v, n in db.execute("SELECT * FROM pageviews_hourly")}
    assert table == sqlite_store._by_hour(db.execute(f"SELECT {sqlite_store.HOURLY_KEY} FROM hits"))
    assert len(table) == len(hits)  # one hour each
    assert store.delete_before(T0 + timedelta(days=2)) == len(hits)
    assert db.execute("SELECT count(*) FROM pageviews_hourly").fetchone()[0] == 0
    store.close()


def test_a_batch_with_a_replayed_hit_stores_only_the_new_ones_and_counts_them(tmp_path):
    from mongol.journal import encode

    store = open_store(f"sqlite://{tmp_path}/h.db")
    hits = [{"_id": new_id(T0.timestamp()), "time": 1_796_000_000_000_000 + n, "site": "a.org", "url": "/",
             "pageviews": 1} for n in range(10)]
    lines = [encode(h).rstrip(b"\n") for h in hits]
    assert store.insert_lines(lines[:4]) == 4
    assert store.insert_lines(lines[2:]) == 6  # two were there
    assert store.count() == 10
    assert store._db.execute("SELECT views, hits FROM pageviews_hourly").fetchall() == [(10, 10)]
    store.close()


def orjson_loads(text):
    import orjson

    return orjson.loads(text)
