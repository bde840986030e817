"""nginx in front: its JSON access log, received over syslog, stored as if the pixel had been requested.

nginx serves the GIF itself (`empty_gif`) and logs each pixel request in the format
`scripts/nginx-mongol.conf` defines (`log_format mongol escape=json`) to
`access_log syslog:server=127.0.0.1:5514,tag=mongol,nohostname mongol;`. Each UDP datagram is
one request, framed as RFC 3164 the way nginx frames it:

    <190>Nov 22 10:00:00 mongol: {"time":"1795860000.123","addr":"203.0.113.7",...}

(`HOSTNAME ` before the tag without `nohostname`). The JSON gives back what the pixel reads from
a WSGI environ: the method, the query string (from `$request_uri`, as the client sent it), the
peer address, Referer, User-Agent and X-Forwarded-For, and the headers mongol.tracking heeds (DNT,
Sec-GPC, and Sec-Purpose, Purpose, X-Purpose, X-Moz for prefetches). The tracker then makes the hit
exactly as mongol-serve does, with nginx's `$msec` as its time. A line without the header keys (the
log_format before they were added) reads as a request without those headers. nginx's JSON escaping writes
bytes of 0x80 and above as they are, so the message is decoded as latin-1: every string comes
out as a WSGI string (bytes as code points), which is what `hit_from_environ` expects.

Which lines become hits: GET requests nginx answered 2xx or 304 (mongol-serve records GET only; a
HEAD is answered but not recorded), except a browser's prefetch, which mongol-serve answers without
recording it either (counted as such). A line mongol-serve would have answered 400 or 414 is counted
and dropped; so is a datagram that is not such a line.
"""

import logging
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from mongol import sitelog
from mongol.hit import Hit, Network, RequestError, hit_from_environ
from mongol.tracking import is_prefetch

log = logging.getLogger("mongol.ingest")

MAX_DATAGRAM = 65535
RECEIVE_BUFFER = 32 * 1024 * 1024  # asked for; Linux grants at most net.core.rmem_max (doubled)
COMPLAIN_EVERY = 60.0  # seconds between two log lines about dropped lines of one kind
FIELDS = ("time", "addr", "method", "uri", "status")  # required; the HEADERS may be empty or absent
HEADERS = (("HTTP_REFERER", "referer"), ("HTTP_USER_AGENT", "ua"), ("HTTP_X_FORWARDED_FOR", "xff"),
           ("HTTP_DNT", "dnt"), ("HTTP_SEC_GPC", "gpc"),  # opted out: no visitor id (mongol.tracking)
           ("HTTP_SEC_PURPOSE", "sec_purpose"), ("HTTP_PURPOSE", "purpose"),  # a prefetch: no hit
           ("HTTP_X_PURPOSE", "x_purpose"), ("HTTP_X_MOZ", "x_moz"))
HOUSEKEEP_EVERY = 1.0  # seconds: how often `run` calls `idle` while datagrams keep coming

# <PRI>Mmm dd hh:mm:ss [HOSTNAME ]TAG: (nginx's tags are letters, digits and _, at most 32)
_SYSLOG_HEADER = re.compile(rb"<\d{1,3}>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d (?:\S+ )?\w{1,32}: ")


class BadLine(ValueError):
    """A datagram that is not one of nginx's lines in Mongol's log format."""


def parse_datagram(data: bytes) -> dict[str, str]:
    """The JSON object a syslog datagram from nginx carries; BadLine if it is not one. A site log line
    (mongol.sitelog) comes back as it is; a pixel line must hold FIELDS."""
    header = _SYSLOG_HEADER.match(data)
    if header is None:
        raise BadLine(f"not a syslog line from nginx: {data[:80]!r}")
    message = data[header.end():].decode("latin-1")
    try:
        entry = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        try:  # a format logged without escape=json (Matomo's documented one): nginx's \xHH escapes
            entry = orjson.loads(sitelog.unescape_nginx(message))
        except orjson.JSONDecodeError:
            raise BadLine(f"the message is not JSON ({exc}): {data[header.end():header.end() + 80]!r}") from None
    if type(entry) is dict and sitelog.site_format(entry):
        return entry
    if type(entry) is not dict or any(type(entry.get(name)) is not str for name in FIELDS):
        raise BadLine(f"the message lacks {', '.join(FIELDS)} as strings: is nginx using "
                      f"scripts/nginx-mongol.conf's log_format? {data[header.end():header.end() + 80]!r}")
    return entry


def time_us(entry: dict[str, str]) -> int:
    """nginx's `$msec` (`1795860000.123`) as integer microseconds since the epoch."""
    seconds, _, fraction = entry["time"].partition(".")
    if not seconds.isdigit() or not (fraction.isdigit() or not fraction) or len(fraction) > 6:
        raise BadLine(f"bad time {entry['time'][:40]!r}: expected nginx's $msec")
    return int(seconds) * 1_000_000 + int(fraction.ljust(6, "0"))


def is_pixel_hit(entry: dict[str, str]) -> bool:
    """A request mongol-serve would record: a GET that was answered (2xx, or 304 Not Modified)."""
    status = entry["status"]
    return entry["method"] == "GET" and (status[:1] == "2" or status == "304")


def environ_from_entry(entry: dict[str, str]) -> dict[str, str]:
    """The part of a WSGI environ that `hit_from_environ` reads, as mongol-serve's server builds it."""
    path, _, query = entry["uri"].partition("?")
    environ = {"REQUEST_METHOD": entry["method"], "PATH_INFO": path, "QUERY_STRING": query,
               "REMOTE_ADDR": entry["addr"]}
    for key, name in HEADERS:
        value = entry.get(name)
        if value and type(value) is str:
            environ[key] = value
    return environ


@dataclass
class _Complaint:
    """A log line about dropped lines, at most once per COMPLAIN_EVERY seconds, with how many were held back."""

    what: str
    next_at: float = 0.0
    held: int = 0

    def __call__(self, detail: str) -> None:
        now = time.monotonic()
        if now < self.next_at:
            self.held += 1
            return
        more = f" ({self.held} more since the last such message)" if self.held else ""
        log.warning("dropped %s%s: %s", self.what, more, detail)
        self.next_at, self.held = now + COMPLAIN_EVERY, 0


@dataclass
class Ingest:
    """Turns each datagram into a hit and hands it to `record` (a journal Recorder); counts everything."""

    record: Callable[[Hit], bool]
    trusted: tuple[Network, ...] = ()
    tracker: Any = None  # mongol.tracking.Tracker: visitor ids and address rules, as mongol-serve's
    received: int = 0   # datagrams
    spooled: int = 0    # hits appended to the spool
    ignored: int = 0    # lines that are no hit for mongol-serve either: HEAD, other methods, errors, opted out
    prefetched: int = 0  # browsers' prefetches: answered by nginx, no page view (mongol-serve skips them too)
    rejected: int = 0   # lines mongol-serve would have answered 400 or 414
    malformed: int = 0  # datagrams that are not nginx lines in Mongol's format
    refused: int = 0    # hits the spool could not take (disk full for long): lost
    _complaints: dict[str, _Complaint] = field(init=False, repr=False, default_factory=lambda: {
        "rejected": _Complaint("a line that mongol-serve would have refused"),
        "malformed": _Complaint("a datagram that is not an nginx line in Mongol's format"),
        "refused": _Complaint("a hit: the spool refuses hits and holds no more in memory"),
    })

    def __call__(self, data: bytes) -> None:
        self.received += 1
        try:
            entry = parse_datagram(data)
            kind = sitelog.site_format(entry)
            params = None
            if kind is not None:  # a request to the site itself: a page view, or nothing
                made = sitelog.page_view(entry, kind, time_us)
                if made is None:
                    self.ignored += 1
                    return
                environ, params, when = made
                entry = {"uri": params["url"], "addr": environ["REMOTE_ADDR"]}  # for the complaints
            elif not is_pixel_hit(entry):
                self.ignored += 1
                return
            else:
                environ, when = environ_from_entry(entry), time_us(entry)
            if self.tracker is None:
                hit = hit_from_environ(environ, self.trusted, when, params=params)
            else:
                hit = self.tracker.make(environ, when, params=params)[0]
                if hit is None:  # opted out, with --dnt skip
                    self.ignored += 1
                    return
            if is_prefetch(environ):  # after the checks: a bad prefetch is refused, as by mongol-serve
                self.prefetched += 1
                return
        except RequestError as exc:
            self.rejected += 1
            self._complaints["rejected"](f"{exc.status}, {exc}: {entry['uri'][:200]!r} from {entry['addr']}")
        except Exception as exc:  # BadLine, a forged line (a \u escape nginx never writes), or worse:
            self.malformed += 1     # one datagram never stops the receiving
            self._complaints["malformed"](str(exc) if isinstance(exc, BadLine) else f"{type(exc).__name__}: {exc}")
        else:
            if self.record(hit):
                self.spooled += 1
            else:
                self.refused += 1
                self._complaints["refused"](f"{hit['site']!r} {hit['url']!r}")

    def summary(self) -> str:
        return (f"{self.received} datagrams received, {self.spooled} hits spooled, {self.rejected} lines "
                f"mongol-serve would have refused, {self.ignored} not pixel hits (HEAD, other methods, errors), "
                f"{self.prefetched} prefetches (no page view), {self.malformed} malformed, "
                f"{self.refused} lost (spool full)")

    def housekeep(self) -> None:
        """What mongol-serve does every second, for `run` to call (idle or not): start a new spool
        segment if the current one is old, hand held hits to the spool once it takes them (when
        `record` is a journal Recorder), and delete old salts (Tracker.housekeep, once a minute)."""
        retry = getattr(self.record, "retry", None)
        if retry is not None:
            retry()
        if self.tracker is not None:
            self.tracker.housekeep()


def open_udp(host: str, port: int, poll: float = 0.5) -> socket.socket:
    """A UDP socket bound to host:port with a large receive buffer; `recv` on it raises
    BlockingIOError after `poll` seconds without a datagram (SO_RCVTIMEO, so the loop can look at
    its flags without a poll() call per datagram). OSError if it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(poll), int(poll % 1 * 1e6)))
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def receive_buffer(sock: socket.socket) -> int:
    """The receive buffer the kernel granted, in bytes of payload it can hold (it reports double)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2


def run(sock: socket.socket, handle: Callable[[bytes], None], keep_going: Callable[[], bool],
        idle: Callable[[], None] = lambda: None, every: float = HOUSEKEEP_EVERY) -> None:
    """Hand every datagram to `handle` until `keep_going()` is false (it is asked between
    datagrams and at least every `poll` seconds), then hand over those already queued. `idle` is
    called when nothing came for `poll` seconds, and at least every `every` seconds while datagrams
    keep coming."""
    recv = sock.recv
    monotonic = time.monotonic
    due = monotonic() + every
    while keep_going():
        try:
            data = recv(MAX_DATAGRAM)
        except BlockingIOError:  # SO_RCVTIMEO: nothing came for a while
            idle()
            due = monotonic() + every
            continue
        if data:
            handle(data)
        if monotonic() >= due:  # busy: never a timeout, so never idle
            idle()
            due = monotonic() + every
    sock.setblocking(False)
    while True:
        try:
            data = recv(MAX_DATAGRAM)
        except BlockingIOError:
            return
        if data:
            handle(data)
