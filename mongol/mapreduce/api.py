"""What a map/reduce run is given and how it fails: its limits, its errors, and what a HitSource is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from mongol.errors import MongolError

#: Hits handed to the engine per call.
BATCH_SIZE = 1000
#: The user's functions, in the order the engine numbers them.
OPTIONS = ("mapper", "reducer", "finalize")


class MapReduceError(MongolError):
    """A map/reduce run failed: a JavaScript error, the CPU or memory limit, or a worker that died."""


class CompileError(MongolError):
    """An option's JavaScript source does not compile to a function."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        #: "mapper", "reducer" or "finalize"
        self.option = option

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.option, str(self))


@dataclass(frozen=True)
class Limits:
    """What one map/reduce run may use."""

    #: Total CPU time of the JavaScript for one run (one report section), across all workers.
    cpu_seconds: float = 300.0
    #: Memory of each worker's JavaScript context.
    memory_mb: int = 512

    def __post_init__(self) -> None:
        if not self.cpu_seconds > 0:
            raise ValueError(f"cpu_seconds must be positive, not {self.cpu_seconds!r}")
        if self.memory_mb < 8:
            raise ValueError(f"memory_mb must be at least 8, not {self.memory_mb!r}")


DEFAULT_LIMITS = Limits()


class HitSource(Protocol):
    """Hits that the workers read themselves, part by part, so that no hit passes through the parent.

    The object is pickled to every worker: keep it small, with no open connection in it.
    """

    def count(self) -> int:
        """How many hits there are (called in the parent, for a progress bar only)."""

    def parts(self) -> Iterable[tuple[int, Any]]:
        """Called in the parent: the parts to hand out, as (about how many hits, part); a part is any
        value orjson can encode, and together the parts hold every hit once."""

    def read(self, part: Any) -> Iterable[tuple[int, str, bool]]:
        """Called in a worker: the hits of one part, in batches of at most BATCH_SIZE hits, each
        (how many, text, tagged). The text is the JSON array [docs, ids, times]: docs, one JSON
        object per hit; ids, null or each hit's `_id` (a string); times, null or each hit's `time` in
        milliseconds since 1970, UTC. A hit gets `_id` then `time` as its last fields, time as a Date.
        Unless `tagged`, no doc holds a DATE_TAG or number tag (as a key), so none is looked for.
        Raise MongolError (StoreError) when the store cannot be read: its message fails the run.
        """
