"""
A LiteLLM proxy: ``GET {url}/key/info`` describes the virtual key the request carries.

The answer is ``{"key": ..., "info": {...}}``, ``info`` being the key's row:
its ``spend``, its ``max_budget`` (null: none), when the budget starts again
(``budget_reset_at``) and how often (``budget_duration``, e.g. ``"30d"``).
One meter comes of it, ``budget``, in US dollars.

Only those four fields are kept: ``key`` and the rest of the row (aliases,
metadata, models) are dropped unread.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from common.models import Meter, SourceKind

from .base import Reading
from .fields import invalid, percent_of, read_model

__all__ = ["LiteLLMAdapter"]

_Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
#: An ISO 8601 time is far shorter; the bound keeps a hostile string out of the store.
_Time = Annotated[StrictStr, Field(max_length=64)]
#: LiteLLM's durations are short (``"30d"``, ``"1mo"``); this one is relayed as it came.
_Duration = Annotated[StrictStr, Field(max_length=64)]

_KIND: Final = "litellm"
_EXPECTED: Final = {
    "info": "an object",
    "info.spend": "a number",
    "info.max_budget": "a number or null",
    "info.budget_reset_at": "an ISO 8601 time or null",
    "info.budget_duration": "a string of at most 64 characters or null",
}


class _KeyInfo(BaseModel):
    """The fields of ``info`` the meter needs; the others are dropped unread."""

    model_config = ConfigDict(extra="ignore")

    spend: _Number
    max_budget: _Number | None = None
    budget_reset_at: _Time | None = None
    budget_duration: _Duration | None = None


class _KeyInfoAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    info: _KeyInfo


class LiteLLMAdapter:
    """A LiteLLM virtual key's spend against its budget, as one meter in US dollars."""

    @property
    def kind(self) -> SourceKind:
        return _KIND

    @property
    def path(self) -> str:
        return "/key/info"

    def read(self, body: Any, *, received_at: datetime, secret: str) -> Reading:
        """The key's budget meter; the reset time is the proxy's own, read in UTC."""
        info = read_model(_KeyInfoAnswer, body, kind=_KIND, expected=_EXPECTED).info
        budget = info.max_budget
        meter = Meter(
            id="budget",
            label="Budget",
            unit="usd",
            used=info.spend,
            limit=budget,
            used_percent=percent_of(
                info.spend, budget, kind=_KIND, fields="info.spend and info.max_budget"
            ),
            reset_at=_reset_at(info.budget_reset_at),
            exceeded=budget is not None and info.spend >= budget,
        )
        return Reading(_KIND, {"info": info.model_dump()}, [meter])


def _reset_at(text: str | None) -> datetime | None:
    """``budget_reset_at`` as an aware time; one without a zone is UTC, as LiteLLM stores it.

    Never the machine's zone: ``astimezone`` on a naive time would assume it.
    """
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        expected = _EXPECTED["info.budget_reset_at"]
        raise invalid(_KIND, f"info.budget_reset_at must be {expected}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
