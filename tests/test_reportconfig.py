"""reports.cfg parsing and the report engine's pure parts, in-process."""

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mongol.report import Purge, bson_order, plan_purge, sort_and_limit
from mongol.reportconfig import DEFAULT_MAPPER, OPTIONS, ConfigError, check_callback, load, parse_window

ROOT = Path(__file__).parent.parent
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("days:2", timedelta(days=2)),
    ("days:1 hours:6", timedelta(days=1, hours=6)),
    ("weeks:1 minutes:30 seconds:15", timedelta(weeks=1, minutes=30, seconds=15)),
    ("  hours:0   minutes:1 ", timedelta(minutes=1)),
])
def test_windows(text, expected):
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", ["", "days", "days:x", "days:-1", "days:1 days:2", "months:1", "days:0",
                                  "days:1.5", "weeks:999999999"])
def test_bad_windows(text):
    with pytest.raises(ValueError):
        parse_window(text)


@pytest.mark.parametrize("text", ["results", "mongol.top", "$", "_cb", "a.b.c", "jQuery123_456", "a.default"])
def test_callbacks(text):
    assert check_callback(text) == text


@pytest.mark.parametrize("text", ["", "1abc", "a-b", "a..b", "a.", "alert(1)", "x;y", "var", "this.x", "caf\u00e9"])
def test_bad_callbacks(text):
    with pytest.raises(ValueError):
        check_callback(text)


def test_example_config_shows_every_option_and_parses(tmp_path):
    example = (ROOT / "reports.cfg.example").read_text()
    for option in OPTIONS:
        shown = f"\n{option.name} = " in example or f"\n#{option.name} = " in example  # commented: MongoDB only
        assert shown, f"{option.name} is missing from reports.cfg.example"
        assert f"# {option.name}" in example or f"{option.name}:" in example, f"{option.name} has no comment"
    names = ["example.com", "site", "example-top", "languages", "pageviews-per-hour", "pageviews-per-day",
             "top-pages-humans", "visitors-per-day", "browsers", "countries", "referrers"]
    specs = load(ROOT / "reports.cfg.example", mongodb=False)  # runs as it is on the embedded store
    assert [s.name for s in specs] == names
    assert (specs[0].standard, specs[0].site, specs[0].timezone) == (True, "example.com", "UTC")
    site = specs[1]
    assert (site.window, site.callback, site.limit, site.descending, site.is_default) == (
        timedelta(days=2), "results", 10, True, True)
    assert site.mapper == DEFAULT_MAPPER and site.purge_site == "site"
    mongodb = tmp_path / "mongodb.cfg"  # its MongoDB-only section, uncommented
    mongodb.write_text(uncomment_mongodb_only(example))
    with pytest.raises(ConfigError, match=r"\[operating-systems\] pipeline: needs a MongoDB store"):
        load(mongodb, mongodb=False)
    assert [s.name for s in load(mongodb, mongodb=True)] == [*names, "operating-systems"]


def uncomment_mongodb_only(example: str) -> str:
    """reports.cfg.example with its commented MongoDB-only section made live."""
    head, marker, rest = example.partition("\n#[operating-systems]\n")
    assert marker, "reports.cfg.example has no commented [operating-systems] section"
    lines = rest.splitlines()
    return head + "\n[operating-systems]\n" + "\n".join(
        line[1:] if re.match(r"#\w+ = ", line) else line for line in lines) + "\n"


def test_every_option_is_in_readme():
    readme = (ROOT / "README.rst").read_text()
    for option in OPTIONS:
        assert f"``{option.name}``" in readme, f"{option.name} is not documented in README.rst"


def spec(tmp_path, text):
    config = tmp_path / "r.cfg"
    config.write_text(text)
    return load(config, mongodb=False)


def test_purge_plans(tmp_path):
    specs = spec(tmp_path, "[DEFAULT]\noutput = /o\n[a]\ntime = days:2\n[a-long]\nsite = a\ntime = days:9\n"
                           "[b]\nsite = b\ntime = hours:1\n[no-window]\nsite = c\n[c]\ntime = days:1\n")
    a, a_long, b, no_window, c = specs
    assert plan_purge(a, specs, NOW).cutoff == NOW - timedelta(days=9)
    assert plan_purge(a, specs, NOW).reason == "[a-long] reads them for 9 days, 0:00:00"
    assert plan_purge(a_long, specs, NOW).cutoff == NOW - timedelta(days=9)
    # [a] has no site option: it reads every site's hits of two days, b's included
    assert plan_purge(b, specs, NOW) == Purge("b", NOW - timedelta(days=2), "[a] reads them for 2 days, 0:00:00")
    assert plan_purge(no_window, specs, NOW) is None
    assert plan_purge(c, specs, NOW).cutoff is None


def test_bson_order_of_types_and_objects():
    values = [True, "b", 2, None, {"a": 1}, "a", [1], 1.5, {"a": 1, "b": 0}, {"b": 0}, datetime(2020, 1, 1,
              tzinfo=UTC), False]
    assert sorted(values, key=bson_order) == [None, 1.5, 2, "a", "b", {"a": 1}, {"a": 1, "b": 0}, {"b": 0}, [1],
                                              False, True, datetime(2020, 1, 1, tzinfo=UTC)]
    assert bson_order(1) == bson_order(1.0) and bson_order("1") != bson_order(1)
    assert bson_order({"a": 1, "b": 2}) != bson_order({"b": 2, "a": 1})


def test_sort_and_limit_ties_in_key_order():
    pairs = [("c", 2), ("a", 2), ("b", 5), ("d", 1)]
    assert sort_and_limit(pairs, True, 3) == [{"_id": "b", "value": 5}, {"_id": "a", "value": 2},
                                              {"_id": "c", "value": 2}]
    assert [r["_id"] for r in sort_and_limit(pairs, False, 0)] == ["d", "a", "c", "b"]
