"""Bearer tokens (EdDSA JWTs): claims, validators, minting; key files: snaptun.keyfiles.

A server is generic over its claims type: anything that satisfies :class:`Token`
(an identity, an expiry and the names of its required claims). SNAP tokens are
EdDSA (Ed25519) JWTs whose claims are :class:`SnapTokenClaims`.

Validation outcomes, each with the HTTP status the server answers::

    TokenValidationError
    ├── InvalidSignature   401  the signature verifies with none of the trusted keys
    ├── MalformedToken     400  not a JWT, an algorithm other than EdDSA, missing or
    │                           ill-typed required claims (``exp`` not an integer
    │                           in [0, 2^64-1]; ``pssid`` not one of the four UUID
    │                           forms), a base64url segment not in its one canonical
    │                           spelling (padding, stray characters, non-zero
    │                           trailing bits), or JSON the reference's serde_json
    │                           would refuse (see below) or with a duplicate key
    └── TokenExpired       401  now > exp

Order of the checks: the spelling of the three segments and the header's JSON
(400), then the signature (401), and only then the payload's JSON and claims
(400). As in the reference, a payload is parsed only once its signature
verifies, so a tampered payload is 401 (one respelled in base64url is 400
here, where the reference, decoding it only after the signature, says 401).

JSON is read as serde_json reads it, so that one token means one thing: UTF-8
only (no BOM, no UTF-16), no ``NaN``/``Infinity``, no number beyond the range of
a double, no lone surrogate, at most 127 nested levels, and ``-0`` is a float
(so no integer claim accepts it). Unlike serde, which refuses duplicates only of
the claims it knows, a duplicate key anywhere is refused. ``exp`` is kept exact
(an ``int``, never a float), ``nbf``, ``iat``, ``iss``, ``sub`` and ``jti`` are
ignored whatever their value (the reference checks none of them by default),
and an ``aud`` claim is refused because no audience is configured.

Expiry is checked against the ``now`` given by the caller, never the wall clock.
Nothing here does I/O; key files are read and written by :mod:`snaptun.keyfiles`.

A :class:`JwtTokenValidator` remembers the claims of the last tokens it
accepted (a bounded LRU keyed by the exact token string), because a tunnel's
setup presents one token twice (renew, then assign): the second check costs a
dictionary lookup instead of an Ed25519 verification. Only accepted tokens are
kept, and expiry is checked against ``now`` on every call, so every refusal
is what it would have been without the cache.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import re
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar, overload

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from snaptun.errors import InvalidSignature, MalformedToken, TokenExpired

__all__ = [
    "DEFAULT_CLAIMS_CACHE",
    "ClaimsType",
    "JwtTokenValidator",
    "SnapTokenClaims",
    "StaticTokenValidator",
    "Token",
    "TokenT",
    "TokenT_co",
    "TokenValidator",
    "generate_signing_key",
    "mint_token",
]

#: The only JWS algorithm accepted or produced (Ed25519 signatures).
JWT_ALGORITHM: Final = "EdDSA"

#: Accepted tokens whose claims a JwtTokenValidator remembers (about 0.5 KiB each).
DEFAULT_CLAIMS_CACHE: Final = 256

#: Largest value of a numeric claim: the protobuf's uint64 (``valid_until``).
MAX_UINT64: Final = 2**64 - 1

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]*")

# The forms the Rust uuid crate parses: simple, hyphenated, braced and URN (any hex case).
_HYPHENATED = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID_FORMS: Final = re.compile(
    rf"[0-9a-fA-F]{{32}}|{_HYPHENATED}|\{{{_HYPHENATED}\}}|urn:uuid:{_HYPHENATED}"
)

#: Deepest nesting of JSON arrays and objects accepted (serde_json's limit is 128 levels,
#: the 128th refused).
MAX_JSON_DEPTH: Final = 127

# Namespace for the identity StaticTokenValidator derives from its accepted string.
_STATIC_NAMESPACE: Final = uuid.UUID("6f1c5b0e-2a7d-4d1e-9a51-5e0c7f3a9b21")


class Token(Protocol):
    """Validated token claims: an identity, an expiry and the claims a token must carry."""

    def id(self) -> str:
        """The identity that address grants are keyed by."""
        ...

    def exp_time(self) -> float:
        """Expiry in unix seconds; the token is expired when now > exp_time().

        Best an ``int`` (SnapTokenClaims returns one): a renewal answers it as the
        uint64 ``valid_until``, exactly for an int, truncated for a float, and an
        expiry outside [0, 2^64-1] is answered 400.
        """
        ...

    @classmethod
    def required_claims(cls) -> tuple[str, ...]:
        """Names of the claims a token of this type must carry."""
        ...


TokenT = TypeVar("TokenT", bound=Token)
TokenT_co = TypeVar("TokenT_co", bound=Token, covariant=True)


class TokenValidator(Protocol[TokenT_co]):
    """Turns a bearer token into claims, or raises a TokenValidationError subclass."""

    def validate(self, now: float, token: str) -> TokenT_co:
        """Validate ``token`` at time ``now`` (unix seconds).

        Raises InvalidSignature, MalformedToken or TokenExpired.
        """
        ...


class ClaimsType(Protocol[TokenT_co]):
    """A claims class a JWT validator can build: its required claims and a constructor."""

    def required_claims(self) -> tuple[str, ...]:
        """Names of the claims a token must carry."""
        ...

    def from_claims(self, claims: Mapping[str, object]) -> TokenT_co:
        """Build the claims from a decoded JWT payload; MalformedToken if ill-typed."""
        ...


@dataclass(frozen=True, slots=True)
class SnapTokenClaims:
    """Claims of a SNAP token: ``pssid`` (the identity) and ``exp`` (unix seconds)."""

    pssid: uuid.UUID
    exp: int

    def __post_init__(self) -> None:
        # Refused here so that no token with an unencodable expiry can be minted.
        if isinstance(self.exp, bool) or not isinstance(self.exp, int):
            raise TypeError(f"exp must be an int, not {type(self.exp).__name__}")
        if not 0 <= self.exp <= MAX_UINT64:
            raise ValueError(f"exp {self.exp} is not in [0, 2^64-1]")

    def id(self) -> str:
        """The pssid in its canonical hyphenated form."""
        return str(self.pssid)

    def exp_time(self) -> int:
        """The ``exp`` claim, exact (an integer up to 2^64-1, never rounded through a float)."""
        return self.exp

    @classmethod
    def required_claims(cls) -> tuple[str, ...]:
        """``pssid`` and ``exp``."""
        return ("pssid", "exp")

    @classmethod
    def from_claims(cls, claims: Mapping[str, object]) -> SnapTokenClaims:
        """Read ``pssid`` (a UUID string) and ``exp`` (a non-negative integer).

        Raises MalformedToken when either is missing or ill-typed.
        """
        pssid = claims.get("pssid")
        exp = claims.get("exp")
        if pssid is None:
            raise MalformedToken("token lacks the pssid claim")
        if exp is None:
            raise MalformedToken("token lacks the exp claim")
        if not isinstance(pssid, str):
            raise MalformedToken("pssid claim is not a string")
        # uuid.UUID alone would also take "urn:{...}", stray hyphens and lone braces.
        if not _UUID_FORMS.fullmatch(pssid):
            raise MalformedToken("pssid claim is not a UUID")
        identity = uuid.UUID(pssid)
        # bool is an int in Python, but not in JSON; the reference reads exp as u64.
        if isinstance(exp, bool) or not isinstance(exp, int) or not 0 <= exp <= MAX_UINT64:
            raise MalformedToken("exp claim is not an integer from 0 to 2^64-1")
        return cls(identity, exp)

    def to_claims(self) -> dict[str, object]:
        """The JWT payload for these claims."""
        return {"pssid": str(self.pssid), "exp": self.exp}


class JwtTokenValidator(Generic[TokenT]):
    """Validates EdDSA JWTs against one or more trusted Ed25519 public keys.

    Several keys support key rotation: a token is accepted if its signature
    verifies with any of them. Only ``alg: EdDSA`` is accepted, so ``none``,
    HMAC (including the classic trick of signing with the public key as the HMAC
    secret) and RSA tokens are refused as malformed before any key is tried.
    A token carrying an ``aud`` claim is refused as malformed, as the reference
    validator does when no audience is configured.

    The claims of the last ``cache_size`` accepted tokens are kept (LRU, keyed
    by the exact token string; 0 keeps none) and handed out again, the same
    object, so a claims type must be immutable to be cached. A cached token is
    still checked for expiry against ``now`` every time; a refused token is
    never kept, so it is checked in full again.
    """

    @overload
    def __init__(
        self: JwtTokenValidator[SnapTokenClaims],
        public_keys: Sequence[Ed25519PublicKey],
        *,
        cache_size: int = DEFAULT_CLAIMS_CACHE,
    ) -> None: ...

    @overload
    def __init__(
        self,
        public_keys: Sequence[Ed25519PublicKey],
        claims_type: ClaimsType[TokenT],
        *,
        cache_size: int = DEFAULT_CLAIMS_CACHE,
    ) -> None: ...

    def __init__(
        self,
        public_keys: Sequence[Ed25519PublicKey],
        claims_type: ClaimsType[TokenT] | None = None,
        *,
        cache_size: int = DEFAULT_CLAIMS_CACHE,
    ) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be a non-negative integer, not {cache_size!r}")
        self._cache_size = cache_size
        self._cache: OrderedDict[str, TokenT] = OrderedDict()
        keys = tuple(public_keys)
        if not keys:
            raise ValueError("JwtTokenValidator needs at least one public key")
        for key in keys:
            if not isinstance(key, Ed25519PublicKey):
                raise TypeError(f"expected an Ed25519 public key, got {type(key).__name__}")
        self._keys = keys
        # Without a claims_type the overloads bind TokenT to SnapTokenClaims.
        self._claims_type: ClaimsType[TokenT] = (
            claims_type if claims_type is not None else SnapTokenClaims  # type: ignore[assignment]
        )
        self._required = list(self._claims_type.required_claims())

    @property
    def public_keys(self) -> tuple[Ed25519PublicKey, ...]:
        """The trusted keys, in the order they are tried."""
        return self._keys

    def validate(self, now: float, token: str) -> TokenT:
        """Verify the signature, decode the claims and check expiry against ``now``."""
        cache = self._cache
        claims = cache.get(token)
        if claims is None:
            claims = self._claims_type.from_claims(self._verified_payload(token))
            if now > claims.exp_time():
                raise TokenExpired(f"token expired at {claims.exp_time():.0f}")
            if self._cache_size:
                cache[token] = claims
                if len(cache) > self._cache_size:
                    cache.popitem(last=False)
            return claims
        if now > claims.exp_time():
            raise TokenExpired(f"token expired at {claims.exp_time():.0f}")
        cache.move_to_end(token)
        return claims

    def _verified_payload(self, token: str) -> dict[str, object]:
        header, payload, _ = _segments(token)
        _json_object(header, "header")
        for key in self._keys:
            try:
                # PyJWT checks the header (alg, kid, crit) and the signature; it does not
                # parse the payload, which is ours to read strictly once it is authentic.
                jwt.api_jws.decode_complete(token, key, algorithms=[JWT_ALGORITHM])
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise MalformedToken(f"malformed token: {exc}") from None
            return self._checked_claims(_json_object(payload, "payload"))
        raise InvalidSignature("token signature does not verify with any trusted key")

    def _checked_claims(self, claims: dict[str, object]) -> dict[str, object]:
        if claims.get("aud") is not None:  # also "" and []: the reference refuses those too
            raise MalformedToken("malformed token: an aud claim, and no audience is configured")
        for name in self._required:
            if claims.get(name) is None:
                raise MalformedToken(f"malformed token: it lacks the {name} claim")
        return claims


def _segments(token: str) -> tuple[bytes, bytes, bytes]:
    """The decoded header, payload and signature, each from its one canonical spelling.

    Each segment must be unpadded base64url whose re-encoding gives it back (no
    ``=``, no stray characters, zero trailing bits), as the reference's
    base64 engine (URL_SAFE_NO_PAD) requires; PyJWT alone accepts padding.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken("malformed token: not three dot-separated segments")
    decoded = []
    for part in parts:
        if not _SEGMENT.fullmatch(part):
            raise MalformedToken("malformed token: a segment is not unpadded base64url")
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except (binascii.Error, ValueError):
            raise MalformedToken("malformed token: a segment is not base64url") from None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != part:
            raise MalformedToken("malformed token: a segment is not canonical base64url")
        decoded.append(raw)
    return decoded[0], decoded[1], decoded[2]


def _json_object(raw: bytes, part: str) -> dict[str, object]:
    """``raw`` as a JSON object, read as serde_json reads it, duplicate keys refused."""
    try:
        value: object = json.loads(
            raw.decode("utf-8"),  # strict: json.loads(bytes) would also take UTF-16/32
            object_pairs_hook=_no_duplicates,
            parse_int=_json_int,
            parse_float=_json_float,
            parse_constant=_json_constant,
        )
        _check_strings_and_depth(value)
    except (ValueError, RecursionError) as exc:  # UnicodeError and JSONDecodeError too
        raise MalformedToken(f"malformed token: {part}: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedToken(f"malformed token: {part} is not a JSON object")
    return value


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for name, item in pairs:
        if name in result:
            raise ValueError(f"duplicate JSON key {name!r}")
        result[name] = item
    return result


def _json_int(text: str) -> int | float:
    if text == "-0":
        return -0.0  # serde_json reads -0 as a float, which no integer claim accepts
    value = int(text)  # more than 4300 digits: ValueError
    try:
        float(value)
    except OverflowError:
        raise ValueError("number out of range") from None
    return value


def _json_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def _json_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _check_strings_and_depth(value: object) -> None:
    """Refuse lone surrogates (``"\\ud800"``) and nesting beyond MAX_JSON_DEPTH, as serde_json.

    Iterative, so that a deep value cannot exhaust the Python stack.
    """
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


class StaticTokenValidator:
    """Accepts exactly one fixed token string, like ``snaptun-ref server --accept-token``.

    For tests, interoperability runs and demos; never for production. Every
    accepted token gets the same identity (``identity``, or a UUID derived from
    the accepted string) and expires ``validity`` seconds (rounded up to whole
    seconds) after ``int(now)``, capped at 2^64-1. Anything else is an
    InvalidSignature (HTTP 401).
    """

    def __init__(self, accepted: str, validity: float, identity: uuid.UUID | None = None) -> None:
        if not math.isfinite(validity) or validity < 0:
            raise ValueError(f"validity must be a non-negative number of seconds, not {validity}")
        self._accepted = accepted.encode("utf-8")
        self._validity = math.ceil(validity)
        if identity is None:
            identity = uuid.uuid5(_STATIC_NAMESPACE, accepted)
        self._identity = identity

    @property
    def identity(self) -> uuid.UUID:
        """The pssid every accepted token carries."""
        return self._identity

    def validate(self, now: float, token: str) -> SnapTokenClaims:
        """The claims for the accepted string; InvalidSignature for anything else."""
        if not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self._accepted):
            raise InvalidSignature("token not accepted")
        return SnapTokenClaims(self._identity, min(int(now) + self._validity, MAX_UINT64))


def mint_token(private_key: Ed25519PrivateKey, claims: SnapTokenClaims) -> str:
    """Sign ``claims`` as an EdDSA JWT."""
    return jwt.encode(claims.to_claims(), private_key, algorithm=JWT_ALGORITHM)


def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key."""
    return Ed25519PrivateKey.generate()
