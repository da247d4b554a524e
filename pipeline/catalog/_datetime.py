"""Datetime ranges of a search: "start/end", one date, month or year; inclusive UTC bounds."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from ._errors import InvalidSearch

_DATE_PART = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def _parse_instant(text: str, *, end: bool) -> datetime:
    """A year, month, day or RFC 3339 datetime; date-only ends round to the end of the period."""
    match = _DATE_PART.match(text)
    if match:
        year, month, day = int(match[1]), int(match[2] or 1), int(match[3] or 1)
        start = datetime(year, month, day, tzinfo=timezone.utc)
        if not end:
            return start
        if match[3]:
            nxt = start + timedelta(days=1)
        elif match[2]:
            nxt = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=timezone.utc)
        else:
            nxt = datetime(year + 1, 1, 1, tzinfo=timezone.utc)
        return nxt - timedelta(microseconds=1)
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def parse_datetime_range(text: str) -> tuple[datetime | None, datetime | None]:
    """Parse "start/end" (or one date/month/year) into inclusive UTC bounds; None = open."""
    parts = [p.strip() for p in str(text).split("/")]
    if len(parts) > 2:
        raise InvalidSearch(f"datetime {text!r} has more than one '/': use 'start/end'")
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    bounds: list[datetime | None] = []
    for i, part in enumerate(parts):
        if part in ("", ".."):
            bounds.append(None)
            continue
        try:
            bounds.append(_parse_instant(part, end=i == 1))
        except ValueError as exc:
            raise InvalidSearch(
                f"cannot read {part!r} in datetime {text!r}: use dates like 2024-04-01 or "
                "2024-04-01T10:00:00Z, and '..' for an open end"
            ) from exc
    start, end = bounds
    if start is None and end is None:
        raise InvalidSearch(
            f"datetime {text!r} is open at both ends: give at least a start or an end"
        )
    if start is not None and end is not None and start > end:
        raise InvalidSearch(
            f"datetime {text!r} ends before it starts ({start:%Y-%m-%d %H:%M:%S} > "
            f"{end:%Y-%m-%d %H:%M:%S}): swap the dates (order: start/end)"
        )
    return start, end
