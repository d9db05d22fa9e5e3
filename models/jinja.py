"""The one expression language: a sandboxed Jinja2 environment for templates and conditions.

Segment rules, branch conditions and message templates are all Jinja2, evaluated
in a SandboxedEnvironment (no attribute access to internals, no file or network
access) with StrictUndefined so that a misspelt variable is an error, never an
empty string sent to a customer. Dates, times and numbers are written for the message's
locale by Babel's filters (models/locales.py: `date`, `time`, `datetime`, `number`,
`currency`, `percent`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import (
    BaseLoader,
    FileSystemLoader,
    StrictUndefined,
    TemplateSyntaxError,
    nodes,
    select_autoescape,
)
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment

from models.locales import FILTERS

# A lead as templates and conditions see it when none is given (validate, preview).
SAMPLE_LEAD: dict[str, Any] = {
    "id": "sample-lead",
    "email": "ada@example.com",
    "phone": "+14155550100",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "title": "VP Engineering",
    "company": "Analytical Engines Ltd",
    "company_size": 250,
    "industry": "software",
    "country": "GB",
    "timezone": "Europe/London",
    "locale": None,
    "source": "trial_signup",
    "attributes": {},
    "score": 0,
    "stage": "lead",
    "segment": "saas_trial",
}


def sandboxed_environment(loader: BaseLoader | None = None) -> SandboxedEnvironment:
    """Sandboxed, strict (undefined names are errors), HTML autoescaped, with the
    locale's formatting filters."""
    environment = SandboxedEnvironment(
        loader=loader,
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    environment.filters.update(FILTERS)
    return environment


_EXPRESSIONS = sandboxed_environment()


class ConditionError(ValueError):
    """A condition that does not compile or cannot be evaluated."""


@lru_cache(maxsize=1024)
def compile_condition(expression: str):
    """Compile a Jinja2 expression once; raises ConditionError on a syntax error."""
    try:
        return _EXPRESSIONS.compile_expression(expression, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise ConditionError(f"invalid condition {expression!r}: {exc.message}") from None


@lru_cache(maxsize=1024)
def condition_names(expression: str) -> frozenset[str]:
    """The top-level names an expression reads (`predicted >= 0.3 and fit >= 40`: predicted,
    fit), so a caller can tell one that needs a value it lacks; empty if it does not parse."""
    try:
        parsed = Parser(_EXPRESSIONS, expression, state="variable").parse_expression()
    except TemplateSyntaxError:
        return frozenset()
    return frozenset(name.name for name in parsed.find_all(nodes.Name) if name.ctx == "load")


def evaluate_condition(expression: str, context: dict[str, Any]) -> bool:
    """Evaluate a condition to a boolean; unknown names are errors, not False."""
    try:
        return bool(compile_condition(expression)(**context))
    except ConditionError:
        raise
    except Exception as exc:  # sandbox violations, undefined names, type errors
        raise ConditionError(f"condition {expression!r} failed: {exc}") from None


@lru_cache(maxsize=16)
def template_environment(templates_dir: str) -> SandboxedEnvironment:
    """The sandboxed environment for message templates under `templates_dir`."""
    return sandboxed_environment(FileSystemLoader(str(Path(templates_dir))))
