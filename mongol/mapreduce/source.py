"""What the mapper, reducer and finalize sources may be, and the compile check that proves a source is
one function expression without running any of it.

A source is a function expression (`function (k, vs) { ... }`, an arrow function, either in
parentheses), used as written. Anything else is taken as MongoDB takes a string that is not a function
(its functionExpressionParser in mongohelpers.js): the body of `function () { ... }`, whose last
statement, if it is an expression, is returned. So `emit(this.url, 1)` is a mapper, and
`return Array.sum(arguments[1])` or `var vs = arguments[1]; Array.sum(vs)` a reducer.
"""

from __future__ import annotations

import re
from typing import Any

from mongol.mapreduce.api import OPTIONS, CompileError

_SYNTAX_AT = re.compile(r"at <input>:(\d+):(\d+)")
_FUNCTION_START = re.compile(r"(?:async\b\s*)?(?:function\b|\(|[A-Za-z_$][\w$]*\s*=>)")
_LEADING_COMMENTS = re.compile(r"(?:\s+|//[^\n]*|/\*.*?\*/)*", re.DOTALL)
# The source starts at line 2, column 1 of each wrapper, so error positions map back directly.
# QuickJS compiles a whole script before running its first statement, so a script that starts with
# `throw` shows whether the rest compiles without executing it.
_AS_EXPRESSION = (("throw 0; (\n", "\n)"), ("throw 0; (0 ? \n", "\n : 0)"))
_AS_BODY = (("throw 0; (function () {\n", "\n})"), ("throw 0; (0 ? function () {\n", "\n} : 0)"))
# Where the last statement of a body may start: after a `;`, a `}` or a line break.
_STATEMENT_END = re.compile(r"[;}\n]")
_CANDIDATES = 400
# What, at the start of a line, continues the expression of the line before (no semicolon is inserted).
_CONTINUES = re.compile(r"\s*(?:[-+*/%<>=&|^?:,.(\[`]|(?:in|instanceof)\b)")


def js_error_text(exc: BaseException, limit: int = 300) -> str:
    """The first line of a JavaScript exception: "TypeError: cannot read property 'x' of undefined"."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    if len(first) > limit:
        first = first[:limit] + "..."
    if len(lines) > 1 and lines[1] == "undefined":  # something other than an Error was thrown
        return f"uncaught exception: {first}"
    return first


def _compile_error(ctx: Any, source: str, wrappers: tuple[tuple[str, str], ...]) -> str | None:
    """Why `source` does not compile in both wrappers (with its line and column), or None if it does.

    In _AS_EXPRESSION, breaking out of `(SOURCE)` takes an unmatched `)`; out of `(0 ? SOURCE : 0)`, that
    or a `:` outside any `?`, both of which the first rejects: so a source that compiles in both is one
    expression, and the second (where a top-level comma cannot appear) makes it a single one. _AS_BODY
    is the same proof for a function body, whose way out is an unmatched `}`.
    """
    import quickjs

    for prefix, suffix in wrappers:
        try:
            ctx.eval(prefix + source + suffix)
        except quickjs.JSException as exc:
            text = str(exc)
            if not text.startswith("SyntaxError"):
                if text.startswith("0"):  # our `throw 0`: it compiled
                    continue
                return js_error_text(exc)
            where = ""
            m = _SYNTAX_AT.search(text)
            if m:
                line = int(m.group(1)) - 1
                if 1 <= line <= source.count("\n") + 1:
                    where = f" (line {line}, column {m.group(2)})"
                else:
                    where = " (at the end)"
            return js_error_text(exc) + where
    return None


def _as_function(ctx: Any, body: str) -> str | None:
    """`body` as MongoDB makes a function of it: `function () { BODY }`, its last statement returned if
    it is an expression (the longest expression that ends the body and starts a statement); None if
    `body` is no function body."""
    if _compile_error(ctx, body, _AS_BODY) is not None:
        return None
    # Each candidate costs a few compiles of the body: only the last _CANDIDATES are looked at, so that a
    # huge body cannot stall the check (a last expression that starts earlier is then not returned).
    starts = [0, *(m.end() for m in _STATEMENT_END.finditer(body))]
    for start in starts[-_CANDIDATES:] if len(starts) > _CANDIDATES else starts:
        head, tail = body[:start], body[start:]
        if not tail.strip() or (start and body[start - 1] != ";" and _CONTINUES.match(tail)):
            continue
        if _compile_error(ctx, head, _AS_BODY) is not None or _compile_error(ctx, tail, _AS_EXPRESSION) is not None:
            continue
        candidate = f"{head}\nreturn (\n{tail}\n);"
        if _compile_error(ctx, candidate, _AS_BODY) is None:
            return f"function () {{\n{candidate}\n}}"
    return f"function () {{\n{body}\n}}"


def function_source(ctx: Any, option: str, source: str) -> str:
    """`source` as one function expression, safe to put in parentheses, or CompileError; runs none of it.

    A function expression comes back as written; any other source that compiles as a function body
    comes back as the function MongoDB makes of it (see the module docstring).
    """
    if not isinstance(source, str):
        raise CompileError(option, f"{option} must be JavaScript source text, not {type(source).__name__}")
    if not source.strip():
        raise CompileError(option, f"{option} is empty: expected a function such as function () {{ ... }}")
    looks_like_function = _FUNCTION_START.match(source[_LEADING_COMMENTS.match(source).end():]) is not None
    error = _compile_error(ctx, source, _AS_EXPRESSION)
    if error is None and looks_like_function:
        return source
    if not looks_like_function:
        function = _as_function(ctx, source)
        if function is not None:
            return function
        error = _compile_error(ctx, source, _AS_BODY)
    raise CompileError(option, f"{option} does not compile: {error}")


def sources_of(mapper: str, reducer: str, finalize: str | None) -> list[str | None]:
    if isinstance(finalize, str) and not finalize.strip():
        finalize = None
    return [mapper, reducer, finalize]


def check_compiles(mapper: str, reducer: str, finalize: str | None = None) -> None:
    """Raise CompileError naming the option whose source does not compile.

    Nothing of the sources runs here: this is a syntax check, and a check that each source is a
    single function expression or a function body (see function_source). That an expression really
    evaluates to a function is checked, inside a worker, when a run starts. A blank `finalize`
    counts as none.
    """
    import quickjs  # imported late: importing it starts a thread, which a program that never checks JS can skip

    ctx = quickjs.Context()
    ctx.set_memory_limit(64 * 1024 * 1024)
    ctx.set_time_limit(5)  # parsing only, but a huge source should not stall the caller
    for option, source in zip(OPTIONS, sources_of(mapper, reducer, finalize), strict=True):
        if source is not None:
            function_source(ctx, option, source)
