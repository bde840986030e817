"""Server CPU per request: mongol.httpserver against gevent's pywsgi, the same trivial GIF app, the same load.

Run from a clone, with the Python of the virtualenv where Mongol is installed::

    python bench/httpserver.py [--duration 8] [--connections 50] [--rounds 2] [--py-spy FILE]

Each server runs in its own subprocess on 127.0.0.1 (pywsgi with TCP_NODELAY on accepted sockets and
no access log) and serves an app that returns a precomputed 43-byte GIF as a one-item list. Each round
drives pywsgi, then mongol, with `wrk -t1 -cN -dDs --latency -s bench/pixel.lua` after a 2 s warm-up,
and reads utime+stime of the server from /proc/PID/stat before and after the measured run.

With --py-spy FILE, one more run drives mongol's server under py-spy (`record --format raw`, collapsed
stacks, idle samples left out) and prints where its samples went; that run's figures are not in the table
(py-spy stops the process to sample it).
"""

import argparse
import collections
import contextlib
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pixel import BenchError, WrkResult, cpu_model, cpu_seconds, find_tool, parse_wrk, run_benchmark, stop_group

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_SCRIPT = HERE / "pixel.lua"
WARMUP_SECONDS = 2

SERVER = r'''
import sys
from gevent import monkey
monkey.patch_all()
import socket

GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
HEADERS = [("Content-Type", "image/gif"), ("Content-Length", str(len(GIF))),
           ("Cache-Control", "no-cache, no-store, must-revalidate")]

def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [GIF]

if sys.argv[1] == "pywsgi":
    from gevent.pywsgi import WSGIServer

    class Server(WSGIServer):
        def handle(self, sock, address):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)

    server = Server(("127.0.0.1", 0), app, log=None)
else:
    from mongol.httpserver import WSGIServer

    server = WSGIServer(("127.0.0.1", 0), app)
server.start()
print(server.server_port, flush=True)
server.serve_forever()
'''


@dataclass
class Run:
    server: str
    wrk: WrkResult
    cpu_us_per_request: float


def start_server(kind: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, kind], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        stop_group(proc)
        raise BenchError(f"the {kind} server did not start (exit status {proc.poll()})")
    return proc, int(line)


def run_wrk(wrk: str, port: int, connections: int, seconds: int) -> WrkResult:
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(WRK_SCRIPT),
               f"http://127.0.0.1:{port}/"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk failed with status {done.returncode}: {done.stderr.strip() or done.stdout}")
    result = parse_wrk(done.stdout)
    if result.requests == 0 or result.non_2xx or result.socket_errors:
        raise BenchError(f"wrk saw failures against port {port}:\n{done.stdout}")
    return result


def measure(name: str, proc: subprocess.Popen, port: int, wrk: str, args: argparse.Namespace) -> Run:
    run_wrk(wrk, port, args.connections, WARMUP_SECONDS)
    before = cpu_seconds(proc.pid)
    result = run_wrk(wrk, port, args.connections, args.duration)
    used = cpu_seconds(proc.pid) - before
    return Run(name, result, used * 1e6 / result.requests)


def describe(run: Run) -> str:
    w = run.wrk
    return (f"{w.req_per_s:>9,.0f} req/s  p50 {w.p50_ms:6.2f} ms  p99 {w.p99_ms:6.2f} ms  "
            f"{run.cpu_us_per_request:6.1f} us CPU/request  ({w.requests:,} requests)")


def profile(proc: subprocess.Popen, port: int, wrk: str, args: argparse.Namespace, out: Path) -> None:
    """Record mongol's server with py-spy during one wrk run and print the heaviest functions."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        raise BenchError(f"py-spy not found next to {sys.executable}: pip install py-spy")
    spy = subprocess.Popen([str(py_spy), "record", "--format", "raw", "--rate", "500", "-o", str(out),
                            "--pid", str(proc.pid), "--duration", str(args.duration + 1)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    run_wrk(wrk, port, args.connections, args.duration)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed: {err.strip()}")
    print()
    print(f"py-spy profile of mongol under load: {out} (collapsed stacks; flamegraph.pl or speedscope read it)")
    for line in summarize_profile(out):
        print(line)


def summarize_profile(path: Path, top: int = 12) -> list[str]:
    """Share of samples per function (self and with callees) and per source line, from collapsed stacks."""
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    lines_own: collections.Counter = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        functions = [f.split(" (")[0] for f in frames]
        own[functions[-1]] += n
        for function in set(functions):
            total[function] += n
        lines_own[frames[-1].replace(str(ROOT) + "/", "")] += n
    if not samples:
        return ["no samples"]
    report = [f"{samples} samples (idle ones left out); self = in the function itself, total = with its callees",
              f"{'self %':>7} {'total %':>8}  function"]
    report += [f"{100 * n / samples:7.1f} {100 * total[f] / samples:8.1f}  {f}" for f, n in own.most_common(top)]
    report += ["", f"{'self %':>7}  line"]
    report += [f"{100 * n / samples:7.1f}  {f}" for f, n in lines_own.most_common(top)]
    return report


def benchmark(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    wrk = find_tool("wrk")
    if wrk is None:
        raise BenchError("wrk not found: install with `apt-get install wrk`")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    servers = {}
    for name in ("pywsgi", "mongol"):
        proc, port = start_server(name)
        stack.callback(stop_group, proc)
        stack.callback(proc.stdout.close)
        servers[name] = (proc, port)
    print(f"load:    wrk -t1 -c{args.connections} -d{args.duration}s --latency -s bench/{WRK_SCRIPT.name} "
          f"(after a {WARMUP_SECONDS} s warm-up), both servers on 127.0.0.1")
    runs = []
    for round_no in range(1, args.rounds + 1):
        for name, (proc, port) in servers.items():
            run = measure(name, proc, port, wrk, args)
            runs.append(run)
            print(f"round {round_no}/{args.rounds} {name:6} {describe(run)}", flush=True)
    print()
    cpu = {}
    for name in servers:
        cpu[name] = statistics.median(r.cpu_us_per_request for r in runs if r.server == name)
        rate = statistics.median(r.wrk.req_per_s for r in runs if r.server == name)
        print(f"{name:6}: median {rate:9,.0f} req/s, {cpu[name]:6.1f} us CPU/request")
    print(f"CPU per request, mongol/pywsgi: {cpu['mongol'] / cpu['pywsgi']:.2f}")
    if args.py_spy:
        profile(*servers["mongol"], wrk, args, Path(args.py_spy))
    return 0


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=positive, default=8, help="seconds per measured run (default 8)")
    parser.add_argument("--connections", type=positive, default=50, help="wrk keep-alive connections (default 50)")
    parser.add_argument("--rounds", type=positive, default=2, help="rounds of pywsgi then mongol (default 2)")
    parser.add_argument("--py-spy", metavar="FILE", help="also profile mongol's server with py-spy into FILE")
    return run_benchmark("httpserver.py", benchmark, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
