"""`nurture validate`: everything a marketer writes, checked at once.

Schema and cross-references come from the loader; here every template used by
a sequence is also rendered in strict mode against a sample lead, and SMS
longer than one segment are reported.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from jinja2 import TemplateError

from channels.render import compliance_problems, message_context, render_email, render_sms
from models.jinja import SAMPLE_LEAD, template_environment
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
    unsubscribe_url = "https://example.com/unsubscribe/x"
    context = message_context(SAMPLE_LEAD, SAMPLE_SENDER, unsubscribe_url)
    users: dict[tuple[str, str], list[str]] = {}  # (channel, template) -> "sequence.step"
    for sequence in definitions.sequences.values():
        for step_id, channel, template in sequence.templates():
            users.setdefault((channel, template), []).append(f"{sequence.id}.{step_id}")
    templates_dir = definitions.templates_dir
    env = template_environment(str(templates_dir))
    for (channel, template), used_by in sorted(users.items()):
        where = f"used by {', '.join(used_by)}"
        try:
            if channel == "email":
                rendered = render_email(env, template, context)
                for missing in compliance_problems(rendered, SAMPLE_SENDER, unsubscribe_url):
                    # An email lacking these would be refused at send time: an error now.
                    part = "body.html" if "HTML" in missing else "body.txt"
                    problems.append(DefinitionProblem(
                        str(templates_dir / "email" / template / part), None, None, "",
                        f"{missing}: use {{{{ sender.postal_address }}}} and "
                        f"{{{{ unsubscribe_url }}}}, or the shared footer ({where})",
                    ))  # fmt: skip
                continue
            text = render_sms(env, template, context)
        except TemplateError as exc:
            problems.append(_template_problem(templates_dir, exc, f"{exc.message} ({where})"))
            continue
        if (segments := sms_segments(text)) > 1:
            problems.append(
                DefinitionProblem(
                    str(templates_dir / "sms" / f"{template}.txt"), None, None, "",
                    f"SMS is {len(text)} characters when rendered for the sample lead: "
                    f"{segments} segments, each billed ({where})", "warning",
                )
            )  # fmt: skip
    return problems


def _template_problem(templates_dir: Path, exc: TemplateError, message: str) -> DefinitionProblem:
    """Locate a template error in its own file: syntax errors carry it, render errors
    are found in the traceback, where Jinja2 puts the template's file and line."""
    file, line = getattr(exc, "filename", None), getattr(exc, "lineno", None)
    if file is None:
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename.startswith(str(templates_dir.resolve())) or frame.filename.startswith(
                str(templates_dir)
            ):
                file, line = frame.filename, frame.lineno
                break
    return DefinitionProblem(file or str(templates_dir), line, None, "", message)
