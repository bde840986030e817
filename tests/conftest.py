"""Fixtures that start the real parts: the MongoDB wire-protocol test server and mongol-serve; and a
real MaxMind-format GeoIP database (`geoip`).

Set MONGOL_TEST_MONGODB_URI (e.g. mongodb://localhost:27017) to run the MongoDB tests against a
real mongod instead of the wire-protocol server in tests/wire. A missing service fails the tests;
it never skips them.
"""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from mongol.stores import Store, open_store

HERE = Path(__file__).parent
WIRE = HERE / "wire"
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class WireServer:
    """The in-memory MongoDB wire-protocol server of tests/wire, as a subprocess that a test may stop
    and start again on the same port (its data does not survive a stop)."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def start(self) -> "WireServer":
        if not (WIRE / "node_modules").is_dir():
            pytest.fail("the MongoDB test server is not installed: run `npm ci --prefix tests/wire` (README)")
        proc = subprocess.Popen(["node", str(WIRE / "server.js"), str(self.port)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        port: list[int] = []

        def read() -> None:
            for line in proc.stdout:
                self.lines.append(line)
                m = re.match(r"listening on (\d+)", line)
                if m:
                    port.append(int(m.group(1)))

        threading.Thread(target=read, daemon=True).start()
        wait_until(lambda: port or proc.poll() is not None, START_TIMEOUT, "the MongoDB test server")
        if not port:
            proc.wait()
            pytest.fail("the MongoDB test server did not start:\n" + "".join(self.lines))
        self.proc, self.port = proc, port[0]
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()  # the server stops when its stdin closes
            self.proc.wait(10)
            self.proc.stdout.close()
            self.proc = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def mongodb_base() -> Iterator[str]:
    """A MongoDB server URI without a database: a real mongod if configured, else tests/wire."""
    if os.environ.get("MONGOL_TEST_MONGODB_URI"):
        yield os.environ["MONGOL_TEST_MONGODB_URI"].rstrip("/")
        return
    server = WireServer().start()
    yield server.uri
    server.stop()


@pytest.fixture
def mongodb_uri(mongodb_base: str) -> Iterator[str]:
    """A new, empty MongoDB database, dropped afterwards."""
    name = "mongol_test_" + uuid.uuid4().hex[:12]
    yield f"{mongodb_base}/{name}?serverSelectionTimeoutMS=5000"
    from pymongo import MongoClient

    with MongoClient(mongodb_base) as client:
        client.drop_database(name)


@pytest.fixture(params=["sqlite", "mongodb"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of each kind: a SQLite file, or a new MongoDB database."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/hits.db"
    return request.getfixturevalue("mongodb_uri")


@pytest.fixture
def store(store_uri: str) -> Iterator[Store]:
    s = open_store(store_uri)
    yield s
    s.close()


@dataclass
class Server:
    """A running mongol-serve subprocess."""

    proc: subprocess.Popen
    log_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        self.stopped = True
        return code


def launch(program: str, args: list[str], tmp_path: Path, log_path: Path, listening: str,
           env: dict[str, str] | None = None, log_file: Path | None = None) -> Server:
    """Start BIN/program with its output in `log_path` and wait for the log line `listening` (a regex
    whose group 1 is the port). `log_file`: where the program logs instead (its --log-file).
    The default store and spools live in the test's folder, never in the home directory."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(BIN / program), *args], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                env=env)
    server = Server(proc, log_file or log_path)

    def started() -> object:
        if proc.poll() is not None:
            pytest.fail(f"{program} exited with {proc.returncode}:\n{server.log()}\n{log_path.read_text()}")
        return re.search(listening, server.log())

    server.port = int(wait_until(started, START_TIMEOUT, f"{program} to listen").group(1))
    return server


def stop_all(servers: list[Server]) -> None:
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `mongol-serve 127.0.0.1:0 ARGS...`; returns once it answers /healthz."""
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None, log_file: Path | None = None) -> Server:
        """`log_file`: the server logs there (--log-file); else its stderr goes to a file in tmp_path."""
        if log_file is not None:
            args = (*args, "--log-file", str(log_file))
        server = launch("mongol-serve", ["127.0.0.1:0", *args], tmp_path, tmp_path / f"serve-{len(servers)}.log",
                        r"listening on http://127\.0\.0\.1:(\d+)/", env, log_file)
        servers.append(server)
        # "ok" once the writer has reported: it has opened the store and looked at the spool once
        wait_until(lambda: http_get(server.url + "/healthz")[2].startswith(b"ok"), START_TIMEOUT, "/healthz ok")
        return server

    yield start
    stop_all(servers)


@pytest.fixture
def start_ingest(tmp_path):
    """Start `mongol-ingest 127.0.0.1:0 ARGS...`; returns once it listens (its writer has opened the store)."""
    started: list[Server] = []

    def start(*args: str) -> Server:
        ingester = launch("mongol-ingest", ["127.0.0.1:0", *args], tmp_path, tmp_path / f"ingest-{len(started)}.log",
                          r"listening on udp://127\.0\.0\.1:(\d+) ")
        started.append(ingester)
        return ingester

    yield start
    stop_all(started)


def raw_request(port: int, request: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client-side checks) and parse the HTTP response."""
    import http.client

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:

        def send() -> None:
            # the server may answer and close before reading a huge request to its end
            with contextlib.suppress(OSError):
                sock.sendall(request)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        response = http.client.HTTPResponse(sock, method=request.split(b" ", 1)[0].decode("latin-1"))
        response.begin()
        body = response.read()
        sender.join(timeout)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def http_get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()
    except OSError:
        return 0, {}, b""


class HitStream:
    """A steady stream of hits from a thread, each with its own number `n`; remembers which were
    answered with the pixel. Pacing between requests only sets the rate; nothing waits on it."""

    def __init__(self, port: int, rate: float = 200.0, site: str = "stream.org") -> None:
        self.port, self.rate, self.site = port, rate, site
        self.answered: list[int] = []
        self.errors = 0
        self.statuses: dict[int, int] = {}
        self._next = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def sent(self) -> int:
        return self._next

    def start(self) -> "HitStream":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        import http.client

        conn = None
        interval = 1.0 / self.rate
        due = time.monotonic()
        while not self._stop.is_set():
            n = self._next
            self._next += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", f"/p.gif?site={self.site}&url=/page/{n % 50}&n={n}")
                response = conn.getresponse()
                response.read()
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                if response.status == 200:
                    self.answered.append(n)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                due = time.monotonic()
        if conn is not None:
            conn.close()


def stored(store: Store, n: int, timeout: float = 10) -> list[dict]:
    """The hits of the store once it holds `n` of them, oldest first."""
    wait_until(lambda: store.count() >= n, timeout, f"{n} hits in the store")
    return list(store.hits())


def by_url(store: Store, n: int) -> dict[str, dict]:
    """The hits of the store once it holds `n` of them, by url."""
    return {h["url"]: h for h in stored(store, n)}


def stored_numbers(store: Store) -> dict[int, int]:
    """How many times each stream number `n` is stored."""
    counts: dict[int, int] = {}
    for hit in store.hits():
        if "n" in hit:
            n = int(hit["n"])
            counts[n] = counts.get(n, 0) + 1
    return counts


@pytest.fixture(scope="module")
def geoip(tmp_path_factory) -> Path:
    """A real MaxMind DB (GeoIP2 City's layout), written by mmdb-writer and read back by maxminddb."""
    path = tmp_path_factory.mktemp("geoip") / "city.mmdb"
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City", languages=["en"],
                        description="Mongol's test places")

    def place(country, city=None):
        record = {"country": {"iso_code": country, "names": {"en": country}}}
        if city:
            record["city"] = {"names": {"en": city, "de": city + "-de"}}
        return record

    writer.insert_network(IPSet(["203.0.113.0/25"]), place("DE", "Hamburg"))
    writer.insert_network(IPSet(["203.0.113.128/25"]), place("DE", "Berlin"))
    writer.insert_network(IPSet(["198.51.100.0/24"]), place("FR"))
    writer.insert_network(IPSet(["2001:db8:1::/48"]), place("JP", "Tokyo"))
    writer.to_db_file(str(path))
    return path
