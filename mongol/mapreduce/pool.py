"""The parent's side of the workers: start them, feed them round-robin (or hand them parts of a
HitSource to read), merge their partial results, and watch every wait for a death."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any, NoReturn

import orjson

from mongol.mapreduce.api import CompileError, HitSource, Limits, MapReduceError
from mongol.mapreduce.codec import decode_results
from mongol.mapreduce.worker import F8, F8U4, worker_main

#: Batches a worker may have queued but not yet processed.
CREDITS = 4
#: Parts of a HitSource a worker may have queued, the one it reads included.
SCAN_AHEAD = 2
#: How often at most each worker is told what is left of the CPU budget while it reads a HitSource.
ALLOWANCE_EVERY = 0.01
#: A worker that answers nothing for longer than this (beyond its CPU budget) is treated as hung.
STALL_SLACK_SECONDS = 60.0


class Worker:
    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.credits = 0  # batches it may be sent now; 0 until it is ready
        self.ready = False
        self.used = 0.0  # its JavaScript CPU time, as last reported
        self.replies: list[bytes] = []  # Q and O messages, in order


class Pool:
    """Worker processes fed round-robin (or handed parts of a HitSource to read); every wait on them
    also watches for their death."""

    def __init__(self, sources: list[str | None], limits: Limits, hits: HitSource | None = None) -> None:
        self.sources = sources
        self.limits = limits
        self.hits = hits
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[Worker] = []
        self.next = 0
        self.stall = limits.cpu_seconds + STALL_SLACK_SECONDS
        self.mapped = 0  # hits the workers reported mapped (reading a HitSource)
        self.told = 0.0  # when the workers' allowances were last sent
        self.results_bytes = 0  # results text received from the workers

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close(abort=exc_info[0] is not None)

    def start(self, count: int) -> None:
        for _ in range(count):
            parent_end, child_end = self.context.Pipe()
            process = self.context.Process(target=worker_main,
                                           args=(child_end, self.sources, self.limits, self.hits),
                                           name="mongol-mapreduce", daemon=True)
            try:
                process.start()
            finally:
                child_end.close()  # so that the parent's end breaks when the worker dies
            self.workers.append(Worker(process, parent_end))

    def close(self, abort: bool) -> None:
        for w in self.workers:
            if abort and w.process.is_alive():
                w.process.terminate()
            w.conn.close()  # a healthy worker exits when its pipe closes
        for w in self.workers:
            w.process.join(5)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.process.close()
        self.workers = []

    def allowance(self, worker: Worker) -> float:
        """CPU time `worker` may have used in all: the budget minus what the others reported."""
        return self.limits.cpu_seconds - sum(w.used for w in self.workers if w is not worker)

    def send(self, worker: Worker, data: bytes) -> None:
        try:
            worker.conn.send_bytes(data)
        except OSError:
            pass
        else:
            return
        self._died(worker)

    def dispatch(self, data: bytes) -> None:
        """Send one encoded batch to the next worker (round-robin) that has room for it."""
        while True:
            n = len(self.workers)
            for i in range(n):
                w = self.workers[(self.next + i) % n]
                if w.credits > 0:
                    w.credits -= 1
                    self.next = (self.next + i + 1) % n
                    self.send(w, b"B" + F8.pack(self.allowance(w)) + data)
                    return
            self.pump()

    def scan(self, parts: Iterable[tuple[int, Any]]) -> Iterator[int]:
        """Have the workers read and map `parts` of the HitSource, each part going to the worker with
        the least queued; yields how many more hits were mapped, as the workers report them."""
        told = 0
        for _, part in parts:
            while True:
                worker = max(self.workers, key=lambda w: w.credits)  # 0 credits until ready
                if worker.credits > CREDITS - SCAN_AHEAD:
                    break
                self.pump()
                if self.mapped > told:
                    yield self.mapped - told
                    told = self.mapped
            worker.credits -= 1
            self.send(worker, b"S" + F8.pack(self.allowance(worker)) + orjson.dumps(part))
        while not all(w.ready and w.credits == CREDITS for w in self.workers):
            self.pump()
            if self.mapped > told:
                yield self.mapped - told
                told = self.mapped

    def _tell_allowances(self) -> None:
        """Send each worker its current allowance, at most every ALLOWANCE_EVERY seconds."""
        now = time.monotonic()
        if now - self.told < ALLOWANCE_EVERY:
            return
        self.told = now
        for w in self.workers:
            if w.ready:
                self.send(w, b"L" + F8.pack(self.allowance(w)))

    def pump(self) -> None:
        """Wait for the next message from any worker and handle it (or notice a death)."""
        conns = {w.conn: w for w in self.workers}
        sentinels = {w.process.sentinel: w for w in self.workers}
        ready = wait([*conns, *sentinels], timeout=self.stall)
        if not ready:
            raise MapReduceError(f"a map/reduce worker stopped responding for {self.stall:g} s")
        for obj in ready:
            if obj in conns:
                self._receive(conns[obj])
        for obj in ready:
            if obj in sentinels:
                self._died(sentinels[obj])

    def _receive(self, worker: Worker) -> None:
        try:
            msg = worker.conn.recv_bytes()
        except (EOFError, OSError):
            msg = b""
        if not msg:
            self._died(worker)
        op = msg[:1]
        if op == b"R":
            worker.ready = True
            worker.credits = CREDITS
        elif op == b"A":
            (worker.used,) = F8.unpack_from(msg, 1)
            worker.credits += 1
        elif op == b"U":
            worker.used, count = F8U4.unpack_from(msg, 1)
            self.mapped += count
            self._tell_allowances()
        elif op == b"D":
            worker.used, count = F8U4.unpack_from(msg, 1)
            self.mapped += count
            worker.credits += 1
        elif op == b"Q":
            worker.replies.append(msg)
        elif op == b"O":
            # Each worker's results fit its own memory limit, but the parent decodes all of them: it
            # takes one limit's worth of results text in all, no more.
            self.results_bytes += len(msg)
            if self.results_bytes > self.limits.memory_mb * 1024 * 1024:
                raise MapReduceError(f"the results exceed the memory limit of {self.limits.memory_mb} MB "
                                     f"(results of all workers, as JSON): emit fewer keys or smaller values")
            worker.replies.append(msg)
        elif op == b"E":
            self._raise(msg[1:])
        else:
            raise MapReduceError(f"a map/reduce worker sent an unknown message {op!r}")

    def _raise(self, payload: bytes) -> NoReturn:
        error = orjson.loads(payload)
        if error["kind"] == "compile":
            raise CompileError(error["option"], error["message"])
        raise MapReduceError(error["message"])

    def _died(self, worker: Worker) -> NoReturn:
        """A worker is gone: raise the error it reported before exiting, else say how it died."""
        with contextlib.suppress(EOFError, OSError):
            while worker.conn.poll():
                msg = worker.conn.recv_bytes()
                if msg[:1] == b"E":
                    self._raise(msg[1:])
        worker.process.join(5)
        code = worker.process.exitcode
        if code is not None and code < 0:
            how = f"was killed by signal {-code} ({signal.Signals(-code).name})"
        else:
            how = f"exited unexpectedly (exit code {code})"
        raise MapReduceError(f"a map/reduce worker {how}; if it was the out-of-memory killer, lower memory_mb")

    def wait_until(self, done: Any) -> None:
        while not done():
            self.pump()

    def finish(self) -> list[tuple[Any, Any]]:
        self.wait_until(lambda: all(w.ready for w in self.workers))
        # Let every queued batch be processed so that the CPU accounting is current.
        self.wait_until(lambda: all(w.credits == CREDITS for w in self.workers))
        if len(self.workers) == 1:
            return decode_results(self._final(self.workers[0]))
        n = len(self.workers)
        for w in self.workers:
            w.credits -= 1
            self.send(w, b"P" + F8U4.pack(self.allowance(w), n))
        self.wait_until(lambda: all(w.credits == CREDITS for w in self.workers))
        partitions = [w.replies for w in self.workers]
        for w in self.workers:
            w.replies = []
        for p, w in enumerate(self.workers):
            for replies in partitions:
                self.send(w, b"I" + replies[p][1:])
                replies[p] = b""
        for w in self.workers:
            self.send(w, b"F" + F8.pack(self.allowance(w)))
        self.wait_until(lambda: all(w.replies for w in self.workers))
        results: list[tuple[Any, Any]] = []
        for w in self.workers:
            results.extend(decode_results(self._output(w)))
        return results

    def _final(self, worker: Worker) -> bytes:
        self.send(worker, b"F" + F8.pack(self.allowance(worker)))
        self.wait_until(lambda: bool(worker.replies))
        return self._output(worker)

    def _output(self, worker: Worker) -> bytes:
        msg = worker.replies.pop()
        (worker.used,) = F8.unpack_from(msg, 1)
        return msg[1 + F8.size:]
