"""Bearer tokens: claims, key sets, validators and minting; key files: snaptun.keyfiles.

A server is generic over its claims type: anything that satisfies :class:`Token`
(an identity, an expiry and the names of its required claims). SNAP tokens are
EdDSA (Ed25519) JWTs whose claims are :class:`SnapTokenClaims`.

Validation outcomes, each with the HTTP status the server answers (§4)::

    TokenValidationError
    ├── InvalidSignature   401  the signature verifies with none of the trusted keys
    │   └── UnknownKeyId   401  the header's ``kid`` names no trusted key (and no
    │                           key without a kid verifies the token)
    ├── MalformedToken     400  not a JWT, an algorithm other than EdDSA, missing or
    │   │                       ill-typed required claims (``exp`` not an integer
    │   │                       in [0, 2^64-1]; ``pssid`` not one of the four UUID
    │   │                       forms nor upstream's v1 form), an ill-typed ``nbf``,
    │   │                       ``aud``, ``iss`` or ``ver``, a base64url segment not
    │   │                       in its one canonical spelling (padding, stray
    │   │                       characters, non-zero trailing bits), or JSON the
    │   │                       reference's serde_json would refuse (see below) or
    │   │                       with a duplicate key
    │   ├── WrongAudience  400  ``aud`` does not name the gateway's audience
    │   └── WrongIssuer    400  ``iss`` is not the configured issuer
    ├── TokenExpired       401  now > exp
    └── NotYetValid        401  now + leeway < nbf

Order of the checks: the spelling of the three segments and the header's JSON
(400), then the signature (401), and only then the payload's JSON and claims
(400), audience and issuer (400), expiry and not-before (401). As in the
reference, a payload is parsed only once its signature verifies, so a tampered
payload is 401 (one respelled in base64url is 400 here, where the reference,
decoding it only after the signature, says 401).

Keys (:class:`KeySet`): a token whose header has a ``kid`` is verified with the
keys of that kid, or, when no key has it, with the keys that have no kid (PEM
keys); a token without ``kid`` is tried against every key. A JWK Set
(:func:`parse_jwks`) gives keys with kids.

Claims (:class:`ClaimsPolicy`): ``aud`` (a string or a list of strings) must
name the configured audience, or without one :data:`DEFAULT_AUDIENCE` (upstream
v1 tokens carry ``"aud": "snap"``); a token without ``aud`` is not restricted
and is accepted. ``iss`` must equal the configured issuer when one is set.
``nbf`` is honoured with a leeway (clock skew between issuer and gateway);
``exp`` has none (now > exp is expired). ``iat``, ``sub`` and ``jti`` are
ignored whatever their value, as the reference does; ``ver`` must be 1 when
present (upstream's v1 tokens).

JSON is read as serde_json reads it, so that one token means one thing: UTF-8
only (no BOM, no UTF-16), no ``NaN``/``Infinity``, no number beyond the range of
a double, no lone surrogate, at most 127 nested levels, and ``-0`` is a float
(so no integer claim accepts it). Unlike serde, which refuses duplicates only of
the claims it knows, a duplicate key anywhere is refused. ``exp`` is kept exact
(an ``int``, never a float).

Time is the ``now`` given by the caller, never the wall clock. Nothing here
does I/O; key files are read and written by :mod:`snaptun.keyfiles`, JWK Set
files by the gateway (:mod:`snaptun.gateway.token_keys`).

A :class:`JwtTokenValidator` remembers the claims of the last tokens it
accepted (a bounded LRU keyed by the exact token string), because a tunnel's
setup presents one token twice (renew, then assign): the second check costs a
dictionary lookup instead of an Ed25519 verification. Only accepted tokens are
kept, time-dependent checks (expiry, not-before) run against ``now`` on every
call, and a new key set or claims policy empties it, so every refusal is what
it would have been without the cache.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import math
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar, overload

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from snaptun.errors import (
    InvalidSignature,
    MalformedToken,
    NotYetValid,
    TokenExpired,
    UnknownKeyId,
    WrongAudience,
    WrongIssuer,
)

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_CLAIMS_CACHE",
    "DEFAULT_LEEWAY",
    "ClaimsPolicy",
    "ClaimsType",
    "JwtTokenValidator",
    "KeySet",
    "SnapTokenClaims",
    "StaticTokenValidator",
    "Token",
    "TokenT",
    "TokenT_co",
    "TokenValidator",
    "TrustedKey",
    "format_expiry",
    "generate_signing_key",
    "jwk_of",
    "jwks_document",
    "key_thumbprint",
    "mint_token",
    "parse_jwks",
]

#: The only JWS algorithm accepted or produced (Ed25519 signatures).
JWT_ALGORITHM: Final = "EdDSA"

#: Largest value of a numeric claim: the protobuf's uint64 (``valid_until``).
MAX_UINT64: Final = 2**64 - 1

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]*")

# The forms the Rust uuid crate parses: simple, hyphenated, braced and URN (any hex case).
_HYPHENATED = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID_FORMS: Final = re.compile(
    rf"[0-9a-fA-F]{{32}}|{_HYPHENATED}|\{{{_HYPHENATED}\}}|urn:uuid:{_HYPHENATED}"
)

# Upstream's v1 pssid: base64url (no padding) of 0x00 followed by the 16 UUID bytes.
_V1_PSSID: Final = re.compile(r"[A-Za-z0-9_-]{23}")

#: The audience a gateway answers to when none is configured: upstream's v1 tokens
#: carry ``"aud": "snap"``.
DEFAULT_AUDIENCE: Final = "snap"

#: Accepted tokens whose claims a JwtTokenValidator remembers (about 0.5 KiB each).
DEFAULT_CLAIMS_CACHE: Final = 256

#: Seconds of clock skew allowed on ``nbf`` (not on ``exp``), as common JWT libraries do.
DEFAULT_LEEWAY: Final = 60.0

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
        identity = _pssid(pssid)
        # bool is an int in Python, but not in JSON; the reference reads exp as u64.
        if isinstance(exp, bool) or not isinstance(exp, int) or not 0 <= exp <= MAX_UINT64:
            raise MalformedToken("exp claim is not an integer from 0 to 2^64-1")
        return cls(identity, exp)

    def to_claims(self) -> dict[str, object]:
        """The JWT payload for these claims."""
        return {"pssid": str(self.pssid), "exp": self.exp}


def _pssid(text: str) -> uuid.UUID:
    """A pssid in one of the four UUID forms, or upstream's v1 form (base64url of 0x00 + UUID).

    The identity is the UUID either way, so one subscriber keeps one grant
    whichever form its tokens use.
    """
    # uuid.UUID alone would also take "urn:{...}", stray hyphens and lone braces.
    if _UUID_FORMS.fullmatch(text):
        return uuid.UUID(text)
    if _V1_PSSID.fullmatch(text):
        raw = base64.urlsafe_b64decode(text + "=")
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") == text and raw[0] == 0:
            return uuid.UUID(bytes=raw[1:])
    raise MalformedToken("pssid claim is not a UUID")


def format_expiry(exp: float) -> str:
    """``exp`` as UTC ISO 8601 with the number, e.g. ``2026-01-01T00:00:00Z (1767225600)``."""
    try:
        moment = datetime.datetime.fromtimestamp(exp, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return f"{exp:.0f}"
    return f"{moment:%Y-%m-%dT%H:%M:%SZ} ({exp:.0f})"


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A trusted Ed25519 public key, with its key id (``kid``) when it has one."""

    key: Ed25519PublicKey
    kid: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, Ed25519PublicKey):
            raise TypeError(f"expected an Ed25519 public key, got {type(self.key).__name__}")
        if self.kid is not None and (not isinstance(self.kid, str) or not self.kid):
            raise ValueError("a kid must be a non-empty string")


class KeySet:
    """The keys a validator trusts, selected by the token's ``kid``; immutable.

    Invariants: at least one key; no kid appears twice. A reload builds a new
    set and swaps it in (:attr:`JwtTokenValidator.key_set`).
    """

    __slots__ = ("_by_kid", "_keys", "_unnamed")

    def __init__(self, keys: Iterable[TrustedKey | Ed25519PublicKey]) -> None:
        trusted = tuple(k if isinstance(k, TrustedKey) else TrustedKey(k) for k in keys)
        if not trusted:
            raise ValueError("a key set needs at least one key")
        by_kid: dict[str, Ed25519PublicKey] = {}
        for item in trusted:
            if item.kid is not None:
                if item.kid in by_kid:
                    raise ValueError(f"key id {item.kid!r} appears twice")
                by_kid[item.kid] = item.key
        self._keys = trusted
        self._by_kid = by_kid
        self._unnamed = tuple(item.key for item in trusted if item.kid is None)

    @property
    def keys(self) -> tuple[TrustedKey, ...]:
        """Every key, in the order given."""
        return self._keys

    @property
    def kids(self) -> tuple[str, ...]:
        """The key ids, in the order given."""
        return tuple(self._by_kid)

    def __len__(self) -> int:
        return len(self._keys)

    def candidates(self, kid: str | None) -> tuple[Ed25519PublicKey, ...]:
        """The keys to try for a token with this ``kid`` (None: no kid in its header)."""
        if kid is None:
            return tuple(item.key for item in self._keys)
        named = self._by_kid.get(kid)
        return (named,) if named is not None else self._unnamed

    def knows(self, kid: str) -> bool:
        """Whether a key has this kid."""
        return kid in self._by_kid


def key_thumbprint(key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url): a stable default ``kid``."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(key.public_bytes_raw())}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def jwk_of(key: Ed25519PublicKey, kid: str | None) -> dict[str, str]:
    """The public JWK of ``key`` (``kty: OKP``, ``crv: Ed25519``) with its kid."""
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(key.public_bytes_raw())}
    if kid is not None:
        jwk["kid"] = kid
    jwk["use"] = "sig"
    jwk["alg"] = JWT_ALGORITHM
    return jwk


def jwks_document(keys: Iterable[TrustedKey]) -> dict[str, object]:
    """A JWK Set of public keys, as :func:`parse_jwks` reads it back."""
    return {"keys": [jwk_of(item.key, item.kid) for item in keys]}


def parse_jwks(data: bytes | str) -> KeySet:
    """A JWK Set of Ed25519 public keys; ValueError saying what is wrong and where.

    Every key must be ``kty: OKP`` with ``crv: Ed25519`` and a 32-byte ``x``;
    a ``kid`` (optional) is a non-empty string, unique in the set; ``use``,
    when present, is ``sig``; ``alg``, when present, is ``EdDSA``. A key with
    a private part (``d``) is refused: the gateway needs only public keys.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        document = _json_object(raw, "JWK Set")
    except MalformedToken as exc:
        raise ValueError(str(exc).removeprefix("malformed token: ")) from None
    keys = document.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError('a JWK Set needs a non-empty "keys" list')
    trusted = [_parse_jwk(index, jwk) for index, jwk in enumerate(keys)]
    try:
        return KeySet(trusted)
    except ValueError as exc:
        raise ValueError(f"JWK Set: {exc}") from None


def _parse_jwk(index: int, jwk: object) -> TrustedKey:
    where = f"key {index}"
    if not isinstance(jwk, dict):
        raise ValueError(f"{where}: not a JSON object")  # noqa: TRY004 - content, not type
    kid = jwk.get("kid")
    if kid is not None:
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"{where}: kid is not a non-empty string")
        where = f"key {index} (kid {kid!r})"
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        found = f"kty {jwk.get('kty')!r}, crv {jwk.get('crv')!r}"
        raise ValueError(f"{where}: not an Ed25519 key (kty OKP, crv Ed25519); found {found}")
    if "d" in jwk:
        raise ValueError(f"{where}: holds a private key (d); give the public key set only")
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"{where}: use is {jwk.get('use')!r}, not sig")
    if jwk.get("alg", JWT_ALGORITHM) != JWT_ALGORITHM:
        raise ValueError(f"{where}: alg is {jwk.get('alg')!r}, not {JWT_ALGORITHM}")
    x = jwk.get("x")
    if not isinstance(x, str) or not _SEGMENT.fullmatch(x):
        raise ValueError(f"{where}: x is not base64url")
    public = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
    if len(public) != 32 or _b64url(public) != x:
        raise ValueError(f"{where}: x is not 32 bytes in canonical base64url")
    return TrustedKey(Ed25519PublicKey.from_public_bytes(public), kid)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class ClaimsPolicy:
    """What a validator requires of the registered claims besides ``exp``.

    ``issuer``: ``iss`` must equal it (None: ``iss`` is not checked).
    ``audience``: ``aud`` must name it; None means :data:`DEFAULT_AUDIENCE`,
    and then a token without ``aud`` is accepted too. ``leeway``: seconds a
    token is accepted before its ``nbf``.
    """

    issuer: str | None = None
    audience: str | None = None
    leeway: float = DEFAULT_LEEWAY

    def __post_init__(self) -> None:
        if not math.isfinite(self.leeway) or self.leeway < 0:
            raise ValueError(f"leeway must be a number of seconds >= 0, not {self.leeway}")

    def check_form(self, claims: Mapping[str, object]) -> None:
        """The registered claims are of their types; MalformedToken otherwise."""
        ver = claims.get("ver")
        if ver is not None and (isinstance(ver, bool) or ver != 1):
            raise MalformedToken(f"malformed token: unsupported token version {ver!r}")
        nbf = claims.get("nbf")
        if nbf is not None and not _is_uint64(nbf):
            raise MalformedToken("malformed token: nbf claim is not an integer from 0 to 2^64-1")
        aud = claims.get("aud")
        if aud is not None and not (
            isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))
        ):
            raise MalformedToken("malformed token: aud claim is not a string or list of strings")
        iss = claims.get("iss")
        if self.issuer is not None and iss is not None and not isinstance(iss, str):
            raise MalformedToken("malformed token: iss claim is not a string")

    def check_scope(self, claims: Mapping[str, object]) -> None:
        """Audience and issuer (after :meth:`check_form`): WrongAudience, WrongIssuer."""
        aud = claims.get("aud")
        wanted = self.audience if self.audience is not None else DEFAULT_AUDIENCE
        if aud is None:
            if self.audience is not None:
                raise WrongAudience(f"token has no audience; {wanted!r} is required")
        elif wanted not in ([aud] if isinstance(aud, str) else aud):  # type: ignore[operator]
            raise WrongAudience(f"token is for audience {aud!r}, not {wanted!r}")
        if self.issuer is not None:
            iss = claims.get("iss")
            if iss is None:
                raise WrongIssuer(f"token has no issuer; {self.issuer!r} is required")
            if iss != self.issuer:
                raise WrongIssuer(f"token is from issuer {iss!r}, not {self.issuer!r}")

    def check_time(self, now: float, claims: Mapping[str, object]) -> None:
        """``nbf`` (after :meth:`check_form`): NotYetValid while now + leeway < nbf."""
        nbf = claims.get("nbf")
        if isinstance(nbf, int) and now + self.leeway < nbf:
            raise NotYetValid(f"token not valid before {format_expiry(nbf)}")


def _is_uint64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_UINT64


class JwtTokenValidator(Generic[TokenT]):
    """Validates EdDSA JWTs against a set of trusted Ed25519 public keys.

    Several keys support key rotation: a token's ``kid`` selects its key, and
    a token without one is accepted if its signature verifies with any key.
    Only ``alg: EdDSA`` is accepted, so ``none``, HMAC (including the classic
    trick of signing with the public key as the HMAC secret) and RSA tokens are
    refused as malformed before any key is tried. Audience, issuer and
    not-before follow ``policy`` (:class:`ClaimsPolicy`).

    The key set can be replaced at any time (:attr:`key_set`): tokens are
    validated against the set in place when they arrive; tunnels already set
    up are not touched.

    The claims of the last ``cache_size`` accepted tokens are kept (LRU, keyed
    by the exact token string; 0 keeps none) and handed out again, the same
    object, so a claims type must be immutable to be cached. A cached token is
    still checked for expiry and not-before against ``now`` every time; a
    refused token is never kept; a new key set or policy empties the cache, so
    a token signed by a key that was rotated out is refused at once.
    """

    @overload
    def __init__(
        self: JwtTokenValidator[SnapTokenClaims],
        public_keys: Sequence[Ed25519PublicKey] | KeySet,
        *,
        policy: ClaimsPolicy | None = None,
        cache_size: int = DEFAULT_CLAIMS_CACHE,
    ) -> None: ...

    @overload
    def __init__(
        self,
        public_keys: Sequence[Ed25519PublicKey] | KeySet,
        claims_type: ClaimsType[TokenT],
        *,
        policy: ClaimsPolicy | None = None,
        cache_size: int = DEFAULT_CLAIMS_CACHE,
    ) -> None: ...

    def __init__(
        self,
        public_keys: Sequence[Ed25519PublicKey] | KeySet,
        claims_type: ClaimsType[TokenT] | None = None,
        *,
        policy: ClaimsPolicy | None = None,
        cache_size: int = DEFAULT_CLAIMS_CACHE,
    ) -> None:
        if isinstance(public_keys, KeySet):
            self._key_set = public_keys
        else:
            keys = tuple(public_keys)
            if not keys:
                raise ValueError("JwtTokenValidator needs at least one public key")
            self._key_set = KeySet(keys)
        # Without a claims_type the overloads bind TokenT to SnapTokenClaims.
        self._claims_type: ClaimsType[TokenT] = (
            claims_type if claims_type is not None else SnapTokenClaims  # type: ignore[assignment]
        )
        self._required = list(self._claims_type.required_claims())
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be a non-negative integer, not {cache_size!r}")
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[TokenT, dict[str, object]]] = OrderedDict()
        self._policy = policy if policy is not None else ClaimsPolicy()

    @property
    def policy(self) -> ClaimsPolicy:
        """Audience, issuer and not-before rules; assigning new ones empties the cache."""
        return self._policy

    @policy.setter
    def policy(self, policy: ClaimsPolicy) -> None:
        self._policy = policy
        self._cache.clear()

    @property
    def public_keys(self) -> tuple[Ed25519PublicKey, ...]:
        """The trusted keys, in the order they are tried."""
        return tuple(item.key for item in self._key_set.keys)

    @property
    def key_set(self) -> KeySet:
        """The trusted keys; assign a new :class:`KeySet` to rotate them."""
        return self._key_set

    @key_set.setter
    def key_set(self, keys: KeySet) -> None:
        if not isinstance(keys, KeySet):
            raise TypeError(f"expected a KeySet, got {type(keys).__name__}")
        self._key_set = keys
        self._cache.clear()  # a token of a key rotated out must not live on here

    def validate(self, now: float, token: str) -> TokenT:
        """Verify the signature, decode the claims and check them against ``now``."""
        cache = self._cache
        cached = cache.get(token)
        if cached is None:
            payload = self._verified_payload(token)
            claims = self._claims_type.from_claims(payload)
            self._policy.check_scope(payload)
        else:
            claims, payload = cached
        if now > claims.exp_time():
            raise TokenExpired(f"token expired at {format_expiry(claims.exp_time())}")
        self._policy.check_time(now, payload)
        if cached is not None:
            cache.move_to_end(token)
        elif self._cache_size:
            cache[token] = (claims, payload)
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return claims

    def _verified_payload(self, token: str) -> dict[str, object]:
        header, payload, _ = _segments(token)
        kid = _json_object(header, "header").get("kid")
        if kid is not None and not isinstance(kid, str):
            raise MalformedToken("malformed token: kid header is not a string")
        key_set = self._key_set
        for key in key_set.candidates(kid):
            try:
                # PyJWT checks the header (alg, kid, crit) and the signature; it does not
                # parse the payload, which is ours to read strictly once it is authentic.
                jwt.api_jws.decode_complete(token, key, algorithms=[JWT_ALGORITHM])
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise MalformedToken(f"malformed token: {exc}") from None
            return self._checked_claims(_json_object(payload, "payload"))
        if kid is not None and not key_set.knows(kid):
            raise UnknownKeyId(f"unknown key id {json.dumps(kid)}")
        raise InvalidSignature("token signature does not verify with any trusted key")

    def _checked_claims(self, claims: dict[str, object]) -> dict[str, object]:
        for name in self._required:
            if claims.get(name) is None:
                raise MalformedToken(f"malformed token: it lacks the {name} claim")
        self.policy.check_form(claims)
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


def mint_token(
    private_key: Ed25519PrivateKey,
    claims: SnapTokenClaims,
    *,
    kid: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> str:
    """Sign ``claims`` (and ``extra`` claims, e.g. ``aud``, ``iss``, ``nbf``) as an EdDSA JWT.

    ``kid`` goes into the header, for a gateway that selects keys by it.
    """
    payload = {**(extra or {}), **claims.to_claims()}
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, private_key, algorithm=JWT_ALGORITHM, headers=headers)


def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key."""
    return Ed25519PrivateKey.generate()
