"""Load a definitions directory into typed models, reporting every problem at once.

Layout of a definitions directory (the repository root by default):

    sequences/*.yaml     one sequence per file
    segments.yaml        rules choosing a sequence per lead (first match wins) and a default
    scoring.yaml         scoring models: fit and engagement rules, decay, stages and gates
    sales.yaml           the sales reps leads are handed to
    delivery.yaml        optional: send windows (quiet hours), frequency caps, consent
    forms.yaml           optional: the website's forms (POST /forms/{id})
    templates/email/<name>/{subject.txt,body.html,body.txt}
    templates/sms/<name>.txt
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from models.definition_set import Definitions
from models.definitions import (
    BranchStep,
    DeliveryFile,
    EmailStep,
    SalesTeam,
    Segments,
    Sequence,
    SmsStep,
    SplitStep,
    Step,
    WaitForStep,
    _LocatedValueError,
)
from models.forms import FormBook
from models.jinja import SAMPLE_LEAD, ConditionError, compile_condition, evaluate_condition
from models.scoring_model import ScoringBook
from models.yaml_source import DefinitionError, DefinitionProblem, LocatedYaml, load_located
from scoring.engine import score, stage_context

M = TypeVar("M", bound=BaseModel)

EMAIL_PARTS = ("subject.txt", "body.html", "body.txt")
STEP_TYPES = ("email", "sms", "wait", "wait_for", "branch", "split", "exit")
# `nurture experiments plan` is a command: an experiment of that name could not be shown.
RESERVED_EXPERIMENTS = ("plan",)
# A segment holding out more than this share leaves most of its leads without nurture.
LARGE_HOLDOUT = 50


def load_definitions(root: Path | str) -> Definitions:
    """Load and cross-check everything under `root`; raise DefinitionError listing all errors."""
    definitions, problems = check_definitions(root)
    errors = [p for p in problems if p.severity == "error"]
    if errors or definitions is None:
        raise DefinitionError(errors)
    return definitions


def check_definitions(root: Path | str) -> tuple[Definitions | None, list[DefinitionProblem]]:
    """Load what can be loaded and return it with every problem (errors and warnings)."""
    inspection = inspect_definitions(root)
    return inspection.definitions, inspection.problems


@dataclass
class Inspection:
    """Everything `inspect_definitions` found. `definitions` is None if any file failed;
    `sends` still lists every send step that could be read, valid steps of a broken
    sequence included, so that `nurture validate` checks their templates in the same run."""

    root: Path
    definitions: Definitions | None
    problems: list[DefinitionProblem]
    sends: list[SendStep]
    # Where each valid sequence (by id) and segments.yaml were read from: a problem found
    # later (the database checks of `nurture validate`) is located in them too.
    sources: dict[str, LocatedYaml] = field(default_factory=dict)
    segments_source: LocatedYaml | None = None

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"


@dataclass(frozen=True)
class SendStep:
    sequence: str
    step: str
    channel: str
    template: str


def inspect_definitions(root: Path | str) -> Inspection:
    """Load every file on its own and cross-check what loaded: one broken file never hides
    the problems of the others (objects that failed are left out of the cross-checks that
    need them, so they cause no follow-on errors)."""
    root = Path(root)
    problems: list[DefinitionProblem] = []
    sequences, broken, sends, sources = _load_sequences(root, problems)
    problems += _check_experiment_names(sequences, sources)

    segments = _load_model(root / "segments.yaml", Segments, problems)
    if segments is not None:
        problems += _check_segments(*segments, sequences, broken)
    scoring = _load_model(root / "scoring.yaml", ScoringBook, problems)
    if scoring is not None:
        problems += _check_scoring(*scoring)
        if segments is not None:
            problems += _check_segment_models(*segments, scoring[0])
    sales = _load_model(root / "sales.yaml", SalesTeam, problems)
    if sales is not None:
        known_segments = None
        if segments is not None:
            known_segments = [s.id for s in segments[0].segments] + [segments[0].default.id]
        problems += _check_sales(*sales, known_segments, sequences, broken)
        problems += _check_reply_owners(sequences, sources, sales[0])
    delivery: tuple[DeliveryFile, Any] | None = (DeliveryFile(), None)
    if (root / "delivery.yaml").exists():  # optional: the defaults otherwise
        delivery = _load_model(root / "delivery.yaml", DeliveryFile, problems)
    forms = _load_forms(root, sequences, broken, problems)

    segments_source = segments[1] if segments is not None else None
    if segments is None or scoring is None or sales is None or delivery is None or forms is None:
        return Inspection(root, None, problems, sends, sources, segments_source)
    send_policy, consent = delivery[0].policies()
    definitions = Definitions(
        root, sequences, segments[0], scoring[0], sales[0], send_policy, forms, consent=consent
    )
    definitions.warnings = [p for p in problems if p.severity != "error"]
    return Inspection(root, definitions, problems, sends, sources, segments_source)


def _load_forms(
    root: Path, sequences: dict[str, Sequence], broken: set[str], problems: list[DefinitionProblem]
) -> FormBook | None:
    """forms.yaml (optional: no forms otherwise), each form's sequence checked."""
    if not (root / "forms.yaml").exists():
        return FormBook()
    loaded = _load_model(root / "forms.yaml", FormBook, problems)
    if loaded is None:
        return None
    book, source = loaded
    for index, form in enumerate(book.forms):
        if form.sequence and form.sequence not in sequences and form.sequence not in broken:
            problems.append(source.problem(
                ("forms", index, "sequence"),
                f"no sequence {form.sequence!r} (known: {', '.join(sorted(sequences))})",
            ))  # fmt: skip
    return book


def _load_sequences(
    root: Path, problems: list[DefinitionProblem]
) -> tuple[dict[str, Sequence], set[str], list[SendStep], dict[str, LocatedYaml]]:
    """The valid sequences; the names of the broken ones (by file name and by the id they
    declare, so that a segment naming one is not also an error); every send step; and
    the file each valid sequence was read from."""
    sequences: dict[str, Sequence] = {}
    sources: dict[str, LocatedYaml] = {}
    broken: set[str] = set()
    sends: list[SendStep] = []
    sequence_files = sorted((root / "sequences").glob("*.yaml"))
    if not sequence_files:
        problems.append(DefinitionProblem(str(root / "sequences"), None, None, "", "no *.yaml"))
    for path in sequence_files:
        source = _load_source(path, problems)
        sequence = _validate(source, Sequence, problems) if source is not None else None
        if sequence is None:
            broken.add(path.stem)
            if source is not None:
                problems += _check_readable_steps(root, source, broken, sends)
            continue
        if sequence.id in sequences:
            problems.append(
                source.problem(("id",), f"sequence id {sequence.id!r} is also used by another file")
            )
            continue
        sequences[sequence.id] = sequence
        sources[sequence.id] = source
        sends += [SendStep(sequence.id, *send) for send in sequence.templates()]
        problems += _check_sequence(root, sequence, source)
    return sequences, broken, sends, sources


def _check_readable_steps(
    root: Path, source: LocatedYaml, broken: set[str], sends: list[SendStep]
) -> list[DefinitionProblem]:
    """A sequence that failed validation: its errors are already reported, but each step
    that is valid on its own still has its template checked (and rendered by validate)."""
    data = source.data if isinstance(source.data, dict) else {}
    sequence_id = data.get("id") if isinstance(data.get("id"), str) else source.path.stem
    broken.add(sequence_id)
    steps = data.get("steps") if isinstance(data.get("steps"), list) else []
    problems: list[DefinitionProblem] = []
    for index, raw in enumerate(steps):
        try:
            step = _STEP.validate_python(raw)
        except ValidationError:
            continue  # reported with the sequence
        if isinstance(step, EmailStep | SmsStep):
            sends.append(SendStep(sequence_id, step.id, step.type, step.template))
            problems += _check_send_step(root, index, step, source)
    return problems


_STEP: TypeAdapter[Step] = TypeAdapter(Step)


def _load_model(
    path: Path, model: type[M], problems: list[DefinitionProblem]
) -> tuple[M, LocatedYaml] | None:
    source = _load_source(path, problems)
    if source is None:
        return None
    loaded = _validate(source, model, problems)
    return None if loaded is None else (loaded, source)


def _load_source(path: Path, problems: list[DefinitionProblem]) -> LocatedYaml | None:
    if not path.is_file():
        problems.append(DefinitionProblem(str(path), None, None, "", "file is missing"))
        return None
    try:
        return load_located(path)
    except DefinitionError as exc:
        problems += exc.problems
        return None


def _validate(source: LocatedYaml, model: type[M], problems: list[DefinitionProblem]) -> M | None:
    if not isinstance(source.data, dict):
        problems.append(source.problem((), "expected a mapping at the top of the file"))
        return None
    try:
        return model.model_validate(source.data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = _data_loc(source.data, error["loc"])
            if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "type")
            message = error["msg"].removeprefix("Value error, ")
            cause = (error.get("ctx") or {}).get("error")
            if isinstance(cause, _LocatedValueError):
                loc = (*loc, *cause.loc)
            problems.append(source.problem(loc, message))
        return None


def _data_loc(data: Any, loc: tuple) -> tuple:
    """Map a pydantic `loc` onto the data, dropping union tags (`steps.2.wait.duration`)."""
    path: list = []
    node = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and part not in STEP_TYPES:
            path.append(part)  # a missing field: name it, located at its parent
            break
    return tuple(path)


def _check_sequence(root: Path, sequence: Sequence, source: LocatedYaml) -> list[DefinitionProblem]:
    problems: list[DefinitionProblem] = []
    for index, step in enumerate(sequence.steps):
        if isinstance(step, EmailStep | SmsStep):
            problems += _check_send_step(root, index, step, source)
        elif isinstance(step, BranchStep):
            try:
                compile_condition(step.condition)
            except ConditionError as exc:
                problems.append(source.problem(("steps", index, "if"), str(exc)))
    for index, goal in enumerate(sequence.goals):
        try:
            compile_condition(goal.when)
        except ConditionError as exc:
            problems.append(source.problem(("goals", index, "when"), str(exc)))
    problems += _check_reachability(sequence, source)
    problems += _check_splits(sequence, source)
    problems += _check_reply_paths(sequence, source)
    return problems


REPLIES = ("email.reply", "sms.reply")


def _check_reply_paths(sequence: Sequence, source: LocatedYaml) -> list[DefinitionProblem]:
    """With `on_reply: exit` a reply ends the sequence before any step can act on it: a
    step waiting for one, or a branch asking for one, never takes that path."""
    if sequence.on_reply != "exit":
        return []
    problems = []
    for index, step in enumerate(sequence.steps):
        if isinstance(step, WaitForStep) and step.event in REPLIES:
            where, what = ("steps", index, "event"), f"waits for {step.event}"
        elif isinstance(step, BranchStep) and any(kind in step.condition for kind in REPLIES):
            where, what = ("steps", index, "if"), "asks whether the lead replied"
        else:
            continue
        problems.append(source.problem(where, (
            f"step {step.id!r} {what}, but a reply ends this sequence first (on_reply: exit, "
            "the default): set `on_reply: continue` on the sequence for this step to act "
            "on it"), severity="warning"))  # fmt: skip
    return problems


def _check_reply_owners(
    sequences: dict[str, Sequence], sources: dict[str, LocatedYaml], team: SalesTeam
) -> list[DefinitionProblem]:
    """`notify_owner: true` with no active rep in sales.yaml: nobody could be told."""
    if any(rep.active for rep in team.reps):
        return []
    return [
        sources[sequence.id].problem(("notify_owner",), (
            "replies are to be forwarded to the lead's owner, but sales.yaml has no active "
            "rep: each reply will be recorded as told to nobody"), severity="warning")
        for sequence in sequences.values() if sequence.notify_owner and sequence.id in sources
    ]  # fmt: skip


def _check_splits(sequence: Sequence, source: LocatedYaml) -> list[DefinitionProblem]:
    """Each split's experiment: not a reserved name; a `winner` said to end it."""
    problems: list[DefinitionProblem] = []
    for index, step in enumerate(sequence.steps):
        if not isinstance(step, SplitStep):
            continue
        name = sequence.experiment_of(step)
        if name in RESERVED_EXPERIMENTS:
            problems.append(source.problem(
                ("steps", index, "experiment"),
                f"experiment {name!r} is a reserved name (`nurture experiments {name}` is a "
                "command): choose another",
            ))  # fmt: skip
        if step.winner is not None:
            problems.append(source.problem(
                ("steps", index, "winner"),
                f"experiment {name} has ended: leads not yet assigned take arm {step.winner}; "
                "remove the split once every assigned lead has finished",
                severity="warning",
            ))  # fmt: skip
    return problems


def _check_experiment_names(
    sequences: dict[str, Sequence], sources: dict[str, LocatedYaml]
) -> list[DefinitionProblem]:
    """An experiment's name is its key (its leads' arms are stored under it): two splits
    sharing one would mix their leads. The second one found (file order) is the error."""
    problems: list[DefinitionProblem] = []
    first: dict[str, tuple[Sequence, str, LocatedYaml, tuple]] = {}
    for sequence_id, sequence in sequences.items():
        source = sources[sequence_id]
        for index, step in enumerate(sequence.steps):
            if not isinstance(step, SplitStep):
                continue
            name, loc = sequence.experiment_of(step), ("steps", index, "experiment")
            if name not in first:
                first[name] = (sequence, step.id, source, loc)
                continue
            other, other_step, other_source, other_loc = first[name]
            line, _column = other_source.position(other_loc)
            where = f"sequences/{other_source.path.name}" + (f":{line}" if line else "")
            problems.append(source.problem(
                loc,
                f"experiment {name!r} is already the experiment of step {other_step!r} of "
                f"sequence {other.id!r} ({where}): give this split its own `experiment:` name",
            ))  # fmt: skip
    return problems


def _check_send_step(
    root: Path, index: int, step: EmailStep | SmsStep, source: LocatedYaml
) -> list[DefinitionProblem]:
    """The template files a send step needs exist."""
    if step.type == "email":
        parts = [f"templates/email/{step.template}/{part}" for part in EMAIL_PARTS]
        what = "email template"
    else:
        parts, what = [f"templates/sms/{step.template}.txt"], "SMS template"
    return [
        source.problem(("steps", index, "template"), f"{what} {step.template!r} has no {part}")
        for part in parts
        if not (root / part).is_file()
    ]


def _check_reachability(sequence: Sequence, source: LocatedYaml) -> list[DefinitionProblem]:
    """Warn about steps no path reaches; error on loops that never wait."""
    problems: list[DefinitionProblem] = []
    index_of = {step.id: i for i, step in enumerate(sequence.steps)}

    reached: set[str] = set()
    frontier = [sequence.steps[0].id]
    while frontier:
        current = frontier.pop()
        if current in reached:
            continue
        reached.add(current)
        frontier += sequence.successors(current)
    for step in sequence.steps:
        if step.id not in reached:
            problems.append(
                source.problem(
                    ("steps", index_of[step.id], "id"),
                    f"step {step.id!r} can never be reached",
                    severity="warning",
                )
            )

    # A cycle made only of non-waiting steps would send or spin without end.
    instant = {s.id for s in sequence.steps if s.type not in ("wait", "wait_for")}

    def cycle_from(start: str) -> bool:
        stack, seen = [start], set()
        while stack:
            node = stack.pop()
            for nxt in sequence.successors(node):
                if nxt == start:
                    return True
                if nxt in instant and nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    for step_id in sorted(instant & reached, key=index_of.get):
        if cycle_from(step_id):
            problems.append(
                source.problem(
                    ("steps", index_of[step_id], "id"),
                    f"step {step_id!r} is on a loop with no wait, which would never pause",
                )
            )
            break
    return problems


def _check_segments(
    segments: Segments, source: LocatedYaml, sequences: dict[str, Sequence], broken: set[str]
) -> list[DefinitionProblem]:
    problems: list[DefinitionProblem] = []
    for index, segment in enumerate(segments.segments):
        try:
            compile_condition(segment.when)
        except ConditionError as exc:
            problems.append(source.problem(("segments", index, "when"), str(exc)))
        if segment.sequence not in sequences and segment.sequence not in broken:
            problems.append(
                source.problem(
                    ("segments", index, "sequence"),
                    f"no sequence {segment.sequence!r} (known: {', '.join(sorted(sequences))})",
                )
            )
    if segments.default.sequence not in sequences and segments.default.sequence not in broken:
        problems.append(
            source.problem(
                ("default", "sequence"),
                f"no sequence {segments.default.sequence!r} (known: {', '.join(sorted(sequences))})",  # noqa: E501
            )
        )
    return problems + _check_holdouts(segments, source)


def _check_holdouts(segments: Segments, source: LocatedYaml) -> list[DefinitionProblem]:
    """A holdout measures what nurture adds; a large one keeps most leads from it."""
    located = [(("segments", i, "holdout"), s) for i, s in enumerate(segments.segments)]
    located.append((("default", "holdout"), segments.default))
    return [
        source.problem(
            loc,
            f"segment {segment.id} holds out {segment.holdout:g}% of its leads: most of them "
            "are never nurtured (a holdout of 5-10% is usually enough to measure the effect)",
            severity="warning",
        )
        for loc, segment in located
        if segment.holdout > LARGE_HOLDOUT
    ]


def _check_segment_models(
    segments: Segments, source: LocatedYaml, scoring: ScoringBook
) -> list[DefinitionProblem]:
    problems: list[DefinitionProblem] = []
    named = [(("segments", i, "scoring_model"), s.scoring_model)
             for i, s in enumerate(segments.segments)]  # fmt: skip
    named.append((("default", "scoring_model"), segments.default.scoring_model))
    for loc, name in named:
        if name is not None and name not in scoring.models:
            problems.append(source.problem(
                loc, f"no scoring model {name!r} in scoring.yaml "
                f"(models: {', '.join(scoring.models)})",
            ))  # fmt: skip
    return problems


def _check_scoring(scoring: ScoringBook, source: LocatedYaml) -> list[DefinitionProblem]:
    """Evaluate every expression once on a sample lead, so a misspelt name is an error
    here, not a stage that silently never holds."""
    problems: list[DefinitionProblem] = []
    for name, model in scoring.models.items():
        card = score(model, SAMPLE_LEAD, [], _SAMPLE_MOMENT)
        card.predicted = 0.5  # as if a predictive model were active: `predicted` is known
        context = stage_context(card, SAMPLE_LEAD)
        expressions = [
            (("fit", "rules", i, "when"), rule.when, {"lead": context["lead"]})
            for i, rule in enumerate(model.fit.rules) if rule.when
        ]  # fmt: skip
        for stage_name, stage in model.stages.ladder():
            for key in ("when", "recycle_when"):
                if getattr(stage, key):
                    expressions.append(((stage_name, key), getattr(stage, key), context))
            for criterion, expression in stage.gate.items():
                expressions.append(((stage_name, "gate", criterion), expression, context))
        for loc, expression, names in expressions:
            if loc[0] != "fit":
                loc = ("stages", *loc)
            try:
                evaluate_condition(expression, names)
            except ConditionError as exc:
                problems.append(source.problem(("models", name, *loc), str(exc)))
        for index, rule in enumerate(model.engagement.rules):
            for other in model.engagement.rules[:index]:
                if set(rule.event) <= set(other.event) and not other.where:
                    problems.append(source.problem(
                        ("models", name, "engagement", "rules", index, "id"),
                        f"rule {rule.id!r} never counts: {other.id!r} above it takes every "
                        f"{', '.join(rule.event)} first (put specific rules first)",
                        severity="warning",
                    ))  # fmt: skip
                    break
    return problems


_SAMPLE_MOMENT = datetime(2026, 1, 1, tzinfo=UTC)


def _check_sales(
    team: SalesTeam,
    source: LocatedYaml,
    segment_ids: list[str] | None,
    sequences: dict[str, Sequence],
    broken: set[str],
) -> list[DefinitionProblem]:
    """Cross-check sales.yaml: every rep, pool, segment and sequence it names exists."""
    problems = _check_reps(team, source, segment_ids)
    problems += _check_pools(team, source)
    problems += _check_routing(team, source, segment_ids)
    pools = ", ".join(team.pool_ids)
    if team.fallback_pool is not None and team.fallback_pool not in team.pool_ids:
        problems.append(source.problem(
            ("fallback_pool",), f"no pool {team.fallback_pool!r} (pools: {pools})"
        ))  # fmt: skip
    sequence = team.recycle.sequence
    if sequence is not None and sequence not in sequences and sequence not in broken:
        problems.append(source.problem(
            ("recycle", "sequence"),
            f"no sequence {sequence!r} (known: {', '.join(sorted(sequences))})",
        ))  # fmt: skip
    return problems


def _check_reps(
    team: SalesTeam, source: LocatedYaml, segment_ids: list[str] | None
) -> list[DefinitionProblem]:
    """sales.yaml's reps: unique ids, known segments, at least one active."""
    problems: list[DefinitionProblem] = []
    rep_ids = [rep.id for rep in team.reps]
    for index, rep_id in enumerate(rep_ids):
        if rep_id in rep_ids[:index]:
            problems.append(source.problem(("reps", index, "id"), f"duplicate rep id {rep_id!r}"))
    if segment_ids is not None:
        for index, rep in enumerate(team.reps):
            for position, segment in enumerate(rep.segments):
                if segment not in segment_ids:
                    problems.append(source.problem(
                        ("reps", index, "segments", position),
                        f"no segment {segment!r} in segments.yaml "
                        f"(segments: {', '.join(segment_ids)})",
                    ))  # fmt: skip
    if not any(rep.active for rep in team.reps):
        problems.append(source.problem(
            ("reps",), "no rep is active: no lead can be handed to sales", severity="warning"
        ))  # fmt: skip
    return problems


def _check_pools(team: SalesTeam, source: LocatedYaml) -> list[DefinitionProblem]:
    """sales.yaml's pools: each names known reps, once each, and (warned) an active one."""
    problems: list[DefinitionProblem] = []
    rep_ids = [rep.id for rep in team.reps]
    active = {rep.id for rep in team.reps if rep.active}
    for pool, members in team.pools.items():
        for position, rep_id in enumerate(members):
            if rep_id not in rep_ids:
                problems.append(source.problem(
                    ("pools", pool, position),
                    f"pool {pool!r} names {rep_id!r}, who is not a rep "
                    f"(reps: {', '.join(rep_ids)})",
                ))  # fmt: skip
            elif rep_id in members[:position]:
                problems.append(source.problem(
                    ("pools", pool, position), f"{rep_id!r} is in pool {pool!r} twice"
                ))  # fmt: skip
        # No warning when nobody at all is active: _check_reps already said so.
        if active and not active & set(members) and set(members) <= set(rep_ids):
            problems.append(source.problem(
                ("pools", pool),
                f"pool {pool!r} has no active rep: its leads go to the fallback pool",
                severity="warning",
            ))  # fmt: skip
    return problems


def _check_routing(
    team: SalesTeam, source: LocatedYaml, segment_ids: list[str] | None
) -> list[DefinitionProblem]:
    """sales.yaml's routing rules: known pools and segments, conditions that evaluate on
    the sample lead, and (warned) none shadowed by a rule above that takes every lead."""
    problems: list[DefinitionProblem] = []
    pools = ", ".join(team.pool_ids)
    for index, rule in enumerate(team.routing):
        if rule.pool not in team.pool_ids:
            problems.append(source.problem(
                ("routing", index, "pool"), f"no pool {rule.pool!r} (pools: {pools})"
            ))  # fmt: skip
        if segment_ids is not None:
            for position, segment in enumerate(rule.segment):
                if segment not in segment_ids:
                    problems.append(source.problem(
                        ("routing", index, "segment", position),
                        f"no segment {segment!r} in segments.yaml "
                        f"(segments: {', '.join(segment_ids)})",
                    ))  # fmt: skip
        if rule.when:
            try:
                evaluate_condition(rule.when, {"lead": SAMPLE_LEAD})
            except ConditionError as exc:
                problems.append(source.problem(("routing", index, "when"), str(exc)))
        for earlier, other in enumerate(team.routing[:index], start=1):
            if other.matches_everyone:
                problems.append(source.problem(
                    ("routing", index, "pool"),
                    f"rule {index + 1} never matches: rule {earlier} above it takes every lead",
                    severity="warning",
                ))  # fmt: skip
                break
    return problems
