"""Turning a tracking request into a hit: what a client may set, and what only the server sets.

What hostile input becomes (README's "What a hit holds" repeats this table):

- a name starting with `$` gets U+FF04 instead, each `.` becomes U+FF0E (full-width): MongoDB's own
  advice for keys, so no name can act as an operator or a path; NUL characters are removed and a
  name left empty is dropped;
- `time`, `pageviews` and every name starting with `_` belong to the server (`_id`, `_ip`, `_ua`):
  a client's value for them is dropped, so no client can forge a time or inflate a count;
- invalid UTF-8 (in names, values, Referer, User-Agent) becomes U+FFFD; a `%` not followed by two
  hex digits stays as it is;
- a query string over MAX_QUERY_BYTES is refused with 414, more than MAX_PARAMS fields with 400;
- a Referer that is not an absolute URL with a host is treated as absent;
- `site` and `url` name one page: given several times, the first value counts;
- campaigns, `referrer`, `_source` and `_internal`: mongol.sources;
- `event` (its first value, if not empty) makes the hit a custom event, with `pageviews` 0; `screen`
  (a width in CSS pixels) is kept only as up to five digits.
"""

import ipaddress
import itertools
import os
import time as _time
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from mongol.sources import attribute

MAX_QUERY_BYTES = 8000
MAX_PARAMS = 256
RESERVED = frozenset({"time", "pageviews"})

Hit = dict[str, Any]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RequestError(Exception):
    """A request that cannot become a hit; `status` and a short text for the client."""

    status = "400 Bad Request"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.body = (message + "\n").encode()
        #: a short label for metrics: "no site", "too many parameters", "query too long"
        self.reason = reason


class URITooLong(RequestError):
    status = "414 URI Too Long"


_PROCESS = 0  # 40 random bits
_COUNTER = itertools.count()
_ID_SECOND: list = [-1, 0]  # the last second an id was made in, and its ids' seconds and process bits, shifted


def _new_process() -> None:
    """Fresh random bits and counter for ids, in every process: forked workers must not share them."""
    global _PROCESS, _COUNTER
    _PROCESS = int.from_bytes(os.urandom(5), "big")
    _COUNTER = itertools.count(int.from_bytes(os.urandom(3), "big"))
    _ID_SECOND[:] = -1, 0


_new_process()
os.register_at_fork(after_in_child=_new_process)


def new_id(now: float) -> str:
    """A unique id shaped like a MongoDB ObjectId (seconds, process random, counter), as 24 hex digits."""
    second = int(now) & 0xFFFFFFFF
    if second != _ID_SECOND[0]:
        _ID_SECOND[:] = second, (second << 40 | _PROCESS) << 24
    return "%024x" % (_ID_SECOND[1] | next(_COUNTER) & 0xFFFFFF)  # one int, formatted once: the cheapest way


def _text(raw: str) -> str:
    """A WSGI (latin-1) string holding UTF-8 bytes, decoded; invalid sequences become U+FFFD."""
    if raw.isascii():
        return raw
    return raw.encode("latin-1").decode("utf-8", "replace")


def _unquote(part: str) -> str:
    if "+" in part:
        part = part.replace("+", " ")
    if "%" in part:  # the WSGI string holds the raw bytes as latin-1
        return unquote_to_bytes(part.encode("latin-1")).decode("utf-8", "replace")
    return _text(part)


def clean_name(name: str) -> str | None:
    """The name a parameter is stored under, or None when it must be dropped."""
    if "\x00" in name:
        name = name.replace("\x00", "")
    if not name or name[0] == "_" or name in RESERVED:
        return None
    if name[0] == "$":
        name = "\uff04" + name[1:]
    if "." in name:
        name = name.replace(".", "\uff0e")
    return name


def parse_query(query: str, limit: int = MAX_QUERY_BYTES) -> dict[str, str | list[str]]:
    """GET parameters: a name given once maps to a string, given several times to a list. `limit`:
    the most bytes taken (a POSTed hit may have 8192, as Google's)."""
    if len(query) > limit:
        raise URITooLong(f"query string over {limit} bytes", "query too long")
    params: dict[str, str | list[str]] = {}
    if not query:
        return params
    fields = query.split("&")
    if len(fields) > MAX_PARAMS:
        raise RequestError(f"more than {MAX_PARAMS} parameters", "too many parameters")
    for field in fields:
        if not field:
            continue
        raw_name, _, raw_value = field.partition("=")
        name = clean_name(_unquote(raw_name))
        if name is None:
            continue
        value = _unquote(raw_value)
        old = params.get(name)
        if old is None:
            params[name] = value
        elif isinstance(old, list):
            old.append(value)
        else:
            params[name] = [old, value]
    return params


def site_and_url(referer: str) -> tuple[str, str] | None:
    """`site` (host without a leading `www.`) and `url` (path and query) of a Referer, if it is a URL."""
    return url_site_and_path(_text(referer))


def url_site_and_path(url: str) -> tuple[str, str] | None:
    """As site_and_url, for a URL that is text already (a parameter's value)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if not parts.scheme or not host:
        return None
    site = host[4:] if host.startswith("www.") else host
    url = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    return site, url


def _first(value: str | list[str]) -> str:
    return value[0] if type(value) is list else value


def client_ip(environ: dict, trusted: tuple[Network, ...]) -> str:
    """REMOTE_ADDR, or the nearest X-Forwarded-For entry not in `trusted` when the peer is a trusted proxy."""
    peer = environ.get("REMOTE_ADDR", "")
    if not trusted or not in_networks(peer, trusted):
        return peer
    chain = [p.strip() for p in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if p.strip()]
    for hop in reversed(chain):
        if not in_networks(hop, trusted):
            return hop if is_ip(hop) else peer
    return chain[0] if chain and is_ip(chain[0]) else peer


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def in_networks(address: str, trusted: tuple[Network, ...]) -> bool:
    """True when `address` is an IP address inside one of the networks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def hit_from_environ(environ: dict, trusted: tuple[Network, ...] = (), now_us: int | None = None,
                     params: dict | None = None, url_optional: bool = False) -> Hit:
    """The hit a WSGI request records, as a journal record (`time` in integer microseconds since the
    epoch, UTC); raises RequestError when there is none to record. `now_us` is when the request
    arrived, if not now (mongol-ingest passes the time nginx logged); `params`, the request's
    parameters parsed already (from a body, or read as Measurement Protocol names); `url_optional`:
    a site is enough (a Measurement Protocol event, timing... names no page)."""
    if params is None and not url_optional:
        page = page_fields(environ.get("QUERY_STRING", ""), environ.get("HTTP_REFERER", ""))
        if page is not None:
            return stamp(page, environ, trusted, now_us)
    if params is None:
        params = parse_query(environ.get("QUERY_STRING", ""))
    views = _page(params, environ.get("HTTP_REFERER", ""), url_optional)
    return stamp((params, views), environ, trusted, now_us)


def _page(hit: Hit, referer: str, url_optional: bool) -> int:
    """Complete, in place, the fields of a hit that come from its parameters and Referer (site, url,
    sources, event, screen); its pageviews. Raises RequestError when it names no site or page."""
    for name in ("site", "url"):
        if type(hit.get(name)) is list:
            hit[name] = hit[name][0]
    if "site" not in hit or ("url" not in hit and not url_optional):
        found = site_and_url(referer)
        if found is None:
            raise RequestError("missing site and url: pass both as parameters or send a Referer", "no site")
        hit.setdefault("site", found[0])
        hit.setdefault("url", found[1])
    attribute(hit)
    url = hit.get("url")
    if type(url) is str and "%" in url:
        # one page, one key: a url from a Referer, a script or a log is percent-encoded as browsers
        # send it, a url parameter from a server is often plain text; both are stored decoded
        hit["url"] = unquote(url, errors="replace")
    views = 1
    if "event" in hit:
        event = hit["event"] = _first(hit["event"])
        if event:
            views = 0
        else:
            del hit["event"]
    if "screen" in hit:
        screen = hit["screen"] = _first(hit["screen"])
        if not (screen.isascii() and screen.isdigit() and len(screen) <= 5):
            del hit["screen"]
    return views


def _page_of(query: str, referer: str) -> tuple[Hit, int] | None:
    params = parse_query(query)
    if params.get("v") == "1":
        return None
    return params, _page(params, referer, False)


# Every view of a page sends the same query string and Referer: what they give is worked out once
# (parsing, the Referer's URL, sources: most of a hit's cost). Errors are not kept, nor long keys,
# so that the cache stays small whatever clients send (at most PAGE_CACHE * PAGE_KEY_CHARS of keys).
PAGE_CACHE = 4096
PAGE_KEY_CHARS = 2048
_cached_page = lru_cache(maxsize=PAGE_CACHE)(_page_of)


def page_fields(query: str, referer: str) -> tuple[Hit, int] | None:
    """What a pixel request's query string and Referer make of a hit, as `(fields, pageviews)`, to be
    copied and never changed; None for a Measurement Protocol hit (`v=1`), which the caller reads
    itself. Raises RequestError as hit_from_environ does."""
    if len(query) + len(referer) > PAGE_KEY_CHARS:
        return _page_of(query, referer)
    return _cached_page(query, referer)


def stamp(page: tuple[Hit, int], environ: dict, trusted: tuple[Network, ...] = (), now_us: int | None = None) -> Hit:
    """A new hit from page fields: a copy of them, with what belongs to this request (id, time, address,
    User-Agent). The copy is shallow: a list value is shared with the page, and must not change."""
    fields, views = page
    hit = fields.copy()
    if now_us is None:
        now_us = _time.time_ns() // 1000
    hit["_id"] = new_id(now_us // 1_000_000)
    hit["time"] = now_us
    hit["pageviews"] = views
    hit["_ip"] = client_ip(environ, trusted) if trusted else environ.get("REMOTE_ADDR", "")
    ua = environ.get("HTTP_USER_AGENT", "")
    hit["_ua"] = ua if ua.isascii() else _text(ua)
    return hit


def parse_networks(specs: list[str], option: str = "--trusted-proxy") -> tuple[Network, ...]:
    """`--trusted-proxy` values (addresses or CIDR blocks) as networks; ValueError names a bad one."""
    nets = []
    for spec in specs:
        try:
            nets.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"bad {option} {spec!r}: expected an IP address or a CIDR block") from None
    return tuple(nets)
