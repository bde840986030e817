"""mongol-check, the Nagios/Icinga plugin: ranges, and the real command against both stores."""

import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from mongol.cli.check import main, parse_matches
from mongol.errors import MongolError
from mongol.hit import new_id
from mongol.nagios import State, judge, parse_range, perfdata, status_line
from tests.conftest import BIN

# Ranges, as the Monitoring Plugins guidelines define them ----------------------------------------

RANGES = [
    # spec, values that do not alert, values that alert
    ("10", [0, 5, 10], [-1, 11, 10.5]),
    ("10:", [10, 11, 1e9], [9, 0, -5]),
    ("~:10", [-1e9, -1, 0, 10], [11, 10.01]),
    ("10:20", [10, 15, 20], [9, 21]),
    ("@10:20", [9, 21, -3], [10, 15, 20]),
    ("@10", [-1, 11], [0, 5, 10]),
    ("0:0", [0], [1, -1]),
    ("-5:-1", [-5, -3, -1], [-6, 0]),
    ("~:", [-1e9, 0, 1e9], []),
    ("1.5:2.5", [1.5, 2, 2.5], [1.4, 2.6]),
    (" 10: ", [10], [9]),
]


@pytest.mark.parametrize(("spec", "quiet", "alert"), RANGES)
def test_range_semantics(spec, quiet, alert):
    rng = parse_range(spec)
    for value in quiet:
        assert rng.match(value), f"{value} alerts against {spec!r}"
    for value in alert:
        assert not rng.match(value), f"{value} does not alert against {spec!r}"


@pytest.mark.parametrize("spec", ["", " ", "@", ":", "abc", "10:5", "1:2:3", "10:~", "~", "5x", "@@1", "--1"])
def test_bad_ranges_name_the_option_and_the_syntax(spec):
    with pytest.raises(MongolError, match=r"bad --warning .*") as info:
        parse_range(spec, "--warning")
    assert repr(spec) in str(info.value)


def test_reversed_range_says_why():
    with pytest.raises(MongolError, match="start 10 must not be greater than end 5"):
        parse_range("10:5", "--critical")


@pytest.mark.parametrize(("spec", "text"), [("10", "10"), ("10:", "10:"), ("~:10", "~:10"), ("10:20", "10:20"),
                                           ("@10:20", "@10:20"), ("0:10", "10")])
def test_ranges_print_as_perfdata_wants(spec, text):
    assert str(parse_range(spec)) == text


@pytest.mark.parametrize(("value", "warning", "critical", "state"), [
    (42, "10:", "5:", State.OK),
    (7, "10:", "5:", State.WARNING),          # too few
    (3, "10:", "5:", State.CRITICAL),
    (150, "100", "200", State.WARNING),       # too many
    (250, "100", "200", State.CRITICAL),
    (15, "@10:20", None, State.WARNING),      # inside
    (15, None, "@10:20", State.CRITICAL),
    (25, "@10:20", "@10:20", State.OK),
    (3, None, None, State.OK),
])
def test_critical_wins_over_warning(value, warning, critical, state):
    verdict = judge(value, warning and parse_range(warning), critical and parse_range(critical))
    assert verdict.state == state
    assert bool(verdict.reason) == (state != State.OK)


def test_perfdata_and_status_line():
    assert perfdata("hits", 42, parse_range("10:"), parse_range("5:"), minimum=0) == "hits=42;10:;5:;0;"
    assert perfdata("hits", 0, None, None, minimum=0) == "hits=0;;;0;"
    assert perfdata("a b", 1, None, None) == "'a b'=1;;;;"
    line = status_line("MONGOL", State.UNKNOWN, "a\nmulti-line | message")
    assert line == "MONGOL UNKNOWN - a multi-line / message"
    assert len(status_line("MONGOL", State.UNKNOWN, "x" * 5000)) < 500


def test_match_names_are_sanitised_as_the_pixel_does():
    assert parse_matches(["$where=1", "a.b=x=y", "_ip=1.2.3.4", "utm_source="]) == {
        "\uff04where": "1", "a\uff0eb": "x=y", "_ip": "1.2.3.4", "utm_source": ""}
    for bad in ["site", "=x", "time=1", "pageviews=1", "_id=1", "_other=1"]:
        with pytest.raises(MongolError, match="bad --match"):
            parse_matches([bad])
    with pytest.raises(MongolError, match="twice"):
        parse_matches(["a=1", "a=2"])


# The command, against both stores ----------------------------------------------------------------


def hit(when, site, **fields):
    return {"_id": new_id(when.timestamp()), "time": when, "site": site, "url": "/", "pageviews": 1,
            "_ip": "192.0.2.1", "_ua": "test", **fields}


@pytest.fixture
def filled(store_uri, store):
    """In the last 5 minutes: 3 hits of a.org, 5 of b.org; 10 and 20 minutes ago: 4 more of a.org."""
    now = datetime.now(UTC)
    recent = [now - timedelta(seconds=30 * (i + 1)) for i in range(8)]
    store.insert_many([
        hit(recent[0], "a.org", utm_source="news", _country="DE"),
        hit(recent[1], "a.org", tag=["x", "news"]),
        hit(recent[2], "a.org", **{"\uff04where": "1"}),
        *(hit(recent[3 + i], "b.org", utm_source="news" if i < 2 else "ads",
              **({"_bot": True, "_country": "DE"} if i == 0 else {})) for i in range(5)),
        *(hit(now - timedelta(minutes=m), "a.org", utm_source="news") for m in (10, 10, 20, 20)),
    ])
    return store_uri


def check(*args, env=None):
    done = subprocess.run([str(BIN / "mongol-check"), *args], capture_output=True, text=True, timeout=60, env=env)
    assert done.stderr == ""
    assert done.stdout.count("\n") == 1, done.stdout
    return done.returncode, done.stdout.rstrip("\n")


CASES = [
    # arguments, exit status, status line
    ([], 0, "MONGOL OK - 8 hits in the last 5 minutes | hits=8;;;0;"),
    (["--minutes", "15"], 0, "MONGOL OK - 10 hits in the last 15 minutes | hits=10;;;0;"),
    (["-m", "1"], 0, "MONGOL OK - 1 hit in the last minute | hits=1;;;0;"),
    # too few
    (["--site", "a.org", "-w", "2:", "-c", "1:"], 0,
     "MONGOL OK - 3 hits in the last 5 minutes (site a.org) | hits=3;2:;1:;0;"),
    (["--site", "a.org", "--warning", "5:", "--critical", "2:"], 1,
     "MONGOL WARNING - 3 hits in the last 5 minutes (site a.org), outside the warning range 5: | hits=3;5:;2:;0;"),
    (["--site", "a.org", "-w", "10:", "-c", "5:"], 2,
     "MONGOL CRITICAL - 3 hits in the last 5 minutes (site a.org), outside the critical range 5: | hits=3;10:;5:;0;"),
    (["--site", "nobody.org", "-c", "1:"], 2,
     "MONGOL CRITICAL - 0 hits in the last 5 minutes (site nobody.org), outside the critical range 1: "
     "| hits=0;;1:;0;"),
    # too many
    (["-w", "5", "-c", "10"], 1, "MONGOL WARNING - 8 hits in the last 5 minutes, outside the warning range 5 "
                                 "| hits=8;5;10;0;"),
    (["-w", "~:5", "-c", "~:7"], 2, "MONGOL CRITICAL - 8 hits in the last 5 minutes, outside the critical range ~:7 "
                                    "| hits=8;~:5;~:7;0;"),
    # inside
    (["-c", "@5:10"], 2, "MONGOL CRITICAL - 8 hits in the last 5 minutes, inside the critical range @5:10 "
                         "| hits=8;;@5:10;0;"),
    (["-w", "@0:2", "-c", "@10:20"], 0, "MONGOL OK - 8 hits in the last 5 minutes | hits=8;@2;@10:20;0;"),
    # filters
    (["--match", "utm_source=news"], 0,
     "MONGOL OK - 3 hits in the last 5 minutes (utm_source=news) | hits=3;;;0;"),
    (["--site", "a.org", "--match", "utm_source=news", "-m", "30"], 0,
     "MONGOL OK - 5 hits in the last 30 minutes (site a.org, utm_source=news) | hits=5;;;0;"),
    (["--match", "tag=news"], 0, "MONGOL OK - 1 hit in the last 5 minutes (tag=news) | hits=1;;;0;"),
    (["--match", "tag=x", "--match", "site=a.org"], 0,
     "MONGOL OK - 1 hit in the last 5 minutes (tag=x, site=a.org) | hits=1;;;0;"),
    (["--match", "tag=x", "--match", "site=b.org"], 0,
     "MONGOL OK - 0 hits in the last 5 minutes (tag=x, site=b.org) | hits=0;;;0;"),
    (["--match", "$where=1"], 0, "MONGOL OK - 1 hit in the last 5 minutes (\uff04where=1) | hits=1;;;0;"),
    (["--match", "_ip=192.0.2.1", "--match", "site=b.org"], 0,
     "MONGOL OK - 5 hits in the last 5 minutes (_ip=192.0.2.1, site=b.org) | hits=5;;;0;"),
    (["--match", "utm_source=new"], 0, "MONGOL OK - 0 hits in the last 5 minutes (utm_source=new) | hits=0;;;0;"),
    # server fields: bots left out, or counted alone; countries
    (["--match", "_bot=true"], 0, "MONGOL OK - 1 hit in the last 5 minutes (_bot=true) | hits=1;;;0;"),
    (["--match", "_bot=false"], 0, "MONGOL OK - 7 hits in the last 5 minutes (_bot=false) | hits=7;;;0;"),
    (["--site", "b.org", "--match", "_bot=false", "-c", "5:"], 2,
     "MONGOL CRITICAL - 4 hits in the last 5 minutes (site b.org, _bot=false), outside the critical range 5: "
     "| hits=4;;5:;0;"),
    (["--match", "_country=DE"], 0, "MONGOL OK - 2 hits in the last 5 minutes (_country=DE) | hits=2;;;0;"),
    (["--match", "_country=DE", "--match", "_bot=false"], 0,
     "MONGOL OK - 1 hit in the last 5 minutes (_country=DE, _bot=false) | hits=1;;;0;"),
]


@pytest.mark.parametrize(("args", "code", "line"), CASES, ids=[" ".join(c[0]) or "plain" for c in CASES])
def test_check_counts_and_judges(filled, args, code, line):
    assert check("--db", filled, *args) == (code, line)


def test_db_comes_from_the_environment(filled):
    import os

    assert check("-c", "8:8", env={**os.environ, "MONGOL_DB": filled})[0] == 0


def test_in_process_with_a_fixed_clock(filled, capsys):
    later = datetime.now(UTC) + timedelta(minutes=3, seconds=45)  # the window keeps the hits of the last 75 s
    assert main(["--db", filled, "-m", "5", "-c", "2:2"], now=later) == 0
    assert capsys.readouterr().out == "MONGOL OK - 2 hits in the last 5 minutes | hits=2;;2:2;0;\n"


@pytest.mark.parametrize(("args", "message"), [
    (["-w", "abc"], "MONGOL UNKNOWN - bad --warning 'abc': expected [@][start:][end]"),
    (["-c", "20:10"], "MONGOL UNKNOWN - bad --critical '20:10': start 20 must not be greater than end 10"),
    (["--critical", ""], "MONGOL UNKNOWN - bad --critical ''"),
    (["--bogus"], "MONGOL UNKNOWN - unrecognized arguments: --bogus (see mongol-check --help)"),
    (["-m", "0"], "MONGOL UNKNOWN - --minutes and --timeout must be positive"),
    (["-m", "five"], "MONGOL UNKNOWN - argument -m/--minutes: invalid float value: 'five'"),
    (["--match", "pageviews=1"], "MONGOL UNKNOWN - bad --match 'pageviews=1'"),
    (["--match", "_bot=yes"], "MONGOL UNKNOWN - bad --match '_bot=yes': _bot is true or false"),
])
def test_bad_usage_is_unknown(filled, args, message):
    code, line = check("--db", filled, *args)
    assert code == 3 and line.startswith(message)


def test_unreachable_mongodb_is_unknown():
    started = time.monotonic()
    code, line = check("--db", "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=300", "-c", "1:")
    assert code == 3
    assert line.startswith("MONGOL UNKNOWN - cannot reach MongoDB 127.0.0.1:1")
    assert "Traceback" not in line and "|" not in line
    assert time.monotonic() - started < 20


def test_missing_sqlite_file_is_unknown_and_not_created(tmp_path):
    path = tmp_path / "hits.db"
    assert check("--db", f"sqlite://{path}") == (3, f"MONGOL UNKNOWN - no SQLite store at {path}")
    assert not path.exists()  # a missing folder: tests/test_store_uris.py


def test_a_silent_server_is_unknown_after_the_timeout():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections (backlog), never answers
        port = silent.getsockname()[1]
        started = time.monotonic()
        code, line = check("--db", f"mongodb://127.0.0.1:{port}/x?serverSelectionTimeoutMS=30000", "-t", "1")
        assert (code, line) == (3, "MONGOL UNKNOWN - no answer from the store within 1 s")
        assert time.monotonic() - started < 15
