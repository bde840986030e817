"""Time the standard reports (`standard = yes`) over 1M and 10M hits: a first run, then a run after 100k new hits.

    python bench/standard.py                        # 1,000,000 and 10,000,000 hits, embedded store
    python bench/standard.py --hits 1000000         # one size
    python bench/standard.py --hits 200000 --mongodb   # the MongoDB wire-protocol test server (tests/wire)

Hits follow issue 12's fields (site, url, title, _visitor, _source, utm_*, _internal, _browser, _os, _device,
_country, events, bots), a Zipf-like spread over 3,000 URLs, over the last 365 days. The first run computes
and keeps every day and publishes every file; then 100,000 new hits arrive within the last hour and the second
run recomputes only the days they touched. Each run goes through mongol.standard as mongol-report runs it
(update, then publish_files). CPU is this process's (the store's work too, for SQLite); the machine may be
shared: compare CPU times.
"""

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mongol.hit import new_id  # noqa: E402
from mongol.reportconfig import load  # noqa: E402
from mongol.standard import publish_files, update  # noqa: E402
from mongol.stores import open_store  # noqa: E402

URLS = 3000
SOURCES = [None] * 6 + ["google.com", "news.ycombinator.com", "duckduckgo.com", "reddit.com"]
AGENTS = [("Chrome", "Windows", "Other"), ("Firefox", "Linux", "Other"), ("Mobile Safari", "iOS", "iPhone"),
          ("Chrome Mobile", "Android", "Pixel 8")]
BATCH = 10_000


def lines(n: int, start: datetime, span: float, seed: int):
    """n hits as journal lines (JSON, time in microseconds), in time order over [start, start + span)."""
    rng = random.Random(seed)
    weights = [1 / (rank ** 1.1) for rank in range(1, URLS + 1)]
    pages = rng.choices(range(URLS), weights, k=n)
    t0 = int(start.timestamp() * 1_000_000)
    step = span * 1_000_000 / n
    batch = []
    for i, page in enumerate(pages):
        us = t0 + int(i * step)
        browser, os_name, device = AGENTS[i % len(AGENTS)]
        hit = {"_id": new_id(us / 1_000_000), "time": us, "site": "example.com", "url": f"/articles/{page}",
               "title": f"Article {page}", "pageviews": 1, "_visitor": f"{rng.randrange(1 << 20):016x}",
               "_browser": browser, "_os": os_name, "_device": device, "_country": ("DE", "FR", "US", "JP")[i % 4]}
        if i % 3:
            hit["_internal"] = True
        else:
            source = SOURCES[i % len(SOURCES)]
            if source:
                hit["_source"] = source
            if i % 11 == 0:
                hit.update(utm_source="newsletter", utm_medium="email", utm_campaign=f"issue-{page % 20}")
        if i % 29 == 0:
            hit = {**hit, "pageviews": 0, "event": "signup"}
        if i % 17 == 0:
            hit["_bot"] = True
        batch.append(orjson.dumps(hit))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def fill(uri: str, n: int, start: datetime, span: float, seed: int) -> float:
    store = open_store(uri)
    began = time.perf_counter()
    try:
        for batch in lines(n, start, span, seed):
            store.insert_lines(batch)
    finally:
        store.close()
    return time.perf_counter() - began


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(uri: str, spec, now: datetime) -> tuple[float, float, int, int]:
    store = open_store(uri)
    try:
        began, began_cpu = time.perf_counter(), cpu()
        result = update(store, spec)
        files = publish_files(store, spec, now, result)
        return time.perf_counter() - began, cpu() - began_cpu, len(result.recomputed), files
    finally:
        store.close()


def bench(n: int, uri: str, folder: Path) -> None:
    now = datetime.now(UTC)
    filled = fill(uri, n, now - timedelta(days=365), 365 * 86400 - 7200, seed=n)
    config = folder / "bench.cfg"
    config.write_text(f"[std]\noutput = {folder}/out\nstandard = yes\nsite = example.com\n")
    spec = load(config, mongodb=uri.startswith("mongodb"))[0]
    first = run(uri, spec, now)
    added = fill(uri, 100_000, now - timedelta(minutes=59), 3540, seed=n + 1)
    second = run(uri, spec, now + timedelta(hours=1))
    print(f"{n:>11,} hits stored in {filled:.1f} s ({n / filled:,.0f} hits/s); 100,000 more in {added:.1f} s")
    for what, (seconds, cpu_s, days, files) in (("first run", first), ("after 100k new hits", second)):
        print(f"  {what:<20} {seconds:8.2f} s  {cpu_s:8.2f} s CPU  {days:4} days recomputed  {files:3} files")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", default="1000000,10000000", help="comma-separated sizes")
    parser.add_argument("--mongodb", action="store_true", help="the MongoDB wire-protocol test server instead")
    args = parser.parse_args()
    kind = "MongoDB wire server" if args.mongodb else "SQLite"
    print(f"load average before: {os.getloadavg()[0]:.2f}; store: {kind}")
    for n in (int(x) for x in args.hits.split(",")):
        with tempfile.TemporaryDirectory(prefix="mongol-bench-") as tmp:
            if args.mongodb:
                sys.path.insert(0, str(ROOT / "tests"))
                from conftest import WireServer

                server = WireServer().start()
                try:
                    bench(n, f"{server.uri}/bench", Path(tmp))
                finally:
                    server.stop()
            else:
                bench(n, f"sqlite://{tmp}/hits.db", Path(tmp))


if __name__ == "__main__":
    main()
