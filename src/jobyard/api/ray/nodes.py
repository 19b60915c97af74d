"""Node names as the IP addresses Ray's JobDetails give (`driver_info.node_ip_address`)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable

LOOPBACK = "127.0.0.1"


def resolve(node: str) -> str:
    """The node's IPv4 address (an address stays as it is). A name that does not resolve is
    taken to be this machine: the local executor's node name is only a label."""
    try:
        return str(ipaddress.ip_address(node))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(node, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return LOOPBACK
    return str(found[0][4][0]) if found else LOOPBACK


class NodeAddresses:
    """Resolved once per node name, off the event loop (a lookup may wait on DNS)."""

    def __init__(self, resolver: Callable[[str], str] = resolve) -> None:
        self._resolve = resolver
        self._known: dict[str, str] = {}

    async def of(self, nodes: Iterable[str | None]) -> dict[str, str]:
        for node in {n for n in nodes if n} - self._known.keys():
            self._known[node] = await asyncio.to_thread(self._resolve, node)
        return self._known
