"""The response side of mongol.httpserver: WSGI's start_response and write, and each response framed
and written with as few sends as possible (one, when the application returns a list).

The status line and headers of the last distinct (status, headers) pair are encoded once and reused:
applications answer with the same few (the pixel always with one). Date is formatted once a second.
"""

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.hub import get_hub

SERVER_SOFTWARE = "mongol"
SERVER_LINE = f"Server: {SERVER_SOFTWARE}\r\n".encode("ascii")
RECV_SIZE = 65536
LINGER_SECONDS = 1.0  # after an error answer, how long unread request bytes are drained before closing
LINGER_BYTES = 1 << 20

REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
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


def date_line() -> bytes:
    now = time.time()
    return _DATE.line if now < _DATE.until else _DATE.refresh(now)


class HTTPError(Exception):
    """The request cannot be served: answer `code` with Connection: close and log `detail` at INFO."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class Closing(Exception):
    """Thrown into a connection's greenlet that waits for its client when the server stops or a deadline
    passes; `code` is the answer owed (408 for a request begun but not received in time), else 0."""

    def __init__(self, reason: str, code: int = 0) -> None:
        super().__init__(reason)
        self.code = code


class Gone(Exception):
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


# The last distinct status and headers seen, with what was made of them.
_last_head = _ResponseHead("200 OK", [])
# Connection header line, by 2 * (HTTP/1.1 request) + (keep-alive)
_CONNECTION_LINES = (b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"Connection: close\r\n", b"")


def error_response(code: int, extra: bytes = b"") -> bytes:
    """A whole short text/plain answer with Connection: close; `extra`: more header lines."""
    body = f"{code} {REASONS[code]}\n".encode("ascii")
    head = (f"HTTP/1.1 {code} {REASONS[code]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode("ascii")
    return head + extra + date_line() + SERVER_LINE + b"\r\n" + body


class Responder:
    """The response of one connection's current request: WSGI's start_response and write, bound
    once per connection. `deadline` and `waiting` are shared with the server's sweep, which throws
    Closing into a greenlet that waits for its client past the deadline."""

    __slots__ = ("before_send", "chunked", "client", "deadline", "expected_length", "greenlet", "head", "headers",
                 "keep_alive", "log", "out", "queued", "raw", "read_event", "send_timeout", "sent", "sent_length",
                 "sock", "status", "v11", "waiting", "write_event")

    def __init__(self, sock: socket.socket, client: str, log: logging.Logger, send_timeout: float) -> None:
        self.sock = sock  # the gevent socket: its sendall waits cooperatively
        self.raw = sock._sock  # the standard library socket below it, non-blocking
        self.read_event = sock._read_event
        self.write_event = sock._write_event
        self.client = client
        self.log = log
        self.send_timeout = send_timeout
        self.greenlet = gevent.getcurrent()
        self.deadline = 0.0  # loop time by which the current wait for the client must end (0: none)
        self.waiting = 0  # 1 while waiting idle between requests, 2 inside a request, 3 sending
        self.status: str | None = None
        self.headers: list = []
        self.sent = False
        self.head = False
        self.v11 = True
        self.keep_alive = True
        self.chunked = False
        self.expected_length = -1
        self.sent_length = 0
        self.out = b""  # responses the server sends at the end of this turn of its loop (mongol.httpoutbox)
        self.queued = False  # in the server's list for that
        self.before_send: Callable[[], bool] | None = None  # the server's check before answers leave

    def sendall(self, data: bytes) -> None:
        """Send `data` after the responses still waiting in `out`: one non-blocking send, and gevent's
        sendall for whatever did not fit. Gone, sending nothing, when the server's `before_send` fails."""
        if self.out:
            data, self.out = self.out + data, b""
        elif not data:
            return
        if self.before_send is not None and not self.before_send():
            raise Gone("the answers' hits could not be spooled")
        try:
            n = self.raw.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            raise Gone from exc
        if n < len(data):
            self.read_event.stop()  # httpserver's persistent read watcher must not wake this wait
            deadline = self.deadline
            self.deadline = get_hub().loop.now() + self.send_timeout
            self.waiting = 3  # httpserver's _WAIT_SEND
            try:
                self.sock.sendall(memoryview(data)[n:])
            except OSError as exc:
                raise Gone from exc
            finally:
                self.waiting = 0
                self.deadline = deadline

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
        info = _last_head  # response_head(), inline: this runs for every response to a list
        if self.status != info.status or self.headers != info.headers:
            info = self.response_head()
        elif info.close:
            self.keep_alive = False
        length = info.length
        if info.no_body:
            body = extra = b""
        elif self.head:
            # HEAD: the headers GET would have; an application may return the body or nothing.
            extra = b"Content-Length: %d\r\n" % len(body) if length < 0 and body else b""
            body = b""
        elif length < 0:
            extra = b"Content-Length: %d\r\n" % len(body)
        else:
            extra = b""
            if length != len(body):
                self.log.warning("%s: the application declared Content-Length %d and returned %d bytes",
                                 self.client, length, len(body))
                body = body[:length]
                self.keep_alive = False  # the client will miss bytes: it must not wait for another response
        if info.date:
            now = time.time()
            date = _DATE.line if now < _DATE.until else _DATE.refresh(now)
        else:
            date = b""
        return b"".join((info.block, extra, date, SERVER_LINE if info.server else b"",
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
        return b"".join((info.block, extra, date_line() if info.date else b"",
                         SERVER_LINE if info.server else b"",
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

    def answer_error(self, code: int, extra: bytes = b"") -> None:
        """Answer `code` with a short text body, then close gracefully: stop writing, and drain what the
        client still sends for a moment, so that closing with unread bytes does not reset the
        connection before the client reads the answer."""
        self.read_event.stop()  # gevent's recv below waits on it itself
        try:
            self.sendall(error_response(code, extra))
            self.raw.shutdown(socket.SHUT_WR)
            drained = 0
            with gevent.Timeout(LINGER_SECONDS, False):
                while drained < LINGER_BYTES:
                    data = self.sock.recv(RECV_SIZE)
                    if not data:
                        break
                    drained += len(data)
        except (OSError, Gone, Closing):
            pass
