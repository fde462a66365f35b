"""Socket binds of the gateway that fail with the setting and address named.

A bare ``[Errno 98] Address already in use`` does not say which of the
gateway's three sockets (QUIC, underlay, HTTP) could not be had; the operator
needs the setting to change.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from typing import TypeVar

from snaptun.errors import SnaptunError

__all__ = ["BindError", "bound"]

_T = TypeVar("_T")


class BindError(OSError, SnaptunError):
    """A socket of setting ``key`` could not be bound at ``address``.

    ``str()`` is ``--FLAG ADDRESS: problem``, e.g.
    ``--underlay-bind 127.0.0.1:30041: address already in use``.
    """

    def __init__(self, key: str, address: tuple[str, int], cause: OSError) -> None:
        self.key = key
        self.address = address
        self.flag = "--" + key.replace("_", "-")
        text = os.strerror(cause.errno) if cause.errno else (cause.strerror or str(cause))
        self.problem = text[:1].lower() + text[1:]
        host, port = address
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(cause.errno, f"{self.flag} {where}: {self.problem}")

    def __str__(self) -> str:
        return str(self.strerror)


async def bound(key: str, address: tuple[str, int], opening: Awaitable[_T]) -> _T:
    """Await ``opening`` (a bind at ``address``); an OSError becomes a :class:`BindError`."""
    try:
        return await opening
    except OSError as exc:
        raise BindError(key, address, exc) from exc
