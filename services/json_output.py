"""The one JSON format of every `--json`: a script parses one shape of timestamp.

Datetimes are ISO 8601 in UTC with their offset: `2024-05-01T09:00:00+00:00` (with
microseconds when there are any). They come from three places that disagree: SQLite
hands back naive datetimes for what was stored as UTC, PostgreSQL aware ones in the
session's time zone (which the server or PGTZ may set to anything), and pydantic's JSON
mode writes UTC as `Z`. Everything printed as JSON goes through `dumps` (or, for data
also shown as text, `jsonable` first) so that all of them come out the same.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from pydantic import BaseModel

from models.db import as_utc


def iso(moment: datetime | None) -> str | None:
    """A stored or computed moment as ISO 8601 in UTC, `+00:00`; None stays None."""
    return None if moment is None else as_utc(moment).astimezone(UTC).isoformat()


def jsonable(value: Any) -> Any:
    """`value` with every datetime (at any depth, in models and dataclasses too) as `iso`,
    and the other non-JSON types as their plain JSON equivalent."""
    if isinstance(value, datetime):  # before date: a datetime is a date
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return jsonable(value.model_dump())  # python mode: datetimes stay datetimes here
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return [jsonable(v) for v in sorted(value, key=str)]  # stable output
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _key(key: Any) -> Any:
    if isinstance(key, str | int | float | bool) or key is None:
        return key
    return str(jsonable(key))


def dumps(value: Any, indent: int | None = 2) -> str:
    """JSON text of `value` (indent=None: one line, for JSON lines)."""
    return json.dumps(jsonable(value), indent=indent, default=str)
