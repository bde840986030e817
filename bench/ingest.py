"""Ingest rate: how many nginx log lines per second mongol-ingest stores, and how many are lost.

Run from a clone, with the Python of the virtualenv where Mongol is installed (`pip install -e .`)::

    python bench/ingest.py [--rates 0,5000,20000] [--duration 5] [--db URI]

For each rate, a fresh mongol-ingest listens on a free loopback port with a fresh SQLite store in a
temporary folder (or a new database under --db for MongoDB), and this script sends it datagrams exactly
as nginx does (`<190>TIMESTAMP mongol: {JSON}`, in scripts/nginx-mongol.conf's format: realistic pixel
requests with Referer and User-Agent) for --duration seconds, paced to the rate (0: as fast as one
sender process can). Then mongol-ingest gets SIGTERM, which stores what is spooled, and the figures are:
sent; received (mongol-ingest's own count); dropped by the kernel (UDP RcvbufErrors of /proc/net/snmp,
machine-wide); stored (counted in the store); lost (sent but not stored); taken/s (lines received per
second of sending); the receiving process's CPU per line; and how long the stop took (the writer
storing what was still spooled: when it is long, the store, not the receiving, was the limit).

Exit status: 0 when the benchmark ran, 1 if it could not, 130 on Ctrl-C.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from pixel import BenchError, store_count, wait_until

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 600.0  # the writer may be far behind after a flood: let it store everything
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
PAGES = ["/", "/blog/", "/blog/2026/11/a-post-about-something?ref=feed", "/about", "/products/widget-3000",
         "/search?q=nginx+syslog", "/docs/install#debian", "/contact"]
AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
]


def datagrams(count: int = 1000) -> list[bytes]:
    """Lines as nginx sends them for pixel requests, in scripts/nginx-mongol.conf's format."""
    now = time.time()
    t = time.gmtime(now)
    header = f"<190>{MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} mongol: "
    lines = []
    for i in range(count):
        page = PAGES[i % len(PAGES)]
        entry = (f'{{"time":"{now + i / 1000:.3f}","addr":"198.51.100.{i % 250}","method":"GET",'
                 f'"uri":"/pixel.gif?title=Page%20{i}&v={i % 7}","status":"200",'
                 f'"referer":"https://www.example.com{page}","ua":"{AGENTS[i % len(AGENTS)]}","xff":""}}')
        lines.append((header + entry).encode())
    return lines


def udp_rcvbuf_errors() -> int:
    """Datagrams the kernel dropped for a full receive buffer, since boot, machine-wide."""
    rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return int(dict(zip(rows[0][1:], rows[1][1:], strict=True))["RcvbufErrors"])


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (every thread of it)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rx_queue(port: int) -> int:
    """Bytes waiting in the receive buffer of the UDP socket bound to `port` on loopback."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            return int(fields[4].split(":")[1], 16)
    raise BenchError(f"no UDP socket on port {port}")


def start_ingest(db_uri: str, folder: Path) -> tuple[subprocess.Popen, int, Path]:
    ingest = Path(sys.executable).parent / "mongol-ingest"
    if not ingest.exists():
        raise BenchError(f"no mongol-ingest next to {sys.executable}: run this script with the Python of the "
                         "virtualenv where Mongol is installed (pip install -e .)")
    log = folder / "ingest.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ingest), f"{HOST}:0", "--db", db_uri, "--spool", str(folder / "spool"),
                                 "--drain-timeout", str(STOP_TIMEOUT)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def port() -> int | None:
        if proc.poll() is not None:
            raise BenchError(f"mongol-ingest exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        found = re.search(r"listening on udp://[^:]+:(\d+) ", log.read_text(errors="replace"))
        return int(found.group(1)) if found else None

    return proc, wait_until(port, START_TIMEOUT, "mongol-ingest to listen"), log


def blast(port: int, rate: int, duration: float, lines: list[bytes]) -> tuple[int, float]:
    """Send for `duration` seconds at `rate` lines/s (0: flat out); how many were sent, and in how long."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    sendto, address, n = sock.sendto, (HOST, port), len(lines)
    sent = 0
    start = time.monotonic()
    end = start + duration
    while (now := time.monotonic()) < end:
        due = int((now - start) * rate) + 1 if rate else sent + 256
        while sent < due:
            try:
                sendto(lines[sent % n], address)
            except BlockingIOError:  # the sender's own buffer: try again
                continue
            sent += 1
        if rate:
            time.sleep(0.0005)
    elapsed = time.monotonic() - start
    sock.close()
    return sent, elapsed


def one_run(rate: int, duration: float, db_base: str | None, lines: list[bytes]) -> dict:
    with tempfile.TemporaryDirectory(prefix="mongol-ingest-bench-") as tmp:
        folder = Path(tmp)
        if db_base:
            db_uri = f"{db_base.rstrip('/')}/mongol_bench_{uuid.uuid4().hex[:8]}"
        else:
            db_uri = f"sqlite://{folder}/hits.db"
        proc, port, log = start_ingest(db_uri, folder)
        try:
            drops_before, cpu_before = udp_rcvbuf_errors(), cpu_seconds(proc.pid)
            sent, elapsed = blast(port, rate, duration, lines)
            # mongol-ingest may still be working through its socket buffer: wait until it has taken it all
            wait_until(lambda: rx_queue(port) == 0, START_TIMEOUT, "mongol-ingest to read its socket buffer")
            cpu_after = cpu_seconds(proc.pid)
            drops = udp_rcvbuf_errors() - drops_before
            stopping = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            code = proc.wait(STOP_TIMEOUT + 60)
            drain = time.monotonic() - stopping
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text = log.read_text(errors="replace")
        if code != 0:
            raise BenchError(f"mongol-ingest exited with {code}:\n{text}")
        received, spooled = map(int, re.search(r"(\d+) datagrams received, (\d+) hits spooled", text).groups())
        stored = store_count(db_uri)
        if db_base:
            from pymongo import MongoClient

            with MongoClient(db_base) as client:
                client.drop_database(db_uri.rsplit("/", 1)[1])
    cpu_per_line = (cpu_after - cpu_before) * 1e6 / max(received, 1)
    return {"rate": rate, "sent": sent, "elapsed": elapsed, "received": received, "kernel_drops": drops,
            "spooled": spooled, "stored": stored, "lost": sent - stored, "cpu_us_per_line": cpu_per_line,
            "drain_s": drain}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Lines per second mongol-ingest stores, and how many are lost.")
    parser.add_argument("--rates", default="0", help="comma-separated send rates in lines/s; 0 is as fast as "
                                                      "one sender can (default 0)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of sending per rate (default 5)")
    parser.add_argument("--db", metavar="URI", help="a MongoDB server (mongodb://host:port) instead of a fresh "
                                                    "SQLite file; each run uses a new database, dropped after")
    args = parser.parse_args(argv)
    try:
        rates = [int(r) for r in args.rates.split(",")]
    except ValueError:
        print(f"ingest.py: error: bad --rates {args.rates!r}: expected integers such as 0,5000,20000", file=sys.stderr)
        return 1
    from mongol import __version__

    print(f"mongol {__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"store: {'MongoDB ' + args.db if args.db else 'SQLite (fresh file)'}, {args.duration:g} s per rate; "
          f"net.core.rmem_max {Path('/proc/sys/net/core/rmem_max').read_text().strip()}")
    print(f"{'asked/s':>8} {'sent':>9} {'sent/s':>8} {'received':>9} {'kernel drop':>11} {'stored':>9} "
          f"{'lost':>7} {'loss':>6} {'taken/s':>8} {'µs CPU/line':>11} {'drain s':>7}")
    lines = datagrams()
    try:
        for rate in rates:
            r = one_run(rate, args.duration, args.db, lines)
            print(f"{r['rate'] or 'max':>8} {r['sent']:>9} {r['sent'] / r['elapsed']:>8.0f} {r['received']:>9} "
                  f"{r['kernel_drops']:>11} {r['stored']:>9} {r['lost']:>7} {r['lost'] / r['sent']:>6.1%} "
                  f"{r['received'] / r['elapsed']:>8.0f} {r['cpu_us_per_line']:>11.1f} {r['drain_s']:>7.1f}",
                  flush=True)
            if r["spooled"] != r["stored"]:
                print(f"{'':>8} {r['spooled'] - r['stored']} spooled hits were not stored", flush=True)
    except BenchError as exc:
        print(f"ingest.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
