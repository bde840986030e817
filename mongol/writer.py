"""The write path: a bounded in-memory queue drained by one writer greenlet in batches.

A request only appends to the queue; the writer stores what has piled up every
`flush_interval` seconds, or at once when `batch_size` hits are waiting. A failed
batch stays at the head of the queue and is retried with backoff, so a store
that hiccups delays hits without losing them; while the queue is full, `submit`
refuses new hits and the pixel answers 503 (a later spool takes them instead).
"""

import logging
from collections import deque

import gevent
from gevent.event import Event

from mongol.stores import Hit, Store

log = logging.getLogger("mongol.writer")


class Writer:
    def __init__(self, store: Store, *, batch_size: int = 500, flush_interval: float = 0.25,
                 max_queue: int = 100_000) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.stored = 0
        self.failing = False
        self._queue: deque[Hit] = deque()
        self._wake = Event()
        self._stopping = False
        self._greenlet: gevent.Greenlet | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, hit: Hit) -> bool:
        """Queue a hit for storing; False when the queue is full (or the writer is stopping)."""
        queue = self._queue
        if len(queue) >= self.max_queue or self._stopping:
            return False
        queue.append(hit)
        if len(queue) >= self.batch_size:
            self._wake.set()
        return True

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self, timeout: float = 30.0) -> int:
        """Refuse new hits, store every queued one, stop. Returns how many could not be stored in time."""
        self._stopping = True
        self._wake.set()
        if self._greenlet is not None:
            self._greenlet.join(timeout)
            if not self._greenlet.dead:
                self._greenlet.kill()
        left = len(self._queue)
        if left:
            log.error("stopped with %d hits not stored: %s stayed unavailable", left, self.store.description)
        return left

    def _run(self) -> None:
        delay = self.flush_interval
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wake.wait(delay)
                self._wake.clear()
                if not self._queue:
                    continue
            elif not self._stopping and len(self._queue) < self.batch_size:
                self._wake.wait(delay)
                self._wake.clear()
            if self._store_batch():
                delay = self.flush_interval
            else:
                delay = min(max(delay * 2, 0.5), 10.0)
                gevent.sleep(delay)

    def _store_batch(self) -> bool:
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
        try:
            if self.store.blocking:
                gevent.get_hub().threadpool.apply(self.store.insert_many, (batch,))
            else:
                self.store.insert_many(batch)
        except Exception as exc:  # any store failure: keep the hits, retry later
            queue.extendleft(reversed(batch))
            if not self.failing:
                log.error("cannot store hits in %s, keeping them queued and retrying: %s", self.store.description, exc)
                self.failing = True
            return False
        if self.failing:
            log.warning("storing hits again in %s", self.store.description)
            self.failing = False
        self.stored += len(batch)
        return True
