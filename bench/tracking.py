"""CPU per hit of visitor ids (request path) and of enrichment (writer), in-process, on one core.

Run from a clone, with the Python of the virtualenv where Mongol is installed::

    python bench/tracking.py [--hits 50000] [--agents 500]

Request path: PixelApp answering GET requests (a WSGI environ as mongol's HTTP server builds it) and
appending each hit to a real spool in a temporary folder, without and with the tracker (daily-hash
visitor id and address anonymisation; then cookie mode). Writer: Writer.step storing the spooled hits
into a fresh SQLite store in batches of 2000, without enrichment, with User-Agent analysis (bots,
browser, OS, device: `--agents` distinct User-Agents, so mostly cache hits, as real traffic), with
GeoIP too (a database of 1000 networks built with mmdb-writer, a test dependency), and with every
User-Agent distinct (the worst case: nothing cached). Prints microseconds of CPU per hit.
"""

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

from mongol.app import PixelApp
from mongol.enrich import make_enricher
from mongol.hit import hit_from_environ
from mongol.journal import Journal, Recorder, Spool
from mongol.stores.sqlite import SQLiteStore
from mongol.tracking import Salts, Tracker, Tracking
from mongol.writer import Writer

BASE_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{v} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (compatible; Googlebot/2.{v}; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Linux; Android 14; Pixel {v}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Mobile "
    "Safari/537.36",
]


def agents(n: int) -> list[str]:
    return [BASE_AGENTS[i % len(BASE_AGENTS)].format(v=i) for i in range(n)]


def environs(n: int, uas: list[str]) -> list[dict]:
    rng = random.Random(1)
    return [{"REQUEST_METHOD": "GET", "PATH_INFO": "/pixel.gif", "QUERY_STRING": f"site=example.com&url=/p/{i % 300}",
             "REMOTE_ADDR": f"198.51.{rng.randrange(256)}.{rng.randrange(256)}", "HTTP_USER_AGENT": rng.choice(uas),
             "HTTP_REFERER": "https://example.com/p", "HTTP_HOST": "stats.example.com"} for i in range(n)]


def cpu_per_call(fn, items) -> float:
    start = time.process_time()
    for item in items:
        fn(item)
    return (time.process_time() - start) / len(items) * 1e6


def making_cost(folder: Path, envs: list[dict], tracking: Tracking | None, repeats: int = 5) -> float:
    """CPU per hit of making the hit alone (no spool, no HTTP): hit_from_environ, or the tracker's make."""
    tracker = Tracker(tracking, Salts(folder / "salts")) if tracking is not None else None
    make = tracker.make if tracker is not None else hit_from_environ
    return min(cpu_per_call(make, envs) for _ in range(repeats))


def request_path(folder: Path, envs: list[dict], tracking: Tracking | None, spool_name: str = "spool") -> float:
    spool = folder / spool_name
    shutil.rmtree(spool, ignore_errors=True)
    recorder = Recorder(Journal(spool))
    tracker = Tracker(tracking, Salts(spool)) if tracking is not None else None
    app = PixelApp(recorder, tracker=tracker)

    def start_response(status: str, headers: list) -> None:
        pass

    cost = cpu_per_call(lambda env: app(env, start_response), envs)
    recorder.close()
    return cost


def writer_cost(folder: Path, name: str, make, rounds: int = 3, source: str = "spool") -> float:
    """CPU per hit to store every hit of the spool `folder/source` into a new store (the best of `rounds`;
    each round copies the spool and calls `make` for a fresh enrichment, with empty caches)."""
    costs = []
    for n in range(rounds):
        spool_dir = folder / f"spool-{name}-{n}"
        shutil.copytree(folder / source, spool_dir)
        store = SQLiteStore(str(folder / f"{name}-{n}.db"))
        writer = Writer(store, Spool(spool_dir), batch_size=2000, enrich=make())
        start = time.process_time()
        while writer.step():
            pass
        costs.append((time.process_time() - start) / max(writer.stored, 1) * 1e6)
        store.close()
    return min(costs)


def geoip_database(path: Path) -> Path:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    for i in range(1000):
        network = f"198.51.{i % 256}.0/24" if i < 256 else f"10.{i // 256}.{i % 256}.0/24"
        writer.insert_network(IPSet([network]), {"country": {"iso_code": "DE"}, "city": {"names": {"en": f"C{i}"}}})
    writer.to_db_file(str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=50_000)
    parser.add_argument("--agents", type=int, default=500)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mongol-bench-"))
    try:
        envs = environs(args.hits, agents(args.agents))
        print(f"{args.hits} hits, {args.agents} distinct User-Agents; microseconds of CPU per hit")
        print(f"making the hit, as before:                 {making_cost(folder, envs, None):6.1f}")
        print(f"making the hit, default tracker:           {making_cost(folder, envs, Tracking()):6.1f}")
        print(f"making the hit, cookie mode (all new):     {making_cost(folder, envs, Tracking(cookie=True)):6.1f}")
        print(f"request path, no tracker (as before):      {request_path(folder, envs, None):6.1f}")
        print(f"request path, cookie mode:                 {request_path(folder, envs, Tracking(cookie=True)):6.1f}")
        geo = geoip_database(folder / "geo.mmdb")
        with_geo = Tracking(geoip=geo)
        print(f"request path, default and --geoip:         {request_path(folder, envs, with_geo, 'geo'):6.1f}")
        print(f"request path, default (hashed id, anon.):  {request_path(folder, envs, Tracking()):6.1f}")
        runs = [
            ("writer, without the hook (enrich=None):   ", lambda: None, "spool"),
            ("writer, no enrichment (--no-ua-parse):    ", lambda: make_enricher(Tracking(parse_agents=False)),
             "spool"),
            ("writer, User-Agents (default):            ", lambda: make_enricher(Tracking()), "spool"),
            ("writer, User-Agents and GeoIP:            ", lambda: make_enricher(with_geo), "geo"),
        ]
        for n, (label, make, source) in enumerate(runs):
            print(f"{label} {writer_cost(folder, str(n), make, source=source):6.1f}")
        request_path(folder, environs(args.hits // 5, agents(args.hits // 5)), Tracking())
        worst = writer_cost(folder, "new", lambda: make_enricher(Tracking()), rounds=1)
        print(f"writer, every User-Agent new (worst case): {worst:6.1f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
