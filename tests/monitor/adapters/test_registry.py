"""Choosing an adapter by a source's kind, and the default URL of each kind."""

from __future__ import annotations

import pytest

from common.models import KINDS, SourceKind
from monitor.adapters import LiteLLMAdapter, OpenRouterAdapter, PostHogAdapter, make_adapter
from monitor.gateway import DEFAULT_URLS


@pytest.mark.parametrize(
    ("kind", "adapter", "path"),
    [
        ("posthog", PostHogAdapter, "/v1/usage/posthog_code"),
        ("openrouter", OpenRouterAdapter, "/api/v1/key"),
        ("litellm", LiteLLMAdapter, "/key/info"),
    ],
)
def test_each_kind_has_its_adapter(kind: SourceKind, adapter: type, path: str) -> None:
    """``make_adapter`` gives the adapter of the kind, which asks the kind's path."""
    made = make_adapter(kind)
    assert (type(made), made.kind, made.path) == (adapter, kind, path)


def test_every_kind_has_an_adapter() -> None:
    """No kind a source may name is left without an adapter."""
    assert [make_adapter(kind).kind for kind in KINDS] == list(KINDS)


def test_the_product_goes_to_the_posthog_adapter() -> None:
    """``product`` picks the PostHog product asked for."""
    assert make_adapter("posthog", product="signals").path == "/v1/usage/signals"


def test_an_unknown_kind_is_refused() -> None:
    """A kind no adapter speaks is a ValueError, not a PostHog source by default."""
    with pytest.raises(ValueError, match="unknown source kind"):
        make_adapter("bedrock")  # type: ignore[arg-type]


def test_openrouter_has_a_default_url_and_litellm_has_none() -> None:
    """OpenRouter lives at one address; every LiteLLM proxy is someone's own."""
    assert DEFAULT_URLS == {"openrouter": "https://openrouter.ai"}
