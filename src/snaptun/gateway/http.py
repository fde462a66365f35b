"""A minimal asyncio HTTP/1.1 server on h11 for ``/metrics``, ``/healthz`` and the admin API.

Routes answer GET and HEAD: synchronous handlers without arguments returning
``(status, content type, body[, headers])``. Actions answer POST only: they get
the :class:`Request` (query, headers, body) and return the same. Everything is
bounded, and what happens at each bound is fixed:

- request head larger than ``max_head`` bytes: 431, then close;
- request body (discarded) larger than ``max_body`` bytes: 413, then close;
- a request (head and body) not complete within ``timeout`` seconds of waiting
  for it, idle keep-alive time included, or a response not written within
  ``timeout``: the connection is closed without an answer;
- more than ``max_connections`` open connections: the new one is closed at once
  (counted in :attr:`HttpServer.refused`);
- malformed request: 400, then close; unknown path: 404; other methods: 405
  (so a browser's CORS preflight, OPTIONS, is refused: no cross-site POST
  with a non-simple header ever reaches an action).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Final, NamedTuple
from urllib.parse import parse_qs

import h11
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from snaptun.errors import SnaptunError

__all__ = ["Action", "Answer", "Handler", "HttpServer", "Request", "health_route", "metrics_route"]

Answer = tuple[int, str, bytes] | tuple[int, str, bytes, tuple[tuple[str, str], ...]]
"""Status, content type, body, and optionally more response headers."""
Handler = Callable[[], Answer]
"""A route (GET, HEAD): returns status, content type and body."""


class Request(NamedTuple):
    """What an action sees of a request."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Lower-case names; a repeated field keeps its last value."""
    body: bytes


Action = Callable[[Request], Answer]
"""An action (POST only): gets the request, returns what a route returns."""

_log = logging.getLogger(__name__)

_TEXT: Final = "text/plain; charset=utf-8"
_READ_SIZE: Final = 4096
_METHODS: Final = (b"GET", b"HEAD")
_POST: Final = b"POST"


class _Response(NamedTuple):
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class _Reject(SnaptunError):
    """Answer ``status`` and close the connection."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class HttpServer:
    """A running server; create it with :meth:`start`, stop it with :meth:`close`."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        actions: Mapping[str, Action] | None = None,
        timeout: float = 10.0,
        max_connections: int = 64,
        max_head: int = 8192,
        max_body: int = 65536,
    ) -> None:
        if timeout <= 0 or max_connections < 1 or max_head < 64 or max_body < 0:
            raise ValueError("timeout, max_connections, max_head and max_body must be positive")
        self._routes = dict(routes)
        self._actions = dict(actions or {})
        self._timeout = timeout
        self._max_connections = max_connections
        self._max_head = max_head
        self._max_body = max_body
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused = 0
        """Connections closed at once because ``max_connections`` were open."""

    @classmethod
    async def start(
        cls,
        host: str,
        port: int,
        routes: Mapping[str, Handler],
        *,
        actions: Mapping[str, Action] | None = None,
        timeout: float = 10.0,
        max_connections: int = 64,
        max_head: int = 8192,
        max_body: int = 65536,
    ) -> HttpServer:
        """Listen on ``host:port`` (port 0: any free port) and serve ``routes`` and ``actions``."""
        self = cls(
            routes,
            actions=actions,
            timeout=timeout,
            max_connections=max_connections,
            max_head=max_head,
            max_body=max_body,
        )
        self._server = await asyncio.start_server(self._accept, host, port)
        return self

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not running")
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._tasks)

    async def close(self) -> None:
        """Stop listening and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._tasks) >= self._max_connections or self._server is None:
            self.refused += 1
            writer.transport.abort()
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, TimeoutError):
            pass  # peer went away, or too slow: nothing to answer
        finally:
            self._tasks.discard(task)
            await self._close(writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close after what is buffered has gone out; abort if that takes too long."""
        writer.close()
        try:
            async with asyncio.timeout(self._timeout):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    request = await self._read_request(conn, reader)
            except h11.RemoteProtocolError as exc:
                await self._reject(conn, writer, exc.error_status_hint)
                return
            except _Reject as exc:
                await self._reject(conn, writer, exc.status)
                return
            if request is None:
                return
            await self._send(conn, writer, request[0].method, self._answer(*request))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # Connection: close, HTTP/1.0, ...
            conn.start_next_cycle()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request, bytes] | None:
        """The next complete request and its body, or None when the peer closed."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(_READ_SIZE))
            elif isinstance(event, h11.Request):
                if _head_size(event) > self._max_head:
                    # h11 bounds only an incomplete head; one that completes in
                    # the last read may be up to _READ_SIZE bytes larger.
                    raise _Reject(431)
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._max_body:
                    raise _Reject(413)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None  # h11 yields the Request first
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:  # pragma: no cover - h11 yields nothing else to a server before EndOfMessage
                raise h11.RemoteProtocolError(f"unexpected {event!r}", error_status_hint=400)

    def _answer(self, request: h11.Request, body: bytes) -> _Response:
        target, _, query = request.target.decode("ascii", "replace").partition("?")
        path = target
        action = self._actions.get(path)
        handler = self._routes.get(path)
        try:
            if action is not None:
                if request.method != _POST:
                    return _Response(405, _TEXT, b"method not allowed\n", (("allow", "POST"),))
                headers = {
                    name.decode("ascii").lower(): value.decode("latin-1")
                    for name, value in request.headers.raw_items()
                }
                method = request.method.decode("ascii")
                return _Response(*action(Request(method, path, parse_qs(query), headers, body)))
            if handler is None:
                return _Response(404, _TEXT, b"not found\n")
            if request.method not in _METHODS:
                return _Response(405, _TEXT, b"method not allowed\n", (("allow", "GET, HEAD"),))
            return _Response(*handler())
        except Exception:
            _log.exception("handler of %s failed", path)
            return _Response(500, _TEXT, b"internal error\n")

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        method: bytes,
        response: _Response,
    ) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            *response.headers,
        ]
        data = conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if method != b"HEAD" and response.body:
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        writer.write(data)
        async with asyncio.timeout(self._timeout):
            await writer.drain()

    async def _reject(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int
    ) -> None:
        """Answer ``status`` if a response can still be sent; the caller closes."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        reason = {413: b"request body too large\n", 431: b"request head too large\n"}
        body = reason.get(status, b"bad request\n")
        with suppress(h11.LocalProtocolError):
            close = (("connection", "close"),)
            await self._send(conn, writer, b"GET", _Response(status, _TEXT, body, close))


def _head_size(request: h11.Request) -> int:
    """Bytes of the request head as sent, less the optional whitespace around field values."""
    line = len(request.method) + len(request.target) + len(b" HTTP/1.1\r\n") + 1
    fields = sum(len(name) + len(value) + 3 for name, value in request.headers.raw_items())
    return line + fields + 2


def metrics_route(registry: CollectorRegistry = REGISTRY) -> Handler:
    """A route serving ``registry`` in the Prometheus text format."""

    def handler() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

    return handler


def health_route(check: Callable[[], bool] | None = None) -> Handler:
    """A route answering 200 ``ok`` while ``check()`` is true (always, without one), else 503."""

    def handler() -> tuple[int, str, bytes]:
        if check is None or check():
            return 200, _TEXT, b"ok\n"
        return 503, _TEXT, b"unavailable\n"

    return handler
