"""The GIF endpoint: a plain WSGI application that answers every tracking request with a pixel.

`PixelApp(record)` is what mongol-serve's processes run; `record(hit)` appends the hit to the
spool (mongol.journal.Recorder) before the answer goes out. `application` builds one on first
use from the environment, for any other WSGI server (gunicorn, mod_wsgi, uWSGI): it writes to the
spool `MONGOL_SPOOL` (else the default beside the store), which `mongol-serve --workers 0`
drains into the store.
"""

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mongol import assets, collect
from mongol.hit import Hit, Network, RequestError, client_ip, hit_from_environ, in_networks, parse_networks
from mongol.tracking import Tracker, is_prefetch

#: A transparent 1x1 GIF89a in 43 bytes. (nginx's empty_gif is 43 bytes too, but marks colour 1 transparent
#: while its pixel uses colour 0: decoders that follow the format show it black.)
GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")

# Never stored, so every view asks again. An Expires date in the past is for HTTP/1.0 caches, which know no
# Cache-Control ("0" is no HTTP date; Pragma has no meaning in a response: REDbot says so of both).
NO_CACHE = [
    ("Cache-Control", "no-store"),
    ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
]
GIF_HEADERS = [("Content-Type", "image/gif"), ("Content-Length", str(len(GIF))), *NO_CACHE]
STALE_STATUS = 10.0  # seconds without news from the writer before /healthz calls it degraded
#: Who may read /healthz and /metrics by default (--status-allow): this machine only.
LOOPBACK = ("127.0.0.0/8", "::1")
STATUS_PATHS = frozenset(["/healthz", "/metrics"])
SPECIAL_PATHS = STATUS_PATHS | assets.PATHS | collect.PATHS  # answered otherwise than with the pixel

StartResponse = Callable[..., Any]
Response = tuple[str, list[tuple[str, str]], bytes]


def _text(status: str, body: bytes, extra: list[tuple[str, str]] | None = None) -> Response:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *NO_CACHE]
    return status, headers + (extra or []), body


class Health:
    """What /healthz says: from the writer's status file (read at every call, so that every worker
    says the same) and the state of this process's spool."""

    def __init__(self, spool: Path, recorder: Any = None) -> None:
        self.spool = Path(spool)
        self.recorder = recorder

    def __call__(self) -> Response:
        from mongol.writer import read_status

        now = time.time()
        status = read_status(self.spool)
        problems = []
        recorder = self.recorder
        if recorder is not None and recorder.failing:
            held = f", {len(recorder.pending)} held in memory" if recorder.max_pending else ", answering 503"
            problems.append(f"the spool refuses hits{held}")
        if status.get("state") == "store failing":
            problems.append(f"the store has failed for {now - status.get('since', now):.0f} s: {status.get('error')}")
        elif not status or now - status.get("updated", 0) > STALE_STATUS:
            problems.append("the writer process is not reporting")
        word = "degraded" if problems else "ok"
        body = (f"{word}: {status.get('spooled_bytes', 0)} bytes spooled, {status.get('stored', 0)} stored"
                + "".join(f"; {p}" for p in problems) + "\n")
        full = recorder is not None and recorder.failing and len(recorder.pending) >= recorder.max_pending
        return _text("503 Service Unavailable" if full else "200 OK", body.encode())


class PixelApp:
    """GET or HEAD on any path: the pixel. A GET records a hit; HEAD only answers as GET would.
    With a `tracker` (mongol.tracking: visitor ids, address rules), a prefetch is answered but not
    recorded, and `POST /collect` (one hit) and `POST /batch` (one hit per line) take hits from
    servers, answering 204. /healthz says how things stand; /metrics gives Prometheus metrics when
    `metrics` is set."""

    def __init__(self, record: Callable[[Hit], bool], health: Callable[[], Response] | None = None,
                 trusted_proxies: tuple[Network, ...] = (), metrics: Any = None,
                 tracker: Tracker | None = None, status_allow: tuple[Network, ...] | None = None,
                 spool: Path | None = None) -> None:
        self.record = record
        self.health = health or (lambda: _text("200 OK", b"ok\n"))
        self.trusted = trusted_proxies
        self.metrics = metrics
        self.tracker = tracker
        self.server_hits = None if tracker is None else collect.ServerHits(
            lambda environ, params: tracker.make(environ, params=params, server=True)[0], record, self._reject,
            self._refuse)
        # /healthz and /metrics: for these addresses only (the client's, after trusted proxies)
        self.status_allow = parse_networks(list(LOOPBACK)) if status_allow is None else status_allow
        self.spool = spool  # where the writer's status file is, for mongol_store_up
        # Counted in plain ints on the request path, handed to the metrics by publish_metrics().
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self._published: dict[str, int] = {}

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO")
        if method == "GET" and path not in SPECIAL_PATHS:  # the pixel: what nearly every request is
            return self._pixel(environ, start_response, method)
        if path in STATUS_PATHS and not in_networks(client_ip(environ, self.trusted), self.status_allow):
            status, headers, body = _text("403 Forbidden", b"not for this address (see --status-allow)\n")
        elif path == "/healthz":
            status, headers, body = self.health()
        elif path == "/metrics" and self.metrics is not None:
            self.publish_metrics()
            status, headers, body = "200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                                               *NO_CACHE], self.metrics.render()
        elif path in assets.PATHS and (method == "GET" or method == "HEAD"):
            status, headers, body = assets.answer(path, environ)  # /mongol.js, robots.txt, favicon.ico: no hit
        elif self.server_hits is not None and path in collect.PATHS and (method == "POST" or path == collect.DEBUG):
            status, headers, body = self.server_hits(environ, path)
        elif method != "GET" and method != "HEAD":
            self._reject("method")
            allow = "GET, HEAD, POST" if path in collect.PATHS and self.tracker is not None else "GET, HEAD"
            status, headers, body = _text("405 Method Not Allowed", b"only GET and HEAD\n", [("Allow", allow)])
        else:
            return self._pixel(environ, start_response, method)
        start_response(status, headers)
        return [body] if method != "HEAD" else []

    def _pixel(self, environ: dict, start_response: StartResponse, method: str) -> list[bytes]:
        """GET or HEAD of the pixel."""
        try:
            if self.tracker is None:
                hit, cookie = hit_from_environ(environ, self.trusted), None
            else:
                hit, cookie = self.tracker.make(environ)
        except RequestError as exc:
            self._reject(exc.reason)
            status, headers, body = _text(exc.status, exc.body)
        except OSError as exc:  # the day's visitor salt cannot be saved: the spool's disk refuses
            status, headers, body = self._refuse(exc)
        else:
            if method == "HEAD":
                start_response("200 OK", GIF_HEADERS)
                return []
            if hit is None or (self.tracker is not None and is_prefetch(environ)):
                self._reject("opted out" if hit is None else "prefetch")
                start_response("200 OK", GIF_HEADERS)
                return [GIF]
            if self.record(hit):
                self.accepted += 1
                start_response("200 OK", GIF_HEADERS if cookie is None else [*GIF_HEADERS, ("Set-Cookie", cookie)])
                return [GIF]
            status, headers, body = self._refuse()
        start_response(status, headers)
        return [body] if method != "HEAD" else []

    def _refuse(self, exc: OSError | None = None) -> Response:
        """503: the hit was not taken (the spool's disk refuses it); the sender may try again."""
        refuse = getattr(self.record, "refuse", None)
        if exc is not None and refuse is not None:
            refuse(exc)
        self._reject("busy")
        return _text("503 Service Unavailable", b"cannot take hits now, try again later\n", [("Retry-After", "1")])

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def publish_metrics(self) -> None:
        """Hand the counts gathered since the last call to the metrics (about once a second)."""
        if self.tracker is not None:
            self.tracker.housekeep()
        metrics = self.metrics
        if metrics is None:
            return
        accepted = self.accepted + (self.server_hits.accepted if self.server_hits is not None else 0)
        withdrawn = getattr(self.record, "withdrawn", 0)  # taken, then refused by the disk before the answer
        counts = {"accepted": accepted - withdrawn, **{f"rejected:{k}": v for k, v in self.rejected.items()}}
        if withdrawn:
            counts["rejected:busy"] = counts.get("rejected:busy", 0) + withdrawn
        if self.spool is not None:
            # Only the writer talks to the store: every serving process says what its status file says.
            from mongol.writer import read_status

            status = read_status(self.spool)
            fresh = time.time() - status.get("updated", 0) <= STALE_STATUS
            metrics.store_up.set(1 if status.get("state") == "ok" and fresh else 0)
        recorder = self.record
        if hasattr(recorder, "spooled"):
            counts["spooled"] = recorder.spooled
            metrics.queue_depth.set(len(recorder.pending))
        for name, total in counts.items():
            delta = total - self._published.get(name, 0)
            if delta:
                if name.startswith("rejected:"):
                    metrics.rejected.labels(name.partition(":")[2]).inc(delta)
                else:
                    getattr(metrics, name).inc(delta)
                self._published[name] = total


class _LazyApplication:
    """`mongol.app:application`: a PixelApp configured from the environment when first called."""

    def __init__(self) -> None:
        self._app: PixelApp | None = None

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if self._app is None:
            from mongol.journal import Journal, Recorder
            from mongol.location import checked_db_uri, default_spool
            from mongol.tracking import Salts, Tracking

            spool = Path(os.environ.get("MONGOL_SPOOL") or default_spool(checked_db_uri(None)))
            recorder = Recorder(Journal(spool))
            proxies = [p for p in os.environ.get("MONGOL_TRUSTED_PROXIES", "").split(",") if p.strip()]
            trusted = parse_networks(proxies)
            tracker = Tracker(Tracking(), Salts(spool), trusted)
            self._app = PixelApp(recorder, Health(spool, recorder), trusted, tracker=tracker)
        return self._app(environ, start_response)


application = _LazyApplication()
