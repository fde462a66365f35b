"""Batched UDP on loopback: every way (native, socket-module GRO/GSO, plain) and every fallback."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from snaptun.aio import udp
from snaptun.aio.udp import Address, UdpSocket

MODES = ["native", "python", "plain"]


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HOSTS = [
    "127.0.0.1",
    pytest.param("::1", marks=pytest.mark.skipif(not _has_ipv6(), reason="no ::1")),
]


class Inbox:
    """What a UdpSocket received, with a bounded wait."""

    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.sources: list[Address] = []

    def __call__(self, data: bytes, address: Address) -> None:
        self.datagrams.append(data)
        self.sources.append(address)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[bytes]:
        for _ in range(int(timeout / 0.01)):
            if len(self.datagrams) >= count:
                break
            await asyncio.sleep(0.01)
        return self.datagrams


def _bound(host: str, cls: type[socket.socket] = socket.socket) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = cls(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


@asynccontextmanager
async def _pair(
    host: str = "127.0.0.1",
    *,
    mode: udp.Mode = "auto",
    receiver_mode: udp.Mode | None = None,
    sock_class: type[socket.socket] = socket.socket,
    **settings: Any,
) -> AsyncIterator[tuple[UdpSocket, UdpSocket, Inbox]]:
    inbox = Inbox()
    sender = UdpSocket(_bound(host, sock_class), lambda data, addr: None, mode=mode, **settings)
    receiver = UdpSocket(_bound(host), inbox, mode=receiver_mode or mode)
    try:
        yield sender, receiver, inbox
    finally:
        sender.close()
        receiver.close()


def _mixed(count: int) -> list[bytes]:
    """Runs of equal sizes, shorter last ones, a longer one after: every GSO cut."""
    sizes = [1200] * 10 + [700] + [1200] * 3 + [1300, 80, 80, 1] + [900] * 70
    return [bytes([i % 256]) * sizes[i % len(sizes)] for i in range(count)]


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("mode", MODES)
async def test_every_datagram_arrives_whole_and_in_order(host: str, mode: udp.Mode) -> None:
    async with _pair(host, mode=mode) as (sender, receiver, inbox):
        assert sender.mode == mode
        packets = _mixed(200)
        for start in range(0, len(packets), 40):  # 40 at once fit any receive buffer
            for packet in packets[start : start + 40]:
                assert sender.send(packet, receiver.local_address)
            await inbox.wait_for(start + 40)
        assert inbox.datagrams == packets
        assert {a[:2] for a in inbox.sources} == {sender.local_address[:2]}
        assert (sender.queued_bytes, sender.send_errors, sender.queue_full) == (0, 0, 0)


@pytest.mark.parametrize("mode", MODES)
async def test_each_receiving_way_reads_a_gso_train_as_its_datagrams(mode: udp.Mode) -> None:
    # A GSO sender makes the kernel keep the train whole up to a GRO receiver: split here.
    async with _pair(mode="python", receiver_mode=mode) as (sender, receiver, inbox):
        assert sender.gso
        packets = [b"%03d" % i + bytes(997) for i in range(40)] + [b"short"]
        for packet in packets:
            sender.send(packet, receiver.local_address)
        assert await inbox.wait_for(len(packets)) == packets
        assert receiver.gro == (mode != "plain")


async def test_the_python_way_sets_udp_gro() -> None:
    async with _pair(mode="python") as (_, receiver, _):
        assert receiver.gro
        assert receiver._sock.getsockopt(udp.SOL_UDP, udp.UDP_GRO) == 1


class _Counting(socket.socket):
    """A socket that counts its send calls and can refuse GSO, GRO or everything."""

    refuse_gso = False
    refuse_gro = False
    blocked = False
    fail_next: int | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls: list[tuple[str, int]] = []

    def setsockopt(self, *args: Any) -> None:
        if self.refuse_gro and args[:2] == (udp.SOL_UDP, udp.UDP_GRO):
            raise OSError(errno.ENOPROTOOPT, "no GRO here")
        super().setsockopt(*args)

    def _gate(self) -> None:
        if self.blocked:
            raise BlockingIOError(errno.EAGAIN, "full")
        if self.fail_next is not None:
            code, self.fail_next = self.fail_next, None
            raise OSError(code, "refused")

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        self._gate()
        if self.refuse_gso and ancdata:
            raise OSError(errno.EIO, "driver refuses segmentation")
        self.calls.append(("sendmsg", len(buffers)))
        return super().sendmsg(buffers, ancdata, flags, address)

    def sendto(self, data: Any, *args: Any) -> int:
        self._gate()
        self.calls.append(("sendto", 1))
        return super().sendto(data, *args)


def _counting(**flags: Any) -> type[_Counting]:
    return type("Counting", (_Counting,), flags)


async def test_sends_of_one_loop_round_go_out_in_one_call() -> None:
    async with _pair(mode="python", sock_class=_counting()) as (sender, receiver, inbox):
        packets = [bytes([i]) * 1000 for i in range(30)]
        for packet in packets:
            sender.send(packet, receiver.local_address)
        assert sender.queued_bytes == 30_000  # nothing written before the round ends
        assert await inbox.wait_for(30) == packets
        assert sender._sock.calls == [("sendmsg", 30)]  # type: ignore[attr-defined]


async def test_gso_sends_are_cut_at_size_changes_and_at_64_segments() -> None:
    async with _pair(mode="python", sock_class=_counting()) as (sender, receiver, inbox):
        packets = [b"a" * 100] * 70 + [b"b" * 50, b"c" * 200, b"d"]
        for packet in packets:
            sender.send(packet, receiver.local_address)
        assert await inbox.wait_for(len(packets)) == packets
        # 64 equal; 6 equal plus the shorter 50; 200 plus the shorter 1
        assert sender._sock.calls == [("sendmsg", 64), ("sendmsg", 7), ("sendmsg", 2)]  # type: ignore[attr-defined]


async def test_a_refused_gso_send_is_sent_again_one_by_one_and_gso_stays_off() -> None:
    cls = _counting(refuse_gso=True)
    async with _pair(mode="python", sock_class=cls) as (sender, receiver, inbox):
        packets = [bytes([i]) * 500 for i in range(5)]
        for packet in packets:
            sender.send(packet, receiver.local_address)
        assert await inbox.wait_for(5) == packets
        assert not sender.gso
        assert sender._sock.calls == [("sendto", 1)] * 5  # type: ignore[attr-defined]
        assert sender.send_errors == 0


async def test_a_socket_refusing_gro_is_read_datagram_by_datagram() -> None:
    inbox = Inbox()
    receiver = UdpSocket(_bound("127.0.0.1", _counting(refuse_gro=True)), inbox, mode="python")
    sender = UdpSocket(_bound("127.0.0.1"), lambda d, a: None, mode="python")
    try:
        assert not receiver.gro
        packets = [bytes([i]) * 300 for i in range(20)]
        for packet in packets:
            sender.send(packet, receiver.local_address)
        assert await inbox.wait_for(20) == packets
    finally:
        sender.close()
        receiver.close()


class _RefusingNative:
    """quinn-udp's state, refusing segmentation once, as a driver may (EIO)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.refusals = 1
        self.disabled = False

    @property
    def max_gso_segments(self) -> int:
        return int(self.real.max_gso_segments)

    def disable_gso(self) -> None:
        self.disabled = True
        self.real.disable_gso()

    def recv(self) -> list[tuple[bytes, Any]]:
        return list(self.real.recv())

    def send(self, datagrams: list[bytes], addr: Any) -> int:
        if self.refusals:
            self.refusals -= 1
            exc = OSError(errno.EIO, "driver refuses segmentation")
            exc.datagrams_sent = 0  # type: ignore[attr-defined]
            raise exc
        return int(self.real.send(datagrams, addr))


async def test_native_gso_refused_is_disabled_and_the_batch_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = udp._native_state
    states: list[_RefusingNative] = []

    def refusing(fd: int) -> _RefusingNative:
        states.append(_RefusingNative(real(fd)))
        return states[-1]

    monkeypatch.setattr(udp, "_native_state", refusing)
    async with _pair(mode="native") as (sender, receiver, inbox):
        packets = [bytes([i]) * 1200 for i in range(20)]
        for packet in packets:
            sender.send(packet, receiver.local_address)
        assert await inbox.wait_for(20) == packets
        assert states[0].disabled
        assert not sender.gso


async def test_auto_falls_back_to_python_without_the_native_binding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(fd: int) -> Any:
        raise ImportError("no quinn-udp here")

    monkeypatch.setattr(udp, "_native_state", missing)
    async with _pair(mode="auto") as (sender, receiver, inbox):
        assert sender.mode == "python"
        sender.send(b"hello", receiver.local_address)
        assert await inbox.wait_for(1) == [b"hello"]
    with pytest.raises(ImportError):
        UdpSocket(_bound("127.0.0.1"), Inbox(), mode="native")


@pytest.mark.parametrize("mode", ["python", "plain"])
async def test_a_full_socket_queues_up_to_the_limit_then_refuses_and_counts(mode: udp.Mode) -> None:
    cls = _counting(blocked=True)
    async with _pair(mode=mode, sock_class=cls, queue_bytes=2500) as (sender, receiver, inbox):
        packets = [bytes([i]) * 1000 for i in range(5)]
        accepted = [sender.send(packet, receiver.local_address) for packet in packets]
        assert accepted == [True, True, True, False, False]  # 3000 >= 2500 bytes waiting
        assert sender.queue_full == 2
        await asyncio.sleep(0.05)  # the socket stays full: nothing goes, nothing is lost
        assert sender.queued_bytes == 3000
        assert inbox.datagrams == []
        sender._sock.blocked = False  # type: ignore[attr-defined]
        assert await inbox.wait_for(3) == packets[:3]
        assert sender.queued_bytes == 0
        assert sender.send(packets[3], receiver.local_address)  # room again
        assert await inbox.wait_for(4) == packets[:4]


@pytest.mark.parametrize("mode", ["python", "plain"])
async def test_a_datagram_the_kernel_refuses_is_dropped_counted_and_the_rest_sent(
    mode: udp.Mode,
) -> None:
    errors: list[OSError] = []
    cls = _counting(fail_next=errno.ENETUNREACH)
    async with _pair(mode=mode, sock_class=cls, on_error=errors.append) as (
        sender,
        receiver,
        inbox,
    ):
        packets = [bytes([i]) * 100 for i in range(4)] + [b"x" * 50]
        for packet in packets:
            sender.send(packet, receiver.local_address)
        # plain: the first sendto failed; python: the GSO send of all five failed, and
        # its first datagram is dropped before the rest are sent again
        assert await inbox.wait_for(4) == packets[1:]
        assert sender.send_errors == 1
        assert [e.errno for e in errors] == [errno.ENETUNREACH]


async def test_one_readiness_event_reads_at_most_a_burst() -> None:
    async with _pair(mode="plain") as (sender, receiver, inbox):
        receiver._loop.remove_reader(receiver._fd)  # drive the readiness callback by hand
        receiver._burst = 4
        for i in range(10):
            sender.send(bytes([i]), receiver.local_address)
        sender.flush()  # loopback: in the receiver's socket once sendto returns
        receiver._on_readable()
        assert len(inbox.datagrams) == 4
        receiver._on_readable()
        receiver._on_readable()
        assert len(inbox.datagrams) == 10  # an empty socket ends a burst early
        receiver._on_readable()
        assert inbox.datagrams == [bytes([i]) for i in range(10)]


class _BurstCounting(UdpSocket):
    bursts = 0

    def _on_readable(self) -> None:
        self.bursts += 1
        super()._on_readable()


async def test_sends_made_while_handling_a_burst_are_written_once_at_its_end() -> None:
    target = Inbox()
    bursts_forwarding: set[int] = set()

    def forward(data: bytes, address: Address) -> None:
        bursts_forwarding.add(relay.bursts)
        relay.send(data, sink.local_address)

    sink = UdpSocket(_bound("127.0.0.1"), target, mode="plain")
    relay = _BurstCounting(_bound("127.0.0.1", _counting()), forward, mode="python")
    source = UdpSocket(_bound("127.0.0.1"), lambda d, a: None, mode="python")
    try:
        packets = [bytes([i]) * 200 for i in range(16)]
        for packet in packets:
            source.send(packet, relay.local_address)
        assert await target.wait_for(16) == packets
        calls = relay._sock.calls  # type: ignore[attr-defined]
        assert sum(n for _, n in calls) == 16
        assert len(calls) == len(bursts_forwarding)  # one write per burst, however many
    finally:
        for s in (sink, relay, source):
            s.close()


async def test_close_is_final_and_idempotent() -> None:
    async with _pair(mode="python") as (sender, receiver, _):
        sender.send(b"late", receiver.local_address)
        sender.close()
        sender.close()
        assert sender.closed
        assert not sender.send(b"after", receiver.local_address)
        assert sender.queued_bytes == 0
        assert sender.queue_full == 0  # refused for being closed, not for a full queue


def test_bad_settings_are_refused() -> None:
    loop = asyncio.new_event_loop()
    try:
        for bad in ({"burst": 0}, {"queue_bytes": -1}):
            with _bound("127.0.0.1") as sock, pytest.raises(ValueError, match="burst"):
                UdpSocket(sock, Inbox(), loop=loop, **bad)  # type: ignore[arg-type]
    finally:
        loop.close()


async def test_open_udp_binds_and_reads() -> None:
    inbox = Inbox()
    bound = await udp.open_udp(("127.0.0.1", 0), inbox)
    other = UdpSocket(_bound("127.0.0.1"), lambda d, a: None)
    try:
        other.send(b"ping", bound.local_address)
        assert await inbox.wait_for(1) == [b"ping"]
    finally:
        bound.close()
        other.close()


@pytest.mark.parametrize("mode", MODES)
async def test_a_batch_callback_gets_each_read_as_one_list_in_order(mode: udp.Mode) -> None:
    batches: list[udp.Batch] = []
    receiver = UdpSocket(_bound("127.0.0.1"), on_batch=batches.append, mode=mode)
    sender = UdpSocket(_bound("127.0.0.1"), lambda d, a: None, mode="python")
    try:
        receiver._loop.remove_reader(receiver._fd)  # one readiness event, by hand
        packets = [b"%02d" % i + bytes(500) for i in range(30)]
        assert sender.send_many(packets, receiver.local_address) == 30
        sender.flush()  # loopback: in the receiver's socket once sendmsg returns
        receiver._on_readable()
        assert [data for batch in batches for data, _ in batch] == packets
        assert all(batch for batch in batches)  # never an empty list
        assert {address[:2] for batch in batches for _, address in batch} == {
            sender.local_address[:2]
        }
        # plain reads one datagram per call; the others a GSO train (GRO) or many at once
        assert (len(batches) == 30) is (mode == "plain")
    finally:
        sender.close()
        receiver.close()


def test_exactly_one_receive_callback_is_taken() -> None:
    loop = asyncio.new_event_loop()
    try:
        for callbacks in ({}, {"on_datagram": Inbox(), "on_batch": lambda batch: None}):
            with _bound("127.0.0.1") as sock, pytest.raises(ValueError, match="exactly one"):
                UdpSocket(sock, loop=loop, **callbacks)  # type: ignore[arg-type]
    finally:
        loop.close()


async def test_send_many_queues_a_burst_for_one_write() -> None:
    async with _pair(mode="python", sock_class=_counting()) as (sender, receiver, inbox):
        packets = [bytes([i]) * 1000 for i in range(30)]
        assert sender.send_many(packets[:10], receiver.local_address) == 10
        assert sender.send_many(packets[10:], receiver.local_address) == 20
        assert sender.queued_bytes == 30_000
        assert await inbox.wait_for(30) == packets
        assert sender._sock.calls == [("sendmsg", 30)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["python", "plain"])
async def test_send_many_near_the_limit_takes_what_send_would_and_counts_the_rest(
    mode: udp.Mode,
) -> None:
    cls = _counting(blocked=True)
    async with _pair(mode=mode, sock_class=cls, queue_bytes=2500) as (sender, receiver, inbox):
        packets = [bytes([i]) * 1000 for i in range(5)]
        assert sender.send_many(packets, receiver.local_address) == 3  # as send() one by one
        assert (sender.queue_full, sender.queued_bytes) == (2, 3000)
        assert sender.send_many(packets[3:], receiver.local_address) == 0
        assert sender.queue_full == 4
        sender._sock.blocked = False  # type: ignore[attr-defined]
        assert await inbox.wait_for(3) == packets[:3]
        sender.close()
        assert sender.send_many(packets, receiver.local_address) == 0
        assert sender.queue_full == 4  # refused for being closed, not for a full queue
