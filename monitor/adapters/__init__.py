"""
The gateway dialects the monitor speaks, one adapter each (``accounting-v1.md``, section 1).

An adapter knows where a source's usage is (``path``) and how to read the
answer into a ``Reading``: the source's own validated answer plus its
meters. ``monitor.gateway.GatewayClient`` does the HTTP for all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from common.models import SourceKind

from .base import Adapter, Reading
from .litellm import LiteLLMAdapter
from .openrouter import OpenRouterAdapter
from .posthog import DEFAULT_PRODUCT, PostHogAdapter

__all__ = [
    "METER_IDS",
    "Adapter",
    "LiteLLMAdapter",
    "OpenRouterAdapter",
    "PostHogAdapter",
    "Reading",
    "make_adapter",
]


#: The meter ids each kind of source reports (``accounting-v1.md``, section 1).
METER_IDS: Final[Mapping[SourceKind, tuple[str, ...]]] = MappingProxyType(
    {
        "posthog": ("burst", "sustained"),
        "openrouter": ("limit", "today", "month"),
        "litellm": ("budget",),
    }
)


def make_adapter(kind: SourceKind, *, product: str = DEFAULT_PRODUCT) -> Adapter:
    """The adapter of a source of ``kind``; ``product`` applies to ``posthog`` only."""
    match kind:
        case "posthog":
            return PostHogAdapter(product)
        case "openrouter":
            return OpenRouterAdapter()
        case "litellm":
            return LiteLLMAdapter()
    raise ValueError(f"unknown source kind: {kind!r}")
