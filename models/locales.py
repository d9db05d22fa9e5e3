"""A lead's language: BCP 47 tags read with Babel, the variants' fallback chain, and the
Jinja filters that write dates, times and numbers the way the lead's locale does.

A tag is kept normalised (`de-AT`, `zh-Hant-TW`): what `Locale.parse` reads, written with
hyphens. A variant of a template file carries the tag before the extension
(`email/welcome/body.de-AT.html`, `sms/nudge.de.txt`), and a lead in `de-AT` is sent the
first of `de-AT`, `de`, the file without a tag.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from jinja2 import Undefined, pass_context
from jinja2.runtime import Context

DEFAULT_LOCALE = "en"
MAX_TAG_LENGTH = 35  # RFC 5646's advice for storing a tag


def normalise_locale(tag: str) -> str:
    """`tag` as a normalised BCP 47 tag (`de-at`, `de_AT` -> `de-AT`); a ValueError that
    says what to write when Babel knows no such locale."""
    cleaned = tag.strip().replace("_", "-")
    try:
        return _tag(Locale.parse(cleaned, sep="-"))
    except (UnknownLocaleError, ValueError):
        raise ValueError(
            f"unknown locale {tag!r} (use a BCP 47 language tag such as de or de-AT)"
        ) from None


def _tag(locale: Locale) -> str:
    return "-".join(p for p in (locale.language, locale.script, locale.territory) if p)


def fallback_chain(locale: str | None) -> list[str]:
    """The tags to look for, most specific first: `de-AT` -> [de-AT, de]; none -> []."""
    if not locale:
        return []
    subtags = locale.split("-")
    return ["-".join(subtags[:end]) for end in range(len(subtags), 0, -1)]


def variant_path(path: str, locale: str) -> str:
    """The file of `path`'s variant in `locale`: `email/x/body.html` -> `email/x/body.de.html`."""
    base, _dot, extension = path.rpartition(".")
    return f"{base}.{locale}.{extension}"


def candidates(path: str, locale: str | None) -> list[str]:
    """The files that may render `path` for `locale`, in the order they are tried."""
    return [variant_path(path, tag) for tag in fallback_chain(locale)] + [path]


def split_variant(path: str) -> tuple[str, str | None]:
    """(the default file, the locale) of a file name: `body.de.html` -> (`body.html`, `de`);
    a name whose next-to-last part is no normalised tag is a default file of its own."""
    base, _dot, extension = path.rpartition(".")
    stem, dot, tag = base.rpartition(".")
    if not dot or "/" in tag:
        return path, None
    try:
        if normalise_locale(tag) == tag:
            return f"{stem}.{extension}", tag
    except ValueError:
        pass
    return path, None


def locale_from_accept_language(header: str | None, available: set[str]) -> str | None:
    """The lead's locale from a browser's `Accept-Language`: its most preferred tag (by
    q-value, then order) whose fallback chain reaches one of `available` (the locales
    templates exist in, the default's among them), normalised; None if none does."""
    for tag in _preferences(header or ""):
        try:
            locale = normalise_locale(tag)
        except ValueError:
            continue
        if any(step in available for step in fallback_chain(locale)):
            return locale
    return None


def _preferences(header: str) -> list[str]:
    """The tags of an Accept-Language header, best first; `*` and q=0 left out."""
    ranked = []
    for position, item in enumerate(header.split(",")):
        tag, *parameters = (piece.strip() for piece in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _eq, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag and tag != "*" and quality > 0:
            ranked.append((-quality, position, tag))
    return [tag for _quality, _position, tag in sorted(ranked)]


# --- formatting in templates: {{ trial_ends | date }}, {{ amount | currency('EUR') }} -------


@lru_cache(maxsize=256)
def _babel_locale(tag: str) -> Locale:
    return Locale.parse(tag, sep="-")


def _locale_of(context: Context) -> Locale:
    """The locale a message is written in (message_context's `locale`), else the default."""
    return _babel_locale(context.get("locale") or DEFAULT_LOCALE)


def _zone_of(context: Context) -> ZoneInfo:
    """The lead's time zone, for times: a send at 09:00 in Vienna says 09:00."""
    lead = context.get("lead")
    name = lead.get("timezone") if isinstance(lead, dict) else None
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _moment(value: Any) -> datetime | date | time:
    """A date, time or datetime, or ISO 8601 text (what a lead's JSON attributes hold)."""
    _defined(value)
    if isinstance(value, datetime | date | time):
        return value
    if isinstance(value, str):
        text = value.strip()
        for parse in (date.fromisoformat, datetime.fromisoformat, time.fromisoformat):
            try:
                return parse(text)
            except ValueError:
                continue
    raise ValueError(f"{value!r} is not a date or time (use ISO 8601: 2026-03-14)")


def _defined(value: Any) -> None:
    """An undefined value (a misspelt field) is the strict environment's error, as when
    printed: not a bad date."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # stored times are UTC


def _decimal(value: Any) -> Decimal | int | float:
    """A number, or text that is one (a CSV import's attributes are text)."""
    _defined(value)
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return value
    try:
        return Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None


@pass_context
def format_date(context: Context, value: Any, format: str = "medium") -> str:
    moment = _moment(value)
    if isinstance(moment, datetime):
        moment = _aware(moment).astimezone(_zone_of(context)).date()
    return babel_dates.format_date(moment, format, locale=_locale_of(context))


@pass_context
def format_time(context: Context, value: Any, format: str = "short") -> str:
    moment = _moment(value)
    if isinstance(moment, datetime):
        moment = _aware(moment).astimezone(_zone_of(context))
    return babel_dates.format_time(moment, format, locale=_locale_of(context))


@pass_context
def format_datetime(context: Context, value: Any, format: str = "medium") -> str:
    moment = _moment(value)
    if not isinstance(moment, datetime):
        raise ValueError(f"{value!r} is not a date and time (use ISO 8601: 2026-03-14T09:30)")
    return babel_dates.format_datetime(
        _aware(moment), format, tzinfo=_zone_of(context), locale=_locale_of(context)
    )


@pass_context
def format_number(context: Context, value: Any, format: str | None = None) -> str:
    return babel_numbers.format_decimal(_decimal(value), format, locale=_locale_of(context))


@pass_context
def format_currency(context: Context, value: Any, currency: str, format: str | None = None) -> str:
    return babel_numbers.format_currency(
        _decimal(value), currency, format, locale=_locale_of(context)
    )


@pass_context
def format_percent(context: Context, value: Any, format: str | None = None) -> str:
    return babel_numbers.format_percent(_decimal(value), format, locale=_locale_of(context))


FILTERS = {
    "date": format_date,
    "time": format_time,
    "datetime": format_datetime,
    "number": format_number,
    "currency": format_currency,
    "percent": format_percent,
}
