"""Send hits to mongol-serve from Python: a Django or Flask view, an API endpoint, a job sending mail.

    from mongol.client import Client

    mongol = Client("https://stats.example.com", site="example.com")

    def view(request):                       # Django (request.META) or Flask (request.environ)
        mongol.track(request.META, title="Home")
        ...
    mongol.hit("/newsletter/sent", kind="event", campaign="november")   # no request at all

`hit` and `track` only put the hit in a bounded queue and return: True if it was queued, False if
it was not (queue full, nothing to send); they never raise and never wait for the network. One
background thread sends what is queued to `POST /batch` (up to 20 hits, 16 KiB, per request), or
`/collect` for one hit, and retries a failed request (no connection, timeout, 5xx, 429) with
exponential backoff (at most `max_backoff` apart) for as long as it takes: hits are dropped (and
counted) only when the queue is full, or after `retries` attempts if that is set. Each hit carries
`qt`, how long it waited, so its time is when it happened, not when it was sent; and `hid`/`ht`, an
id and a time of its own, which a mongol-serve that lists this server as `--trusted-sender` stores
as the hit's id and time, so that a hit sent again after a timeout (the server had it, the answer
was late) is stored once.

The visitor's address and User-Agent travel as `uip` and `ua`: mongol-serve believes them only
from a `--trusted-sender` (else the hit counts the sending server itself). A request carrying
`DNT: 1` or `Sec-GPC: 1` is sent with `dnt=1`, so that mongol-serve applies its `--dnt` rule.
"""

import atexit
import contextlib
import json
import logging
import os
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from mongol import __version__

log = logging.getLogger("mongol.client")

MAX_BATCH_HITS = 20
MAX_BATCH_BYTES = 16 * 1024
MAX_HIT_BYTES = 7900  # 8000 on the server, with room for qt
USER_AGENT = f"mongol.client/{__version__}"
_STOP = object()


def _pair(name: str, value: object) -> str:
    return quote(str(name), safe="") + "=" + quote(str(value), safe="")


def _invalid(answer: str) -> int:
    """How many hits a /batch answer says were refused."""
    try:
        return int(json.loads(answer).get("invalid", 0))
    except (ValueError, TypeError, AttributeError):
        return 0


def encode(fields: Mapping[str, Any]) -> str:
    """One hit, form-encoded; None values are left out, a list or tuple gives the name once per item."""
    parts = []
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            parts.extend(_pair(name, item) for item in value)
        elif isinstance(value, bool):
            parts.append(_pair(name, int(value)))
        else:
            parts.append(_pair(name, value))
    return "&".join(parts)


class Client:
    """Sends hits to the mongol-serve at `endpoint` (``https://stats.example.com``) from a thread."""

    def __init__(self, endpoint: str, *, site: str | None = None, max_queue: int = 10_000, timeout: float = 5.0,
                 retries: int | None = None, backoff: float = 0.5, max_backoff: float = 60.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.site = site
        self.max_queue = max_queue
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        # what happened so far, for logs and tests
        self.sent = 0        # hits mongol-serve took
        self.failures = 0    # requests that failed (each retried, until `retries`)
        self.dropped = 0     # hits given up: queue full, refused by the server, or out of retries
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._unfinished = 0
        self._pid = -1
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        atexit.register(self.close, 2.0)

    # The caller's side: never raises, never blocks ------------------------------------------

    def hit(self, url: str | None = None, *, site: str | None = None, title: str | None = None,
            referrer: str | None = None, ua: str | None = None, ip: str | None = None,
            client_id: str | None = None, user_id: str | None = None, kind: str | None = None,
            dnt: bool = False, **fields: Any) -> bool:
        """Queue one hit: the page `url` (path and query) of `site` (default: the client's), its
        `title` and `referrer`, the visitor's User-Agent `ua` and address `ip`, a `client_id` or
        `user_id` that says who the visitor is (hashed with the day's salt by mongol-serve), `kind`
        (Measurement Protocol `t`: "pageview" by default; "event" and others count no pageview),
        `dnt` (the visitor asked not to be tracked), and any other fields. True if queued."""
        try:
            site = site or self.site
            if not site or not url:
                log.warning("mongol.client: a hit needs a site and a url; not sent (site=%r, url=%r)", site, url)
                return self._drop(1)
            now = time.time()
            line = encode({"site": site, "url": url, "title": title, "referrer": referrer, "ua": ua, "uip": ip,
                           "cid": client_id, "uid": user_id, "t": kind, "dnt": 1 if dnt else None,
                           "hid": f"{int(now) & 0xFFFFFFFF:08x}{os.urandom(8).hex()}", "ht": int(now * 1000),
                           **fields})
            if len(line) > MAX_HIT_BYTES:
                log.warning("mongol.client: a hit of %d bytes is over %d; not sent", len(line), MAX_HIT_BYTES)
                return self._drop(1)
            return self._put((time.monotonic(), line))
        except Exception:  # a bug here must never reach the application
            log.exception("mongol.client: could not queue a hit")
            return False

    def track(self, environ: Mapping[str, Any], *, title: str | None = None, site: str | None = None,
              **fields: Any) -> bool:
        """Queue a pageview of the request a WSGI environ describes (Django's ``request.META``,
        Flask's ``request.environ``): its path and query, Referer, User-Agent, address (the
        environ's REMOTE_ADDR: put your framework's proxy handling before it) and DNT/GPC."""
        try:
            query = environ.get("QUERY_STRING") or ""
            url = (environ.get("PATH_INFO") or "/") + ("?" + query if query else "")
            host = (environ.get("HTTP_HOST") or "").partition(":")[0].lower()
            if host.startswith("www."):
                host = host[4:]
            dnt = environ.get("HTTP_DNT") == "1" or environ.get("HTTP_SEC_GPC") == "1"
            return self.hit(url, site=site or self.site or host or None, title=title,
                            referrer=environ.get("HTTP_REFERER") or None, ua=environ.get("HTTP_USER_AGENT") or "",
                            ip=environ.get("REMOTE_ADDR") or None, dnt=dnt, **fields)
        except Exception:
            log.exception("mongol.client: could not queue a hit")
            return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued hit is sent or given up; False if `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._unfinished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (no more backoff), for at most `timeout` seconds, then stop the thread."""
        self._closing.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            self._queue.put(_STOP)
            thread.join(timeout)

    def _put(self, item: tuple[float, str]) -> bool:
        with self._lock:
            if self._closing.is_set():
                self.dropped += 1
                return False
            if self._pid != os.getpid():  # first use, or a forked child: the thread did not come along
                self._pid = os.getpid()
                self._queue = queue.Queue()
                self._unfinished = 0
                self._thread = threading.Thread(target=self._run, name="mongol.client", daemon=True)
                self._thread.start()
            if self._unfinished >= self.max_queue:
                self.dropped += 1
                return False
            self._unfinished += 1
        self._queue.put(item)
        return True

    def _drop(self, n: int) -> bool:
        with self._lock:
            self.dropped += n
        return False

    def _done(self, n: int, sent: bool) -> None:
        with self._idle:
            self._unfinished -= n
            if sent:
                self.sent += n
            else:
                self.dropped += n
            self._idle.notify_all()

    # The thread's side ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            size = len(item[1])
            stop = False
            while len(batch) < MAX_BATCH_HITS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                if size + len(item[1]) + 16 > MAX_BATCH_BYTES:
                    self._queue.put(item)  # it starts the next batch (order among hits does not matter)
                    break
                batch.append(item)
                size += len(item[1]) + 16
            try:
                self._send(batch)
            except Exception:
                log.exception("mongol.client: dropping %d hits", len(batch))
                self._done(len(batch), False)
            if stop:
                return

    def _send(self, batch: list[tuple[float, str]]) -> None:
        """Deliver a batch, with retries; a batch the server refuses is tried hit by hit."""
        delay = self.backoff
        attempts = max(self.retries, 1) if self.retries is not None else None
        attempt = 0
        while True:
            attempt += 1
            now = time.monotonic()
            lines = [f"{line}&qt={int((now - queued) * 1000)}" for queued, line in batch]
            path, body = ("/collect", lines[0]) if len(lines) == 1 else ("/batch", "\n".join(lines))
            status, detail = self._post(path, body.encode())
            if status == 200 and detail.startswith("{"):  # a batch with bad lines: the others were stored
                invalid = _invalid(detail)
                if invalid:
                    log.warning("mongol.client: mongol-serve refused %d of %d hits: %s", invalid, len(batch), detail)
                self._done(len(batch) - invalid, True)
                self._done(invalid, False)
                return
            if 200 <= status < 300:
                self._done(len(batch), True)
                return
            if status in (400, 413) and len(batch) > 1:  # one bad hit: send the others alone
                for item in batch:
                    self._send([item])
                return
            if 400 <= status < 500 and status not in (408, 429):
                log.warning("mongol.client: mongol-serve refused %d hits: %s %s", len(batch), status, detail)
                self._done(len(batch), False)
                return
            with self._lock:
                self.failures += 1
            if attempt == attempts or self._closing.is_set():
                break
            log.info("mongol.client: sending %d hits failed (%s), retrying in %.1f s", len(batch), detail, delay)
            self._closing.wait(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.max_backoff)
        log.warning("mongol.client: dropping %d hits after %d failed attempts: %s", len(batch), attempt, detail)
        self._done(len(batch), False)

    def _post(self, path: str, body: bytes) -> tuple[int, str]:
        """(HTTP status, a few words); status 0 when there was no answer."""
        request = urllib.request.Request(self.endpoint + path, data=body, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = response.read(65536)
                if response.headers.get_content_type() == "application/json":
                    return response.status, answer.decode("utf-8", "replace")
                return response.status, str(response.status)
        except urllib.error.HTTPError as exc:
            detail = ""
            with contextlib.suppress(OSError):
                detail = exc.read(200).decode("utf-8", "replace").strip()
            return exc.code, f"{exc.code} {detail}".strip()
        except (OSError, ValueError) as exc:  # no connection, timeout, bad URL
            return 0, str(getattr(exc, "reason", exc))
