"""A website's form posted to `POST /forms/{id}` (forms.yaml, models/forms.py): its fields
read into a lead, the lead created or updated, the consent it gives recorded and a
`form.submitted` event stored, so scoring sees the submission. A post carrying the
tracking snippet's visitor ID joins that visitor to the lead, whose earlier page views
become its responses (services/tracking.py). Enrolling is the caller's (api/forms.py), as
for `POST /leads`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select

from models.consent import ConsentEffect, give_consent, set_consent
from models.db import Lead, Response, new_id
from models.forms import Form
from models.locales import split_variant
from services import tracking
from services.intake import EventIn, Intake, LeadIn

TRUTHY = frozenset({"1", "true", "on", "yes", "y"})  # a ticked box, as browsers and JSON send it


class FormInvalid(ValueError):
    """The post's problems, each naming the form's field: [(field, message)]."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{name}: {message}" for name, message in problems))


@dataclass
class Submission:
    """A post read: the lead's fields (unvalidated), the answers kept on the event, the
    channels whose box was ticked (True) or left empty (False), the browser's locale, the
    website visitor the tracking snippet named."""

    fields: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, bool] = field(default_factory=dict)
    browser_locale: str | None = None
    visitor: str | None = None


def given(value: Any) -> bool:
    """Whether a field was filled in: a form posts its empty fields as blanks."""
    return value is not None and str(value).strip() != ""


def is_bot(form: Form, values: dict[str, Any]) -> bool:
    """The honeypot is hidden from people: only a bot fills it."""
    return given(values.get(form.honeypot))


def read(form: Form, values: dict[str, Any], browser_locale: str | None) -> Submission:
    """The post's fields by where the form sends them; fields it does not name are left."""
    visitor = tracking.read_visitor(values.get(tracking.VISITOR_FIELD))
    submission = Submission(browser_locale=browser_locale, visitor=visitor)
    for name, target in form.fields.items():
        if not given(values.get(name)):
            continue
        where, _dot, key = target.partition(".")
        if where == "attributes":
            submission.fields.setdefault("attributes", {})[key] = values[name]
        elif where == "answers":
            submission.answers[key] = values[name]
        else:
            submission.fields[target] = values[name]
    for channel, name in form.consent.items():
        submission.consent[channel] = str(values.get(name, "")).strip().lower() in TRUTHY
    return submission


def template_locales(templates_dir: Path, default_locale: str) -> set[str]:
    """The locales the templates have variants in, and the default's: what a browser's
    Accept-Language is matched against."""
    found = {default_locale}
    for path in templates_dir.rglob("*") if templates_dir.is_dir() else ():
        found.add(split_variant(path.relative_to(templates_dir).as_posix())[1] or default_locale)
    return found


def submit(intake: Intake, form: Form, submission: Submission) -> tuple[Lead, bool]:
    """Create or update the lead, record its consent and store the form.submitted event
    (database work: run it in a thread). Raises FormInvalid naming the form's fields."""
    lead_in = _lead_in(form, submission, _existing(intake, submission.fields.get("email")))
    event = _event(form, submission, lead_in)  # checked before anything is written
    lead, created = intake.upsert_lead(lead_in)
    _record_consent(intake, form, lead.id, created, submission.consent, event.event_id)
    intake.store_events([event.model_copy(update={"lead_id": lead.id})], source="form")
    if submission.visitor:  # its earlier views are the lead's now (delivered by the caller)
        tracking.join(intake, submission.visitor, lead.id, f"form:{form.id}")
    return lead, created


def _event(form: Form, submission: Submission, lead_in: LeadIn) -> EventIn:
    data = {**submission.answers, "form": form.id}
    event_id = f"form:{form.id}:{new_id()}"
    try:
        return EventIn(type="form.submitted", email=lead_in.email, event_id=event_id, data=data)
    except ValidationError as exc:  # the answers are too large
        raise FormInvalid([("", error["msg"]) for error in exc.errors()]) from None


def _existing(intake: Intake, email: Any) -> Lead | None:
    if not isinstance(email, str):
        return None
    with intake.sessions() as session:
        query = select(Lead).where(Lead.email == email.strip().lower())
        return session.scalars(query).one_or_none()


def _lead_in(form: Form, submission: Submission, existing: Lead | None) -> LeadIn:
    """The lead's fields: an existing lead keeps its other attributes, its source and
    a locale it has; the browser's locale fills one the form does not give."""
    fields = dict(submission.fields)
    if existing is not None and "attributes" in fields:
        fields["attributes"] = {**(existing.attributes or {}), **fields["attributes"]}
    if existing is None:
        fields.setdefault("source", form.lead_source)
    if submission.browser_locale and not (existing and existing.locale):
        fields.setdefault("locale", submission.browser_locale)
    try:
        return LeadIn.model_validate(fields)
    except ValidationError as exc:
        raise FormInvalid(_problems(form, exc)) from None


def _problems(form: Form, exc: ValidationError) -> list[tuple[str, str]]:
    """pydantic's errors, each at the form's field that filled the lead's."""
    by_target = {target: name for name, target in form.fields.items()}
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        target = ".".join(loc[:2]) if loc[:1] == ["attributes"] else ".".join(loc[:1])
        name = by_target.get(target, target or "")
        if name == "locale" and "locale" not in by_target:
            name = "Accept-Language"
        problems.append((name, error["msg"].removeprefix("Value error, ")))
    return problems


def _record_consent(
    intake: Intake, form: Form, lead_id: str, created: bool, ticked: dict[str, bool],
    event_id: str,
) -> None:  # fmt: skip
    """A ticked box gives consent; one left empty opts a new lead out (the form asked),
    and changes nothing for a lead we had (it may have consented elsewhere)."""
    where = f"form:{form.id}"
    with intake.sessions.begin() as session:
        lead = session.get(Lead, lead_id)
        for channel, yes in ticked.items():
            detail = f"{where}: {form.consent[channel]}"
            if yes:
                policy = intake.definitions.consent  # double opt-in, where it applies
                give_consent(session, lead, channel, detail, event_id, policy, created)
            elif created:
                effect = ConsentEffect(channel, False, "form", f"{detail} not ticked")
                set_consent(session, lead, effect, event_id)


def undelivered(intake: Intake, lead_id: str) -> list[Response]:
    """The lead's responses not yet signalled: the submission's, and any that arrived
    before the lead did."""
    query = select(Response).where(
        Response.lead_id == lead_id, Response.delivered_at.is_(None)
    )  # fmt: skip
    with intake.sessions() as session:
        return list(session.scalars(query))
