"""Socket addresses as text: ``IP:PORT`` and ``[IPv6]:PORT`` (shared by the CLI and the gateway).

A leaf module (standard library only), so that configuration and command line
parse and print addresses the same way without importing each other.
"""

from __future__ import annotations

import ipaddress

__all__ = ["format_socket_address", "parse_socket_address"]


def parse_socket_address(text: str) -> tuple[str, int]:
    """``IP:PORT``, ``[IPv6]:PORT`` or ``HOST:PORT`` as (host, port); ValueError otherwise."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"invalid address {text!r}: expected [IPv6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid address {text!r}: {host!r} is not an IPv6 address") from None
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"invalid address {text!r}: expected IP:PORT")
        if ":" in host:
            raise ValueError(f"invalid address {text!r}: write IPv6 addresses as [IP]:PORT")
    if not port_text.isdecimal() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port in {text!r}")
    return host, int(port_text)


def format_socket_address(host: str, port: int) -> str:
    """``IP:PORT``, with brackets around IPv6 (as snaptun-ref prints it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
