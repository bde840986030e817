"""Responses that wait for the end of the loop's turn (mongol.httpserver's outbox): on loopback a
send wakes the client, and sends spread between requests woke it once per response, so the
responses to lists are queued as they are made and sent together once every connection ready in
the turn has been served. Before any of them leaves, the server's `before_send` (the spool's
write of their hits) must succeed.
"""

import contextlib
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mongol.httprequest import Connection


class Outbox:
    """WSGIServer's half that sends: `_queue` a response, `_flush` once per turn."""

    loop: Any
    error_log: Any
    before_send: Callable[[], bool] | None

    def _init_outbox(self, before_send: Callable[[], bool] | None) -> None:
        self._outbox: list[Connection] = []  # connections with responses to send at the end of this turn
        self._flush_due = False
        self.before_send = before_send

    def _queue(self, conn: "Connection", result: list) -> None:
        """Queue the response to a list for _flush, which sends those of every connection ready in
        this turn of the loop once all have been served: one burst of sends rather than one between
        each two requests."""
        body = result[0] if len(result) == 1 else b"".join(result)
        if type(body) is not bytes:
            raise TypeError(f"the application must return bytes, not {type(body).__name__}")
        out = conn.whole_response(body)
        conn.sent = True
        conn.out = conn.out + out if conn.out else out  # pipelined: after the ones before it
        if not conn.queued:
            conn.queued = True
            self._outbox.append(conn)
            if not self._flush_due:
                self._flush_due = True
                self.loop.run_callback(self._flush)

    def _flush(self) -> None:
        """Runs in the hub once per turn of the loop, after every connection that was ready has been
        served (gevent runs callbacks just before it polls again): send each its responses. When
        the client reads them slowly and they do not fit the socket, the connection's greenlet,
        waiting for the next request, is woken to send the rest."""
        self._flush_due = False
        if self.before_send is not None and not self._before_send():
            return
        outbox, self._outbox = self._outbox, []  # a greenlet woken below may queue for the next turn
        for conn in outbox:
            conn.queued = False
            data = conn.out
            if not data:
                continue  # sent already: the greenlet had something else to send, or closed
            try:
                sent = conn.raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                conn.out = b""
                continue  # the client is gone: the greenlet's next recv says so and closes
            if sent == len(data):
                conn.out = b""
                continue
            conn.out = data[sent:]
            if conn.waiting and conn.read_event.active:
                conn.greenlet.switch()  # it waits in _serve, which sends conn.out when woken

    def _before_send(self) -> bool:
        """Call `before_send`, which makes good what the answers queued so far promise (the spool
        lines of their hits), before any of them leaves. When it cannot, none may leave: each
        connection with answers waiting is closed without them (the client may try again), and False
        tells the caller (Responder.sendall) to close its own."""
        if self.before_send():  # type: ignore[misc]
            return True
        outbox, self._outbox = self._outbox, []
        for conn in outbox:
            conn.queued = False
            if conn.out:
                conn.out = b""
                with contextlib.suppress(OSError):
                    conn.raw.shutdown(socket.SHUT_RDWR)  # wakes its greenlet, whose recv then ends it
        self.error_log.debug("answers withheld on %d connection(s): before_send failed", len(outbox))
        return False
