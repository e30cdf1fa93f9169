"""
PostHog's LLM gateway: ``GET {base}/v1/usage/{product}`` (``gateway-usage.md``).

Its answer is kept whole as a ``Usage``, fields the model does not define
included, so a newer gateway's additions reach the clients; those fields are
bounded here (``MAX_UNKNOWN_BYTES``, ``MAX_UNKNOWN_DEPTH``) because nothing
else holds them to a type. The meters are the two windows, in percent only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

from pydantic import ValidationError

from common.models import BUCKETS, SourceKind, Usage, UsageWindow

from ..exceptions import UpstreamInvalidResponse
from .base import Reading
from .fields import printable, size, summarise

__all__ = [
    "DEFAULT_PRODUCT",
    "MAX_TEXT_CHARS",
    "MAX_UNKNOWN_BYTES",
    "MAX_UNKNOWN_DEPTH",
    "PostHogAdapter",
]

DEFAULT_PRODUCT: Final = "posthog_code"

#: Fields the models do not define are kept, stored and relayed, up to this
#: much encoded JSON in all ...
MAX_UNKNOWN_BYTES: Final = 16 * 1024
#: ... and nesting lists and objects at most this deep, each.
MAX_UNKNOWN_DEPTH: Final = 10
#: The longest ``product`` or ``user_id`` string kept.
MAX_TEXT_CHARS: Final = 256

_USAGE_FIELDS: Final = frozenset(Usage.model_fields)
# resets_in_seconds is read into reset_at and dropped, never passed on.
_WINDOW_FIELDS: Final = frozenset({*UsageWindow.model_fields, "resets_in_seconds"})
_TEXT_FIELDS: Final = ("product", "user_id")


class PostHogAdapter:
    """One product's usage on PostHog's gateway, as two percent meters."""

    def __init__(self, product: str = DEFAULT_PRODUCT) -> None:
        self.product = product

    @property
    def kind(self) -> SourceKind:
        return "posthog"

    @property
    def path(self) -> str:
        # The product comes from the config: quoted, it cannot step out of the path.
        return f"/v1/usage/{quote(self.product, safe='')}"

    def read(self, body: Any, *, received_at: datetime, secret: str) -> Reading:
        """The usage object, with ``reset_at`` filled from ``received_at`` where only
        ``resets_in_seconds`` came."""
        _check_pass_through(body, secret)
        try:
            usage = Usage.model_validate(body, context={"received_at": received_at})
        except ValidationError as exc:
            raise UpstreamInvalidResponse(
                f"gateway sent an invalid usage object: {summarise(exc)}"
            ) from None
        return Reading("posthog", usage, usage.meters())


def _check_pass_through(body: Any, secret: str) -> None:
    """Bound what the models keep from outside without a type to hold it to.

    ``product`` and ``user_id`` are short. Fields the models do not define
    (at the top level and in each window) are kept and passed on: their
    encoded size counts together against ``MAX_UNKNOWN_BYTES``, and each one
    nests at most ``MAX_UNKNOWN_DEPTH`` deep. The error names the bound and
    the field, never the value (nor a name that carries ``secret``, the token).
    """
    if not isinstance(body, dict):
        return  # validation refuses it
    for field in _TEXT_FIELDS:
        text = body.get(field)
        if isinstance(text, str) and len(text) > MAX_TEXT_CHARS:
            raise UpstreamInvalidResponse(
                f"gateway sent a {field} longer than {MAX_TEXT_CHARS} characters"
            )
    unknown = [("", key, value) for key, value in body.items() if key not in _USAGE_FIELDS]
    for bucket in BUCKETS:
        window = body.get(bucket)
        if isinstance(window, dict):
            unknown += [
                (f"{bucket}.", key, value)
                for key, value in window.items()
                if key not in _WINDOW_FIELDS
            ]
    total = 0
    for prefix, key, value in unknown:
        if _depth(value, MAX_UNKNOWN_DEPTH) > MAX_UNKNOWN_DEPTH:
            raise UpstreamInvalidResponse(
                f"gateway sent an unknown field nested deeper than {MAX_UNKNOWN_DEPTH} levels: "
                f"{prefix}{printable(key, secret)}"
            )
        total += len(json.dumps(key)) + 1 + len(json.dumps(value))  # "key":value
        if total > MAX_UNKNOWN_BYTES:
            raise UpstreamInvalidResponse(
                f"gateway sent more than {size(MAX_UNKNOWN_BYTES)} of unknown fields, "
                f"the last one {prefix}{printable(key, secret)}"
            )


def _depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests lists and objects (0 for a scalar); stops past ``limit``."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children)
    return deepest
