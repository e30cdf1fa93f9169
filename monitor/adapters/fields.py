"""
What the adapters share: reading a dialect's answer strictly, and spend as meters.

Every message built here names a field, the dialect and what the field must
be, never a value: values come from outside and may carry anything, the
token included.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from common.models import SourceKind

from ..exceptions import UpstreamInvalidResponse

__all__ = ["invalid", "percent_of", "printable", "read_model", "size", "summarise", "usd"]

_Model = TypeVar("_Model", bound=BaseModel)


def read_model(
    model: type[_Model], body: Any, *, kind: SourceKind, expected: Mapping[str, str]
) -> _Model:
    """``body`` validated as ``model``; else an ``UpstreamInvalidResponse`` naming the bad field.

    ``expected`` says, per dotted field path, what the field must be (``"a
    number or null"``); a path missing from it reads "an object".
    """
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False, include_context=False)[0]
    path = ".".join(str(part) for part in error["loc"])
    if not path:
        raise invalid(kind, "the body must be a JSON object")
    if error["type"] == "missing":
        raise invalid(kind, f"{path} is missing")
    raise invalid(kind, f"{path} must be {expected.get(path, 'an object')}")


def invalid(kind: SourceKind, what: str) -> UpstreamInvalidResponse:
    """The error for an answer that does not fit ``kind``'s dialect; ``what`` names no value."""
    return UpstreamInvalidResponse(f"{kind} answer: {what}")


def usd(value: float, *, kind: SourceKind, fields: str) -> float:
    """An amount computed from the answer's numbers, kept finite and free of float noise."""
    if not math.isfinite(value):
        raise invalid(kind, f"{fields} give an amount beyond a double")
    # 12 decimals keep every digit a gateway sends (OpenRouter sends 10) and drop
    # the noise of a subtraction (50 - 49.9 = 0.10000000000000142).
    return round(value, 12)


def percent_of(used: float, limit: float | None, *, kind: SourceKind, fields: str) -> float | None:
    """``used`` as a percentage of ``limit``, rounded to 0.1: None without a limit.

    A limit of 0 (or below) is full at once, as the PostHog gateway reports it:
    100. A used amount below zero counts as nothing spent.
    """
    if limit is None:
        return None
    if limit <= 0:
        return 100.0
    percent = used / limit * 100
    if not math.isfinite(percent):
        raise invalid(kind, f"{fields} give a percentage beyond a double")
    return max(0.0, round(percent, 1))


def size(count: int) -> str:
    """``count`` bytes for a message: "16 KiB", "1 MiB" or "1000 bytes"."""
    for unit, bytes_per_unit in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if count % bytes_per_unit == 0:
            return f"{count // bytes_per_unit} {unit}"
    return f"{count} bytes"


def summarise(exc: ValidationError) -> str:
    """Name the failing fields without echoing the values, which come from outside."""
    errors = exc.errors(include_input=False, include_url=False)
    fields = sorted({".".join(str(part) for part in error["loc"]) or "body" for error in errors})
    return f"{len(errors)} error(s) in {', '.join(fields[:5])}"


_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")


def printable(name: str, secret: str) -> str:
    """A field name fit for a message: the gateway chose it, so it may be anything."""
    if not _SAFE_NAME.fullmatch(name) or (secret and secret in name):
        return "(a field with an unprintable name)"
    return name
