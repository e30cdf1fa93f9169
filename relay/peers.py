"""
Who is at the other end of a loopback TCP connection (Linux).

The dashboard's cookie is set only for a page fetched by a process of the
relay's own user. TCP has no peer credentials, so the owner of the client's
socket is looked up in ``/proc/net/tcp``: a table of every socket on the
machine, which the kernel writes out on each read. The lookup searches the
text for the one line it needs instead of parsing them all, and the caller
runs it in a worker thread, so a machine with ten thousand sockets never
stalls the event loop.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

__all__ = ["find_socket_owner", "is_loopback_address", "peer_is_same_user", "proc_address"]


def proc_address(host: str, port: int) -> tuple[int, str] | None:
    """(IP version, the address as /proc/net/tcp* prints it) or None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    packed = ip.packed
    # The kernel prints each 32-bit word of the address in host byte order.
    words = [packed[i : i + 4] for i in range(0, len(packed), 4)]
    if sys.byteorder == "little":
        words = [word[::-1] for word in words]
    return ip.version, f"{b''.join(words).hex().upper()}:{port:04X}"


def find_socket_owner(table: str, local: str, remote: str) -> int | None:
    """The uid of the socket whose local and remote addresses match, in /proc/net/tcp format."""
    # Each row reads "  sl: local remote st ..."; the pair is unique to one socket.
    start = table.find(f": {local} {remote} ")
    if start < 0:
        return None
    end = table.find("\n", start)
    columns = table[start : end if end >= 0 else len(table)].split()
    try:
        return int(columns[7])
    except (IndexError, ValueError):
        return None


def peer_is_same_user(client: tuple[str, int], server: tuple[str, int]) -> bool | None:
    """Whether the client's socket belongs to this process's user; None if the OS cannot say.

    Blocks on /proc: call it from a worker thread. The client's own socket has
    the client's address as its local one and the server's as its remote one.
    """
    local = proc_address(*client)
    remote = proc_address(*server)
    if local is None or remote is None or local[0] != remote[0]:
        return False
    table_path = Path("/proc/net/tcp" if local[0] == 4 else "/proc/net/tcp6")
    try:
        table = table_path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return find_socket_owner(table, local[1], remote[1]) == os.geteuid()


def is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
