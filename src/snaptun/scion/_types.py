"""Shared type aliases of the SCION codec."""

from __future__ import annotations

from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Anything the decoders read from without copying."""
