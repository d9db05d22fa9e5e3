"""When is the person back? The return date an out-of-office reply names, if it names one.

"I'm out of the office until 14 December", "back on Monday, January 5th", "ab dem
14.12. wieder erreichbar": a phrase that announces a return (in the shipped languages,
English and German), then a date after it, read by `dateparser` (dates in either
language, with or without the year, in the future of the reply). "until" and "bis" name
the last day away, so the person is back the day after. Anything unsure gives None:
the reply is then an out-of-office without a date, and nothing is deferred.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

MAX_AWAY = timedelta(days=60)  # a return further off is more likely a misread than leave
# A return cue, then up to 60 characters where the date should be. Group `last` marks
# cues naming the last day away ("until", "bis") rather than the day back.
_CUES = re.compile(
    r"(?:(?P<last>\buntil\b|\btill\b|\bthrough\b|\bbis\s+(?:zum|einschlie(?:ß|ss)lich)?)"
    r"|\b(?:back|return(?:ing|s)?|in\s+the\s+office|available)\s+(?:again\s+)?(?:on|from|by)?"
    r"|\bzur(?:ü|ue)ck\s+(?:am|ab)?|\bab\s+(?:dem|den)?|\bwieder\s+(?:am|ab)?)"
    r"(?P<rest>.{1,60})",
    re.IGNORECASE | re.DOTALL,
)
_NUMERIC_DE = re.compile(r"\b(\d{1,2})\.(\d{1,2})\.(\d{2,4})?")  # 14.12. or 14.12.2026
_SETTINGS = {"PREFER_DATES_FROM": "future", "REQUIRE_PARTS": ["day", "month"]}


def return_date(text: str, received_at: datetime) -> datetime | None:
    """The day the sender is back (midnight UTC), from the subject and body of their
    automatic reply received at `received_at`; None if it names none we can trust."""
    for cue in _CUES.finditer(text[:5000]):
        found = _date_in(cue.group("rest"), received_at)
        if found is None:
            continue
        back = found + timedelta(days=1) if cue.group("last") else found
        if received_at < back <= received_at + MAX_AWAY:
            return back
    return None


def _date_in(snippet: str, received_at: datetime) -> datetime | None:
    from dateparser.search import search_dates  # imported when needed: 0.4 s

    base = received_at.astimezone(UTC).replace(tzinfo=None)
    numeric = _NUMERIC_DE.search(snippet)
    if numeric and numeric.start() < 20:
        day, month, year = numeric.groups()
        year = int(year) + (2000 if len(year) == 2 else 0) if year else base.year
        try:
            found = datetime(year, int(month), int(day))
        except ValueError:
            return None
        if not numeric.group(3) and found < base:
            found = found.replace(year=base.year + 1)
        return found.replace(tzinfo=UTC)
    found = search_dates(snippet, languages=["en", "de"],
                         settings={**_SETTINGS, "RELATIVE_BASE": base})  # fmt: skip
    if not found:
        return None
    _text, moment = found[0]
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
