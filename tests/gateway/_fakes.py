"""Stand-ins for a tunnel's Sender and Control, for data plane tests without sockets."""

from __future__ import annotations

from collections.abc import Callable

from snaptun.core.addressing import EndhostAddress


class FakeMachine:
    def __init__(self, address: EndhostAddress) -> None:
        self.address = address

    def addresses(self) -> list[EndhostAddress]:
        return [self.address]


class FakeControl:
    def __init__(self, address: EndhostAddress) -> None:
        self.machine = FakeMachine(address)
        self.listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)

    def move_to(self, address: EndhostAddress) -> None:
        self.machine.address = address
        for listener in self.listeners:
            listener()


class FakeSender:
    def __init__(self, address: EndhostAddress) -> None:
        self.assigned_addresses = [address]
        self.sent: list[bytes] = []
        self.max_packet_size = 1400
        self.queued = 0

    def send(self, packet: bytes) -> None:
        self.sent.append(packet)
