"""A UDP socket on the event loop that reads in bursts and writes in batches.

Why: one system call per datagram each way is most of a forwarded packet's
cost in Python. Here a readiness event drains the socket (at most ``burst``
datagrams, so other sockets get their turn) and hands each datagram, or each
batch read by one call, to a callback at once (no task, no queue); datagrams
sent while one burst (or one round of the event loop) is processed are
written together at its end, many to one address in one system call.

Three ways to do it, chosen by ``mode``:

* ``native``: qh3's binding of quinn-udp (``recvmmsg`` with GRO, ``sendmsg``
  with GSO); a private API of the pinned qh3, wrapped here and nowhere else.
* ``python``: the socket module: ``recvmsg`` with ``UDP_GRO`` (the segment
  size comes in the ancillary data) and ``sendmsg`` with a ``UDP_SEGMENT``
  control message (equal segments, a shorter last one, at most 64).
* ``plain``: ``recvfrom`` and ``sendto``, one datagram per call.

``auto`` takes the first that works. Where the kernel refuses segmentation
(``EIO``, ``EINVAL``, ``EOPNOTSUPP``, ...) GSO is switched off for good and the
batch is sent again without it; a socket that refuses ``UDP_GRO`` is read
without it. Every queue is bounded: datagrams that find the socket full
(``EAGAIN``) wait in a queue of at most ``queue_bytes`` bytes, written when the
socket is writable again; beyond that :meth:`UdpSocket.send` refuses (the
caller counts the drop).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Literal, Protocol, TypeAlias, cast

__all__ = ["MAX_SEGMENTS", "Address", "Batch", "Mode", "UdpSocket"]

log = logging.getLogger(__name__)

Address: TypeAlias = tuple[Any, ...]
"""A socket address as the socket module gives it: (host, port[, flowinfo, scope_id])."""
Batch: TypeAlias = list[tuple[bytes, Address]]
"""Datagrams read by one system call, each with its sender, in order."""
Mode: TypeAlias = Literal["auto", "native", "python", "plain"]

SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104
MAX_SEGMENTS: Final = 64
"""Segments in one GSO send: the kernel's UDP_MAX_SEGMENTS."""
MAX_GSO_BYTES: Final = 65_507
"""Bytes in one GSO send: the largest UDP payload over IPv4."""
RECEIVE_BUFFER: Final = 65_535
"""Bytes read per ``recvmsg``: a whole GRO train, or the largest datagram."""

_NO_SEGMENTATION: Final = frozenset(
    {errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EPROTONOSUPPORT}
)
"""Errors by which a kernel or driver refuses UDP segmentation (GSO)."""
_SEGMENT: Final = struct.Struct("=H")
_GRO_SIZE: Final = struct.Struct("=i")
_GRO_ANCILLARY: Final = socket.CMSG_SPACE(_GRO_SIZE.size)


class _NativeState(Protocol):
    """What aio/udp.py uses of ``qh3._hazmat.UdpSocketState``."""

    @property
    def max_gso_segments(self) -> int: ...
    def disable_gso(self) -> None: ...
    def recv(self) -> list[tuple[bytes, Any]]: ...
    def send(self, datagrams: list[bytes], addr: Any) -> int: ...


def _native_state(fd: int) -> _NativeState:
    """quinn-udp's socket state for ``fd``; raises if this qh3 or platform has none."""
    from qh3._hazmat import UdpSocketState  # noqa: PLC0415 - private, optional

    return cast(_NativeState, UdpSocketState(fd))


class UdpSocket:
    """A bound, non-blocking UDP socket driven by ``loop.add_reader``.

    ``on_datagram(data, address)`` runs for each datagram received, inside the
    readiness callback; it must not block. Or, with ``on_batch`` instead,
    ``on_batch(batch)`` runs once per system call's worth (a :data:`Batch`,
    never empty, the callee's to keep): one call for many datagrams. Not
    thread-safe: the event loop's.
    """

    def __init__(
        self,
        sock: socket.socket,
        on_datagram: Callable[[bytes, Address], None] | None = None,
        *,
        on_batch: Callable[[Batch], None] | None = None,
        mode: Mode = "auto",
        queue_bytes: int = 4 * 1024 * 1024,
        burst: int = 64,
        on_error: Callable[[OSError], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if burst < 1 or queue_bytes < 0:
            raise ValueError("burst must be positive and queue_bytes not negative")
        if (on_datagram is None) == (on_batch is None):
            raise ValueError("give exactly one of on_datagram and on_batch")
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._on_batch = on_batch if on_batch is not None else _each(on_datagram)
        self._on_error = on_error
        self._burst = burst
        self._limit = queue_bytes
        self._loop = loop or asyncio.get_running_loop()
        self._native: _NativeState | None = None
        self.gro = False
        """Whether receives come coalesced (GRO) and are split here or by quinn-udp."""
        self.gso = False
        """Whether sends to one address are segmented by the kernel (GSO)."""
        self.mode: Literal["native", "python", "plain"] = self._choose(mode)
        """The way actually used."""
        self._staged: list[bytes] = []
        self._staged_to: Address | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._in_burst = False
        self._backlog: deque[tuple[list[bytes], Address]] = deque()
        self._writing = False
        self.queued_bytes = 0
        """Bytes accepted by :meth:`send` that still wait for the socket."""
        self.queue_full = 0
        """Datagrams :meth:`send` refused because the queue was full."""
        self.send_errors = 0
        """Datagrams the kernel refused with an error other than EAGAIN (dropped)."""
        self.closed = False
        self._loop.add_reader(self._fd, self._on_readable)

    def _choose(self, mode: Mode) -> Literal["native", "python", "plain"]:
        if mode in {"auto", "native"}:
            try:
                self._native = _native_state(self._fd)
            except Exception:  # a private API: whatever it raises means "not here"
                if mode == "native":
                    raise
            else:
                self.gso = self._native.max_gso_segments > 1
                self.gro = True
                return "native"
        if mode in {"auto", "python"} and hasattr(socket.socket, "sendmsg"):
            try:
                self._sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            except OSError:
                self.gro = False
            else:
                self.gro = True
            self.gso = True  # until the kernel refuses it
            return "python"
        if mode not in {"auto", "plain"}:
            raise ValueError(f"UDP mode {mode!r} is not available here")
        return "plain"

    # ---- receiving ---------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """Drain up to ``burst`` datagrams, then write what their processing sent."""
        self._in_burst = True
        try:
            self._drain()
        finally:
            self._in_burst = False
            if self._staged:
                self.flush()

    def _drain(self) -> None:
        deliver = self._on_batch
        received = 0
        while received < self._burst:
            try:
                batch = self._receive()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._error(exc)
                return
            if not batch:
                return
            received += len(batch)
            deliver(batch)

    def _receive(self) -> Batch:
        if self._native is not None:
            return self._native.recv()
        if not self.gro:
            data, address = self._sock.recvfrom(RECEIVE_BUFFER)
            return [(data, address)]
        data, ancillary, _, address = self._sock.recvmsg(RECEIVE_BUFFER, _GRO_ANCILLARY)
        size = _gro_segment_size(ancillary)
        if not size or size >= len(data):
            return [(data, address)]
        return [(data[at : at + size], address) for at in range(0, len(data), size)]

    # ---- sending -----------------------------------------------------------------------------

    def send(self, data: bytes, address: Address) -> bool:
        """Queue ``data`` for ``address``, written at the end of this burst or loop round.

        False (nothing queued, counted in ``queue_full``) if ``queue_bytes``
        are waiting already or the socket is closed.
        """
        if self.queued_bytes >= self._limit or self.closed:
            self.queue_full += not self.closed
            return False
        if address != self._staged_to:
            if self._staged:
                self._stage_out()
            self._staged_to = address
        self._staged.append(data)
        self.queued_bytes += len(data)
        if not self._in_burst and self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)
        return True

    def send_many(self, packets: list[bytes], address: Address) -> int:
        """Queue ``packets`` for ``address`` as :meth:`send` does each: how many were queued.

        The same bound as for :meth:`send` one by one, checked once when the
        whole burst fits below it; each datagram refused is counted in
        ``queue_full``.
        """
        size = sum(map(len, packets))
        if self.closed or self.queued_bytes + size >= self._limit:  # near the bound: each
            return sum(self.send(data, address) for data in packets)
        if address != self._staged_to:
            if self._staged:
                self._stage_out()
            self._staged_to = address
        self._staged.extend(packets)
        self.queued_bytes += size
        if not self._in_burst and self._flush_handle is None and packets:
            self._flush_handle = self._loop.call_soon(self.flush)
        return len(packets)

    def flush(self) -> None:
        """Write what :meth:`send` queued now, as far as the socket takes it."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._staged:
            self._stage_out()
        if not self._writing:
            self._write_backlog()

    def _stage_out(self) -> None:
        assert self._staged_to is not None
        self._backlog.append((self._staged, self._staged_to))
        self._staged = []

    def _write_backlog(self) -> None:
        backlog = self._backlog
        while backlog:
            packets, address = backlog[0]
            sent = self._write(packets, address)
            if sent < len(packets):  # the socket is full: wait until it is writable
                self.queued_bytes -= sum(map(len, packets[:sent]))
                backlog[0] = (packets[sent:], address)
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(self._fd, self._on_writable)
                return
            backlog.popleft()
            self.queued_bytes -= sum(map(len, packets))
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _on_writable(self) -> None:
        self._writing = False
        self._loop.remove_writer(self._fd)
        self._write_backlog()

    def _write(self, packets: list[bytes], address: Address) -> int:
        """Write ``packets`` in order: how many were written (or dropped on errors) before
        the socket was full."""
        done = 0
        for _ in range(2 * len(packets) + 1):  # each round writes or drops one, or ends GSO
            if done >= len(packets):
                break
            try:
                written, full = self._write_some(packets, done, address)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if self.gso and exc.errno in _NO_SEGMENTATION:
                    self._no_gso(exc)
                    continue
                done += 1  # the datagram the kernel refused is dropped
                self.send_errors += 1
                self._error(exc)
                continue
            done += written
            if full:
                break
        return done

    def _write_some(self, packets: list[bytes], start: int, address: Address) -> tuple[int, bool]:
        """Write from ``start``: how many were written, and whether the socket is full.

        Raises the OSError of the first datagram that could not be written.
        """
        native = self._native
        if native is not None:
            rest = packets[start:] if start else packets
            try:
                written = native.send(rest, address)
            except OSError as exc:
                written = getattr(exc, "datagrams_sent", 0) or 0
                if not written:
                    raise
                return written, False  # the failing one raises again, alone at the front
            return written, written < len(rest)
        if self.gso:
            end, size = _segment_run(packets, start)
            if end - start > 1:
                control = [(SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(size))]
                self._sock.sendmsg(packets[start:end], control, 0, address)
                return end - start, False
        self._sock.sendto(packets[start], address)
        return 1, False

    def _no_gso(self, exc: OSError) -> None:
        log.info("UDP segmentation refused (%s): sending one datagram per call", exc)
        self.gso = False
        if self._native is not None:
            self._native.disable_gso()

    def _error(self, exc: OSError) -> None:
        if self._on_error is not None:
            self._on_error(exc)
        else:
            log.warning("UDP socket error: %s", exc)

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def local_address(self) -> Address:
        """Where the socket is bound."""
        return cast(Address, self._sock.getsockname())

    def close(self) -> None:
        """Stop reading, drop what waits, close the socket (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._staged = []
        self._backlog.clear()
        self.queued_bytes = 0
        self._sock.close()


def _each(on_datagram: Callable[[bytes, Address], None] | None) -> Callable[[Batch], None]:
    """A batch callback calling ``on_datagram`` for each datagram."""
    assert on_datagram is not None

    def each(batch: Batch) -> None:
        for data, address in batch:
            on_datagram(data, address)

    return each


def _segment_run(packets: list[bytes], start: int) -> tuple[int, int]:
    """End and segment size of the longest GSO send from ``start``: equal sizes, then at
    most one shorter datagram, at most :data:`MAX_SEGMENTS` and :data:`MAX_GSO_BYTES`."""
    size = len(packets[start])
    limit = min(len(packets), start + MAX_SEGMENTS, start + MAX_GSO_BYTES // max(size, 1))
    end = start + 1
    while end < limit and len(packets[end]) == size:
        end += 1
    if end < limit and len(packets[end]) < size:
        end += 1  # a shorter last segment
    return end, size


def _gro_segment_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
            return int(_GRO_SIZE.unpack_from(data)[0])
    return 0


async def open_udp(
    bind: tuple[str, int],
    on_datagram: Callable[[bytes, Address], None] | None = None,
    **settings: Any,
) -> UdpSocket:
    """Bind a UDP socket to ``bind`` (numeric host) and drive it with :class:`UdpSocket`
    (``on_batch`` may come among ``settings`` instead of ``on_datagram``)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        bind[0], bind[1], type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST | socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(address)
        return UdpSocket(sock, on_datagram, **settings)
    except BaseException:
        sock.close()
        raise
