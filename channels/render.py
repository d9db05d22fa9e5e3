"""Render message templates (Jinja2, sandboxed, strict) for a lead, in its language.

Each file is taken in the variant of the context's `locale` by the fallback chain
(`body.de-AT.html`, then `body.de.html`, then `body.html`: models/locales.py).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import css_inline
from jinja2 import Environment, Template

from models.locales import DEFAULT_LOCALE, candidates

# Mail clients drop <style> blocks: styles go inline. Never fetch remote stylesheets.
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False)


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


def localised(env: Environment, path: str, context: dict[str, Any]) -> Template:
    """The template of `path` in the context's locale: its nearest variant, else itself."""
    return env.select_template(candidates(path, context.get("locale")))


def render_email(env: Environment, name: str, context: dict[str, Any]) -> RenderedEmail:
    """Email template `name` (email/NAME/{subject.txt,body.html,body.txt}) from `env`:
    the files (`template_environment`) or a stored version (channels.template_sets)."""

    def part(file: str) -> str:
        return localised(env, f"email/{name}/{file}", context).render(context)

    return RenderedEmail(
        subject=" ".join(part("subject.txt").split()),  # a subject is one line
        html=_INLINER.inline(part("body.html")),
        text=part("body.txt"),
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
    return sms_text(localised(env, f"sms/{name}.txt", context).render(context))


# Babel writes `1 234,50 €` with no-break spaces, outside GSM-7: one would make the whole
# SMS UCS-2, 70 characters a segment instead of 160. A phone does not wrap an SMS anyway.
_NO_BREAK_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2007": " "})


def sms_text(rendered: str) -> str:
    """An SMS as sent: trimmed, no-break spaces as spaces."""
    return rendered.translate(_NO_BREAK_SPACES).strip()


def message_context(
    lead: dict[str, Any],
    sender: dict[str, str],
    unsubscribe_url: str,
    default_locale: str = DEFAULT_LOCALE,
    track: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """What a template may use: the lead, the sender, the unsubscribe link, the locale
    the message is written in (the lead's, else `default_locale`) and `track(url)`, a link
    to the website carrying the lead's signed `nt` (docs/tracking.md; without `track`, as
    in a preview, the link as written)."""
    locale = lead.get("locale") or default_locale
    return {"lead": lead, "sender": sender, "unsubscribe_url": unsubscribe_url, "locale": locale,
            "track": track or _as_written}  # fmt: skip


def _as_written(url: str) -> str:
    return url
