"""Hits from servers: `POST /collect` (one hit; also `/j/collect` and `/r/collect`, the paths
analytics.js used), `POST /batch` (one hit per line) and `/debug/collect` (GET or POST: validated,
answered as Google's validation server answered, nothing stored). Bodies are form-encoded
Measurement Protocol hits (mongol.measurement), plain or `Content-Encoding: gzip`.

A batch stores every valid line and says which were not (200 with a JSON body; 204 when all were
good): senders re-send a whole batch that gets a 4xx, so one bad line must not make them send the
good ones again, nor drop them.
"""

import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

import orjson

from mongol.hit import Hit, RequestError, parse_query
from mongol.measurement import MAX_BATCH_BYTES, MAX_HIT_BYTES, BodyTooLarge, batch_lines, read_body

log = logging.getLogger("mongol.collect")

ONE_HIT = frozenset(("/collect", "/j/collect", "/r/collect"))
DEBUG = "/debug/collect"
PATHS = ONE_HIT | {"/batch", DEBUG}
COMPLAIN_EVERY = 60.0  # seconds between two log lines about bad batch lines of one kind

Response = tuple[str, list[tuple[str, str]], bytes]


class UnsupportedEncoding(RequestError):
    status = "415 Unsupported Media Type"


def decoded_body(environ: dict, limit: int) -> str:
    """The body, gunzipped when so encoded, of at most `limit` bytes once decoded (a zip bomb is a 413)."""
    encoding = (environ.get("HTTP_CONTENT_ENCODING") or "identity").strip().lower()
    if encoding == "identity":
        return read_body(environ, limit)
    if encoding not in ("gzip", "x-gzip"):
        raise UnsupportedEncoding(f"Content-Encoding {encoding[:40]!r}: only gzip is understood", "bad body")
    raw = read_body(environ, limit).encode("latin-1")  # compressed, it is smaller still
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflate.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise RequestError(f"the gzip body is broken: {exc}", "bad body") from None
    if len(data) > limit or inflate.unconsumed_tail:
        raise BodyTooLarge(f"body over {limit} bytes once decompressed", "body too large")
    if not inflate.eof:
        raise RequestError("the gzip body is cut short", "bad body")
    return data.decode("latin-1")


def _json(status: str, document: dict) -> Response:
    body = orjson.dumps(document)
    return status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store")], body


class ServerHits:
    """The endpoints above. `make(environ, params)` turns parameters into a hit (mongol.tracking's
    Tracker.make with server=True): a RequestError names what is wrong with it."""

    def __init__(self, make: Callable[[dict, dict], Hit | None], record: Callable[[Hit], bool],
                 reject: Callable[[str], None], refuse: Callable[..., Response]) -> None:
        self.make, self.record, self.reject, self.refuse = make, record, reject, refuse
        self.accepted = 0
        self._complained: dict[str, float] = {}

    def __call__(self, environ: dict, path: str) -> Response:
        method = environ["REQUEST_METHOD"]
        try:
            if path == DEBUG:
                text = environ.get("QUERY_STRING", "") if method == "GET" else decoded_body(environ, MAX_HIT_BYTES)
                return self._debug(environ, text)
            if path == "/batch":
                texts = batch_lines(decoded_body(environ, MAX_BATCH_BYTES))
            else:
                texts = [decoded_body(environ, MAX_HIT_BYTES)]
        except RequestError as exc:
            self.reject(exc.reason)
            return exc.status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(exc.body)))], exc.body
        hits: list[Hit] = []
        errors: list[dict[str, Any]] = []
        for n, text in enumerate(texts, 1):
            try:
                hit = self.make(environ, parse_query(text, MAX_HIT_BYTES))
            except RequestError as exc:
                if path != "/batch":
                    self.reject(exc.reason)
                    return exc.status, [("Content-Type", "text/plain; charset=utf-8"),
                                        ("Content-Length", str(len(exc.body)))], exc.body
                self.reject(exc.reason)
                self._complain(exc.reason, f"hit {n} of a batch: {exc}")
                errors.append({"hit": n, "reason": str(exc)})
                continue
            except OSError as exc:  # the day's salt cannot be saved: the spool's disk refuses
                return self.refuse(exc)
            if hit is not None:
                hits.append(hit)
        for hit in hits:
            if not self.record(hit):
                return self.refuse()
            self.accepted += 1
        if not errors:
            return "204 No Content", [("Cache-Control", "no-store")], b""
        return _json("200 OK", {"hits": len(texts), "stored": len(hits), "invalid": len(errors), "errors": errors})

    def _complain(self, reason: str, detail: str) -> None:
        """One log line per kind of bad batch line and minute, not one per hit."""
        now = time.monotonic()
        if now >= self._complained.get(reason, 0.0):
            log.warning("dropped a bad line of a /batch (%s; this kind is logged once a minute): %s", reason, detail)
            self._complained[reason] = now + COMPLAIN_EVERY

    def _debug(self, environ: dict, text: str) -> Response:
        """Google's validation answer (hitParsingResult); nothing is recorded."""
        try:
            hit = self.make(environ, parse_query(text, MAX_HIT_BYTES))
        except RequestError as exc:
            result = {"valid": False, "parserMessage": [{"messageType": "ERROR", "description": str(exc),
                                                         "messageCode": "VALUE_INVALID"}]}
        except OSError:
            result = {"valid": True, "parserMessage": []}  # the hit is fine; storing it is not asked for
        else:
            messages = [] if hit is not None else [
                {"messageType": "INFO", "description": "The visitor opted out: this hit would not be stored."}]
            result = {"valid": True, "parserMessage": messages}
        result["hit"] = "/debug/collect?" + text[:2000]
        return _json("200 OK", {"hitParsingResult": [result], "parserMessage": [
            {"messageType": "INFO", "description": "Found 1 hit in the request."}]})
