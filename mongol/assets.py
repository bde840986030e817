"""What the pixel's host answers besides the pixel: the tracking script, a robots file, and no favicon.

None of them is a page view: browsers ask for `/favicon.ico` by themselves and crawlers for
`/robots.txt`, and both used to be stored as hits of whatever page sent the Referer.
"""

import gzip
import hashlib
import socket
from importlib.resources import files

PIXEL_PATH = "/pixel.gif"
SCRIPT_PATH = "/mongol.js"
#: mongol/static/mongol.js, read once per process: it is part of the installed package
SCRIPT = files("mongol").joinpath("static/mongol.js").read_bytes()
SCRIPT_GZIP = gzip.compress(SCRIPT, 9, mtime=0)  # what browsers get: less than half the bytes
ROBOTS = b"User-agent: *\nDisallow: /\n"
SCRIPT_CACHE = "public, max-age=3600"  # an hour: a new version reaches every visitor within it
ROBOTS_CACHE = "public, max-age=86400"

Response = tuple[str, list[tuple[str, str]], bytes]


def _etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'


def accepts_gzip(header: str) -> bool:
    """True when an Accept-Encoding header takes gzip (named, and not with q=0)."""
    for part in header.split(","):
        name, _, params = part.partition(";")
        if name.strip().lower() == "gzip":
            q = params.replace(" ", "").lower()
            return not (q.startswith("q=0") and q[3:].strip(".0") == "")
    return False


def _file(environ: dict, content_type: str, body: bytes, cache: str, etag: str,
          extra: tuple[tuple[str, str], ...] = ()) -> Response:
    headers = [("Cache-Control", cache), ("ETag", etag), ("X-Content-Type-Options", "nosniff"), *extra]
    if etag in environ.get("HTTP_IF_NONE_MATCH", ""):
        return "304 Not Modified", headers, b""
    return "200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers], body


_SCRIPT_ETAG = _etag(SCRIPT)
_SCRIPT_GZIP_ETAG = _etag(SCRIPT_GZIP)  # another representation, another tag
_ROBOTS_ETAG = _etag(ROBOTS)
_NOT_FOUND = b"not found: this host serves a tracking pixel, /mongol.js and /robots.txt\n"


def answer(path: str, environ: dict) -> Response:
    """The answer to a GET or HEAD of one of PATHS."""
    if path == SCRIPT_PATH:
        if accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
            return _file(environ, "text/javascript; charset=utf-8", SCRIPT_GZIP, SCRIPT_CACHE, _SCRIPT_GZIP_ETAG,
                         (("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")))
        return _file(environ, "text/javascript; charset=utf-8", SCRIPT, SCRIPT_CACHE, _SCRIPT_ETAG,
                     (("Vary", "Accept-Encoding"),))
    if path == "/robots.txt":
        return _file(environ, "text/plain; charset=utf-8", ROBOTS, ROBOTS_CACHE, _ROBOTS_ETAG)
    return "404 Not Found", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(_NOT_FOUND))),
                             ("Cache-Control", ROBOTS_CACHE)], _NOT_FOUND


PATHS = frozenset((SCRIPT_PATH, "/robots.txt", "/favicon.ico"))


def served_urls(host: str, port: int) -> str:
    """The pixel's and the script's addresses, for the start-up log (a wildcard address as the host name)."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    base = f"http://{host}:{port}"
    return f"pixel {base}{PIXEL_PATH}, script {base}{SCRIPT_PATH} (README: Tracking)"
