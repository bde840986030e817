"""mongol-serve's processes: a supervisor, the serving workers, and one writer.

    supervisor ── N workers (gevent): accept on the shared socket, answer, append hits to the spool
               └─ writer: drains the spool into the store

The supervisor binds the socket, starts the writer (which opens the store and says whether it
could), then the workers; it restarts a child that dies, forwards SIGHUP (reopen log files),
and on SIGTERM/SIGINT stops the workers first (no new hits), then the writer, which stores what
is spooled before it exits. Children get SIGKILL if the supervisor dies, so a `kill -9` of
mongol-serve leaves no orphan holding the port; the spool on disk keeps their hits for the next
start. The supervisor never imports gevent's monkey-patching or pymongo: each child does, after
the fork.
"""

import ctypes
import gc
import logging
import os
import re
import select
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mongol import metrics
from mongol.assets import served_urls
from mongol.errors import MongolError
from mongol.tracking import Salts, Tracker, Tracking

log = logging.getLogger("mongol.serve")
SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
PR_SET_PDEATHSIG = 1
WORKER_STOP_TIMEOUT = 3.0  # a stopping worker: the server's own 2 s for requests in flight, and a margin
STORE_OPEN_TIMEOUT = 60.0
MAX_REQUEST_LINE = 8192  # longer request lines get 414 from the HTTP server (the query limit is 8000 bytes)


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    db_uri: str
    spool: Path
    workers: int
    trusted: tuple = ()
    batch_size: int = 5000
    flush_interval: float = 0.1
    max_pending: int = 0  # hits held in memory while the spool's disk refuses (0: answer 503)
    access_log: bool = False
    fsync: bool = False
    drain_timeout: float = 30.0
    tracking: Tracking = field(default_factory=Tracking)  # visitor ids, addresses, bots, enrichment (mongol.tracking)
    http: dict = field(default_factory=dict)  # WSGIServer limits: header_timeout, body_timeout, max_connections
    status_allow: tuple | None = None  # who may read /healthz and /metrics (None: loopback)


def reopen_log_files() -> None:
    """SIGHUP: reopen every log file (after logrotate moved it)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()
            finally:
                handler.release()


def _fork(target, *args: object) -> int:  # noqa: ANN001 - any child entry point
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        # Signals stay blocked, as in the supervisor, until the child has its own handlers.
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)
        code = target(*args)
    except BaseException:
        log.exception("process %d failed", os.getpid())
    finally:
        logging.shutdown()
        os._exit(code)


def _writer_main(settings: Settings, ready: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us in order
    from mongol.enrich import make_enricher
    from mongol.errors import StoreUnavailable
    from mongol.journal import Spool
    from mongol.stores import open_store
    from mongol.writer import Writer

    store, waiting = None, None
    try:
        enrich = make_enricher(settings.tracking)
        try:
            store = open_store(settings.db_uri)
        except StoreUnavailable as exc:  # configured right, not answering: serve, and keep trying
            waiting = str(exc)
        spool = Spool(settings.spool)
        spool.claim(_uri_for_logs(settings.db_uri))
    except (MongolError, OSError) as exc:
        message = str(exc) if isinstance(exc, MongolError) else f"cannot use the spool {settings.spool}: {exc}"
        os.write(ready, b"error " + message.encode())
        return 1
    os.write(ready, b"waiting " + waiting.encode() if waiting else b"ok " + store.description.encode())
    os.close(ready)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reopen_log_files())
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    from mongol.metrics import Metrics

    writer = Writer(store, spool, batch_size=settings.batch_size, interval=settings.flush_interval,
                    metrics=Metrics(), enrich=enrich, connect=lambda: open_store(settings.db_uri),
                    description=_uri_for_logs(settings.db_uri), failing=waiting)
    # A batch holds thousands of hits (dicts, rows) at once, which the collector of young objects would
    # scan for cycles again and again: they have none. What exists now (modules, the parsers' tables)
    # is never scanned again either.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    left = writer.run(stop, settings.drain_timeout)
    if writer.store is not None:
        writer.store.close()
    log.info("stopped, %d hits stored in this run", writer.stored)
    if left:
        log.warning("%d bytes of hits stay in the spool %s: they are stored at the next start", left, settings.spool)
    return 0


def _uri_for_logs(uri: str) -> str:
    """The store URI without a password."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", uri)


def _worker_main(settings: Settings, listener: socket.socket) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from gevent import monkey

    monkey.patch_all()
    import gevent
    from gevent.event import Event

    from mongol.app import Health, PixelApp
    from mongol.httpserver import WSGIServer
    from mongol.journal import Journal, Recorder
    from mongol.metrics import Metrics

    recorder = Recorder(Journal(settings.spool, fsync=settings.fsync), settings.max_pending, grouped=True)
    tracker = Tracker(settings.tracking, Salts(settings.spool), settings.trusted)
    pixel = PixelApp(recorder, Health(settings.spool, recorder), settings.trusted, Metrics(), tracker,
                     settings.status_allow, settings.spool)
    app = _access_logged(pixel) if settings.access_log else pixel
    shared = socket.socket(fileno=os.dup(listener.fileno()))  # a gevent socket, now that socket is patched
    listener.close()
    # A turn's hits go to the spool in one write(), just before the turn's answers leave. The pixel
    # never waits on gevent, so the loop itself may answer it (inline).
    server = WSGIServer(shared, app, max_request_line=MAX_REQUEST_LINE, error_log=logging.getLogger("mongol.http"),
                        before_send=recorder.flush, inline=True, **settings.http)
    server.start()
    stop = Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGHUP, reopen_log_files)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    while not stop.wait(1.0):
        recorder.retry()  # rotate the segment, and hand held hits to the spool once its disk takes them
        pixel.publish_metrics()
    server.stop(timeout=2)
    lost = recorder.close(timeout=_held_wait(settings))
    pixel.publish_metrics()
    return 1 if lost else 0


def _held_wait(settings: Settings) -> float:
    """How long a stopping worker waits for the disk to take hits it holds (only with --max-held)."""
    return settings.drain_timeout / 2 if settings.max_pending else 0.0


def _access_logged(app):  # noqa: ANN001 - WSGI in, WSGI out
    """--access-log: one line per request (method, path and query, status, client)."""
    access = logging.getLogger("mongol.access")

    def logged(environ: dict, start_response):  # noqa: ANN001
        def start(status: str, headers: list, exc_info: object = None):
            query = environ.get("QUERY_STRING")
            access.info('%s "%s %s%s" %s', environ.get("REMOTE_ADDR"), environ["REQUEST_METHOD"],
                        environ.get("PATH_INFO"), "?" + query if query else "", status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)
        return app(environ, start)
    return logged


def sd_notify(state: str) -> None:
    """Tell systemd how the service stands, when it started us with Type=notify (NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", address, exc)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise MongolError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def start_writer(settings: Settings) -> int:
    """Fork the writer and wait until it has opened the spool and tried the store once; MongolError
    if it could not (a bad URI, an unusable spool). A store that does not answer is no error: the
    writer keeps trying while the pixel serves and hits wait in the spool."""
    read_end, write_end = os.pipe()
    pid = _fork(_writer_main, settings, write_end)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], STORE_OPEN_TIMEOUT)
    answer = os.read(read_end, 65536).decode(errors="replace") if ready else "error the writer did not start"
    os.close(read_end)
    kind, _, text = answer.partition(" ")
    if kind == "waiting":
        log.warning("%s; serving anyway: hits wait in the spool %s until the store answers", text, settings.spool)
    elif kind != "ok":
        reap(pid, 5.0)
        raise MongolError(text or "the writer process died while opening the store")
    else:
        log.info("storing hits in %s", text)
    return pid


def reap(pid: int, timeout: float) -> int | None:
    """Reap `pid`, killing it after `timeout`; its exit code."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        signal.sigtimedwait({signal.SIGCHLD}, 0.05)


def serve(settings: Settings) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    metrics_folder = Path(tempfile.mkdtemp(prefix="mongol-metrics-"))
    metrics.prepare(metrics_folder)
    try:
        return _supervise(settings)
    finally:
        shutil.rmtree(metrics_folder, ignore_errors=True)


def _supervise(settings: Settings) -> int:
    # --workers 0 serves nothing: it must not hold the port that the real WSGI server listens on.
    listener = listen(settings.host, settings.port) if settings.workers > 0 else None
    try:
        writer = start_writer(settings)
    except MongolError:
        if listener is not None:
            listener.close()
        raise
    workers = {_fork(_worker_main, settings, listener) for _ in range(max(settings.workers, 0))}
    if listener is not None:
        host, port = listener.getsockname()[:2]
        log.info("listening on http://%s:%d/ with %d worker processes", f"[{host}]" if ":" in host else host, port,
                 settings.workers)
        log.info("tracking %s", served_urls(host, port))
    else:
        log.info("no workers: draining the spool %s only", settings.spool)
    sd_notify("READY=1")  # systemd (Type=notify) sends a reload's SIGHUP only from now on
    retry_writer_at = None  # a writer that could not start again is retried, never fatal
    retry_delay = 1.0
    while True:
        if retry_writer_at is not None:
            info = signal.sigtimedwait(SIGNALS, max(0.0, retry_writer_at - time.monotonic()))
            if info is None:
                try:
                    writer, retry_writer_at, retry_delay = start_writer(settings), None, 1.0
                except MongolError as exc:
                    retry_delay = min(retry_delay * 2, 30.0)
                    log.error("cannot start the writer: %s; trying again in %.0f s", exc, retry_delay)
                    retry_writer_at = time.monotonic() + retry_delay
                continue
        else:
            info = signal.sigwaitinfo(SIGNALS)
        if info.si_signo == signal.SIGHUP:
            reopen_log_files()
            for pid in (*workers, *([writer] if writer else [])):
                os.kill(pid, signal.SIGHUP)
        elif info.si_signo == signal.SIGCHLD:
            while True:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if not pid:
                    break
                code = os.waitstatus_to_exitcode(status)
                metrics.process_dead(pid)
                if pid == writer:
                    log.error("the writer process exited with %d; starting another", code)
                    writer = 0
                    try:
                        writer = start_writer(settings)
                    except MongolError as exc:
                        log.error("cannot start the writer: %s; trying again in %.0f s", exc, retry_delay)
                        retry_writer_at = time.monotonic() + retry_delay
                elif pid in workers:
                    log.error("worker %d exited with %d; starting another", pid, code)
                    workers.discard(pid)
                    workers.add(_fork(_worker_main, settings, listener))
        else:
            break
    log.info("stopping: no new hits, then storing what is spooled")
    sd_notify("STOPPING=1")
    # The whole stop takes the workers' time for requests in flight, then --drain-timeout: a writer
    # still busy then (a store that blocks, such as a locked SQLite file) is killed, which loses
    # nothing: what it has not stored stays in the spool for the next start.
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    failed = [pid for pid in workers if reap(pid, _held_wait(settings) + WORKER_STOP_TIMEOUT) != 0]
    if listener is not None:
        listener.close()
    if not writer:
        return 1
    os.kill(writer, signal.SIGTERM)
    writer_code = reap(writer, settings.drain_timeout + 0.5)
    if writer_code == -signal.SIGKILL:
        log.warning("the writer was still storing at the end of --drain-timeout (%.0f s): what it had not "
                    "stored stays in the spool %s for the next start", settings.drain_timeout, settings.spool)
        writer_code = 0
    return 1 if failed or writer_code else 0
