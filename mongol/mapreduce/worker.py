"""The worker process: it owns one Engine and serves the parent's messages until the parent hangs up."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import struct
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import orjson

from mongol.errors import MongolError
from mongol.mapreduce.api import HitSource, Limits
from mongol.mapreduce.codec import fields_read, may_reorder
from mongol.mapreduce.engine import Engine, Fatal

#: While workers read a HitSource: how long (seconds) each maps hits between reports of its progress
#: (and at the end of each part).
REPORT_EVERY = 0.02

# Messages are bytes: one opcode byte, then a payload. Nothing from a worker is unpickled, so even
# a worker whose engine were subverted could not run code in the parent.
#
# parent -> worker                               worker -> parent
#   B allowance:f8 json   map a batch              R                         ready (functions compiled)
#   S allowance:f8 json   read and map a part      A used:f8                 batch done
#   L allowance:f8        new allowance            U used:f8 hits:u4         more hits of a part mapped
#   P allowance:f8 n:u4   split into n partitions  D used:f8 hits:u4         part done (its last hits)
#   I json                absorb a partition       Q json                    one partition (n of them)
#   F allowance:f8        finish                   O used:f8 json            results
#                                                  E json                    error, then the worker exits
# `allowance` is the CPU time the worker may use in all (the budget minus what the others used);
# `used` is the worker's JavaScript CPU time so far. S and L only come with a HitSource: the worker
# reads the part (a JSON value the source made in the parent) itself and reports its progress (U)
# every REPORT_EVERY seconds; L, sent on such reports, keeps each one's allowance current within a part.

F8 = struct.Struct("<d")
F8U4 = struct.Struct("<dI")


def worker_main(conn: Connection, sources: list[str | None], limits: Limits, hits: HitSource | None = None) -> None:
    """Entry point of a spawned worker: serve the parent's messages until it hangs up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches the whole group
    try:
        engine = Engine(sources, limits)
        # Whether the mapper may see the order of the hit's own fields (see may_reorder).
        whole = sources[0] is None or fields_read(sources[0].strip()) is None
        conn.send_bytes(b"R")
        # A reader thread keeps the pipe drained while the engine (which releases the GIL) works,
        # so the parent never blocks sending to a busy worker and can feed the others meanwhile.
        inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        threading.Thread(target=_read_all, args=(conn, inbox, engine), daemon=True).start()
        while (msg := inbox.get()) is not None:
            op = msg[:1]
            if op == b"B":
                (engine.allowance,) = F8.unpack_from(msg, 1)
                data = msg[1 + F8.size:]
                engine.map(data.decode(), may_reorder(data))
                conn.send_bytes(b"A" + F8.pack(engine.used))
            elif op == b"S":
                # The others' use only grows: an L that overtook this message is the more recent.
                engine.allowance = min(engine.allowance, F8.unpack_from(msg, 1)[0])
                mapped, reported = 0, time.monotonic()
                for count, text, tagged in _read_part(hits, orjson.loads(msg[1 + F8.size:])):  # type: ignore[arg-type]
                    # Hits stored by Mongol's programs hold no objects inside fields (values are strings
                    # or lists of strings), so only a mapper that sees the hit's own order needs a look.
                    engine.map_hits(text, tagged, whole and may_reorder(text.encode()))
                    mapped += count
                    if time.monotonic() - reported >= REPORT_EVERY:
                        conn.send_bytes(b"U" + F8U4.pack(engine.used, mapped))
                        mapped, reported = 0, time.monotonic()
                conn.send_bytes(b"D" + F8U4.pack(engine.used, mapped))
            elif op == b"I":
                engine.absorb(msg[1:].decode(), may_reorder(msg[1:]))
            elif op == b"P":
                engine.allowance, n = F8U4.unpack_from(msg, 1)
                for text in engine.partial(n):
                    conn.send_bytes(b"Q" + text.encode())
                conn.send_bytes(b"A" + F8.pack(engine.used))
            elif op == b"F":
                (engine.allowance,) = F8.unpack_from(msg, 1)
                text = engine.finish()
                conn.send_bytes(b"O" + F8.pack(engine.used) + text.encode())
    except Fatal as exc:
        _send_error(conn, exc.kind, exc.option, exc.message)
    except BaseException as exc:  # report anything else, then exit
        _send_error(conn, "run", "map/reduce", f"map/reduce worker failed: {type(exc).__name__}: {exc}")
    # Leave without tearing the engine down: after an error the context may be in any state.
    os._exit(0)


def _read_all(conn: Connection, inbox: queue.SimpleQueue, engine: Engine) -> None:
    try:
        while True:
            msg = conn.recv_bytes()
            if msg[:1] == b"L":  # applies at once, also to the part being read
                engine.allowance = min(engine.allowance, F8.unpack_from(msg, 1)[0])
            else:
                inbox.put(msg)
    except (EOFError, OSError):
        inbox.put(None)


def _read_part(hits: HitSource, part: Any) -> Iterator[tuple[int, str, bool]]:
    """hits.read(part), its store errors reported as the worker's error."""
    batches = iter(hits.read(part))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except MongolError as exc:
            raise Fatal("run", "reading the hits", str(exc)) from None
        yield batch


def _send_error(conn: Connection, kind: str, option: str, message: str) -> None:
    with contextlib.suppress(OSError):
        conn.send_bytes(b"E" + orjson.dumps({"kind": kind, "option": option, "message": message}))
