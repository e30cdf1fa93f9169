"""
The usage breakdown (``accounting-v1.md``, section 2): its query and its answer.

A query names a range and how to group the hourly metering ledger: by
``source``, ``meter``, ``hour``, ``day`` and ``month``, in that order of
nesting. Days and months are calendar days and months in the relay's
``timezone``, so a day that changes to or from summer time has 23 or 25
hours. ``parse_breakdown_query`` reads the parameters of
``GET /api/v1/usage/breakdown`` and of the ``get_breakdown`` op alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Final, Literal, get_args

from pydantic import AwareDatetime, BaseModel, TypeAdapter, ValidationError

__all__ = [
    "GROUPS",
    "MAX_RANGE",
    "Breakdown",
    "BreakdownError",
    "BreakdownPeriod",
    "BreakdownQuery",
    "BreakdownRow",
    "Consumed",
    "Group",
    "parse_breakdown_query",
    "parse_time",
]

Group = Literal["source", "meter", "hour", "day", "month"]
#: Every group, in the order they nest.
GROUPS: Final[tuple[Group, ...]] = get_args(Group)
#: The longest range one query may span.
MAX_RANGE: Final = timedelta(days=400)
#: The range when the query gives none: the last 24 hours.
DEFAULT_RANGE: Final = timedelta(hours=24)

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_AWARE = TypeAdapter(AwareDatetime)


class BreakdownError(ValueError):
    """A parameter of a breakdown query is wrong; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class BreakdownQuery(BaseModel):
    """A validated query: ``since`` < ``until`` (UTC), at most ``MAX_RANGE`` apart."""

    since: datetime
    until: datetime
    group_by: tuple[Group, ...]
    timezone: str


def parse_time(text: str, zone: tzinfo) -> datetime:
    """ISO 8601 with a zone, or ``YYYY-MM-DD``: that day's start in ``zone``; in UTC.

    Raises ``ValueError`` when it is neither.
    """
    if _DAY.fullmatch(text):
        day = date.fromisoformat(text)
        return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)
    try:
        return _AWARE.validate_python(text).astimezone(UTC)
    except (ValidationError, OverflowError):
        raise ValueError(f"{text!r} is neither ISO 8601 with a zone nor YYYY-MM-DD") from None


def parse_breakdown_query(
    params: Mapping[str, Any], zone: tzinfo, timezone: str, now: datetime
) -> BreakdownQuery:
    """The query among ``params`` (a URL's query string or a request's fields).

    ``since`` and ``until`` default to the 24 hours before ``now``;
    ``group_by`` (a comma-separated string or a list) to no grouping.
    Raises ``BreakdownError`` naming the parameter that is wrong.
    """
    bounds: dict[str, datetime] = {}
    for name in ("since", "until"):
        value = params.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BreakdownError(name, f"{name} must be a string")
        try:
            bounds[name] = parse_time(value, zone)
        except ValueError:
            raise BreakdownError(
                name, f"{name} must be ISO 8601 with a time zone, or YYYY-MM-DD"
            ) from None
    until = bounds.get("until") or now
    since = bounds.get("since") or until - DEFAULT_RANGE
    if since >= until:
        raise BreakdownError("since", "since must be before until")
    if until - since > MAX_RANGE:
        raise BreakdownError("since", f"the range spans more than {MAX_RANGE.days} days")
    return BreakdownQuery(
        since=since, until=until, group_by=_groups(params.get("group_by")), timezone=timezone
    )


def _groups(value: Any) -> tuple[Group, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        names = [name.strip() for name in value.split(",")]
    elif isinstance(value, list) and all(isinstance(name, str) for name in value):
        names = value
    else:
        raise BreakdownError("group_by", "group_by must be a comma-separated string or a list")
    unknown = [name for name in names if name not in GROUPS]
    if unknown:
        shown = ", ".join(repr(name[:20]) for name in unknown[:3])
        raise BreakdownError(
            "group_by", f"unknown group_by {shown}: use any of {', '.join(GROUPS)}"
        )
    return tuple(group for group in GROUPS if group in names)


class Consumed(BaseModel):
    """What was used: dollars of ``usd`` meters, percent points of meters with a limit.

    Each is null when no meter of its kind is in the group.
    """

    usd: float | None = None
    percent: float | None = None


class BreakdownRow(BaseModel):
    """One group: the keys it is grouped by (the others are absent), and its sums."""

    source: str | None = None
    meter: str | None = None
    hour: str | None = None
    day: str | None = None
    month: str | None = None
    consumed: Consumed
    polls: int
    failed_polls: int


class BreakdownPeriod(BaseModel):
    start: datetime
    end: datetime


class Breakdown(BaseModel):
    """The answer of ``GET /api/v1/usage/breakdown`` and of ``get_breakdown``."""

    period: BreakdownPeriod
    timezone: str
    group_by: list[Group]
    breakdown: list[BreakdownRow]
    totals: BreakdownRow

    def to_json(self) -> str:
        """The answer as sent: each row with only its groups' keys, ``consumed`` whole."""
        rows = ",".join(_row_json(row) for row in self.breakdown)
        head = self.model_dump_json(include={"period", "timezone", "group_by"})[:-1]
        return f'{head},"breakdown":[{rows}],"totals":{_row_json(self.totals)}}}'


def _row_json(row: BreakdownRow) -> str:
    keys = row.model_dump_json(exclude_none=True, exclude={"consumed"})
    return f'{keys[:-1]},"consumed":{row.consumed.model_dump_json()}}}'
