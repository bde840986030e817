"""The GIF endpoint: a plain WSGI application that answers every tracking request with a pixel.

`PixelApp(writer)` is what mongol-serve runs. `application` builds one on first use from the
environment (`MONGOL_DB`, `MONGOL_TRUSTED_PROXIES`) for other gevent-based WSGI servers, e.g.
`gunicorn -k gevent mongol.app:application`: the writer is a greenlet, so the server must run gevent.
"""

import os
from collections.abc import Callable, Iterable
from typing import Any

from mongol.hit import Network, RequestError, hit_from_environ, parse_networks
from mongol.writer import Writer

#: A transparent 1x1 GIF89a, the same 43 bytes as nginx's empty_gif.
GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")

NO_CACHE = [
    ("Cache-Control", "no-cache, no-store, must-revalidate, private"),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
]
GIF_HEADERS = [("Content-Type", "image/gif"), ("Content-Length", str(len(GIF))), *NO_CACHE]

StartResponse = Callable[..., Any]


def _text(status: str, body: bytes, extra: list[tuple[str, str]] | None = None) -> tuple[str, list, bytes]:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *NO_CACHE]
    return status, headers + (extra or []), body


class PixelApp:
    """GET or HEAD on any path: the pixel. A GET records a hit; HEAD only answers as GET would."""

    def __init__(self, writer: Writer, trusted_proxies: tuple[Network, ...] = ()) -> None:
        self.writer = writer
        self.trusted = trusted_proxies

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if environ.get("PATH_INFO") == "/healthz":
            status, headers, body = self.health()
        elif method != "GET" and method != "HEAD":
            status, headers, body = _text("405 Method Not Allowed", b"only GET and HEAD\n", [("Allow", "GET, HEAD")])
        else:
            try:
                hit = hit_from_environ(environ, self.trusted)
            except RequestError as exc:
                status, headers, body = _text(exc.status, exc.body)
            else:
                if method == "HEAD" or self.writer.submit(hit):
                    start_response("200 OK", GIF_HEADERS)
                    return [GIF] if method == "GET" else []
                status, headers, body = _text("503 Service Unavailable", b"queue full, try again later\n",
                                              [("Retry-After", "1")])
        start_response(status, headers)
        return [body] if method != "HEAD" else []

    def health(self) -> tuple[str, list, bytes]:
        writer = self.writer
        full = writer.depth >= writer.max_queue
        state = "full" if full else ("store failing" if writer.failing else "ok")
        body = f"{state}: {writer.depth} hits queued, {writer.stored} stored\n".encode()
        return _text("503 Service Unavailable" if full else "200 OK", body)


class _LazyApplication:
    """`mongol.app:application`: a PixelApp configured from the environment when first called."""

    def __init__(self) -> None:
        self._app: PixelApp | None = None

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if self._app is None:
            from mongol.location import resolve_db_uri
            from mongol.stores import open_store

            writer = Writer(open_store(resolve_db_uri(None)))
            writer.start()
            proxies = [p for p in os.environ.get("MONGOL_TRUSTED_PROXIES", "").split(",") if p.strip()]
            self._app = PixelApp(writer, parse_networks(proxies))
        return self._app(environ, start_response)


application = _LazyApplication()
