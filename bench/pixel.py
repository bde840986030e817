"""Server CPU per tracking request: mongol-serve against nginx's `empty_gif`, under the same wrk load.

Run from a clone, with the Python of the virtualenv where Mongol is installed (`pip install -e .`)::

    python bench/pixel.py [--duration 10] [--connections 50] [--rounds 3]

Both servers listen on 127.0.0.1 in a temporary folder (nginx with its own prefix and one process,
mongol-serve with a fresh SQLite store). Each round drives nginx, then mongol, with
`wrk -t1 -cN -dDs --latency -s bench/pixel.lua` after a short warm-up. A run's CPU is utime+stime
(children's included) of the server and all its descendants, read from /proc before and after the
run; /proc/PID/stat already sums every thread of a process. After the last round mongol-serve gets
SIGTERM, and the hits in its store are compared with the requests wrk saw answered 200.

The figure the project tracks is mongol's CPU per request over nginx's (target <= 4.5, goal 3.0): CPU per
request, unlike req/s, hardly depends on wrk sharing the cores. Exit status: 0 when the benchmark
ran and every answered hit reached the store, 1 otherwise, 130 on Ctrl-C.
"""

import argparse
import contextlib
import http.client
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "pixel.lua"
HOST = "127.0.0.1"
WARMUP_SECONDS = 2
START_TIMEOUT = 15.0
STOP_TIMEOUT = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
INSTALL_HINT = "sudo apt-get install -y wrk nginx-light"
TARGET_RATIO = 4.5
GOAL_RATIO = 3.0
T = TypeVar("T")

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # mongol-serve never closes a keep-alive connection: nor should nginx (its default is 1000 requests).
    keepalive_requests 1000000000;
    server {{
        listen {host}:{port};
        location / {{ empty_gif; }}
    }}
}}
"""


class BenchError(Exception):
    """The benchmark cannot go on; the message says why, in one sentence."""


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log: Path
    health_path: str
    stores_hits: bool = False

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"


@dataclass
class WrkResult:
    requests: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


@dataclass
class Run:
    server: str
    wrk: WrkResult
    cpu_us_per_request: float


# ---- tools and machine ------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """`name` on PATH, or in the sbin folders a non-root PATH often lacks (nginx lives in /usr/sbin)."""
    extra = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(name) or shutil.which(name, path=extra)


def find_tools() -> tuple[str, str, str]:
    """wrk, nginx and mongol-serve, or a BenchError saying what to install."""
    wrk, nginx = find_tool("wrk"), find_tool("nginx")
    if wrk is None or nginx is None:
        missing = " and ".join(name for name, path in (("wrk", wrk), ("nginx", nginx)) if path is None)
        raise BenchError(f"{missing} not found: install with `{INSTALL_HINT}`")
    serve = Path(sys.executable).parent / "mongol-serve"
    if not serve.exists():
        raise BenchError(f"no mongol-serve next to {sys.executable}: run this script with the Python of the "
                         "virtualenv where Mongol is installed (pip install -e .)")
    return wrk, nginx, str(serve)


def tool_version(command: list[str]) -> str:
    """The first line a `--version`-like command prints (wrk -v exits 1, nginx -v writes to stderr)."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    line = (done.stdout + done.stderr).strip().splitlines()[0]
    return line.split(" Copyright")[0].removeprefix("nginx version: ")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_lines(wrk: str, nginx: str) -> list[str]:
    from mongol import __version__

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine:  {cpu_model()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
        f"{platform.system()} {platform.release()}, load average {load}",
        f"software: Python {platform.python_version()}, {tool_version([nginx, '-v'])}, "
        f"{tool_version([wrk, '-v'])}, mongol {__version__}",
    ]


# ---- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `predicate` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
    return result


def http_get(port: int, path: str) -> tuple[int, bytes] | None:
    """Status and body of a GET on loopback, or None when nothing answers."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def spawn(command: list[str], log: Path) -> subprocess.Popen:
    """Start a server in its own session: Ctrl-C reaches only this script, which stops the whole group."""
    with log.open("ab") as out:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_ready(server: Server) -> None:
    """Wait until the server answers its health path with 200 (it must not exit meanwhile)."""

    def answered() -> bool | None:
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited with status {server.proc.returncode}:\n{tail(server.log)}")
        reply = http_get(server.port, server.health_path)
        return reply is not None and reply[0] == 200

    wait_until(answered, START_TIMEOUT, f"{server.name} to answer on {server.url}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group a server leads (it and any workers), then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, or the group never empties
            if not group_alive(proc.pid):
                return
            time.sleep(0.02)


def start_nginx(nginx: str, tmp: Path) -> Server:
    prefix = tmp / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, host=HOST, port=port))
    log = prefix / "error.log"
    proc = spawn([nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", str(log)], log)
    server = Server("nginx", proc, port, log, "/pixel.gif")
    wait_ready(server)
    return server


def start_mongol(serve: str, tmp: Path, db_uri: str) -> Server:
    log = tmp / "mongol-serve.log"
    proc = spawn([serve, f"{HOST}:0", "--db", db_uri], log)

    def port() -> int | None:
        if proc.poll() is not None:
            raise BenchError(f"mongol-serve exited with status {proc.returncode}:\n{tail(log)}")
        found = re.search(r"listening on http://[^:]+:(\d+)/", log.read_text(errors="replace"))
        return int(found.group(1)) if found else None

    server = Server("mongol", proc, wait_until(port, START_TIMEOUT, "mongol-serve to listen"), log, "/healthz",
                    stores_hits=True)
    wait_ready(server)
    return server


def drain(server: Server) -> None:
    """mongol stores hits a little after answering: wait until none is spooled and the stored count holds,
    so that a run's CPU includes storing its hits and the next run's does not."""
    if not server.stores_hits:
        return
    last: list[str] = []

    def settled() -> bool | None:
        reply = http_get(server.port, "/healthz")
        state = re.search(r"(\d+) bytes spooled, (\d+) stored", reply[1].decode()) if reply else None
        if not state or state.group(1) != "0":
            return False
        last.append(state.group(2))
        return len(last) >= 2 and last[-1] == last[-2]

    wait_until(settled, 30.0, "mongol-serve to store its queued hits")


# ---- CPU of a process tree --------------------------------------------------------------------


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 1 is the parent, 11-14 the CPU times)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # the process is gone
        return None
    return text[text.rindex(")") + 2:].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (a process started by any of their threads has them as parent)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := stat_fields(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """utime+stime+cutime+cstime of a process tree: every thread of each process, and exited children."""
    ticks = 0
    for pid in process_tree(root):
        if fields := stat_fields(pid):
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


# ---- wrk --------------------------------------------------------------------------------------

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_latency(text: str, percent: int) -> float:
    found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    if not found:
        raise BenchError(f"no {percent}% latency in wrk's output:\n{text}")
    return float(found.group(1)) * UNITS_MS[found.group(2)]


def parse_wrk(text: str) -> WrkResult:
    """wrk --latency's report. Its `Non-2xx or 3xx responses` counts statuses >= 400."""
    requests = re.search(r"^\s*(\d+) requests in ", text, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not requests or not rate:
        raise BenchError(f"cannot read wrk's output:\n{text}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(
        requests=int(requests.group(1)),
        req_per_s=float(rate.group(1)),
        p50_ms=parse_latency(text, 50),
        p99_ms=parse_latency(text, 99),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def run_wrk(wrk: str, url: str, connections: int, seconds: int) -> WrkResult:
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(WRK_SCRIPT), url]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {seconds + 30} s") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk failed with status {done.returncode}: {done.stderr.strip() or done.stdout}")
    result = parse_wrk(done.stdout)
    if result.requests == 0:
        raise BenchError(f"wrk completed no request against {url}:\n{done.stdout}")
    return result


def measure(server: Server, wrk: str, connections: int, seconds: int) -> tuple[WrkResult, Run]:
    """A warm-up, then a measured run; returns both (the warm-up's requests count for the store check)."""
    warmup = run_wrk(wrk, server.url, connections, WARMUP_SECONDS)
    drain(server)
    before = cpu_seconds(server.proc.pid)
    result = run_wrk(wrk, server.url, connections, seconds)
    drain(server)
    used = cpu_seconds(server.proc.pid) - before
    return warmup, Run(server.name, result, used * 1e6 / result.requests)


def describe(run: Run) -> str:
    w = run.wrk
    text = (f"{w.req_per_s:>9,.0f} req/s  p50 {w.p50_ms:6.2f} ms  p99 {w.p99_ms:6.2f} ms  "
            f"{run.cpu_us_per_request:6.1f} us CPU/request  ({w.requests:,} requests")
    if w.non_2xx:
        text += f", {w.non_2xx:,} non-2xx"
    if w.socket_errors:
        text += f", {w.socket_errors:,} socket errors"
    return text + ")"


# ---- the store check --------------------------------------------------------------------------


def stop_mongol(server: Server) -> int:
    """SIGTERM mongol-serve (it stores every queued hit first) and wait for it; its exit status."""
    server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"mongol-serve did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM") from exc


def store_count(db_uri: str) -> int:
    from mongol.stores import open_store

    store = open_store(db_uri)
    try:
        return store.count()
    finally:
        store.close()


def store_check(stored: int, answered: int, in_flight: int) -> tuple[bool, str]:
    """wrk stops with one request in flight per connection: the server may store those too, unseen by wrk."""
    if stored < answered:
        return False, f"LOST {answered - stored:,} hits: {stored:,} stored, {answered:,} answered 200"
    if stored > answered + in_flight:
        return False, (f"{stored - answered:,} more hits stored than answered 200, beyond the {in_flight:,} "
                       "requests that can be in flight when wrk stops")
    return True, (f"all {answered:,} hits answered 200 reached the store ({stored:,} stored; the "
                  f"{stored - answered:,} extra were in flight when wrk stopped, at most {in_flight:,})")


def log_problems(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line for line in text.splitlines() if re.search(r"WARNING|ERROR|CRITICAL|Traceback|Error\b", line)]


# ---- report -----------------------------------------------------------------------------------


def summary_table(runs: list[Run]) -> tuple[list[str], dict[str, float]]:
    """One line per server with medians over rounds; also the median CPU us/request per server."""
    lines = [f"{'':8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'CPU us/req':>12}{'non-2xx':>10}"]
    cpu: dict[str, float] = {}
    for name in ("nginx", "mongol"):
        mine = [r for r in runs if r.server == name]
        cpu[name] = statistics.median(r.cpu_us_per_request for r in mine)
        lines.append(f"{name:8}{statistics.median(r.wrk.req_per_s for r in mine):>10,.0f}"
                     f"{statistics.median(r.wrk.p50_ms for r in mine):>10.2f}"
                     f"{statistics.median(r.wrk.p99_ms for r in mine):>10.2f}"
                     f"{cpu[name]:>12.1f}{sum(r.wrk.non_2xx for r in mine):>10,}")
    return lines, cpu


def benchmark(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    wrk, nginx, serve = find_tools()
    for line in machine_lines(wrk, nginx):
        print(line)
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mongol-bench-")))
    db_uri = f"sqlite://{tmp / 'hits.db'}"
    servers = {"nginx": start_nginx(nginx, tmp)}
    stack.callback(stop_group, servers["nginx"].proc)
    servers["mongol"] = start_mongol(serve, tmp, db_uri)
    stack.callback(stop_group, servers["mongol"].proc)
    print(f"load:     wrk -t1 -c{args.connections} -d{args.duration}s --latency -s {WRK_SCRIPT.name} "
          f"(after a {WARMUP_SECONDS} s warm-up), nginx on {servers['nginx'].url}, mongol on {servers['mongol'].url}")
    print()

    runs: list[Run] = []
    mongol_results: list[WrkResult] = []
    for round_no in range(1, args.rounds + 1):
        for name in ("nginx", "mongol"):
            warmup, run = measure(servers[name], wrk, args.connections, args.duration)
            runs.append(run)
            if name == "mongol":
                mongol_results += [warmup, run.wrk]
            print(f"round {round_no}/{args.rounds} {name:6} {describe(run)}", flush=True)

    status = stop_mongol(servers["mongol"])
    stored = store_count(db_uri)
    logged = re.search(r"stopped, (\d+) hits stored in this run", servers["mongol"].log.read_text(errors="replace"))
    answered = sum(r.requests - r.non_2xx for r in mongol_results)
    ok, verdict = store_check(stored, answered, args.connections * len(mongol_results))

    lines, cpu = summary_table(runs)
    ratio = cpu["mongol"] / cpu["nginx"]
    print()
    print(f"median of {args.rounds} round(s), {args.duration} s each, {args.connections} connections:")
    print("\n".join(lines))
    print()
    print(f"CPU per request, mongol/nginx: {ratio:.1f} "
          f"(target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'not met'}; "
          f"goal {GOAL_RATIO}: {'met' if ratio <= GOAL_RATIO else 'not met'})")
    # Each round's mongol over the nginx run just before it: a drift in the machine's speed (a shared
    # machine's neighbours) moves both alike, so these say the same more steadily than the medians.
    per_round = [m.cpu_us_per_request / n.cpu_us_per_request for n, m in zip(runs[::2], runs[1::2], strict=True)]
    print(f"          each round: {', '.join(f'{r:.1f}' for r in per_round)}; "
          f"median {statistics.median(per_round):.1f}")
    print(f"store:    {'OK' if ok else 'FAILED'}: {verdict}")
    print(f"mongol-serve: exit status {status}, its log says "
          f"{logged.group(1) + ' hits stored' if logged else 'nothing about stopping'}")
    problems = log_problems(servers["mongol"].log) + [f"nginx: {p}" for p in log_problems(servers["nginx"].log)]
    print(f"server logs: {len(problems)} warning/error line(s)" + (":" if problems else ""))
    for line in problems[:10]:
        print(f"    {line}")
    consistent = status == 0 and logged is not None and int(logged.group(1)) == stored
    return 0 if ok and consistent else 1


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=positive, default=10, help="seconds per measured run (default 10)")
    parser.add_argument("--connections", type=positive, default=50, help="wrk keep-alive connections (default 50)")
    parser.add_argument("--rounds", type=positive, default=3, help="rounds of nginx then mongol (default 3)")
    return parser


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """A SIGTERM to this script unwinds it like Ctrl-C does, so that the servers are stopped too."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_benchmark(name: str, benchmark: Callable[[argparse.Namespace, contextlib.ExitStack], int],
        args: argparse.Namespace) -> int:
    """Run a benchmark that starts servers on `stack`: the exit status, every server stopped on the way out."""
    try:
        with sigterm_as_exit(), contextlib.ExitStack() as stack:
            return benchmark(args, stack)
    except BenchError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted, servers stopped", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("pixel.py", benchmark, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
