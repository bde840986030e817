"""One QuickJS context holding the driver (driver.js) and the user's functions, with its CPU accounting."""

from __future__ import annotations

import re
import time
from importlib.resources import files
from typing import Any

from mongol.mapreduce.api import OPTIONS, CompileError, Limits
from mongol.mapreduce.source import function_source, js_error_text

#: The JavaScript side, read once per process.
DRIVER = files("mongol.mapreduce").joinpath("driver.js").read_text(encoding="utf-8")

# What the engine was doing, by the number the driver keeps in __mongol_phase (for error messages).
PHASES = ("mapper", "reducer", "finalize", "converting the results", "reading the hits", "merging the results")


# How the binding shows a thrown null (a thrown "null" string reads "null\nundefined"). QuickJS throws
# null itself when it runs out of memory so completely that it cannot even allocate the error object,
# and the memory is freed again by the time the exception arrives, so nothing in the engine tells the
# two apart afterwards. A null can only come from the user's code through a `throw` (or a generator's
# throw()), or through code it builds at run time (eval, Function, a function's constructor): a null
# from functions whose source names none of these is the engine running out of memory.
_THROWN_NULL = "null\n"
_MAY_THROW = re.compile(r"\b(?:throw|eval|Function|constructor)\b")


class Fatal(Exception):
    """Raised inside a worker for an error to report to the parent."""

    def __init__(self, kind: str, option: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.option, self.message = kind, option, message


class Engine:
    """One QuickJS context with the driver and the user's functions, and its CPU accounting."""

    def __init__(self, sources: list[str | None], limits: Limits) -> None:
        import quickjs

        self.quickjs = quickjs
        self.limits = limits
        self.used = 0.0
        self.allowance = limits.cpu_seconds
        # A null exception means out of memory unless the user's code itself can throw one.
        self.may_throw_null = any(source is not None and _MAY_THROW.search(source) for source in sources)
        self.ctx = quickjs.Context()
        self.ctx.set_memory_limit(limits.memory_mb * 1024 * 1024)
        self.ctx.eval(DRIVER)
        self.map_ = self.ctx.get("__mongol_map")
        self.map_hits_ = self.ctx.get("__mongol_map_hits")
        self.finish_ = self.ctx.get("__mongol_finish")
        self.partial_ = self.ctx.get("__mongol_partial")
        self.absorb_ = self.ctx.get("__mongol_absorb")
        for which, (option, source) in enumerate(zip(OPTIONS, sources, strict=True)):
            if source is None:
                continue
            try:
                source = function_source(self.ctx, option, source)
            except CompileError as exc:
                raise Fatal("compile", option, str(exc)) from None
            # function_source proved the source a single expression: it cannot break out of the call.
            kind = self._call(self.ctx.eval, f"__mongol_install({which}, (\n{source}\n))", option=option,
                              compiling=True)
            if kind != "function":
                what = kind if kind in ("undefined", "null") else ("an " if kind[0] in "aeiou" else "a ") + kind
                raise Fatal("compile", option, f"{option} is not a function: it evaluates to {what}")

    def _call(self, fn: Any, *args: Any, option: str | None = None, compiling: bool = False,
              next_up: str = "mapper") -> Any:
        """Call into JavaScript with the remaining CPU budget.

        Errors name `option`, else what the driver was doing; if no budget is left, `next_up`.
        """
        remaining = self.allowance - self.used
        if remaining <= 0:
            raise Fatal("run", option or next_up, self._cpu_message(option or next_up))
        self.ctx.set_time_limit(remaining)
        start = time.process_time()
        try:
            return fn(*args)
        except self.quickjs.JSException as exc:
            option = option or self._phase()
            text = str(exc)
            if text.startswith("InternalError: interrupted"):
                raise Fatal("run", option, self._cpu_message(option)) from None
            # Out of memory, QuickJS throws InternalError("out of memory"), or null when even that
            # error cannot be allocated (the usual case when many small allocations fill the limit).
            if "out of memory" in text.split("\n", 1)[0] or (text == _THROWN_NULL and not self.may_throw_null):
                raise Fatal("run", option, f"{option} exceeded the memory limit of {self.limits.memory_mb} MB "
                                            f"(JavaScript memory per worker)") from None
            if text == _THROWN_NULL:  # the user's code may have thrown it, or the engine ran out of memory
                raise Fatal("run", option, f"{option} failed: uncaught exception: null (or it exceeded the "
                                            f"memory limit of {self.limits.memory_mb} MB)") from None
            if compiling:
                raise Fatal("compile", option, f"{option} does not evaluate to a function: "
                                                f"{js_error_text(exc)}") from None
            raise Fatal("run", option, f"{option} failed: {js_error_text(exc)}") from None
        finally:
            self.used += time.process_time() - start

    def _cpu_message(self, option: str) -> str:
        return (f"{option} exceeded the CPU time limit of {self.limits.cpu_seconds:g} s "
                f"(JavaScript CPU time for the whole run)")

    def _phase(self) -> str:
        try:
            self.ctx.set_time_limit(-1)
            return PHASES[int(self.ctx.get("__mongol_phase"))]
        except Exception:  # the context may be out of memory: fall back to a generic name
            return "map/reduce"

    def map(self, text: str, ordered: bool) -> None:
        self._call(self.map_, text, ordered)

    def map_hits(self, text: str, tagged: bool, ordered: bool) -> None:
        self._call(self.map_hits_, text, tagged, ordered)

    def finish(self) -> str:
        return self._call(self.finish_, next_up="reducer")

    def partial(self, n: int) -> list[str]:
        return [self._call(self.partial_, n, p, next_up="reducer") for p in range(n)]

    def absorb(self, text: str, ordered: bool) -> None:
        self._call(self.absorb_, text, ordered, next_up="merging the results")
