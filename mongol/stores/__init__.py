"""The storage interface every store implements, and the one place that picks a store from a URI.

A hit is a plain dict: the request's parameters plus the fields the server sets
(`_id`, a 24-hex-digit id; `time`, an aware UTC datetime; `pageviews`; `_ip`; `_ua`; and those of
mongol.tracking and mongol.enrich: `_visitor`, `_bot`, `_browser`, `_os`, `_device`, `_country`, `_city`).
"""

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, Protocol

from mongol.errors import StoreError

Hit = dict[str, Any]


class Store(Protocol):
    """What the writer and the report engine need from a place that keeps hits."""

    #: True when calls block the calling thread (run them off the gevent loop).
    blocking: bool
    #: Human-readable description for logs: "SQLite file /var/lib/mongol/mongol.db".
    description: str

    def ping(self) -> None:
        """Raise StoreError unless the store is reachable and writable."""

    def insert_many(self, hits: list[Hit]) -> int:
        """Store a batch; a hit whose `_id` is already stored is skipped. Returns how many were new."""

    def insert_records(self, records: list[Hit]) -> int:
        """Store a batch of journal records (hits whose `_id` is a string and `time` integer microseconds
        since the epoch, UTC: spool lines decoded), skipping ids already stored; the store may change
        the dicts. Returns how many were new."""

    def insert_lines(self, lines: list[bytes]) -> int:
        """insert_records for journal lines not decoded yet."""

    def hits(self, start: datetime | None = None, end: datetime | None = None,
             site: str | None = None) -> Iterator[Hit]:
        """The hits with start <= time < end (either bound optional), optionally of one site."""

    def count(self, start: datetime | None = None, end: datetime | None = None,
              site: str | None = None, match: dict[str, str | bool] | None = None) -> int:
        """How many hits `hits()` would give for the same arguments; with `match`, only those whose
        field NAME is the string VALUE (or a list holding it), for every NAME: VALUE pair; a bool
        VALUE matches a flag (True: the field is true; False: it is not)."""

    def pageviews_by_page(self, start: datetime | None = None,
                          site: str | None = None) -> Iterator[tuple[dict[str, Any], Any]]:
        """The default report, natively: the sum of `pageviews` per `{url, title}` key (a field absent
        from the hit is absent from the key), for hits with start <= time."""

    def delete_before(self, cutoff: datetime, site: str | None = None) -> int:
        """Delete hits with time < cutoff, optionally only those of one site; returns how many."""

    # The standard reports (mongol.standard): kept daily figures and the change marks that say which
    # days to recompute. Every insert of hits marks each (site, UTC hour) it touched with a new change
    # number; deletes mark nothing.

    def changed_hours(self, site: str) -> list[tuple[datetime, int]]:
        """Every UTC hour (its start) of `site` that received hits, with the change number of its latest insert."""

    def purge_horizon(self, site: str) -> datetime | None:
        """The latest cutoff of a delete_before that took hits of `site` (or of every site), or None."""

    def standard_rows(self, site: str, spans: list[tuple[datetime, datetime, timedelta]]
                      ) -> Iterator[tuple[str, int, int | None, list | None, float]]:
        """The standard figures of the hits of `site` in `spans` (UTC [start, end), each with the offset of
        the local clock from UTC), counted natively: rows (figure, local day number since 1970-01-01, hour
        of the day or None, key or None, value), as mongol.standard describes."""

    def kept_days(self, report: str) -> dict[str, tuple[int, list]]:
        """The days kept for a standard report: {YYYY-MM-DD: (change number, [pageviews, visitors, bots])}."""

    def kept_docs(self, report: str, first: str, last: str) -> dict[str, dict]:
        """The kept figures of the days first..last (inclusive): {YYYY-MM-DD: figures}."""

    def keep_days(self, report: str, days: dict[str, tuple[int, list, dict]]) -> None:
        """Store or replace kept days: {YYYY-MM-DD: (change number, totals, figures)}."""

    def close(self) -> None:
        """Release connections and files."""


def open_store(uri: str) -> Store:
    """Open the store a URI names: `mongodb://`, `mongodb+srv://` or `sqlite:///PATH` (see sqlite_path).

    An SQLite file is created when missing, but not its folder (a mistyped path would otherwise give
    each program a store of its own): StoreError says so, except for the default embedded store,
    whose folder is created.
    """
    if uri.startswith(("mongodb://", "mongodb+srv://")):
        from mongol.stores.mongodb import MongoStore

        return MongoStore(uri)
    if uri.startswith("sqlite:"):
        from mongol.stores.sqlite import SQLiteStore

        path = sqlite_path(uri)
        check_sqlite_folder(uri)
        return SQLiteStore(path)
    raise StoreError(f"unknown store URI {uri!r}: expected mongodb://..., mongodb+srv://... or sqlite:///path/file.db")


_SQLITE_FORMS = ("sqlite:////abs/path/file.db or sqlite:///var/lib/mongol/file.db (absolute), "
                 "sqlite:///file.db or sqlite:///./dir/file.db (relative to the current folder)")


def sqlite_path(uri: str) -> str:
    """The absolute path of the file a `sqlite:` URI names, the same in every program and process.

    As SQLAlchemy reads them: `sqlite:////var/m.db` is `/var/m.db`, `sqlite:///m.db` is `m.db` and
    `sqlite:///./data/m.db` is `data/m.db` in the current folder. Mongol's own documented form,
    `sqlite:///var/lib/mongol/m.db`, stays absolute: three slashes and a path with a folder, not
    starting with `.`, is a path from `/` (SQLAlchemy would read it from the current folder).
    `sqlite:///~/m.db` is in the home folder. A relative path is made absolute here, once.
    """
    if not uri.startswith("sqlite:///"):
        if uri.startswith("sqlite://") and len(uri) > len("sqlite://"):
            host = uri[len("sqlite://"):].split("/", 1)[0]
            raise StoreError(f"store URI {uri!r} has a host part ({host!r}), which SQLite has not: write "
                             f"{_SQLITE_FORMS}")
        if uri in ("sqlite:", "sqlite://"):
            raise StoreError(f"store URI {uri!r} names no file: write {_SQLITE_FORMS}")
        raise StoreError(f"store URI {uri!r} is not of the form {_SQLITE_FORMS}")
    rest = uri[len("sqlite:///"):]
    if "?" in rest:
        raise StoreError(f"store URI {uri!r} has options ({rest[rest.index('?'):]}), which the embedded store "
                         f"does not take")
    if not rest.strip("/"):
        raise StoreError(f"store URI {uri!r} names no file: write {_SQLITE_FORMS}")
    if rest.startswith("/"):
        path = "/" + rest.lstrip("/")  # also for five slashes: "//" at the start is another path on POSIX
    elif rest.startswith("~"):
        path = os.path.expanduser(rest)
    elif rest.startswith(("./", "../")) or rest in (".", "..") or "/" not in rest:
        path = rest
    else:
        path = "/" + rest
    return os.path.abspath(path)


def check_sqlite_folder(uri: str, create_default: bool = True) -> None:
    """Raise StoreError if the folder of a `sqlite:` URI's file does not exist. The default embedded
    store's folder is no error: it is created (unless not `create_default`, for programs that only read)."""
    from mongol.location import default_db_path

    path = sqlite_path(uri)
    folder = os.path.dirname(path)
    if os.path.isdir(folder):
        return
    if path == os.path.abspath(default_db_path()):
        if not create_default:
            return
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of the default SQLite store {path}: {exc}") from exc
        return
    what = "is not a folder" if os.path.exists(folder) else "does not exist"
    raise StoreError(f"no SQLite store at {path}: its folder {folder} {what} (from {uri}); create the folder "
                     f"or correct the URI")
