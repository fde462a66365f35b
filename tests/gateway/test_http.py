"""The /metrics and /healthz HTTP server, over real loopback connections."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping

import h11
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from snaptun.gateway.http import Answer, Handler, HttpServer, Request, health_route, metrics_route

TIMEOUT = 0.3


class Client:
    """One HTTP/1.1 connection driven by an h11 client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, server: HttpServer) -> Client:
        return cls(*await asyncio.open_connection(*server.address))

    async def request(
        self,
        target: str,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> tuple[int, dict[str, str], bytes]:
        fields = [("host", "localhost"), *(headers or {}).items()]
        if body:
            fields.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=fields)) or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        self.writer.write(data)
        await self.writer.drain()
        status, response_headers, content = 0, {}, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await asyncio.wait_for(self.reader.read(65536), 5))
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                content += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return status, response_headers, content
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def read_to_eof(reader: asyncio.StreamReader, limit: float = 5.0) -> bytes:
    """Everything until the server closes; a reset counts as closed."""
    try:
        return await asyncio.wait_for(reader.read(), limit)
    except ConnectionResetError:
        return b""


def failing() -> tuple[int, str, bytes]:
    raise RuntimeError("boom")


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("snaptun_test_packets", "packets seen in the test", registry=registry)
    counter.inc(3)
    return registry


@pytest.fixture
async def server(registry: CollectorRegistry) -> AsyncIterator[HttpServer]:
    routes: dict[str, Handler] = {
        "/metrics": metrics_route(registry),
        "/healthz": health_route(),
        "/sick": health_route(lambda: False),
        "/boom": failing,
    }
    server = await HttpServer.start(
        "127.0.0.1",
        0,
        routes,
        actions={"/echo": echo, "/boom-action": lambda _: failing()},
        timeout=TIMEOUT,
        max_connections=4,
    )
    yield server
    await server.close()


def echo(request: Request) -> Answer:
    """An action answering what it saw of the request, with one extra header."""
    seen = {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "x": request.headers.get("x-test"),
        "body": request.body.decode(),
    }
    return 201, "application/json", json.dumps(seen).encode(), (("x-seen", "yes"),)


async def test_action_gets_query_headers_and_body(server: HttpServer) -> None:
    client = await Client.open(server)
    status, headers, body = await client.request(
        "/echo?a=1&a=2&b=", method="POST", headers={"X-Test": "v"}, body=b"payload"
    )
    assert (status, headers["x-seen"]) == (201, "yes")
    assert json.loads(body) == {
        "method": "POST",
        "path": "/echo",
        "query": {"a": ["1", "2"]},
        "x": "v",
        "body": "payload",
    }
    status, headers, _ = await client.request("/echo")  # an action answers POST only
    assert (status, headers["allow"]) == (405, "POST")
    status, _, _ = await client.request("/echo", method="OPTIONS")  # no CORS preflight
    assert status == 405
    status, _, body = await client.request("/boom-action", method="POST")
    assert (status, body) == (500, b"internal error\n")
    await client.close()


async def test_address(server: HttpServer) -> None:
    host, port = server.address
    assert host == "127.0.0.1"
    assert port > 0


async def test_metrics(server: HttpServer) -> None:
    client = await Client.open(server)
    status, headers, body = await client.request("/metrics")
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    assert b"snaptun_test_packets_total 3.0" in body
    assert int(headers["content-length"]) == len(body)
    await client.close()


async def test_query_string_is_ignored(server: HttpServer) -> None:
    client = await Client.open(server)
    status, _, body = await client.request("/metrics?name[]=x")
    assert status == 200
    assert b"snaptun_test_packets" in body
    await client.close()


async def test_healthz(server: HttpServer) -> None:
    client = await Client.open(server)
    status, _, body = await client.request("/healthz")
    assert (status, body) == (200, b"ok\n")
    status, _, _ = await client.request("/sick")
    assert status == 503
    await client.close()


async def test_not_found(server: HttpServer) -> None:
    client = await Client.open(server)
    status, _, _ = await client.request("/nope")
    assert status == 404
    status, _, _ = await client.request("/metrics")  # still open
    assert status == 200
    await client.close()


async def test_method_not_allowed(server: HttpServer) -> None:
    client = await Client.open(server)
    status, headers, _ = await client.request("/metrics", method="POST", body=b"x=1")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    status, _, _ = await client.request("/healthz")  # keep-alive after a body was discarded
    assert status == 200
    await client.close()


async def test_head(server: HttpServer) -> None:
    client = await Client.open(server)
    status, headers, body = await client.request("/healthz", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == "3"
    status, _, body = await client.request("/healthz")  # no stray body bytes in between
    assert (status, body) == (200, b"ok\n")
    await client.close()


async def test_keep_alive_two_requests_one_connection(server: HttpServer) -> None:
    client = await Client.open(server)
    first = await client.request("/metrics")
    second = await client.request("/healthz")
    assert (first[0], second[0]) == (200, 200)
    assert server.connections == 1
    await client.close()


async def test_connection_close_is_honoured(server: HttpServer) -> None:
    client = await Client.open(server)
    status, headers, _ = await client.request("/healthz", headers={"connection": "close"})
    assert status == 200
    assert headers.get("connection") == "close"
    assert await read_to_eof(client.reader) == b""
    await client.close()


async def test_handler_failure_is_500(server: HttpServer) -> None:
    client = await Client.open(server)
    status, _, _ = await client.request("/boom")
    assert status == 500
    await client.close()


async def test_garbage_is_400_then_close(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    answer = await read_to_eof(reader)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in answer.lower()
    writer.close()


async def test_oversized_head_is_431_then_close(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\nx-filler: " + b"a" * 9000 + b"\r\n\r\n")
    answer = await read_to_eof(reader)
    assert answer.startswith(b"HTTP/1.1 431 ")
    writer.close()


async def test_head_just_below_the_limit_is_served(server: HttpServer) -> None:
    client = await Client.open(server)
    status, _, _ = await client.request("/healthz", headers={"x-filler": "a" * 8000})
    assert status == 200
    await client.close()


async def test_oversized_body_is_413_then_close(registry: CollectorRegistry) -> None:
    server = await HttpServer.start(
        "127.0.0.1", 0, {"/metrics": metrics_route(registry)}, max_body=100
    )
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n" + b"a" * 1000)
    answer = await read_to_eof(reader)
    assert answer.startswith(b"HTTP/1.1 413 ")
    writer.close()
    await server.close()


async def test_slowloris_is_closed_after_the_timeout(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    started = time.monotonic()
    writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")  # the head never ends
    for _ in range(3):
        await asyncio.sleep(TIMEOUT / 4)
        writer.write(b"x-more: 1\r\n")  # trickling does not extend the deadline
    assert await read_to_eof(reader) == b""
    assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + 2
    writer.close()


async def test_idle_keep_alive_is_closed_after_the_timeout(server: HttpServer) -> None:
    client = await Client.open(server)
    assert (await client.request("/healthz"))[0] == 200
    assert await read_to_eof(client.reader) == b""
    await client.close()


async def test_excess_connections_are_closed(server: HttpServer) -> None:
    clients = [await Client.open(server) for _ in range(4)]
    for client in clients:  # each is registered once it has been answered
        assert (await client.request("/healthz"))[0] == 200
    reader, writer = await asyncio.open_connection(*server.address)
    assert await read_to_eof(reader, limit=TIMEOUT / 2) == b""
    assert server.refused == 1
    assert server.connections == 4
    writer.close()
    for client in clients:
        await client.close()


async def test_close_ends_open_connections(registry: CollectorRegistry) -> None:
    server = await HttpServer.start("127.0.0.1", 0, {"/metrics": metrics_route(registry)})
    client = await Client.open(server)
    assert (await client.request("/metrics"))[0] == 200
    await server.close()
    assert await read_to_eof(client.reader) == b""
    assert server.connections == 0
    with pytest.raises(OSError):  # noqa: PT011 - refused: nothing listens any more
        await asyncio.open_connection(*client.writer.get_extra_info("peername"))
    await server.close()  # idempotent
    await client.close()


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        HttpServer({}, timeout=0)
