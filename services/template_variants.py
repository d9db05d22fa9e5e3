"""The templates' locale variants as files, for `nurture validate`: which a template has,
which of an email's parts a variant lacks, and which steps of a sequence lack a language
its other steps have. Each gap is a warning: the lead gets the default file, not nothing.

A variant carries its tag before the extension: `email/welcome/body.de.html`,
`sms/nudge.de-AT.txt` (models/locales.py has the fallback chain).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path, PurePosixPath

from models.locales import fallback_chain, split_variant, variant_path
from models.yaml_source import DefinitionProblem, LocatedYaml
from services.definitions import EMAIL_PARTS, SendStep

# locale -> the default files (relative to the templates directory) it has a variant of
Variants = dict[str, set[str]]


def default_files(channel: str, template: str) -> list[str]:
    if channel == "email":
        return [f"email/{template}/{part}" for part in EMAIL_PARTS]
    return [f"sms/{template}.txt"]


def variants(templates_dir: Path, channel: str, template: str) -> Variants:
    """The variants of a template's files, by locale."""
    defaults = set(default_files(channel, template))
    folder = templates_dir / PurePosixPath(next(iter(defaults))).parent
    found: Variants = defaultdict(set)
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        default, locale = split_variant(path.relative_to(templates_dir).as_posix())
        if locale is not None and default in defaults:
            found[locale].add(default)
    return dict(found)


def chosen_file(have: Variants, default: str, locale: str) -> str:
    """The file a lead in `locale` is sent for `default`: the fallback chain's first."""
    for tag in fallback_chain(locale):
        if default in have.get(tag, ()):
            return variant_path(default, tag)
    return default


def incomplete_variants(
    templates_dir: Path, template: str, have: Variants, used_by: str
) -> list[DefinitionProblem]:
    """An email variant without all three parts: its lead would get a subject in one
    language and a body in another. At the variant's first file, the field the one lacking."""
    problems = []
    for locale in sorted(have):
        first = min(variant_path(default, locale) for default in have[locale])
        for default in default_files("email", template):
            if chosen_file(have, default, locale) != default:
                continue
            lacking = PurePosixPath(variant_path(default, locale)).name
            problems.append(DefinitionProblem(
                str(templates_dir / first), None, None, lacking,
                f"the {locale} variant of email {template!r} has no {lacking}: a {locale} "
                f"lead gets {PurePosixPath(default).name}, in the default language ({used_by})",
                "warning",
            ))  # fmt: skip
    return problems


def sequence_gaps(
    templates_dir: Path, sends: list[SendStep], sources: dict[str, LocatedYaml]
) -> list[DefinitionProblem]:
    """A step of a sequence with no variant in a locale its other steps have: a lead in it
    would get that step in the default language. At the step's `template:`."""
    by_sequence: dict[str, list[SendStep]] = defaultdict(list)
    for send in sends:
        by_sequence[send.sequence].append(send)
    problems = []
    for sequence, steps in sorted(by_sequence.items()):
        if (source := sources.get(sequence)) is None:
            continue  # a broken sequence: its errors come first
        have = {send: variants(templates_dir, send.channel, send.template) for send in steps}
        locales = sorted({locale for found in have.values() for locale in found})
        for send in steps:
            missing = [locale for locale in locales if not _reaches(have[send], send, locale)]
            if missing:
                problems.append(_gap(source, sequence, send, missing))
    return problems


def _reaches(have: Variants, send: SendStep, locale: str) -> bool:
    """Whether a lead in `locale` gets any of the step's files in a variant."""
    defaults = default_files(send.channel, send.template)
    return any(chosen_file(have, default, locale) != default for default in defaults)


def _gap(source: LocatedYaml, sequence: str, send: SendStep, missing: list[str]):
    index = next(i for i, step in enumerate(source.data["steps"]) if step.get("id") == send.step)
    # A `de` variant serves `de-AT` leads too: name only what is to be added.
    missing = [tag for tag in missing if not set(fallback_chain(tag)[1:]) & set(missing)]
    defaults = default_files(send.channel, send.template)
    files = ", ".join(f"templates/{variant_path(default, missing[0])}" for default in defaults)
    return source.problem(
        ("steps", index, "template"),
        f"{send.channel} {send.template!r} has no {', '.join(missing)} variant, which other "
        f"steps of sequence {sequence!r} have: a {missing[0]} lead gets this step in the "
        f"default language (add {files})",
        "warning",
    )
