"""mongol-report CONFIG: one report per INI section, written as a JSONP file for a static server."""

import argparse
import contextlib
import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from mongol import __version__
from mongol.errors import MongolError
from mongol.location import ENV_VAR, default_db_path, resolve_db_uri

EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED = 1, 2, 75


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mongol-report",
        description="Write one report per section of CONFIG as OUTPUT/SECTION.json (JSONP), then remove hits "
                    "older than each section's time window.",
        epilog=f"Exit status: 0 all written, 1 a section failed (the others still ran) or the store cannot be "
               f"used (nothing written), 2 configuration error (nothing written), {EXIT_LOCKED} another run holds "
               f"CONFIG. Without --db or ${ENV_VAR}, the embedded store {default_db_path()} is read.",
    )
    parser.add_argument("config", metavar="CONFIG", help="the INI file (see reports.cfg.example)")
    parser.add_argument("--db", metavar="URI", help=f"the store, as for mongol-serve (default: ${ENV_VAR}, "
                                                    "else the embedded store)")
    parser.add_argument("--dry-run", action="store_true",
                        help="compute every report and say what would be written and removed; change nothing")
    parser.add_argument("--wait", action="store_true",
                        help=f"if another run holds CONFIG, wait for it instead of exiting with {EXIT_LOCKED}")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what each section wrote and removed")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def say(message: str) -> None:
    print(f"mongol-report: {message}", file=sys.stderr)


@contextlib.contextmanager
def locked(path: str, wait: bool) -> Iterator[bool]:
    """An exclusive lock on the config file itself, so two cron runs never work on the same reports."""
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def _progress(enabled: bool) -> Callable[[Iterator, int], Iterator] | None:
    if not enabled:
        return None
    from tqdm import tqdm

    def wrap(batches: Iterator[tuple[int, bytes]], total: int) -> Iterator[tuple[int, bytes]]:
        with tqdm(total=total, unit="hit", unit_scale=True, leave=False, file=sys.stderr) as bar:
            for count, batch in batches:
                yield count, batch
                bar.update(count)
    return wrap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mongol.reportconfig import ConfigError, load

    uri = resolve_db_uri(args.db)
    try:
        specs = load(args.config, mongodb=uri.startswith("mongodb"))
    except ConfigError as exc:
        for problem in exc.problems:
            say(problem)
        return EXIT_CONFIG
    with locked(args.config, args.wait) as got_lock:
        if not got_lock:
            say(f"another mongol-report is working on {args.config}; not running twice (--wait waits for it)")
            return EXIT_LOCKED
        return _run(specs, uri, args)


def missing_store(uri: str, option: str | None) -> str | None:
    """Why an SQLite store cannot be read because its file does not exist, else None: opening it would
    create an empty store (and its folders), and the run would publish empty reports over good ones."""
    from mongol.stores import check_sqlite_folder, sqlite_path

    if not uri.startswith("sqlite:"):
        return None
    check_sqlite_folder(uri, create_default=False)  # a missing folder: StoreError, as in every program
    path = sqlite_path(uri)
    if os.path.exists(path):
        return None
    if option:
        given = "is --db right?"
    elif os.environ.get(ENV_VAR):
        given = f"is ${ENV_VAR} right?"
    else:
        return (f"no SQLite store at {path}, the default embedded store: mongol-serve creates it when it starts "
                f"(or give --db or ${ENV_VAR}); nothing written")
    return f"no SQLite store at {path}: mongol-serve creates it when it starts ({given}); nothing written"


def _standard(spec: object, store: object, now: datetime, dry_run: bool) -> str:
    """Bring a standard section's kept days up to date and publish them; what it did, in words."""
    from mongol.standard import publish_files, update

    result = update(store, spec, dry_run)
    done = f"{len(result.recomputed)} days recomputed"
    if result.frozen:
        done += f", {len(result.frozen)} changed days older than the purge kept as they were"
    if dry_run:
        return done.replace("recomputed", "to recompute")
    return f"{done}, {publish_files(store, spec, now, result)} files"


def _run(specs: list, uri: str, args: argparse.Namespace) -> int:
    from mongol.jsonp import publish, render
    from mongol.report import compute, plan_purge
    from mongol.stores import open_store

    try:
        missing = missing_store(uri, args.db)
        if missing:
            say(missing)
            return EXIT_FAILED
        store = open_store(uri)
    except MongolError as exc:
        say(str(exc))
        return EXIT_FAILED
    now = datetime.now(UTC)
    progress = _progress(sys.stderr.isatty() and not args.dry_run)
    failed = []
    try:
        # standard sections first: their days are kept before any section removes the hits they count
        for spec in sorted(specs, key=lambda s: not s.standard):
            try:
                if spec.standard:
                    summary = _standard(spec, store, now, args.dry_run)
                    rows = []
                else:
                    rows = compute(spec, store, now, progress)
                    summary = f"{len(rows)} results"
                purge = plan_purge(spec, specs, now)
                if args.dry_run:
                    print(f"[{spec.name}] would write {spec.path} ({summary})")
                    if purge is not None and purge.cutoff is not None:
                        count = store.count(end=purge.cutoff, site=purge.site)
                        print(f"[{spec.name}] would remove {count} hits of site {purge.site!r} older than "
                              f"{purge.cutoff.isoformat()}" + (f" ({purge.reason})" if purge.reason else ""))
                    elif purge is not None:
                        print(f"[{spec.name}] would remove nothing: {purge.reason}")
                    continue
                if not spec.standard:
                    publish(spec.path, render(spec.callback, rows))
                removed = store.delete_before(purge.cutoff, purge.site) if purge and purge.cutoff else 0
                if args.verbose:
                    say(f"[{spec.name}] wrote {spec.path} ({summary}), removed {removed} hits")
            except Exception as exc:  # a failing section must not stop the others
                failed.append(spec.name)
                detail = str(exc) if isinstance(exc, MongolError) else f"{type(exc).__name__}: {exc}"
                say(f"[{spec.name}] failed: {' '.join(detail.split())}")
    finally:
        store.close()
    dashboard_failed = False
    if not args.dry_run:
        try:
            from mongol.dashboard import write_dashboards

            write_dashboards(specs, now)
        except Exception as exc:  # reported like a failed section; the reports stay written
            dashboard_failed = True
            detail = str(exc) if isinstance(exc, MongolError) else f"{type(exc).__name__}: {exc}"
            say(f"dashboard failed: {' '.join(detail.split())}")
    if failed:
        say(f"{len(failed)} of {len(specs)} sections failed: {', '.join(failed)}")
        return EXIT_FAILED
    return EXIT_FAILED if dashboard_failed else 0
