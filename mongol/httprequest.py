"""The request side of mongol.httpserver: llhttp's callbacks (through httptools), which turn each
request on a connection into a WSGI environ, with the limits, Host rules and framing checks a parser
leaves to the server. The connection object is also the response's (mongol.httpresponse.Responder).
"""

import re
import socket
from io import BytesIO
from typing import TYPE_CHECKING
from urllib.parse import unquote

from httptools import HttpRequestParser

from mongol.httpresponse import HTTPError, Responder

if TYPE_CHECKING:
    from mongol.httpserver import WSGIServer

IDLE, HEAD, BODY = 0, 1, 2  # where a connection's parser stands
_VERSIONS = {"1.1": ("HTTP/1.1", True), "1.0": ("HTTP/1.0", False)}
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
# RFC 3986 host (IP-literal, IPv4 or reg-name) and optional port. No comma: "a, b" is two hosts.
HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]*)(?::[0-9]*)?")


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


EMPTY_INPUT = _EmptyInput()
_OWS = (" ", "\t")


class Connection(Responder):
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
        "fed",
        "handoff",
        "head_bytes",
        "keys",
        "nheaders",
        "parser",
        "pending",
        "phase",
        "ready",
        "request",
        "server",
        "trailers",
        "url",
    )

    def __init__(self, sock: socket.socket, client: str, server: "WSGIServer", base: dict) -> None:
        super().__init__(sock, client, server.error_log, server.keepalive_timeout)
        self.server = server
        self.base = base
        if server.before_send is not None:
            self.before_send = server._before_send
        self.keys = server._header_keys
        self.phase = IDLE
        self.ready: list[tuple] = []
        self.began = 0.0
        self.head_bytes = 0
        self.expect = False
        self.environ: dict = {}
        self.trailers: dict = {}
        self.handoff: tuple | None = None  # httpserver._readable: (bytes fed, the feed's exception, done)
        self.pending: object = None  # httpserver._readable: the first ready request's result
        self.url = b""
        self.nheaders = self.body_size = 0
        self.fed = 0  # bytes of the current feed (httpserver sets it): with head_bytes, a bound on a head's size
        self.body: list[bytes] = []
        self.chunked_request = False
        self.request: tuple = ()
        self.parser = HttpRequestParser(self)

    # ---- the parser's callbacks (llhttp calls them from feed_data) ----------------------------

    # No on_message_begin: one Python call less per request. A request begins with its target (the
    # method before it is one of a few known words); on_message_complete resets the counters.

    def on_url(self, part: bytes) -> None:
        if self.phase == IDLE:
            self.phase = HEAD
            self.environ = self.base.copy()
            self.url = part
        else:
            self.url += part  # llhttp may hand the target over in pieces, as it arrives
        if len(self.url) > self.server.max_request_line:
            raise HTTPError(414, f"request target longer than {self.server.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The limits are checked once the head is whole (on_headers_complete); until then the server's
        # loop bounds the bytes a head may take, so counting fields is all this hot path does (their
        # bytes are summed from the environ, and only for a head that may be too large).
        self.nheaders += 1
        key = self.keys.get(name)
        if not key:
            if key is None:
                key = self.server._header_key(name)
            if not key:
                return  # a name with an underscore
        text = value.decode("latin-1")
        if text[-1:] in _OWS:
            text = text.rstrip(" \t")  # llhttp drops the leading whitespace, not the trailing
        environ = self.environ  # after the head: a scratch dict, where trailer fields are dropped
        if key in environ:
            if key == "HTTP_HOST":
                raise HTTPError(400, "two Host header fields")
            environ[key] += "," + text
        else:
            environ[key] = text

    def on_headers_complete(self) -> None:
        parser = self.parser
        environ = self.environ
        self.environ = self.trailers  # the trailer fields of a chunked body go here, and are dropped
        server = self.server
        if self.nheaders > server.max_headers or self.head_bytes + self.fed > server.max_header_bytes:
            self.check_limits(environ)  # too many fields, or the bytes fed during the head are too many
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
        self.phase = BODY
        self.began = 0.0

    def check_limits(self, fields: dict) -> None:
        """431 past max_headers fields, or past max_header_bytes of field values and new names in
        `fields` (the environ, or the trailer fields of a chunked body)."""
        server = self.server
        if self.nheaders > server.max_headers:
            raise HTTPError(431, f"{self.nheaders} header fields, more than {server.max_headers}")
        base = self.base
        size = sum(len(key) + len(value) for key, value in fields.items() if key not in base)
        if size > server.max_header_bytes:
            raise HTTPError(431, f"header section of more than {server.max_header_bytes} bytes")

    def on_body(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.body_size > self.server.max_body:
            raise HTTPError(413, f"body of more than {self.server.max_body} bytes")
        self.body.append(data)

    def on_message_complete(self) -> None:
        if self.body or self.chunked_request or self.expect or self.began or self.head_bytes:
            self._end_of_body()  # a body, or a request that came in pieces: more to do
        self.ready.append(self.request)
        self.nheaders = 0
        self.phase = IDLE

    def _end_of_body(self) -> None:
        """on_message_complete for a request with a body or one that did not arrive whole."""
        environ = self.request[0]
        if self.body:  # else wsgi.input is the template's EMPTY_INPUT
            body = b"".join(self.body)
            self.body = []
            environ["wsgi.input"] = BytesIO(body)
        else:
            body = b""
        if self.chunked_request:
            self.check_limits(self.trailers)  # trailer fields count towards the limits too
            self.trailers.clear()
            # The application sees the decoded body as if it had come with a Content-Length.
            environ["CONTENT_LENGTH"] = str(len(body))
            del environ["HTTP_TRANSFER_ENCODING"]
        self.expect = self.chunked_request = False
        self.body_size = self.head_bytes = 0
        self.began = 0.0


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
    if not authority or "@" in authority or not HOST.fullmatch(authority):
        raise HTTPError(400, f"invalid authority in the request target {text[:200]!r}")
    environ["HTTP_HOST"] = authority
    path, _, query = rest.partition("?")
    environ["QUERY_STRING"] = query
    path = path or "/"
    return unquote(path, "latin-1") if "%" in path else path
