"""Who may talk to the relay: the Host, Origin and credential checks, without I/O."""

from __future__ import annotations

import pytest

from common.hosts import LOOPBACK_NAMES
from relay.policy import (
    SecurityPolicy,
    bearer_token,
    host_allowed,
    normalize_origin,
    origin_allowed,
    own_origins,
)
from relay.settings import Settings

# -- Host names and origins ------------------------------------------------------------


@pytest.mark.parametrize("header", ["127.0.0.1:8765", "localhost:1", "[::1]:8765", "localhost"])
def test_loopback_hosts_are_allowed(header: str) -> None:
    """Loopback names pass the Host check on any port."""
    assert host_allowed(header, LOOPBACK_NAMES)


@pytest.mark.parametrize("header", ["attacker.example:8765", "127.0.0.1.nip.io", "", None])
def test_other_hosts_are_refused(header: str | None) -> None:
    """A rebinding name, an empty Host and a missing one fail the Host check."""
    assert not host_allowed(header, LOOPBACK_NAMES)


@pytest.mark.parametrize(
    ("origin", "normalized"),
    [
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("HTTP://LOCALHOST:8765/", "http://localhost:8765"),
        ("http://localhost:80", "http://localhost"),
        ("https://example.com:443", "https://example.com"),
        ("http://[::1]:8765", "http://[::1]:8765"),
        ("null", None),
        ("file://", None),
        ("http://localhost:8765/path", None),
        ("http://user@localhost:8765", None),
        ("http://localhost:99999", None),
    ],
)
def test_origins_are_normalized(origin: str, normalized: str | None) -> None:
    """Origins compare as lowercase scheme://host[:port] without a default port."""
    assert normalize_origin(origin) == normalized


def test_own_origins_cover_every_loopback_name() -> None:
    """The relay's own origins are its loopback names on its port."""
    assert own_origins(LOOPBACK_NAMES, 8765) == {
        "http://127.0.0.1:8765",
        "http://localhost:8765",
        "http://[::1]:8765",
    }


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("http://localhost:8765", True),
        ("http://localhost:8766", False),
        ("http://attacker.example", False),
        ("null", False),
    ],
)
def test_origin_check(origin: str | None, allowed: bool) -> None:
    """No Origin passes (not a browser); only the allow-listed origins do otherwise."""
    assert origin_allowed(origin, own_origins(LOOPBACK_NAMES, 8765)) is allowed


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None)],
)
def test_bearer_token_is_read_from_the_header(header: str, token: str | None) -> None:
    """Only the Bearer scheme carries the client token."""
    assert bearer_token(header) == token


# -- SecurityPolicy --------------------------------------------------------------------


def test_policy_allows_the_configured_host_and_extras() -> None:
    """A configured host and allowed_hosts join the loopback names; a wildcard does not."""
    settings = Settings(
        host="0.0.0.0",
        allow_remote=True,
        allowed_hosts=("Relay.LAN",),
        allowed_origins=("https://ui.lan/",),
    )
    policy = SecurityPolicy.from_settings(settings, "token")
    assert policy.allowed_hosts == LOOPBACK_NAMES | {"relay.lan"}
    assert policy.origins(8765) >= {"http://relay.lan:8765", "https://ui.lan"}
