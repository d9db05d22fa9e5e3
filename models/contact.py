"""Contact details read the same way for leads and reps: phones in E.164, IANA time zones."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

LEAD_PHONE_HINT = " (give it with +country code, or give the lead's country)"


def normalise_phone(
    raw: str, country: str | None = None, hint: str = LEAD_PHONE_HINT
) -> str | None:
    """A phone number in E.164 (+4915123456789), read in `country` if it has no +prefix.
    Raises ValueError saying why a number is not usable (with `hint` when no country
    was given to read it in); blank means none."""
    if not raw.strip():
        return None
    try:
        number = phonenumbers.parse(raw, country)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(
            f"phone {raw!r} is not a phone number: {exc._msg}{'' if country else hint}"
        ) from None
    if not phonenumbers.is_valid_number(number):
        region = phonenumbers.region_code_for_country_code(number.country_code)
        where = f" in {region}" if region not in ("ZZ", "001") else ""
        raise ValueError(f"phone {raw!r} is not a valid number{where}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def known_timezone(value: str, example: str = "Europe/Paris") -> str:
    """`value` if it is an IANA time zone name, else a ValueError saying what to write."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (use an IANA name such as {example})"
        ) from None
    return value
