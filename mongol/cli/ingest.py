"""mongol-ingest: nginx serves the pixel (`empty_gif`) and sends its JSON access log over syslog;
each line is stored as a hit, exactly as if mongol-serve had answered the request.

    nginx ──UDP syslog──> mongol-ingest: parse, make the hit, append it to the spool
                              └─ writer process: drains the spool into the store

The writer is mongol-serve's own (same batching, retries and drain on stop), forked once the
socket is bound. Without --no-writer the spool is a folder of its own (`...spool-ingest`): two
writers draining one folder store every hit twice over (ids make the second insert a no-op, at the
cost of the work) and race on the folder's status file. With --no-writer, hits go to the spool a
mongol-serve with the same --db drains.

The privacy options (--full-ip, --dnt) are applied here, as each line becomes a hit; the enrichment
options (--drop-bots, --no-ua-parse, --geoip) are the writer's, so with --no-writer they are those of
the mongol-serve that stores the hits, except that --geoip here still spools the whole address
(`_geo_ip`) for that writer's lookup.
"""

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from mongol import __version__
from mongol.cli.serve import add_tracking_arguments, parse_address, tracking_options
from mongol.errors import MongolError
from mongol.hit import Network, parse_networks
from mongol.location import ENV_VAR, checked_db_uri, default_db_path, default_spool
from mongol.tracking import Tracking

log = logging.getLogger("mongol.ingest")
DEFAULT_ADDRESS = "127.0.0.1:5514"
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# mongol-serve's privacy and enrichment options that mean something here: not --cookie (nginx answers
# the pixel, so nothing can set one) nor --trusted-sender (nginx's pixel log has no Measurement Protocol POST)
TRACKING_FLAGS = ("--full-ip", "--dnt", "--drop-bots", "--no-ua-parse", "--geoip")
WRITER_FLAGS = ("--drop-bots", "--no-ua-parse")  # nothing but the writer reads them


def parse_listen(text: str) -> tuple[str, int]:
    """`host:port`, or `port` / `:port` on the loopback address (anyone who can send datagrams to
    the socket can forge hits: it stays on loopback unless a host is named)."""
    host, port = parse_address(text)
    if ":" not in text.strip() or text.strip().startswith(":"):
        host = "127.0.0.1"
    return host, port


def ingest_spool(uri: str, spool: Path | None, own_writer: bool) -> Path:
    """--spool, else a folder of ingest's own when it runs its own writer, else mongol-serve's."""
    if spool is not None:
        return spool
    shared = default_spool(uri)
    return shared.with_name(shared.name + "-ingest") if own_writer else shared


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mongol-ingest",
        description="Receive nginx's access log in Mongol's JSON format over syslog (UDP) and store each "
                    "pixel request as a hit, exactly as mongol-serve would (scripts/nginx-mongol.conf).",
        epilog=f"Without --db or ${ENV_VAR}, hits go to the embedded store {default_db_path()}. Signals: "
               "TERM/INT stop receiving, then the spooled hits are stored and it exits.",
    )
    parser.add_argument("address", nargs="?", default=DEFAULT_ADDRESS,
                        help=f"where nginx sends the log: host:port, or port on 127.0.0.1 (default {DEFAULT_ADDRESS}; "
                             "port 0 picks a free one)")
    parser.add_argument("--db", metavar="URI",
                        help=f"the store, as for mongol-serve (default: ${ENV_VAR}, else the embedded store)")
    parser.add_argument("--spool", metavar="DIR", type=Path,
                        help="where hits wait for the store (default: mongol-serve's spool folder with -ingest "
                             "appended; with --no-writer, mongol-serve's own)")
    parser.add_argument("--no-writer", action="store_true",
                        help="only append to the spool: a mongol-serve with the same --db (or --spool) stores them")
    parser.add_argument("--trusted-proxy", metavar="CIDR", action="append", default=[],
                        help="a proxy (address or CIDR block) whose X-Forwarded-For names the client; repeatable")
    parser.add_argument("--flush-interval", type=float, default=0.1, metavar="SECONDS",
                        help="how often the writer looks for new hits when idle (default 0.1)")
    parser.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="at stop, how long to keep storing spooled hits (default 30); what is left "
                             "stays in the spool for the next start")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="least severe message to log (default INFO)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_tracking_arguments(parser.add_argument_group(
        "privacy and enrichment, as for mongol-serve",
        "--full-ip and --dnt apply here, as each line becomes a hit. --drop-bots, --no-ua-parse and --geoip's "
        "places are the writer's work: with --no-writer, the mongol-serve that stores the hits decides them with "
        "its own options (--drop-bots and --no-ua-parse are refused here), and --geoip here only passes the whole "
        "address on, in the spool, for that writer's --geoip to place (give both the same database)."),
        TRACKING_FLAGS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        host, port = parse_listen(args.address)
        trusted = parse_networks(args.trusted_proxy)
        if args.flush_interval <= 0 or args.drain_timeout < 0:
            raise MongolError("--flush-interval must be positive and --drain-timeout not negative")
        for flag in WRITER_FLAGS:
            if args.no_writer and getattr(args, flag[2:].replace("-", "_")):
                raise MongolError(f"{flag} is the writer's: with --no-writer, give it to the mongol-serve that "
                                  "stores the hits")
        tracking = tracking_options(args)
    except (MongolError, ValueError) as exc:
        print(f"mongol-ingest: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s mongol-ingest[%(process)d] %(levelname)s: %(message)s")
    try:
        uri = checked_db_uri(args.db)
    except MongolError as exc:
        print(f"mongol-ingest: error: {exc}", file=sys.stderr)
        return 1
    spool = ingest_spool(uri, args.spool, own_writer=not args.no_writer)
    try:
        return ingest(host, port, uri, spool, trusted, own_writer=not args.no_writer,
                      flush_interval=args.flush_interval, drain_timeout=args.drain_timeout, tracking=tracking)
    except MongolError as exc:
        print(f"mongol-ingest: error: {exc}", file=sys.stderr)
        return 1


def ingest(host: str, port: int, uri: str, spool: Path, trusted: tuple[Network, ...], *, own_writer: bool,
           flush_interval: float = 0.1, drain_timeout: float = 30.0, tracking: Tracking | None = None) -> int:
    """Receive until SIGTERM/SIGINT, then store what is spooled; the exit status. `tracking`: the privacy
    options for the tracker, and the enrichment ones for the writer (unused with `own_writer` false, but
    for the whole address --geoip spools); default: mongol-serve's defaults."""
    from mongol.ingest import Ingest, open_udp, receive_buffer, run
    from mongol.journal import Journal, Recorder
    from mongol.supervisor import Settings, reap, start_writer

    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS | {signal.SIGCHLD})  # until the handlers are set
    try:
        sock = open_udp(host, port)
    except OSError as exc:
        raise MongolError(f"cannot listen on udp {host}:{port}: {exc.strerror or exc}") from None
    os.register_at_fork(after_in_child=sock.close)  # the writer must not keep the port while it drains
    settings = Settings(host=host, port=port, db_uri=uri, spool=spool, workers=0,
                        flush_interval=flush_interval, drain_timeout=drain_timeout,
                        tracking=tracking or Tracking())
    try:
        recorder = Recorder(Journal(spool), max_pending=100_000)  # a datagram gets no answer: hold
        writer = start_writer(settings) if own_writer else 0
    except (MongolError, OSError) as exc:
        sock.close()
        raise MongolError(str(exc) if isinstance(exc, MongolError) else f"cannot use the spool {spool}: {exc}") \
            from None
    flags = {"stop": False, "child": False}

    def on_signal(signum: int, _frame: object) -> None:
        flags["child" if signum == signal.SIGCHLD else "stop"] = True

    for signum in (*STOP_SIGNALS, signal.SIGCHLD):
        signal.signal(signum, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no log file to reopen: a closed terminal must not stop it
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS | {signal.SIGCHLD})

    def keep_going() -> bool:
        nonlocal writer
        if flags["child"]:
            flags["child"] = False
            if writer and os.waitpid(writer, os.WNOHANG)[0]:
                writer = 0
                log.error("the writer process exited; starting another")
                signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
                try:
                    writer = start_writer(settings)
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return not flags["stop"]

    from mongol.tracking import Salts, Tracker

    lines = Ingest(recorder, trusted, Tracker(settings.tracking, Salts(spool), trusted))
    bound_host, bound_port = sock.getsockname()[:2]
    log.info("listening on udp://%s:%d for nginx's syslog (receive buffer %d KiB); spooling to %s%s",
             f"[{bound_host}]" if ":" in bound_host else bound_host, bound_port, receive_buffer(sock) // 1024,
             spool, "" if own_writer else " (--no-writer: mongol-serve stores them)")
    try:
        # every second, busy or idle, as mongol-serve: rotate the segment, retry held hits, delete old salts
        run(sock, lines, keep_going, idle=lines.housekeep)
    finally:
        sock.close()
        lost = recorder.close()
        log.info("stopped receiving: %s", lines.summary())
        code = 0
        if writer:
            os.kill(writer, signal.SIGTERM)
            code = reap(writer, drain_timeout + 30)
    return 1 if lost or code else 0
