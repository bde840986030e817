"""The spool: hits appended to files on disk before the pixel answers, drained into the store later.

Each serving process appends one JSON line per hit to its own segment file before the response
goes out (one `write()` per hit, or, in mongol-serve, one for the hits of each turn of its loop,
just before that turn's answers are sent): once a client has its GIF, the hit is in
the kernel's page cache and survives a crash of any Mongol process (not a power loss, unless
`fsync` is asked for). The process holds an exclusive `flock` on its open segment and starts a new
one every ROTATE_SECONDS or ROTATE_BYTES; a segment nobody holds is closed (the lock goes with its
process, even after `kill -9`). The writer process reads every segment from where it left off,
stores complete lines, and deletes a segment once it is closed and stored. Records carry their
`_id`, and stores skip ids they already hold, so reading a segment twice stores nothing twice.

A segment's name (creation time, PID, random bits) is never reused, not even by a process that gets
the PID of an earlier run (every start of a container), and is given with `link`, which refuses to
replace a file; the writer also follows each file by its inode, not its name. It deletes a segment
only while holding the segment's lock itself, after reading its size through that lock: a worker
appends only under its own lock and never takes a closed segment again, so no line can arrive
between the writer's last look and the deletion.
"""

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import orjson

from mongol.errors import MongolError
from mongol.stores import Hit

log = logging.getLogger("mongol.journal")

ROTATE_SECONDS = 2.0
ROTATE_BYTES = 8 * 1024 * 1024
SUFFIX = ".jsonl"
MAKING = ".new"
OWNER = "writer.lock"  # held by the one writer of the spool; says its PID and store


def segment_name(seq: int) -> str:
    """A name no other segment ever had: it sorts by creation time (oldest are stored first), and
    PID plus random bits keep it apart from every other process, this run's or an earlier one's."""
    return f"{time.time_ns():016x}-{os.getpid()}-{os.urandom(4).hex()}-{seq}{SUFFIX}"


def encode(hit: Hit) -> bytes:
    """A hit as one journal line; `time` is an int of microseconds since the epoch (UTC)."""
    return orjson.dumps(hit, option=orjson.OPT_APPEND_NEWLINE)


class JournalFull(OSError):
    """The spool cannot take the hit (disk full, read-only, ...); the caller decides what to do."""


class Journal:
    """The append side, one per serving process."""

    def __init__(self, folder: Path, fsync: bool = False) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._fd = -1
        self._seq = 0
        self._opened = 0.0
        self._size = 0

    def _make(self) -> int:
        """A new segment, locked, under a name never used before; its descriptor."""
        self._seq += 1
        # Created under another name and locked before it gets its own: the writer must never see
        # a segment that is not locked yet, or it would take it for closed, and empty, and delete it.
        making = self.folder / f"{os.getpid()}-{os.urandom(8).hex()}{MAKING}"
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC  # readable: see _rescue
        try:
            fd = os.open(making, flags, 0o640)
        except FileNotFoundError:  # the spool folder was removed: make it again
            log.error("the spool folder %s was removed; making it again", self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(making, flags, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            while True:
                try:  # link, unlike rename, never replaces an existing segment
                    os.link(making, self.folder / segment_name(self._seq))
                    break
                except FileExistsError:
                    self._seq += 1
            os.unlink(making)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(making)
            raise
        return fd

    def _open(self) -> None:
        fd = self._make()
        old, self._fd = self._fd, fd
        self._opened, self._size = time.monotonic(), 0
        if old >= 0:
            os.close(old)  # releases its lock: the writer may now finish and delete it

    def append(self, line: bytes) -> None:
        """Write one encoded hit; raises JournalFull when the disk refuses it."""
        try:
            if self._fd < 0 or self._size >= ROTATE_BYTES:
                self._open()
            written = os.write(self._fd, line)
            if written != len(line):  # a torn line: finish it, or start clean in a new segment
                os.write(self._fd, line[written:])
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self.close()
            raise JournalFull(exc.errno, f"cannot write to the spool {self.folder}: {exc.strerror}") from exc
        self._size += len(line)

    def rotate_if_old(self) -> None:
        """Called about once a second: an idle or old segment is closed so that it can be deleted;
        one deleted under us (its folder removed) is copied to a new segment first."""
        if self._fd >= 0 and os.fstat(self._fd).st_nlink == 0:
            self._rescue()
        if self._fd >= 0 and time.monotonic() - self._opened >= ROTATE_SECONDS:
            self.close()

    def _rescue(self) -> None:
        """Our open segment has no name any more (someone removed it, or the folder): its hits live
        only in this descriptor. Copy its complete lines to a new segment (ids already stored are
        skipped by the store), so that nothing answered is lost; if that fails, try again later."""
        old = self._fd
        data = os.pread(old, os.fstat(old).st_size, 0)
        data = data[:data.rfind(b"\n") + 1]
        try:
            fd = self._make()
            os.write(fd, data)
        except OSError as exc:
            log.error("the spool segment of process %d was deleted and cannot be copied yet: %s", os.getpid(), exc)
            return
        log.error("the spool segment of process %d was deleted (was %s removed?): its %d bytes copied to a new one",
                  os.getpid(), self.folder, len(data))
        self._fd, self._opened, self._size = fd, time.monotonic(), len(data)
        os.close(old)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Recorder:
    """What the pixel calls for each hit: append it to the journal; False means the hit was not
    taken (the pixel answers 503), so an answered hit is always on disk. While the disk refuses
    (full, read-only), up to `max_pending` hits may be held in memory and retried instead: they
    are answered but live in this process only (a `kill -9` loses them), which is why mongol-serve
    holds none by default; mongol-ingest, whose datagrams get no answer, holds them.

    `grouped` (mongol-serve): hits wait in `buffer` until `flush()`, which the HTTP server calls
    before it sends any answer (once per turn of its loop), so that a turn's hits take one `write()`
    instead of one each; the caller then calls `retry()` about once a second itself."""

    def __init__(self, journal: Journal, max_pending: int = 0, grouped: bool = False) -> None:
        self.journal = journal
        self.max_pending = max_pending
        self.grouped = grouped
        self.buffer: list[bytes] = []  # grouped: lines taken, not written yet
        self.pending: deque[bytes] = deque()
        self.failing = False
        self.spooled = 0  # hits written to the journal by this process
        self.withdrawn = 0  # grouped hits the disk refused at flush(): taken, but never answered
        self._next_check = 0.0

    def __call__(self, hit: Hit) -> bool:
        line = encode(hit)
        if self.grouped:
            if not self.failing and not self.pending:
                self.buffer.append(line)
                return True
        else:
            now = time.monotonic()
            if now >= self._next_check:  # about once a second: rotate, and retry what the disk refused
                self._next_check = now + 1.0
                self.retry()
        if not self.pending:
            try:
                self.journal.append(line)
            except JournalFull as exc:
                self._refused(exc)
            else:
                self.spooled += 1
                if self.failing:
                    self._recovered()
                return True
        if len(self.pending) >= self.max_pending:
            return False
        self.pending.append(line)
        return True

    def flush(self) -> bool:
        """Write the lines grouped since the last call, in one `write()`. False when the disk refused
        them (and they could not be held): they are dropped, and the answers that promised them must
        not be sent (mongol.httpserver closes those connections instead)."""
        if not self.buffer:
            return True
        lines, self.buffer = self.buffer, []
        try:
            self.journal.append(lines[0] if len(lines) == 1 else b"".join(lines))
        except JournalFull as exc:
            self._refused(exc)
            room = self.max_pending - len(self.pending)
            self.pending.extend(lines[:room])  # held, with --max-held, as a hit refused alone would be
            if len(lines) <= room:
                return True
            self.withdrawn += len(lines)
            return False
        self.spooled += len(lines)
        if self.failing:
            self._recovered()
        return True

    def refuse(self, exc: OSError) -> None:
        """Something else of the spool's disk failed (a salt file): the pixel answers 503 meanwhile."""
        self._refused(JournalFull(exc.errno, f"cannot write to the spool {self.journal.folder}: {exc.strerror}"))

    def _refused(self, exc: JournalFull) -> None:
        if not self.failing:
            if self.max_pending:
                log.error("%s; holding hits in memory (at most %d) until it can", exc, self.max_pending)
            else:
                log.error("%s; answering 503 until it takes hits again", exc)
            self.failing = True

    def _recovered(self) -> None:
        if self.failing:
            log.warning("the spool %s takes hits again", self.journal.folder)
            self.failing = False

    def retry(self) -> None:
        """Start a new segment if the current one is old; move held hits to the journal if it takes them."""
        self.journal.rotate_if_old()
        while self.pending:
            try:
                self.journal.append(self.pending[0])
            except JournalFull:
                return
            self.pending.popleft()
            self.spooled += 1
            self._recovered()

    def close(self, timeout: float = 0.0) -> int:
        """Hand held hits to the spool, trying for up to `timeout` seconds; returns how many are lost
        (the disk never took them back)."""
        deadline = time.monotonic() + timeout
        self.flush()  # lines whose answers never went out: kept all the same
        self.retry()
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.2)  # waiting for the disk to take hits again (the writer frees the spool)
            self.retry()
        self.journal.close()
        if self.pending:
            log.error("%d hits held in memory are lost: the spool %s still refuses them",
                      len(self.pending), self.journal.folder)
        return len(self.pending)


@dataclass
class Segment:
    path: Path
    offset: int = 0       # bytes already stored
    replay: bool = False  # left by an earlier run (or an earlier writer) when this writer started
    inode: tuple[int, int] | None = None  # the file the offset belongs to, known from the first read

    def follow(self, st: os.stat_result) -> None:
        """The offset is of one file: if another file now has the name, it is read from the start."""
        inode = (st.st_dev, st.st_ino)
        if self.inode != inode:
            if self.inode is not None:
                log.warning("%s was replaced by another file; reading the new one from its start", self.path.name)
                self.offset = 0
            self.inode = inode


class Spool:
    """The drain side, in the writer process."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._segments = {path.name: Segment(path, replay=True) for path in self.folder.glob(f"*{SUFFIX}")}
        self._claim_fd, self._store = -1, None
        for making in self.folder.glob(f"*{MAKING}"):  # left by a process killed while making a segment
            with contextlib.suppress(OSError):
                if time.time() - making.stat().st_mtime < 60:
                    continue  # maybe being made right now (not locked yet)
            if _is_closed(making):
                making.unlink(missing_ok=True)  # never linked (nothing in it), or linked as well

    def claim(self, store: str) -> None:
        """Make this process the spool's only writer, for `store`; MongolError if another writer holds
        it, or if it holds hits spooled for another store (they would go to the wrong place)."""
        path = self.folder / OWNER
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640))
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # read-only: the folder can still be remounted read-only
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, other = _owner(fd).get("pid", "?"), _owner(fd).get("store", "?")
                raise MongolError(f"the spool {self.folder} is in use by the writer of another mongol-serve or "
                                  f"mongol-ingest (PID {pid}, storing in {other}): give each its own --spool") from None
            previous = _owner(fd).get("store")
            if previous and previous != store and self.backlog_bytes():
                raise MongolError(f"the spool {self.folder} holds hits spooled for {previous}, not {store}: start "
                                  "with that store once to store them, or give this one its own --spool")
            path.write_bytes(orjson.dumps({"pid": os.getpid(), "store": store}))
        except BaseException:
            os.close(fd)
            raise
        if self._claim_fd >= 0:
            os.close(self._claim_fd)
        self._claim_fd, self._store = fd, store

    def _check_folder(self) -> None:
        """The folder removed under us: make it again (and claim it again), and say so once."""
        if self.folder.is_dir():
            return
        log.error("the spool folder %s was removed; making it again (hits in segments closed then are lost)",
                  self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._store is not None:
            with contextlib.suppress(MongolError, OSError):
                self.claim(self._store)

    def backlog_bytes(self) -> int:
        """Bytes of spooled hits not yet stored."""
        total = 0
        for path in self.folder.glob(f"*{SUFFIX}"):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            total += size - self._segments.get(path.name, Segment(path)).offset
        return total

    def read(self, max_lines: int) -> tuple[list[bytes], list[tuple[Segment, int, int]]]:
        """Up to max_lines complete lines not stored yet, oldest segments first, and marks to pass to
        `commit` once they are stored: (segment, how far it will be stored, how many lines from it)."""
        self._check_folder()
        lines: list[bytes] = []
        marks: list[tuple[Segment, int, int]] = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            segment = self._segments.setdefault(path.name, Segment(path))
            if len(lines) >= max_lines:
                break
            try:
                with open(path, "rb") as f:
                    segment.follow(os.fstat(f.fileno()))
                    f.seek(segment.offset)
                    data = f.read(max(65536, (max_lines - len(lines)) * 512))
            except FileNotFoundError:
                self._segments.pop(path.name, None)
                continue
            end = data.rfind(b"\n") + 1
            if not end:
                continue
            take = data[:end].split(b"\n")
            take.pop()  # the empty piece after the last newline
            used = end  # bytes of the lines taken: all of them, unless the batch is full first
            if len(take) > max_lines - len(lines):
                take = take[:max_lines - len(lines)]
                used = sum(len(line) + 1 for line in take)
            lines.extend(take)
            marks.append((segment, segment.offset + used, len(take)))
        return lines, marks

    def commit(self, marks: list[tuple[Segment, int, int]]) -> None:
        for segment, offset, _ in marks:
            segment.offset = offset

    def remove_finished(self) -> int:
        """Delete closed segments whose every complete line is stored; returns how many went."""
        removed = 0
        for name, segment in list(self._segments.items()):
            try:
                fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                del self._segments[name]
                continue
            try:
                if _lock(fd) and self._finished(segment, fd):
                    segment.path.unlink(missing_ok=True)  # still under our lock: nobody appended
                    del self._segments[name]
                    removed += 1
            finally:
                os.close(fd)
        return removed

    @staticmethod
    def _finished(segment: Segment, fd: int) -> bool:
        """Every complete line of the locked, closed segment `fd` is stored."""
        st = os.fstat(fd)
        if segment.inode != (st.st_dev, st.st_ino):
            return False  # not read yet, or another file under the name: the next read sees it
        if segment.offset < st.st_size:
            rest = os.pread(fd, st.st_size - segment.offset, segment.offset)
            if b"\n" in rest:
                return False  # complete lines still to store
            # Closed with an unterminated last line: a write torn by a crash or a full disk.
            log.warning("dropping a torn last line (%d bytes) of %s", len(rest), segment.path.name)
        return True


def _lock(fd: int) -> bool:
    """Take a shared lock on a segment if no process holds it open for appending."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _owner(fd: int) -> dict:
    try:
        return orjson.loads(os.pread(fd, 65536, 0) or b"{}")
    except orjson.JSONDecodeError:
        return {}


def _is_closed(path: Path) -> bool:
    """True when no process holds the file open for appending."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        return _lock(fd)
    finally:
        os.close(fd)
