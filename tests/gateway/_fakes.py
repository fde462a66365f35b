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
    """Takes everything; ``batches`` records each burst :meth:`send_many` took whole.

    With ``take_batches`` false, :meth:`send_many` refuses every burst, as a
    real Sender does when one packet of it cannot go (the caller then sends
    each with :meth:`send`).
    """

    def __init__(self, address: EndhostAddress) -> None:
        self.assigned_addresses = [address]
        self.sent: list[bytes] = []
        self.batches: list[list[bytes]] = []
        self.take_batches = True
        self.max_packet_size = 1400
        self.queued = 0

    def send(self, packet: bytes) -> None:
        self.sent.append(packet)

    def send_many(self, packets: list[bytes]) -> bool:
        if not self.take_batches:
            return False
        self.batches.append(list(packets))
        self.sent.extend(packets)
        return True
