"""What the writer process adds to each hit before storing it: bots, browser, OS, device, country, city.

This work is too slow for the request path (a User-Agent seen for the first time costs tens of
microseconds to classify), so it happens here, per batch, with caches: the same few thousand
User-Agent strings make most of the traffic, and each is read once.

- Bots: a hit whose User-Agent matches crawler-user-agents' patterns (the community-kept list of
  crawlers, scrapers and HTTP libraries) or that ua-parser calls a "Spider" gets `_bot: true`; with
  `drop_bots` it is not stored at all.
- `_browser`, `_os`, `_device`: the families ua-parser (uap-core's regexes, kept up to date by that
  project) gives: "Chrome", "Windows", "iPhone"; "Other" when it cannot tell (desktops have device
  "Other").
- `_country` (ISO 3166 code) and `_city` (English name): from a MaxMind-format database (GeoLite2 or
  GeoIP2 Country or City, or any database of that shape), looked up on `_geo_ip` (the full address the
  serving process passed on, removed here) or else `_ip`. A field the database has nothing for is left
  out.
"""

import ipaddress
import logging
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from mongol.errors import MongolError
from mongol.tracking import Tracking

log = logging.getLogger("mongol.enrich")

AGENT_CACHE = 20_000
ADDRESS_CACHE = 50_000


class Agent(NamedTuple):
    bot: bool
    browser: str
    os: str
    device: str


def _agent_reader() -> Callable[[str], Agent]:
    import crawleruseragents
    import ua_parser

    parse = ua_parser.parse
    is_crawler = crawleruseragents.is_crawler

    @lru_cache(maxsize=AGENT_CACHE)
    def read(ua: str) -> Agent:
        result = parse(ua)
        browser = result.user_agent.family if result.user_agent else "Other"
        system = result.os.family if result.os else "Other"
        device = result.device.family if result.device else "Other"
        return Agent(bool(ua) and (device == "Spider" or is_crawler(ua)), browser, system, device)

    # Both libraries compile their patterns on first use (0.5 s or more): do it now, beside the writer's
    # loop, rather than in the first batch, which would hold the first hits and a stop soon after start.
    threading.Thread(target=lambda: (parse("Mozilla/5.0"), is_crawler("Mozilla/5.0")), name="mongol-enrich-warm-up",
                     daemon=True).start()
    return read


def open_geoip(path: Path) -> Any:
    """A maxminddb Reader for `path`; MongolError, in one sentence, when it is not such a database."""
    import maxminddb

    try:
        return maxminddb.open_database(str(path))
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise MongolError(f"cannot read the GeoIP database {path}: {exc}") from None


def _place_reader(reader: Any) -> Callable[[str], tuple[str | None, str | None]]:
    @lru_cache(maxsize=ADDRESS_CACHE)
    def place(ip: str) -> tuple[str | None, str | None]:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None, None
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        try:
            record = reader.get(address)
        except ValueError:  # an IPv6 address in an IPv4-only database
            return None, None
        if not isinstance(record, dict):
            return None, None
        country = record.get("country") or record.get("registered_country") or {}
        city = record.get("city") or {}
        return country.get("iso_code"), (city.get("names") or {}).get("en")

    return place


_UA_KEY = b'"_ua":"'
_IP_KEY = b'"_ip":"'
_GEO_KEY = b',"_geo_ip":"'
_SENDER_UA = b'"_sender_ua":true'  # mongol.tracking: `_ua` is a server's that POSTed the hit
_SLOW = object()


def _string_end(line: bytes, start: int) -> int:
    """Where the JSON string whose text begins at `start` ends (its closing quote); -1 if it does not."""
    end = line.find(b'"', start)
    while end > 0 and line[end - 1] == 0x5C:  # a backslash: escaped, unless the backslash itself is
        k = end - 1
        while line[k] == 0x5C:
            k -= 1
        if (end - 1 - k) % 2 == 0:
            break
        end = line.find(b'"', end + 1)
    return end


class Enricher:
    """Called by the writer with each batch of spool lines; gives back the lines to store.

    Lines are not decoded: the serving processes wrote them with orjson, where a top-level key such as
    `"_ua":"` can only be that key (a quote inside a string is escaped, and clients cannot name a field
    with a leading `_`), so the User-Agent is read from the bytes, and the new fields, encoded once per
    User-Agent, are added before the closing brace. Anything else (a line of another shape) is decoded
    and encoded again, with the same result."""

    def __init__(self, options: Tracking) -> None:
        self.drop_bots = options.drop_bots
        self.agent = _agent_reader() if options.parse_agents else None
        self.geoip = open_geoip(options.geoip) if options.geoip is not None else None
        self.place = _place_reader(self.geoip) if self.geoip is not None else None
        self.dropped = 0  # bots not stored
        self._agent_fields = lru_cache(maxsize=AGENT_CACHE)(self._encode_agent)

    def __call__(self, lines: list[bytes]) -> list[bytes]:
        out = []
        fast = self._fast
        for line in lines:
            new = fast(line)
            if new is _SLOW:
                new = self._slow(line)
            if new is not None:
                out.append(new)
        return out

    def _encode_agent(self, raw: bytes) -> tuple[bool, bytes, bytes]:
        """(bot, the fields to add, the same without `_bot`: as JSON members) for a User-Agent as its JSON
        string's bytes."""
        ua = orjson.loads(b'"' + raw + b'"')
        info = self.agent(ua)
        fields = {"_browser": info.browser, "_os": info.os, "_device": info.device}
        plain = b"," + orjson.dumps(fields)[1:-1]
        return info.bot, b',"_bot":true' + plain if info.bot else plain, plain

    def _fast(self, line: bytes) -> Any:
        """The line to store, None to store nothing (a bot, with drop_bots), or _SLOW."""
        if line[-1:] != b"}":
            return _SLOW
        extra = b""
        if self.agent is not None:
            start = line.find(_UA_KEY)
            if start < 0:
                return _SLOW
            start += len(_UA_KEY)
            end = _string_end(line, start)
            if end < 0:
                return _SLOW
            bot, extra, plain = self._agent_fields(line[start:end])
            if bot and _SENDER_UA in line:  # the sending server's own User-Agent: no visitor, no bot
                bot, extra = False, plain
            if bot and self.drop_bots:
                self.dropped += 1
                return None
        geo_ip = None
        if b'"_geo_ip"' in line:
            at = line.find(_GEO_KEY)
            if at < 0:
                return _SLOW
            start = at + len(_GEO_KEY)
            end = line.find(b'"', start)
            if end < 0:
                return _SLOW
            geo_ip = line[start:end].decode("utf-8", "replace")
            line = line[:at] + line[end + 1:]
        if self.place is not None:
            if geo_ip is None:
                start = line.find(_IP_KEY)
                if start >= 0:
                    start += len(_IP_KEY)
                    end = _string_end(line, start)
                    if end < 0:
                        return _SLOW
                    geo_ip = orjson.loads(line[start - 1:end + 1])
            if geo_ip:
                country, city = self.place(geo_ip)
                if country:
                    extra += b',"_country":' + orjson.dumps(country)
                if city:
                    extra += b',"_city":' + orjson.dumps(city)
        return line[:-1] + extra + b"}" if extra else line

    def _slow(self, line: bytes) -> bytes | None:
        try:
            hit = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.error("dropping a spool line that is not JSON: %r", line[:200])
            return None
        if type(hit) is not dict:
            log.error("dropping a spool line that is not a hit: %r", line[:200])
            return None
        if self.agent is not None:
            ua = hit.get("_ua")
            info = self.agent(ua if type(ua) is str else "")
            if info.bot and hit.get("_sender_ua") is not True:
                if self.drop_bots:
                    self.dropped += 1
                    return None
                hit["_bot"] = True
            hit["_browser"], hit["_os"], hit["_device"] = info.browser, info.os, info.device
        geo_ip = hit.pop("_geo_ip", None)
        if self.place is not None:
            ip = geo_ip or hit.get("_ip")
            if type(ip) is str:
                country, city = self.place(ip)
                if country:
                    hit["_country"] = country
                if city:
                    hit["_city"] = city
        return orjson.dumps(hit)

    def close(self) -> None:
        if self.geoip is not None:
            self.geoip.close()


def scrub(lines: list[bytes]) -> list[bytes]:
    """Without enrichment: lines stored as spooled, except that a `_geo_ip` (spooled by an earlier run
    that had a GeoIP database) is removed all the same."""
    if not any(b'"_geo_ip"' in line for line in lines):
        return lines
    out = []
    for line in lines:
        if b'"_geo_ip"' in line:
            try:
                hit = orjson.loads(line)
                hit.pop("_geo_ip", None)
                line = orjson.dumps(hit)
            except (orjson.JSONDecodeError, AttributeError):
                log.error("dropping a spool line that is not a hit: %r", line[:200])
                continue
        out.append(line)
    return out


def make_enricher(options: Tracking) -> Callable[[list[bytes]], list[bytes]]:
    """What the writer does to each batch of spool lines under these settings: an Enricher, or `scrub`
    when there is nothing to add (lines are then stored as spooled, with no decoding). MongolError
    when the GeoIP database cannot be read."""
    return Enricher(options) if options.enriches else scrub
