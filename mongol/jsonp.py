"""Report files: results as `callback([...]);`, published atomically for a static server.

Values are written as JavaScript would see them: dates as ISO-8601 UTC strings, ObjectIds as hex
strings, integral numbers without a fraction (so 3.0 from a JavaScript reducer and 3 from a native
count give the same file), NaN and infinities as null, and U+2028/U+2029 escaped (JSON allows them
raw, older JavaScript parsers do not).
"""

import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

MAX_SAFE_INTEGER = 2**53


def plain(value: Any) -> Any:
    """A value as JSON-ready Python data with JavaScript's view of numbers and dates."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() and abs(value) < MAX_SAFE_INTEGER else value
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, str | int | bool) or value is None:
        return value
    if type(value).__name__ == "ObjectId":
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def render(callback: str, rows: list[dict]) -> bytes:
    body = orjson.dumps(plain(rows)).replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029")
    return callback.encode() + b"(" + body + b");\n"


def publish(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a temporary file in the same folder, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
