"""Host names and addresses: which ones stay on this machine."""

from __future__ import annotations

import pytest

from common.hosts import host_name, is_loopback_host


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8765", "127.0.0.1"),
        ("LocalHost:8765", "localhost"),
        ("localhost.:8765", "localhost"),
        ("[::1]:8765", "::1"),
        ("[::1]", "::1"),
        ("rebind.example.com:8765", "rebind.example.com"),
        ("[::1]evil", None),
        ("[::1", None),
        ("", None),
    ],
)
def test_host_name_strips_port_and_brackets(header: str, name: str | None) -> None:
    """A Host header's name is lowercased, without port, brackets or trailing dot."""
    assert host_name(header) == name


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "localhost.", "127.0.0.1", "127.8.9.10", "::1", "[::1]"]
)
def test_loopback_names_and_addresses_are_loopback(host: str) -> None:
    """Every loopback IP, bracketed or not, and "localhost" in any case stay on this machine."""
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "", "192.168.1.5", "relay.lan", "localhost.example", "127.0.0.1.nip.io"],
)
def test_other_hosts_are_not_loopback(host: str) -> None:
    """Wildcards, LAN addresses and names that merely contain "localhost" are not loopback."""
    assert not is_loopback_host(host)
