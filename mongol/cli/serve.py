"""mongol-serve: the tracking-pixel server (gevent WSGI workers, a spool on disk, a writer process)."""

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from mongol import __version__
from mongol.errors import MongolError
from mongol.hit import parse_networks
from mongol.location import ENV_VAR, checked_db_uri, default_db_path, default_spool
from mongol.supervisor import Settings, serve
from mongol.tracking import Tracking

DEFAULT_ADDRESS = "0.0.0.0:8000"


def parse_address(text: str) -> tuple[str, int]:
    """`host:port`, `:port` or `port` (host 0.0.0.0); `[::1]:port` for IPv6."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535 or any(c.isspace() for c in host):
        raise MongolError(f"bad address {text!r}: expected [host:]port, such as 127.0.0.1:8000, :8000 or 8000")
    return host or "0.0.0.0", int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mongol-serve",
        description="Answer tracking requests with a 1x1 transparent GIF and store each as a hit.",
        epilog=f"Without --db or ${ENV_VAR}, hits go to the embedded store {default_db_path()}, "
               "which mongol-report reads by default too. Signals: TERM/INT stop (spooled hits are stored "
               "first), HUP reopens the log file.",
    )
    parser.add_argument("address", nargs="?", default=DEFAULT_ADDRESS,
                        help=f"where to listen: host:port, :port or port (default {DEFAULT_ADDRESS}; "
                             "port 0 picks a free one)")
    parser.add_argument("--db", metavar="URI",
                        help="the store: mongodb://..., mongodb+srv://... or sqlite:///path/file.db "
                             f"(default: ${ENV_VAR}, else the embedded store)")
    parser.add_argument("--spool", metavar="DIR", type=Path,
                        help="where hits wait for the store, on disk (default: FILE.spool beside an SQLite "
                             "store, else a folder per MongoDB URI in the data folder)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="serving processes sharing the port (default: the number of cores, "
                             f"{os.cpu_count()}); 0 only drains the spool")
    parser.add_argument("--trusted-proxy", metavar="CIDR", action="append", default=[],
                        help="a proxy (address or CIDR block) whose X-Forwarded-For names the client; repeatable")
    parser.add_argument("--batch-size", type=int, default=5000, metavar="N",
                        help="hits stored per insert at most (default 5000)")
    parser.add_argument("--flush-interval", type=float, default=0.1, metavar="SECONDS",
                        help="how often the writer stores new hits (default 0.1)")
    parser.add_argument("--max-held", type=int, default=0, metavar="N",
                        help="hits a worker may answer and hold in memory while the spool's disk refuses them "
                             "(default 0: the pixel answers 503 instead, so every answered hit is on disk)")
    parser.add_argument("--fsync", action="store_true",
                        help="fsync the spool before each answer: hits survive a power loss, at a cost per hit")
    parser.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="at stop, how long to keep storing spooled hits (default 30); what is left "
                             "stays in the spool for the next start")
    add_tracking_arguments(parser)
    parser.add_argument("--status-allow", metavar="CIDR", action="append", default=None,
                        help="who may read /healthz and /metrics (the client address, after --trusted-proxy); "
                             "repeatable (default: loopback, 127.0.0.0/8 and ::1); others get 403")
    parser.add_argument("--header-timeout", type=float, default=20.0, metavar="SECONDS",
                        help="a request head must arrive whole within this of its first byte, else 408 "
                             "(default 20)")
    parser.add_argument("--body-timeout", type=float, default=20.0, metavar="SECONDS",
                        help="a request body must arrive whole within this of its head, else 408 (default 20)")
    parser.add_argument("--max-connections", type=int, default=None, metavar="N",
                        help="open connections per serving process; beyond, new ones get 503 (default: what "
                             "the descriptor limit allows, at most 10000)")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--log-file", metavar="PATH",
                        help="log to this file instead of stderr (reopened on SIGHUP, for logrotate)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="least severe message to log (default INFO)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


TRACKING_FLAGS = ("--cookie", "--full-ip", "--dnt", "--trusted-sender", "--drop-bots", "--no-ua-parse", "--geoip")


def add_tracking_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                           flags: tuple[str, ...] = TRACKING_FLAGS) -> None:
    """Add the privacy, bot and enrichment options named in `flags` (all of mongol-serve's by default),
    in mongol-serve's order and words, to `parser` (or an argument group of it); `tracking_options` reads them."""
    options = {
        "--cookie": dict(action="store_true",
                         help="count visitors with a random id in a first-party cookie of the pixel's host (needs "
                              "HTTPS) instead of the default daily hash of site, address and User-Agent"),
        "--full-ip": dict(action="store_true",
                          help="store the whole client address (default: last IPv4 octet, last 80 IPv6 bits zeroed)"),
        "--dnt": dict(choices=["anonymous", "skip"], default="anonymous",
                      help="hits from browsers sending DNT: 1 or Sec-GPC: 1: stored without a visitor id and "
                           "with the address anonymised (anonymous, the default), or not stored (skip)"),
        "--trusted-sender": dict(metavar="CIDR", action="append", default=[],
                                 help="a server (address or CIDR block) whose Measurement Protocol ua and uip "
                                      "parameters name the visitor; repeatable (from anyone else they are ignored)"),
        "--drop-bots": dict(action="store_true",
                            help="do not store hits from bots (default: store them with _bot: true)"),
        "--no-ua-parse": dict(action="store_true",
                              help="do not read User-Agents: no _bot, _browser, _os, _device (saves the writer's "
                                   "work)"),
        "--geoip": dict(metavar="PATH", type=Path,
                        help="a MaxMind-format database (GeoLite2/GeoIP2 Country or City): adds _country and _city"),
    }
    unknown = set(flags) - set(options)
    if unknown:
        raise ValueError(f"no such tracking option: {', '.join(sorted(unknown))}")
    for flag in TRACKING_FLAGS:
        if flag in flags:
            parser.add_argument(flag, **options[flag])


def tracking_options(args: argparse.Namespace) -> Tracking:
    """The privacy, bot and enrichment options; MongolError (or ValueError) names a bad one. --cookie and
    --trusted-sender take their defaults when the parser did not have them (mongol-ingest's has not)."""
    if args.drop_bots and args.no_ua_parse:
        raise MongolError("--drop-bots needs the User-Agent read: it cannot go with --no-ua-parse")
    senders = parse_networks(getattr(args, "trusted_sender", []), "--trusted-sender")
    if args.geoip is not None:
        from mongol.enrich import open_geoip

        open_geoip(args.geoip).close()
    return Tracking(cookie=getattr(args, "cookie", False), full_ip=args.full_ip, dnt=args.dnt, senders=senders,
                    drop_bots=args.drop_bots, parse_agents=not args.no_ua_parse,
                    geoip=args.geoip.absolute() if args.geoip is not None else None)


def main(argv: list[str] | None = None) -> int:
    # SIGHUP means "reopen the log files": before those are open it must not end the program (the
    # supervisor blocks the other signals too, until it waits for them).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    args = build_parser().parse_args(argv)
    try:
        host, port = parse_address(args.address)
        trusted = parse_networks(args.trusted_proxy)
        if args.workers < 0 or args.batch_size < 1 or args.flush_interval <= 0 or args.max_held < 0:
            raise MongolError("--workers, --batch-size, --flush-interval and --max-held must be positive")
        tracking = tracking_options(args)
        status_allow = None if args.status_allow is None else parse_networks(args.status_allow, "--status-allow")
        cap = 1 if args.max_connections is None else args.max_connections
        if min(args.header_timeout, args.body_timeout, cap) <= 0:
            raise MongolError("--header-timeout, --body-timeout and --max-connections must be positive")
    except (MongolError, ValueError) as exc:
        print(f"mongol-serve: error: {exc}", file=sys.stderr)
        return 2
    handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=args.log_level, handlers=[handler],
                        format="%(asctime)s mongol-serve[%(process)d] %(levelname)s: %(message)s")
    try:
        uri = checked_db_uri(args.db)
    except MongolError as exc:
        print(f"mongol-serve: error: {exc}", file=sys.stderr)
        return 1
    settings = Settings(host=host, port=port, db_uri=uri, spool=args.spool or default_spool(uri),
                        workers=args.workers, trusted=trusted, batch_size=args.batch_size,
                        flush_interval=args.flush_interval, max_pending=args.max_held, access_log=args.access_log,
                        fsync=args.fsync, drain_timeout=args.drain_timeout, tracking=tracking,
                        http={"header_timeout": args.header_timeout, "body_timeout": args.body_timeout,
                              "max_connections": args.max_connections},
                        status_allow=status_allow)
    try:
        return serve(settings)
    except MongolError as exc:
        print(f"mongol-serve: error: {exc}", file=sys.stderr)
        return 1
