"""A lean HTTP/1.1 server for WSGI applications, on gevent's StreamServer.

mongol-serve answers tracking-pixel requests, each a small GET with a handful of headers; gevent's
pywsgi spends most of its time per request in generic machinery (file objects, the `email` header
parser, several writes per response). This server does the same job with less: one greenlet per
connection, the request head parsed with str methods after a single latin-1 decode, the environ
copied from a per-connection template, and each response written with one ``send`` when the
application returns a list.

What it speaks: HTTP/1.0 and 1.1, keep-alive (1.1 by default, 1.0 on ``Connection: keep-alive``),
pipelining, request bodies with Content-Length or ``Transfer-Encoding: chunked`` (both read whole
before the application is called, up to ``max_body``; a chunked body reaches the application as if it
had come with a Content-Length: CONTENT_LENGTH is its decoded size and HTTP_TRANSFER_ENCODING is
gone), ``Expect: 100-continue``, HEAD, and responses framed by Content-Length (added when the
application returns a list), chunked encoding (HTTP/1.1) or connection close (HTTP/1.0).

Bad input gets a short text/plain answer with ``Connection: close`` (400, 413, 414, 431,
417; never a 5xx, which would say the server is at fault: an unknown transfer coding or HTTP version
is a 400) and one log line at INFO naming the client; a client that hangs up is not an error; an
exception in the application is logged with its traceback, answered 500 when no header was sent
yet, and the connection is closed. Connections that wait for data longer than ``keepalive_timeout``
(between requests, inside a request, or while a response is written) are closed. ``stop()`` closes
idle keep-alive connections at once and lets requests in progress finish.

Put it behind a reverse proxy for direct exposure to the internet, as one would pywsgi.
"""

import logging
import socket
import sys
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any
from urllib.parse import unquote

import gevent
from gevent.event import Event
from gevent.hub import get_hub
from gevent.server import StreamServer

__all__ = ["WSGIServer"]

SERVER_SOFTWARE = "mongol"
_SERVER_LINE = f"Server: {SERVER_SOFTWARE}\r\n".encode("ascii")
_RECV_SIZE = 65536
_MAX_HEADER_KEYS = 1000  # distinct header names remembered with their environ key
_LINGER_SECONDS = 1.0  # after an error answer, how long unread request bytes are drained before closing
_LINGER_BYTES = 1 << 20

_REASONS = {
    400: "Bad Request",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}
_KNOWN_METHODS = frozenset(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"])
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Header names that map to environ keys other than HTTP_*, per CGI.
_CGI_KEYS = {"CONTENT_TYPE": "CONTENT_TYPE", "CONTENT_LENGTH": "CONTENT_LENGTH"}
# Response header names the server looks at; everything else passes through untouched.
_SPECIAL_RESPONSE_HEADERS = frozenset(["content-length", "date", "server", "connection", "transfer-encoding"])
_NO_BODY_STATUS = frozenset(["204", "304"])  # and every 1xx

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(when: float) -> str:
    """An IMF-fixdate (RFC 9110), such as ``Sun, 06 Nov 1994 08:49:37 GMT``, independent of the locale."""
    t = time.gmtime(when)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


class _DateCache:
    """The ``Date:`` header line, formatted once per second."""

    __slots__ = ("line", "until")

    def __init__(self) -> None:
        self.until = 0.0
        self.line = b""

    def refresh(self, now: float) -> bytes:
        second = int(now)
        self.line = f"Date: {http_date(second)}\r\n".encode("ascii")
        self.until = second + 1
        return self.line


_DATE = _DateCache()


class _EmptyInput:
    """``wsgi.input`` of a request without a body: stateless, so one instance serves every request."""

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return []

    def __iter__(self) -> "_EmptyInput":
        return self

    def __next__(self) -> bytes:
        raise StopIteration


_EMPTY_INPUT = _EmptyInput()


class _HTTPError(Exception):
    """The request cannot be served: answer `code` with Connection: close and log `detail` at INFO."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class _Closing(Exception):
    """Thrown into a connection's greenlet that waits for data when the server stops or the wait times out."""


class _Gone(Exception):
    """The client went away: it closed the connection in the middle of a request, or a send failed."""


class _ResponseHead:
    """What the server takes from an application's status and headers, worked out once per distinct
    pair: the encoded status line and headers, the Content-Length the application gave (-1 for none),
    and which of Date, Server and Connection the server must add or honour."""

    __slots__ = ("block", "close", "date", "headers", "length", "no_body", "server", "status")

    def __init__(self, status: str, headers: list) -> None:
        if type(status) is not str or len(status) < 4 or status[3] != " " or not status[:3].isdigit():
            raise ValueError(f"bad WSGI status {status!r}: expected a str such as '200 OK'")
        if type(headers) is not list:
            raise TypeError(f"the response headers must be a list, not {type(headers).__name__}")
        self.status = status
        self.headers = list(headers)  # a copy: the cache compares the next response's headers with it
        self.length = -1
        self.date = self.server = True
        self.close = False
        lines = ["HTTP/1.1 ", status, "\r\n"]
        kept = 0
        for name, value in headers:
            if type(name) is not str or type(value) is not str:
                raise TypeError(f"response header names and values must be str: {(name, value)!r}")
            lower = name.lower()
            if lower in _SPECIAL_RESPONSE_HEADERS:
                if lower == "content-length":
                    if not (value.isascii() and value.isdigit()):
                        raise ValueError(f"bad Content-Length from the application: {value!r}")
                    self.length = int(value)
                elif lower == "date":
                    self.date = False
                elif lower == "server":
                    self.server = False
                elif lower == "connection":
                    self.close = "close" in value.lower()
                    continue  # the server frames the connection itself
                else:
                    raise ValueError(f"the application set the hop-by-hop header {name!r}")
            lines += name, ": ", value, "\r\n"
            kept += 1
        text = "".join(lines)
        # A CR or LF inside a name or value would split the response: each line must end with the one CRLF.
        if text.count("\n") != kept + 1 or text.count("\r") != kept + 1:
            raise ValueError(f"a response header contains CR or LF: {headers!r}")
        self.block = text.encode("latin-1")
        code = status[:3]
        self.no_body = code in _NO_BODY_STATUS or code[0] == "1"
        if self.no_body:
            self.length = -1


# The last distinct status and headers seen, with what was made of them. Applications mostly answer
# with the same few (the pixel always with one), so one entry spares most responses the work.
_last_head = _ResponseHead("200 OK", [])
# Connection header line, by 2 * (HTTP/1.1 request) + (keep-alive)
_CONNECTION_LINES = (b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"Connection: close\r\n", b"")


def _date_line() -> bytes:
    now = time.time()
    return _DATE.line if now < _DATE.until else _DATE.refresh(now)


class _Connection:
    """One client connection: its socket, the state its greenlet shares with stop() and the
    timeout sweep, and the state of the response being written (start_response and write are
    bound once per connection, not per request)."""

    __slots__ = (
        "chunked", "client", "expected_length", "greenlet", "head", "headers", "keep_alive", "log", "raw",
        "read_event", "sent", "sent_length", "since", "sock", "status", "v11", "write_event",
    )

    def __init__(self, sock: socket.socket, client: str, log: logging.Logger) -> None:
        self.sock = sock  # the gevent socket: its sendall waits cooperatively
        self.raw = sock._sock  # the standard library socket below it, non-blocking
        self.read_event = sock._read_event
        self.write_event = sock._write_event
        self.client = client
        self.log = log
        self.greenlet = gevent.getcurrent()
        # Loop time when the current wait for the client began: positive while waiting for the first
        # byte of a request (idle), negative while waiting inside a request or a response, 0.0 otherwise.
        self.since = 0.0
        self.status: str | None = None
        self.headers: list = []
        self.sent = False
        self.head = False
        self.v11 = True
        self.keep_alive = True
        self.chunked = False
        self.expected_length = -1
        self.sent_length = 0

    def sendall(self, data: bytes) -> None:
        """Send `data`: one non-blocking send, and gevent's sendall for whatever did not fit."""
        try:
            n = self.raw.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            raise _Gone from exc
        if n < len(data):
            self.since = -get_hub().loop.now()
            try:
                self.sock.sendall(memoryview(data)[n:])
            except OSError as exc:
                raise _Gone from exc
            finally:
                self.since = 0.0

    # ---- WSGI -------------------------------------------------------------------------------

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        self.status = status
        self.headers = headers
        return self.write

    def response_head(self) -> _ResponseHead:
        global _last_head
        status = self.status
        if status is None:
            raise AssertionError("the application did not call start_response")
        head = _last_head
        if status != head.status or self.headers != head.headers:
            head = _last_head = _ResponseHead(status, self.headers)
        if head.close:
            self.keep_alive = False
        return head

    def whole_response(self, body: bytes) -> bytes:
        """Status line, headers and body of a response whose body is known in full, as one bytes."""
        # response_head() and _date_line(), inline: this runs for every response to a list
        info = _last_head
        if self.status != info.status or self.headers != info.headers:
            info = self.response_head()
        elif info.close:
            self.keep_alive = False
        length = info.length
        if info.no_body:
            body = extra = b""
        elif length < 0:
            extra = b"Content-Length: %d\r\n" % len(body)
        else:
            extra = b""
            if length != len(body):
                self.log.warning("%s: the application declared Content-Length %d and returned %d bytes",
                                 self.client, length, len(body))
                body = body[:length]
                self.keep_alive = False  # the client will miss bytes: it must not wait for another response
        if self.head:
            body = b""
        if info.date:
            now = time.time()
            date = _DATE.line if now < _DATE.until else _DATE.refresh(now)
        else:
            date = b""
        return b"".join((info.block, extra, date,
                         _SERVER_LINE if info.server else b"",
                         _CONNECTION_LINES[2 * self.v11 + self.keep_alive], b"\r\n", body))

    def header_block(self, body_length: int) -> bytes:
        """The status line and headers of a response whose body follows in blocks, ending with the
        blank line. `body_length` is the whole body's length if known (0 when the application's
        iterable was empty), else -1. Sets how the body is framed."""
        info = self.response_head()
        self.chunked = False
        self.sent_length = 0
        self.expected_length = info.length
        extra = b""
        if info.no_body:
            self.head = True  # no body may follow, whatever the method
        elif info.length >= 0:
            pass
        elif body_length >= 0:
            extra = b"Content-Length: %d\r\n" % body_length
            self.expected_length = body_length
        elif self.head:
            pass  # no body follows, and its length is unknown: nothing to frame
        elif self.v11:
            extra = b"Transfer-Encoding: chunked\r\n"
            self.chunked = True
        else:
            self.keep_alive = False  # HTTP/1.0: the body ends when the connection closes
        return b"".join((info.block, extra, _date_line() if info.date else b"",
                         _SERVER_LINE if info.server else b"",
                         _CONNECTION_LINES[2 * self.v11 + self.keep_alive], b"\r\n"))

    def write(self, data: bytes) -> None:
        """WSGI's write(): also how the server sends each block of an iterable response."""
        if type(data) is not bytes:
            raise TypeError(f"the application must write bytes, not {type(data).__name__}")
        if not self.sent:
            block = self.header_block(-1)
            self.sent = True
            if self.head:
                self.sendall(block)
                return
            self.sent_length = len(data)
            self.sendall(block + (b"%x\r\n%b\r\n" % (len(data), data) if self.chunked and data else data))
            return
        if self.head or not data:
            return
        self.sent_length += len(data)
        self.sendall(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    def finish(self) -> None:
        """After the application's iterable is exhausted: headers if none went yet, the chunked trailer."""
        if not self.sent:
            block = self.header_block(0)
            self.sent = True
            if self.chunked:
                block += b"0\r\n\r\n"
            self.sendall(block)
        elif self.chunked:
            self.sendall(b"0\r\n\r\n")
        if 0 <= self.expected_length != self.sent_length and not self.head:
            self.log.warning("%s: the application declared Content-Length %d and sent %d bytes", self.client,
                             self.expected_length, self.sent_length)
            self.keep_alive = False  # the client cannot find where the next response starts


class WSGIServer(StreamServer):
    """An HTTP/1.1 server for a WSGI application (PEP 3333), one greenlet per connection.

    `listener` is an address tuple such as ``("127.0.0.1", 8000)`` or a bound, listening socket
    (several processes may share one). `environ` adds keys to every request's environ.
    ``stop(timeout)`` stops accepting, closes idle keep-alive connections at once, lets requests in
    progress finish for up to `timeout` seconds, then kills what is left.
    """

    def __init__(self, listener: Any, application: Callable, *, max_request_line: int = 8192,
                 max_header_bytes: int = 16384, max_headers: int = 100, max_body: int = 1_048_576,
                 keepalive_timeout: float = 75.0, error_log: logging.Logger | None = None,
                 environ: dict | None = None) -> None:
        super().__init__(listener)
        self.application = application
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.error_log = error_log if error_log is not None else logging.getLogger(__name__)
        self.extra_environ = dict(environ or {})
        self._connections: set[_Connection] = set()
        self._no_connections = Event()
        self._no_connections.set()
        self._stopping = False
        self._sweeper: Any = None
        self._header_keys: dict[str, str] = {}
        self._base_environ: dict[str, Any] = {}

    # ---- lifecycle --------------------------------------------------------------------------

    def init_socket(self) -> None:
        super().init_socket()
        address = self.address
        if isinstance(address, tuple):
            host, port = str(address[0]), str(address[1])
        else:
            host, port = str(address), ""
        self._base_environ = {
            "SERVER_NAME": host,
            "SERVER_PORT": port,
            "SERVER_SOFTWARE": SERVER_SOFTWARE,
            "SCRIPT_NAME": "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,  # wsgi.input ends with the body (read whole beforehand)
            **self.extra_environ,
        }

    def start(self) -> None:
        self._stopping = False
        super().start()
        period = max(0.05, min(1.0, self.keepalive_timeout / 4))
        self._sweeper = self.loop.timer(period, period)
        self._sweeper.ref = False  # the sweep alone does not keep the process alive
        self._sweeper.start(self._sweep)

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting; close idle connections now; let requests in progress finish within `timeout`
        seconds (default ``stop_timeout``), then kill the connections still open."""
        if timeout is None:
            timeout = self.stop_timeout
        self._stopping = True
        self.close()
        for conn in list(self._connections):
            if conn.since > 0.0:
                self.loop.run_callback(self._cancel_wait, conn, _Closing("the server is stopping"))
            else:
                conn.keep_alive = False  # a response in progress says Connection: close
        self._no_connections.wait(timeout)
        if self._connections:
            gevent.killall([c.greenlet for c in self._connections], block=True, timeout=1)

    def close(self) -> None:
        """Stop accepting and close the listening socket (connections stay: see stop())."""
        sweeper = getattr(self, "_sweeper", None)
        if sweeper is not None:
            sweeper.stop()
            sweeper.close()
            self._sweeper = None
        super().close()

    def _cancel_wait(self, conn: _Connection, error: Exception) -> None:
        """Runs in the hub: throw `error` into a connection's greenlet if it still waits for its socket."""
        for watcher in (conn.read_event, conn.write_event):
            if watcher is not None and watcher.active:
                conn.greenlet.throw(error)
                return

    def _sweep(self) -> None:
        """Every second or so: close connections that have waited for their client too long."""
        deadline = self.loop.now() - self.keepalive_timeout
        for conn in self._connections:
            if conn.since and abs(conn.since) < deadline:
                conn.since = 0.0
                self.loop.run_callback(self._cancel_wait, conn, _Closing("timed out"))

    # ---- connections ------------------------------------------------------------------------

    def handle(self, sock: socket.socket, address: Any) -> None:
        """Serve one connection until the client or the server closes it (StreamServer closes `sock`)."""
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(address, tuple):
            client = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
            environ = {**self._base_environ, "REMOTE_ADDR": str(address[0]), "REMOTE_PORT": str(address[1])}
        else:
            client = str(address) or "unix socket"
            environ = {**self._base_environ, "REMOTE_ADDR": str(address), "REMOTE_PORT": ""}
        conn = _Connection(sock, client, self.error_log)
        self._connections.add(conn)
        self._no_connections.clear()
        try:
            self._serve(conn, environ)
        except _HTTPError as exc:
            self._reject(conn, exc)
        except _Closing as exc:
            self.error_log.debug("%s: connection closed: %s", client, exc)
        except (_Gone, ConnectionError):
            pass  # the client went away
        except OSError as exc:
            self.error_log.debug("%s: connection error: %s", client, exc)
        except Exception:
            self.error_log.exception("%s: internal error of the HTTP server; connection closed", client)
        finally:
            conn.since = 0.0
            self._connections.discard(conn)
            if not self._connections:
                self._no_connections.set()

    def _serve(self, conn: _Connection, base_environ: dict) -> None:
        """The request loop of one connection. The hot path is inline, rare cases call helpers."""
        app = self.application
        recv = conn.raw.recv
        wait = get_hub().wait
        now = self.loop.now
        read_event = conn.read_event
        start_response = conn.start_response
        header_keys = self._header_keys
        max_line = self.max_request_line
        max_head = max_line + 2 + self.max_header_bytes + 2
        max_headers = self.max_headers
        max_header_bytes = self.max_header_bytes
        sendall = conn.sendall
        send = conn.raw.send
        buf = b""
        first = True
        while True:
            # ---- the request head ----------------------------------------------------------
            if not buf:
                if self._stopping:
                    return
                if first:
                    first = False
                    try:
                        buf = recv(_RECV_SIZE)
                    except BlockingIOError:
                        buf = b""
                while not buf:
                    conn.since = now()
                    wait(read_event)
                    conn.since = 0.0
                    try:
                        buf = recv(_RECV_SIZE)
                    except BlockingIOError:
                        continue
                    if not buf:
                        return  # the client closed the connection between requests
            if buf[0] in b"\r\n":
                buf = buf.lstrip(b"\r\n")  # empty lines before a request line are ignored (RFC 9112 2.2)
                if not buf:
                    continue
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    start = end + 4
                    break
                end, start = _head_end(buf)  # a request with bare LF line ends, or no end yet
                if end >= 0:
                    break
                if len(buf) > max_head or (len(buf) > max_line + 1 and buf.find(b"\n", 0, max_line + 2) < 0):
                    self._too_large(buf)
                conn.since = -now()
                wait(read_event)
                conn.since = 0.0
                try:
                    data = recv(_RECV_SIZE)
                except BlockingIOError:
                    continue
                if not data:
                    self.error_log.debug("%s: closed the connection in the middle of a request", conn.client)
                    raise _Gone
                buf += data
            head = buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            n = len(lines)
            if head.count("\n") != n - 1 or head.count("\r") != n - 1:
                # Some line ends with a bare LF (allowed) or holds a bare CR (not): the head may end earlier.
                end, start = _head_end(buf)
                lines = _split_bare_lines(buf[:end].decode("latin-1"))
                n = len(lines)
                head = "\n".join(lines)
            buf = buf[start:]

            # ---- the request line ----------------------------------------------------------
            line = lines[0]
            if len(line) > max_line:
                raise _HTTPError(414, f"request line of {len(line)} bytes, more than {max_line}")
            try:
                method, target, version = line.split(" ")
            except ValueError:
                raise _HTTPError(400, f"malformed request line {line[:200]!r}") from None
            if version == "HTTP/1.1":
                v11 = True
            elif version == "HTTP/1.0":
                v11 = False
            else:
                v11, version = _other_version(version)
            if method not in _KNOWN_METHODS and not _is_token(method):
                raise _HTTPError(400, f"malformed method {method[:50]!r}")
            if target[:1] != "/":
                target = _other_target(target, method)
            path, _, query = target.partition("?")
            if "%" in path:
                path = unquote(path, "latin-1")
            environ = base_environ.copy()
            environ["REQUEST_METHOD"] = method
            environ["PATH_INFO"] = path
            environ["QUERY_STRING"] = query
            environ["SERVER_PROTOCOL"] = version

            # ---- headers -------------------------------------------------------------------
            if n > max_headers + 1:
                raise _HTTPError(431, f"{n - 1} header fields, more than {max_headers}")
            if len(head) - len(line) > max_header_bytes:
                raise _HTTPError(431, f"header section of {len(head) - len(line)} bytes, more than {max_header_bytes}")
            for i in range(1, n):
                name, sep, value = lines[i].partition(":")
                if not sep:
                    raise _HTTPError(400, f"malformed header line {lines[i][:200]!r}")
                key = header_keys.get(name)
                if not key:
                    if key is None:
                        key = self._header_key(name)
                    if not key:
                        continue  # a name with an underscore
                value = value.strip(" \t")
                if key in environ:
                    environ[key] += "," + value
                else:
                    environ[key] = value

            # ---- framing -------------------------------------------------------------------
            connection = environ.get("HTTP_CONNECTION")
            if v11:
                if "HTTP_HOST" not in environ:
                    raise _HTTPError(400, "HTTP/1.1 request without a Host header")
                keep_alive = connection is None or "close" not in connection.lower()
            else:
                keep_alive = connection is not None and "keep-alive" in connection.lower()
            if self._stopping:
                keep_alive = False
            if "CONTENT_LENGTH" in environ or "HTTP_TRANSFER_ENCODING" in environ:
                buf = self._read_body(conn, environ, buf, v11)
            else:
                environ["wsgi.input"] = _EMPTY_INPUT

            # ---- the application -----------------------------------------------------------
            conn.status = None
            conn.sent = False
            conn.head = method == "HEAD"
            conn.v11 = v11
            conn.keep_alive = keep_alive
            result = None
            try:
                result = app(environ, start_response)
                if type(result) is list and not conn.sent:
                    body = result[0] if len(result) == 1 else b"".join(result)
                    if type(body) is not bytes:
                        raise TypeError(f"the application must return bytes, not {type(body).__name__}")
                    data = conn.whole_response(body)
                    conn.sent = True
                    try:
                        sent = send(data)
                    except BlockingIOError:
                        sent = 0
                    except OSError as exc:
                        raise _Gone from exc
                    if sent < len(data):
                        sendall(data[sent:])
                else:
                    for data in result:
                        if data:
                            conn.write(data)
                    conn.finish()
            except (_Closing, _Gone):
                raise
            except Exception:
                self.error_log.exception("%s: error in the WSGI application on %s %s", conn.client, method,
                                         target[:200])
                if not conn.sent:
                    self._answer_error(conn, 500, "")
                return
            finally:
                if result is not None and type(result) is not list and hasattr(result, "close"):
                    try:
                        result.close()
                    except Exception:
                        self.error_log.exception("%s: error closing the response of %s %s", conn.client,
                                                 method, target[:200])
                        conn.keep_alive = False
            if not conn.keep_alive:
                return

    # ---- rare paths -------------------------------------------------------------------------

    def _header_key(self, name: str) -> str:
        """The environ key of a header name not seen before, remembered; "" for a name to drop."""
        if not name or not _is_token(name):
            raise _HTTPError(400, f"malformed header name {name[:100]!r}")
        if "_" in name:
            # Another client could send X_Forwarded_For next to a proxy's X-Forwarded-For: both would
            # become HTTP_X_FORWARDED_FOR. Like nginx and Apache, drop names with underscores.
            key = ""
        else:
            key = name.upper().replace("-", "_")
            key = _CGI_KEYS.get(key) or "HTTP_" + key
        if len(self._header_keys) < _MAX_HEADER_KEYS:
            self._header_keys[name] = key
        return key

    def _too_large(self, buf: bytes) -> None:
        if buf.find(b"\n", 0, self.max_request_line + 2) < 0:
            raise _HTTPError(414, f"request line longer than {self.max_request_line} bytes")
        raise _HTTPError(431, f"request head longer than {self.max_request_line + self.max_header_bytes} bytes")

    def _read_body(self, conn: _Connection, environ: dict, buf: bytes, v11: bool) -> bytes:
        """Read the request body whole into wsgi.input; return what follows it in the buffer."""
        length = environ.get("CONTENT_LENGTH")
        encoding = environ.get("HTTP_TRANSFER_ENCODING")
        expect = environ.get("HTTP_EXPECT")
        if expect is not None and expect.lower() != "100-continue":
            raise _HTTPError(417, f"unsupported Expect: {expect[:100]!r}")
        if encoding is not None:
            if length is not None:
                raise _HTTPError(400, "both Content-Length and Transfer-Encoding")
            if not v11:
                raise _HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if encoding.strip(" \t").lower() != "chunked":
                raise _HTTPError(400, f"unsupported Transfer-Encoding {encoding[:100]!r}")
            if expect is not None and not buf:
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body, buf = self._read_chunked(conn, buf)
            # The application sees the decoded body as if it had come with a Content-Length.
            environ["CONTENT_LENGTH"] = str(len(body))
            del environ["HTTP_TRANSFER_ENCODING"]
        else:
            if not (length.isascii() and length.isdigit()):
                raise _HTTPError(400, f"bad Content-Length {length[:100]!r}")
            size = int(length) if len(length) < 20 else self.max_body + 1
            if size > self.max_body:
                raise _HTTPError(413, f"body of {length} bytes, more than {self.max_body}")
            if size == 0:
                environ["wsgi.input"] = _EMPTY_INPUT
                return buf
            if expect is not None and v11 and len(buf) < size:
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if len(buf) < size:
                parts = [buf]
                have = len(buf)
                while have < size:
                    data = self._recv(conn)
                    parts.append(data)
                    have += len(data)
                buf = b"".join(parts)
            body, buf = buf[:size], buf[size:]
        environ["wsgi.input"] = BytesIO(body)
        return buf

    def _recv(self, conn: _Connection) -> bytes:
        """Wait for more bytes of a request; _Gone when the client closes its side."""
        while True:
            conn.since = -self.loop.now()
            get_hub().wait(conn.read_event)
            conn.since = 0.0
            try:
                data = conn.raw.recv(_RECV_SIZE)
            except BlockingIOError:
                continue
            if not data:
                self.error_log.debug("%s: closed the connection in the middle of a request body", conn.client)
                raise _Gone
            return data

    def _read_chunked(self, conn: _Connection, buf: bytes) -> tuple[bytes, bytes]:
        """Decode a chunked body (RFC 9112 7.1); return it and the bytes after its trailer section."""
        body = bytearray()
        limit = self.max_body
        pos = 0
        while True:
            # chunk-size [; extensions] CRLF
            eol = buf.find(b"\n", pos)
            while eol < 0:
                if len(buf) - pos > 1024:
                    raise _HTTPError(400, "chunk size line too long")
                buf = buf[pos:] + self._recv(conn)
                pos = 0
                eol = buf.find(b"\n")
            size_text = buf[pos:eol].rstrip(b"\r").partition(b";")[0].strip(b" \t")
            if not size_text or len(size_text) > 16 or size_text.strip(b"0123456789abcdefABCDEF"):
                raise _HTTPError(400, f"malformed chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            pos = eol + 1
            if size == 0:
                break
            if len(body) + size > limit:
                raise _HTTPError(413, f"chunked body of more than {limit} bytes")
            while len(buf) - pos < size + 2:
                buf = buf[pos:] + self._recv(conn)
                pos = 0
            body += buf[pos:pos + size]
            pos += size
            if buf[pos:pos + 2] == b"\r\n":
                pos += 2
            elif buf[pos:pos + 1] == b"\n":
                pos += 1
            else:
                raise _HTTPError(400, "chunk data not followed by CRLF")
        # The trailer section: header lines up to an empty line, read and discarded.
        read = 0
        while True:
            eol = buf.find(b"\n", pos)
            while eol < 0:
                if len(buf) - pos > self.max_header_bytes:
                    raise _HTTPError(431, "chunked trailer section too long")
                buf = buf[pos:] + self._recv(conn)
                pos = 0
                eol = buf.find(b"\n")
            line = buf[pos:eol].rstrip(b"\r")
            pos = eol + 1
            read += len(line)
            if not line:
                return bytes(body), buf[pos:]
            if read > self.max_header_bytes:
                raise _HTTPError(431, "chunked trailer section too long")

    def _reject(self, conn: _Connection, exc: _HTTPError) -> None:
        self.error_log.info("%s: %d %s: %s", conn.client, exc.code, _REASONS[exc.code], exc.detail)
        self._answer_error(conn, exc.code, exc.detail)

    def _answer_error(self, conn: _Connection, code: int, detail: str) -> None:
        """Answer `code` with a short text body, then close gracefully: stop writing, and drain what the
        client still sends for a moment, so that closing with unread bytes does not reset the
        connection before the client reads the answer."""
        body = f"{code} {_REASONS[code]}\n".encode("ascii")
        head = (f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode("ascii")
        try:
            conn.sendall(head + _date_line() + _SERVER_LINE + b"\r\n" + body)
            conn.raw.shutdown(socket.SHUT_WR)
            drained = 0
            with gevent.Timeout(_LINGER_SECONDS, False):
                while drained < _LINGER_BYTES:
                    data = conn.sock.recv(_RECV_SIZE)
                    if not data:
                        break
                    drained += len(data)
        except (OSError, _Gone, _Closing):
            pass


def _head_end(buf: bytes) -> tuple[int, int]:
    """Where the head ends and what follows starts, with any mix of CRLF and bare LF line ends (RFC 9112
    2.2 allows LF alone); (-1, -1) when the buffer does not hold a whole head yet."""
    k = buf.find(b"\n\r\n")
    j = buf.find(b"\n\n", 0, k + 1 if k >= 0 else len(buf))
    if j >= 0:
        return j, j + 2
    if k >= 0:
        return k, k + 3
    return -1, -1


def _split_bare_lines(head: str) -> list[str]:
    """The lines of a head whose lines end with CRLF or bare LF; a bare CR is an error."""
    if head[-1:] == "\r":
        head = head[:-1]
    text = head.replace("\r\n", "\n")
    if "\r" in text:
        raise _HTTPError(400, "bare CR in the request head")
    return text.split("\n")


def _is_token(text: str) -> bool:
    return bool(text) and _TOKEN_CHARS.issuperset(text)


def _other_version(version: str) -> tuple[bool, str]:
    """A version other than HTTP/1.0 and HTTP/1.1: HTTP/1.x is served as 1.1, HTTP/2+ gets 400."""
    if len(version) == 8 and version.startswith("HTTP/") and version[5].isdigit() and version[6] == "." \
            and version[7].isdigit() and version.isascii():
        if version[5] == "1":
            return True, "HTTP/1.1"
        if version[5] != "0":
            raise _HTTPError(400, f"unsupported version {version!r}")
    raise _HTTPError(400, f"malformed HTTP version {version[:20]!r}")


def _other_target(target: str, method: str) -> str:
    """The origin-form of a request target that does not start with '/': absolute-form
    (``http://host/path?q``) loses its scheme and authority; ``*`` stays for OPTIONS."""
    if target == "*" and method == "OPTIONS":
        return target
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https") and rest:
        slash = rest.find("/")
        query = rest.find("?")
        if slash < 0 or 0 <= query < slash:
            return "/" + rest[query:] if query >= 0 else "/"
        return rest[slash:]
    raise _HTTPError(400, f"malformed request target {target[:200]!r}")

