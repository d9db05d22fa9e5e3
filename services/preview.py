"""`nurture preview`: one message step rendered for a sample lead or a given one.

What a marketer checks before a sequence goes live: an email's subject, text and
HTML (inlined CSS, as sent), an SMS's text with its length, segments and encoding.
Nothing is sent and nothing is stored; the unsubscribe link is a placeholder.

A lead file is JSON or YAML holding the fields a lead arrives with (email, first_name,
company, timezone, locale, ...): the same fields, checked the same way, as `POST /leads`.
A locale given (`--locale de-AT`) overrides the lead's: the templates' variant in it, by
the fallback chain, with its dates and numbers (models/locales.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from channels.render import message_context, render_email, render_sms
from models.db import Lead
from models.definition_set import Definitions
from models.definitions import EmailStep, Sequence, SmsStep
from models.jinja import SAMPLE_LEAD, template_environment
from models.locales import DEFAULT_LOCALE, normalise_locale
from services.intake import LeadIn
from services.validate import GSM7, SAMPLE_SENDER, sms_segments

PREVIEW_UNSUBSCRIBE_URL = "https://example.com/unsubscribe/preview"


class PreviewError(ValueError):
    """A sequence or step that does not exist, or one that sends nothing."""


class LeadError(ValueError):
    """A lead file (or lead fields) that cannot be read or does not validate."""


@dataclass(frozen=True)
class Preview:
    sequence_id: str
    step_id: str
    channel: str  # email | sms
    template: str
    lead: dict[str, Any]
    sample_lead: bool
    text: str  # the email's text part, or the SMS
    locale: str = DEFAULT_LOCALE  # what it is written in: the variants and the formats
    subject: str | None = None  # email only
    html: str | None = None  # email only, styles inlined as sent
    characters: int | None = None  # SMS only
    segments: int | None = None  # SMS only: each one billed
    encoding: str | None = None  # SMS only: GSM-7 or UCS-2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sms_encoding(text: str) -> str:
    """GSM-7 when every character is in the GSM 03.38 basic set, else UCS-2 (70 a segment)."""
    return "GSM-7" if set(text) <= GSM7 else "UCS-2"


def find_sequence(definitions: Definitions, sequence_id: str) -> Sequence:
    try:
        return definitions.sequences[sequence_id]
    except KeyError:
        known = ", ".join(sorted(definitions.sequences))
        raise PreviewError(f"no sequence {sequence_id!r} (sequences: {known})") from None


def message_steps(sequence: Sequence) -> list[str]:
    return [step_id for step_id, _channel, _template in sequence.templates()]


def preview(
    definitions: Definitions,
    sequence_id: str,
    step_id: str,
    lead: dict[str, Any] | None = None,
    sender: dict[str, str] | None = None,
    unsubscribe_url: str = PREVIEW_UNSUBSCRIBE_URL,
    locale: str | None = None,
    default_locale: str = DEFAULT_LOCALE,
) -> Preview:
    """Render step `step_id` of `sequence_id` for `lead` (profile fields as a lead arrives
    with them; the sample lead if None) from `sender` (a sample sender if None), in
    `locale` if given, else the lead's, else `default_locale`.

    Raises PreviewError for an unknown sequence or step, a step that sends nothing or an
    unknown locale;
    LeadError for lead fields that do not validate; jinja2.TemplateError when the
    template fails for this lead (a field it needs is missing)."""
    sequence = find_sequence(definitions, sequence_id)
    messages = ", ".join(message_steps(sequence)) or "none"
    try:
        step = sequence.step(step_id)
    except KeyError:
        raise PreviewError(
            f"sequence {sequence_id!r} has no step {step_id!r} "
            f"(steps: {', '.join(s.id for s in sequence.steps)}; messages: {messages})"
        ) from None
    if not isinstance(step, EmailStep | SmsStep):
        raise PreviewError(
            f"step {step_id!r} of {sequence_id!r} is a {step.type} step, which sends nothing "
            f"(message steps: {messages})"
        )
    profile = dict(SAMPLE_LEAD) if lead is None else lead_profile(definitions, lead)
    if locale is not None:
        profile["locale"] = _locale(locale)
    sender = sender or SAMPLE_SENDER
    context = message_context(profile, sender, unsubscribe_url, default_locale)
    common = dict(
        sequence_id=sequence_id,
        step_id=step_id,
        channel=step.type,
        template=step.template,
        lead=profile,
        sample_lead=lead is None,
        locale=context["locale"],
    )
    env = template_environment(str(definitions.templates_dir))
    if isinstance(step, EmailStep):
        email = render_email(env, step.template, context)
        return Preview(**common, subject=email.subject, text=email.text, html=email.html)
    text = render_sms(env, step.template, context)
    return Preview(
        **common,
        text=text,
        characters=len(text),
        segments=sms_segments(text),
        encoding=sms_encoding(text),
    )


def _locale(tag: str) -> str:
    try:
        return normalise_locale(tag)
    except ValueError as exc:
        raise PreviewError(str(exc)) from None


# --- leads ---------------------------------------------------------------------------------


def validate_lead(fields: Any, source: str = "lead") -> dict[str, Any]:
    """Check lead fields as intake does (LeadIn); return the fields given, normalised.
    Raises LeadError naming `source` and each field that is wrong."""
    if not isinstance(fields, dict):
        raise LeadError(f"{source}: expected a mapping of lead fields (email, first_name, ...)")
    try:
        lead_in = LeadIn.model_validate(fields)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "lead"
            problems.append(f"{source}: {where}: {error['msg'].removeprefix('Value error, ')}")
        raise LeadError("\n".join(problems)) from None
    data = lead_in.model_dump(mode="json", exclude={"sequence"}, exclude_unset=True)
    data["email"] = str(lead_in.email).lower()
    return data


def read_lead_file(path: Path | str) -> dict[str, Any]:
    """A lead from a JSON or YAML file (by its suffix; YAML otherwise), validated."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LeadError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LeadError(f"{path}: not UTF-8 text") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise LeadError(f"{path}: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise LeadError(f"{path}: {where}{problem}") from None
    return validate_lead(data, str(path))


def lead_profile(
    definitions: Definitions, fields: dict[str, Any], lead_id: str = "preview-lead"
) -> dict[str, Any]:
    """The lead as templates see it (Lead.profile()) for fields as a lead arrives with."""
    given = validate_lead(fields)
    profile: dict[str, Any] = {name: None for name in Lead.PROFILE_FIELDS}
    profile |= {"timezone": "UTC", "attributes": {}} | given
    segment, _sequence = definitions.choose_segment(profile)
    return profile | {"id": lead_id, "segment": segment, "stage": "lead", "score": 0}


def describe_lead(profile: dict[str, Any]) -> str:
    name = " ".join(p for p in (profile.get("first_name"), profile.get("last_name")) if p)
    return f"{name} <{profile['email']}>" if name else str(profile["email"])
