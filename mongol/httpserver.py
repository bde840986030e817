"""A lean HTTP/1.1 server for WSGI applications, on gevent's StreamServer, parsing with llhttp.

mongol-serve answers tracking-pixel requests, each a small GET with a handful of headers, from any
browser on the internet. Requests are parsed by llhttp (Node.js's parser, through ``httptools``):
maintained, fuzzed, and strict by default (bare LF, bare CR, obsolete line folding, NUL or other
control bytes in the target or a header value, lenient chunked framing, Content-Length together
with Transfer-Encoding are all refused). This module adds what a parser leaves to the server: limits
on the request target, headers and body; Host rules (RFC 9112 3.2: exactly one, a valid host; an
absolute-form target's authority replaces it); deadlines; a cap on connections; and the WSGI environ,
copied from a per-connection template (mongol.httprequest). Responses (mongol.httpresponse) go out
with one ``send`` when the application returns a list, all those of one turn of gevent's loop
together at its end (mongol.httpoutbox): on loopback a send wakes the client, and sends spread between
requests woke it once per response. With ``inline`` (mongol-serve), a request that arrives whole on an
idle connection is parsed and answered by the read watcher's callback in the loop itself, without a
switch to the connection's greenlet and back; the greenlet takes over whatever needs waiting.

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

import contextlib
import errno
import logging
import resource
import socket
import sys
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent.hub import get_hub
from gevent.server import StreamServer
from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade

from mongol.httpoutbox import Outbox
from mongol.httprequest import BODY, EMPTY_INPUT, HEAD, HOST, IDLE, Connection
from mongol.httpresponse import (
    REASONS,
    RECV_SIZE,
    SERVER_SOFTWARE,
    Closing,
    Gone,
    HTTPError,
    error_response,
)

__all__ = ["WSGIServer"]

_MAXHEADER_KEYS = 1000  # distinct header names remembered with their environ key
_MAX_HOSTS = 1000  # distinct valid Host values remembered
_DESCRIPTOR_RESERVE = 32  # descriptors kept for the spool, logs and the store when capping connections
_ACCEPT_PAUSE = 0.5  # seconds without accepting after the process ran out of descriptors
_REFUSAL_LOG_INTERVAL = 60.0
_WAIT_IDLE, _WAIT_REQUEST, _WAIT_SEND = 1, 2, 3
# Header names that map to environ keys other than HTTP_*, per CGI.
_CGI_KEYS = {"CONTENT_TYPE": "CONTENT_TYPE", "CONTENT_LENGTH": "CONTENT_LENGTH"}
_EMFILE = frozenset([errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])

class _Raised:
    """_readable: what the application raised, for the greenlet to log and answer 500 to."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _outcome(failure: Exception) -> tuple[HTTPError | None, bool]:
    """What an exception from llhttp's feed means: the error to answer (after the requests complete
    before it), and whether the connection is being upgraded. Raises what no client can cause."""
    if isinstance(failure, HttpParserUpgrade):
        return None, True  # CONNECT or Upgrade: answered as any request, then the connection closes
    if isinstance(failure, HttpParserCallbackError):
        if not isinstance(failure.__context__, HTTPError):
            raise failure.__context__ or failure from None
        return failure.__context__, False
    if isinstance(failure, HttpParserError):
        return HTTPError(400, str(failure) or type(failure).__name__), False
    raise failure


class WSGIServer(Outbox, StreamServer):
    """An HTTP/1.1 server for a WSGI application (PEP 3333), one greenlet per connection.

    `listener` is an address tuple such as ``("127.0.0.1", 8000)`` or a bound, listening socket
    (several processes may share one). `environ` adds keys to every request's environ.
    `max_connections` (default: what the descriptor limit allows, at most 10000) caps the open
    connections of this process. ``stop(timeout)`` stops accepting, closes idle keep-alive
    connections at once, lets requests in progress finish for up to `timeout` seconds, then kills
    what is left. `before_send`, when given, is called before any answer leaves the process (once
    per turn of the loop for the queued ones, and before each other send); it returns False when what
    the waiting answers promise cannot be kept (mongol.journal.Recorder.flush: the spool refused their
    hits), and then none of them is sent: their connections are closed. `inline`: the application
    never waits on gevent and never calls WSGI's ``write()`` (it returns its body), so the loop may
    run it itself, for requests that arrive whole on an idle connection (``_readable``); anything
    else still goes to the connection's greenlet.

    The application must not wait on gevent (Mongol's never do: the spool takes a plain ``write()``):
    a connection's read watcher stays started while it runs, and would wake that wait.
    """

    # One connection per wake-up: the processes sharing a listening socket are all woken by a new
    # connection, and the first would otherwise take a whole burst of them (gevent's default is 100),
    # leaving the other cores idle while it serves every connection of a busy client alone.
    max_accept = 1

    def __init__(self, listener: Any, application: Callable, *, max_request_line: int = 8192,
                 max_header_bytes: int = 16384, max_headers: int = 100, max_body: int = 1_048_576,
                 keepalive_timeout: float = 75.0, header_timeout: float = 20.0, body_timeout: float = 20.0,
                 max_connections: int | None = None, error_log: logging.Logger | None = None,
                 environ: dict | None = None, before_send: Callable[[], bool] | None = None,
                 inline: bool = False) -> None:
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
        self._connections: set[Connection] = set()
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
        self._init_outbox(before_send)
        self.inline = inline

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
            "wsgi.input": EMPTY_INPUT,  # a request with a body gets its own
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
            if conn.waiting == _WAIT_IDLE or (conn.waiting == _WAIT_REQUEST and conn.phase == HEAD):
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

    def _cancel_wait(self, conn: Connection, error: Exception) -> None:
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
                    what = "head" if conn.phase == HEAD else "body"
                    limit = self.header_timeout if conn.phase == HEAD else self.body_timeout
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
        if not self._stopping and not self.closed:  # closed: gevent has removed self.socket
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
        conn = Connection(sock, client, self, environ)
        self._connections.add(conn)
        self._no_connections.clear()
        try:
            self._serve(conn)
            conn.sendall(b"")  # what _flush has not sent yet, before the connection closes
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
                if conn.out:  # stop() or a deadline while responses waited for _flush
                    with contextlib.suppress(Gone, Closing, OSError):
                        conn.sendall(b"")
        except (Gone, ConnectionError):
            pass  # the client went away
        except OSError as exc:
            self.error_log.debug("%s: connection error: %s", client, exc)
        except Exception:
            self.error_log.exception("%s: internal error of the HTTP server; connection closed", client)
        finally:
            conn.read_event.stop()
            conn.waiting = 0
            self._connections.discard(conn)
            if not self._connections:
                self._no_connections.set()

    def _serve(self, conn: Connection) -> None:
        """The request loop of one connection: receive, let llhttp parse, answer what it completed."""
        app = self.application
        recv = conn.raw.recv
        # The read watcher stays started between requests, with the greenlet's own switch as its
        # callback: waiting is one switch to the hub and back, with no Waiter and no watcher start
        # and stop per request (2 us of the 10 us that gevent costs a request). Every other wait of
        # this greenlet (a send that does not fit, the linger after an error) stops it first.
        suspend = get_hub().switch
        resume = conn.greenlet.switch
        # inline: the loop answers what arrives on an idle connection itself (_readable), and wakes
        # this greenlet only for what needs it (a partial request, an error, a streamed response...).
        wake = (self._readable, conn) if self.inline else (resume,)
        now = self.loop.now
        read_event = conn.read_event
        start_response = conn.start_response
        feed = conn.parser.feed_data
        ready = conn.ready
        sendall = conn.sendall
        max_head = self.max_request_line + self.max_header_bytes + 16
        conn.deadline = now() + self.header_timeout  # a new connection is for a request: no idle grace
        data = None
        if not self.inline:  # inline: every request goes through _readable, the first one too
            with contextlib.suppress(BlockingIOError):
                data = recv(RECV_SIZE)  # often already there: no need to wait for the loop
        while True:
            handoff = None
            while not data:
                if data is not None:  # b"": the client closed its side
                    if conn.phase != IDLE:
                        self.error_log.debug("%s: closed the connection in the middle of a request", conn.client)
                        raise Gone
                    return
                if self._stopping and conn.phase != BODY:
                    return  # idle, or half a head that arrived after stop() looked: nothing to finish
                conn.waiting = _WAIT_IDLE if conn.phase == IDLE else _WAIT_REQUEST
                if not read_event.active:
                    read_event.start(*wake)
                suspend()
                conn.waiting = 0
                if conn.out:  # woken by _flush: the rest of a response that did not fit the socket
                    sendall(b"")
                if conn.handoff is not None:  # _readable received and fed data, and hands over
                    handoff, conn.handoff = conn.handoff, None
                    break
                try:
                    data = recv(RECV_SIZE)
                except BlockingIOError:
                    data = None
            if handoff is None:
                conn.fed = size = len(data)
                failure = None
                try:
                    feed(data)
                except Exception as exc:
                    failure = exc
                data = None
            else:
                size, failure, finished = handoff
                if finished:
                    return  # _readable queued a response that closes the connection
            error, upgrade = _outcome(failure) if failure is not None else (None, False)

            # ---- the application, for each request completed ----------------------------------
            pending, conn.pending = conn.pending, None  # the first request's result, from _readable
            for environ, keep_alive, head, v11 in ready:
                if pending is None:
                    conn.status = None
                    conn.sent = False
                    conn.head = head
                    conn.v11 = v11
                    conn.keep_alive = keep_alive and not self._stopping and not upgrade
                result = None
                try:
                    if pending is None:
                        result = app(environ, start_response)
                    else:
                        result, pending = pending, None
                        if type(result) is _Raised:
                            raise result.error
                    if type(result) is list and not conn.sent:
                        self._queue(conn, result)
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
                if conn.phase == IDLE:
                    conn.deadline = now() + self.keepalive_timeout
            if error is not None:
                raise error
            if upgrade:
                return

            # ---- a request not complete yet: its deadline, its size, 100 Continue ----------------
            # A phase's deadline counts from the end of the first feed that began it: no clock read for
            # a request that arrives whole, which is nearly every one.
            phase = conn.phase
            if phase != IDLE and not conn.began:
                conn.began = now()
            if phase == HEAD:
                conn.deadline = conn.began + self.header_timeout
                # llhttp keeps a partial header line in memory: bound what one head may take.
                conn.head_bytes += size
                if conn.head_bytes > max_head:
                    if not conn.nheaders and len(conn.url) + 16 >= conn.head_bytes:
                        raise HTTPError(414, f"request target longer than {self.max_request_line} bytes")
                    raise HTTPError(431, f"request head longer than {max_head} bytes")
            elif phase == BODY:
                conn.deadline = conn.began + self.body_timeout
                if conn.expect:
                    conn.expect = False
                    sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _readable(self, conn: Connection) -> None:
        """With `inline`: the read watcher's callback of a connection whose greenlet waits in _serve.
        On an idle keep-alive connection, receive, parse, and answer every request that arrived whole
        whose application returns a list, here in the loop: no switch to the greenlet and back, 1.4 us
        of the 5.5 a bare receive and send cost in a gevent greenlet. Whatever else happens (a partial
        request, a parser error, a response streamed or closing, an exception) is handed to the
        greenlet as it stands (conn.handoff, conn.pending), which goes on as if it had done it all."""
        if conn.waiting != _WAIT_IDLE or conn.out or self._stopping:
            conn.greenlet.switch()  # it waits inside a request, or has something to send first
            return
        try:
            data = conn.raw.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            conn.greenlet.switch()  # its own recv sees the end or the error again
            return
        conn.fed = size = len(data)
        try:
            conn.parser.feed_data(data)
        except Exception as exc:
            conn.handoff = (size, exc, False)
        else:
            answered = self._answer_inline(conn) if conn.phase == IDLE else False  # else: ends inside a request
            if answered is None:
                conn.deadline = self.loop.now() + self.keepalive_timeout
                return
            conn.handoff = (size, None, answered)
        conn.greenlet.switch()

    def _answer_inline(self, conn: Connection) -> bool | None:
        """Answer the ready requests in the loop, as _serve would. None: all answered, the connection
        stays open; True: one was answered with Connection: close (the connection ends); False: the
        greenlet goes on with what is left in `ready` (a request that closes the connection, or the
        first one's result in `conn.pending`: a streamed response, or an exception)."""
        ready, app, start_response = conn.ready, self.application, conn.start_response
        while ready:
            environ, keep_alive, head, v11 = ready[0]
            if not keep_alive:
                return False
            conn.status = None
            conn.sent = False
            conn.head = head
            conn.v11 = v11
            conn.keep_alive = True
            try:
                result = app(environ, start_response)
                if type(result) is not list or conn.sent:
                    conn.pending = result  # a streamed response: the greenlet sends it
                    return False
                self._queue(conn, result)
            except Exception as exc:
                conn.pending = _Raised(exc)  # the greenlet logs it and answers 500
                return False
            del ready[0]
            if not conn.keep_alive:  # the application's Connection: close
                return True
        return None

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
        if len(self._header_keys) < _MAXHEADER_KEYS:
            self._header_keys[name] = key
        return key

    def _check_host(self, host: str) -> None:
        """400 unless `host` is one RFC 3986 host with an optional port; remembered if it is."""
        if not HOST.fullmatch(host):
            raise HTTPError(400, f"invalid Host {host[:100]!r}")
        if len(self._hosts) < _MAX_HOSTS:
            self._hosts.add(host)
