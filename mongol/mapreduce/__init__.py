"""MongoDB-style map/reduce over hits, run in quickjs-ng inside spawned worker processes.

The user's JavaScript never runs in the calling process. Each worker owns one QuickJS context with
no file system, network, environment, module loader or Python callables in it, under a memory limit,
and every call into it runs under what is left of the run's CPU budget.

Speed comes from crossing into the engine once per batch: the parent encodes ~1000 hits as one JSON
text (dates as tagged numbers), and the loop over them (parse, call the mapper with the hit as `this`,
group emits in a Map keyed by a canonical string of the key, re-reduce keys whose values pile up)
runs inside JavaScript. Parsing is most of that work, so a mapper that reads the hit only as
`this.name` gets only the fields it names. With several workers each reduces its share; the partial
results are split by key, merged by re-reduce and finalized in parallel.

A store that the workers can read themselves (SQLite) is given as a HitSource instead: the parent
only hands out parts of it (map_reduce_source), each worker reads its parts' raw JSON and JavaScript
parses each hit once, so no hit passes through the parent, which would otherwise take a core of its
own to read and feed the workers.

The package, one concern per module: api (limits, errors, HitSource), codec (Python <-> the engine's
JSON), driver.js (the JavaScript side), engine (one QuickJS context), worker (the worker process),
source (what a mapper may be), pool (the parent's side of the workers); this module runs them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from typing import Any

from mongol.mapreduce.api import (
    BATCH_SIZE,
    DEFAULT_LIMITS,
    CompileError,
    HitSource,
    Limits,
    MapReduceError,
)
from mongol.mapreduce.codec import DATE_TAG, encode_batch, fields_read
from mongol.mapreduce.pool import Pool
from mongol.mapreduce.source import check_compiles, sources_of

__all__ = ["BATCH_SIZE", "DATE_TAG", "CompileError", "HitSource", "Limits", "MapReduceError", "check_compiles",
           "encoded_batches", "map_reduce", "map_reduce_encoded", "map_reduce_source", "mapper_fields"]

#: With `workers=None`, more workers are started once this many hits have been read.
SPLIT_AFTER = 50_000


def _batches(hits: Iterable[dict]) -> Iterator[list[dict]]:
    it = iter(hits)
    while batch := list(islice(it, BATCH_SIZE)):
        yield batch


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def map_reduce(hits: Iterable[dict], mapper: str, reducer: str, finalize: str | None = None, *,
               limits: Limits = DEFAULT_LIMITS, workers: int | None = None) -> list[tuple[Any, Any]]:
    """(key, value) pairs, one per distinct emitted key, in no particular order.

    Runs `mapper` with each hit as `this`, `reducer` on the values emitted for each key (possibly
    several times, on its own output), then `finalize` on each key, with MongoDB's semantics.
    `workers=None` uses one worker process, and as many as there are CPUs once more than
    SPLIT_AFTER hits arrive; each worker's JavaScript context has its own `limits.memory_mb`.
    The results are the same for any number of workers, given a reducer that MongoDB accepts
    (one whose result does not depend on how the values are grouped; float sums may differ in
    their last digits).

    Workers are started with multiprocessing's "spawn" method, which imports the calling program's
    `__main__` module again in each worker: keep a script's work, and any gevent monkey-patching,
    under `if __name__ == "__main__":`.
    """
    return map_reduce_encoded(encoded_batches(hits, mapper), mapper, reducer, finalize, limits=limits, workers=workers)


def encoded_batches(hits: Iterable[dict], mapper: str) -> Iterator[tuple[int, bytes]]:
    """Hits as map_reduce_encoded takes them: (count, JSON array) per batch, only the fields the mapper reads."""
    fields = fields_read(mapper)
    for batch in _batches(hits):
        yield len(batch), encode_batch(batch, fields)


def map_reduce_encoded(batches: Iterable[tuple[int, bytes]], mapper: str, reducer: str, finalize: str | None = None,
                       *, limits: Limits = DEFAULT_LIMITS, workers: int | None = None) -> list[tuple[Any, Any]]:
    """map_reduce over batches already encoded: (number of hits, a JSON array of them), each hit with
    at least the fields `mapper_fields(mapper)` names, and dates as `{DATE_TAG: milliseconds}`.
    A store that can write that JSON itself spares the parent decoding and encoding every hit."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers!r}")
    sources = sources_of(mapper, reducer, finalize)
    check_compiles(*sources)
    target = workers or _cpu_count()
    with Pool(sources, limits) as pool:
        pool.start(1 if workers is None else workers)
        seen = 0
        for count, batch in batches:
            pool.dispatch(batch)
            seen += count
            if len(pool.workers) < target and seen > SPLIT_AFTER:
                pool.start(target - len(pool.workers))
        return pool.finish()


def map_reduce_source(hits: HitSource, mapper: str, reducer: str, finalize: str | None = None, *,
                      limits: Limits = DEFAULT_LIMITS, workers: int | None = None,
                      progress: Callable[[Iterator[tuple[int, bytes]], int], Iterator[tuple[int, bytes]]] | None
                      = None) -> list[tuple[Any, Any]]:
    """map_reduce over hits that the workers read themselves, so that no hit passes through the
    parent (which only hands out the parts): the same results as map_reduce over the same hits.

    With `workers=None`, one worker, or as many as there are CPUs once the parts hold more than
    SPLIT_AFTER hits. `progress`, given, wraps an iterator of (hits mapped since the last item, b"")
    with the hit count, and must yield what it wraps (a progress bar: see mongol.report.compute).
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers!r}")
    sources = sources_of(mapper, reducer, finalize)
    check_compiles(*sources)
    parts: Iterator[tuple[int, Any]] = iter(hits.parts())
    if workers is None:
        head, planned = [], 0
        for size, part in parts:
            head.append((size, part))
            planned += size
            if planned > SPLIT_AFTER:
                break
        workers = _cpu_count() if planned > SPLIT_AFTER else 1
        parts = chain(head, parts)
    with Pool(sources, limits, hits) as pool:
        pool.start(workers)
        ticks: Iterator[tuple[int, bytes]] = ((count, b"") for count in pool.scan(parts))
        if progress is not None:
            ticks = progress(ticks, hits.count())
        for _ in ticks:
            pass
        return pool.finish()


def mapper_fields(mapper: str) -> frozenset[str] | None:
    """The hit fields a mapper can observe (None: it may see them all): what a batch must hold."""
    return fields_read(mapper.strip())
