"""Render message templates (Jinja2, sandboxed, strict) for a lead."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import css_inline
from jinja2 import Environment

# Mail clients drop <style> blocks: styles go inline. Never fetch remote stylesheets.
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False)


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


def render_email(env: Environment, name: str, context: dict[str, Any]) -> RenderedEmail:
    """Email template `name` (email/NAME/{subject.txt,body.html,body.txt}) from `env`:
    the files (`template_environment`) or a stored version (channels.template_sets)."""
    subject = env.get_template(f"email/{name}/subject.txt").render(context)
    return RenderedEmail(
        subject=" ".join(subject.split()),  # a subject is one line
        html=_INLINER.inline(env.get_template(f"email/{name}/body.html").render(context)),
        text=env.get_template(f"email/{name}/body.txt").render(context),
    )


def compliance_problems(
    email: RenderedEmail, sender: dict[str, str], unsubscribe_url: str
) -> list[str]:
    """What a marketing email lacks: the sender's postal address (CAN-SPAM) and the
    unsubscribe link, in both the HTML and the text part."""
    problems = []
    parts = {"HTML": html.unescape(email.html), "text": email.text}
    for part, content in parts.items():
        if " ".join(sender["postal_address"].split()) not in " ".join(content.split()):
            problems.append(f"the {part} part has no postal address of the sender (CAN-SPAM)")
        if unsubscribe_url not in content:
            problems.append(f"the {part} part has no unsubscribe link")
    return problems


def render_sms(env: Environment, name: str, context: dict[str, Any]) -> str:
    return env.get_template(f"sms/{name}.txt").render(context).strip()


def message_context(
    lead: dict[str, Any], sender: dict[str, str], unsubscribe_url: str
) -> dict[str, Any]:
    """What a template may use: the lead, the sender and the unsubscribe link."""
    return {"lead": lead, "sender": sender, "unsubscribe_url": unsubscribe_url}
