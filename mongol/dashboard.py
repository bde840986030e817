"""The dashboard: a static page in each output folder that draws the reports written there.

Every run copies index.html, dashboard.js and dashboard.css (package data, mongol/dashboard/) into each
output folder of the config and writes `reports.js` beside them, a JSONP manifest of that folder's sections:

    mongolDashboard({"generated": "2026-11-22T14:00:00.000Z", "reports": [{"name": "site",
        "file": "site.json", "callback": "results", "site": null, "window": "2 days",
        "written": "2026-11-22T14:00:01.234Z"}, ...]});

`generated` is the run's clock (the end of every window); `written` is the report file's modification
time, or null while the file does not exist (a section that never succeeded): the page then shows
"not available" without requesting it, and flags a file older than `generated` as left by an earlier
run. The page loads the manifest and then each report with a <script> tag, one after the other, so it
works over HTTP and from file:// alike. Every file is published atomically, and a file in the way that
this module did not write (a site's own index.html) is never overwritten.
"""

import os
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import orjson

from mongol.errors import MongolError
from mongol.jsonp import plain, publish
from mongol.reportconfig import ReportSpec

ASSETS = ("index.html", "dashboard.js", "standard.js", "dashboard.css")
MANIFEST = "reports.js"
MANIFEST_CALLBACK = "mongolDashboard"
#: Every file written here contains this text; an existing file without it is not ours to replace.
MARKER = b"mongol-report dashboard"
_MARKER_SCAN = 64 * 1024


class DashboardError(MongolError):
    """The dashboard of a folder cannot be written."""


def asset(name: str) -> bytes:
    """One of the static files shipped in the package."""
    return (resources.files("mongol") / "dashboard" / name).read_bytes()


def by_folder(specs: list[ReportSpec]) -> dict[Path, list[ReportSpec]]:
    """The sections of each output folder, folders and sections in file order."""
    groups: dict[str, tuple[Path, list[ReportSpec]]] = {}
    for spec in specs:
        groups.setdefault(os.path.abspath(spec.output), (spec.output, []))[1].append(spec)
    return dict(groups.values())


def describe_window(window: timedelta | None) -> str | None:
    """`timedelta(days=9, hours=6)` as "1 week 2 days 6 hours"."""
    if window is None:
        return None
    rest = int(window.total_seconds())
    parts = []
    for unit, seconds in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, rest = divmod(rest, seconds)
        if count:
            parts.append(f"{count} {unit}{'s' if count > 1 else ''}")
    return " ".join(parts)


def written(path: Path) -> datetime | None:
    """When the report file was last published, or None when there is none."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:
        return None


def manifest(specs: list[ReportSpec], now: datetime) -> bytes:
    """reports.js for the sections of one folder."""
    reports = [{"name": spec.name, "file": spec.path.name, "callback": spec.callback, "site": spec.site,
                "window": describe_window(spec.window), "written": written(spec.path),
                **({"standard": True, "timezone": spec.timezone} if spec.standard else {})} for spec in specs]
    body = orjson.dumps(plain({"generated": now, "reports": reports}))
    body = body.replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029")
    return (b"/* " + MARKER + b": the reports of this folder, rewritten by every mongol-report run */\n"
            + MANIFEST_CALLBACK.encode() + b"(" + body + b");\n")


def _check_ours(folder: Path) -> None:
    for name in (*ASSETS, MANIFEST):
        path = folder / name
        try:
            with open(path, "rb") as f:
                head = f.read(_MARKER_SCAN)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise DashboardError(f"cannot read {path}: {exc.strerror or exc}") from None
        if MARKER not in head:
            raise DashboardError(f"{path} exists and was not written by mongol-report; not replacing it "
                                 "(move it away, or write the reports to another folder)")


def write_dashboards(specs: list[ReportSpec], now: datetime) -> list[Path]:
    """Publish the page, its assets and a fresh manifest in every output folder of `specs`.

    Every folder is checked before anything is written. Returns the folders written."""
    groups = by_folder(specs)
    files = {name: asset(name) for name in ASSETS}
    for folder in groups:
        _check_ours(folder)
    for folder, members in groups.items():
        for name, data in files.items():
            publish(folder / name, data)
        publish(folder / MANIFEST, manifest(members, now))
    return list(groups)
