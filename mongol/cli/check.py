"""mongol-check: a Nagios/Icinga plugin that counts the hits of the last minutes against thresholds.

One status line on stdout, perfdata included, and the plugin exit status (0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN). Whatever goes wrong (bad option, bad range, store unreachable, timeout)
is UNKNOWN with a one-line reason, never a traceback.
"""

import argparse
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NoReturn, TypeVar

from mongol import __version__
from mongol.errors import MongolError
from mongol.hit import clean_name
from mongol.location import ENV_VAR, default_db_path, resolve_db_uri
from mongol.nagios import RANGE_SYNTAX, State, judge, parse_range, perfdata, status_line

SERVICE = "MONGOL"
# Fields the server sets that can be matched (time is the window); the flags are true or absent.
SERVER_FIELDS = ("_ip", "_ua", "_visitor", "_browser", "_os", "_device", "_country", "_city", "_source")
SERVER_FLAGS = ("_bot", "_internal")
T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    """Bad usage is UNKNOWN (exit 3) on one line, as the plugin guidelines want, not argparse's exit 2."""

    def error(self, message: str) -> NoReturn:
        raise MongolError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mongol-check",
        description="Count the hits of the last minutes, optionally of one site or matching fields, and "
                    "compare the count with Nagios threshold ranges.",
        epilog=f"Ranges: {RANGE_SYNTAX}; a count outside the range alerts (inside it, with @). "
               "Exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. "
               f"Without --db or ${ENV_VAR}, the embedded store {default_db_path()} is read.",
    )
    parser.add_argument("--db", metavar="URI", help=f"the store, as for mongol-serve (default: ${ENV_VAR}, "
                                                    "else the embedded store)")
    parser.add_argument("-m", "--minutes", type=float, default=5.0, metavar="N",
                        help="count the hits of the last N minutes (default 5)")
    parser.add_argument("-s", "--site", metavar="SITE", help="only the hits of this site")
    parser.add_argument("--match", metavar="FIELD=VALUE", action="append", default=[],
                        help="only the hits whose FIELD (a pixel parameter as the client sends it, or a server "
                             f"field: {', '.join(SERVER_FIELDS)}) is exactly VALUE, or a list holding it; "
                             f"{' and '.join(SERVER_FLAGS)} take true or false (false: humans, for _bot); "
                             "repeatable, all must match")
    parser.add_argument("-w", "--warning", metavar="RANGE", help="WARNING when the count alerts against RANGE")
    parser.add_argument("-c", "--critical", metavar="RANGE", help="CRITICAL when the count alerts against RANGE")
    parser.add_argument("-t", "--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="UNKNOWN if there is no answer within SECONDS (default 10)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def parse_matches(specs: list[str]) -> dict[str, str | bool]:
    """`--match FIELD=VALUE` options as stored field names and values; FIELD is sanitised as the pixel
    sanitises parameter names, so `$where=1` matches the stored `\uff04where`. A flag's value is a bool."""
    match: dict[str, str | bool] = {}
    for spec in specs:
        raw, sep, value = spec.partition("=")
        name = raw if raw in SERVER_FIELDS + SERVER_FLAGS else clean_name(raw)
        if not sep or name is None:
            raise MongolError(f"bad --match {spec!r}: expected FIELD=VALUE, where FIELD is a parameter of the "
                              "pixel (not time, pageviews or another name starting with _) or one of "
                              f"{', '.join(SERVER_FIELDS + SERVER_FLAGS)}")
        if name in match:
            raise MongolError(f"bad --match {spec!r}: {raw} is matched twice")
        if name in SERVER_FLAGS:
            if value not in ("true", "false"):
                raise MongolError(f"bad --match {spec!r}: {name} is true or false")
            match[name] = value == "true"
        else:
            match[name] = value
    return match


def count_hits(uri: str, start: datetime, site: str | None, match: dict[str, str | bool]) -> int:
    """The hits with time >= start (up to now and beyond: a clock ahead still counts)."""
    from mongol.stores import check_sqlite_folder, open_store, sqlite_path

    if uri.startswith("sqlite:"):
        check_sqlite_folder(uri, create_default=False)
        path = sqlite_path(uri)
        if not os.path.exists(path):  # opening it would create an empty store, and a count of 0
            raise MongolError(f"no SQLite store at {path}")
    store = open_store(uri)
    try:
        return store.count(start=start, site=site, match=match or None)
    finally:
        store.close()


def within(seconds: float, work: Callable[[], T]) -> T:
    """`work()`, or TimeoutError after `seconds`: it runs in a thread, since a blocking call into C
    (SQLite waiting for a lock) would not see a signal."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="mongol-check", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise TimeoutError(f"no answer from the store within {seconds:g} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def describe(count: int, minutes: float, site: str | None, match: dict[str, str | bool]) -> str:
    """`42 hits in the last 5 minutes (site example.com, utm_source=news)`."""
    window = "the last minute" if minutes == 1 else f"the last {minutes:g} minutes"
    scope = [f"site {site}"] if site is not None else []
    scope += [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in match.items()]
    return (f"{count} hit{'' if count == 1 else 's'} in {window}"
            + (f" ({', '.join(scope)})" if scope else ""))


def say(state: State, text: str, perf: str = "") -> int:
    print(status_line(SERVICE, state, text, perf), flush=True)
    return int(state)


def main(argv: list[str] | None = None, now: datetime | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        warning = None if args.warning is None else parse_range(args.warning, "--warning")
        critical = None if args.critical is None else parse_range(args.critical, "--critical")
        match = parse_matches(args.match)
        if not args.minutes > 0 or not args.timeout > 0:
            raise MongolError("--minutes and --timeout must be positive")
    except MongolError as exc:
        return say(State.UNKNOWN, str(exc))
    now = now or datetime.now(UTC)
    uri = resolve_db_uri(args.db)
    start = now - timedelta(minutes=args.minutes)
    try:
        count = within(args.timeout, lambda: count_hits(uri, start, args.site, match))
    except (MongolError, TimeoutError) as exc:
        return say(State.UNKNOWN, str(exc))
    except Exception as exc:  # the store's own errors (pymongo, sqlite3): still one line, no traceback
        return say(State.UNKNOWN, f"cannot count hits: {type(exc).__name__}: {exc}")
    verdict = judge(count, warning, critical)
    text = describe(count, args.minutes, args.site, match) + (f", {verdict.reason}" if verdict.reason else "")
    return say(verdict.state, text, perfdata("hits", count, warning, critical, minimum=0))
