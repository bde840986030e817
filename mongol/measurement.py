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
``hid``  (Mongol's own) from a ``--trusted-sender`` only: the hit's ``_id`` (24 hex digits), with
``ht``   its time in milliseconds since the epoch: a hit sent again is stored once; dropped otherwise
``v``    dropped (the protocol version), as are ``z`` (a cache buster) and ``aip`` (anonymise the
         address: Mongol always does, unless ``--full-ip``)
======  =====================================================================================

The fields of the other hit types get readable names (READABLE: ``ec`` is ``event_category``,
``exd`` is ``exception_description``, ``ti`` is ``transaction_id``, ``cd`` is ``screen_name`` and
also the ``url`` of a screenview...); a hit that is no page or screen view needs a site but no url.
Every other name (``ds``, ``cd1``, ...) stays a field of that name.
"""

from mongol.hit import Hit, RequestError, url_site_and_path

IDENTITY = ("cid", "uid", "ua", "uip", "dnt", "qt", "hid", "ht")
MAX_AHEAD_US = 60_000_000  # a sender's clock may be a minute ahead
# The fields of the other hit types, under readable names (README, "Server-side tracking")
READABLE = {
    "ec": "event_category", "ea": "event_action", "el": "event_label", "ev": "event_value",
    "exd": "exception_description", "exf": "exception_fatal",
    "utc": "timing_category", "utv": "timing_variable", "utt": "timing_time", "utl": "timing_label",
    "ti": "transaction_id", "ta": "transaction_affiliation", "tr": "transaction_revenue",
    "ts": "transaction_shipping", "tt": "transaction_tax", "cu": "currency",
    "in": "item_name", "ip": "item_price", "iq": "item_quantity", "ic": "item_code", "iv": "item_category",
    "sn": "social_network", "sa": "social_action", "st": "social_target",
    "an": "app_name", "av": "app_version", "aid": "app_id", "cd": "screen_name",
}
MAX_QUEUE_TIME_MS = 4 * 3600 * 1000  # `qt` further back than this is ignored, as Google did
VIEWS = ("pageview", "screenview")
MAX_BATCH_HITS = 20          # as Google's /batch
MAX_BATCH_BYTES = 16 * 1024  # the whole body
MAX_HIT_BYTES = 8192         # one POSTed hit, as Google's limit


def _first(value: str | list[str]) -> str:
    return value[0] if type(value) is list else value


def take_names(hit: Hit) -> dict[str, str]:
    """Map the Measurement Protocol names of `hit` (parsed parameters) onto Mongol's, in place, and
    take out those that say who the visitor is: returns them ({name: first value})."""
    identity = {name: _first(hit.pop(name)) for name in IDENTITY if name in hit}
    hit.pop("v", None)
    hit.pop("z", None)
    hit.pop("aip", None)  # "anonymise the address": Mongol always does, unless --full-ip
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
    kind = _first(hit.get("t", ""))
    if "event" not in hit and kind == "event":
        name = _first(hit.get("ea") or hit.get("ec") or "")
        if name:
            hit["event"] = name  # counted with the script's custom events
    if kind == "screenview" and "url" not in hit and hit.get("cd"):
        hit["url"] = _first(hit["cd"])  # an app's screen is its page
    for name in READABLE.keys() & hit.keys():
        field = READABLE[name]
        if field not in hit:
            hit[field] = hit.pop(name)
    for name, field in (("dt", "title"), ("dr", "referrer")):
        value = hit.pop(name, None)
        if value is not None and field not in hit:
            hit[field] = value
    return identity


def take_hit_id(hit: Hit, identity: dict[str, str]) -> None:
    """A trusted sender's `hid` (24 hex digits) becomes the hit's `_id`, and its `ht` (milliseconds
    since the epoch, within the last 4 hours) its time: sent again after a timeout, the hit is the same
    (id and time), and the store keeps it once."""
    hid, ht = identity["hid"], identity.get("ht", "")
    if len(hid) != 24 or not all(c in "0123456789abcdef" for c in hid):
        return
    hit["_id"] = hid
    if ht.isascii() and ht.isdigit() and len(ht) < 16:
        when = int(ht) * 1000
        if hit["time"] - MAX_QUEUE_TIME_MS * 1000 <= when <= hit["time"] + MAX_AHEAD_US:
            hit["time"] = when


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
    """The hits of a `/batch` body: one form-encoded hit per line, at most MAX_BATCH_HITS (empty lines
    skipped)."""
    lines = [line for line in body.replace("\r\n", "\n").split("\n") if line]
    if len(lines) > MAX_BATCH_HITS:
        raise BodyTooLarge(f"more than {MAX_BATCH_HITS} hits in a batch", "batch too large")
    return lines  # a line over MAX_HIT_BYTES is one bad hit of the batch (mongol.collect)
