"""A site's own access log as a source of page views (ballcone's model): no pixel, no script, no change
to the pages. Every HTML page nginx served to a visitor becomes a hit, with the visitor's real Referer.

mongol-ingest tells the lines apart by their keys, so one receiver takes pixel lines and site lines:

- Mongol's site format (scripts/nginx-site-log.conf, `"log":"site"`): the pixel format plus the host
  and the response's Content-Type.
- Matomo log-analytics' `nginx_json` format, and ballcone's, which is the same with a `service` key:
  `ip`, `host`, `path`, `status`, `referrer`, `user_agent`, `date` ($time_iso8601); no method is
  logged. Matomo's documented format has no `escape=json`: nginx's default escaping (`\\xHH`) is
  read too.

What is a page view (the rules a user of Matomo's importer or ballcone expects): a GET (any request
when the method is not logged) answered 2xx or 304, whose Content-Type is text/html when logged, and
otherwise whose path has no file extension or a page's (.html, .php, ...): stylesheets, scripts, images,
fonts, feeds, downloads, redirects and errors are not. A browser's prefetch is not (when its headers are
logged). Bots are flagged or dropped by the writer, as for every hit.
"""

import posixpath
import re
from collections.abc import Callable
from datetime import UTC, datetime

from mongol.hit import _text

MATOMO_KEYS = ("ip", "host", "path", "status", "date")
SITE_KEYS = ("time", "addr", "method", "host", "uri", "status")
PAGE_EXTENSIONS = frozenset(["html", "htm", "xhtml", "shtml", "php", "asp", "aspx", "jsp", "cgi", "pl"])
HEADERS = (("HTTP_USER_AGENT", "ua"), ("HTTP_X_FORWARDED_FOR", "xff"), ("HTTP_DNT", "dnt"),
           ("HTTP_SEC_GPC", "gpc"), ("HTTP_SEC_PURPOSE", "sec_purpose"), ("HTTP_PURPOSE", "purpose"),
           ("HTTP_X_PURPOSE", "x_purpose"), ("HTTP_X_MOZ", "x_moz"))
_NGINX_ESCAPE = re.compile(r"\\x([0-9A-Fa-f]{2})")


class NotSiteLine(ValueError):
    """A line that claims a site format but lacks what it needs."""


def unescape_nginx(text: str) -> str:
    """nginx's default log escaping (`\\x22` for a quote) as JSON escapes, for a line that is not JSON."""
    return _NGINX_ESCAPE.sub(lambda m: "\\u00" + m.group(1), text)


def site_format(entry: dict) -> str | None:
    """`site` (Mongol's site format), `matomo` (Matomo's or ballcone's), or None (a pixel line)."""
    if entry.get("log") == "site":
        return "site"
    if all(type(entry.get(k)) is str for k in MATOMO_KEYS) and "uri" not in entry:
        return "matomo"
    return None


def iso_time_us(text: str) -> int:
    """nginx's $time_iso8601 (`2026-11-22T10:00:00+01:00`) as microseconds since the epoch."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise NotSiteLine(f"bad date {text[:40]!r}: expected nginx's $time_iso8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def is_page(method: str | None, status: str, uri: str, content_type: str | None) -> bool:
    if method is not None and method != "GET":
        return False
    if not (status[:1] == "2" or status == "304"):
        return False  # redirects, errors
    if content_type:  # the server said what it sent: nothing is more exact
        return content_type.split(";", 1)[0].strip().lower() in ("text/html", "application/xhtml+xml")
    path = uri.split("?", 1)[0]
    if path.startswith("/.well-known/"):
        return False
    extension = posixpath.splitext(posixpath.basename(path))[1][1:].lower()
    return not extension or extension in PAGE_EXTENSIONS


def page_view(entry: dict, kind: str, msec: Callable[[dict], int]) -> tuple[dict[str, str], dict[str, str], int] | None:
    """A site line as the pixel would have received it: (environ, parameters, time in microseconds);
    None when the request was no page view. Every string is a WSGI string (bytes as latin-1).
    `msec` reads the time of Mongol's formats (nginx's $msec)."""
    if kind == "site":
        if any(type(entry.get(k)) is not str for k in SITE_KEYS):
            raise NotSiteLine(f"a site line lacks {', '.join(SITE_KEYS)} as strings")
        method, uri, addr, referer = entry["method"], entry["uri"], entry["addr"], entry.get("referer")
        content_type, when = entry.get("type"), msec(entry)
    else:
        method, uri, addr, referer = None, entry["path"], entry["ip"], entry.get("referrer")
        content_type, when = None, iso_time_us(entry["date"])
        entry = {**entry, "ua": entry.get("user_agent")}
    if not is_page(method, entry["status"], uri, content_type if type(content_type) is str else None):
        return None
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "REMOTE_ADDR": addr}
    for key, name in HEADERS:
        value = entry.get(name)
        if value and type(value) is str and value != "-":
            environ[key] = value
    host = entry["host"].split(":", 1)[0].lower()
    # the url as the request line has it: the hit decodes it, as every url (mongol.hit)
    params = {"site": host.removeprefix("www."), "url": _text(uri)}
    if referer and type(referer) is str and referer != "-":
        params["referrer"] = _text(referer)
    return environ, params, when
