"""The newest-wins registry on its own, and with the state machine and allocator together."""

from __future__ import annotations

import ipaddress
import uuid

from snaptun.core.addressing import EndhostAddress, IsdAs
from snaptun.core.allocator import AddressManager, GrantState
from snaptun.core.control import ControlRequest, RequestKind
from snaptun.core.messages import AddressRange
from snaptun.core.registry import TunnelRegistry
from snaptun.core.state import TunnelState, TunnelStateMachine
from snaptun.core.tokens import SnapTokenClaims
from tests.core.test_state import NOW, FakeValidator, tok

IA = IsdAs.parse("1-ff00:0:110")
A = uuid.UUID(int=1)
B = uuid.UUID(int=2)


class Recorder:
    def __init__(self) -> None:
        self.calls = 0

    def replaced(self) -> None:
        self.calls += 1


def test_claim_replaces_the_previous_holder_once() -> None:
    registry = TunnelRegistry()
    first, second = Recorder(), Recorder()
    registry.claim("x", first)
    registry.claim("x", first)  # the same tunnel again: nothing to replace
    assert first.calls == 0
    registry.claim("x", second)
    assert (first.calls, second.calls) == (1, 0)
    assert registry.holder_of("x") is second
    assert registry.replacements == 1


def test_only_the_holder_releases() -> None:
    registry = TunnelRegistry()
    first, second = Recorder(), Recorder()
    registry.claim("x", first)
    registry.claim("x", second)
    assert registry.release("x", first) is False
    assert registry.holder_of("x") is second
    assert registry.release("x", second) is True
    assert registry.holder_of("x") is None
    assert len(registry) == 0


def test_identities_are_independent() -> None:
    registry = TunnelRegistry()
    a, b = Recorder(), Recorder()
    registry.claim("a", a)
    registry.claim("b", b)
    assert (a.calls, b.calls) == (0, 0)
    assert len(registry) == 2


def _setup(
    machine: TunnelStateMachine[SnapTokenClaims], identity: uuid.UUID, *ranges: AddressRange
) -> int:
    token = tok(identity)
    assert machine.process_control_request(
        NOW, ControlRequest(RequestKind.SESSION_RENEWAL, token)
    ).ok
    answer = machine.process_control_request(
        NOW, ControlRequest(RequestKind.ADDRESS_ASSIGNMENT, token, tuple(ranges))
    )
    return answer.status


def _pair() -> tuple[AddressManager, TunnelRegistry]:
    manager = AddressManager(
        IA,
        [ipaddress.ip_network("10.0.0.0/30"), ipaddress.ip_network("fd00::/126")],
        clock=lambda: NOW,
    )
    return manager, TunnelRegistry()


def test_second_tunnel_of_an_identity_replaces_the_first_and_keeps_the_grant_active() -> None:
    manager, registry = _pair()
    first = TunnelStateMachine(FakeValidator(), manager, registry)
    second = TunnelStateMachine(FakeValidator(), manager, registry)
    told: list[str] = []
    first.on_replaced(lambda: told.append(first.state.value))
    assert _setup(first, A) == 200
    address = first.addresses()
    assert _setup(second, A) == 200
    assert first.is_closed
    assert first.was_replaced
    assert told == ["Closed"]  # closed before the listener ran
    assert second.state is TunnelState.ASSIGNED
    assert second.addresses() == address
    first.shutdown(NOW)  # the replaced tunnel ends: the grant stays active for the newer one
    grant = manager.grant_of(str(A))
    assert grant is not None
    assert grant.state is GrantState.ACTIVE
    second.shutdown(NOW)  # the last tunnel ends: only now the grant goes on hold
    grant = manager.grant_of(str(A))
    assert grant is not None
    assert grant.state is GrantState.HELD


def test_a_newer_tunnel_asking_for_another_family_still_replaces_the_older() -> None:
    manager, registry = _pair()
    first = TunnelStateMachine(FakeValidator(), manager, registry)
    second = TunnelStateMachine(FakeValidator(), manager, registry)
    assert _setup(first, A) == 200
    old = first.addresses()[0]
    v6 = AddressRange.from_endhost(EndhostAddress(IA, ipaddress.ip_address("fd00::2")))
    assert _setup(second, A, v6) == 200
    assert first.is_closed
    assert first.was_replaced
    # The old IPv4 address went back to the pool when the identity's grant moved.
    assert manager.grant_of(str(A)) is not None
    assert str(old.ip) not in {str(g.address) for g in manager.grants()}


def test_a_refused_newer_tunnel_leaves_the_older_alone() -> None:
    manager, registry = _pair()
    first = TunnelStateMachine(FakeValidator(), manager, registry)
    other = TunnelStateMachine(FakeValidator(), manager, registry)
    second = TunnelStateMachine(FakeValidator(), manager, registry)
    assert _setup(first, A) == 200
    assert _setup(other, B) == 200
    taken = AddressRange.from_endhost(other.addresses()[0])
    assert _setup(second, A, taken) == 400  # B's address: refused, nothing changes
    assert first.state is TunnelState.ASSIGNED
    assert not first.was_replaced
    assert registry.holder_of(str(A)) is first
