"""Who is at the other end of a loopback TCP connection (Linux's /proc/net/tcp)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from relay.peers import find_socket_owner, peer_is_same_user


def test_socket_owner_is_found_in_a_proc_table() -> None:
    """The uid column of the matching local/remote pair is returned."""
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000\n"
        "   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1001\n"
    )
    assert find_socket_owner(table, "0100007F:D431", "0100007F:1F90") == 1001
    assert find_socket_owner(table, "0100007F:D432", "0100007F:1F90") is None


def test_a_loopback_peer_of_this_user_is_recognised() -> None:
    """A loopback connection made by this process belongs to this user."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux's /proc/net/tcp")
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        assert peer_is_same_user(client.getsockname(), server.getsockname()) is True
        assert peer_is_same_user(("127.0.0.1", 1), server.getsockname()) is False
