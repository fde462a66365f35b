"""The machine decides a tunnel's fate and returns it as steps (sans-I/O, ``now`` passed in).

Setup order, each refusal's close code and reason, the expiry deadline, the
request cap and the grant write before the answer: what the asyncio layer
only carries out.
"""

from __future__ import annotations

import ipaddress

import pytest

from snaptun.constants import CloseCode
from snaptun.core.addressing import IsdAs
from snaptun.core.allocator import AddressManager, GrantState
from snaptun.core.control import ControlRequest, RequestKind
from snaptun.core.registry import TunnelRegistry
from snaptun.core.state import (
    INTERNAL_ERROR,
    MAX_CAUSE,
    MAX_CONCURRENT_REQUESTS,
    REPLACED,
    SESSION_EXPIRED,
    SETUP_TIMED_OUT,
    Close,
    InvalidTransition,
    Step,
    TunnelState,
    TunnelStateMachine,
)
from snaptun.core.tokens import SnapTokenClaims
from snaptun.errors import InvalidRequest, RequestReadError, Unauthenticated
from tests.core.test_state import B, FakeValidator, tok

IA = IsdAs.parse("1-ff00:0:110")
NOW = 1_800_000_000.0
Machine = TunnelStateMachine[SnapTokenClaims]


def make(registry: TunnelRegistry | None = None, **kwargs: int) -> tuple[Machine, AddressManager]:
    manager = AddressManager(IA, [ipaddress.ip_network("10.0.0.0/30")], hold_time=600.0)
    return TunnelStateMachine(FakeValidator(), manager, registry, **kwargs), manager


def renew(token: str = "") -> ControlRequest:
    return ControlRequest(RequestKind.SESSION_RENEWAL, token or tok(exp=NOW + 60))


def assign(token: str = "") -> ControlRequest:
    return ControlRequest(RequestKind.ADDRESS_ASSIGNMENT, token or tok(exp=NOW + 60))


def set_up(m: Machine) -> Step:
    """Renew and assign; the grant is reported written."""
    assert m.setup_request(NOW, renew()).answer is not None
    step = m.setup_request(NOW, assign())
    return m.stored(ok=True) if step.store is not None else step


# --- setup order ------------------------------------------------------------------------------


def test_setup_in_order_is_answered_and_established() -> None:
    m, _ = make()
    first = m.setup_request(NOW, renew())
    assert first.answer is not None
    assert first.answer.status == 200
    assert first.close is None
    assert not first.established
    assert first.close_if_unsent == Close(
        CloseCode.INTERNAL_ERROR, "failed to send control response"
    )
    last = set_up_rest(m)
    assert last.established
    assert last.answer is not None
    assert last.answer.ok
    assert not m.in_setup


def set_up_rest(m: Machine) -> Step:
    step = m.setup_request(NOW, assign())
    assert step.store is not None
    assert step.answer is None  # nothing is answered before the grant is written
    return m.stored(ok=True)


def test_assignment_first_closes_without_an_answer() -> None:
    m, _ = make()
    step = m.setup_request(NOW, assign())
    assert step == Step(close=Close(CloseCode.INVALID_REQUEST, "expected session renewal request"))
    assert m.state is TunnelState.UNASSIGNED


def test_renewal_twice_closes_without_an_answer() -> None:
    m, _ = make()
    m.setup_request(NOW, renew())
    step = m.setup_request(NOW, renew())
    assert step.answer is None
    assert step.close == Close(CloseCode.INVALID_REQUEST, "expected address assignment request")


@pytest.mark.parametrize(
    ("token", "status", "refusal"),
    [
        ("badsig", 401, "InvalidSignature"),
        ("malformed", 400, "MalformedToken"),
        ("expired", 401, "TokenExpired"),
    ],
)
def test_refused_renewal_is_closed_with_the_reference_reason_and_the_cause(
    token: str, status: int, refusal: str
) -> None:
    m, _ = make()
    step = m.setup_request(NOW, renew(token))
    assert step.answer is not None
    assert step.answer.status == status
    cause = str(FakeValidator.error(token))
    assert step.answer.body == cause.encode()  # the cause, for a client reading the answer
    # The reference's code and reason, then ": " and the cause (ours).
    refused = Close(CloseCode.INVALID_REQUEST, f"handling session renewal request: {cause}")
    assert step.close == refused
    assert step.close_if_unsent == refused  # closed the same way if the answer is lost
    assert step.refusal == refusal


def test_a_long_cause_is_clipped() -> None:
    m, _ = make()
    step = m.setup_request(NOW, renew("long"))
    assert step.close is not None
    prefix = "handling session renewal request: "
    assert step.close.reason.startswith(prefix + "x" * 100)
    assert len(step.close.reason) == len(prefix) + MAX_CAUSE
    assert step.answer is not None
    assert len(step.answer.body.decode()) == MAX_CAUSE


def test_refused_assignment_is_answered_then_closed_with_the_reference_reason() -> None:
    m, _ = make()
    m.setup_request(NOW, renew())
    step = m.setup_request(NOW, assign(tok(B, exp=NOW + 60)))  # another identity
    assert step.answer is not None
    assert step.answer.status == 401
    assert step.close == Close(
        CloseCode.INVALID_REQUEST,
        "handling address assignment request: token identity does not match the session",
    )
    assert step.refusal == "IdentityMismatch"
    assert not step.established


def test_setup_request_after_the_setup_is_a_misuse() -> None:
    m, _ = make()
    set_up(m)
    with pytest.raises(InvalidTransition):
        m.setup_request(NOW, renew())


def test_after_the_setup_a_refusal_is_only_an_answer() -> None:
    m, _ = make()
    set_up(m)
    step = m.request(NOW, renew("badsig"))
    assert step.answer is not None
    assert step.answer.status == 401
    assert step.close is None
    assert step.close_if_unsent == Close(CloseCode.INTERNAL_ERROR, "send control response error")
    assert m.state is TunnelState.ASSIGNED


@pytest.mark.parametrize(
    ("error", "close"),
    [
        (InvalidRequest("request too big"), Close(CloseCode.INVALID_REQUEST, "request too big")),
        (Unauthenticated("missing token"), Close(CloseCode.UNAUTHENTICATED, "missing token")),
        (RequestReadError(), Close(CloseCode.INTERNAL_ERROR, "read error")),
    ],
)
def test_unparsable_requests_close_with_their_code(error: InvalidRequest, close: Close) -> None:
    m, _ = make()
    assert m.unparsable(error) == close


def test_the_fixed_closes() -> None:
    assert Close(2, "timeout establishing snaptun") == SETUP_TIMED_OUT
    assert Close(4, "session expired") == SESSION_EXPIRED
    assert Close(5, "internal error") == INTERNAL_ERROR
    assert Close(0, "replaced by a newer tunnel") == REPLACED


# --- the grant is written before it is answered ---------------------------------------------


def test_a_failed_write_refuses_and_undoes_the_grant() -> None:
    m, manager = make()
    m.setup_request(NOW, renew())
    step = m.setup_request(NOW, assign())
    assert step.store is not None
    assert step.store.after is not None
    assert manager.grants(now=NOW) == [step.store.after]
    with pytest.raises(RuntimeError, match="stored"):
        m.setup_request(NOW, assign())  # nothing else until the write is reported
    refused = m.stored(ok=False)
    assert refused.answer is not None
    assert refused.answer.status == 400
    assert refused.close == Close(
        CloseCode.INVALID_REQUEST,
        "handling address assignment request: "
        "either requested address is unavailable, or no addresses are available",
    )
    assert refused.refusal == "GrantNotStored"
    assert manager.grants(now=NOW) == []  # undone
    assert m.allocation is None
    with pytest.raises(RuntimeError, match="without a grant"):
        m.stored(ok=True)


def test_the_same_grant_again_needs_no_write() -> None:
    m, _ = make()
    set_up(m)
    step = m.request(NOW, assign())
    assert step.store is None
    assert step.answer is not None
    assert step.answer.ok


def test_shutdown_returns_the_hold_to_write() -> None:
    m, manager = make()
    set_up(m)
    change = m.shutdown(NOW + 5)
    assert change is not None
    assert change.after is not None
    assert change.after.state is GrantState.HELD
    assert change.after.hold_until == NOW + 5 + 600.0
    assert manager.grants(now=NOW + 5) == [change.after]
    assert m.shutdown(NOW + 6) is None  # closed: nothing more


def test_a_replaced_tunnel_returns_no_hold() -> None:
    registry = TunnelRegistry()
    first, manager = make(registry)
    set_up(first)
    second = TunnelStateMachine(FakeValidator(), manager, registry)
    step = set_up(second)
    assert step.store is None  # the identity's grant, active already: nothing to write
    assert step.established
    assert first.was_replaced
    assert first.shutdown(NOW) is None  # the grant is the newer tunnel's


# --- expiry deadline and request cap -------------------------------------------------------


def test_expiry_deadline() -> None:
    m, _ = make()
    assert m.check_expiry(NOW + 10**6) is None  # no session yet: nothing expires
    set_up(m)
    assert m.seconds_until_expiry(NOW) == 60
    assert m.check_expiry(NOW + 59.9) is None
    assert m.check_expiry(NOW + 60) == SESSION_EXPIRED
    m.request(NOW + 30, renew(tok(exp=NOW + 120)))  # a renewal moves the deadline
    assert m.check_expiry(NOW + 60) is None
    assert m.check_expiry(NOW + 120) == SESSION_EXPIRED
    m.shutdown(NOW)
    assert m.check_expiry(NOW + 10**6) is None  # closed: nothing left to expire


def test_request_cap() -> None:
    m, _ = make()
    assert all(m.request_started() for _ in range(MAX_CONCURRENT_REQUESTS))
    assert not m.request_started()  # the cap: reset this stream
    assert m.requests_in_flight == MAX_CONCURRENT_REQUESTS
    m.request_finished()
    assert m.request_started()
    assert not m.request_started()


def test_request_cap_is_a_setting() -> None:
    m, _ = make(max_requests=1)
    assert m.request_started()
    assert not m.request_started()
    m.request_finished()
    m.request_finished()  # never below zero
    assert m.requests_in_flight == 0
