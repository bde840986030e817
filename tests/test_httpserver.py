"""mongol.httpserver over real sockets: the server runs in a subprocess (gevent monkey-patches it), its app
wrapped in wsgiref.validate, and the tests talk to it with raw sockets and http.client."""

import calendar
import contextlib
import http.client
import json
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")

# The server process: argv[1] is a JSON object of WSGIServer keyword arguments, plus "stop_timeout"
# (what SIGTERM passes to stop()), "listen_fd" (serve an inherited listening socket) and "validate"
# (false: the app is not wrapped in wsgiref.validate, whose wrapper turns every response list into an
# iterator, so that the server's path for lists runs too).
SERVER_SCRIPT = r'''
import json, logging, os, signal, socket, sys, time
from gevent import monkey
monkey.patch_all()
import gevent
from gevent.event import Event
from wsgiref.validate import validator
from mongol.httpserver import WSGIServer

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
config = json.loads(sys.argv[1])
stop_timeout = config.pop("stop_timeout", 10.0)
listen_fd = config.pop("listen_fd", None)
validate = config.pop("validate", True)
GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
SHOWN = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
         "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT", "CONTENT_TYPE", "CONTENT_LENGTH",
         "wsgi.version", "wsgi.url_scheme", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
         "wsgi.input_terminated"]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = environ["QUERY_STRING"]
    if path.startswith("/echo"):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        shown = {key: environ[key] for key in SHOWN if key in environ}
        shown.update((k, v) for k, v in environ.items() if k.startswith("HTTP_"))
        shown["query_hex"] = query.encode("latin-1").hex()
        shown["path_hex"] = path.encode("latin-1").hex()
        shown["body_hex"] = body.hex()
        shown["pid"] = os.getpid()
        data = json.dumps(shown).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]
    if path == "/error":
        raise RuntimeError("the test app fails on purpose")
    if path == "/error-after-headers":
        def failing():
            yield b"partial"
            raise RuntimeError("the test app fails in the middle of its body")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return failing()
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"part %d;" % i for i in range(int(query or 3)))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
        write(b"hello ")
        return [b"world"]
    if path == "/nolength":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"no ", b"length ", b"given"]
    if path == "/server-header":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Server", "custom"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/exc-info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("changed its mind")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Content-Length", "5")],
                           sys.exc_info())
        return [b"sorry"]
    if path == "/exc-info-late":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"begun")
        try:
            raise ValueError("too late to change its mind")
        except ValueError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"never sent"]
    if path == "/closing":
        class Body:
            def __iter__(self):
                yield b"a"
                yield b"b"
            def close(self):
                sys.stderr.write("closed body of " + query + "\n")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()
    if path == "/no-content":
        start_response("204 No Content", [])
        return []
    if path == "/big":
        body = b"x" * int(query)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/pixel-like":  # as mongol.app answers: HEAD gets the GET's headers and no body
        start_response("200 OK", [("Content-Type", "image/gif"), ("Content-Length", str(len(GIF)))])
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [GIF]
    if path == "/where":  # which greenlet runs the application: the loop's own (inline) or the connection's
        body = b"loop" if gevent.getcurrent() is gevent.get_hub() else b"connection"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/app-close":  # the application ends the connection after this response
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3"), ("Connection", "close")])
        return [b"bye"]
    if path == "/slow":
        sys.stderr.write("slow request started\n")
        gevent.sleep(float(query))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"done"]
    start_response("200 OK", [("Content-Type", "image/gif"), ("Content-Length", str(len(GIF)))])
    return [GIF]


nofile = config.pop("nofile_after_start", None)
listener = socket.socket(fileno=listen_fd) if listen_fd is not None else ("127.0.0.1", 0)
server = WSGIServer(listener, validator(app) if validate else app, **config)
server.start()
if nofile:  # a descriptor limit below what the server was told it may use
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(server.server_port, flush=True)
stop = Event()
gevent.signal_handler(signal.SIGTERM, stop.set)
stop.wait()
started = time.monotonic()
server.stop(timeout=stop_timeout)
sys.stderr.write(f"stopped in {time.monotonic() - started:.3f} s\n")
'''

# Small limits, so that the tests can exceed them cheaply.
LIMITS = {"max_request_line": 1024, "max_header_bytes": 2048, "max_headers": 20, "max_body": 10_000}


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path
    config: dict

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def get(self, path: str = "/", method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def echo(self, path: str = "/echo", **kwargs: object) -> dict:
        status, _, body = self.get(path, **kwargs)
        assert status == 200, body
        return json.loads(body)

    def assert_alive(self) -> None:
        assert self.get("/pixel.gif")[::2] == (200, GIF)


def launch(log_path: Path, config: dict, pass_fds: tuple[int, ...] = ()) -> Server:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-W", "error", "-c", SERVER_SCRIPT, json.dumps(config)], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, pass_fds=pass_fds)
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    if not line.strip().isdigit():
        proc.kill()
        proc.wait()
        pytest.fail(f"the test server did not start:\n{log_path.read_text(errors='replace')}")
    return Server(proc, int(line), log_path, config)


def shut_down(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="module", params=["validated", "plain", "inline"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that leave it running (each checks that it still serves): its app
    wrapped in wsgiref.validate, then the same app bare, which returns lists, then that app run
    `inline` (in the loop, as mongol-serve runs its own)."""
    config = {**LIMITS, "validate": request.param == "validated", "inline": request.param == "inline"}
    running = launch(tmp_path_factory.mktemp("httpserver") / "server.log", config)
    yield running
    shut_down(running)
    log = running.log()
    # Only the tests that make the app fail on purpose produce tracebacks; wsgiref.validate's
    # complaints (a response not closed, a bad header) would show here too.
    assert "AssertionError" not in log and "Exception ignored" not in log and "Warning" not in log, log
    assert running.proc.returncode == 0, log


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    """Start a server of this test's own, with extra WSGIServer arguments."""
    servers: list[Server] = []

    def start(**config: object) -> Server:
        servers.append(launch(tmp_path / f"server-{len(servers)}.log", {**LIMITS, **config}))
        return servers[-1]

    yield start
    for running in servers:
        shut_down(running)


@dataclass
class Response:
    version: str
    status: int
    headers: dict[str, str]
    body: bytes


def read_response(f: object, method: str = "GET") -> Response:
    """One response from a buffered socket file, framed as HTTP says (several may follow each other)."""
    line = f.readline()
    if not line:
        raise EOFError("the server closed the connection")
    version, status, _ = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        name = name.lower()
        assert name not in headers, f"header {name} sent twice"
        headers[name] = value.strip()
    code = int(status)
    if method == "HEAD" or code in (204, 304) or code < 200:
        body = b""
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int(f.readline().split(b";")[0], 16):
            parts.append(f.read(size))
            assert f.read(2) == b"\r\n"
        assert f.readline() == b"\r\n"
        body = b"".join(parts)
    else:
        body = f.read()
    return Response(version, code, headers, body)


@contextlib.contextmanager
def raw(server: Server) -> Iterator[tuple[socket.socket, object]]:
    sock = server.connect()
    f = sock.makefile("rb")
    try:
        yield sock, f
    finally:
        f.close()
        sock.close()


def at_eof(sock: socket.socket, f: object) -> bool:
    """True when the server has closed the connection (reads end), within the socket's timeout."""
    try:
        return f.read(1) == b""
    except ConnectionResetError:
        return True


def request(path: str = "/", method: str = "GET", version: str = "HTTP/1.1", headers: str = "") -> bytes:
    host = "Host: test\r\n" if version == "HTTP/1.1" else ""
    return f"{method} {path} {version}\r\n{host}{headers}\r\n".encode("latin-1")


# ---- connections ------------------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        ports = set()
        for i in range(200):
            conn.request("GET", f"/echo?i={i}")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Connection") is None  # HTTP/1.1 keeps the connection by default
            echoed = json.loads(response.read())
            assert echoed["QUERY_STRING"] == f"i={i}"
            ports.add(echoed["REMOTE_PORT"])
        assert len(ports) == 1
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(server):
    with raw(server) as (sock, f):
        sock.sendall(b"".join(request(f"/echo?n={i}") for i in range(10))
                     + b"POST /echo?n=post HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
                     + request("/pixel.gif", "HEAD") + request("/echo?n=last", headers="Connection: close\r\n"))
        for i in range(10):
            response = read_response(f)
            assert json.loads(response.body)["QUERY_STRING"] == f"n={i}"
        assert bytes.fromhex(json.loads(read_response(f).body)["body_hex"]) == b"hello"
        head = read_response(f, "HEAD")
        assert head.status == 200 and head.headers["content-length"] == "43"
        last = read_response(f)
        assert json.loads(last.body)["QUERY_STRING"] == "n=last"
        assert last.headers["connection"] == "close"
        assert at_eof(sock, f)


def test_responses_waiting_for_the_end_of_the_turn_go_before_what_follows_them(server):
    """Responses to a list wait for the end of the loop's turn; whatever the connection sends next
    (a streamed response, an error answer, the close) goes after them, in order."""
    with raw(server) as (sock, f):
        sock.sendall(request("/echo?n=0") + request("/echo?n=1") + request("/stream?3") + request("/echo?n=2"))
        for n in range(2):
            assert json.loads(read_response(f).body)["QUERY_STRING"] == f"n={n}"
        assert read_response(f).body == b"part 0;part 1;part 2;"
        assert json.loads(read_response(f).body)["QUERY_STRING"] == "n=2"
    with raw(server) as (sock, f):
        sock.sendall(request("/echo?n=0") + request("/echo?n=1") + b"GARBAGE\r\n\r\n")
        for n in range(2):
            assert json.loads(read_response(f).body)["QUERY_STRING"] == f"n={n}"
        assert read_response(f).status == 400
        assert at_eof(sock, f)
    with raw(server) as (sock, f):
        sock.sendall(request("/echo?n=0") + request("/echo?n=1", headers="Connection: close\r\n"))
        for n in range(2):
            assert json.loads(read_response(f).body)["QUERY_STRING"] == f"n={n}"
        assert at_eof(sock, f)


def test_requests_arriving_while_a_response_waits_to_be_sent(server):
    """Responses too big for the socket buffers make the server wait to send; requests that arrive
    meanwhile are answered after them, in order, and the connection goes on serving."""
    size = 2_000_000
    with raw(server) as (sock, f):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # no autotuning: 8 MB cannot fit
        sock.sendall(request("/echo?n=first"))  # the server now waits for this connection between requests
        assert json.loads(read_response(f).body)["QUERY_STRING"] == "n=first"
        sock.sendall(b"".join(request(f"/big?{size + i}") for i in range(4)))
        assert f.readline().startswith(b"HTTP/1.1 200")  # the server is sending, and the buffers are full
        sock.sendall(b"".join(request(f"/big?{size + i}") for i in range(4, 8)) + request("/echo?n=after"))
        # One answer on another connection: the server has seen those requests arrive (in the same turn
        # of its loop at the latest) while it still waits to send, since this client reads nothing.
        server.assert_alive()
        while f.readline() != b"\r\n":  # the first response's headers (its status line was read above)
            pass
        assert f.read(size) == b"x" * size
        for i in range(1, 8):
            response = read_response(f)
            assert response.status == 200 and len(response.body) == size + i
        assert json.loads(read_response(f).body)["QUERY_STRING"] == "n=after"
        sock.sendall(request("/echo?n=again"))
        assert json.loads(read_response(f).body)["QUERY_STRING"] == "n=again"


def test_requests_split_across_many_sends(server):
    data = request("/echo?split=1", headers="X-Long: " + "y" * 300 + "\r\n")
    with raw(server) as (sock, f):
        for i in range(0, len(data), 7):
            sock.sendall(data[i:i + 7])
            time.sleep(0.001)
        assert json.loads(read_response(f).body)["HTTP_X_LONG"] == "y" * 300


def test_http10_closes_without_keep_alive(server):
    with raw(server) as (sock, f):
        sock.sendall(request("/pixel.gif", version="HTTP/1.0"))
        response = read_response(f)
        assert (response.status, response.body) == (200, GIF)
        assert response.headers["connection"] == "close"
        assert at_eof(sock, f)


def test_http10_keep_alive_when_asked(server):
    with raw(server) as (sock, f):
        for _ in range(3):
            sock.sendall(request("/echo", version="HTTP/1.0", headers="Connection: Keep-Alive\r\n"))
            response = read_response(f)
            assert response.headers["connection"] == "keep-alive"
            assert json.loads(response.body)["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_http10_response_without_length_ends_with_the_connection(server):
    with raw(server) as (sock, f):
        sock.sendall(request("/stream?4", version="HTTP/1.0", headers="Connection: keep-alive\r\n"))
        response = read_response(f)
        assert "transfer-encoding" not in response.headers and "content-length" not in response.headers
        assert response.headers["connection"] == "close"
        assert response.body == b"part 0;part 1;part 2;part 3;"


def test_connection_close_from_the_client(server):
    with raw(server) as (sock, f):
        sock.sendall(request("/pixel.gif", headers="Connection: close\r\n"))
        assert read_response(f).headers["connection"] == "close"
        assert at_eof(sock, f)


def test_half_closed_connection_still_gets_its_answer(server):
    with raw(server) as (sock, f):
        sock.sendall(request("/pixel.gif") + request("/echo?second"))
        sock.shutdown(socket.SHUT_WR)
        assert read_response(f).body == GIF
        assert json.loads(read_response(f).body)["QUERY_STRING"] == "second"
        assert at_eof(sock, f)
    server.assert_alive()


@pytest.mark.parametrize("sent", [
    b"",
    b"GET /pix",
    b"GET /pixel.gif HTTP/1.1\r\nHost: t\r\nUser-Ag",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly part of the body",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
])
def test_client_hanging_up_mid_request_is_not_an_error(server, sent):
    before = len(server.log())
    for how in ("close", "shutdown"):
        with raw(server) as (sock, f):
            sock.sendall(sent)
            if how == "shutdown":
                sock.shutdown(socket.SHUT_WR)
                assert at_eof(sock, f)  # no answer to half a request: the server just closes
    server.assert_alive()
    log = server.log()[before:]
    assert "ERROR" not in log and "WARNING" not in log and "Traceback" not in log, log


def test_many_connections_at_once(server):
    socks = [server.connect() for _ in range(50)]
    try:
        for sock in socks:
            sock.sendall(request("/pixel.gif"))
        for sock in socks:
            with sock.makefile("rb") as f:
                assert read_response(f).body == GIF
    finally:
        for sock in socks:
            sock.close()


# ---- requests and responses -----------------------------------------------------------------


def test_head_sends_no_body_and_keeps_the_connection(server):
    with raw(server) as (sock, f):
        for path in ("/pixel.gif", "/nolength", "/stream"):
            sock.sendall(request(path, "HEAD"))
            response = read_response(f, "HEAD")
            assert response.status == 200
        sock.sendall(request("/pixel.gif"))
        assert read_response(f).body == GIF  # no stray body bytes were sent before it
    # The length of a list is known, and given; that of an iterator (all of them under wsgiref.validate)
    # would cost running it, which a HEAD request does not need.
    status, headers, body = server.get("/nolength", "HEAD")
    assert (status, headers.get("content-length", "15"), body) == (200, "15", b"")


def test_post_body(server):
    body = bytes(range(256)) * 10
    echoed = server.echo("/echo?x=1", method="POST", body=body,
                         headers={"Content-Type": "application/octet-stream"})
    assert bytes.fromhex(echoed["body_hex"]) == body
    assert echoed["CONTENT_LENGTH"] == str(len(body))
    assert echoed["CONTENT_TYPE"] == "application/octet-stream"
    assert "HTTP_CONTENT_LENGTH" not in echoed and "HTTP_CONTENT_TYPE" not in echoed


def test_empty_body_with_content_length_zero(server):
    echoed = server.echo("/echo", method="POST", body=b"")
    assert echoed["CONTENT_LENGTH"] == "0" and echoed["body_hex"] == ""


def test_expect_100_continue(server):
    with raw(server) as (sock, f):
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = read_response(f)
        assert (interim.status, interim.headers) == (100, {})
        sock.sendall(b"body")
        assert bytes.fromhex(json.loads(read_response(f).body)["body_hex"]) == b"body"
        # the body sent along with the headers: no 100 Continue is needed
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi")
        response = read_response(f)
        assert response.status == 200 and bytes.fromhex(json.loads(response.body)["body_hex"]) == b"hi"


def test_chunked_request_body(server):
    with raw(server) as (sock, f):
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5;ext=1\r\nhello\r\n1\r\n \r\n")
        time.sleep(0.05)
        sock.sendall(b"5\r\nworld\r\n0\r\nTrailer-Field: x\r\n\r\n" + request("/echo?after"))
        echoed = json.loads(read_response(f).body)
        assert bytes.fromhex(echoed["body_hex"]) == b"hello world"
        assert echoed["CONTENT_LENGTH"] == "11" and "HTTP_TRANSFER_ENCODING" not in echoed
        assert echoed["wsgi.input_terminated"] is True
        assert json.loads(read_response(f).body)["QUERY_STRING"] == "after"


def test_chunked_response_for_unknown_length(server):
    with raw(server) as (sock, f):
        sock.sendall(request("/stream?5") + request("/stream?0"))
        response = read_response(f)
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.body == b"".join(b"part %d;" % i for i in range(5))
        empty = read_response(f)  # an empty iterable: a Content-Length of 0, not chunks
        assert (empty.headers["content-length"], empty.body) == ("0", b"")


def test_write_callable_and_joined_list(server):
    assert server.get("/write")[::2] == (200, b"hello world")
    status, headers, body = server.get("/nolength")
    assert (status, body) == (200, b"no length given")
    # a list gets a Content-Length; an iterator (a list under wsgiref.validate) is sent in chunks
    assert headers.get("content-length") == "15" or headers["transfer-encoding"] == "chunked"


def test_start_response_with_exc_info(server):
    with raw(server) as (sock, f):
        sock.sendall(request("/exc-info") + request("/pixel.gif"))
        response = read_response(f)
        assert (response.status, response.body) == (503, b"sorry")
        assert read_response(f).body == GIF
    before = len(server.log())
    with raw(server) as (sock, f):  # after the headers went out, start_response re-raises the error
        sock.sendall(request("/exc-info-late"))
        with pytest.raises((ValueError, EOFError)):
            read_response(f)
    assert "too late to change its mind" in server.log()[before:]
    server.assert_alive()


def test_iterable_close_is_called(server):
    with raw(server) as (sock, f):
        sock.sendall(request("/closing?first") + request("/closing?second", "HEAD"))
        assert read_response(f).body == b"ab"
        read_response(f, "HEAD")
    server.assert_alive()
    log = server.log()
    assert "closed body of first" in log and "closed body of second" in log


def test_no_content_has_no_body(server):
    with raw(server) as (sock, f):
        sock.sendall(request("/no-content") + request("/pixel.gif"))
        response = read_response(f)
        assert response.status == 204 and "content-length" not in response.headers
        assert read_response(f).body == GIF


def test_date_and_server_headers(server):
    status, headers, _ = server.get("/pixel.gif")
    assert status == 200 and headers["server"] == "mongol"
    assert abs(calendar.timegm(time.strptime(headers["date"], "%a, %d %b %Y %H:%M:%S GMT")) - time.time()) < 5
    with raw(server) as (sock, f):
        sock.sendall(request("/server-header"))
        assert read_response(f).headers["server"] == "custom"  # read_response fails on a repeated header


# ---- the environ ------------------------------------------------------------------------------


def test_environ_seen_by_the_app(server):
    with raw(server) as (sock, f):
        sock.sendall(b"POST /echo/a%20b/%C3%A9/x%2Fy?q=%20a+b&r=1 HTTP/1.1\r\nHost: example.org:8080\r\n"
                     b"X-Multi: one\r\nx-multi: two\r\nX-Spaced:   padded value \t\r\nContent-Type: text/plain\r\n"
                     b"X_Underscored: dropped\r\nContent-Length: 3\r\nAccept-Language: fr\r\n\r\nabc")
        echoed = json.loads(read_response(f).body)
        client_port = sock.getsockname()[1]
    assert echoed["REQUEST_METHOD"] == "POST"
    assert echoed["SCRIPT_NAME"] == ""
    # percent-decoded, as latin-1: the UTF-8 bytes of "é" become two characters; %2F becomes "/"
    assert echoed["PATH_INFO"] == "/echo/a b/\xc3\xa9/x/y"
    assert echoed["QUERY_STRING"] == "q=%20a+b&r=1"  # raw
    assert echoed["SERVER_NAME"] == "127.0.0.1" and echoed["SERVER_PORT"] == str(server.port)
    assert echoed["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert echoed["REMOTE_ADDR"] == "127.0.0.1" and echoed["REMOTE_PORT"] == str(client_port)
    assert echoed["HTTP_HOST"] == "example.org:8080"
    assert echoed["HTTP_X_MULTI"] == "one,two"
    assert echoed["HTTP_X_SPACED"] == "padded value"
    assert echoed["HTTP_ACCEPT_LANGUAGE"] == "fr"
    assert echoed["CONTENT_TYPE"] == "text/plain" and echoed["CONTENT_LENGTH"] == "3"
    assert "HTTP_X_UNDERSCORED" not in echoed  # it would collide with X-Underscored
    assert echoed["wsgi.version"] == [1, 0] and echoed["wsgi.url_scheme"] == "http"
    assert (echoed["wsgi.multithread"], echoed["wsgi.multiprocess"], echoed["wsgi.run_once"]) == (False, True, False)


def test_percent_escapes_and_raw_header_bytes_reach_the_app_as_latin1(server):
    query = b"t=%FF%FE%80%zz&u=%C3%A9&v=%E2%82"  # invalid UTF-8 once decoded, a bad percent escape
    with raw(server) as (sock, f):
        sock.sendall(b"GET /echo?" + query + b" HTTP/1.1\r\nHost: t\r\nReferer: http://x/\xe9\xff\r\n\r\n")
        echoed = json.loads(read_response(f).body)
    assert bytes.fromhex(echoed["query_hex"]) == query  # QUERY_STRING stays as sent
    assert echoed["HTTP_REFERER"] == "http://x/\xe9\xff"  # obs-text in a header value is allowed (RFC 9110 5.5)


def test_percent_escapes_in_the_path(server):
    with raw(server) as (sock, f):
        sock.sendall(b"GET /echo/../%ff%2 HTTP/1.1\r\nHost: t\r\n\r\n")
        echoed = json.loads(read_response(f).body)
    assert bytes.fromhex(echoed["path_hex"]) == b"/echo/../\xff%2"  # not normalized; a bad escape stays


def test_absolute_form_target_replaces_host_and_blank_lines_are_skipped(server):
    with raw(server) as (sock, f):
        sock.sendall(b"GET http://example.org:8080/echo?abs=1 HTTP/1.1\r\nHost: other.example\r\n\r\n")
        echoed = json.loads(read_response(f).body)
        assert (echoed["PATH_INFO"], echoed["QUERY_STRING"]) == ("/echo", "abs=1")
        assert echoed["HTTP_HOST"] == "example.org:8080"  # RFC 9112 3.2.2: the target's authority wins
        sock.sendall(b"GET https://example.org?q HTTP/1.1\r\nHost: example.org\r\n\r\n")
        assert read_response(f).body == GIF  # no path: "/", the test app's pixel
        sock.sendall(b"\r\n\r\n" + request("/echo?after-blank-lines"))
        assert json.loads(read_response(f).body)["QUERY_STRING"] == "after-blank-lines"


# ---- limits and bad requests ------------------------------------------------------------------

BAD_REQUESTS = {
    "request line too long": (b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    "request line too long, no end yet": (b"GET /" + b"a" * 5000, 414),
    "too many headers": (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(25)) + b"\r\n",
                         431),
    "header section too large": (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 2100 + b"\r\n\r\n", 431),
    "header section too large, no end yet": (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 5000, 431),
    "body too large": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10001\r\n\r\n", 413),
    "body too large, huge number": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\n",
                                    400),  # llhttp: Content-Length overflow
    "chunked body too large": (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"2710\r\n" + b"x" * 10000 + b"\r\n1\r\nx\r\n0\r\n\r\n", 413),
    "no version": (b"GET /\r\n\r\n", 400),
    "four words": (b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400),
    "bad version": (b"GET / HTTP/one\r\nHost: t\r\n\r\n", 400),
    "lower-case version": (b"GET / http/1.1\r\nHost: t\r\n\r\n", 400),
    "HTTP/2": (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 400),
    "bad method": (b"G(E)T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "bad target": (b"GET pixel.gif HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "header without colon": (b"GET / HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost: t\r\nX-Bad : v\r\n\r\n", 400),
    "folded header": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: v\r\n  continued\r\n\r\n", 400),
    "bare CR": (b"GET / HTTP/1.1\r\nHost: t\rX-A: v\r\n\r\n", 400),
    "no Host in HTTP/1.1": (b"GET / HTTP/1.1\r\nX-A: v\r\n\r\n", 400),
    "bad Content-Length": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: ten\r\n\r\n", 400),
    "negative Content-Length": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
    "signed Content-Length": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: +1\r\n\r\nx", 400),
    "two Content-Lengths": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
                            400),
    "Content-Length and chunked": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "bad chunk size": (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "chunk without CRLF": (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd", 400),
    "chunked in HTTP/1.0": (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "other transfer coding": (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
    "unknown expectation": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nExpect: magic\r\n\r\nx", 417),
    "garbage": (bytes(range(256)) + b"\r\n\r\n", 400),
    "TLS client hello": (bytes.fromhex("16030100a5010000a10303") + bytes(range(32, 96)) + b"\r\n\r\n", 400),
}

# What the audit of issue 13 found accepted, by class: each gets exactly this answer, then the
# connection closes; a request smuggled behind it is never answered (at_eof).
CHUNKED = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
SMUGGLED = b"GET /echo?smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
BAD_REQUESTS.update({
    # ambiguous framing
    "framing: Transfer-Encoding and Content-Length": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"
        + SMUGGLED, 400),
    "framing: chunked not last": (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    "framing: Content-Length list": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 1\r\n\r\nx", 400),
    "framing: space in Content-Length": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1 0\r\n\r\nx", 400),
    "framing: Transfer-Encoding in HTTP/1.0": (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
                                               b"0\r\n\r\n" + SMUGGLED, 400),
    "framing: bare LF line ends": (b"GET /echo HTTP/1.1\nHost: t\n\n" + SMUGGLED, 400),
    # chunked bodies (RFC 9112 7.1)
    "chunked: bare LF after the size": (CHUNKED + b"5\nhello\r\n0\r\n\r\n" + SMUGGLED, 400),
    "chunked: bare LF after the data": (CHUNKED + b"5\r\nhello\n0\r\n\r\n" + SMUGGLED, 400),
    "chunked: space before the size": (CHUNKED + b" 5\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 400),
    "chunked: space after the size": (CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n" + SMUGGLED, 400),
    "chunked: CR CR LF": (CHUNKED + b"5\r\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 400),
    "chunked: CR in an extension": (CHUNKED + b"5;a\rb\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 400),
    "chunked: control byte in an extension": (CHUNKED + b"5;a\x01b\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 400),
    "chunked: trailer line not a field": (CHUNKED + b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n" + SMUGGLED, 400),
    "chunked: size overflow": (CHUNKED + b"1" * 20 + b"\r\n", 400),
    "chunked: too many trailer fields": (CHUNKED + b"5\r\nhello\r\n0\r\n"
                                         + b"".join(b"X-%d: v\r\n" % i for i in range(25)) + b"\r\n", 431),
    "chunked: trailer section too large": (CHUNKED + b"5\r\nhello\r\n0\r\nX-Big: " + b"v" * 2100 + b"\r\n\r\n",
                                           431),
    # header and target bytes
    "bytes: NUL in a header value": (b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", 400),
    "bytes: control byte in a header value": (b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\x1bb\r\n\r\n", 400),
    "bytes: DEL in a header value": (b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n", 400),
    "bytes: NUL in the target": (b"GET /echo?a=\x00 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "bytes: control byte in the target": (b"GET /echo\x01 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "bytes: DEL in the target": (b"GET /echo?\x7f HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "bytes: tab in the target": (b"GET /echo?a\tb HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "bytes: raw non-ASCII in the target": (b"GET /echo?t=\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    # Host (RFC 9112 3.2)
    "host: two Host lines": (b"GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400),
    "host: a list": (b"GET /echo HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n", 400),
    "host: a space inside": (b"GET /echo HTTP/1.1\r\nHost: a example\r\n\r\n", 400),
    "host: a path": (b"GET /echo HTTP/1.1\r\nHost: a.example/x\r\n\r\n", 400),
    "host: a bad port": (b"GET /echo HTTP/1.1\r\nHost: a.example:80a\r\n\r\n", 400),
    "host: an unclosed IPv6 literal": (b"GET /echo HTTP/1.1\r\nHost: [::1\r\n\r\n", 400),
    "host: userinfo in an absolute target": (b"GET http://u@a.example/echo HTTP/1.1\r\nHost: a.example\r\n\r\n",
                                             400),
    "host: no authority in an absolute target": (b"GET http:///echo HTTP/1.1\r\nHost: a.example\r\n\r\n", 400),
})


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_an_error_and_close(server, name):
    sent, expected = BAD_REQUESTS[name]
    before = len(server.log())
    with raw(server) as (sock, f):
        with contextlib.suppress(OSError):  # the server may answer before it read everything
            sock.sendall(sent)
        response = read_response(f)
        assert response.status == expected
        assert response.headers["connection"] == "close"
        assert response.headers["content-type"].startswith("text/plain")
        assert response.body.startswith(str(expected).encode()) and len(response.body) < 100
        assert at_eof(sock, f)
        client = f"127.0.0.1:{sock.getsockname()[1]}"
    started = time.monotonic()
    server.assert_alive()
    assert time.monotonic() - started < 2  # another client is served at once
    log = server.log()[before:]
    [line] = [line for line in log.splitlines() if client in line]
    assert line.startswith("INFO ") and f": {expected} " in line
    assert "Traceback" not in log


def test_header_limits_hold_for_each_of_the_requests_of_one_packet(server):
    """Heads are measured one by one: small pipelined requests filling a packet past max_header_bytes
    are served, and a large head after them is refused."""
    small = b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A: " + b"v" * 500 + b"\r\n\r\n"
    big = b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 2100 + b"\r\n\r\n"
    with raw(server) as (sock, f):
        sock.sendall(small * 6 + big)
        assert [read_response(f).status for _ in range(7)] == [200] * 6 + [431]
        assert at_eof(sock, f)


def test_inline_runs_the_application_in_the_loop_and_hands_the_rest_to_the_connection(server):
    """inline: a request that arrives whole is answered by the loop itself, first or later on a
    connection, pipelined or not (what does not fit, the rest of this table shows)."""
    where = "loop" if server.config.get("inline") else "connection"
    with raw(server) as (sock, f):
        for _ in range(3):
            sock.sendall(request("/where"))
            assert read_response(f).body.decode() == where
        sock.sendall(request("/where") * 2)
        assert [read_response(f).body.decode() for _ in range(2)] == [where] * 2


def test_an_applications_connection_close_ends_the_connection_after_its_response(server):
    """The application's own Connection: close: its response, then the end, and a request pipelined
    after it is never answered (inline too, where the loop answers it)."""
    with raw(server) as (sock, f):
        sock.sendall(request("/app-close") + request("/where"))
        response = read_response(f)
        assert (response.status, response.body, response.headers["connection"]) == (200, b"bye", "close")
        assert at_eof(sock, f)


def test_limits_are_inclusive(server):
    path = "/echo?" + "a" * (1024 - len("GET /echo? HTTP/1.1"))
    with raw(server) as (sock, f):
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n".encode() + b"".join(b"X-%d: v\r\n" % i for i in range(19))
                     + b"\r\n")
        assert read_response(f).status == 200
    assert server.echo(method="POST", body=b"x" * 10_000)["CONTENT_LENGTH"] == "10000"


# Seeds for the fuzz run: ordinary requests, and the smuggling shapes that HTTP Garden and llhttp's own
# tests publish (CL.TE, TE.CL, TE.TE, chunk-size tricks, a request hidden in a body or a trailer).
FUZZ_SEEDS = [
    request("/echo?a=1", headers="X-A: b\r\n"),
    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\n\r\n",
    request("/", version="HTTP/1.0", headers="Connection: keep-alive\r\n"),
    request("/stream", "HEAD"),
    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2c\r\nGET /echo?smuggled HTTP/1.1\r\nHost: t\r\n\r\n\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: y\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
]
FUZZ_STATUSES = {100, 200, 204, 400, 408, 413, 414, 417, 431}


def test_fuzzed_requests_never_break_the_server(start):
    """A bounded fuzz run (400 streams) of mutated and random requests, sent in random pieces: any
    answer or a close, never an internal error; no more answers than request lines sent; and every
    body the app echoes is bytes the client sent, so that no framing made up a request."""
    server = start(validate=False)  # wsgiref.validate would turn odd but valid methods into 500s
    rng = random.Random(20261122)
    alphabet = b"\r\n\t :;,%?/\x00\x7f\xff0123456789abcdefHTTP/1.1GETPOSTContent-LengthTransfer-Encodingchunked"
    answered = 0
    for _ in range(400):
        if rng.random() < 0.25:
            data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        else:
            mutated = bytearray(b"".join(rng.choice(FUZZ_SEEDS) for _ in range(rng.randint(1, 3))))
            for _ in range(rng.randint(0, 4)):
                pos = rng.randint(0, len(mutated))
                op = rng.random()
                if op < 0.4:
                    mutated[pos:pos] = bytes([rng.choice(alphabet)])
                elif op < 0.8 and mutated:
                    del mutated[min(pos, len(mutated) - 1)]
                else:
                    mutated[pos:pos] = rng.choice([b"\r\n", b"\n", b"\r", b" ", b"\r\n\r\n"])
            data = bytes(mutated)
        cuts = [*sorted(rng.sample(range(len(data) + 1), min(3, len(data) + 1))), len(data)]
        with raw(server) as (sock, f):
            with contextlib.suppress(OSError):
                previous = 0
                for cut in cuts:
                    sock.sendall(data[previous:cut])
                    previous = cut
                sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionResetError):
                answer = f.read()
        statuses = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]
        answered += len(statuses)
        assert set(statuses) <= FUZZ_STATUSES, (data, answer)
        assert len([s for s in statuses if s != 100]) <= data.count(b" HTTP/1.") + 1, (data, answer)
        for echoed in re.findall(rb'"body_hex": "([0-9a-f]*)"', answer):
            assert bytes.fromhex(echoed.decode()) in data, (data, answer)
    assert answered > 150
    server.assert_alive()
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log and "WARNING" not in log, log


# ---- application errors -----------------------------------------------------------------------


def test_app_exception_gives_500_and_one_traceback(server):
    before = len(server.log())
    with raw(server) as (sock, f):
        sock.sendall(request("/error"))
        response = read_response(f)
        assert response.status == 500 and response.headers["connection"] == "close"
        assert at_eof(sock, f)
    server.assert_alive()
    log = server.log()[before:]
    assert log.count("Traceback") == 1 and log.count("the test app fails on purpose") == 1, log
    assert "ERROR mongol.httpserver: 127.0.0.1:" in log


def test_app_exception_after_the_headers_closes_the_connection(server):
    before = len(server.log())
    with raw(server) as (sock, f):
        sock.sendall(request("/error-after-headers"))
        with pytest.raises((ValueError, AssertionError, EOFError)):
            read_response(f)  # a chunked body cut short
    server.assert_alive()
    assert server.log()[before:].count("Traceback") == 1


# ---- the listener, timeouts and stopping ------------------------------------------------------


def test_idle_connections_time_out(start):
    server = start(keepalive_timeout=0.3, header_timeout=0.3)
    with raw(server) as (sock, f):
        sock.sendall(request("/pixel.gif"))
        assert read_response(f).body == GIF
        started = time.monotonic()
        assert at_eof(sock, f)
        assert time.monotonic() - started < 3
    with raw(server) as (sock, f):  # a request that never completes gets 408 at the head's deadline
        sock.sendall(b"GET /pixel.gif HTTP/1.1\r\n")
        assert read_response(f).status == 408
        assert at_eof(sock, f)
    with raw(server) as (sock, f):  # a connection that sends nothing is closed without an answer
        assert at_eof(sock, f)
    server.assert_alive()


def test_stop_closes_idle_connections_and_lets_requests_finish(start):
    server = start(keepalive_timeout=60.0, stop_timeout=10.0)
    idle = []
    try:
        for _ in range(5):
            sock = server.connect()
            idle.append(sock)
            sock.sendall(request("/pixel.gif"))
            with sock.makefile("rb") as f:
                assert read_response(f).body == GIF
        with raw(server) as (busy, f):
            busy.sendall(request("/slow?1.0"))
            wait_until(lambda: "slow request started" in server.log(), 10, "the slow request to start")
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            response = read_response(f)
            assert (response.status, response.body) == (200, b"done")
            assert response.headers["connection"] == "close"
            assert server.proc.wait(timeout=5) == 0
            # well below keepalive_timeout (60 s) and stop's timeout (10 s): the idle connections did not wait
            assert time.monotonic() - started < 4
        for sock in idle:
            assert sock.recv(1) == b""
        with pytest.raises(ConnectionRefusedError):
            server.connect().close()
        assert "stopped in" in server.log()
    finally:
        for sock in idle:
            sock.close()


def test_stop_with_only_idle_connections_is_prompt(start):
    server = start(keepalive_timeout=60.0, stop_timeout=30.0)
    conns = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(10)]
    try:
        for conn in conns:
            conn.request("GET", "/pixel.gif")
            assert conn.getresponse().read() == GIF
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 3  # keepalive_timeout is 60 s, stop's timeout 30 s
    finally:
        for conn in conns:
            conn.close()


def test_shared_listening_socket(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = listener.getsockname()[1]
    servers = []
    try:
        for i in range(2):
            config = {**LIMITS, "listen_fd": listener.fileno()}
            servers.append(launch(tmp_path / f"shared-{i}.log", config, pass_fds=(listener.fileno(),)))
        assert {s.port for s in servers} == {port}
        pids = {servers[0].echo()["pid"] for _ in range(20)}  # either process may accept each connection
        assert pids <= {s.proc.pid for s in servers}
        shut_down(servers[0])
        for _ in range(5):
            assert servers[1].echo()["pid"] == servers[1].proc.pid
    finally:
        listener.close()
        for running in servers:
            shut_down(running)


# ---- deadlines, caps, HEAD (issue 13) -----------------------------------------------------------


def trickle(sock: socket.socket, data: bytes, every: float, until: float) -> None:
    """Send `data` one byte at a time, a byte every `every` seconds, until the server closes or `until`
    (monotonic) passes: the slow client the deadlines are for. Only pacing: nothing waits on it."""
    for byte in data:
        if time.monotonic() > until:
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return
        time.sleep(every)


@pytest.mark.parametrize("begun, slow", [
    (b"GET /pixel.gif HTTP/1.1\r\n", b"X-Slow: " + b"a" * 200),  # a head, a byte every 0.1 s
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n", b"b" * 100),  # a body
])
def test_a_slow_request_gets_408_at_its_deadline_while_others_are_served(start, begun, slow):
    server = start(header_timeout=1.0, body_timeout=1.0, keepalive_timeout=60.0)
    with raw(server) as (sock, f):
        started = time.monotonic()
        sock.sendall(begun)
        sender = threading.Thread(target=trickle, args=(sock, slow, 0.1, started + 5), daemon=True)
        sender.start()
        server.assert_alive()  # served while the slow client holds its connection
        response = read_response(f)
        elapsed = time.monotonic() - started
        assert (response.status, response.headers["connection"]) == (408, "close")
        assert response.body == b"408 Request Timeout\n"
        assert 1.0 <= elapsed < 2.5  # the deadline counts from the first byte, not from the last
        sender.join(10)
    server.assert_alive()
    assert ": 408 Request Timeout: request " in server.log()


def test_connection_flood_is_refused_with_503_and_service_resumes(start):
    server = start(max_connections=5, header_timeout=1.0, keepalive_timeout=60.0)
    held = [server.connect() for _ in range(5)]
    try:
        for sock in held:
            sock.sendall(b"GET /pixel.gif HTTP/1.1\r\nHost: t\r\n")  # half-sent requests
        # the server counts a connection once its greenlet runs: wait until all five are in
        wait_until(lambda: refused(server), 10, "a sixth connection to be refused")
        started = time.monotonic()
        with raw(server) as (sock, f):
            sock.sendall(request("/pixel.gif"))
            response = read_response(f)
            assert (response.status, response.headers["retry-after"], response.headers["connection"]) == \
                   (503, "1", "close")
            assert at_eof(sock, f)
        # the half-sent requests reach their head deadline: 408 each, and the server takes clients again
        for sock in held:
            with sock.makefile("rb") as f:
                assert read_response(f).status == 408
            sock.close()
        server.assert_alive()
        assert time.monotonic() - started < 3
    finally:
        for sock in held:
            sock.close()
    assert server.log().count("refusing new ones with 503") == 1


def refused(server: Server) -> bool:
    with raw(server) as (sock, f):
        sock.sendall(request("/pixel.gif"))
        return read_response(f).status == 503


def test_out_of_descriptors_pauses_accepting_logs_once_and_resumes(start):
    server = start(nofile_after_start=64, max_connections=1000, header_timeout=60.0)
    socks = []
    try:
        for _ in range(100):  # beyond the 64 descriptors: the kernel queues them in the backlog
            socks.append(server.connect())
        wait_until(lambda: "cannot accept connections" in server.log(), 10, "the server to run out of descriptors")
        for sock in socks:
            sock.close()
        socks = []
        started = time.monotonic()
        wait_until(lambda: server.get("/pixel.gif")[::2] == (200, GIF), 10, "the server to serve again")
        assert time.monotonic() - started < 5
    finally:
        for sock in socks:
            sock.close()
    log = server.log()
    assert log.count("cannot accept connections: Too many open files") == 1, log
    assert "Traceback" not in log and "accepting connections again" in log


def test_head_then_a_pipelined_get_on_the_same_connection(server):
    before = len(server.log())
    with raw(server) as (sock, f):
        sock.sendall(request("/pixel-like", "HEAD") + request("/pixel-like", "HEAD") + request("/pixel-like"))
        for _ in range(2):
            head = read_response(f, "HEAD")
            assert (head.status, head.headers["content-length"], head.body) == (200, "43", b"")
            assert "connection" not in head.headers  # kept open
        assert read_response(f).body == GIF
    log = server.log()[before:]
    assert "WARNING" not in log, log


def test_upgrade_and_connect_are_not_switched_to(server):
    """A request asking to switch protocols is answered as any other, then the connection closes:
    what follows it (here a pipelined request) is never read as HTTP."""
    with raw(server) as (sock, f):
        sock.sendall(request("/pixel.gif", headers="Connection: Upgrade\r\nUpgrade: websocket\r\n")
                     + request("/echo?after-upgrade"))
        response = read_response(f)
        assert (response.status, response.body, response.headers["connection"]) == (200, GIF, "close")
        assert at_eof(sock, f)
    with raw(server) as (sock, f):
        sock.sendall(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
        assert read_response(f).status == 400  # no tunnels: the authority-form target is refused
        assert at_eof(sock, f)
    server.assert_alive()
