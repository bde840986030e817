"""Google Analytics Measurement Protocol (v1) names, read onto Mongol's fields.

A hit is read this way when it comes to `POST /collect` or `POST /batch`, or to the pixel with
`v=1` (every Measurement Protocol sender sends it; without it a pixel's `t`, `z` or `dt` stay
fields of those names, as they always were). What each name becomes:

======  =====================================================================================
``tid``  ``site`` (the property is what Mongol calls a site), unless ``site`` is given
``dh``   ``site``, unless ``site`` or ``tid`` is given
``dp``   ``url``, unless ``url`` is given
``dl``   ``site`` and ``url`` from the full URL (host without a leading ``www.``; path and query),
         each unless given by the names above
``dt``   ``title``, unless ``title`` is given
``dr``   ``referrer``, unless ``referrer`` is given
``t``    kept as ``t``; a hit whose ``t`` is not ``pageview`` or ``screenview`` has ``pageviews`` 0;
         ``t=event`` also names the custom event: ``event`` is ``ea`` (else ``ec``), unless given
``cid``  with ``uid``: who the visitor is, in place of address and User-Agent, in the day's
         visitor hash; never stored as given
``ua``   ``_ua`` and ``_ip``, only from a ``--trusted-sender`` (mongol.tracking); dropped otherwise
``uip``
``qt``   how long ago the hit happened, in milliseconds (at most 4 hours): its ``time`` is moved back
``dnt``  (Mongol's own) ``1``: the visitor sent ``DNT: 1`` or ``Sec-GPC: 1`` to the sending server
``v``    dropped (the protocol version), as is ``z`` (a cache buster)
======  =====================================================================================

Every other name (``ds``, ``ec``, ``ea``, ``el``, ``ev``, ...) stays a field of that name.
"""

from mongol.hit import Hit, RequestError, url_site_and_path

IDENTITY = ("cid", "uid", "ua", "uip", "dnt", "qt")
MAX_QUEUE_TIME_MS = 4 * 3600 * 1000  # `qt` further back than this is ignored, as Google did
VIEWS = ("pageview", "screenview")
MAX_BATCH_HITS = 20          # as Google's /batch
MAX_BATCH_BYTES = 16 * 1024  # the whole body
MAX_HIT_BYTES = 8000         # one hit, as a pixel's query string


def _first(value: str | list[str]) -> str:
    return value[0] if type(value) is list else value


def take_names(hit: Hit) -> dict[str, str]:
    """Map the Measurement Protocol names of `hit` (parsed parameters) onto Mongol's, in place, and
    take out those that say who the visitor is: returns them ({name: first value})."""
    identity = {name: _first(hit.pop(name)) for name in IDENTITY if name in hit}
    hit.pop("v", None)
    hit.pop("z", None)
    tid, dh, dp, dl = hit.pop("tid", None), hit.pop("dh", None), hit.pop("dp", None), hit.pop("dl", None)
    if "site" not in hit and (tid or dh):
        hit["site"] = _first(tid or dh)
    if "url" not in hit and dp:
        hit["url"] = _first(dp)
    if dl and ("site" not in hit or "url" not in hit):
        found = url_site_and_path(_first(dl))
        if found is not None:
            hit.setdefault("site", found[0])
            hit.setdefault("url", found[1])
    if "event" not in hit and _first(hit.get("t", "")) == "event":
        name = _first(hit.get("ea") or hit.get("ec") or "")
        if name:
            hit["event"] = name  # counted with the script's custom events
    for name, field in (("dt", "title"), ("dr", "referrer")):
        value = hit.pop(name, None)
        if value is not None and field not in hit:
            hit[field] = value
    return identity


def queue_time_us(identity: dict[str, str]) -> int:
    """`qt` in microseconds, 0 when absent or not a whole number of milliseconds up to 4 hours."""
    qt = identity.get("qt", "")
    return int(qt) * 1000 if qt.isascii() and qt.isdigit() and len(qt) < 10 and int(qt) <= MAX_QUEUE_TIME_MS else 0


def is_view(hit: Hit) -> bool:
    """False for a Measurement Protocol hit of a type other than a page or screen view (an event...)."""
    kind = hit.get("t")
    return kind is None or _first(kind) in VIEWS


class BodyTooLarge(RequestError):
    status = "413 Content Too Large"


def read_body(environ: dict, limit: int) -> str:
    """The request body, at most `limit` bytes, as a WSGI-style string (bytes as latin-1 code points)."""
    length = environ.get("CONTENT_LENGTH") or ""
    if not length.isdigit():
        if length:
            raise RequestError("bad Content-Length", "bad body")
        if not environ.get("wsgi.input_terminated"):
            return ""
        data = environ["wsgi.input"].read(limit + 1)  # chunked, under a server that ends the input
    else:
        if len(length) > 12 or int(length) > limit:
            raise BodyTooLarge(f"body over {limit} bytes", "body too large")
        data = environ["wsgi.input"].read(int(length))
    if len(data) > limit:
        raise BodyTooLarge(f"body over {limit} bytes", "body too large")
    return data.decode("latin-1")


def batch_lines(body: str) -> list[str]:
    """The hits of a `/batch` body: one form-encoded hit per line, at most MAX_BATCH_HITS of at most
    MAX_HIT_BYTES each (empty lines skipped)."""
    lines = [line for line in body.replace("\r\n", "\n").split("\n") if line]
    if len(lines) > MAX_BATCH_HITS:
        raise BodyTooLarge(f"more than {MAX_BATCH_HITS} hits in a batch", "batch too large")
    for n, line in enumerate(lines, 1):
        if len(line) > MAX_HIT_BYTES:
            raise BodyTooLarge(f"hit {n} of the batch is over {MAX_HIT_BYTES} bytes", "body too large")
    return lines
