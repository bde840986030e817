"""The writer process: drains the spool into the store, in batches, whatever the store does.

It reads complete journal lines from every segment, decodes them, and stores them with one
`insert_records` call per batch (unordered; ids already stored are skipped), and deletes segments
once closed and stored.
When the store fails, the hits stay in the spool and the batch is retried with backoff; the log
says so once, and once more when storing works again. The store need not answer when the writer
starts: `connect` is called again at each retry until it does. `status.json` beside the segments tells the
serving processes (for /healthz) how things stand.
"""

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from mongol.errors import StoreMoved
from mongol.journal import Spool
from mongol.stores import Store

log = logging.getLogger("mongol.writer")
STATUS = "status.json"
STATUS_EVERY = 0.5


class Writer:
    def __init__(self, store: Store | None, spool: Spool, *, batch_size: int = 5000, interval: float = 0.1,
                 metrics: Any = None, enrich: Callable[[list[dict]], list[dict]] | None = None,
                 connect: Callable[[], Store] | None = None, description: str = "the store",
                 failing: str | None = None) -> None:
        self.store = store
        self.connect = connect  # opens the store when `store` is None (it did not answer at start)
        self.description = store.description if store is not None else description
        self.enrich = enrich  # mongol.enrich: bots, browser, places; it may drop lines (bots)
        self.metrics = metrics
        self.spool = spool
        self.batch_size = batch_size
        self.interval = interval
        self.stored = 0       # new hits written to the store by this process
        self.duplicates = 0   # lines the store already held (a segment read again after a crash)
        self.failing: str | None = None
        self.last_batch = 0   # lines read by the latest step
        self._since = time.time()
        self._status_at = 0.0
        if failing:  # the store did not answer at start
            self._failed(Exception(failing))

    def step(self) -> bool:
        """Store one batch; True if there was anything to store and it was stored."""
        lines, marks = self.spool.read(self.batch_size)
        self.last_batch = len(lines)
        if not lines:
            self.spool.remove_finished()
            if self.store is None:  # nothing to store, but /healthz should know when the store answers
                try:
                    self._store()
                except Exception as exc:
                    self._failed(exc)
                    raise
                self._recovered()
            return False
        records = decode(lines)
        try:
            if self.enrich is not None:
                records = self.enrich(records)
            new = self._store().insert_records(records) if records else 0
        except Exception as exc:  # any store failure: the hits stay in the spool, retried later
            self._failed(exc)
            if isinstance(exc, StoreMoved) and self.connect is not None and self.store is not None:
                self.store.close()  # SQLite's last close also removes the old file's WAL beside the new one
                self.store = None
            raise
        self.spool.commit(marks)
        self.stored += new
        self.duplicates += len(records) - new
        if self.metrics is not None:
            self.metrics.stored.inc(new)
            self.metrics.duplicates.inc(len(records) - new)
            replayed = sum(count for segment, _, count in marks if segment.replay)
            if replayed:
                self.metrics.replayed.inc(min(replayed, new))
        self._recovered()
        return True

    def _recovered(self) -> None:
        if self.failing:
            log.warning("storing hits again in %s", self.description)
            self.failing, self._since = None, time.time()

    def _store(self) -> Store:
        if self.store is None:
            assert self.connect is not None
            self.store = self.connect()
            self.description = self.store.description
        return self.store

    def _failed(self, exc: Exception) -> None:
        message = " ".join(str(exc).split())[:300]
        if not self.failing:
            log.error("cannot store hits in %s, keeping them in the spool and retrying: %s",
                      self.description, message)
            self._since = time.time()
        self.failing = message
        if self.metrics is not None:
            self.metrics.store_errors.inc()
        self.write_status(force=True)

    def run(self, stop: threading.Event, drain_timeout: float = 30.0) -> int:
        """Store until `stop` is set, then until the spool is empty or `drain_timeout` passes.
        Returns the bytes left in the spool (they are stored at the next start)."""
        delay = self.interval
        while not stop.is_set():
            began = time.monotonic()
            try:
                busy = self.step()
                delay = self.interval
            except Exception:
                busy = False
                delay = min(max(delay * 2, 0.5), 10.0)
            self.write_status()
            if not busy:
                stop.wait(delay)
            elif self.last_batch < self.batch_size:
                # Caught up: let the next batch gather for the rest of the interval. Under load a writer
                # that goes on at once stores many small batches, and each costs a commit, a look at
                # every segment and a rewrite of the same index pages: twice the CPU per hit.
                stop.wait(max(0.0, began + delay - time.monotonic()))
        deadline = time.monotonic() + drain_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if self.store is not None and hasattr(self.store, "wait_at_most"):
                self.store.wait_at_most(remaining)  # a locked or slow store must not outlast the drain
            try:
                if not self.step() and not self.spool.backlog_bytes():
                    break
            except Exception:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        left = self.spool.backlog_bytes()
        self.write_status(force=True, state="stopped")
        return left

    def write_status(self, force: bool = False, state: str | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._status_at < STATUS_EVERY:
            return
        self._status_at = now
        status = {
            "state": state or ("store failing" if self.failing else "ok"),
            "since": self._since,
            "error": self.failing,
            "stored": self.stored,
            "spooled_bytes": self.spool.backlog_bytes(),
            "pid": os.getpid(),
            "updated": time.time(),
        }
        if self.metrics is not None:
            self.metrics.spool_bytes.set(status["spooled_bytes"])
            self.metrics.store_up.set(0 if self.failing else 1)
        path = self.spool.folder / STATUS
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_bytes(orjson.dumps(status))
            os.replace(tmp, path)
        except OSError:  # a full or read-only disk: /healthz goes stale ("not reporting") until it heals
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def decode(lines: list[bytes]) -> list[dict]:
    """Spool lines as hits (`time` in integer microseconds), decoded once for the enrichment and the
    store; a line that is no hit (not JSON, or without a string `_id` and an integer `time`: written
    by hand, or torn) is logged and dropped, so that it cannot hold up the hits after it."""
    records = []
    loads = orjson.loads
    for line in lines:
        try:
            hit = loads(line)
        except orjson.JSONDecodeError:
            log.error("dropping a spool line that is not JSON: %r", line[:200])
            continue
        if type(hit) is not dict or type(hit.get("_id")) is not str or type(hit.get("time")) is not int:
            log.error("dropping a spool line that is not a hit: %r", line[:200])
            continue
        records.append(hit)
    return records


def read_status(folder: Path) -> dict:
    try:
        return orjson.loads((Path(folder) / STATUS).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
