"""Render message templates (Jinja2, sandboxed, strict) for a lead."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.jinja import template_environment


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


def render_email(templates_dir: Path, name: str, context: dict[str, Any]) -> RenderedEmail:
    env = template_environment(str(templates_dir))
    subject = env.get_template(f"email/{name}/subject.txt").render(context)
    return RenderedEmail(
        subject=" ".join(subject.split()),  # a subject is one line
        html=env.get_template(f"email/{name}/body.html").render(context),
        text=env.get_template(f"email/{name}/body.txt").render(context),
    )


def render_sms(templates_dir: Path, name: str, context: dict[str, Any]) -> str:
    env = template_environment(str(templates_dir))
    return env.get_template(f"sms/{name}.txt").render(context).strip()


def message_context(
    lead: dict[str, Any], sender: dict[str, str], unsubscribe_url: str
) -> dict[str, Any]:
    """What a template may use: the lead, the sender and the unsubscribe link."""
    return {"lead": lead, "sender": sender, "unsubscribe_url": unsubscribe_url}
