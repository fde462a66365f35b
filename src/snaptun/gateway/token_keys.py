"""The token keys a gateway trusts, from PEM files and JWK Set files, reloaded in place.

PEM keys (``--token-key``) have no kid; JWK Set files (``--token-jwks``) give
keys with kids. :meth:`TokenKeys.reload` re-reads every file and swaps the
validator's key set at once, so tokens are checked against the new set from
the next request on and no tunnel is touched. A file that cannot be read or
parsed leaves the old set in place and is logged once per change of the
file (not at every poll). The gateway reloads on SIGHUP and when a file's
mtime, size or inode changes (:meth:`TokenKeys.changed`, polled every
:data:`POLL_INTERVAL` seconds).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from snaptun.core.tokens import ClaimsPolicy, JwtTokenValidator, KeySet, TrustedKey, parse_jwks
from snaptun.keyfiles import load_public_key

__all__ = ["POLL_INTERVAL", "TokenKeys", "load_key_set"]

log = logging.getLogger(__name__)

POLL_INTERVAL: Final = 5.0
"""Seconds between checks of the JWK Set files for a change."""

_Stamp = tuple[int, int, int] | None


def load_key_set(pem_files: Sequence[Path], jwks_files: Sequence[Path]) -> KeySet:
    """Every key of the PEM files (no kid) and of the JWK Set files (their kids).

    ValueError naming the file on anything unreadable or invalid, or a kid
    that two files share.
    """
    keys: list[TrustedKey] = []
    for path in pem_files:
        try:
            keys.append(TrustedKey(load_public_key(path)))
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"token key {path}: {_why(exc)}") from None
    for path in jwks_files:
        try:
            keys.extend(parse_jwks(path.read_bytes()).keys)
        except (OSError, ValueError) as exc:
            raise ValueError(f"token JWK Set {path}: {_why(exc)}") from None
    try:
        return KeySet(keys)
    except ValueError as exc:
        raise ValueError(f"token keys: {exc}") from None


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _stamp(path: Path) -> _Stamp:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


class TokenKeys:
    """The files behind a validator's key set; reloads them into it."""

    def __init__(
        self,
        validator: JwtTokenValidator[Any],
        pem_files: Sequence[Path],
        jwks_files: Sequence[Path],
    ) -> None:
        self.validator = validator
        self.pem_files = tuple(pem_files)
        self.jwks_files = tuple(jwks_files)
        self._stamps = self._current()
        self.reloads = 0
        """Reloads that changed the key set."""
        self.failures = 0
        """Reloads refused because a file was unreadable or invalid (old set kept)."""

    @classmethod
    def open(
        cls,
        pem_files: Sequence[Path],
        jwks_files: Sequence[Path],
        policy: ClaimsPolicy | None = None,
    ) -> TokenKeys:
        """Load the files (ValueError naming the bad one) into a new SNAP token validator."""
        keys = load_key_set(pem_files, jwks_files)
        return cls(JwtTokenValidator(keys, policy=policy), pem_files, jwks_files)

    def _current(self) -> tuple[_Stamp, ...]:
        return tuple(_stamp(path) for path in (*self.pem_files, *self.jwks_files))

    def changed(self) -> bool:
        """Whether a file changed since the last reload (or attempt)."""
        return self._current() != self._stamps

    def reload(self, why: str) -> bool:
        """Re-read every file; on success swap the key set in, else keep the old one.

        Returns whether the new set is in use. Logs the outcome once.
        """
        self._stamps = self._current()
        try:
            keys = load_key_set(self.pem_files, self.jwks_files)
        except ValueError as exc:
            self.failures += 1
            # One line, no traceback: the message names the file and what is wrong.
            log.error("token keys not reloaded (%s): %s; keeping the previous keys", why, exc)  # noqa: TRY400
            return False
        self.validator.key_set = keys
        self.reloads += 1
        kids = ", ".join(keys.kids) or "none"
        log.info("token keys reloaded (%s): %d keys, kids: %s", why, len(keys), kids)
        return True

    def poll(self) -> bool:
        """Reload if a file changed; whether a reload was tried."""
        if not self.changed():
            return False
        self.reload("file changed")
        return True
