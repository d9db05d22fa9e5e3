"""`nurture validate`: everything a marketer writes, checked at once.

Schema and cross-references come from the loader; here every template used by
a sequence is also rendered in strict mode against a sample lead, and SMS
longer than one segment are reported.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import TemplateError

from channels.render import message_context, render_email, render_sms
from models.jinja import SAMPLE_LEAD
from models.loader import check_definitions
from models.yaml_source import DefinitionProblem

GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)
SAMPLE_SENDER = {"name": "Sample Sender", "email": "hello@example.com",
                 "company": "Sample Co", "postal_address": "1 Sample Street"}  # fmt: skip


def sms_segments(text: str) -> int:
    """How many SMS segments `text` takes (GSM-7: 160/153 chars, else UCS-2: 70/67)."""
    if set(text) <= GSM7:
        single, multi = 160, 153
    else:
        single, multi = 70, 67
    return 1 if len(text) <= single else -(-len(text) // multi)


def validate(root: Path) -> list[DefinitionProblem]:
    definitions, problems = check_definitions(root)
    if definitions is None:
        return problems
    context = message_context(SAMPLE_LEAD, SAMPLE_SENDER, "https://example.com/unsubscribe/x")
    for sequence in definitions.sequences.values():
        path = str(root / "sequences" / f"{sequence.id}.yaml")
        for step_id, channel, template in sequence.templates():
            where = DefinitionProblem(path, None, None, f"steps.{step_id}.template", "")
            try:
                if channel == "email":
                    render_email(definitions.templates_dir, template, context)
                    continue
                text = render_sms(definitions.templates_dir, template, context)
            except TemplateError as exc:
                line = f" line {exc.lineno}" if getattr(exc, "lineno", None) else ""
                problems.append(_with(where, f"template {template!r}{line}: {exc.message}"))
                continue
            if (segments := sms_segments(text)) > 1:
                problems.append(
                    _with(
                        where,
                        f"SMS {template!r} is {len(text)} characters: {segments} segments "
                        "(each is billed; keep it to one)",
                        "warning",
                    )  # fmt: skip
                )
    return problems


def _with(problem: DefinitionProblem, message: str, severity: str = "error") -> DefinitionProblem:
    return DefinitionProblem(
        problem.file, problem.line, problem.column, problem.field, message, severity
    )
