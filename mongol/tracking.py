"""Who a hit comes from, without personal data: visitor ids, IP anonymisation, opt-outs, server senders.

What a serving process does to each request beyond hit.py's parsing; all of it cheap (header reads,
one keyed hash, string work on the address). The expensive part, reading the User-Agent and the
address's country, happens later in the writer process (mongol.enrich).

- Visitor id (`_visitor`): by default a keyed BLAKE2b hash of the site, the full client address and
  the User-Agent, keyed with a random salt of the hit's UTC day. Salts are files in the spool folder
  (`visitor-salt-YYYY-MM-DD`, mode 0600), created atomically by whichever process needs one first, so
  every process, and a restarted one, computes the same id all day; a salt is deleted once its day is
  over by a day (at most 48 hours after it was made), so yesterday's ids cannot be recomputed for long
  and no id follows a visitor from one day to the next. With `cookie`, the id is instead a random
  value kept in a first-party cookie of the pixel's host (see COOKIE_ATTRIBUTES). A Measurement
  Protocol hit's `uid` or `cid` replaces address and User-Agent in the hash. Each process remembers
  the ids of the day's last VISITOR_CACHE visitors, in memory only, forgotten with the day's salt: a
  visitor's next views (most views are not a visit's first) cost a lookup instead of a hash.
- `DNT: 1` or `Sec-GPC: 1` (or `dnt=1` in a Measurement Protocol hit): no visitor id, no cookie, the
  address anonymised even with `full_ip`; with `dnt="skip"` the hit is not stored at all.
- `_ip` keeps the address with its last IPv4 octet or last 80 IPv6 bits zeroed, unless `full_ip`.
  With a GeoIP database and without `full_ip`, the full address goes to the writer as `_geo_ip`, which
  the writer removes before storing: only the spool (mode 0640, deleted once stored) holds it, briefly.
- A Measurement Protocol hit's `ua` and `uip` name the visitor instead of the request's own
  User-Agent and address only when the request comes from a `senders` address (a server of the
  operator's); from anyone else they are dropped, since anyone could otherwise forge addresses.
"""

import contextlib
import hashlib
import ipaddress
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mongol import measurement
from mongol.hit import Hit, Network, hit_from_environ, in_networks, is_ip, page_fields, parse_query, stamp

DAY_US = 86_400 * 1_000_000
SALT_BYTES = 32
SALT_PREFIX = "visitor-salt-"
PURGE_EVERY = 60.0  # seconds between two looks for salts to delete
VISITOR_CACHE = 10_000  # visitor ids remembered by each process (at most some 3 MB), for the day

COOKIE_NAME = "mongol_id"
COOKIE_MAX_AGE = 395 * 86_400  # 13 months, the longest the CNIL accepts for audience measurement
# The pixel is an image of another site: browsers send its cookie with the request only when it is
# SameSite=None, which they accept only with Secure (so over HTTPS, or on localhost). Partitioned
# (CHIPS) keys the cookie to the embedding site: browsers that block third-party cookies still keep
# a partitioned one, and a visitor gets one id per site, which is all a per-site count needs. HttpOnly:
# no script has any use for it.
COOKIE_ATTRIBUTES = f"Max-Age={COOKIE_MAX_AGE}; Path=/; Secure; HttpOnly; SameSite=None; Partitioned"
_COOKIE_VALUE = re.compile(r"[0-9a-f]{32}\Z")

_V6_KEEP = ((1 << 48) - 1) << 80  # the first 48 bits of an IPv6 address
_PREFETCH = ("prefetch", "preview")


@dataclass(frozen=True)
class Tracking:
    """The privacy, bot and enrichment settings of mongol-serve (README's table of defaults)."""

    cookie: bool = False           # --cookie: visitor id in a first-party cookie instead of the daily hash
    full_ip: bool = False          # --full-ip: keep the whole client address
    dnt: str = "anonymous"         # --dnt: "anonymous" (no visitor id) or "skip" (no hit) for DNT/GPC
    senders: tuple[Network, ...] = ()  # --trusted-sender: whose `ua`/`uip` parameters are believed
    drop_bots: bool = False        # --drop-bots: bots are not stored (else marked `_bot`)
    parse_agents: bool = True      # --no-ua-parse turns off bots, browser, OS and device
    geoip: Path | None = None      # --geoip: a MaxMind database for `_country` and `_city`

    @property
    def enriches(self) -> bool:
        """True when the writer has work to do on each hit."""
        return self.parse_agents or self.geoip is not None


def anonymise_ip(ip: str) -> str:
    """The address with its last IPv4 octet, or its last 80 IPv6 bits, zeroed (IPv4-mapped IPv6 as IPv4).
    Anything that is not an address comes back as it is."""
    if ":" not in ip:
        head, dot, _ = ip.rpartition(".")
        return head + ".0" if dot else ip
    try:
        address = ipaddress.IPv6Address(ip)
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return "::ffff:" + anonymise_ip(str(address.ipv4_mapped))
    return str(ipaddress.IPv6Address(int(address) & _V6_KEEP))


def day_name(day: int) -> str:
    """A UTC day number (days since the epoch) as YYYY-MM-DD."""
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")


class Salts:
    """The daily salts, shared by every process through files in `folder` (see the module's docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._salts: dict[int, bytes] = {}
        self.purge()

    def get(self, day: int) -> bytes | None:
        """The salt of a UTC day number; None for a day whose salt is gone (before yesterday)."""
        salt = self._salts.get(day)
        if salt is not None:
            return salt
        today = int(time.time() // 86_400)
        if not today - 1 <= day <= today + 1:
            return None
        salt = self._load_or_create(day)
        self._salts[day] = salt
        self.purge(today)
        return salt

    def _load_or_create(self, day: int) -> bytes:
        path = self.folder / f"{SALT_PREFIX}{day_name(day)}"
        try:
            salt = path.read_bytes()
            if len(salt) == SALT_BYTES:
                return salt
            path.unlink(missing_ok=True)  # torn by a crash before it was complete: make another
        except FileNotFoundError:
            pass
        # Written whole under a name of its own, then linked: a process sees the complete salt or none,
        # and when two processes make one at the same moment, the first link wins for both.
        tmp = self.folder / f".{path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(SALT_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_bytes()

    def purge(self, today: int | None = None) -> None:
        """Forget and delete every salt older than yesterday (UTC)."""
        if today is None:
            today = int(time.time() // 86_400)
        keep = {f"{SALT_PREFIX}{day_name(day)}" for day in (today - 1, today, today + 1)}
        for day in [d for d in self._salts if d < today - 1]:
            del self._salts[day]
        for path in self.folder.glob(f"{SALT_PREFIX}*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)
        for path in self.folder.glob(f".{SALT_PREFIX}*.tmp"):  # left by a crash
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime > 60:
                    path.unlink(missing_ok=True)




def _cookie(header: str) -> str | None:
    """The visitor id in a Cookie header, if it holds a well-formed one."""
    start = header.find(COOKIE_NAME + "=")
    while start > 0 and header[start - 1] not in " ;":  # a longer name ending in ours
        start = header.find(COOKIE_NAME + "=", start + 1)
    if start < 0:
        return None
    start += len(COOKIE_NAME) + 1
    value = header[start:start + 32]
    return value if _COOKIE_VALUE.match(value) else None


def is_prefetch(environ: dict) -> bool:
    """A browser fetching ahead of a navigation (`Sec-Purpose: prefetch`, `Purpose: prefetch`, the older
    `X-Purpose`/`X-Moz`), not a page being viewed."""
    if not ("HTTP_SEC_PURPOSE" in environ or "HTTP_PURPOSE" in environ or "HTTP_X_PURPOSE" in environ
            or "HTTP_X_MOZ" in environ):
        return False  # nearly every request: four lookups, no loop
    for key in ("HTTP_SEC_PURPOSE", "HTTP_PURPOSE", "HTTP_X_PURPOSE", "HTTP_X_MOZ"):
        value = environ.get(key)
        if value and value.lstrip().lower().startswith(_PREFETCH):
            return True
    return False


class Tracker:
    """Makes the hit a request records, with the visitor id and address rules of `options`."""

    def __init__(self, options: Tracking, salts: Salts, trusted: tuple[Network, ...] = ()) -> None:
        self.options = options
        self.salts = salts
        self.trusted = trusted
        self._purge_at = time.monotonic() + PURGE_EVERY
        self._day = -1  # the UTC day of _hasher, BLAKE2b keyed with that day's salt (None: no salt)
        self._hasher: Any = None
        self._visitors: dict[str, str] = {}  # the day's hashed text -> visitor id

    def make(self, environ: dict, now_us: int | None = None, params: dict | None = None,
             server: bool = False) -> tuple[Hit | None, str | None]:
        """The hit (None when it is not to be stored) and the Set-Cookie value to send, if any.
        `params`: the parameters when they come from a body (POST); `server`: a POST from a server,
        read as a Measurement Protocol hit and never given a cookie. Raises RequestError as
        hit_from_environ does."""
        if params is None:
            query = environ.get("QUERY_STRING", "")
            if not server:
                page = page_fields(query, environ.get("HTTP_REFERER", ""))  # None: a Measurement Protocol hit
                if page is not None:
                    return self._page_hit(stamp(page, environ, self.trusted, now_us), environ)
            params = parse_query(query)
        identity = measurement.take_names(params) if server or params.get("v") == "1" else None
        if identity and "qt" in identity:
            now_us = (time.time_ns() // 1000 if now_us is None else now_us) - measurement.queue_time_us(identity)
        hit = hit_from_environ(environ, self.trusted, now_us, params=params,
                               url_optional=identity is not None and not measurement.is_view(params))
        if identity is not None and not measurement.is_view(hit):
            hit["pageviews"] = 0
        options = self.options
        opted_out = (environ.get("HTTP_DNT") == "1" or environ.get("HTTP_SEC_GPC") == "1"
                     or (identity is not None and identity.get("dnt") == "1"))
        if opted_out and options.dnt == "skip":
            return None, None
        sender_ua = server  # a POSTed hit's User-Agent is the sending program's, unless it names the visitor's
        if identity and options.senders and in_networks(hit["_ip"], options.senders):
            if "ua" in identity:
                hit["_ua"] = identity["ua"]
                sender_ua = False
            uip = identity.get("uip", "").strip()
            if uip and is_ip(uip):
                hit["_ip"] = uip
            if "hid" in identity:  # mongol.client's idempotency key: a retry is the same hit
                measurement.take_hit_id(hit, identity)
        if sender_ua:
            hit["_sender_ua"] = True  # mongol.enrich reads no bot into it (python-requests is no visitor)
        set_cookie = None
        if not opted_out:
            key = None
            if identity and (identity.get("uid") or identity.get("cid")):
                key = "\x01uid\x00" + identity["uid"] if identity.get("uid") else "\x01cid\x00" + identity["cid"]
            elif options.cookie and not server:
                set_cookie = self._cookie_visitor(hit, environ)
            else:
                key = hit["_ip"] + "\x00" + hit["_ua"]
            if key is not None:
                self._visitor(hit, key)
        self._hide_ip(hit, opted_out)
        return hit, set_cookie

    def _page_hit(self, hit: Hit, environ: dict) -> tuple[Hit | None, str | None]:
        """make() for a pixel request, the common case: without the Measurement Protocol's names."""
        opted_out = environ.get("HTTP_DNT") == "1" or environ.get("HTTP_SEC_GPC") == "1"
        set_cookie = None
        if opted_out:
            if self.options.dnt == "skip":
                return None, None
        elif self.options.cookie:
            set_cookie = self._cookie_visitor(hit, environ)
        else:
            self._visitor(hit, hit["_ip"] + "\x00" + hit["_ua"])
        self._hide_ip(hit, opted_out)
        return hit, set_cookie

    def _cookie_visitor(self, hit: Hit, environ: dict) -> str | None:
        """`_visitor` from the request's cookie, or a new one; the Set-Cookie value for a new one."""
        visitor = _cookie(environ.get("HTTP_COOKIE", ""))
        set_cookie = None
        if visitor is None:
            visitor = secrets.token_hex(16)
            set_cookie = f"{COOKIE_NAME}={visitor}; {COOKIE_ATTRIBUTES}"
        hit["_visitor"] = visitor
        return set_cookie

    def _hide_ip(self, hit: Hit, opted_out: bool) -> None:
        """The address anonymised (unless full_ip, for a visitor who did not opt out); the full one
        goes to the writer's GeoIP lookup as `_geo_ip`."""
        if opted_out or not self.options.full_ip:
            ip = hit["_ip"]
            hidden = anonymise_ip(ip)
            if hidden != ip:
                hit["_ip"] = hidden
                if self.options.geoip is not None:
                    hit["_geo_ip"] = ip

    def _visitor(self, hit: Hit, key: str) -> None:
        """`_visitor`: the day's keyed hash of the site and `key` (nothing when the day has no salt)."""
        day = hit["time"] // DAY_US
        if day != self._day:
            salt = self.salts.get(day)
            self._day, self._hasher = day, hashlib.blake2b(key=salt, digest_size=8) if salt else None
            self._visitors = {}  # another day, another salt
        if self._hasher is not None:
            text = hit["site"] + "\x00" + key
            visitor = self._visitors.get(text)
            if visitor is None:
                hasher = self._hasher.copy()  # keyed once per day: a copy is cheaper than a new key
                hasher.update(text.encode("utf-8", "replace"))
                visitor = hasher.hexdigest()
                if len(self._visitors) >= VISITOR_CACHE:
                    self._visitors = {}  # simpler than an LRU, and as good for a day's traffic
                self._visitors[text] = visitor
            hit["_visitor"] = visitor

    def housekeep(self) -> None:
        """Called about once a second: deletes old salts even when no hit comes to need a new one."""
        now = time.monotonic()
        if now >= self._purge_at:
            self._purge_at = now + PURGE_EVERY
            self.salts.purge()
