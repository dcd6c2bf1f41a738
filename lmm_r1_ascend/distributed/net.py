"""Network helpers for rendezvous: this node's address and a free port on it."""

from __future__ import annotations

import socket


def node_ip() -> str:
    """This host's address as other nodes reach it (the address of the default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only selects the outgoing interface
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def free_port() -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]
