"""The standard reports on both stores: kept days against figures computed from the hits one by one,
incremental runs, replays, purges, time zones; and mongol-report publishing them as JSONP files."""

import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mongol import standard
from mongol.reportconfig import load
from mongol.stores import open_store
from tests.conftest import BIN
from tests.standard_hits import SITE, expected, make_hits

NOW = datetime.now(UTC).replace(microsecond=0)
ROOT = Path(__file__).parent.parent


def spec_for(tmp_path: Path, zone: str = "UTC", extra: str = "") -> object:
    config = tmp_path / "std.cfg"
    config.write_text(f"[std]\noutput = {tmp_path}/out\nstandard = yes\nsite = {SITE}\ntimezone = {zone}\n{extra}")
    return load(config, mongodb=False)[0]


def shape(totals: list, doc: dict) -> dict:
    """A kept day in the reference's shape (tests/standard_hits.expected)."""
    def table(name: str) -> dict:
        return {(row[0] if len(row) == 2 else tuple(row[:-1])): row[-1] for row in doc[name]}

    return {"pageviews": totals[0], "visitors": totals[1], "bots": totals[2],
            "hours": {h: (pv, v, b) for h, pv, v, b in doc["hours"]},
            "pages": {url: (n, title) for url, title, n in doc["pages"]},
            **{name: table(name) for name in standard.TABLES if name != "pages"}}


def kept(store, spec) -> dict[str, dict]:
    key = standard.report_key(spec)
    days = store.kept_days(key)
    docs = store.kept_docs(key, "0000-00-00", "9999-99-99")
    return {day: shape(totals, docs[day]) for day, (_, totals) in days.items()}


def test_kept_days_are_the_figures_of_the_hits(store, tmp_path):
    hits = make_hits(NOW)
    store.insert_many(hits)
    spec = spec_for(tmp_path)
    result = standard.update(store, spec)
    want = expected(hits)
    assert len(want) >= 12 and sorted(d.isoformat() for d in result.recomputed) == sorted(want)
    assert kept(store, spec) == want
    assert standard.update(store, spec).recomputed == []  # nothing new: nothing recomputed


def test_a_run_recomputes_only_the_days_that_received_hits(store, tmp_path):
    hits = make_hits(NOW)
    store.insert_many(hits)
    spec = spec_for(tmp_path)
    standard.update(store, spec)
    late = make_hits(NOW - timedelta(days=5), days=1, seed=99)  # hits of five and six days ago, arriving now
    late = [h for h in late if h["site"] == SITE]
    store.insert_many(late)
    result = standard.update(store, spec)
    assert {d.isoformat() for d in result.recomputed} == {h["time"].date().isoformat() for h in late}
    assert len(result.recomputed) <= 2 and result.frozen == []
    assert kept(store, spec) == expected(hits + late)
    store.insert_many(hits)  # replayed: every one already stored
    result = standard.update(store, spec)
    assert kept(store, spec) == expected(hits + late)


def test_kept_days_outlive_the_purge_of_raw_hits(store, tmp_path):
    hits = make_hits(NOW)
    store.insert_many(hits)
    spec = spec_for(tmp_path)
    standard.update(store, spec)
    cutoff = NOW - timedelta(days=2)
    assert store.delete_before(cutoff, SITE) > 0
    assert store.count(end=cutoff, site=SITE) == 0
    recent = make_hits(NOW, days=1, seed=5)
    old = [{**h, "_id": h["_id"][:-4] + "beef", "time": h["time"] - timedelta(days=6)} for h in recent[:3]]
    store.insert_many(recent + old)  # new hits today, and late ones for a purged day
    result = standard.update(store, spec)
    assert {d.isoformat() for d in result.frozen} == {h["time"].date().isoformat() for h in old}
    want = expected(hits + recent)  # the late hits of a purged day are not counted; the rest is exact
    assert kept(store, spec) == want


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Asia/Kolkata", "America/Los_Angeles"])
def test_days_and_hours_of_a_time_zone(store, tmp_path, zone):
    """Across the end of summer time in Europe and America (2026-10-25, 2026-11-01) and a half-hour offset."""
    end = datetime(2026, 11, 3, 12, tzinfo=UTC)
    hits = make_hits(end, days=12, seed=3, per_hour=2)
    store.insert_many(hits)
    spec = spec_for(tmp_path, zone)
    standard.update(store, spec)
    assert kept(store, spec) == expected(hits, zone)


def test_segments_cut_at_the_transition():
    from zoneinfo import ZoneInfo

    day = datetime(2026, 10, 25).date()
    spans = standard.segments([day], ZoneInfo("Europe/Berlin"))
    assert spans == [(datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC),
                      timedelta(hours=2)),
                     (datetime(2026, 10, 25, 1, tzinfo=UTC), datetime(2026, 10, 25, 23, tzinfo=UTC),
                      timedelta(hours=1))]


# Configuration -------------------------------------------------------------------------------------

def report(config: Path, db: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mongol-report"), str(config), "--db", db, *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("text", "problem"), [
    ("standard = yes\nsite = a.org\ntimezone = Mars/Olympus\n",
     "[s] timezone: 'Mars/Olympus' is not an IANA time zone name (like UTC or Europe/Berlin)"),
    ("standard = yes\n", "[s] site: required with standard = yes"),
    ("standard = maybe\nsite = a.org\n", "[s] standard: 'maybe' is not yes or no"),
])
def test_config_errors(tmp_path, text, problem):
    open_store(f"sqlite://{tmp_path}/hits.db").close()
    config = tmp_path / "r.cfg"
    config.write_text(f"[s]\noutput = {tmp_path}/out\n{text}")
    result = report(config, f"sqlite://{tmp_path}/hits.db")
    assert result.returncode == 2
    assert f"mongol-report: {config}: {problem}" in result.stderr
    assert not (tmp_path / "out").exists()


# mongol-report -------------------------------------------------------------------------------------

def read_jsonp(path: Path, callback: str = "results") -> object:
    match = re.fullmatch(re.escape(callback) + r"\((.*)\);\n", path.read_text(), re.DOTALL)
    assert match, path.read_text()[:200]
    return json.loads(match.group(1))


def published(out: Path) -> dict[str, dict]:
    return published_as(out, "std")


def published_as(out: Path, name: str) -> dict[str, dict]:
    """The days of the published files, in the reference's shape."""
    index = read_jsonp(out / f"{name}.json")
    days = {}
    for month in index["months"]:
        data = read_jsonp(out / name / f"{month}.json")
        assert data["month"] == month and data["site"] == SITE
        days.update(data["days"])
    assert sorted(days) == [row[0] for row in index["days"]]
    return {day: shape(totals, days[day]) for day, *totals in index["days"]}


def test_mongol_report_publishes_and_keeps_history_past_the_purge(store_uri, tmp_path):
    hits = make_hits(NOW)
    with_store = open_store(store_uri)
    try:
        with_store.insert_many(hits)
    finally:
        with_store.close()
    config = tmp_path / "r.cfg"
    config.write_text(f"[top]\noutput = {tmp_path}/out\nsite = {SITE}\ntime = days:2\n"
                      f"[std]\noutput = {tmp_path}/out\nstandard = yes\nsite = {SITE}\ntime = days:2\n")
    result = report(config, store_uri, "--verbose")
    assert result.returncode == 0, result.stderr
    assert "[std] wrote" in result.stderr.splitlines()[0]  # the standard section runs first
    days = expected(hits)  # 12 or 13 calendar days, with the time of day the hits end at
    months = len({day[:7] for day in days})
    assert re.search(rf"\[std\] wrote .*std.json \({len(days)} days recomputed, {months + 1} files\), "
                     r"removed [1-9]\d* hits", result.stderr)
    index = read_jsonp(tmp_path / "out" / "std.json")
    assert (index["site"], index["timezone"], index["today"]) == (SITE, "UTC", NOW.date().isoformat())
    assert published(tmp_path / "out") == expected(hits)
    with_store = open_store(store_uri)
    try:
        assert with_store.count(end=NOW - timedelta(days=2, minutes=5), site=SITE) == 0  # raw hits purged
        recent = make_hits(NOW, days=1, seed=8)
        with_store.insert_many(recent)
    finally:
        with_store.close()
    result = report(config, store_uri)
    assert result.returncode == 0, result.stderr
    assert published(tmp_path / "out") == expected(hits + recent)  # the purged days are all still there
    manifest = (tmp_path / "out" / "reports.js").read_text()
    assert '"name":"std","file":"std.json"' in manifest and '"standard":true,"timezone":"UTC"' in manifest


def test_the_example_config_runs_as_it_is_on_the_default_store(tmp_path):
    """reports.cfg.example, unchanged, on the default embedded store: exit 0, the standard section first."""
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("MONGOL_DB", None)
    (tmp_path / "data" / "mongol").mkdir(parents=True)  # mongol-serve makes the default store's folder
    store = open_store(f"sqlite://{tmp_path}/data/mongol/mongol.db")  # where mongol-serve would create it
    try:
        store.insert_many(make_hits(NOW, days=3))
    finally:
        store.close()
    result = subprocess.run([str(BIN / "mongol-report"), str(ROOT / "reports.cfg.example"), "--verbose"],
                            capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("mongol-report: [example.com] wrote ")
    out = tmp_path / "mongol-reports"
    assert published_as(out, "example.com") == expected(make_hits(NOW, days=3))
    assert (out / "index.html").exists() and (out / "site.json").exists()


def test_a_standard_section_holds_back_no_purge(tmp_path):
    """It reads raw hits only until its days are kept (it runs first), so another section's `time` still
    removes that site's hits; its own `time` removes them too, and without one it removes nothing."""
    from mongol.report import plan_purge

    config = tmp_path / "r.cfg"
    config.write_text(f"[DEFAULT]\noutput = {tmp_path}/out\n[std]\nstandard = yes\nsite = a.org\n"
                      "[a]\nsite = a.org\ntime = days:2\n[std-purging]\nstandard = yes\nsite = a.org\ntime = days:1\n")
    specs = load(config, mongodb=False)
    std, a, std_purging = specs
    assert plan_purge(std, specs, NOW) is None
    assert plan_purge(a, specs, NOW).cutoff == NOW - timedelta(days=2)
    assert plan_purge(std_purging, specs, NOW).cutoff == NOW - timedelta(days=2)  # [a] reads two days


def test_dry_run_says_what_it_would_recompute_and_changes_nothing(tmp_path):
    db = f"sqlite://{tmp_path}/hits.db"
    store = open_store(db)
    hits = make_hits(NOW, days=3)
    try:
        store.insert_many(hits)
    finally:
        store.close()
    config = tmp_path / "r.cfg"
    config.write_text(f"[std]\noutput = {tmp_path}/out\nstandard = yes\nsite = {SITE}\ntime = days:1\n")
    result = report(config, db, "--dry-run")
    assert result.returncode == 0, result.stderr
    days = len(expected(hits))  # 3 or 4 calendar days, with the time of day the hits end at
    assert result.stdout.startswith(f"[std] would write {tmp_path}/out/std.json ({days} days to recompute)\n")
    assert "would remove" in result.stdout
    assert not (tmp_path / "out").exists()
    store = open_store(db)
    try:
        assert store.kept_days(standard.report_key(spec_for(tmp_path))) == {}
        assert store.count(end=NOW - timedelta(days=1), site=SITE) > 0
    finally:
        store.close()


def test_hits_stored_before_the_change_marks_are_counted(store_uri, tmp_path):
    """A store written by an older Mongol has hits and no marks: the first standard run counts them all."""
    hits = make_hits(NOW, days=4)
    store = open_store(store_uri)
    try:
        store.insert_many(hits)
        if store_uri.startswith("sqlite"):  # back to schema version 1: no marks
            store._db.execute("DELETE FROM changed_hours")
            store._db.execute("PRAGMA user_version = 1")
        else:
            from mongol.stores.mongodb import CHANGED, COUNTERS

            store._db[CHANGED].delete_many({})
            store._db[COUNTERS].delete_many({})
    finally:
        store.close()
    store = open_store(store_uri)
    try:
        spec = spec_for(tmp_path)
        assert len(standard.update(store, spec).recomputed) == len(expected(hits))  # 4 or 5 days
        assert kept(store, spec) == expected(hits)
    finally:
        store.close()
