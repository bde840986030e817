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
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from mongol.errors import MongolError
from mongol.stores import Hit
from mongol.tracking import Tracking

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


class Enricher:
    """Called by the writer with each batch of hits (spool lines decoded); gives back the hits to store,
    completed in place: bots are dropped (with drop_bots) or marked, the agent's fields are added
    from a cache keyed by the User-Agent, places from one keyed by the address."""

    def __init__(self, options: Tracking) -> None:
        self.drop_bots = options.drop_bots
        self.agent = _agent_reader() if options.parse_agents else None
        self.geoip = open_geoip(options.geoip) if options.geoip is not None else None
        self.place = _place_reader(self.geoip) if self.geoip is not None else None
        self.dropped = 0  # bots not stored
        self._agent_fields = lru_cache(maxsize=AGENT_CACHE)(self._fields)

    def _fields(self, ua: str) -> tuple[bool, dict[str, str]]:
        info = self.agent(ua)  # type: ignore[misc]
        return info.bot, {"_browser": info.browser, "_os": info.os, "_device": info.device}

    def __call__(self, hits: list[Hit]) -> list[Hit]:
        out = []
        agent, place = self.agent is not None, self.place
        for hit in hits:
            if agent:
                ua = hit.get("_ua")
                bot, fields = self._agent_fields(ua if type(ua) is str else "")
                if bot and hit.get("_sender_ua") is not True:  # a sending server's own agent: no bot
                    if self.drop_bots:
                        self.dropped += 1
                        continue
                    hit["_bot"] = True
                hit.update(fields)
            geo_ip = hit.pop("_geo_ip", None) if "_geo_ip" in hit else None
            if place is not None:
                ip = geo_ip or hit.get("_ip")
                if type(ip) is str:
                    country, city = place(ip)
                    if country:
                        hit["_country"] = country
                    if city:
                        hit["_city"] = city
            out.append(hit)
        return out

    def close(self) -> None:
        if self.geoip is not None:
            self.geoip.close()


def scrub(hits: list[Hit]) -> list[Hit]:
    """Without enrichment: hits stored as spooled, except that a `_geo_ip` (spooled by an earlier run
    that had a GeoIP database) is removed all the same."""
    for hit in hits:
        if "_geo_ip" in hit:
            del hit["_geo_ip"]
    return hits


def make_enricher(options: Tracking) -> Callable[[list[Hit]], list[Hit]]:
    """What the writer does to each batch of hits under these settings: an Enricher, or `scrub` when
    there is nothing to add. MongolError when the GeoIP database cannot be read."""
    return Enricher(options) if options.enriches else scrub
