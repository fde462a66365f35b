"""The tunnel state machine of one snaptun connection (sans-I/O; ``now`` is passed in).

::

    Unassigned --renew--> SessionEstablished --assign--> Assigned --close--> Closed
         \\________________________close_____________________/

Transitions are an explicit table; anything not in it is refused. The
machine carries a version that goes up on every change of state or of the
assigned address, so Senders and Receivers notice changes with one integer
comparison per packet.

Machines that share a :class:`~snaptun.core.registry.TunnelRegistry` (all
tunnels of one server) keep its invariant: an identity's grant is used by one
live tunnel. A machine that is granted an address claims the grant in the
same call; an older machine of the same identity is then *replaced*: it goes
to Closed at once, without putting the grant on hold, and its
``on_replaced`` listeners run (the server closes that connection with code 0,
"replaced by a newer tunnel"). Only the machine that holds the grant puts it
on hold when it closes.

What decides a tunnel's fate lives here, not in the asyncio layer (h11's
rule): the order of the setup requests, which close code and reason each
refusal gets, the expiry deadline and the cap on requests in flight. The
machine answers with a :class:`Step`, a plain record of actions that
:mod:`snaptun.aio.server` carries out in order, and :class:`Close` values for
the failures that layer observes (a timeout, a request that does not parse,
a defect). Persistence is an action too: a grant comes back as
``Step(store=change)``; the caller writes it and reports with
:meth:`TunnelStateMachine.stored`, and only then gets the answer, so a grant
is on disk before the client hears of it, and a failed write is refused and
undone. Holds come back from :meth:`TunnelStateMachine.shutdown` for the
caller to write.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic

from snaptun.constants import (
    INTERNAL_ERROR_REASON,
    REPLACED_CLOSE_CODE,
    REPLACED_REASON,
    CloseCode,
)
from snaptun.core.addressing import WILDCARD_ISD_AS, EndhostAddress, IPNetwork, IsdAs
from snaptun.core.allocator import AddressAllocation, GrantAllocator, GrantChange
from snaptun.core.control import ControlRequest, RequestKind
from snaptun.core.messages import (
    AddressRange,
    InvalidAddressRange,
    encode_address_assign_response,
    encode_session_renewal_response,
)
from snaptun.core.registry import TunnelRegistry
from snaptun.core.tokens import TokenT, TokenValidator
from snaptun.errors import (
    AddressAllocationError,
    NoAddressAssigned,
    ParseControlRequestError,
    SnaptunError,
    TokenValidationError,
)

_ANY_ADDRESS: Final[tuple[tuple[IsdAs, IPNetwork], ...]] = (
    (WILDCARD_ISD_AS, ipaddress.ip_network("0.0.0.0/32")),
    (WILDCARD_ISD_AS, ipaddress.ip_network("::/128")),
)


_MAX_UINT64: Final = 2**64 - 1

MAX_CONCURRENT_REQUESTS: Final = 4
"""Post-setup requests served at once; a stream beyond the cap is reset (ours)."""


class TunnelState(enum.Enum):
    """Where a tunnel is in its life."""

    UNASSIGNED = "Unassigned"
    SESSION_ESTABLISHED = "SessionEstablished"
    ASSIGNED = "Assigned"
    CLOSED = "Closed"


class TunnelEvent(enum.Enum):
    """What moves the machine."""

    SESSION_RENEWED = "session renewed"
    ADDRESS_ASSIGNED = "address assigned"
    SHUTDOWN = "shutdown"


_S = TunnelState
_E = TunnelEvent
TRANSITIONS: Final[dict[tuple[TunnelState, TunnelEvent], TunnelState]] = {
    (_S.UNASSIGNED, _E.SESSION_RENEWED): _S.SESSION_ESTABLISHED,
    (_S.UNASSIGNED, _E.SHUTDOWN): _S.CLOSED,
    (_S.SESSION_ESTABLISHED, _E.SESSION_RENEWED): _S.SESSION_ESTABLISHED,
    (_S.SESSION_ESTABLISHED, _E.ADDRESS_ASSIGNED): _S.ASSIGNED,
    (_S.SESSION_ESTABLISHED, _E.SHUTDOWN): _S.CLOSED,
    (_S.ASSIGNED, _E.SESSION_RENEWED): _S.ASSIGNED,
    (_S.ASSIGNED, _E.ADDRESS_ASSIGNED): _S.ASSIGNED,
    (_S.ASSIGNED, _E.SHUTDOWN): _S.CLOSED,
    (_S.CLOSED, _E.SHUTDOWN): _S.CLOSED,
}
"""(state, event) -> next state. A pair that is missing is a protocol violation."""


class InvalidTransition(SnaptunError):
    """An event that the current state does not allow (answered with an HTTP error)."""

    def __init__(self, state: TunnelState, event: TunnelEvent) -> None:
        self.state = state
        self.event = event
        super().__init__(f"{event.value} not allowed in state {state.value}")


_EVENT: Final = {
    RequestKind.SESSION_RENEWAL: TunnelEvent.SESSION_RENEWED,
    RequestKind.ADDRESS_ASSIGNMENT: TunnelEvent.ADDRESS_ASSIGNED,
}


def next_state(state: TunnelState, event: TunnelEvent) -> TunnelState:
    """Look the transition up; raise :class:`InvalidTransition` if it is not in the table."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None


@dataclass(frozen=True, slots=True)
class ControlAnswer:
    """What the server answers to one control request."""

    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Close:
    """Close the QUIC connection with this application ``code`` and ``reason``.

    Carrying it out also ends the machine (:meth:`TunnelStateMachine.shutdown`).
    """

    code: int
    reason: str


REPLACED: Final = Close(REPLACED_CLOSE_CODE, REPLACED_REASON)
"""How a tunnel ends when a newer tunnel of its identity takes its grant over."""
SETUP_TIMED_OUT: Final = Close(CloseCode.TIMEOUT, "timeout establishing snaptun")
"""How a tunnel ends when the setup did not finish within the accept timeout."""
SESSION_EXPIRED: Final = Close(CloseCode.SESSION_EXPIRED, "session expired")
"""How a tunnel ends when its session expiry passed without renewal."""
INTERNAL_ERROR: Final = Close(CloseCode.INTERNAL_ERROR, INTERNAL_ERROR_REASON)
"""How a tunnel ends when serving it raised something unexpected (a defect of ours)."""
STORE_UNAVAILABLE_REASON: Final = "grant store unavailable"
STORE_UNAVAILABLE: Final = Close(CloseCode.INTERNAL_ERROR, STORE_UNAVAILABLE_REASON)
"""How a setup ends when the grant store cannot be reached (not the client's fault)."""
_SETUP_UNSENT: Final = Close(CloseCode.INTERNAL_ERROR, "failed to send control response")
_UNSENT: Final = Close(CloseCode.INTERNAL_ERROR, "send control response error")
_EXPECTED: Final = {
    TunnelState.UNASSIGNED: RequestKind.SESSION_RENEWAL,
    TunnelState.SESSION_ESTABLISHED: RequestKind.ADDRESS_ASSIGNMENT,
}
"""During setup, the one request each state accepts (renew_session, then assign_addresses)."""
_WRONG_REQUEST: Final = {
    RequestKind.SESSION_RENEWAL: Close(
        CloseCode.INVALID_REQUEST, "expected session renewal request"
    ),
    RequestKind.ADDRESS_ASSIGNMENT: Close(
        CloseCode.INVALID_REQUEST, "expected address assignment request"
    ),
}
_REFUSED: Final = {
    RequestKind.SESSION_RENEWAL: "handling session renewal request",
    RequestKind.ADDRESS_ASSIGNMENT: "handling address assignment request",
}
"""The reference's close reasons when a setup request is answered with an error; ours
add ``": "`` and the cause (the answer's body), e.g. ``handling session renewal
request: token expired at 2026-01-01T00:00:00Z (1767225600)``, so that any client
can show why. The code stays 1 (InvalidRequest), as in the reference."""
MAX_CAUSE: Final = 200
"""Characters of a refusal's cause kept in the close reason and the answer's body."""


def refusal_cause(reason: str) -> str:
    """The cause in a refused setup's close reason: what follows a reference prefix and ": ".

    ``handling session renewal request: token expired at …`` gives ``token
    expired at …``; a reason without a cause (the reference's own, or any
    other close) is returned as it is. Inverse of how :data:`_REFUSED` builds
    the reason, for clients that show the cause.
    """
    for prefix in _REFUSED.values():
        if reason.startswith(prefix) and reason[len(prefix) : len(prefix) + 2] == ": ":
            return reason[len(prefix) + 2 :]
    return reason


_UNAVAILABLE: Final = ControlAnswer(503, STORE_UNAVAILABLE_REASON.encode())


class StoreFailure(enum.Enum):
    """A grant write that failed for want of the store (vs. ``False``: refused by it)."""

    UNAVAILABLE = "unavailable"


Stored = bool | StoreFailure
"""The outcome of a grant write: True (stored), False (refused), or the store was unreachable."""

_NOT_STORED: Final = ControlAnswer(
    400, b"either requested address is unavailable, or no addresses are available"
)


@dataclass(frozen=True, slots=True)
class Step:
    """What the asyncio layer does next, in this order.

    1. ``store``: write this grant change, then call
       :meth:`TunnelStateMachine.stored` for the rest of the step (nothing
       else is set then);
    2. ``answer``: send it on the request's stream; if it cannot be sent,
       carry out ``close_if_unsent`` (when set) and stop;
    3. ``close``: close the connection (the setup failed).

    ``established`` says that the setup is complete once the answer is sent.
    ``refusal`` names the cause of a refused request in a few words without
    spaces (``TokenExpired``, ``UnknownKeyId``, ``AddressUnavailable``, ...), a
    bounded set for metric labels.
    """

    store: GrantChange | None = None
    answer: ControlAnswer | None = None
    close: Close | None = None
    close_if_unsent: Close | None = None
    established: bool = False
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class _Pending(Generic[TokenT]):
    """A grant waiting for its write: what :meth:`TunnelStateMachine.stored` completes."""

    change: GrantChange
    claims: TokenT
    allocation: AddressAllocation
    state: TunnelState
    setup: bool


class TunnelStateMachine(Generic[TokenT]):
    """Validates control requests, allocates addresses and tracks the session."""

    def __init__(
        self,
        validator: TokenValidator[TokenT],
        allocator: GrantAllocator[TokenT],
        registry: TunnelRegistry | None = None,
        *,
        max_requests: int = MAX_CONCURRENT_REQUESTS,
    ):
        self._validator = validator
        self._allocator = allocator
        self._registry = registry if registry is not None else TunnelRegistry()
        self.state = TunnelState.UNASSIGNED
        self.version = 0
        self.session_expiry: float | None = None
        self.allocation: AddressAllocation | None = None
        self.claims: TokenT | None = None
        self.was_replaced = False
        """Whether a newer tunnel of the same identity took the grant over (then Closed)."""
        self._on_replaced: list[Callable[[], None]] = []
        self._pending: _Pending[TokenT] | None = None
        self._max_requests = max_requests
        self.requests_in_flight = 0
        """Post-setup requests started and not finished (at most ``max_requests``)."""

    # ---- queries -------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """Whether the tunnel is closed for good."""
        return self.state is TunnelState.CLOSED

    def addresses(self) -> list[EndhostAddress]:
        """The assigned addresses (one); raises :class:`NoAddressAssigned` otherwise."""
        if self.state is TunnelState.ASSIGNED and self.allocation is not None:
            return [self.allocation.address]
        raise NoAddressAssigned

    def identity(self) -> str | None:
        """The identity (token ``id()``) of the session, once known."""
        return self.claims.id() if self.claims is not None else None

    def seconds_until_expiry(self, now: float) -> float | None:
        """Seconds left in the session (<= 0: expired); None before a session exists."""
        if self.session_expiry is None or self.is_closed:
            return None
        return self.session_expiry - now

    def is_expired(self, now: float) -> bool:
        """Whether the session's expiry has passed."""
        left = self.seconds_until_expiry(now)
        return left is not None and left <= 0

    @property
    def in_setup(self) -> bool:
        """Whether the setup (renew_session, then assign_addresses) is still under way."""
        return self.state in _EXPECTED

    def check_expiry(self, now: float) -> Close | None:
        """:data:`SESSION_EXPIRED` once the session expiry has passed, else None."""
        return SESSION_EXPIRED if self.is_expired(now) else None

    # ---- decisions on what the asyncio layer observes ------------------------------------

    def unparsable(self, error: ParseControlRequestError) -> Close:
        """A request broke the protocol: close with its code and reason (setup or not)."""
        return Close(error.close_code, error.reason)

    def request_started(self) -> bool:
        """A post-setup request stream arrived: True to serve it, False to reset it (cap)."""
        if self.requests_in_flight >= self._max_requests:
            return False
        self.requests_in_flight += 1
        return True

    def request_finished(self) -> None:
        """A request that :meth:`request_started` admitted is done (served or not)."""
        self.requests_in_flight = max(0, self.requests_in_flight - 1)

    # ---- transitions -------------------------------------------------------------------

    def setup_request(self, now: float, request: ControlRequest) -> Step:
        """One request of the setup: the order is enforced, a refusal closes the tunnel."""
        if self.is_closed:  # replaced or ended meanwhile: refused like any closed tunnel
            return self._decide(now, request, setup=True)
        expected = _EXPECTED.get(self.state)
        if expected is None:
            raise InvalidTransition(self.state, _EVENT[request.kind])
        if request.kind is not expected:
            return Step(close=_WRONG_REQUEST[expected])
        return self._decide(now, request, setup=True)

    def request(self, now: float, request: ControlRequest) -> Step:
        """One request after the setup: always answered; the tunnel stays either way."""
        return self._decide(now, request, setup=False)

    def stored(self, ok: Stored) -> Step:
        """The write of the last step's ``store`` is done (``ok``) or failed: the rest.

        A failed write undoes the grant (the allocator is as before the
        request) and is answered as an unavailable address; a store that
        could not be reached (:attr:`StoreFailure.UNAVAILABLE`) is answered
        503 and a setup is closed with code 5 and "grant store unavailable".
        """
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("stored() without a grant waiting for its write")
        if ok is StoreFailure.UNAVAILABLE:
            self._allocator.revert(pending.change)
            if pending.setup:
                return Step(
                    answer=_UNAVAILABLE, close=STORE_UNAVAILABLE, close_if_unsent=STORE_UNAVAILABLE
                )
            return Step(answer=_UNAVAILABLE, close_if_unsent=_UNSENT)
        if not ok:
            self._allocator.revert(pending.change)
            kind = RequestKind.ADDRESS_ASSIGNMENT
            return self._finish(_NOT_STORED, kind, pending.setup, "GrantNotStored")
        answer = self._commit(pending.claims, pending.allocation, pending.state)
        return self._finish(answer, RequestKind.ADDRESS_ASSIGNMENT, pending.setup)

    def process_control_request(self, now: float, request: ControlRequest) -> ControlAnswer:
        """Handle one request without setup rules or persistence and return the answer.

        For callers without a grant store (tests, diagnostics): every grant
        counts as written. Never raises for peer input.
        """
        step = self._decide(now, request, setup=False)
        while step.store is not None:
            step = self.stored(ok=True)
        assert step.answer is not None
        return step.answer

    def _decide(self, now: float, request: ControlRequest, *, setup: bool) -> Step:
        if self._pending is not None:
            raise RuntimeError("a grant is waiting for its write: call stored() first")
        if self.is_closed:
            answer = ControlAnswer(400, b"tunnel is closed")
            return self._finish(answer, request.kind, setup, "TunnelClosed")
        try:
            claims = self._validator.validate(now, request.token)
        except TokenValidationError as exc:
            answer = ControlAnswer(exc.status, _clip(str(exc) or "unauthorized").encode())
            return self._finish(answer, request.kind, setup, type(exc).__name__)
        if self.claims is not None and claims.id() != self.claims.id():
            answer = ControlAnswer(401, b"token identity does not match the session")
            return self._finish(answer, request.kind, setup, "IdentityMismatch")
        if request.kind is RequestKind.SESSION_RENEWAL:
            return self._finish(self._renew(claims), request.kind, setup)
        return self._assign(now, claims, request.requested, setup)

    def _finish(
        self, answer: ControlAnswer, kind: RequestKind, setup: bool, refusal: str | None = None
    ) -> Step:
        if not answer.ok and refusal is None:
            refusal = f"HTTP{answer.status}"
        if not setup:
            return Step(answer=answer, close_if_unsent=_UNSENT, refusal=refusal)
        if not answer.ok:
            cause = _clip(answer.body.decode("utf-8", "replace"))
            close = Close(CloseCode.INVALID_REQUEST, f"{_REFUSED[kind]}: {cause}")
            return Step(answer=answer, close=close, close_if_unsent=close, refusal=refusal)
        return Step(
            answer=answer,
            close_if_unsent=_SETUP_UNSENT,
            established=kind is RequestKind.ADDRESS_ASSIGNMENT,
        )

    def _renew(self, claims: TokenT) -> ControlAnswer:
        """The renewal's answer; a refusal here is a malformed expiry (HTTP 400)."""
        new = next_state(self.state, TunnelEvent.SESSION_RENEWED)
        expiry = claims.exp_time()
        # valid_until is a uint64: any claims type whose expiry does not fit is malformed,
        # and an integer expiry is answered exactly (2^64-1 stays 2^64-1).
        if isinstance(expiry, float) and not math.isfinite(expiry):
            return ControlAnswer(400, b"token expiry is not a finite number")
        valid_until = expiry if isinstance(expiry, int) else int(expiry)
        if not 0 <= valid_until <= _MAX_UINT64:
            return ControlAnswer(400, b"token expiry does not fit valid_until (uint64)")
        self.claims = claims
        self.session_expiry = expiry
        self._set(new, self.allocation)
        return ControlAnswer(200, encode_session_renewal_response(valid_until))

    def _assign(
        self, now: float, claims: TokenT, requested: tuple[AddressRange, ...], setup: bool
    ) -> Step:
        kind = RequestKind.ADDRESS_ASSIGNMENT
        if len(requested) > 1:
            answer = ControlAnswer(501, b"multiple address assignments are not supported")
            return self._finish(answer, kind, setup, "MultipleAddresses")
        try:
            wanted = tuple(r.to_request() for r in requested) or _ANY_ADDRESS
        except InvalidAddressRange:
            answer = ControlAnswer(
                400, b"a requested address assignment contained an invalid address range"
            )
            return self._finish(answer, kind, setup, "InvalidAddressRange")
        try:
            new = next_state(self.state, TunnelEvent.ADDRESS_ASSIGNED)
        except InvalidTransition:
            return self._finish(ControlAnswer(500, b"session state invalid"), kind, setup)
        granted = None
        for isd_as, prefix in wanted:
            try:
                granted = self._allocator.grant(now, isd_as, prefix, claims)
                break
            except AddressAllocationError:
                continue
        if granted is None:
            return self._finish(_NOT_STORED, kind, setup, "AddressUnavailable")
        allocation, change = granted
        if change is not None:  # written before it is answered: see stored()
            self._pending = _Pending(change, claims, allocation, new, setup)
            return Step(store=change)
        return self._finish(self._commit(claims, allocation, new), kind, setup)

    def _commit(
        self, claims: TokenT, allocation: AddressAllocation, new: TunnelState
    ) -> ControlAnswer:
        self.claims = claims
        self._set(new, allocation)
        # Same call as the grant: an older tunnel of this identity closes before anything runs.
        self._registry.claim(claims.id(), self)
        body = encode_address_assign_response([AddressRange.from_endhost(allocation.address)])
        return ControlAnswer(200, body)

    def shutdown(self, now: float) -> GrantChange | None:
        """Close the tunnel for good; its address goes on hold if this tunnel held the grant.

        Returns the hold for the caller to write (None if nothing changed).
        """
        change = None
        if self.allocation is not None and not self.is_closed:
            identity = self.allocation.id.id
            if self._registry.release(identity, self):
                change = self._allocator.hold(now, self.allocation.id)
        self._set(next_state(self.state, TunnelEvent.SHUTDOWN), self.allocation)
        return change

    def on_replaced(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (once) when a newer tunnel of this identity replaces this one."""
        self._on_replaced.append(listener)

    def replaced(self) -> None:
        """A newer tunnel took the grant over: close at once, leave the grant to it.

        Called by the registry; the machine is Closed (every Sender and
        Receiver refuses from now on) before the listeners run.
        """
        if self.is_closed:
            return
        self.was_replaced = True
        self._set(next_state(self.state, TunnelEvent.SHUTDOWN), self.allocation)
        listeners, self._on_replaced = self._on_replaced, []
        for listener in listeners:
            listener()

    def _set(self, state: TunnelState, allocation: AddressAllocation | None) -> None:
        changed = state is not self.state or (
            allocation is not None
            and (self.allocation is None or allocation.address != self.allocation.address)
        )
        self.state = state
        self.allocation = allocation
        if changed:
            self.version += 1


def _clip(text: str) -> str:
    """``text`` cut to :data:`MAX_CAUSE` characters (a kid or aud may be long)."""
    return text if len(text) <= MAX_CAUSE else text[: MAX_CAUSE - 1] + "…"
