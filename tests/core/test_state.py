"""The tunnel state machine, without any I/O: time is passed in."""

from __future__ import annotations

import ipaddress
import itertools
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snaptun.core.addressing import EndhostAddress, IsdAs
from snaptun.core.allocator import AddressManager, GrantState
from snaptun.core.control import ControlRequest, RequestKind
from snaptun.core.messages import (
    AddressRange,
    decode_address_assign_response,
    decode_session_renewal_response,
)
from snaptun.core.state import (
    TRANSITIONS,
    InvalidTransition,
    TunnelEvent,
    TunnelState,
    TunnelStateMachine,
    next_state,
)
from snaptun.core.tokens import SnapTokenClaims
from snaptun.errors import (
    InvalidSignature,
    MalformedToken,
    NoAddressAssigned,
    TokenExpired,
    TokenValidationError,
)

IA = IsdAs.parse("1-ff00:0:110")
NOW = 1_800_000_000.0


class FakeValidator:
    """Tokens are 'ok:<identity>:<exp>', 'badsig', 'malformed', 'expired' or 'long'."""

    ERRORS: dict[str, TokenValidationError] = {  # noqa: RUF012 - read-only table
        "badsig": InvalidSignature("bad signature"),
        "malformed": MalformedToken("malformed"),
        "expired": TokenExpired("expired"),
        "long": InvalidSignature("x" * 1000),
    }

    @classmethod
    def error(cls, token: str) -> TokenValidationError:
        """The refusal a token stands for."""
        return cls.ERRORS[token]

    def validate(self, now: float, token: str) -> SnapTokenClaims:
        if token in self.ERRORS:
            raise self.ERRORS[token]
        _, identity, exp = token.split(":")
        return SnapTokenClaims(pssid=uuid.UUID(identity), exp=int(exp))


A = uuid.UUID(int=1)
B = uuid.UUID(int=2)


def tok(identity: uuid.UUID = A, exp: float = NOW + 60) -> str:
    return f"ok:{identity}:{int(exp)}"


def machine(
    prefixes: tuple[str, ...] = ("10.0.0.0/30", "fd00::/126"),
) -> TunnelStateMachine[SnapTokenClaims]:
    manager = AddressManager(IA, [ipaddress.ip_network(p) for p in prefixes], clock=lambda: NOW)
    return TunnelStateMachine(FakeValidator(), manager)


def renew(token: str = "") -> ControlRequest:
    return ControlRequest(RequestKind.SESSION_RENEWAL, token or tok())


def assign(*ranges: AddressRange, token: str = "") -> ControlRequest:
    return ControlRequest(RequestKind.ADDRESS_ASSIGNMENT, token or tok(), tuple(ranges))


def test_transition_table_covers_every_pair_or_refuses() -> None:
    for state, event in itertools.product(TunnelState, TunnelEvent):
        if (state, event) in TRANSITIONS:
            assert next_state(state, event) is TRANSITIONS[(state, event)]
        else:
            with pytest.raises(InvalidTransition):
                next_state(state, event)
    # closed is final
    assert {nxt for (s, _), nxt in TRANSITIONS.items() if s is TunnelState.CLOSED} == {
        TunnelState.CLOSED
    }


def test_setup_sequence_and_versions() -> None:
    m = machine()
    assert m.state is TunnelState.UNASSIGNED
    answer = m.process_control_request(NOW, renew())
    assert answer.status == 200
    assert decode_session_renewal_response(answer.body) == int(NOW + 60)
    assert m.state is TunnelState.SESSION_ESTABLISHED
    v1 = m.version
    answer = m.process_control_request(NOW, assign())
    assert answer.status == 200
    (assigned,) = decode_address_assign_response(answer.body)
    assert m.addresses() == [assigned.to_endhost()]
    assert m.version == v1 + 1
    # a renewal changes neither state nor address: Senders need not notice
    m.process_control_request(NOW, renew(tok(exp=NOW + 120)))
    assert m.version == v1 + 1
    assert m.session_expiry == int(NOW + 120)


def test_assignment_before_session_is_500() -> None:
    m = machine()
    assert m.process_control_request(NOW, assign()).status == 500
    assert m.state is TunnelState.UNASSIGNED


@pytest.mark.parametrize(
    ("token", "status"), [("badsig", 401), ("malformed", 400), ("expired", 401)]
)
def test_token_outcomes(token: str, status: int) -> None:
    m = machine()
    assert m.process_control_request(NOW, renew(token)).status == status
    assert m.state is TunnelState.UNASSIGNED


def test_identity_cannot_change_within_a_session() -> None:
    m = machine()
    m.process_control_request(NOW, renew())
    assert m.process_control_request(NOW, renew(tok(B))).status == 401
    assert m.identity() == str(A)


def test_expiry_is_reached_at_the_session_end() -> None:
    m = machine()
    m.process_control_request(NOW, renew(tok(exp=NOW + 10)))
    assert not m.is_expired(NOW + 9.9)
    assert m.is_expired(NOW + 10)


def test_empty_request_falls_back_to_ipv6_when_ipv4_is_exhausted() -> None:
    first = machine(prefixes=("10.0.0.0/32", "fd00::/126"))
    # share one allocator: take the only IPv4 address with identity B
    shared = first._allocator
    m = TunnelStateMachine(FakeValidator(), shared)
    first.process_control_request(NOW, renew(tok(B)))
    first.process_control_request(NOW, assign(token=tok(B)))
    assert first.addresses()[0].ip.version == 4
    m.process_control_request(NOW, renew())
    assert m.process_control_request(NOW, assign()).status == 200
    assert m.addresses()[0].ip.version == 6


def test_exhausted_pool_is_400() -> None:
    m = machine(prefixes=("10.0.0.0/32",))
    shared = m._allocator
    other = TunnelStateMachine(FakeValidator(), shared)
    other.process_control_request(NOW, renew(tok(B)))
    assert other.process_control_request(NOW, assign(token=tok(B))).status == 200
    m.process_control_request(NOW, renew())
    answer = m.process_control_request(NOW, assign())
    assert answer.status == 400
    assert m.state is TunnelState.SESSION_ESTABLISHED


def test_shutdown_puts_the_address_on_hold_and_is_final() -> None:
    m = machine()
    m.process_control_request(NOW, renew())
    m.process_control_request(NOW, assign())
    version = m.version
    m.shutdown(NOW)
    assert m.is_closed
    assert m.version == version + 1
    (grant,) = m._allocator.grants()  # type: ignore[attr-defined]
    assert grant.state is GrantState.HELD
    m.shutdown(NOW)
    assert m.version == version + 1
    assert m.process_control_request(NOW, renew()).status == 400
    with pytest.raises(NoAddressAssigned):
        m.addresses()


def test_reassignment_to_a_specific_address_bumps_the_version() -> None:
    m = machine(prefixes=("10.0.0.0/29",))
    m.process_control_request(NOW, renew())
    m.process_control_request(NOW, assign())
    version = m.version
    wanted = EndhostAddress(IA, ipaddress.ip_address("10.0.0.5"))
    if m.addresses() == [wanted]:
        wanted = EndhostAddress(IA, ipaddress.ip_address("10.0.0.6"))
    assert m.process_control_request(NOW, assign(AddressRange.from_endhost(wanted))).status == 200
    assert m.addresses() == [wanted]
    assert m.version == version + 1


requests = st.sampled_from(["renew", "assign", "assign_bad", "badsig", "shutdown"])


@given(st.lists(requests, max_size=12))
def test_random_request_sequences_keep_the_invariants(steps: list[str]) -> None:
    m = machine()
    last_version = m.version
    for step in steps:
        if step == "renew":
            m.process_control_request(NOW, renew())
        elif step == "assign":
            m.process_control_request(NOW, assign())
        elif step == "assign_bad":
            m.process_control_request(NOW, assign(AddressRange(0, 4, 32, b"\0\0\0\0")))
        elif step == "badsig":
            m.process_control_request(NOW, renew("badsig"))
        else:
            m.shutdown(NOW)
        assert m.version >= last_version
        last_version = m.version
        if m.state is TunnelState.ASSIGNED:
            assert m.allocation is not None
            assert m.session_expiry is not None
        if m.is_closed:
            assert all(g.state is GrantState.HELD for g in m._allocator.grants())  # type: ignore[attr-defined]
