"""Time mongol-report's engine over 1M and 10M hits, against a plain Python count of the same rows.

    python bench/report.py                    # 1,000,000 and 10,000,000 hits, embedded store
    python bench/report.py --hits 1000000 --mongodb   # also the MongoDB wire-protocol test server

Hits follow a Zipf-like distribution over a few thousand URLs, spread over the last two days.
For each size it prints seconds and hits/s for: the default report (native path), the same
map/reduce as custom JavaScript (embedded quickjs-ng, all cores), and the reference: a plain
Python dict count of the same rows read from the same store. Each goes through mongol.report.compute
as mongol-report runs it. The CPU column adds this process's CPU time and its workers'; the load
column is the 1-minute load average before the run (the machine may be shared: compare the CPU
time, or repeat with --repeat and keep the best).
"""

import argparse
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mongol.hit import new_id  # noqa: E402
from mongol.report import compute  # noqa: E402
from mongol.reportconfig import DEFAULT_MAPPER, DEFAULT_REDUCER, ReportSpec  # noqa: E402
from mongol.stores import Store, open_store  # noqa: E402

URLS = 3000
JS_MAPPER = "function () {\n emit({url: this.url, title: this.title}, this.pageviews);\n}"  # not the default text
JS_REDUCER = "function (key, values) { return Array.sum(values); }"


def make_hits(n: int, seed: int = 1) -> "list[dict]":
    rng = random.Random(seed)
    weights = [1 / (rank ** 1.1) for rank in range(1, URLS + 1)]
    pages = rng.choices(range(URLS), weights, k=n)
    now = datetime.now(UTC)
    span = 2 * 86400
    hits = []
    for i, page in enumerate(pages):
        when = now - timedelta(seconds=span * (n - i) / n)
        hit = {"_id": new_id(when.timestamp()), "time": when, "site": "example.com",
               "url": f"/articles/{page}/some-title-{page}", "pageviews": 1, "lang": "en" if page % 3 else "fr",
               "_ip": f"10.0.{page % 256}.{i % 256}", "_ua": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0"}
        if page % 10:
            hit["title"] = f"Article number {page}"
        hits.append(hit)
    return hits


def fill(store: Store, n: int) -> float:
    start = time.perf_counter()
    chunk = 200_000
    for offset in range(0, n, chunk):
        hits = make_hits(min(chunk, n - offset), seed=offset)
        for b in range(0, len(hits), 10_000):
            store.insert_many(hits[b:b + 10_000])
    return time.perf_counter() - start


def spec(name: str, mapper: str = DEFAULT_MAPPER, reducer: str = DEFAULT_REDUCER) -> ReportSpec:
    return ReportSpec(name=name, output=Path("/nonexistent"), window=timedelta(days=3), site=None,
                      callback="results", limit=10, descending=True, mapper=mapper, reducer=reducer,
                      finalize=None, pipeline=None, engine="embedded", cpu_seconds=3600, memory_mb=1024)


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for (the workers)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def timed(fn, repeat: int = 1) -> "tuple[float, float, float, object]":
    """The best of `repeat` runs: (seconds, CPU seconds, load average before, result)."""
    best = None
    for _ in range(repeat):
        load = os.getloadavg()[0]
        cpu, start = cpu_seconds(), time.perf_counter()
        result = fn()
        run = (time.perf_counter() - start, cpu_seconds() - cpu, load, result)
        if best is None or run[0] < best[0]:
            best = run
    return best


def python_count(store: Store, start: datetime) -> Counter:
    counts: Counter = Counter()
    for hit in store.hits(start):
        counts[(hit.get("url"), hit.get("title"))] += hit["pageviews"]
    return counts


def measure(store: Store, n: int, label: str, repeat: int = 1) -> None:
    now = datetime.now(UTC)
    start = now - timedelta(days=3)
    ref_run = timed(lambda: python_count(store, start))
    native_run = timed(lambda: compute(spec("native"), store, now), repeat)
    js_run = timed(lambda: compute(spec("js", JS_MAPPER, JS_REDUCER), store, now), repeat)
    expected = [v for _, v in ref_run[3].most_common(10)]
    assert [r["value"] for r in native_run[3]] == expected, "native report disagrees with the reference"
    assert [r["value"] for r in js_run[3]] == expected, "JavaScript report disagrees with the reference"
    for what, (seconds, cpu, load, _) in (("default report (native)", native_run), ("custom JavaScript", js_run),
                                          ("reference: Python dict count", ref_run)):
        print(f"{label:<22} {n:>11,} {what:<30} {seconds:>8.2f} s {n / seconds:>13,.0f} hits/s "
              f"{cpu:>8.2f} s {load:>6.2f}", flush=True)


def start_wire_server() -> "tuple[subprocess.Popen, str]":
    proc = subprocess.Popen(["node", str(ROOT / "tests" / "wire" / "server.js"), "0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        m = re.match(r"listening on (\d+)", line)
        if m:
            return proc, f"mongodb://127.0.0.1:{m.group(1)}/bench"
    raise SystemExit("the MongoDB wire-protocol test server did not start (npm ci --prefix tests/wire)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hits", type=int, action="append", help="sizes to run (default 1M and 10M)")
    parser.add_argument("--mongodb", action="store_true", help="also run the smallest size on the wire server")
    parser.add_argument("--repeat", type=int, default=1, help="run each report this many times, keep the fastest")
    args = parser.parse_args()
    sizes = args.hits or [1_000_000, 10_000_000]
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}")
    print(f"{'store':<22} {'hits':>11} {'what':<30} {'time':>10} {'rate':>20} {'CPU':>10} {'load':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            store = open_store(f"sqlite://{tmp}/bench-{n}.db")
            fill_s = fill(store, n)
            print(f"{'SQLite (fill)':<22} {n:>11,} {'insert_many, 10k per batch':<30} {fill_s:>8.2f} s "
                  f"{n / fill_s:>13,.0f} hits/s", flush=True)
            measure(store, n, "SQLite", args.repeat)
            store.close()
            os.remove(f"{tmp}/bench-{n}.db")
        if args.mongodb:
            proc, uri = start_wire_server()
            try:
                store = open_store(uri)
                fill(store, min(sizes))
                measure(store, min(sizes), "MongoDB (wire server)", args.repeat)
                store.close()
            finally:
                proc.stdin.close()
                proc.wait()


if __name__ == "__main__":
    main()
