"""The spool's own guarantees, process by process: a segment is never overwritten, never read from
the wrong place, and never deleted with a line unread, whatever the timing. Each test counts lines
by the exact set appended (a number per line) against the set the drain side read back.

The end-to-end forms of these (a PID namespace, a real writer) are in test_reliability.py.
"""

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import threading
import time

import orjson
import pytest

from mongol import journal
from mongol.app import GIF
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


# ---- answers wait for their hits' write (mongol-serve groups a turn's hits in one write) ----------

# A worker as mongol-serve runs it (PixelApp, a grouped Recorder, the server's before_send), on a
# spool in argv[1], or on /dev/full (every write refused with ENOSPC, as by a full disk) when
# argv[1] is "full". It prints its port.
WORKER_SCRIPT = r'''
import logging, os, sys
from gevent import monkey
monkey.patch_all()
import gevent
from mongol.app import PixelApp
from mongol.httpserver import WSGIServer
from mongol.journal import Journal, Recorder

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


class FullJournal(Journal):
    def _make(self):
        return os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)


folder = sys.argv[1]
journal = FullJournal(sys.argv[2]) if folder == "full" else Journal(folder)
recorder = Recorder(journal, grouped=True)
server = WSGIServer(("127.0.0.1", 0), PixelApp(recorder), before_send=recorder.flush, inline=True)
server.start()
print(server.server_port, flush=True)
gevent.wait()
'''


def start_worker(tmp_path, spool: str) -> tuple[subprocess.Popen, int]:
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, spool, str(tmp_path / "unused")],
                                stdout=subprocess.PIPE, stderr=log)
    port = int(proc.stdout.readline() or 0)
    proc.stdout.close()
    assert port, (tmp_path / "worker.log").read_text()
    return proc, port


def exchange(port: int, data: bytes, pixels: int) -> bytes:
    """Send `data` on a new connection; read until the server closes it, `pixels` GIFs have come, or
    5 s pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        got = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while got.count(GIF) < pixels and (chunk := sock.recv(65536)):
                got += chunk
        return got


def hit_request(n: int, version: str = "1.1") -> bytes:
    return f"GET /p.gif?site=s.org&url=/&n={n} HTTP/{version}\r\nHost: t\r\n\r\n".encode()


# Pipelined hits on a connection kept alive are answered at the end of the loop's turn (the server's
# _flush); an HTTP/1.0 request, whose connection closes, by the connection itself (Responder.sendall,
# from handle).
CASES = {
    "pipelined": b"".join(hit_request(n) for n in (1, 2, 3)),
    "connection close": hit_request(1, version="1.0"),
}


@pytest.mark.parametrize("case", CASES)
def test_no_answer_leaves_when_the_disk_refuses_its_hit(tmp_path, case):
    """The spool refuses the turn's write: no 200 goes out for its hits (the connection closes
    without one), and the next hit is answered 503, as each is while the disk refuses."""
    proc, port = start_worker(tmp_path, "full")
    try:
        got = exchange(port, CASES[case], CASES[case].count(b"GET "))
        assert b"200 OK" not in got, got
        assert got == b"", got
        assert exchange(port, hit_request(9, version="1.0"), 1).startswith(b"HTTP/1.1 503 "), "a 503 after that"
    finally:
        proc.kill()
        proc.wait()
    log = (tmp_path / "worker.log").read_text()
    assert "No space left on device" in log and "answering 503" in log and "Traceback" not in log, log


@pytest.mark.parametrize("case", CASES)
def test_each_answered_hit_is_in_the_spool(tmp_path, case):
    """The same requests with a disk that takes them: every answer is a 200, and its hit is in the
    spool by then."""
    spool = tmp_path / "spool"
    proc, port = start_worker(tmp_path, str(spool))
    try:
        got = exchange(port, CASES[case], CASES[case].count(b"GET "))
        lines = b"".join(path.read_bytes() for path in spool.glob(f"*{journal.SUFFIX}")).splitlines()
    finally:
        proc.kill()
        proc.wait()
    answered = got.count(b"HTTP/1.1 200 OK\r\n")
    assert answered == CASES[case].count(b"GET "), got
    assert sorted(orjson.loads(x)["n"] for x in lines) == [str(n) for n in range(1, answered + 1)]
