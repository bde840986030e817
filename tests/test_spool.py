"""The spool's own guarantees, process by process: a segment is never overwritten, never read from
the wrong place, and never deleted with a line unread, whatever the timing. Each test counts lines
by the exact set appended (a number per line) against the set the drain side read back.

The end-to-end forms of these (a PID namespace, a real writer) are in test_reliability.py.
"""

import fcntl
import os
import threading
import time

import orjson

from mongol import journal
from mongol.journal import Journal, Spool


def line(n: int) -> bytes:
    return orjson.dumps({"n": n}, option=orjson.OPT_APPEND_NEWLINE)


def drain(spool: Spool, got: list[int], max_lines: int = 1000) -> None:
    """What the writer does, minus the store: read, 'store', commit, delete finished segments."""
    while True:
        lines, marks = spool.read(max_lines)
        got.extend(orjson.loads(x)["n"] for x in lines)
        spool.commit(marks)
        spool.remove_finished()
        if not lines:
            return


def test_a_worker_with_an_old_pid_never_overwrites_an_unread_segment(tmp_path, monkeypatch):
    # In a container every start gives the worker the same PID: a new worker must not reuse an old
    # segment's name, and the writer must not apply what it read of one file to another.
    monkeypatch.setattr(os, "getpid", lambda: 3)
    first = Journal(tmp_path)
    for n in range(100):
        first.append(line(n))
    first.close()  # the first run is killed; its segment waits in the spool

    spool = Spool(tmp_path)  # the next run's writer starts, finds the segment, reads part of it
    got: list[int] = []
    lines, marks = spool.read(30)
    got.extend(orjson.loads(x)["n"] for x in lines)
    spool.commit(marks)
    second = Journal(tmp_path)  # the next run's worker, same PID
    for n in range(100, 200):
        second.append(line(n))
    second.close()
    drain(spool, got)
    assert sorted(got) == list(range(200))
    assert not list(tmp_path.glob("*.jsonl"))


def test_removal_never_deletes_a_line_appended_while_the_writer_looked(tmp_path, monkeypatch):
    # A writer descheduled between looking at a segment and deleting it (CPU throttling in a
    # container): the worker appends and rotates meanwhile. The delay is injected where the writer
    # asks whether a segment is still held.
    real_flock = fcntl.flock

    def slow_flock(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_NB:  # the writer's probe; the worker's own locks block instead
            time.sleep(0.03)
        real_flock(fd, operation)

    monkeypatch.setattr(journal.fcntl, "flock", slow_flock)
    worker = Journal(tmp_path)
    appended: list[int] = []
    stop = threading.Event()

    def append() -> None:
        n = 0
        while not stop.is_set():
            worker.append(line(n))
            appended.append(n)
            n += 1
            if n % 40 == 0:
                worker.close()  # rotates: the next append starts a new segment
            time.sleep(0.0005)  # a paced stream of hits, not a wait on anything
        worker.close()

    thread = threading.Thread(target=append)
    thread.start()
    spool = Spool(tmp_path)
    got: list[int] = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        lines, marks = spool.read(1000)
        got.extend(orjson.loads(x)["n"] for x in lines)
        spool.commit(marks)
        spool.remove_finished()
    stop.set()
    thread.join()
    drain(spool, got)
    assert len(appended) > 1000
    missing = set(appended) - set(got)
    assert not missing, f"{len(missing)} of {len(appended)} appended lines deleted unread"
    assert len(got) == len(set(got)), "lines read twice"
