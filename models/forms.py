"""`forms.yaml` (optional): the website's forms that `POST /forms/{id}` takes.

Each form maps the names of its fields to the lead's (`email` is required), names its
honeypot field (hidden from people: a bot fills it) and the fields whose ticked box gives
consent per channel, and may enroll in a sequence of its own or send the browser on to a
thank-you page. Loading and cross-checks: services/definitions.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

FORM_ID = r"^[a-z][a-z0-9_-]*$"  # it is in a URL path: no character needs escaping
# The lead's fields a form field may fill (services/intake.py LeadIn); `attributes.<x>`
# fills one attribute and `answers.<x>` is kept on the form.submitted event (scoring's
# `answers.<x>`).
LEAD_FIELDS = frozenset({
    "email", "first_name", "last_name", "company", "title", "phone", "country", "industry",
    "company_size", "timezone", "locale", "source", "utm_source", "utm_medium",
    "utm_campaign", "utm_term", "utm_content",
})  # fmt: skip
PREFIXES = ("attributes.", "answers.")


def _a_target(value: str) -> str:
    prefix = next((p for p in PREFIXES if value.startswith(p)), None)
    if value in LEAD_FIELDS or (prefix and len(value) > len(prefix)):
        return value
    raise ValueError(
        f"{value!r} is not a lead field: one of {', '.join(sorted(LEAD_FIELDS))}, "
        "attributes.<name> or answers.<name>"
    )


Target = Annotated[str, AfterValidator(_a_target)]
FieldName = Annotated[str, Field(min_length=1, max_length=100)]


class Form(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=FORM_ID, max_length=100)]
    fields: dict[FieldName, Target] = Field(description="form field -> lead field")
    source: str | None = Field(default=None, max_length=100, description="default: form:<id>")
    honeypot: FieldName = "website"
    consent: dict[Literal["email", "sms"], FieldName] = Field(
        default_factory=dict, description="channel -> the field whose ticked box gives consent"
    )
    sequence: str | None = Field(default=None, description="default: the segment's")
    redirect: str | None = Field(
        default=None, pattern=r"^https?://\S+$", description="answer 303 to this page"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Form:
        targets = list(self.fields.values())
        if "email" not in targets:
            raise ValueError("fields: no field fills `email` (a lead is found by it)")
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ValueError(f"fields: {', '.join(twice)} filled by more than one field")
        if self.honeypot in self.fields or self.honeypot in self.consent.values():
            raise ValueError(f"honeypot {self.honeypot!r} is also a field people fill")
        return self

    @property
    def lead_source(self) -> str:
        return self.source or f"form:{self.id}"


class FormBook(BaseModel):
    """The whole of `forms.yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    forms: list[Form] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> FormBook:
        ids = [form.id for form in self.forms]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"form id {', '.join(twice)} is used more than once")
        return self

    def get(self, form_id: str) -> Form | None:
        return next((form for form in self.forms if form.id == form_id), None)
