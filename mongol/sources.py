"""Where a visit came from: campaign tags, the referrer's site, and navigations inside the site.

Applied to every hit once its `site` and `url` are known (mongol.hit.hit_from_environ): pixel,
Measurement Protocol and mongol-ingest hits alike. README's "Campaigns and sources" repeats this.

- Campaigns: `utm_source`, `utm_medium`, `utm_campaign`, `utm_term` and `utm_content` are taken out
  of `url`'s query string (so that a page tagged for ten campaigns is still one page) and out of the
  parameters; a parameter wins over the url's value (a sender set it on purpose), the first of
  several values counts, an empty one is no value. `ref=X` (either place) becomes `utm_source` X when
  there is no `utm_source`, and is taken out all the same. `url` keeps the rest of its query in its
  order, and loses the `?` when nothing is left.
- `referrer` (the page the visitor came from, as the script sends `document.referrer`): when its
  host, without a leading `www.`, is the hit's site (also compared without a leading `www.`), the
  visitor moved inside the site: the hit gets `_internal: true` and keeps no `referrer`. Otherwise
  the hit keeps `referrer` as given and gets `_source`, the referrer's host without a leading
  `www.`. An empty `referrer` is a direct visit (dropped); one that is not a URL with a host is kept
  with no `_source`.
"""

import re
from typing import Any
from urllib.parse import unquote_plus, urlsplit

CAMPAIGN = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
_TAKEN = frozenset((*CAMPAIGN, "ref"))


def _first(value: Any) -> Any:
    return value[0] if type(value) is list else value


def bare_host(host: str) -> str:
    """A host name lower-cased, without a trailing dot or a leading `www.`."""
    host = host.lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


# scheme://host[:port] followed by the end or a path, query or fragment: what browsers send. Anything
# else (user info, IPv6, spaces, backslashes) goes to urlsplit, which costs about 3 us more.
_PLAIN_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#@\[\]\\:\s]+)(?::[0-9]*)?(?=[/?#]|\Z)")


def referrer_host(referrer: str) -> str | None:
    """The host of an absolute URL without a leading `www.`; None when it is not one."""
    plain = _PLAIN_URL.match(referrer)
    if plain is not None:
        return bare_host(plain.group(1))
    try:
        parts = urlsplit(referrer)
        host = parts.hostname
    except ValueError:
        return None
    if not parts.scheme or not host:
        return None
    return bare_host(host)


def split_campaign(url: str) -> tuple[str, dict[str, str]]:
    """`url` without its campaign parameters, and those parameters (first non-empty value of each)."""
    mark = url.find("?")
    if mark < 0 or ("utm" not in url and "ref=" not in url):  # the common case, without parsing
        return url, {}
    if 0 <= url.find("#") < mark:  # a ? in the fragment starts no query
        return url, {}
    query, hash_, fragment = url[mark + 1:].partition("#")
    kept: list[str] = []
    found: dict[str, str] = {}
    for field in query.split("&"):
        raw_name, _, raw_value = field.partition("=")
        name = unquote_plus(raw_name)
        if name in _TAKEN:
            value = unquote_plus(raw_value)
            if value and name not in found:
                found[name] = value
        else:
            kept.append(field)
    rest = "&".join(kept)
    return url[:mark] + ("?" + rest if rest else "") + hash_ + fragment, found


def attribute(hit: dict[str, Any]) -> None:
    """Set the campaign fields, `referrer`, `_source` and `_internal` of a hit, in place (module docstring)."""
    url = hit.get("url")
    found: dict[str, str] = {}
    if type(url) is str:
        url, found = split_campaign(url)
        if found:
            hit["url"] = url
    if not _TAKEN.isdisjoint(hit):
        for name in _TAKEN.intersection(hit):
            value = _first(hit.pop(name))
            if type(value) is str and value:
                found[name] = value
    if found:
        ref = found.pop("ref", None)
        if ref is not None and "utm_source" not in found:
            found["utm_source"] = ref
        hit.update(found)
    referrer = hit.get("referrer")
    if referrer is None:
        return
    referrer = _first(referrer)
    if type(referrer) is not str or not referrer:
        del hit["referrer"]
        return
    hit["referrer"] = referrer
    host = referrer_host(referrer)
    if host is None:
        return
    site = hit["site"]
    if type(site) is str and host == bare_host(site):
        del hit["referrer"]
        hit["_internal"] = True
    else:
        hit["_source"] = host
