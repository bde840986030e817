"""mongol-report end to end: real stores, the real CLI, files evaluated by a real JavaScript engine (Node).

Expected results are computed here in plain Python from the hits the test inserted.
"""

import json
import os
import subprocess
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mongol.hit import new_id
from mongol.mapreduce import MapReduceError, map_reduce, map_reduce_source, mapper_fields
from mongol.report import compute
from mongol.reportconfig import DEFAULT_MAPPER, DEFAULT_REDUCER, ReportSpec
from mongol.stores import open_store
from tests.conftest import BIN, wait_until

HERE = Path(__file__).parent
NOW = datetime.now(UTC)


def hit(ago: timedelta, site="a.org", url="/", **fields):
    when = NOW - ago
    return {"_id": new_id(when.timestamp()), "time": when, "site": site, "url": url, "pageviews": 1, **fields}


def report(config: Path, store_uri: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mongol-report"), str(config), "--db", store_uri, *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def read_jsonp(path: Path, callback: str = "results"):
    out = subprocess.run(["node", str(HERE / "jsonp.js"), str(path), callback], capture_output=True, text=True,
                         timeout=30, check=True)
    return json.loads(out.stdout)


def write_config(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "reports.cfg"
    config.write_text(text.replace("OUT", str(tmp_path / "out")))
    return config


def top(counter: Counter, limit: int = 10, descending: bool = True) -> list:
    """Expected rows from a Counter of JSON-encoded keys, sorted on count then key (strings/objects alike)."""
    rows = sorted(counter.items(), key=lambda kv: kv[0])
    rows.sort(key=lambda kv: kv[1], reverse=descending)
    return [{"_id": json.loads(k), "value": v} for k, v in (rows[:limit] if limit else rows)]


def make_pages() -> list[dict]:
    """A spread of page views over 5 days."""
    hits = []
    for i in range(400):
        page = f"/p{(i * 7) % 23}"
        fields = {"title": f"Page {page}"} if i % 5 else {}
        hits.append(hit(timedelta(hours=i * 0.3), url=page, lang=["en", "fr", "de"][i % 3], **fields))
    return hits


@pytest.fixture
def pages(store):
    hits = make_pages()
    store.insert_many(hits)
    return hits


def page_key(h):
    key = {"url": h["url"]}
    if "title" in h:
        key["title"] = h["title"]
    return json.dumps(key)


def test_default_report_counts_pages_in_the_window(tmp_path, store_uri, pages):
    config = write_config(tmp_path, "[top]\noutput = OUT\ntime = days:2\n")
    result = report(config, store_uri)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # quiet under cron
    expected = Counter(page_key(h) for h in pages if h["time"] > NOW - timedelta(days=2))
    assert read_jsonp(tmp_path / "out" / "top.json") == top(expected)


def test_order_limit_site_and_callback(tmp_path, store_uri, store, pages):
    store.insert_many([hit(timedelta(minutes=5), site="b.org", url="/b") for _ in range(3)])
    config = write_config(tmp_path, "[DEFAULT]\noutput = OUT\n"
                                    "[asc]\norder = A\nlimit = 3\n"
                                    "[all]\nlimit = 0\ncallback = mongol.top\n"
                                    "[b]\nsite = b.org\n")
    assert report(config, store_uri).returncode == 0
    everything = Counter(page_key(h) for h in pages) + Counter({json.dumps({"url": "/b"}): 3})
    assert read_jsonp(tmp_path / "out" / "asc.json") == top(everything, 3, descending=False)
    assert read_jsonp(tmp_path / "out" / "all.json", "mongol.top") == top(everything, 0)
    assert read_jsonp(tmp_path / "out" / "b.json") == [{"_id": {"url": "/b"}, "value": 3}]


def test_native_path_equals_javascript(tmp_path, store_uri, pages):
    """The default report (native SQL / $group) and the same map/reduce in JavaScript give the same file."""
    same_mapper = "function () {\n  emit({url: this.url, title: this.title}, this.pageviews);\n  }"
    same_reducer = "function (k, values) {\n  return Array.sum(values);\n  }"
    config = write_config(tmp_path, f"[DEFAULT]\noutput = OUT\nlimit = 0\ntime = days:3\n[native]\n"
                                    f"[js]\nmapper = {same_mapper}\nreducer = {same_reducer}\n")
    result = report(config, store_uri)
    assert result.returncode == 0, result.stderr
    native = (tmp_path / "out" / "native.json").read_bytes()
    assert native == (tmp_path / "out" / "js.json").read_bytes()
    assert len(read_jsonp(tmp_path / "out" / "native.json")) == 46  # 23 pages, with and without a title


def test_custom_keys_numbers_strings_dates_objects(tmp_path, store_uri, store):
    hits = [hit(timedelta(hours=h), url=f"/{h % 4}", w=str(1000 + (h % 3) * 10), lang=["en", "fr"][h % 2])
            for h in range(0, 72)]
    store.insert_many(hits)
    config = write_config(tmp_path, """
[DEFAULT]
output = OUT
limit = 0
[widths]
mapper = function () { emit(parseInt(this.w, 10), 1); }
reducer = function (k, v) { return Array.sum(v); }
[days]
mapper = function () {
    var t = this.time;
    emit(new Date(Date.UTC(t.getUTCFullYear(), t.getUTCMonth(), t.getUTCDate())), this.pageviews);
  }
reducer = function (k, v) { return Array.sum(v); }
order = A
[pairs]
mapper = function () { emit({lang: this.lang, url: this.url}, {n: 1}); }
reducer = function (k, vs) { var n = 0; vs.forEach(function (v) { n += v.n; }); return {n: n}; }
finalize = function (k, v) { return v.n * 10; }
""")
    result = report(config, store_uri)
    assert result.returncode == 0, result.stderr
    widths = Counter(json.dumps(int(h["w"])) for h in hits)
    assert read_jsonp(tmp_path / "out" / "widths.json") == top(widths, 0)
    days = Counter(h["time"].strftime("%Y-%m-%dT00:00:00.000Z") for h in hits)
    got_days = read_jsonp(tmp_path / "out" / "days.json")
    assert {row["_id"]: row["value"] for row in got_days} == dict(days)
    assert [row["value"] for row in got_days] == sorted(days.values())
    pairs = Counter(json.dumps({"lang": h["lang"], "url": h["url"]}) for h in hits)
    assert read_jsonp(tmp_path / "out" / "pairs.json") == [
        {"_id": row["_id"], "value": row["value"] * 10} for row in top(pairs, 0)]


def test_rereduce_with_many_values_per_key(tmp_path, store_uri, store):
    store.insert_many([hit(timedelta(seconds=i), url="/hot" if i % 10 else f"/cold{i}") for i in range(6000)])
    # calls counts the reduce calls behind a value: above 1 only if reduce was given its own output,
    # and views is only right then if reduce accepts it (a count of values would be wrong).
    config = write_config(tmp_path, """
[hot]
output = OUT
limit = 2
mapper = function () { emit(this.url, {views: 1, calls: 0}); }
reducer = function (k, vs) {
    var s = 0, calls = 0;
    vs.forEach(function (v) { s += v.views; calls += v.calls; });
    return {views: s, calls: calls + 1};
  }
""")
    result = report(config, store_uri)  # SQLite: the workers read the file; MongoDB: the parent feeds them
    assert result.returncode == 0, result.stderr
    rows = read_jsonp(tmp_path / "out" / "hot.json")
    assert rows[0]["_id"] == "/hot" and rows[0]["value"]["views"] == 5400
    assert rows[0]["value"]["calls"] > 1  # reduced more than once, partly on reduced values
    assert rows[1]["value"] == {"views": 1, "calls": 0}  # emitted once: not reduced


# The workers read SQLite themselves -------------------------------------------------------------

def odd_hits() -> list[dict]:
    """Hits over 3 days and 2 sites, with what the JSON of a stored doc can make hard."""
    hits = [hit(timedelta(minutes=7 * i), site=["a.org", "b.org"][i % 2], url=f"/{i % 13}", n=i,
                **({"title": f"T\u00e9 {i % 5}"} if i % 4 else {})) for i in range(600)]
    same = NOW - timedelta(hours=5)  # more hits at one time than a batch holds
    hits += [{"_id": new_id(same.timestamp()), "time": same, "site": "a.org", "url": "/same", "pageviews": 1}
             for _ in range(30)]
    when = NOW - timedelta(hours=1)
    hits += [hit(timedelta(hours=2), title=None), hit(timedelta(hours=2), url=None),
             hit(timedelta(hours=3), nested={"a": [1, {"b": "\u2028"}], "when": when, "\x00date": 5}),
             hit(timedelta(hours=3), **{"__proto__": {"x": 1}, "quote": 'a"b\\c'}),
             {"_id": new_id(NOW.timestamp()), "time": NOW - timedelta(hours=4)}]  # a doc of {}
    return hits


WHOLE_HIT = """function () {
    var keys = Object.keys(this), out = {}, types = [];
    keys.forEach(function (k) { out[k] = this[k]; types.push(Object.prototype.toString.call(this[k])); }, this);
    emit(keys.join() + types.join(), {n: 1, hits: [out], proto: Object.getPrototypeOf(this) === Object.prototype});
}"""
COLLECT = "function (k, vs) { var r = {n: 0, hits: []}; vs.forEach(function (v) { r.n += v.n; " \
          "r.hits = r.hits.concat(v.hits); r.proto = v.proto; }); return r; }"
SORT_HITS = "function (k, v) { v.hits.sort(function (a, b) { return a._id < b._id ? -1 : 1; }); return v; }"


@pytest.mark.parametrize(("mapper", "reducer", "finalize"), [
    (DEFAULT_MAPPER, DEFAULT_REDUCER, None),
    ("function () { emit(this.title === null ? 'null' : typeof this.title, this.n || 0); }", DEFAULT_REDUCER, None),
    ("function () { emit(this.time.toISOString().slice(0, 13), this._id.length); }", DEFAULT_REDUCER, None),
    (WHOLE_HIT, COLLECT, SORT_HITS),
])
def test_workers_reading_sqlite_give_what_the_hits_give(tmp_path, mapper, reducer, finalize):
    store = open_store(f"sqlite://{tmp_path}/hits.db")
    store.insert_many(odd_hits())
    rows = store._db.execute("SELECT min(rowid), max(rowid) FROM hits").fetchone()
    try:
        for start, site in [(None, None), (NOW - timedelta(days=1), None), (NOW - timedelta(days=2), "a.org"),
                            (NOW - timedelta(hours=1), "c.org")]:
            expected = map_reduce(list(store.hits(start, None, site)), mapper, reducer, finalize)
            for by_rowid in (True, False):  # either way of reading works for any window
                source = store.hit_source(start, site, mapper_fields(mapper))
                source.rows = rows if by_rowid else None
                source.batch, source.part_batches = 7, 3  # many parts; by time, batches of one time cut in the worker
                got = map_reduce_source(source, mapper, reducer, finalize, workers=2)
                assert sorted(got, key=repr) == sorted(expected, key=repr)
                assert source.count() == len(list(store.hits(start, None, site)))
        assert store.hit_source(None, None, None).rows == rows  # all of the table: by rowid
        assert store.hit_source(NOW - timedelta(hours=6), None, None).rows is None  # a few percent of it: by time
    finally:
        store.close()


@pytest.mark.parametrize("by_rowid", [True, False])
def test_hits_stored_after_the_run_starts_wait_for_the_next(tmp_path, by_rowid):
    store = open_store(f"sqlite://{tmp_path}/hits.db")
    try:
        store.insert_many([hit(timedelta(minutes=i + 1)) for i in range(100)])
        source = store.hit_source(None, None, None)
        assert source.rows is not None  # the whole table: read by rowid unless told otherwise
        if not by_rowid:
            source.rows = None
        store.insert_many([hit(timedelta(seconds=-i - 1)) for i in range(50)])  # newer, stored as the run starts
        assert store.count() == 150
        by_url = map_reduce_source(source, "function () { emit(this.url, 1); }", DEFAULT_REDUCER, workers=2)
        assert by_url == [("/", 100)]
    finally:
        store.close()


def report_spec(mapper: str, window: timedelta | None = None) -> ReportSpec:
    return ReportSpec(name="s", output=Path("/nonexistent"), window=window, site=None, callback="results", limit=0,
                      descending=True, mapper=mapper, reducer=DEFAULT_REDUCER, finalize=None, pipeline=None,
                      engine="embedded", cpu_seconds=60, memory_mb=64)


def test_progress_while_workers_read_sqlite(tmp_path):
    store = open_store(f"sqlite://{tmp_path}/hits.db")
    store.insert_many(make_pages())
    counts = []

    def progress(batches, total):
        counts.append(total)
        for count, batch in batches:
            counts.append(count)
            yield count, batch

    try:
        rows = compute(report_spec("function () { emit(this.lang, 1); }", timedelta(days=2)), store, NOW, progress)
        in_window = store.count(NOW - timedelta(days=2))
        assert sum(row["value"] for row in rows) == in_window == counts[0] == sum(counts[1:])
    finally:
        store.close()


def test_a_store_the_workers_cannot_read(tmp_path):
    store = open_store(f"sqlite://{tmp_path}/hits.db")
    try:
        store.insert_many(make_pages())
        source = store.hit_source(None, None, None)
        for path in tmp_path.glob("hits.db*"):  # gone by the time the workers open it
            path.unlink()
        with pytest.raises(MapReduceError, match=r"^cannot read the SQLite store .*/hits.db: unable to open"):
            map_reduce_source(source, DEFAULT_MAPPER, DEFAULT_REDUCER)
    finally:
        store.close()


# Purging ---------------------------------------------------------------------------------------

AGES = {"1h": timedelta(hours=1), "30h": timedelta(hours=30), "3d": timedelta(days=3), "10d": timedelta(days=10)}


@pytest.fixture
def aged(store):
    store.insert_many([hit(age, site=site, url=f"/{name}") for site in ("a.org", "b.org", "c.org")
                       for name, age in AGES.items()])


def remaining(store, site):
    return sorted(h["url"] for h in store.hits(site=site))


def test_purge_is_scoped_and_respects_longer_windows(tmp_path, store_uri, store, aged):
    config = write_config(tmp_path, """
[DEFAULT]
output = OUT
[a.org]
time = days:2
[a-week]
site = a.org
time = days:7
[b]
site = b.org
time = days:1
""")
    assert report(config, store_uri).returncode == 0
    assert remaining(store, "a.org") == ["/1h", "/30h", "/3d"]  # [a-week] still reads /3d
    assert remaining(store, "b.org") == ["/1h", "/30h"]  # [a.org] has no site option: it reads b's 2 days
    assert remaining(store, "c.org") == ["/10d", "/1h", "/30h", "/3d"]  # no section removes c.org's hits


def test_a_section_without_window_reading_all_sites_keeps_everything(tmp_path, store_uri, store, aged):
    config = write_config(tmp_path, "[DEFAULT]\noutput = OUT\n[a.org]\ntime = hours:2\n[everything]\n")
    assert report(config, store_uri).returncode == 0
    assert store.count() == 12
    dry = report(config, store_uri, "--dry-run")
    assert "[a.org] would remove nothing: [everything] reads them with no time window" in dry.stdout


def test_dry_run_changes_nothing(tmp_path, store_uri, store, aged):
    config = write_config(tmp_path, "[a.org]\noutput = OUT/deeper\ntime = days:2\n")
    result = report(config, store_uri, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"[a.org] would write {tmp_path}/out/deeper/a.org.json (2 results)" in result.stdout
    assert "[a.org] would remove 2 hits of site 'a.org' older than" in result.stdout
    assert not (tmp_path / "out").exists()
    assert store.count() == 12


# Errors ----------------------------------------------------------------------------------------

CONFIG_ERRORS = [
    ("[s]\ntime = days:2\n", "[s] output: required"),
    ("[s]\noutput = OUT\ntime = days2\n", "[s] time: 'days2' is not unit:int"),
    ("[s]\noutput = OUT\ntime = fortnights:2\n", "[s] time: 'fortnights:2' is not unit:int"),
    ("[s]\noutput = OUT\ntime = days:0\n", "[s] time: it is zero"),
    ("[s]\noutput = OUT\ncallback = alert(1)\n", "[s] callback: 'alert(1)' is not a JavaScript identifier"),
    ("[s]\noutput = OUT\ncallback = function\n", "[s] callback: 'function' starts with the reserved word"),
    ("[s]\noutput = OUT\nlimit = -1\n", "[s] limit: '-1' is not a whole number"),
    ("[s]\noutput = OUT\norder = X\n", "[s] order: 'X' is not one of A, D"),
    ("[s]\noutput = OUT\nouput = x\n", "[s] ouput: unknown option (did you mean output?)"),
    ("[s]\noutput = OUT\nmapper = function ( { emit(1,1) }\n", "[s] mapper:"),
    ("[s]\noutput = OUT\nreducer = function (k, v) { return }}\n", "[s] reducer:"),
    ("[s]\noutput = OUT\nfinalize = not javascript at all\n", "[s] finalize:"),
    ("[s]\noutput = OUT\npipeline = [{$group: 1}]\n", "[s] pipeline: it is not JSON"),
    ("[s]\noutput = OUT\ncpu_limit = 0\n", "[s] cpu_limit: '0' is not a whole number of at least 1"),
    ("[s]\noutput = OUT\nengine = bogus\n", "[s] engine: 'bogus' is not one of embedded, server"),
    ("[s]\noutput = OUT\nmemory_limit = 8\n", "[s] memory_limit: '8' is not a whole number of at least 16"),
    ("[s]\noutput = OUT\nmemory_limit = x\n", "[s] memory_limit: 'x' is not a whole number of at least 16"),
    ("[s]\noutput = OUT\npipeline = {}\n", "[s] pipeline: it must be a JSON array of stages"),
    ("[s]\noutput = OUT\npipeline = [1]\n", "[s] pipeline: it must be a JSON array of stages"),
    ("[DEFAULT]\noutptu = OUT\n", "[DEFAULT] outptu: unknown option (did you mean output?)"),
    ("[s/x]\noutput = OUT\n", "[s/x] (section name)"),
    ("output = OUT\n", "it is not an INI file"),
    ("", "no report sections"),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_ERRORS)
def test_config_errors_are_one_line_exit_2_nothing_written(tmp_path, text, message):
    config = write_config(tmp_path, "[good]\noutput = OUT\n" + text if text.startswith("[") else text)
    result = report(config, f"sqlite://{tmp_path}/hits.db")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"mongol-report: {config}: ")
    assert message in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "hits.db").exists()


def test_a_config_file_that_is_not_utf8(tmp_path):
    config = tmp_path / "reports.cfg"
    config.write_bytes(f"[s]\noutput = {tmp_path}/out\nsite = caf\u00e9.org\n".encode("latin-1"))
    result = report(config, f"sqlite://{tmp_path}/hits.db")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"mongol-report: {config}: it is not UTF-8 text: ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "hits.db").exists()


def test_all_config_errors_are_listed(tmp_path):
    config = write_config(tmp_path, "[a]\ntime = x\n[b]\noutput = OUT\norder = Z\nlimit = many\n")
    result = report(config, f"sqlite://{tmp_path}/hits.db")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[2] for line in lines] == ["[a] time", "[a] output", "[b] limit", "[b] order"]


@pytest.mark.parametrize("option", ["pipeline = []", "engine = server"])
def test_mongodb_only_options_on_the_embedded_store(tmp_path, option):
    config = write_config(tmp_path, f"[s]\noutput = OUT\n{option}\n")
    result = report(config, f"sqlite://{tmp_path}/hits.db")
    assert result.returncode == 2
    assert "needs a MongoDB store" in result.stderr


def test_missing_config_file(tmp_path):
    result = report(tmp_path / "nope.cfg", f"sqlite://{tmp_path}/hits.db")
    assert result.returncode == 2
    assert result.stderr.strip() == f"mongol-report: {tmp_path}/nope.cfg: cannot read it: No such file or directory"


def test_runaway_mapper_fails_its_section_only(tmp_path, store_uri, pages):
    config = write_config(tmp_path, """
[DEFAULT]
output = OUT
[loop]
cpu_limit = 1
mapper = function () { while (true) {} }
[hog]
memory_limit = 32
mapper = function () { var a = []; while (true) { a.push(new Array(100000).fill(1)); } }
[fine]
""")
    result = report(config, store_uri, timeout=60)
    assert result.returncode == 1
    assert "[loop] failed:" in result.stderr and "CPU time limit" in result.stderr
    assert "[hog] failed:" in result.stderr and "memory" in result.stderr
    assert "2 of 3 sections failed: loop, hog" in result.stderr
    assert read_jsonp(tmp_path / "out" / "fine.json")
    assert not (tmp_path / "out" / "loop.json").exists()


def test_a_failed_run_keeps_the_previous_report(tmp_path, store_uri, pages):
    config = write_config(tmp_path, "[s]\noutput = OUT\n")
    assert report(config, store_uri).returncode == 0
    before = (tmp_path / "out" / "s.json").read_bytes()
    config.write_text(config.read_text() + "mapper = function () { throw new Error('boom'); }\n")
    result = report(config, store_uri)
    assert result.returncode == 1 and "boom" in result.stderr
    assert (tmp_path / "out" / "s.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "dashboard.css", "dashboard.js", "index.html", "reports.js", "s.json", "standard.js"]  # no temporary file left


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_mistyped_sqlite_path_is_refused_before_anything_is_written(tmp_path, dry_run):
    """Opening it would create an empty store, then publish empty reports over the good ones."""
    good = f"sqlite://{tmp_path}/hits.db"
    store = open_store(good)
    store.insert_many(make_pages())
    store.close()
    config = write_config(tmp_path, "[s]\noutput = OUT\n")
    assert report(config, good).returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    config.write_text(config.read_text() + "[t]\n[DEFAULT]\noutput = " + str(tmp_path / "out") + "\n")
    wrong = tmp_path / "mistyped" / "path.db"
    result = report(config, f"sqlite://{wrong}", *(["--dry-run"] if dry_run else []))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (f"mongol-report: no SQLite store at {wrong}: its folder {wrong.parent} does not exist "
                             f"(from sqlite://{wrong}); create the folder or correct the URI\n")
    assert not (tmp_path / "mistyped").exists()
    result = report(config, f"sqlite://{tmp_path}/typo.db", *(["--dry-run"] if dry_run else []))
    assert result.returncode == 1
    assert result.stderr == (f"mongol-report: no SQLite store at {tmp_path}/typo.db: mongol-serve creates it when it "
                             "starts (is --db right?); nothing written\n")
    assert not (tmp_path / "typo.db").exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # s.json kept, no t.json


def test_the_default_store_not_created_yet(tmp_path):
    config = write_config(tmp_path, "[s]\noutput = OUT\n")
    env = {k: v for k, v in os.environ.items() if k != "MONGOL_DB"}
    for args in ([], ["--dry-run"]):
        result = subprocess.run([str(BIN / "mongol-report"), str(config), *args], capture_output=True, text=True,
                                env={**env, "XDG_DATA_HOME": str(tmp_path / "data")}, timeout=60,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 1
        assert result.stderr == (f"mongol-report: no SQLite store at {tmp_path}/data/mongol/mongol.db, the default "
                                 "embedded store: mongol-serve creates it when it starts (or give --db or "
                                 "$MONGOL_DB); nothing written\n")
        assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
    result = subprocess.run([str(BIN / "mongol-report"), str(config)], capture_output=True, text=True,
                            env={**env, "MONGOL_DB": f"sqlite://{tmp_path}/env.db"}, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr == (f"mongol-report: no SQLite store at {tmp_path}/env.db: mongol-serve creates it when it "
                             "starts (is $MONGOL_DB right?); nothing written\n")
    assert not (tmp_path / "env.db").exists() and not (tmp_path / "out").exists()


def test_store_unreachable(tmp_path):
    config = write_config(tmp_path, "[s]\noutput = OUT\n")
    result = report(config, "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=300")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("mongol-report: cannot reach MongoDB 127.0.0.1:1")


def test_readers_never_see_a_partial_file(tmp_path, store_uri, store):
    store.insert_many([hit(timedelta(minutes=i), url=f"/{i}" * (i % 50 + 1)) for i in range(300)])
    config = write_config(tmp_path, "[s]\noutput = OUT\nlimit = 0\n")
    assert report(config, store_uri).returncode == 0
    target = tmp_path / "out" / "s.json"
    seen, bad, stop = [], [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            seen.append(len(data))
            if not (data.startswith(b"results([") and data.endswith(b"]);\n")):
                bad.append(data[-40:])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for limit in (0, 5, 0, 7, 0):
            config.write_text(f"[s]\noutput = {tmp_path}/out\nlimit = {limit}\n")
            assert report(config, store_uri).returncode == 0
    finally:
        stop.set()
        reader.join()
    assert len(set(seen)) >= 2 and not bad


def test_lock_keeps_a_second_run_out(tmp_path, store_uri, pages):
    import fcntl

    config = write_config(tmp_path, "[s]\noutput = OUT\n")
    with open(config, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        result = report(config, store_uri)
        assert result.returncode == 75
        assert "another mongol-report is working on" in result.stderr
        waiting = subprocess.Popen([str(BIN / "mongol-report"), str(config), "--db", store_uri, "--wait"],
                                   stderr=subprocess.PIPE, text=True)
        wait_until(lambda: f" {waiting.pid} " in _blocked_locks(), 20, "the second run to wait on the lock")
        assert not (tmp_path / "out").exists()
    assert waiting.wait(60) == 0, waiting.stderr.read()
    waiting.stderr.close()
    assert (tmp_path / "out" / "s.json").exists()


def _blocked_locks() -> str:
    return "".join(line for line in Path("/proc/locks").read_text().splitlines(keepends=True) if "->" in line)


def test_progress_bar_on_a_terminal_only(tmp_path, store_uri, pages):
    import fcntl
    import pty
    import struct
    import termios

    config = write_config(tmp_path, "[s]\noutput = OUT\nmapper = function () { emit(this.lang, 1); }\n")
    quiet = report(config, store_uri)
    assert quiet.returncode == 0 and quiet.stderr == ""
    pid, fd = pty.fork()
    if pid == 0:  # the child, on a terminal of 100 columns
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        os.execv(str(BIN / "mongol-report"), [str(BIN / "mongol-report"), str(config), "--db", store_uri])
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"/400 [" in b"".join(chunks)  # the bar: done/total [elapsed...


# The file format -------------------------------------------------------------------------------

def test_file_format_dates_separators_and_counts(tmp_path, store_uri, store):
    store.insert_many([hit(timedelta(minutes=1), url="/x", title="line\u2028sep\u2029para </script>"),
                       hit(timedelta(minutes=2), url="/x", title="line\u2028sep\u2029para </script>")])
    config = write_config(tmp_path, """
[DEFAULT]
output = OUT
[titles]
[first]
mapper = function () { emit(this.url, this.time); }
reducer = function (k, v) { return v.reduce(function (a, b) { return a < b ? a : b; }); }
""")
    assert report(config, store_uri).returncode == 0
    raw = (tmp_path / "out" / "titles.json").read_bytes()
    assert b"\\u2028" in raw and b"\\u2029" in raw and "\u2028".encode() not in raw
    assert raw.startswith(b"results([") and raw.endswith(b"]);\n")
    assert read_jsonp(tmp_path / "out" / "titles.json") == [
        {"_id": {"url": "/x", "title": "line\u2028sep\u2029para </script>"}, "value": 2}]
    [row] = read_jsonp(tmp_path / "out" / "first.json")
    first = datetime.fromisoformat(row["value"].replace("Z", "+00:00"))
    assert row["value"].endswith("Z") and abs(first - (NOW - timedelta(minutes=2))) < timedelta(milliseconds=2)


def test_output_folder_is_created_with_tilde(tmp_path, store_uri, pages, monkeypatch):
    config = write_config(tmp_path, "[s]\noutput = ~/reports/site\n")
    env_home = tmp_path / "home"
    result = subprocess.run([str(BIN / "mongol-report"), str(config), "--db", store_uri], capture_output=True,
                            text=True, env={**os.environ, "HOME": str(env_home)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert read_jsonp(env_home / "reports" / "site" / "s.json")


# MongoDB only ----------------------------------------------------------------------------------

@pytest.fixture
def mongo_pages(mongodb_uri):
    hits = make_pages()
    store = open_store(mongodb_uri)
    store.insert_many(hits)
    store.close()
    return hits


def test_pipeline(tmp_path, mongodb_uri, mongo_pages):
    config = write_config(tmp_path, """
[langs]
output = OUT
time = days:1
pipeline = [{"$group": {"_id": "$lang", "value": {"$sum": "$pageviews"}}}]
[ids]
output = OUT
limit = 1
pipeline = [{"$group": {"_id": "$_id", "value": {"$sum": 1}}}]
""")
    result = report(config, mongodb_uri)
    assert result.returncode == 0, result.stderr
    langs = Counter(json.dumps(h["lang"]) for h in mongo_pages if h["time"] > NOW - timedelta(days=1))
    assert read_jsonp(tmp_path / "out" / "langs.json") == top(langs)
    [row] = read_jsonp(tmp_path / "out" / "ids.json")
    assert row["value"] == 1 and row["_id"] in {h["_id"] for h in mongo_pages}


def test_server_engine(tmp_path, mongodb_uri, mongo_pages):
    """The server's mapReduce where it exists (a real mongod); a clear failure where it does not."""
    js = "mapper = function () { emit(this.lang, 1); }\nreducer = function (k, v) { return Array.sum(v); }\n"
    config = write_config(tmp_path, f"[DEFAULT]\noutput = OUT\n{js}[server]\nengine = server\n[embedded]\n")
    result = report(config, mongodb_uri)
    if os.environ.get("MONGOL_TEST_MONGODB_URI"):
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "out" / "server.json").read_bytes() == (tmp_path / "out" / "embedded.json").read_bytes()
    else:
        assert result.returncode == 1
        assert "[server] failed: OperationFailure: no such command: 'mapReduce'" in result.stderr
        langs = Counter(json.dumps(h["lang"]) for h in mongo_pages)
        assert read_jsonp(tmp_path / "out" / "embedded.json") == top(langs)
