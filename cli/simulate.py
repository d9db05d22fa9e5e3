"""`nurture preview` and `nurture simulate`: try a sequence before a lead ever sees it.

Both read the definitions (NURTURE_DEFINITIONS, default .) and send nothing:
preview renders one message step; simulate runs the real workflow for one lead on
a time-skipping test server, in a temporary directory with its own database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(soft_wrap=True)  # colours only on a terminal (and never with NO_COLOR)
errors = Console(stderr=True, soft_wrap=True)

_KIND_STYLES = {
    "sent": "green",
    "deferred": "yellow",
    "skipped": "yellow",
    "failed": "red",
    "response": "cyan",
    "score": "",
    "decay": "dim",
    "stage": "magenta",
    "handoff": "bold red",
    "notified": "red",
    "reminded": "red",
    "reassigned": "red",
    "unanswered": "red",
    "finished": "bold",
    "goal": "bold green",
    "enrolled": "bold",
    "experiment": "blue",
}


def _definitions(settings):
    from models.yaml_source import DefinitionError
    from services.definitions import load_definitions

    try:
        return load_definitions(settings.definitions_dir)
    except DefinitionError as exc:
        for problem in exc.problems:
            errors.print(f"[red]error[/red] {escape(str(problem))}", highlight=False)
        errors.print("fix the definitions above (see `nurture validate`)")
        raise typer.Exit(1) from None


def _usage(message: str) -> typer.Exit:
    errors.print(message, markup=False, highlight=False)
    return typer.Exit(2)


def _read_lead(lead: Path | None) -> dict | None:
    from services.preview import LeadError, read_lead_file

    if lead is None:
        return None
    try:
        return read_lead_file(lead)
    except LeadError as exc:
        raise _usage(f"bad lead file:\n{exc}") from None


def preview(
    sequence: str = typer.Argument(..., help="the sequence's id (sequences/*.yaml)"),
    step: str = typer.Argument(..., help="the id of one of its email or SMS steps"),
    lead: Path = typer.Option(
        None,
        "--lead",
        metavar="FILE",
        help="a lead as JSON or YAML: the fields a lead arrives with (email, first_name, "
        "company, timezone, ...) [default: the sample lead]",
    ),
    html_out: Path = typer.Option(
        None,
        "--html-out",
        metavar="PATH",
        help="where to write an email's HTML "
        "[default: NURTURE_STATE_DIR/preview/SEQUENCE-STEP.html]",
    ),
    locale: str = typer.Option(
        None,
        "--locale",
        metavar="TAG",
        help="write it in this locale (de-AT): the templates' variant by the fallback chain "
        "de-AT, de, default, and its dates and numbers [default: the lead's, else "
        "NURTURE_DEFAULT_LOCALE]",
    ),
    open_html: bool = typer.Option(False, "--open", help="open the email's HTML in a browser"),
    as_json: bool = typer.Option(False, "--json", help="the preview as JSON (HTML included)"),
) -> None:
    """Render one message step for a sample lead or a given one: an email's subject, text
    and HTML (written to a file), an SMS with its characters and segments. Nothing is sent.

    The sender comes from the NURTURE_SENDER_* settings; the unsubscribe link is a
    placeholder.

    Examples:
      nurture preview saas_trial welcome
      nurture preview saas_trial welcome --lead lead.yaml --open
      nurture preview saas_trial welcome --locale de-AT
      nurture preview general checkin --json

    Exit codes: 0 rendered; 1 the template fails for this lead, the HTML cannot be
    written, or the definitions have errors; 2 bad usage (unknown sequence or step, a
    step that sends nothing, a bad lead file, an unknown locale).
    """
    from infra.settings import get_settings

    settings = get_settings()
    result = _render_preview(settings, sequence, step, lead, locale)
    html_path = _write_preview_html(result, settings, sequence, step, html_out, open_html)
    if as_json:
        data = result.to_dict() | {"html_path": str(html_path) if html_path else None}
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    _print_preview(result, sequence, step, html_path)


def _render_preview(settings, sequence: str, step: str, lead: Path | None, locale: str | None):
    """The step rendered for the lead; an unknown sequence or step, or a step that sends
    nothing, exits 2, a template that fails for this lead exits 1."""
    from jinja2 import TemplateError

    from services.preview import LeadError, PreviewError
    from services.preview import preview as render

    definitions = _definitions(settings)
    fields = _read_lead(lead)
    try:
        return render(
            definitions, sequence, step, fields, sender=settings.sender, locale=locale,
            default_locale=settings.default_locale,
        )  # fmt: skip
    except (PreviewError, LeadError) as exc:
        raise _usage(str(exc)) from None
    except TemplateError as exc:
        errors.print(
            f"[red]error[/red] template {escape(str(getattr(exc, 'name', '') or ''))} "
            f"failed for this lead: {escape(str(exc))}",
            highlight=False,
        )
        raise typer.Exit(1) from None


def _write_preview_html(
    result, settings, sequence: str, step: str, html_out: Path | None, open_html: bool
) -> Path | None:
    """Write an email's HTML (and open it with --open); None for an SMS, which has none."""
    import webbrowser

    if result.channel != "email":
        if html_out is not None or open_html:
            errors.print("an SMS has no HTML: --html-out and --open are ignored")
        return None
    html_path = html_out or settings.state_dir / "preview" / f"{sequence}-{step}.html"
    try:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(result.html or "", encoding="utf-8")
    except OSError as exc:
        errors.print(f"cannot write {html_path}: {exc.strerror or exc}", markup=False)
        raise typer.Exit(1) from None
    if open_html:
        webbrowser.open(html_path.resolve().as_uri())
    return html_path


def _print_preview(result, sequence: str, step: str, html_path: Path | None) -> None:
    from services.preview import describe_lead

    who = describe_lead(result.lead) + (" (sample lead)" if result.sample_lead else "")
    channel = "email" if result.channel == "email" else "SMS"
    console.print(
        f"[bold]{escape(sequence)} / {escape(step)}[/bold]: {channel} "
        f"(template {escape(result.template)}) for {escape(who)} in {escape(result.locale)}",
        highlight=False,
    )
    if result.channel == "email":
        _print_email(result, html_path)
    else:
        _print_sms(result)


def _print_email(result, html_path: Path | None) -> None:
    console.print(f"[bold]Subject:[/bold] {escape(result.subject or '')}", highlight=False)
    console.print()
    console.print(result.text, markup=False, highlight=False)
    console.print()
    console.print(f"HTML: {escape(str(html_path))}", highlight=False)


def _print_sms(result) -> None:
    """The text, then its characters and segments (more than one: each is billed)."""
    to = result.lead.get("phone") or "(no phone: an SMS would be skipped)"
    console.print(f"To: {escape(str(to))}", highlight=False)
    console.print()
    console.print(result.text, markup=False, highlight=False)
    console.print()
    style = "yellow" if (result.segments or 0) > 1 else "green"
    plural = "s" if result.segments != 1 else ""
    console.print(
        f"{result.characters} characters, [{style}]{result.segments} segment{plural}[/{style}] "
        f"({result.encoding})" + (", each billed" if (result.segments or 0) > 1 else ""),
        highlight=False,
    )


def simulate(
    sequence: str = typer.Argument(..., help="the sequence's id (sequences/*.yaml)"),
    lead: Path = typer.Option(
        None,
        "--lead",
        metavar="FILE",
        help="a lead as JSON or YAML (email, first_name, company, timezone, ...) "
        "[default: the sample lead]",
    ),
    responses: str = typer.Option(
        None,
        "--responses",
        metavar="SPEC",
        help="what the lead does and when, e.g. "
        "'2d: email.click step=welcome; 5d: page.view url=/pricing' "
        "(offsets 30m, 2h, 2d, 1w, 2d3h after enrollment)",
    ),
    days: int = typer.Option(
        None,
        "--days",
        metavar="N",
        min=1,
        help="simulate N days [default: the sequence's longest path plus a day, and on "
        "while sends are still held back]",
    ),
    start: str = typer.Option(
        "mon 10:00",
        "--start",
        metavar="WHEN",
        help="when the lead enrolls: a weekday and a time in the lead's time zone",
    ),
    as_json: bool = typer.Option(False, "--json", help="the timeline as JSON"),
) -> None:
    """Run the real workflow for one lead on a time-skipping Temporal test server and
    print its timeline: each message sent (or held back by quiet hours or a frequency
    cap), what the lead did, the score and stage after it, the handoff to sales, and a
    goal of the sequence met, which ends it ("goal trial met (...): sequence ended").

    Nothing outside the simulation is touched: it has its own temporary database and
    outbox, and ignores DATABASE_URL and the SendGrid, Twilio and CRM keys. The lead
    enrolls at --start in its own time zone, so the same run gives the same timeline.
    A response planned at the same moment as a step of the sequence comes just before
    it; one at 0 comes right after enrollment.

    Examples:
      nurture simulate saas_trial
      nurture simulate saas_trial --responses "1d: product.action; 3d: page.view url=/pricing"
      nurture simulate general --lead lead.yaml --days 60 --json

    Exit codes: 0 simulated; 1 the simulation failed, or the definitions have errors;
    2 bad usage (unknown sequence, a bad --responses spec or lead file).
    """
    from infra.settings import get_settings

    settings = get_settings()
    definitions = _definitions(settings)
    fields, planned = _simulation_inputs(definitions, sequence, lead, responses, start)
    timeline = _run_simulation(definitions, sequence, fields, planned, days, start)
    if as_json:
        print(json.dumps(timeline.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_timeline(console, timeline)
    _leave(0)


def _simulation_inputs(
    definitions, sequence: str, lead: Path | None, responses: str | None, start: str
) -> tuple[dict | None, list]:
    """The lead's fields and the planned responses, every option checked before a test
    server is started: an unknown sequence or a bad lead file, --responses or --start
    exits 2 (a bad spec with a caret under where it went wrong)."""
    from services.simulate import SpecError, parse_responses, parse_start

    if sequence not in definitions.sequences:
        known = ", ".join(sorted(definitions.sequences))
        raise _usage(f"no sequence {sequence!r} (sequences: {known})")
    fields = _read_lead(lead)
    try:
        planned = parse_responses(responses or "")
    except SpecError as exc:
        line = exc.spec.replace("\n", " ")
        raise _usage(f"bad --responses: {exc}\n  {line}\n  {' ' * exc.position}^") from None
    try:
        parse_start(start)
    except ValueError as exc:
        raise _usage(f"bad --start: {exc}") from None
    return fields, planned


def _run_simulation(
    definitions, sequence: str, fields: dict | None, planned: list, days: int | None, start: str
):
    """The simulation's timeline; a simulation that fails leaves with exit code 1."""
    from services.simulate import SimulationError
    from services.simulate import simulate as run_simulation

    try:
        return asyncio.run(
            run_simulation(definitions, sequence, fields, planned, days, start=start)
        )
    except SimulationError as exc:
        errors.print(f"[red]simulation failed[/red]: {escape(str(exc))}", highlight=False)
        _leave(1)


def print_timeline(out: Console, timeline) -> None:
    from services.preview import describe_lead

    lead = timeline.lead
    started = timeline.started_at.astimezone(timeline.zone)
    out.print(
        f"[bold]{escape(timeline.sequence_id)}[/bold] for {escape(describe_lead(lead))} "
        f"({escape(str(lead.get('timezone')))}; segment {escape(timeline.segment)}, scoring "
        f"model {escape(timeline.scoring_model)}), enrolled {started:%a %Y-%m-%d %H:%M %Z}",
        highlight=False,
    )
    table = Table("when", "lead's time", "what", "score", "stage")
    for event in timeline.events:
        style = _KIND_STYLES.get(event.kind, "")
        what = escape(event.what)
        table.add_row(
            event.at,
            f"{event.local:%a %H:%M}",
            f"[{style}]{what}[/{style}]" if style else what,
            f"{event.score:.1f}",
            event.stage,
        )
    out.print(table)
    out.print(timeline.summary_line(), highlight=False, markup=False)


def _leave(code: int) -> NoReturn:
    """End the command. Run as a program, leave at once: the Temporal SDK's threads can
    abort the interpreter as it shuts down after a client was used (temporalio/sdk-python
    #300), which would turn a finished simulation's exit code into 134."""
    if sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)
