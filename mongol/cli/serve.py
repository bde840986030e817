"""mongol-serve: the tracking-pixel server (gevent WSGI, hits written in batches)."""

import argparse
import logging
import signal
import socket
import sys

from mongol import __version__
from mongol.errors import MongolError
from mongol.location import ENV_VAR, default_db_path

DEFAULT_ADDRESS = "0.0.0.0:8000"
log = logging.getLogger("mongol.serve")


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
               "which mongol-report reads by default too.",
    )
    parser.add_argument("address", nargs="?", default=DEFAULT_ADDRESS,
                        help=f"where to listen: host:port, :port or port (default {DEFAULT_ADDRESS}; "
                             "port 0 picks a free one)")
    parser.add_argument("--db", metavar="URI",
                        help="the store: mongodb://..., mongodb+srv://... or sqlite:///path/file.db "
                             f"(default: ${ENV_VAR}, else the embedded store)")
    parser.add_argument("--trusted-proxy", metavar="CIDR", action="append", default=[],
                        help="a proxy (address or CIDR block) whose X-Forwarded-For names the client; repeatable")
    parser.add_argument("--batch-size", type=int, default=500, metavar="N",
                        help="store hits as soon as N are queued (default 500)")
    parser.add_argument("--flush-interval", type=float, default=0.25, metavar="SECONDS",
                        help="store queued hits at least this often (default 0.25)")
    parser.add_argument("--max-queue", type=int, default=100_000, metavar="N",
                        help="hits held in memory at most; beyond that requests get 503 (default 100000)")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="least severe message to log (default INFO)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s mongol-serve %(levelname)s: %(message)s")
    try:
        address = parse_address(args.address)
        from mongol.hit import parse_networks

        trusted = parse_networks(args.trusted_proxy)
    except (MongolError, ValueError) as exc:
        print(f"mongol-serve: error: {exc}", file=sys.stderr)
        return 2
    # Patch before pymongo is imported, so that its sockets cooperate with the event loop.
    from gevent import monkey

    monkey.patch_all()
    return _serve(args, address, trusted)


def _serve(args: argparse.Namespace, address: tuple[str, int], trusted: tuple) -> int:
    import gevent
    from gevent.event import Event
    from gevent.pywsgi import WSGIServer

    from mongol.app import PixelApp
    from mongol.location import resolve_db_uri
    from mongol.stores import open_store
    from mongol.writer import Writer

    class NoDelayServer(WSGIServer):
        """pywsgi sends headers and body in two writes: without TCP_NODELAY, Nagle's algorithm
        waits for the client's delayed ACK and every keep-alive request stalls ~40 ms."""

        def handle(self, sock: socket.socket, client: tuple) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, client)

    try:
        store = open_store(resolve_db_uri(args.db))
    except MongolError as exc:
        print(f"mongol-serve: error: {exc}", file=sys.stderr)
        return 1
    writer = Writer(store, batch_size=args.batch_size, flush_interval=args.flush_interval, max_queue=args.max_queue)
    access_log = logging.getLogger("mongol.access") if args.access_log else None
    server = NoDelayServer(address, PixelApp(writer, trusted), log=access_log,
                           error_log=logging.getLogger("mongol.http"))
    try:
        server.start()
    except OSError as exc:
        reason = exc.strerror or exc
        print(f"mongol-serve: error: cannot listen on {address[0]}:{address[1]}: {reason}", file=sys.stderr)
        store.close()
        return 1
    writer.start()
    host, port = server.address[:2]
    log.info("storing hits in %s", store.description)
    log.info("listening on http://%s:%d/", f"[{host}]" if ":" in host else host, port)

    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    stop.wait()
    log.info("stopping: no new connections, storing %d queued hits", writer.depth)
    server.stop(timeout=1)
    left = writer.stop()
    store.close()
    log.info("stopped, %d hits stored in this run", writer.stored)
    return 1 if left else 0
