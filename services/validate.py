"""`nurture validate`: everything a marketer writes, checked at once, each problem at its source.

Schema and cross-references come from the loader, file by file, so a broken file never
hides the others' problems. Here every template used by a send step (valid steps of a
broken sequence included) is also rendered in strict mode against a sample lead, emails
are checked for the sender's postal address and the unsubscribe link, and SMS longer
than one segment are reported. Each locale variant of a template (`body.de.html`) is
rendered and checked the same way in its locale; an email variant lacking a part, and a
sequence step lacking a language its other steps have, are warnings
(services/template_variants.py).

A problem in a shared partial or layout (`{% include %}`, `{% extends %}`, `{% import %}`)
is reported once, on the partial, however many emails use it.

With the settings (`nurture validate`), the experiments recorded in the database are
compared with the definitions too (services/experiment_checks.py): an arm changed while
running, a running experiment whose result is conclusive.
"""

from __future__ import annotations

import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from jinja2 import Environment, TemplateError, nodes

from channels.render import RenderedEmail, compliance_problems, message_context, sms_text
from infra.settings import Settings
from models.costs import costs_problems
from models.jinja import SAMPLE_LEAD, template_environment
from models.locales import variant_path
from models.yaml_source import DefinitionProblem
from services.definitions import EMAIL_PARTS, inspect_definitions
from services.experiment_checks import check_experiments
from services.template_variants import incomplete_variants, sequence_gaps, variants

GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)
SAMPLE_SENDER = {"name": "Sample Sender", "email": "hello@example.com",
                 "company": "Sample Co", "postal_address": "1 Sample Street"}  # fmt: skip
UNSUBSCRIBE_URL = "https://example.com/unsubscribe/x"
# What compliance needs in every email part, as templates write it.
ADDRESS, UNSUBSCRIBE = "sender.postal_address", "unsubscribe_url"
BODY_PARTS = ("body.html", "body.txt")


def sms_segments(text: str) -> int:
    """How many SMS segments `text` takes (GSM-7: 160/153 chars, else UCS-2: 70/67)."""
    if set(text) <= GSM7:
        single, multi = 160, 153
    else:
        single, multi = 70, 67
    return 1 if len(text) <= single else -(-len(text) // multi)


def validate(root: Path) -> list[DefinitionProblem]:
    """Every problem of the definitions under `root`, the files alone."""
    return validation(root).problems


@dataclass
class Validation:
    problems: list[DefinitionProblem]
    notes: list[str] = field(default_factory=list)  # what was not checked, and why


def validation(root: Path, settings: Settings | None = None) -> Validation:
    """The files' problems, and with `settings` the experiments in its database compared
    with the definitions (a database that cannot be read is a note, not a problem)."""
    inspection = inspect_definitions(root)
    users: dict[tuple[str, str], list[str]] = defaultdict(list)  # (channel, template) -> users
    for send in inspection.sends:
        users[send.channel, send.template].append(f"{send.sequence}.{send.step}")
    problems = inspection.problems + _check_templates(inspection.templates_dir, users)
    problems += sequence_gaps(inspection.templates_dir, inspection.sends, inspection.sources)
    problems += costs_problems(root)  # costs.yaml: optional, read by `nurture financial`
    if settings is None:
        return Validation(problems)
    database = check_experiments(inspection, settings)
    return Validation(problems + database.problems, database.notes)


@dataclass
class _Part:
    """An email part (body.html or body.txt) as rendered, and what compliance it lacks."""

    email: str  # the template's name
    part: str
    used_by: tuple[str, ...]
    lacks: dict[str, str] = field(default_factory=dict)  # element -> the send activity's words

    @property
    def name(self) -> str:
        return f"email/{self.email}/{self.part}"


def _check_templates(
    templates_dir: Path, users: dict[tuple[str, str], list[str]]
) -> list[DefinitionProblem]:
    env = template_environment(str(templates_dir))
    # Render errors keyed by where they are, so one in a shared partial is reported once.
    failures: dict[tuple[str, int | None, str], list[str]] = defaultdict(list)
    parts: list[_Part] = []
    warnings: list[DefinitionProblem] = []

    def render(name: str, used_by: list[str], locale: str | None = None) -> str | None:
        try:
            return env.get_template(name).render(_sample_context(locale))
        except TemplateError as exc:
            file, line = _template_location(templates_dir, exc)
            failures[file, line, exc.message or str(exc)] += used_by
            return None

    for (channel, template), used_by in sorted(users.items()):
        if not _files_exist(templates_dir, channel, template):
            continue  # the loader reported it at the step naming it
        have = variants(templates_dir, channel, template)
        if channel == "email":
            # Part by part (not channels.render.render_email), so that an error in one
            # part does not keep the others from being checked in the same run.
            rendered = {part: render(f"email/{template}/{part}", used_by) for part in EMAIL_PARTS}
            parts += _email_parts(template, tuple(used_by), rendered)
            for locale, defaults in sorted(have.items()):  # each variant, in its locale
                files = [variant_path(default, locale) for default in sorted(defaults)]
                texts = {PurePosixPath(f).name: render(f, used_by, locale) for f in files}
                parts += _email_parts(template, tuple(used_by), texts, locale)
            warnings += incomplete_variants(templates_dir, template, have, _used_by(used_by))
            continue
        for locale in [None, *sorted(have)]:
            name = variant_path(f"sms/{template}.txt", locale) if locale else f"sms/{template}.txt"
            if (text := render(name, used_by, locale)) is not None:
                warnings += _long_sms(templates_dir / name, sms_text(text), used_by)
    problems = [
        DefinitionProblem(file, line, None, "", f"{message} ({_used_by(used_by)})")
        for (file, line, message), used_by in failures.items()
    ]
    return problems + _compliance(_Sources(env, templates_dir), parts) + warnings


def _sample_context(locale: str | None) -> dict:
    """What a template sees for the sample lead, in `locale` (a variant's) if given."""
    return message_context(SAMPLE_LEAD | {"locale": locale}, SAMPLE_SENDER, UNSUBSCRIBE_URL)


def _long_sms(path: Path, text: str, used_by: list[str]) -> list[DefinitionProblem]:
    """An SMS as sent (channels.render.sms_text) of more than one segment: a warning."""
    if (segments := sms_segments(text)) <= 1:
        return []
    return [DefinitionProblem(
        str(path), None, None, "",
        f"SMS is {len(text)} characters when rendered for the sample lead: "
        f"{segments} segments, each billed ({_used_by(used_by)})", "warning",
    )]  # fmt: skip


def _email_parts(
    template: str,
    used_by: tuple[str, ...],
    rendered: dict[str, str | None],
    locale: str | None = None,
) -> list[_Part]:
    """The body parts that rendered (the default's, or the files of the variant in
    `locale`), with what compliance each lacks: the send activity's own check (an email
    lacking these would be refused at send time: an error now, in a variant too)."""
    html_file, text_file = (variant_path(p, locale) if locale else p for p in BODY_PARTS)
    html, text = rendered.get(html_file), rendered.get(text_file)
    email = RenderedEmail(subject="", html=html or "", text=text or "")
    parts = {
        "HTML": _Part(template, html_file, used_by),
        "text": _Part(template, text_file, used_by),
    }
    for missing in compliance_problems(email, SAMPLE_SENDER, UNSUBSCRIBE_URL):
        element = ADDRESS if "postal address" in missing else UNSUBSCRIBE
        parts["HTML" if "HTML" in missing else "text"].lacks[element] = missing
    return [part for part in parts.values() if rendered.get(part.part) is not None]


def _used_by(users: list[str]) -> str:
    return f"used by {', '.join(sorted(set(users)))}"


def _files_exist(templates_dir: Path, channel: str, template: str) -> bool:
    if channel == "email":
        return all((templates_dir / "email" / template / part).is_file() for part in EMAIL_PARTS)
    return (templates_dir / "sms" / f"{template}.txt").is_file()


def _template_location(templates_dir: Path, exc: TemplateError) -> tuple[str, int | None]:
    """Locate a template error in its own file: syntax errors carry it, render errors
    are found in the traceback, where Jinja2 puts the template's file and line."""
    file, line = getattr(exc, "filename", None), getattr(exc, "lineno", None)
    if file is None:
        roots = (str(templates_dir.resolve()), str(templates_dir))
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename.startswith(roots):
                file, line = frame.filename, frame.lineno
                break
    return file or str(templates_dir), line


# --- compliance: the postal address and the unsubscribe link, reported where they belong ------


def _compliance(sources: _Sources, parts: list[_Part]) -> list[DefinitionProblem]:
    """One problem per place to fix, so that a footer shared by twenty emails is one error:

    1. the shared footer or layout the part gets its footer from: a partial reached through
       include, extends or import that has the other element but not this one;
    2. else a shared layout or partial the part is built on (extends, include) when every
       email built on it (two or more) lacks the element: their common cause;
    3. else the email's own file.
    """
    built_on: dict[str, list[_Part]] = defaultdict(list)
    for part in parts:
        for name in sources.reached(part, outputs_only=True):
            built_on[name].append(part)
    grouped: dict[tuple[_Where, str, str, bool], list[_Part]] = defaultdict(list)
    for part in parts:
        for element, missing in part.lacks.items():
            where = _carrier(sources, part, element) or _common_cause(
                sources, part, element, built_on
            )
            shared = where is not None
            where = where or sources.own_footer(part.name, element)
            grouped[where, element, missing, shared].append(part)
    problems = []
    for (where, element, missing, shared), group in grouped.items():
        users = [user for part in group for user in part.used_by]
        fix = f"add {{{{ {element} }}}}"
        if shared:
            emails = ", ".join(sorted({part.email for part in group}))
            message = f"{missing}: {fix} here, in the footer of every email built on it " \
                      f"(emails {emails}; {_used_by(users)})"  # fmt: skip
        else:
            message = f"{missing}: {fix}, or use the shared footer ({_used_by(users)})"
        problems.append(DefinitionProblem(where.file, where.line, where.column, element, message))
    return problems


def _carrier(sources: _Sources, part: _Part, element: str) -> _Where | None:
    """The nearest shared template with a footer (one element) that lacks `element`."""
    for name in sources.reached(part, outputs_only=False):
        found = sources.elements(name)
        if found and element not in found:
            return sources.where(name, found)
    return None


def _common_cause(
    sources: _Sources, part: _Part, element: str, built_on: dict[str, list[_Part]]
) -> _Where | None:
    """A layout or partial with no footer at all, which every email built on it lacks."""
    for name in sources.reached(part, outputs_only=True):
        others = built_on[name]
        if len(others) > 1 and all(element in other.lacks for other in others):
            return sources.end_of(name)
    return None


@dataclass(frozen=True)
class _Where:
    file: str
    line: int | None = None
    column: int | None = None


class _Sources:
    """The email templates' sources, parsed once per run, and what each refers to."""

    def __init__(self, env: Environment, templates_dir: Path):
        self.env, self.templates_dir = env, templates_dir
        self._parsed: dict[str, tuple[nodes.Template | None, str, list[str]]] = {}

    def parse(self, name: str) -> tuple[nodes.Template | None, str, list[str]]:
        if name not in self._parsed:
            try:
                source, filename, _uptodate = self.env.loader.get_source(self.env, name)
                tree = self.env.parse(source, name, filename)
                self._parsed[name] = tree, filename or name, source.splitlines()
            except TemplateError:  # not found or not valid: reported when rendered
                self._parsed[name] = None, str(self.templates_dir / name), []
        return self._parsed[name]

    def reached(self, part: _Part, outputs_only: bool) -> list[str]:
        """The shared templates `part` is built from, nearest first: through extends and
        include (what adds to its output), and also import unless `outputs_only`."""
        kinds = (nodes.Extends, nodes.Include)
        if not outputs_only:
            kinds += (nodes.Import, nodes.FromImport)
        seen, queue, out = {part.name}, [part.name], []
        while queue:
            tree = self.parse(queue.pop(0))[0]
            for node in tree.find_all(kinds) if tree is not None else ():
                for target in _template_names(node.template):
                    if target not in seen:
                        seen.add(target)
                        queue.append(target)
                        if not target.startswith(f"email/{part.email}/"):
                            out.append(target)
        return out

    def elements(self, name: str) -> dict[str, tuple[int, int | None]]:
        """The compliance elements a template refers to, each at its first line and column."""
        tree, _filename, lines = self.parse(name)
        found: dict[str, tuple[int, int | None]] = {}
        for node in tree.find_all((nodes.Name, nodes.Getattr, nodes.Getitem)) if tree else ():
            key = None
            if isinstance(node, nodes.Name) and node.name == "unsubscribe_url":
                key = UNSUBSCRIBE
            elif isinstance(node, nodes.Getattr | nodes.Getitem) and _is_address(node):
                key = ADDRESS
            if key is not None and (key not in found or node.lineno < found[key][0]):
                column = lines[node.lineno - 1].find(key.rsplit(".", 1)[-1])
                found[key] = (node.lineno, column + 1 if column >= 0 else None)
        return found

    def where(self, name: str, found: dict[str, tuple[int, int | None]]) -> _Where:
        """At the first element found: where the footer is."""
        return _Where(self.parse(name)[1], *min(found.values(), key=lambda at: at[0]))

    def end_of(self, name: str) -> _Where:
        """A layout with no footer at all: at its last line, where a footer goes."""
        _tree, filename, lines = self.parse(name)
        last = max((i for i, line in enumerate(lines, 1) if line.strip()), default=None)
        return _Where(filename, last, 1 if last else None)

    def own_footer(self, name: str, element: str) -> _Where:
        """The email's own file, at its footer (the other element) if it has one."""
        found = {k: v for k, v in self.elements(name).items() if k != element}
        return self.where(name, found) if found else _Where(self.parse(name)[1])


def _is_address(node: nodes.Getattr | nodes.Getitem) -> bool:
    if isinstance(node, nodes.Getattr):
        attribute = node.attr
    else:
        attribute = node.arg.value if isinstance(node.arg, nodes.Const) else None
    sender = isinstance(node.node, nodes.Name) and node.node.name == "sender"
    return sender and attribute == "postal_address"


def _template_names(node: nodes.Expr) -> list[str]:
    """The constant template names an include/extends/import names (a list: any of them)."""
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, nodes.Const) and isinstance(node.value, list | tuple):
        return [v for v in node.value if isinstance(v, str)]
    if isinstance(node, nodes.List | nodes.Tuple):
        names = [item.value for item in node.items if isinstance(item, nodes.Const)]
        return [n for n in names if isinstance(n, str)]
    return []
