"""A lean HTTP/1.1 server for WSGI applications, on gevent's StreamServer, parsing with llhttp.

mongol-serve answers tracking-pixel requests, each a small GET with a handful of headers, from any
browser on the internet. Requests are parsed by llhttp (Node.js's parser, through ``httptools``):
maintained, fuzzed, and strict by default (bare LF, bare CR, obsolete line folding, NUL or other
control bytes in the target or a header value, lenient chunked framing, Content-Length together
with Transfer-Encoding are all refused). This module adds what a parser leaves to the server: limits
on the request target, headers and body; Host rules (RFC 9112 3.2: exactly one, a valid host; an
absolute-form target's authority replaces it); deadlines; a cap on connections; and the WSGI environ,
copied from a per-connection template. Responses (mongol.httpresponse) go out with one ``send``
when the application returns a list.

What it speaks: HTTP/1.0 and 1.1, keep-alive (1.1 by default, 1.0 on ``Connection: keep-alive``),
pipelining, request bodies with Content-Length or ``Transfer-Encoding: chunked`` (read whole before
the application is called, up to ``max_body``; a chunked body reaches the application as if it had
come with a Content-Length), ``Expect: 100-continue``, HEAD.

Bad input gets a short text/plain answer with ``Connection: close`` (400, 408, 413, 414, 417, 431;
never a 5xx, which would say the server is at fault) and one log line at INFO naming the client; a
client that hangs up is not an error; an exception in the application is logged with its traceback,
answered 500 when no header was sent yet, and the connection is closed.

Deadlines, each counted from the start of its phase and not restarted by every byte: a request head
must arrive whole within ``header_timeout`` of its first byte (and a new connection's first request
as well), a body within ``body_timeout`` of the head, else 408; an idle keep-alive connection is
closed after ``keepalive_timeout``; a response the client does not read within ``keepalive_timeout``
is abandoned. Past ``max_connections`` open connections, new ones get 503 with ``Retry-After`` at
once. When the process runs out of file descriptors, accepting pauses for a moment (logged once)
instead of failing in a loop. ``stop()`` closes idle keep-alive connections at once and lets
requests in progress finish.
"""

import errno
import logging
import re
import resource
import socket
import sys
from collections.abc import Callable
from io import BytesIO
from typing import Any
from urllib.parse import unquote

import gevent
from gevent.event import Event
from gevent.hub import get_hub
from gevent.server import StreamServer
from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from mongol.httpresponse import (
    REASONS,
    RECV_SIZE,
    SERVER_SOFTWARE,
    Closing,
    Gone,
    HTTPError,
    Responder,
    error_response,
)

__all__ = ["WSGIServer"]

_MAX_HEADER_KEYS = 1000  # distinct header names remembered with their environ key
_MAX_HOSTS = 1000  # distinct valid Host values remembered
_DESCRIPTOR_RESERVE = 32  # descriptors kept for the spool, logs and the store when capping connections
_ACCEPT_PAUSE = 0.5  # seconds without accepting after the process ran out of descriptors
_REFUSAL_LOG_INTERVAL = 60.0
_IDLE, _HEAD, _BODY = 0, 1, 2  # where a connection's parser stands
_WAIT_IDLE, _WAIT_REQUEST, _WAIT_SEND = 1, 2, 3
# Header names that map to environ keys other than HTTP_*, per CGI.
_CGI_KEYS = {"CONTENT_TYPE": "CONTENT_TYPE", "CONTENT_LENGTH": "CONTENT_LENGTH"}
_VERSIONS = {"1.1": ("HTTP/1.1", True), "1.0": ("HTTP/1.0", False)}
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
# RFC 3986 host (IP-literal, IPv4 or reg-name) and optional port. No comma: "a, b" is two hosts.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]*)(?::[0-9]*)?")
_EMFILE = frozenset([errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])


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


class _Connection(Responder):
    """One client connection: the response state (Responder) and the parser's callbacks, which turn
    each request into an environ and queue it in `ready` (several, when requests are pipelined)."""

    __slots__ = (
        "base",
        "began",
        "body",
        "body_size",
        "chunked_request",
        "environ",
        "expect",
        "head_bytes",
        "header_bytes",
        "keys",
        "nheaders",
        "now",
        "parser",
        "phase",
        "ready",
        "request",
        "server",
        "url",
    )

    def __init__(self, sock: socket.socket, client: str, server: "WSGIServer", base: dict) -> None:
        super().__init__(sock, client, server.error_log, server.keepalive_timeout)
        self.server = server
        self.base = base
        self.keys = server._header_keys
        self.phase = _IDLE
        self.ready: list[tuple] = []
        self.began = 0.0
        self.head_bytes = 0
        self.expect = False
        self.environ: dict = {}
        self.url = b""
        self.nheaders = self.header_bytes = self.body_size = 0
        self.body: list[bytes] = []
        self.chunked_request = False
        self.request: tuple = ()
        self.now = server.loop.now
        self.parser = HttpRequestParser(self)

    # ---- the parser's callbacks (llhttp calls them from feed_data) ----------------------------

    def on_message_begin(self) -> None:
        self.phase = _HEAD
        self.began = self.now()
        self.head_bytes = 0
        self.environ = self.base.copy()
        self.url = b""
        self.nheaders = self.header_bytes = self.body_size = 0
        self.body = []
        self.chunked_request = False

    def on_url(self, part: bytes) -> None:
        self.url += part  # llhttp may hand the target over in pieces, as it arrives
        if len(self.url) > self.server.max_request_line:
            raise HTTPError(414, f"request target longer than {self.server.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The limits are checked once the head is whole (on_headers_complete); until then the server's
        # loop bounds the bytes a head may take, so counting is all this hot path does.
        self.nheaders += 1
        self.header_bytes += len(name) + len(value) + 4
        key = self.keys.get(name)
        if not key:
            if key is None:
                key = self.server._header_key(name)
            if not key:
                return  # a name with an underscore
        environ = self.environ  # after the head: a scratch dict, where trailer fields are dropped
        text = value.decode("latin-1").rstrip(" \t")  # llhttp drops the leading whitespace
        if key in environ:
            if key == "HTTP_HOST":
                raise HTTPError(400, "two Host header fields")
            environ[key] += "," + text
        else:
            environ[key] = text

    def on_headers_complete(self) -> None:
        parser = self.parser
        environ = self.environ
        self.environ = {}  # trailer fields of a chunked body go here, and are dropped
        server = self.server
        self.check_limits()
        method = _METHODS.get(parser.get_method()) or parser.get_method().decode("ascii")
        version = parser.get_http_version()
        try:
            protocol, v11 = _VERSIONS[version]
        except KeyError:
            raise HTTPError(400, f"unsupported version HTTP/{version}") from None
        url = self.url
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
            path = path.decode("latin-1")
            if "%" in path:
                path = unquote(path, "latin-1")
            environ["QUERY_STRING"] = query.decode("latin-1")
        else:
            path = _other_target(url, method, environ)
        environ["REQUEST_METHOD"] = method
        environ["PATH_INFO"] = path
        environ["SERVER_PROTOCOL"] = protocol
        host = environ.get("HTTP_HOST")
        if host is None:
            if v11:
                raise HTTPError(400, "HTTP/1.1 request without a Host header")
        elif host not in server._hosts:
            server._check_host(host)
        if "HTTP_TRANSFER_ENCODING" in environ:
            encoding = environ["HTTP_TRANSFER_ENCODING"]
            if not v11:
                raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if encoding.lower() != "chunked":
                raise HTTPError(400, f"unsupported Transfer-Encoding {encoding[:100]!r}")
            self.chunked_request = True
        elif "CONTENT_LENGTH" in environ:
            length = environ["CONTENT_LENGTH"]  # digits: llhttp checked it
            if len(length) > 18 or int(length) > server.max_body:
                raise HTTPError(413, f"body of {length[:40]} bytes, more than {server.max_body}")
        expect = environ.get("HTTP_EXPECT")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise HTTPError(417, f"unsupported Expect: {expect[:100]!r}")
            self.expect = v11
        self.request = (environ, parser.should_keep_alive(), method == "HEAD", v11)
        self.phase = _BODY
        self.began = self.now()

    def check_limits(self) -> None:
        server = self.server
        if self.nheaders > server.max_headers:
            raise HTTPError(431, f"{self.nheaders} header fields, more than {server.max_headers}")
        if self.header_bytes > server.max_header_bytes:
            raise HTTPError(431, f"header section of more than {server.max_header_bytes} bytes")

    def on_body(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.body_size > self.server.max_body:
            raise HTTPError(413, f"body of more than {self.server.max_body} bytes")
        self.body.append(data)

    def on_message_complete(self) -> None:
        if self.chunked_request:  # trailer fields count towards the limits too
            self.check_limits()
        environ = self.request[0]
        if self.body:
            body = b"".join(self.body)
            environ["wsgi.input"] = BytesIO(body)
        else:
            body = b""
            environ["wsgi.input"] = _EMPTY_INPUT
        if self.chunked_request:
            # The application sees the decoded body as if it had come with a Content-Length.
            environ["CONTENT_LENGTH"] = str(len(body))
            del environ["HTTP_TRANSFER_ENCODING"]
        self.ready.append(self.request)
        self.body = []
        self.expect = False
        self.phase = _IDLE


class WSGIServer(StreamServer):
    """An HTTP/1.1 server for a WSGI application (PEP 3333), one greenlet per connection.

    `listener` is an address tuple such as ``("127.0.0.1", 8000)`` or a bound, listening socket
    (several processes may share one). `environ` adds keys to every request's environ.
    `max_connections` (default: what the descriptor limit allows, at most 10000) caps the open
    connections of this process. ``stop(timeout)`` stops accepting, closes idle keep-alive
    connections at once, lets requests in progress finish for up to `timeout` seconds, then kills
    what is left.
    """

    def __init__(self, listener: Any, application: Callable, *, max_request_line: int = 8192,
                 max_header_bytes: int = 16384, max_headers: int = 100, max_body: int = 1_048_576,
                 keepalive_timeout: float = 75.0, header_timeout: float = 20.0, body_timeout: float = 20.0,
                 max_connections: int | None = None, error_log: logging.Logger | None = None,
                 environ: dict | None = None) -> None:
        super().__init__(listener)
        self.application = application
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.error_log = error_log if error_log is not None else logging.getLogger(__name__)
        allowed = max(1, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - _DESCRIPTOR_RESERVE)
        if max_connections is None:
            max_connections = min(10_000, allowed)
        elif max_connections > allowed:
            self.error_log.warning("at most %d connections (the descriptor limit, ulimit -n, is %d), not %d",
                                   allowed, allowed + _DESCRIPTOR_RESERVE, max_connections)
            max_connections = allowed
        self.max_connections = max_connections
        self.extra_environ = dict(environ or {})
        self._connections: set[_Connection] = set()
        self._no_connections = Event()
        self._no_connections.set()
        self._stopping = False
        self._sweeper: Any = None
        self._header_keys: dict[bytes, str] = {}
        self._hosts: set[str] = set()
        self._base_environ: dict[str, Any] = {}
        self._out_of_descriptors = False
        self._refused = 0
        self._refusal_logged = -_REFUSAL_LOG_INTERVAL

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
            "QUERY_STRING": "",
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
        period = max(0.05, min(1.0, self.keepalive_timeout / 4, self.header_timeout / 4, self.body_timeout / 4))
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
            # idle, or with only part of a request head: nothing was accepted from it, nothing to finish
            if conn.waiting == _WAIT_IDLE or (conn.waiting == _WAIT_REQUEST and conn.phase == _HEAD):
                self.loop.run_callback(self._cancel_wait, conn, Closing("the server is stopping"))
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
        """A few times a second: close connections whose client is past its deadline."""
        now = self.loop.now()
        for conn in self._connections:
            if conn.waiting and 0.0 < conn.deadline < now:
                conn.deadline = 0.0
                if conn.waiting == _WAIT_REQUEST:
                    what = "head" if conn.phase == _HEAD else "body"
                    limit = self.header_timeout if conn.phase == _HEAD else self.body_timeout
                    error = Closing(f"request {what} not received within {limit:g} s", 408)
                else:
                    error = Closing("timed out")
                self.loop.run_callback(self._cancel_wait, conn, error)

    # ---- accepting --------------------------------------------------------------------------

    def do_read(self) -> Any:
        """Accept one connection; when descriptors run out, pause accepting rather than spin on the
        error (and print gevent's traceback for each attempt), and say so once."""
        try:
            accepted = super().do_read()
        except OSError as exc:
            if exc.errno not in _EMFILE:
                raise
            if not self._out_of_descriptors:
                self._out_of_descriptors = True
                self.error_log.error("cannot accept connections: %s (%d open); pausing accepting until "
                                     "descriptors are free (raise LimitNOFILE / ulimit -n)",
                                     exc.strerror, len(self._connections))
            self.stop_accepting()
            timer = self.loop.timer(_ACCEPT_PAUSE)
            timer.start(self._resume_accepting, timer)
            return None
        if accepted and self._out_of_descriptors:
            self._out_of_descriptors = False
            self.error_log.warning("accepting connections again (%d open)", len(self._connections))
        return accepted

    def _resume_accepting(self, timer: Any) -> None:
        timer.close()
        if not self._stopping and self.socket is not None and not self.closed:
            self.start_accepting()

    def _refuse(self, sock: socket.socket, client: str) -> None:
        """Past max_connections: 503 at once, and close."""
        self._refused += 1
        now = self.loop.now()
        if now - self._refusal_logged >= _REFUSAL_LOG_INTERVAL:
            self.error_log.warning("%d connections open, the most allowed: refusing new ones with 503 (%d so far)",
                                   len(self._connections), self._refused)
            self._refusal_logged = now
        try:
            sock.sendall(error_response(503, b"Retry-After: 1\r\n"))
            sock.shutdown(socket.SHUT_WR)
            with gevent.Timeout(0.2, False):
                sock.recv(RECV_SIZE)  # what the client sent, so that the close does not reset the answer
        except OSError:
            pass

    # ---- connections ------------------------------------------------------------------------

    def handle(self, sock: socket.socket, address: Any) -> None:
        """Serve one connection until the client or the server closes it (StreamServer closes `sock`)."""
        if isinstance(address, tuple):
            client = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
        else:
            client = str(address) or "unix socket"
        if len(self._connections) >= self.max_connections:
            self._refuse(sock, client)
            return
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(address, tuple):
            environ = {**self._base_environ, "REMOTE_ADDR": str(address[0]), "REMOTE_PORT": str(address[1])}
        else:
            environ = {**self._base_environ, "REMOTE_ADDR": str(address), "REMOTE_PORT": ""}
        conn = _Connection(sock, client, self, environ)
        self._connections.add(conn)
        self._no_connections.clear()
        try:
            self._serve(conn)
        except HTTPError as exc:
            self.error_log.info("%s: %d %s: %s", client, exc.code, REASONS[exc.code], exc.detail)
            conn.answer_error(exc.code)
        except Closing as exc:
            if exc.code:
                self.error_log.info("%s: %d %s: %s", client, exc.code, REASONS[exc.code], exc)
                conn.waiting = 0
                conn.answer_error(exc.code)
            else:
                self.error_log.debug("%s: connection closed: %s", client, exc)
        except (Gone, ConnectionError):
            pass  # the client went away
        except OSError as exc:
            self.error_log.debug("%s: connection error: %s", client, exc)
        except Exception:
            self.error_log.exception("%s: internal error of the HTTP server; connection closed", client)
        finally:
            conn.waiting = 0
            self._connections.discard(conn)
            if not self._connections:
                self._no_connections.set()

    def _serve(self, conn: _Connection) -> None:
        """The request loop of one connection: receive, let llhttp parse, answer what it completed."""
        app = self.application
        recv = conn.raw.recv
        wait = get_hub().wait
        now = self.loop.now
        read_event = conn.read_event
        start_response = conn.start_response
        feed = conn.parser.feed_data
        ready = conn.ready
        send = conn.raw.send
        sendall = conn.sendall
        max_head = self.max_request_line + self.max_header_bytes + 16
        conn.deadline = now() + self.header_timeout  # a new connection is for a request: no idle grace
        try:
            data = recv(RECV_SIZE)  # often already there: no need to wait for the loop
        except BlockingIOError:
            data = None
        while True:
            while not data:
                if data is not None:  # b"": the client closed its side
                    if conn.phase != _IDLE:
                        self.error_log.debug("%s: closed the connection in the middle of a request", conn.client)
                        raise Gone
                    return
                if self._stopping and conn.phase == _IDLE:
                    return
                conn.waiting = _WAIT_IDLE if conn.phase == _IDLE else _WAIT_REQUEST
                wait(read_event)
                conn.waiting = 0
                try:
                    data = recv(RECV_SIZE)
                except BlockingIOError:
                    data = None
            error: HTTPError | None = None
            upgrade = False
            try:
                feed(data)
            except HttpParserUpgrade:
                upgrade = True  # CONNECT or Upgrade: answered as any request, then the connection closes
            except HttpParserCallbackError as exc:
                if not isinstance(exc.__context__, HTTPError):
                    raise exc.__context__ or exc from None
                error = exc.__context__
            except HttpParserError as exc:
                error = HTTPError(400, str(exc) or type(exc).__name__)
            size = len(data)
            data = None

            # ---- the application, for each request completed ----------------------------------
            for environ, keep_alive, head, v11 in ready:
                conn.status = None
                conn.sent = False
                conn.head = head
                conn.v11 = v11
                conn.keep_alive = keep_alive and not self._stopping and not upgrade
                result = None
                try:
                    result = app(environ, start_response)
                    if type(result) is list and not conn.sent:
                        body = result[0] if len(result) == 1 else b"".join(result)
                        if type(body) is not bytes:
                            raise TypeError(f"the application must return bytes, not {type(body).__name__}")
                        out = conn.whole_response(body)
                        conn.sent = True
                        try:
                            sent = send(out)
                        except BlockingIOError:
                            sent = 0
                        except OSError as exc:
                            raise Gone from exc
                        if sent < len(out):
                            sendall(out[sent:])
                    else:
                        for block in result:
                            if block:
                                conn.write(block)
                        conn.finish()
                except (Closing, Gone):
                    raise
                except Exception:
                    self.error_log.exception("%s: error in the WSGI application on %s %s", conn.client,
                                             environ["REQUEST_METHOD"], environ["PATH_INFO"][:200])
                    if not conn.sent:
                        conn.answer_error(500)
                    return
                finally:
                    if result is not None and type(result) is not list and hasattr(result, "close"):
                        try:
                            result.close()
                        except Exception:
                            self.error_log.exception("%s: error closing the response of %s %s", conn.client,
                                                     environ["REQUEST_METHOD"], environ["PATH_INFO"][:200])
                            conn.keep_alive = False
                if not conn.keep_alive:
                    return  # what the client sent after this request is never read
            if ready:
                ready.clear()
                if conn.phase == _IDLE:
                    conn.deadline = now() + self.keepalive_timeout
            if error is not None:
                raise error
            if upgrade:
                return

            # ---- a request not complete yet: its deadline, its size, 100 Continue ----------------
            phase = conn.phase
            if phase == _HEAD:
                conn.deadline = conn.began + self.header_timeout
                # llhttp keeps a partial header line in memory: bound what one head may take.
                conn.head_bytes += size
                if conn.head_bytes > max_head:
                    if not conn.nheaders and len(conn.url) + 16 >= conn.head_bytes:
                        raise HTTPError(414, f"request target longer than {self.max_request_line} bytes")
                    raise HTTPError(431, f"request head longer than {max_head} bytes")
            elif phase == _BODY:
                conn.deadline = conn.began + self.body_timeout
                if conn.expect:
                    conn.expect = False
                    sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    # ---- rare paths -------------------------------------------------------------------------

    def _header_key(self, name: bytes) -> str:
        """The environ key of a header name not seen before (llhttp checked it is a token),
        remembered; "" for a name to drop."""
        if b"_" in name:
            # Another client could send X_Forwarded_For next to a proxy's X-Forwarded-For: both would
            # become HTTP_X_FORWARDED_FOR. Like nginx and Apache, drop names with underscores.
            key = ""
        else:
            key = name.decode("latin-1").upper().replace("-", "_")
            key = _CGI_KEYS.get(key) or "HTTP_" + key
        if len(self._header_keys) < _MAX_HEADER_KEYS:
            self._header_keys[name] = key
        return key

    def _check_host(self, host: str) -> None:
        """400 unless `host` is one RFC 3986 host with an optional port; remembered if it is."""
        if not _HOST.fullmatch(host):
            raise HTTPError(400, f"invalid Host {host[:100]!r}")
        if len(self._hosts) < _MAX_HOSTS:
            self._hosts.add(host)


def _other_target(url: bytes, method: str, environ: dict) -> str:
    """PATH_INFO of a request target that does not start with '/' (sets QUERY_STRING, and HTTP_HOST
    from an absolute-form target, which RFC 9112 3.2.2 says replaces the Host header); ``*`` stays
    for OPTIONS."""
    if url == b"*" and method == "OPTIONS":
        return "*"
    text = url.decode("latin-1")
    scheme, sep, rest = text.partition("://")
    if not (sep and scheme.lower() in ("http", "https")):
        raise HTTPError(400, f"malformed request target {text[:200]!r}")
    end = len(rest)
    for mark in "/?":
        found = rest.find(mark)
        if 0 <= found < end:
            end = found
    authority, rest = rest[:end], rest[end:]
    if not authority or "@" in authority or not _HOST.fullmatch(authority):
        raise HTTPError(400, f"invalid authority in the request target {text[:200]!r}")
    environ["HTTP_HOST"] = authority
    path, _, query = rest.partition("?")
    environ["QUERY_STRING"] = query
    path = path or "/"
    return unquote(path, "latin-1") if "%" in path else path
