"""/metrics: Prometheus counters and gauges shared by mongol-serve's processes.

prometheus_client's multiprocess mode: every process writes its values to memory-mapped files in
one folder, and whichever worker answers /metrics adds them up. The supervisor empties the folder
and sets PROMETHEUS_MULTIPROC_DIR before it starts any child, and no process imports
prometheus_client before that (the library reads the variable when it is first imported).
"""

import os
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def prepare(folder: Path) -> None:
    """In the supervisor, before any child starts: the (empty) folder for this run's values."""
    os.environ[ENV] = str(folder)


def process_dead(pid: int) -> None:
    """In the supervisor, when a child has exited: its gauges stop counting."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class Metrics:
    """The metrics, created in a child process after `prepare`."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        self.accepted = Counter("mongol_hits_accepted", "Hits answered with the pixel (spooled, or held in memory)")
        self.spooled = Counter("mongol_hits_spooled", "Hits written to the spool on disk")
        self.rejected = Counter("mongol_hits_rejected", "Requests that recorded no hit, by reason", ["reason"])
        self.stored = Counter("mongol_hits_stored", "Hits written to the store (each hit once)")
        self.replayed = Counter("mongol_hits_replayed", "Hits stored from spool segments an earlier run left")
        self.duplicates = Counter("mongol_hits_duplicate", "Spooled hits the store already held (skipped)")
        self.store_errors = Counter("mongol_store_errors", "Failed attempts to store a batch of hits")
        self.queue_depth = Gauge("mongol_queue_depth", "Hits held in memory because the spool's disk refuses them",
                                 multiprocess_mode="livesum")
        self.spool_bytes = Gauge("mongol_spool_bytes", "Bytes of spooled hits not stored yet",
                                 multiprocess_mode="liveall")
        self.store_up = Gauge("mongol_store_up", "1 while the writer stores hits, 0 while the store fails",
                              multiprocess_mode="liveall")

    @staticmethod
    def render() -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
