"""Hypothesis state machine: allocator, tunnel state machines and registry together.

Invariants checked after every step (the gateway's, stated in
``snaptun.core.registry``): an address is used by at most one live tunnel;
every live tunnel's address is granted, active, to its own identity; no
address is granted to two identities; a held grant has no live tunnel; the
registry's holder of an identity is its one live assigned tunnel.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from snaptun.core.addressing import EndhostAddress, IsdAs
from snaptun.core.allocator import AddressManager, GrantState
from snaptun.core.control import ControlRequest, RequestKind
from snaptun.core.messages import AddressRange
from snaptun.core.registry import TunnelRegistry
from snaptun.core.state import TunnelState, TunnelStateMachine
from snaptun.core.tokens import SnapTokenClaims
from tests.core.test_state import NOW, FakeValidator, tok

IA = IsdAs.parse("1-ff00:0:110")
IDENTITIES = [uuid.UUID(int=n) for n in range(1, 5)]
# Small pools so that addresses run out and collide: 6 IPv4 and 7 IPv6 addresses.
POOLS = [ipaddress.ip_network("10.0.0.0/29"), ipaddress.ip_network("fd00::/125")]
ADDRESSES = [ipaddress.ip_address(f"10.0.0.{n}") for n in range(1, 8)] + [
    ipaddress.ip_address(f"fd00::{n}") for n in range(1, 8)
]
HOLD = 10.0
Machine = TunnelStateMachine[SnapTokenClaims]


class NewestWins(RuleBasedStateMachine):
    tunnels = Bundle("tunnels")

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.manager = AddressManager(IA, POOLS, hold_time=HOLD, clock=lambda: self.now)
        self.registry = TunnelRegistry()
        self.identity_of: dict[int, uuid.UUID] = {}
        self.machines: list[Machine] = []
        self.replaced_seen = 0

    def _request(
        self, kind: RequestKind, identity: uuid.UUID, *ranges: AddressRange
    ) -> ControlRequest:
        return ControlRequest(kind, tok(identity, exp=self.now + 3600), tuple(ranges))

    @rule(target=tunnels, identity=st.sampled_from(IDENTITIES))
    def open_tunnel(self, identity: uuid.UUID) -> Machine:
        machine: Machine = TunnelStateMachine(FakeValidator(), self.manager, self.registry)

        def told() -> None:
            assert machine.is_closed  # closed before anyone is told
            self.replaced_seen += 1

        machine.on_replaced(told)
        answer = machine.process_control_request(
            self.now, self._request(RequestKind.SESSION_RENEWAL, identity)
        )
        assert answer.ok
        self.identity_of[id(machine)] = identity
        self.machines.append(machine)
        return machine

    @rule(
        machine=tunnels,
        wanted=st.one_of(st.sampled_from(["any", "any4", "any6"]), st.sampled_from(ADDRESSES)),
    )
    def assign(self, machine: Machine, wanted: object) -> None:
        identity = self.identity_of[id(machine)]
        ranges: tuple[AddressRange, ...] = ()
        if wanted == "any4":
            ranges = (
                AddressRange.from_endhost(EndhostAddress(IA, ipaddress.ip_address("0.0.0.0"))),
            )
        elif wanted == "any6":
            ranges = (AddressRange.from_endhost(EndhostAddress(IA, ipaddress.ip_address("::"))),)
        elif not isinstance(wanted, str):
            assert isinstance(wanted, ipaddress.IPv4Address | ipaddress.IPv6Address)
            ranges = (AddressRange.from_endhost(EndhostAddress(IA, wanted)),)
        before = machine.addresses()[0] if machine.state is TunnelState.ASSIGNED else None
        answer = machine.process_control_request(
            self.now, self._request(RequestKind.ADDRESS_ASSIGNMENT, identity, *ranges)
        )
        if machine.is_closed:
            assert not answer.ok
            return
        if answer.ok:
            assert machine.state is TunnelState.ASSIGNED
            assert self.registry.holder_of(str(identity)) is machine
        elif before is not None:
            assert machine.addresses()[0] == before  # a refusal changes nothing

    @rule(machine=tunnels, other=st.sampled_from(IDENTITIES))
    def renew_as_someone_else(self, machine: Machine, other: uuid.UUID) -> None:
        identity = self.identity_of[id(machine)]
        answer = machine.process_control_request(
            self.now, self._request(RequestKind.SESSION_RENEWAL, other)
        )
        if machine.is_closed:
            assert not answer.ok
        elif other != identity:
            assert answer.status == 401

    @rule(machine=tunnels)
    def close(self, machine: Machine) -> None:
        machine.shutdown(self.now)
        assert machine.is_closed

    @rule(seconds=st.sampled_from([0.5, HOLD / 2, HOLD + 1]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    # ---- invariants ----------------------------------------------------------------------

    def _live(self) -> list[Machine]:
        return [m for m in self.machines if m.state is TunnelState.ASSIGNED]

    @invariant()
    def one_live_tunnel_per_address(self) -> None:
        used = Counter(m.addresses()[0] for m in self._live())
        assert all(n == 1 for n in used.values()), used

    @invariant()
    def one_live_tunnel_per_identity_and_it_holds_the_grant(self) -> None:
        per_identity = Counter(self.identity_of[id(m)] for m in self._live())
        assert all(n == 1 for n in per_identity.values()), per_identity
        for machine in self._live():
            identity = self.identity_of[id(machine)]
            assert self.registry.holder_of(str(identity)) is machine
            grant = self.manager.grant_of(str(identity))
            assert grant is not None
            assert grant.state is GrantState.ACTIVE
            assert grant.address == machine.addresses()[0].ip

    @invariant()
    def grants_are_unique_and_holds_have_no_live_tunnel(self) -> None:
        grants = self.manager.grants()
        assert len({g.address for g in grants}) == len(grants)
        live = {str(self.identity_of[id(m)]) for m in self._live()}
        for grant in grants:
            if grant.state is GrantState.HELD:
                assert grant.identity not in live

    @invariant()
    def registry_is_bounded_by_live_tunnels(self) -> None:
        assert len(self.registry) == len(self._live())
        assert self.registry.replacements == self.replaced_seen


TestNewestWins = NewestWins.TestCase
TestNewestWins.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
