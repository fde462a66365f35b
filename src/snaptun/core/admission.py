"""Admission of new QUIC connections, decided before any connection state exists.

A server that turns every Initial-looking datagram into a connection can be
grown without bound by garbage from anywhere (the finding: 200,000 random
datagrams took a gateway from 54 MB to 875 MB). :class:`ConnectionGate`
decides, for a datagram that belongs to no known connection, whether it may
create one:

* it must look like a QUIC v1 client Initial in a datagram of at least 1200
  bytes (:func:`looks_like_initial`; RFC 9000 §14.1), anything else is refused
  (``not_initial``): no state, no answer, not even Version Negotiation;
* at most ``max_half_open`` connections may be in their handshake at once
  (``half_open_limit``); the I/O layer frees a half-open connection that does
  not finish its handshake within its timeout;
* each source (IPv4 address, or IPv6 /64) has a token bucket of
  ``source_burst`` new connections refilled at ``source_rate`` per second
  (``source_rate``); a handshake that completes gives its token back
  (:meth:`ConnectionGate.completed`), so the bucket limits only the
  handshakes a source leaves hanging, not how fast it sets tunnels up. The
  table of sources is bounded by ``max_sources``: the least recently seen
  source is forgotten first, so spoofed sources cannot grow it;
* with ``retry`` ``"always"``, or ``"auto"`` (the default) once half of
  ``max_half_open`` is in use, an admitted Initial without a token is
  answered with a QUIC Retry instead of a connection (RFC 9000 §8.1), so only
  clients that receive at their address make state; an Initial that carries a
  token always has it checked (:meth:`ConnectionGate.wants_retry`). Tokens
  are :class:`RetryTokens`: HMAC-SHA256 under a per-process key, bound to the
  client's address and port and to both connection IDs, valid for
  ``retry_token_lifetime`` seconds; a token that fails is refused
  (``bad_retry_token``) for the cost of one HMAC.

Invariants: ``half_open <= max_half_open`` at every instant; memory is
bounded by ``max_sources`` buckets plus the half-open connections. Every
refusal is counted by reason (plain integers, exported at scrape time).
Sans-I/O: ``now`` is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Literal

from snaptun.core.ratelimit import TokenBucket

__all__ = [
    "REFUSAL_REASONS",
    "AdmissionSettings",
    "ConnectionGate",
    "RetryTokens",
    "initial_token",
    "looks_like_initial",
    "source_key",
]

QUIC_V1: Final = b"\x00\x00\x00\x01"
MIN_INITIAL_DATAGRAM: Final = 1200
MAX_CID_LENGTH: Final = 20

NOT_INITIAL: Final = "not_initial"
HALF_OPEN_LIMIT: Final = "half_open_limit"
SOURCE_RATE: Final = "source_rate"
BAD_RETRY_TOKEN: Final = "bad_retry_token"  # noqa: S105 - a metric label, not a secret
REFUSAL_REASONS: Final = (NOT_INITIAL, HALF_OPEN_LIMIT, SOURCE_RATE, BAD_RETRY_TOKEN)


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """Bounds on new connections; see the module docstring."""

    max_half_open: int = 256
    source_rate: float = 20.0
    source_burst: int = 50
    max_sources: int = 65536
    retry: Literal["auto", "always", "never"] = "auto"
    retry_token_lifetime: float = 10.0
    """Seconds a Retry token is accepted after it was issued (the client answers in one RTT)."""

    def __post_init__(self) -> None:
        if self.retry not in ("auto", "always", "never"):
            raise ValueError(f"retry must be auto, always or never, not {self.retry!r}")
        if self.max_half_open < 1 or self.source_burst < 1 or self.max_sources < 1:
            raise ValueError("max_half_open, source_burst and max_sources must be positive")
        if not 0 <= self.source_rate < float("inf"):
            raise ValueError("source_rate must be a finite number >= 0")
        if not (math.isfinite(self.retry_token_lifetime) and self.retry_token_lifetime > 0):
            raise ValueError("retry_token_lifetime must be a positive number of seconds")


def looks_like_initial(datagram: bytes) -> bool:
    """Whether ``datagram`` may start a QUIC v1 connection (long header, Initial, >= 1200 B)."""
    if len(datagram) < MIN_INITIAL_DATAGRAM:
        return False
    first = datagram[0]
    # Long header (0x80), fixed bit (0x40), packet type Initial (0b00 in bits 4-5).
    if first & 0xF0 != 0xC0 or datagram[1:5] != QUIC_V1:
        return False
    return datagram[5] <= MAX_CID_LENGTH


def initial_token_length(datagram: bytes) -> int:
    """The token length of a QUIC v1 Initial (after :func:`looks_like_initial`); -1 if cut."""
    at = 6 + datagram[5]  # after the DCID
    if at >= len(datagram):
        return -1
    at += 1 + datagram[at]  # after the SCID
    if at >= len(datagram):
        return -1
    size = 1 << (datagram[at] >> 6)  # a variable-length integer of 1, 2, 4 or 8 bytes
    if at + size > len(datagram):
        return -1
    return int.from_bytes(datagram[at : at + size], "big") & ((1 << (8 * size - 2)) - 1)


def initial_token(datagram: bytes) -> bytes | None:
    """The token of a QUIC v1 Initial (after :func:`looks_like_initial`); None if cut."""
    length = initial_token_length(datagram)
    if length < 0:
        return None
    at = 6 + datagram[5]
    at += 1 + datagram[at]
    at += 1 << (datagram[at] >> 6)
    token = datagram[at : at + length]
    return token if len(token) == length else None


class RetryTokens:
    """Stateless, authenticated Retry tokens (RFC 9000 §8.1.2), checked for one HMAC.

    A token is ``magic | issued (ms) | len ODCID | ODCID | len RSCID | RSCID |
    MAC``, the MAC being HMAC-SHA256 (first 16 bytes) under ``key`` over the
    client's packed address and port and everything before it. It is valid
    from that address and port only, for ``lifetime`` seconds, and only in an
    Initial whose Destination Connection ID is the Retry's Source Connection
    ID (RSCID). ``now`` is any monotonic clock in seconds, the same for
    :meth:`issue` and :meth:`check`.
    """

    MAGIC: Final = b"St"
    _MAC: Final = 16
    _HEAD: Final = len(MAGIC) + 8

    def __init__(self, key: bytes, lifetime: float) -> None:
        if len(key) < 16:
            raise ValueError("a Retry token key needs at least 16 bytes")
        self._key = key
        self._lifetime_ms = round(lifetime * 1000)

    @staticmethod
    def _address(host: str, port: int) -> bytes:
        try:
            packed = ipaddress.ip_address(host.split("%", 1)[0]).packed
        except ValueError:
            packed = host.encode()
        return packed + (port & 0xFFFF).to_bytes(2, "big")

    def _mac(self, host: str, port: int, body: bytes) -> bytes:
        message = self._address(host, port) + body
        return hmac.new(self._key, message, hashlib.sha256).digest()[: self._MAC]

    def issue(self, host: str, port: int, odcid: bytes, rscid: bytes, now: float) -> bytes:
        """A token for the client at (host, port) whose first Initial had DCID ``odcid``."""
        if len(odcid) > MAX_CID_LENGTH or len(rscid) > MAX_CID_LENGTH:
            raise ValueError("connection IDs have at most 20 bytes")
        issued = max(0, int(now * 1000)).to_bytes(8, "big")
        body = self.MAGIC + issued + bytes([len(odcid)]) + odcid + bytes([len(rscid)]) + rscid
        return body + self._mac(host, port, body)

    def check(
        self, token: bytes, host: str, port: int, dcid: bytes | None, now: float
    ) -> tuple[bytes, bytes] | None:
        """(ODCID, RSCID) of a valid token, else None.

        ``dcid`` is the Destination Connection ID of the Initial that carries
        the token; it must equal the RSCID (None skips that check).
        """
        head = self._HEAD
        if len(token) < head + 2 + self._MAC or token[:2] != self.MAGIC:
            return None
        body, mac = token[: -self._MAC], token[-self._MAC :]
        if not hmac.compare_digest(mac, self._mac(host, port, body)):
            return None
        age = max(0, int(now * 1000)) - int.from_bytes(body[2:head], "big")
        if not 0 <= age <= self._lifetime_ms:
            return None
        odcid_end = head + 1 + body[head]
        if odcid_end >= len(body) or odcid_end + 1 + body[odcid_end] != len(body):
            return None
        odcid, rscid = body[head + 1 : odcid_end], body[odcid_end + 1 :]
        if dcid is not None and rscid != dcid:
            return None
        return odcid, rscid


def source_key(host: str) -> str:
    """The rate-limited unit of a source: its IPv4 address, or its IPv6 /64."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class ConnectionGate:
    """Says whether an Initial for an unknown connection may create one."""

    def __init__(self, settings: AdmissionSettings | None = None) -> None:
        self.settings = settings or AdmissionSettings()
        self.half_open = 0
        """Connections created and not yet through (or given up on) their handshake."""
        self.refused = dict.fromkeys(REFUSAL_REASONS, 0)
        """Refusals by reason, since start."""
        self.admitted = 0
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def tracked_sources(self) -> int:
        """Sources with a bucket now (at most ``max_sources``)."""
        return len(self._sources)

    def admit(self, datagram: bytes, host: str, now: float) -> str | None:
        """None if the datagram may create a connection, else the refusal reason (counted).

        Call only for datagrams that match no known connection; on None the
        caller creates the connection and calls :meth:`opened`.
        """
        reason = self._check(datagram, host, now)
        if reason is None:
            self.admitted += 1
        else:
            self.refused[reason] += 1
        return reason

    def refuse(self, reason: str) -> None:
        """Count a refusal decided outside :meth:`admit` (a Retry token that fails)."""
        self.refused[reason] += 1

    def _check(self, datagram: bytes, host: str, now: float) -> str | None:
        if not looks_like_initial(datagram):
            return NOT_INITIAL
        if self.half_open >= self.settings.max_half_open:
            return HALF_OPEN_LIMIT
        if not self._bucket(source_key(host), now).take(now):
            return SOURCE_RATE
        return None

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._sources.get(key)
        if bucket is not None:
            self._sources.move_to_end(key)
            return bucket
        settings = self.settings
        bucket = TokenBucket(settings.source_rate, settings.source_burst, now)
        self._sources[key] = bucket
        if len(self._sources) > settings.max_sources:
            self._sources.popitem(last=False)  # the least recently seen source
        return bucket

    def wants_retry(self, datagram: bytes) -> bool:
        """Whether an admitted Initial goes through address validation (Retry or its token)."""
        if initial_token_length(datagram) != 0:
            return True  # a client answering our Retry: its token must be checked
        mode = self.settings.retry
        if mode == "auto":
            return self.half_open * 2 >= self.settings.max_half_open
        return mode == "always"

    def opened(self) -> None:
        """A connection was created for an admitted Initial: it is half-open now."""
        self.half_open += 1

    def completed(self, host: str) -> None:
        """A handshake from ``host`` completed: its token goes back to the source's bucket."""
        bucket = self._sources.get(source_key(host))
        if bucket is not None:
            bucket.give_back()

    def settled(self) -> None:
        """A half-open connection finished its handshake, failed, or timed out."""
        if self.half_open > 0:
            self.half_open -= 1
