"""What the predictive model sees of a lead at a moment: its features, as of that moment.

Pure functions, no I/O and no clock: the same profile, responses and moment give the
same features, in training (`nurture train`, many moments per lead) and at scoring time
(the scoring activity, one moment). Only responses at or before the moment count, so
nothing from after it can help a model look clever (tests/test_predictive.py plants a
leak to check).

Each feature has a name that says what it is, and a raw value a person can read:
- `count:TYPE:Nd`: responses of a type in the last N days (7, 30, 90), e.g.
  `count:email.open:30d`; `page:/pricing:Nd` page views under a site's first path
  segment; `action:invite:Nd` product actions by their first word; `form:demo:Nd`
  form submissions by form name;
- `recent:TYPE`: days since the last response of a type (absent: never);
- `title:senior|manager|student`, `company_size`, `industry=…`, `country=…`,
  `source=…`, `free_mail`: from the profile (not the segment: it follows from these,
  and a history file does not carry it);
- `age_days`: days since the lead was created.

`model_inputs` turns raw values into what the model is fitted on (counts and sizes on a
log scale, recency as a 0-1 freshness), and `describe` puts a feature in words for the
reasons a marketer reads ("visited /pricing 3 times in 7 days").
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from scoring.engine import ResponseFact

WINDOWS = (7, 30, 90)  # days
RECENCY_DAYS = 14.0  # a response's freshness falls to 1/e over this many days
DAY = 86400.0
WINDOWED = re.compile(r":\d+d$")  # a count over a window

SENIOR = re.compile(
    r"\b(vp|vice president|head of|director|chief|c[etmfio]o|founder|owner)\b", re.I
)
MANAGER = re.compile(r"\b(manager|lead|principal)\b", re.I)
STUDENT = re.compile(r"\b(student|intern)\b", re.I)
FREE_MAIL = frozenset({"gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "icloud.com",
                       "aol.com", "gmx.de", "web.de", "proton.me", "protonmail.com"})  # fmt: skip
CATEGORIES = ("industry", "country", "source")

TITLE_WORDS = {"senior": "a senior title", "manager": "a manager's title",
               "student": "a student's or intern's title"}  # fmt: skip
# How a response type reads in a reason: (verb, noun for one, noun for many).
WORDS = {
    "page.view": ("viewed", "page", "pages"),
    "email.open": ("opened", "email", "emails"),
    "email.click": ("clicked", "email link", "email links"),
    "email.reply": ("replied to", "email", "emails"),
    "email.bounce": ("bounced", "email", "emails"),
    "email.unsubscribe": ("unsubscribed from", "email", "emails"),
    "email.spamreport": ("reported as spam", "email", "emails"),
    "sms.reply": ("replied to", "text", "texts"),
    "sms.stop": ("sent STOP to", "text", "texts"),
    "form.submitted": ("submitted", "form", "forms"),
    "content.download": ("downloaded", "piece of content", "pieces of content"),
    "webinar.registered": ("registered for", "webinar", "webinars"),
    "webinar.attended": ("attended", "webinar", "webinars"),
    "trial.started": ("started", "trial", "trials"),
    "product.action": ("did", "product action", "product actions"),
    "newsletter.signup": ("signed up for", "newsletter", "newsletters"),
}


def features(
    profile: Mapping[str, Any],
    responses: Iterable[ResponseFact],
    at: datetime,
    created_at: datetime | None = None,
    *,
    of_profile: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The lead's features at `at`: its profile (`of_profile`: its profile_features,
    when already known), and the responses at or before `at`."""
    found = dict(of_profile) if of_profile is not None else profile_features(profile)
    if created_at is not None:
        found["age_days"] = max(0.0, (at - created_at).total_seconds() / DAY)
    for response in responses:
        if response.occurred_at > at:
            continue  # after the moment: what the model could not have known
        age = (at - response.occurred_at).total_seconds() / DAY
        for names in _counters(response):
            for window, name in names:  # widest first
                if age > window:
                    break
                found[name] = found.get(name, 0.0) + 1.0
        recent = _RECENT.get(response.type) or _RECENT.setdefault(
            response.type, f"recent:{response.type}"
        )
        found[recent] = min(found.get(recent, math.inf), age)
    return found


_RECENT: dict[str, str] = {}
_WINDOW_NAMES: dict[str, tuple[tuple[int, str], ...]] = {}


def _counters(response: ResponseFact) -> list[tuple[tuple[int, str], ...]]:
    """The counters' names, widest window first, for each family the response counts in."""
    found = []
    for family in _families(response):
        names = _WINDOW_NAMES.get(family)
        if names is None:
            if len(_WINDOW_NAMES) > 50_000:  # a bounded memo of names, not a leak
                _WINDOW_NAMES.clear()
            names = _WINDOW_NAMES[family] = tuple(
                (window, f"{family}:{window}d") for window in sorted(WINDOWS, reverse=True)
            )
        found.append(names)
    return found


def profile_features(profile: Mapping[str, Any]) -> dict[str, float]:
    found: dict[str, float] = {}
    title = str(profile.get("title") or "")
    for name, pattern in (("senior", SENIOR), ("manager", MANAGER), ("student", STUDENT)):
        if pattern.search(title):
            found[f"title:{name}"] = 1.0
    size = _number(profile.get("company_size"))
    if size is not None and size >= 0:
        found["company_size"] = size
    for field in CATEGORIES:
        value = _category(profile.get(field))
        if value:
            found[f"{field}={value}"] = 1.0
    email = str(profile.get("email") or "")
    if "@" in email:
        found["free_mail"] = 1.0 if email.rpartition("@")[2].lower() in FREE_MAIL else 0.0
    return found


def _families(response: ResponseFact) -> list[str]:
    """The counters a response adds to: its type's, and for pages, product actions and
    forms, the one of what it was (a page's first path segment, an action's first word)."""
    families = [f"count:{response.type}"]
    data = response.data or {}
    if response.type == "page.view" and data.get("url"):
        families.append(f"page:{_first_segment(str(data['url']))}")
    elif response.type == "product.action" and data.get("action"):
        families.append(f"action:{_word(data['action'])}")
    elif response.type == "form.submitted" and data.get("form"):
        families.append(f"form:{_word(data['form'])}")
    return families


@functools.lru_cache(maxsize=4096)
def _first_segment(url: str) -> str:
    path = urlsplit(url).path if "//" in url else url.split("?")[0]
    segment = path.strip("/").split("/", 1)[0].lower()
    return "/" + segment[:40]


def _word(value: Any) -> str:
    word = re.split(r"[^a-z0-9]+", str(value).lower().strip())
    return (word[0] if word and word[0] else "other")[:40]


def _category(value: Any) -> str:
    return " ".join(str(value).split()).casefold()[:60] if value not in (None, "") else ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --- what the model is fitted on -------------------------------------------------------------


def model_inputs(raw: Mapping[str, float]) -> dict[str, float]:
    """Counts and sizes on a log scale (the tenth page view says less than the first),
    recency as a freshness between 0 (long ago) and 1 (now)."""
    inputs = {}
    for name, value in raw.items():
        kind = _KINDS.get(name)
        if kind is None:
            kind = _KINDS[name] = _kind(name)
        if kind == "log":
            inputs[name] = math.log1p(value)
        elif kind == "fresh":
            inputs[name] = math.exp(-value / RECENCY_DAYS)
        else:
            inputs[name] = value
    return inputs


_KINDS: dict[str, str] = {}


def _kind(name: str) -> str:
    if len(_KINDS) > 50_000:
        _KINDS.clear()
    if name.startswith("recent:"):
        return "fresh"
    if name in ("company_size", "age_days") or WINDOWED.search(name):
        return "log"
    return "as is"


# --- in words --------------------------------------------------------------------------------


def family_of(name: str) -> str:
    """The feature's family: its windows and recency read as one reason."""
    if name.startswith("recent:"):
        return "count:" + name.removeprefix("recent:")
    return WINDOWED.sub("", name)


def describe(family: str, raw: Mapping[str, float]) -> str:
    """A family's feature values in words, e.g. "visited /pricing 3 times in 7 days"."""
    kind, _, what = family.partition(":")
    if kind in ("count", "page", "action", "form"):
        counts = [(window, int(raw.get(f"{family}:{window}d", 0))) for window in WINDOWS]
        seen = [(window, count) for window, count in counts if count]
        if not seen:
            return _never(kind, what)
        window, count = seen[0]
        wider = f" ({seen[-1][1]} in {seen[-1][0]} days)" if seen[-1][1] != count else ""
        return f"{_activity(kind, what, count)} in {window} days{wider}"
    has = bool(raw.get(family))  # a reason may be a feature the lead lacks
    if family.startswith("title:"):
        text = TITLE_WORDS.get(what, family)
        return text if has else f"not {text}"
    if family == "company_size":
        return f"company size {int(raw[family]):,}" if family in raw else "company size unknown"
    if family == "free_mail":
        return "a free email address" if has else "a work email address"
    if family == "age_days":
        return f"lead for {int(raw.get(family, 0))} days"
    if "=" in family:
        field, _, value = family.partition("=")
        return f"{field.replace('_', ' ')} {'is' if has else 'is not'} {value}"
    return family


def _activity(kind: str, what: str, count: int) -> str:
    times = "once" if count == 1 else f"{count} times"
    if kind == "page":
        return f"visited {what} {times}"
    if kind == "action":
        return f"did {what!r} in the product {times}"
    if kind == "form":
        return f"submitted the {what} form {times}"
    verb, one, many = WORDS.get(what, ("had", f"{what} response", f"{what} responses"))
    return f"{verb} {count} {one if count == 1 else many}"


def _never(kind: str, what: str) -> str:
    if kind == "page":
        return f"no visit to {what} in {WINDOWS[-1]} days"
    verb, _, many = WORDS.get(what, ("had", "", f"{what} responses"))
    return f"no {what} in {WINDOWS[-1]} days" if kind != "count" else f"{verb} no {many} lately"
