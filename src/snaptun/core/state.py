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
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic

from snaptun.core.addressing import WILDCARD_ISD_AS, EndhostAddress, IPNetwork, IsdAs
from snaptun.core.allocator import AddressAllocation, AddressAllocator
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
    SnaptunError,
    TokenValidationError,
)

_ANY_ADDRESS: Final[tuple[tuple[IsdAs, IPNetwork], ...]] = (
    (WILDCARD_ISD_AS, ipaddress.ip_network("0.0.0.0/32")),
    (WILDCARD_ISD_AS, ipaddress.ip_network("::/128")),
)


_MAX_UINT64: Final = 2**64 - 1


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


class TunnelStateMachine(Generic[TokenT]):
    """Validates control requests, allocates addresses and tracks the session."""

    def __init__(
        self,
        validator: TokenValidator[TokenT],
        allocator: AddressAllocator[TokenT],
        registry: TunnelRegistry | None = None,
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

    # ---- transitions -------------------------------------------------------------------

    def process_control_request(self, now: float, request: ControlRequest) -> ControlAnswer:
        """Handle one request and return the answer; never raises for peer input."""
        if self.is_closed:
            return ControlAnswer(400, b"tunnel is closed")
        try:
            claims = self._validator.validate(now, request.token)
        except TokenValidationError as exc:
            return ControlAnswer(exc.status, b"unauthorized")
        if self.claims is not None and claims.id() != self.claims.id():
            return ControlAnswer(401, b"token identity does not match the session")
        if request.kind is RequestKind.SESSION_RENEWAL:
            return self._renew(claims)
        return self._assign(claims, request.requested)

    def _renew(self, claims: TokenT) -> ControlAnswer:
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

    def _assign(self, claims: TokenT, requested: tuple[AddressRange, ...]) -> ControlAnswer:
        if len(requested) > 1:
            return ControlAnswer(501, b"multiple address assignments are not supported")
        try:
            wanted = tuple(r.to_request() for r in requested) or _ANY_ADDRESS
        except InvalidAddressRange:
            return ControlAnswer(
                400, b"a requested address assignment contained an invalid address range"
            )
        try:
            new = next_state(self.state, TunnelEvent.ADDRESS_ASSIGNED)
        except InvalidTransition:
            return ControlAnswer(500, b"session state invalid")
        allocation = None
        for isd_as, prefix in wanted:
            try:
                allocation = self._allocator.allocate(isd_as, prefix, claims)
                break
            except AddressAllocationError:
                continue
        if allocation is None:
            return ControlAnswer(
                400, b"either requested address is unavailable, or no addresses are available"
            )
        self.claims = claims
        self._set(new, allocation)
        # Same call as the grant: an older tunnel of this identity closes before anything runs.
        self._registry.claim(claims.id(), self)
        body = encode_address_assign_response([AddressRange.from_endhost(allocation.address)])
        return ControlAnswer(200, body)

    def shutdown(self) -> None:
        """Close the tunnel for good; its address goes on hold if this tunnel held the grant."""
        if self.allocation is not None and not self.is_closed:
            identity = self.allocation.id.id
            if self._registry.release(identity, self):
                self._allocator.put_on_hold(self.allocation.id)
        self._set(next_state(self.state, TunnelEvent.SHUTDOWN), self.allocation)

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
