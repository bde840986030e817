"""No accepted hit is ever lost: store outages, crashes, overload, hostile input, faults during
reports, restarts. Each test starts the real processes and checks the store afterwards.

These are slow (each runs for tens of seconds by design): `pytest -m 'not slow'` leaves them out.
"""

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from mongol.stores import open_store
from mongol.writer import read_status
from tests.conftest import BIN, HitStream, WireServer, http_get, launch, stop_all, stored_numbers, wait_until

pytestmark = pytest.mark.slow
OUTAGE_SECONDS = 30


def health(server) -> str:
    return http_get(server.url + "/healthz")[2].decode(errors="replace")


def assert_each_stored_once(store, numbers, timeout=60):
    """Every number in `numbers` stored exactly once (waiting for the writer to catch up)."""
    numbers = set(numbers)
    wait_until(lambda: numbers <= set(stored_numbers(store)), timeout, f"{len(numbers)} answered hits stored")
    counts = stored_numbers(store)
    assert not {n for n, c in counts.items() if c != 1}, "hits stored more than once"
    return counts


def stored_since(store, stream, mark: int) -> tuple[list[int], dict[int, int]]:
    """The hits `stream` had answered from number `mark` on, and how often each of them (and only they) is
    stored, once every one is."""
    since = [n for n in stream.answered if n >= mark]
    return since, {n: c for n, c in assert_each_stored_once(store, since).items() if n >= mark}


def tally(sent: int, answered: list, counts: dict) -> str:
    """The figures of a run: requests sent, answered 200, hits stored, answered but not stored, and
    stored more than once."""
    duplicated = sum(c - 1 for c in counts.values() if c > 1)
    return (f"{sent} sent, {len(answered)} answered, {len(counts)} stored, {len(set(answered) - set(counts))} lost, "
            f"{duplicated} duplicated")


def ride_out(server, seconds, expect):
    """Keep checking, for the outage's whole length, that the pixel answers and /healthz says `expect`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status, _, body = http_get(server.url + "/healthz")
        assert status == 200 and body.startswith(expect.encode()), body
        time.sleep(0.5)  # sampling the state during a fixed-length outage, not waiting for anything


# 1. Store outage -------------------------------------------------------------------------------

def test_mongodb_outage_loses_nothing(start_server):
    wire = WireServer().start()
    try:
        uri = f"{wire.uri}/outage?serverSelectionTimeoutMS=1000"
        server = start_server("--db", uri)
        stream = HitStream(server.port, rate=200).start()
        reader = open_store(uri)
        wait_until(lambda: reader.count() > 100, 30, "hits stored before the outage")
        reader.close()
        wire.stop()
        first = stream.sent
        wait_until(lambda: "the store has failed" in health(server), 30, "/healthz to report the outage")
        ride_out(server, OUTAGE_SECONDS, "degraded")
        last = stream.sent
        during = [n for n in stream.answered if first <= n < last]
        wire.start()  # the same port, empty: only what was spooled during the outage comes back
        reader = open_store(uri)
        assert_each_stored_once(reader, during)
        wait_until(lambda: health(server).startswith("ok"), 30, "/healthz ok again")
        stream.stop()
        after = [n for n in stream.answered if n >= first]
        counts = {n: c for n, c in assert_each_stored_once(reader, after).items() if n >= first}
        reader.close()
        print(f"mongodb outage: from the stop on, {tally(stream.sent - first, after, counts)} (those before "
              f"went with the stopped server's memory); {len(during)} answered during the {OUTAGE_SECONDS} s, "
              f"all stored once; stream errors {stream.errors}")
        assert len(during) > OUTAGE_SECONDS * 100 and stream.errors == 0
        log = server.log()
        assert log.count("cannot store hits") == 1, log  # said once, not per hit or per retry
        assert log.count("storing hits again") == 1
    finally:
        wire.stop()


def test_sqlite_locked_loses_nothing(start_server, tmp_path):
    uri = f"sqlite://{tmp_path}/hits.db"
    server = start_server("--db", uri)
    stream = HitStream(server.port, rate=200).start()
    store = open_store(uri)
    wait_until(lambda: store.count() > 100, 30, "hits stored before the lock")
    locker = sqlite3.connect(tmp_path / "hits.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holding the database: nobody else writes
    first = stream.sent
    wait_until(lambda: "degraded" in health(server), 30, "/healthz to report the locked store")
    ride_out(server, OUTAGE_SECONDS - 10, "degraded")
    last = stream.sent
    locker.execute("ROLLBACK")
    locker.close()
    stream.stop()
    counts = assert_each_stored_once(store, stream.answered)
    during = [n for n in stream.answered if first <= n < last]
    print(f"sqlite lock: {tally(stream.sent, stream.answered, counts)}; {len(during)} answered while locked, "
          "each stored once")
    assert server.log().count("cannot store hits") == 1
    store.close()


def test_mongodb_down_at_start_and_at_a_writer_restart_keeps_the_pixel_up(tmp_path):
    wire = WireServer().start()
    wire.stop()  # a free port that MongoDB will come back on
    uri, spool = f"{wire.uri}/down?serverSelectionTimeoutMS=1000", tmp_path / "spool"
    server = launch("mongol-serve", ["127.0.0.1:0", "--db", uri, "--spool", str(spool), "--workers", "1"],
                    tmp_path, tmp_path / "serve.log", r"listening on http://127\.0\.0\.1:(\d+)/")
    try:
        assert "serving anyway" in server.log()
        stream = HitStream(server.port, rate=200).start()
        wait_until(lambda: len(stream.answered) > 300, 30, "hits answered with the store down")
        assert health(server).startswith("degraded")
        at_start = list(stream.answered)
        wire.start()
        reader = open_store(uri)
        assert_each_stored_once(reader, at_start)
        wait_until(lambda: health(server).startswith("ok"), 30, "/healthz ok")

        wire.stop()
        mark = stream.sent
        writer = read_status(spool)["pid"]
        os.kill(writer, signal.SIGKILL)  # the writer dies while MongoDB is down: its successor cannot reach it
        wait_until(lambda: read_status(spool).get("pid") not in (None, writer), 30, "a new writer")
        wait_until(lambda: len(stream.answered) > len(at_start) + 1500, 60, "hits answered after the restart")
        assert server.proc.poll() is None, server.log()
        wire.start()  # empty again: only what was spooled since the stop comes back
        stream.stop()
        since, counts = stored_since(reader, stream, mark)
        reader.close()
        print(f"mongodb down at start: {len(at_start)} answered before it came up, all stored once; "
              f"down at a writer restart: {tally(stream.sent - mark, since, counts)}; stream errors {stream.errors}")
        assert stream.errors == 0 and set(stream.statuses) == {200}
        server.signal(signal.SIGTERM)
    finally:
        stop_all([server])
        wire.stop()


def test_stop_is_bounded_by_drain_timeout_with_a_locked_store(start_server, tmp_path):
    uri, spool = f"sqlite://{tmp_path}/hits.db", tmp_path / "spool"
    server = start_server("--db", uri, "--spool", str(spool), "--drain-timeout", "5")
    stream = HitStream(server.port, rate=500).start()
    store = open_store(uri)
    wait_until(lambda: store.count() > 100, 30, "hits stored")
    locker = sqlite3.connect(tmp_path / "hits.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    answered = len(stream.answered)
    wait_until(lambda: len(stream.answered) > answered + 500, 30, "hits answered while locked")
    stream.stop()
    began = time.monotonic()
    assert server.signal(signal.SIGTERM, timeout=60) == 0
    took = time.monotonic() - began
    locker.execute("ROLLBACK")
    locker.close()
    start_server("--db", uri, "--spool", str(spool))
    counts = assert_each_stored_once(store, stream.answered)
    store.close()
    print(f"SIGTERM with --drain-timeout 5 and the store locked: stopped in {took:.1f} s; "
          f"{tally(stream.sent, stream.answered, counts)} after the next start")
    assert took < 5 + 3, took  # the drain, plus the workers' 2 s for requests in flight


# 2. Crash ---------------------------------------------------------------------------------------

def test_kill_9_under_load_loses_no_answered_hit(start_server, store_uri, store, tmp_path):
    spool = tmp_path / "spool"
    server = start_server("--db", store_uri, "--spool", str(spool))
    stream = HitStream(server.port, rate=2000).start()
    wait_until(lambda: len(stream.answered) > 2500, 30, "load")
    os.kill(read_status(spool)["pid"], signal.SIGSTOP)  # a writer behind (else it may have stored all)
    wait_until(lambda: len(stream.answered) > 3000, 30, "load")
    os.kill(server.proc.pid, signal.SIGKILL)  # the supervisor; its workers and writer die with it
    server.proc.wait(10)
    stream.stop()
    answered = list(stream.answered)
    assert list(spool.glob("*.jsonl")), "nothing left in the spool to replay: the test proves nothing"
    again = start_server("--db", store_uri, "--spool", str(spool))
    counts = assert_each_stored_once(store, answered)
    print(f"kill -9: {tally(stream.sent, stream.answered, counts)}")
    metrics = http_get(again.url + "/metrics")[2].decode()
    assert re.search(r"^mongol_hits_replayed_total [1-9]", metrics, re.M), metrics


def serve_in_pid_namespace(tmp_path, name, *args):
    """mongol-serve as PID 1 of a new PID namespace, as in a container: its writer and workers get
    the same PIDs at every start. Killing the returned process kills the whole namespace."""
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", str(BIN / "mongol-serve"),
                                 "127.0.0.1:0", *args], stdout=out, stderr=out, stdin=subprocess.DEVNULL)

    def listening():
        assert proc.poll() is None, log.read_text()
        return re.search(r"listening on http://127\.0\.0\.1:(\d+)/", log.read_text())

    port = int(wait_until(listening, 30, "mongol-serve to listen").group(1))
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[2].startswith(b"ok"), 30, "/healthz ok")
    return proc, port


def stored_pairs(store) -> dict[tuple[str, int], int]:
    """How many times each (site, n) of the hit streams is stored."""
    counts: dict[tuple[str, int], int] = {}
    for hit in store.hits():
        key = (hit["site"], int(hit["n"]))
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_container_restarts_with_the_same_pids_lose_no_answered_hit(start_server, tmp_path):
    # The store is locked through both runs, so the first run's segments still wait in the spool when
    # the second run's worker, with the same PID, starts its first segment.
    spool, uri = tmp_path / "spool", f"sqlite://{tmp_path}/hits.db"
    open_store(uri).close()
    locker = sqlite3.connect(tmp_path / "hits.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    answered, sent = [], 0
    for run in range(2):
        proc, port = serve_in_pid_namespace(tmp_path, f"run{run}", "--db", uri, "--spool", str(spool),
                                            "--workers", "1")
        stream = HitStream(port, rate=1000, site=f"run{run}.org").start()
        wait_until(lambda s=stream: len(s.answered) > 2500, 60, "load")
        stream.stop()
        answered += [(f"run{run}.org", n) for n in stream.answered]
        sent += stream.sent
        proc.kill()  # kill -9 of the container: every process in the namespace dies
        proc.wait(10)
    locker.execute("ROLLBACK")
    locker.close()
    start_server("--db", uri, "--spool", str(spool))
    store = open_store(uri)
    wait_until(lambda: not list(spool.glob("*.jsonl")), 60, "the spool to drain")
    counts = stored_pairs(store)
    store.close()
    figures = f"container restarts (same PIDs): {tally(sent, answered, counts)}"
    print(figures)
    assert set(answered) <= set(counts), figures
    assert not [k for k, c in counts.items() if c != 1], figures


# 3. Overload ------------------------------------------------------------------------------------

def rss_of_tree(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(match.group(1)) * 1024 if match else 0
    return total


def test_overload_keeps_memory_bounded_and_loses_nothing(start_server, tmp_path):
    seconds = int(os.environ.get("MONGOL_OVERLOAD_SECONDS", "300"))
    uri = f"sqlite://{tmp_path}/hits.db"
    server = start_server("--db", uri)
    wrk = subprocess.Popen(["wrk", "-t1", "-c50", f"-d{seconds}s", "-s", str(Path(__file__).parent.parent / "bench"
                                                                             / "pixel.lua"), server.url + "/"],
                           stdout=subprocess.PIPE, text=True)
    peak = 0
    while wrk.poll() is None:
        peak = max(peak, rss_of_tree(server.proc.pid))
        time.sleep(1)  # sampling memory once a second while wrk runs
    out = wrk.stdout.read()
    wrk.stdout.close()
    total = int(re.search(r"(\d+) requests in", out).group(1))
    failed = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    answered = total - failed
    store = open_store(uri)
    wait_until(lambda: store.count() >= answered, 300, "the spool to drain into the store")
    stored = store.count()
    store.close()
    print(f"overload {seconds} s: {total} sent, {answered} answered 200, {stored} stored, "
          f"{max(answered - stored, 0)} lost, peak RSS {peak / 2**20:.0f} MiB")
    assert failed == 0
    assert answered <= stored <= answered + 50  # at most one request in flight per connection at the end
    assert peak < 400 * 2**20


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_full_disk_answers_503_and_no_answered_hit_lives_in_memory_only(tmp_path):
    """The spool on a 1 MiB tmpfs. First the disk is full before the day's first hit (no salt file
    yet): 503, not 500. Then the store is locked, so nothing drains the spool, until the disk fills:
    the pixel answers 503 for what the disk refuses, and a `kill -9` of the worker loses nothing
    answered. Once the store is back, every answered hit is stored."""
    spool, uri = tmp_path / "spool", f"sqlite://{tmp_path}/hits.db"
    spool.mkdir()
    open_store(uri).close()
    script = (f"mount -t tmpfs -o size=1m tmpfs {spool} && exec {BIN / 'mongol-serve'} 127.0.0.1:0 "
              f"--db {uri} --spool {spool} --workers 1")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                                stdout=out, stderr=out)
    try:
        port = int(wait_until(lambda: re.search(r"listening on http://127\.0\.0\.1:(\d+)/", log.read_text()), 30,
                              "mongol-serve to listen").group(1))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_get(url + "/healthz")[0] == 200, 30, "/healthz")
        inside = Path(f"/proc/{proc.pid}/root{spool}")  # the tmpfs, as mongol-serve's mount namespace sees it
        filler = inside / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            f.write(b"x" * 2**21)  # fills the disk: no room for the day's salt file
        first = [http_get(f"{url}/p.gif?site=salt.org&url=/{n}")[0] for n in range(20)]
        assert set(first) == {503}, first
        health_status, _, health_body = http_get(url + "/healthz")
        assert health_status == 503 and b"refuses hits" in health_body, health_body
        filler.unlink()
        wait_until(lambda: http_get(f"{url}/p.gif?site=salt.org&url=/again")[0] == 200, 30, "the pixel back")

        locker = sqlite3.connect(tmp_path / "hits.db", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        stream = HitStream(port, rate=3000).start()
        wait_until(lambda: stream.statuses.get(503, 0) > 200, 60, "the spool's disk to fill up")
        writer = read_status(inside)["pid"]
        worker = next(pid for pid in children(proc.pid) if pid != writer)
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: len(children(proc.pid)) == 2 and worker not in children(proc.pid), 30, "a new worker")
        refused = stream.statuses.get(503, 0)
        locker.execute("ROLLBACK")
        locker.close()
        answered_before = len(stream.answered)
        wait_until(lambda: len(stream.answered) > answered_before + 1000, 60, "hits answered again")
        stream.stop()
        store = open_store(uri)
        counts = assert_each_stored_once(store, stream.answered, timeout=120)
        text = log.read_text()
        assert "No space left on device" in text and "answering 503" in text and "takes hits again" in text
        assert "Traceback" not in text, text
        print(f"full disk: {tally(stream.sent, stream.answered, counts)}; {refused} answered 503 while full, "
              f"kill -9 of the worker while full; 20 of 20 first hits without a salt answered 503")
        store.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# Files moved under a running server ------------------------------------------------------------

@pytest.mark.parametrize("how", ["deleted", "replaced by a copy"])
def test_sqlite_file_deleted_or_replaced_under_the_server(start_server, tmp_path, how):
    db = tmp_path / "hits.db"
    server = start_server("--db", f"sqlite://{db}", "--workers", "1")
    stream = HitStream(server.port, rate=500).start()
    store = open_store(f"sqlite://{db}")
    wait_until(lambda: store.count() > 200, 30, "hits stored")
    store.close()
    mark = stream.sent
    if how == "deleted":
        db.unlink()
    else:
        copy = tmp_path / "copy.db"
        with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        os.replace(copy, db)
    wait_until(lambda: len(stream.answered) > mark + 1000, 30, "hits answered after the move")
    stream.stop()
    since = [n for n in stream.answered if n >= mark]
    wait_until(lambda: db.exists() and set(since) <= set(stored_numbers(open_store(f"sqlite://{db}"))), 30,
               "hits answered after the move in the file now at the path")
    store = open_store(f"sqlite://{db}")
    counts = {n: c for n, c in stored_numbers(store).items() if n >= mark}
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store.close()
    print(f"SQLite file {how}: from the move on, {tally(stream.sent - mark, since, counts)}")
    assert not [n for n, c in counts.items() if c != 1]
    assert server.log().count("was removed or replaced") == 1, server.log()


def test_spool_folder_deleted_under_the_server(start_server, tmp_path):
    spool, uri = tmp_path / "spool", f"sqlite://{tmp_path}/hits.db"
    server = start_server("--db", uri, "--spool", str(spool), "--workers", "1")
    stream = HitStream(server.port, rate=500).start()
    store = open_store(uri)
    wait_until(lambda: store.count() > 200, 30, "hits stored")
    mark = stream.sent
    shutil.rmtree(spool)
    wait_until(lambda: len(stream.answered) > mark + 3000, 60, "hits answered after the removal")
    stream.stop()
    since, counts = stored_since(store, stream, mark)
    store.close()
    print(f"spool folder removed: from the removal on, {tally(stream.sent - mark, since, counts)}; "
          f"answers {stream.statuses}")
    assert set(stream.statuses) == {200}
    assert spool.is_dir() and "removed; making it again" in server.log()


def test_spool_read_only_for_a_while_does_not_crash_the_writer(tmp_path):
    spool, uri = tmp_path / "spool", f"sqlite://{tmp_path}/hits.db"
    spool.mkdir()
    script = (f"mount -t tmpfs -o size=64m tmpfs {spool} && exec {BIN / 'mongol-serve'} 127.0.0.1:0 "
              f"--db {uri} --spool {spool} --workers 1")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["unshare", "--mount", "sh", "-c", script], stdout=out, stderr=out)
    try:
        port = int(wait_until(lambda: re.search(r"listening on http://127\.0\.0\.1:(\d+)/", log.read_text()), 30,
                              "mongol-serve to listen").group(1))
        first = HitStream(port, rate=500).start()
        wait_until(lambda: len(first.answered) > 500, 30, "hits")
        first.stop()
        # a folder cannot be remounted read-only while files in it are open for writing: once idle, the
        # worker closes its segment and the writer deletes it
        wait_until(lambda: not list(Path(f"/proc/{proc.pid}/root{spool}").glob("*.jsonl")), 30, "an idle spool")
        remount = ["nsenter", "-t", str(proc.pid), "-m", "mount", "-o"]
        subprocess.run([*remount, "remount,ro", str(spool)], check=True)
        stream = HitStream(port, rate=500, site="second.org").start()
        wait_until(lambda: stream.statuses.get(503, 0) > 1000, 30, "the pixel to refuse hits")
        subprocess.run([*remount, "remount,rw", str(spool)], check=True)
        answered = len(stream.answered)
        wait_until(lambda: len(stream.answered) > answered + 500, 30, "hits answered again")
        stream.stop()
        store = open_store(uri)
        assert_each_stored_once(store, first.answered)
        answered = [("second.org", n) for n in stream.answered]
        wait_until(lambda: set(answered) <= set(stored_pairs(store)), 30, "the hits answered after it")
        counts = {key: c for key, c in stored_pairs(store).items() if key[0] == "second.org"}
        store.close()
        text = log.read_text()
        print(f"spool read-only: {tally(stream.sent, answered, counts)}; answers {stream.statuses}")
        assert set(answered) == set(counts)
        assert "exited with" not in text and "Traceback" not in text, text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# 4. Hostile input at volume ---------------------------------------------------------------------

def test_fuzzed_requests_never_break_the_server_or_the_store(start_server, tmp_path):
    import socket

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    uri = f"sqlite://{tmp_path}/hits.db"
    server = start_server("--db", uri)
    token = st.binary(min_size=0, max_size=40)
    names = st.one_of(token, st.sampled_from([b"$where", b"a.b", b"time", b"pageviews", b"_id", b"_ip", b"_ua",
                                              b"site", b"url", b"%24gt", b"x%2Ey", b"%00", b"_", b"$", b"."]))
    pairs = st.lists(st.tuples(names, token), max_size=30).map(lambda kv: b"&".join(k + b"=" + v for k, v in kv))
    query = st.tuples(st.sampled_from([b"", b"site=fuzz.org&url=/f&"]), pairs).map(b"".join)
    header_value = st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
    request = st.tuples(
        st.sampled_from([b"GET"] * 6 + [b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"BREW", b"G\x00T", b""]),
        st.binary(max_size=60).map(lambda b: b"/" + b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")),
        query,
        st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1\x00", b"", b"FOO"]),
        st.lists(st.tuples(st.sampled_from([b"Referer", b"User-Agent", b"X-Forwarded-For", b"Content-Length",
                                            b"Transfer-Encoding", b"Host", b"X"]) | token, header_value),
                 max_size=8),
    )
    statuses: dict[int, int] = {}

    def send(raw: bytes) -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        if data:
            assert data.startswith(b"HTTP/1.1 "), data[:100]
            status = int(data[9:12])
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500, data[:300]

    @settings(max_examples=int(os.environ.get("MONGOL_FUZZ_EXAMPLES", "4000")), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(request, st.binary(max_size=300))
    def fuzz(parts, garbage):
        method, path, query, version, headers = parts
        head = method + b" " + path + (b"?" + query if query else b"") + b" " + version + b"\r\n"
        head += b"Host: fuzz\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
        send(head)
        send(garbage)

    fuzz()
    assert http_get(server.url + "/healthz")[0] == 200  # alive
    # the fields the server itself sets, as a plain request shows them
    http_get(server.url + "/p.gif?site=plain.org&url=/", {"User-Agent": "Mozilla/5.0", "Referer": "http://a.b/"})
    assert server.signal() == 0  # stores what it took, stops cleanly
    store = open_store(uri)
    [plain] = store.hits(site="plain.org")
    server_fields = {name for name in plain if name.startswith("_")} | {"time", "pageviews"}
    for hit in store.hits():
        for name in hit:
            assert name in server_fields or not (name.startswith(("$", "_")) or "." in name or "\x00" in name
                                                 or name in ("time", "pageviews")), name
    print(f"fuzz: {sum(statuses.values())} answers by status {dict(sorted(statuses.items()))}, "
          f"{store.count()} hits stored")
    assert statuses.get(200, 0) > 0 and store.count() > 0
    store.close()


# 5. Reports under faults ------------------------------------------------------------------------

SLOW_MAPPER = "function () { var t = Date.now(); while (Date.now() - t < 2) {} emit(this.url, 1); }"


def report_config(tmp_path, out, extra=""):
    config = tmp_path / "reports.cfg"
    config.write_text(f"[DEFAULT]\noutput = {out}\n[top]\nsite = other.org\ntime = hours:1\n"
                      f"[stream.org]\ntime = minutes:1\nmapper = {SLOW_MAPPER}\n"
                      f"reducer = function (k, v) {{ return Array.sum(v); }}\n{extra}")
    return config


def fill(store, n, minutes_ago=5):
    from datetime import UTC, datetime, timedelta

    from mongol.hit import new_id

    when = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    store.insert_many([{"_id": new_id(when.timestamp()), "time": when, "site": "stream.org", "url": f"/{i % 7}",
                        "pageviews": 1} for i in range(n)])


def js_workers_running(pid: int) -> bool:
    return any(Path(f"/proc/{child}/cmdline").exists()
               for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def test_kill_9_of_a_report_leaves_files_and_store_alone(tmp_path, store_uri, store):
    out = tmp_path / "out"
    fill(store, 3000)
    config = report_config(tmp_path, out)
    first = subprocess.run([str(BIN / "mongol-report"), str(config), "--db", store_uri], capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert first.returncode == 0, first.stderr
    assert store.count() == 0  # [stream.org] purged its site's hits older than a minute
    fill(store, 3000)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = subprocess.Popen([str(BIN / "mongol-report"), str(config), "--db", store_uri],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: js_workers_running(proc.pid), 60, "the slow JavaScript section to start")
    proc.kill()
    proc.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.endswith(".tmp")} == before
    assert store.count() == 3000  # no purge for a report that was not written
    again = subprocess.run([str(BIN / "mongol-report"), str(config), "--db", store_uri], capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr
    assert store.count() == 0
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_store_disappearing_mid_report_fails_the_run_clearly(tmp_path):
    wire = WireServer().start()
    try:
        uri = f"{wire.uri}/reports?serverSelectionTimeoutMS=1000"
        store = open_store(uri)
        fill(store, 3000)
        store.close()
        config = report_config(tmp_path, tmp_path / "out", "[after]\nlimit = 3\n")
        proc = subprocess.Popen([str(BIN / "mongol-report"), str(config), "--db", uri], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_until(lambda: js_workers_running(proc.pid), 60, "the slow JavaScript section to start")
        wire.stop()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        assert "failed" in err and "127.0.0.1" in err and "Traceback" not in err
        print("store gone mid-report:", err.strip().splitlines()[-1])
    finally:
        wire.stop()


# 6. Restarts ------------------------------------------------------------------------------------

def test_sigterm_under_load_drains_and_exits_0(start_server, store_uri, store):
    server = start_server("--db", store_uri)
    stream = HitStream(server.port, rate=2000).start()
    wait_until(lambda: len(stream.answered) > 3000, 30, "load")
    started = time.monotonic()
    assert server.signal(signal.SIGTERM, timeout=60) == 0
    took = time.monotonic() - started
    stream.stop()
    counts = stored_numbers(store)  # no waiting: everything is stored before the exit
    assert set(stream.answered) <= set(counts) and all(c == 1 for c in counts.values())
    print(f"SIGTERM under load: {tally(stream.sent, stream.answered, counts)}, stopped in {took:.1f} s")
    assert took < 20


def test_sighup_reopens_the_log_file(start_server, tmp_path):
    log = tmp_path / "mongol.log"
    server = start_server("--db", f"sqlite://{tmp_path}/h.db", log_file=log)
    assert "listening on" in log.read_text()
    log.rename(tmp_path / "mongol.log.1")  # what logrotate does
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_until(lambda: log.exists(), 10, "the log file to be opened again")
    assert server.signal() == 0
    assert "stopped, 0 hits stored" in log.read_text()
    assert "stopping" in log.read_text() and "stopping" not in (tmp_path / "mongol.log.1").read_text()


def test_metrics(start_server, tmp_path):
    server = start_server("--db", f"sqlite://{tmp_path}/h.db")
    for i in range(30):
        http_get(f"{server.url}/p.gif?site=a&url=/{i}")
    for _ in range(4):
        http_get(server.url + "/p.gif")  # no site, no Referer
    http_get(server.url + "/p.gif?site=a&url=/", method="POST")
    store = open_store(f"sqlite://{tmp_path}/h.db")
    wait_until(lambda: store.count() == 30, 10, "30 hits stored")
    store.close()

    def value(text, name):
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else None

    def settled():  # workers hand their counts over about once a second
        text = http_get(server.url + "/metrics")[2].decode()
        done = value(text, "mongol_hits_stored_total") == 30 and value(text, "mongol_hits_accepted_total") == 30
        return text if done and value(text, 'mongol_hits_rejected_total{reason="method"}') else None

    text = wait_until(settled, 10, "the writer's metrics")
    assert value(text, "mongol_hits_accepted_total") == 30
    assert value(text, "mongol_hits_spooled_total") == 30
    assert value(text, 'mongol_hits_rejected_total{reason="no site"}') == 4
    assert value(text, 'mongol_hits_rejected_total{reason="method"}') == 1
    assert value(text, "mongol_store_errors_total") == 0
    assert value(text, "mongol_queue_depth") == 0
    assert re.search(r"^mongol_spool_bytes\{pid=\"\d+\"\} \d", text, re.M)
