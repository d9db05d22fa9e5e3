"""Predictive models: `nurture train` and `nurture models list/show/activate/retire/
rollback/check` (docs/predictive.md).

`train` fits a model on the lead history and prints it beside the rules on the same test
period; it is stored as a `candidate` (or `refused`, saying why) and used by nothing
until `nurture models activate`. Exit codes: 0 done; 1 refused (a model worse than the
rules, an unknown fingerprint...); 2 bad usage or a history that cannot train a model.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Column, Table

from cli.common import console, errors, fail_on_definition_errors, load
from infra.settings import get_settings

models_app = typer.Typer(
    help="Predictive models: list, show, activate, retire, roll back, check for drift.",
    no_args_is_help=True,
)


# --- nurture train -----------------------------------------------------------------------------


def train(
    leads: Path = typer.Option(
        None, "--leads", metavar="FILE", exists=True, dir_okay=False,
        help="lead history as JSON Lines, as `nurture backtest --leads` takes",
    ),
    stored: bool = typer.Option(
        False, "--stored", help="the database's leads, customers by their won opportunities "
        "(the default)",
    ),
    synthetic: int = typer.Option(
        None, "--synthetic", metavar="N", min=1, help="train on N synthetic leads instead"
    ),
    seed: int = typer.Option(1, help="the synthetic leads' seed: same seed, same leads"),
    kind: str = typer.Option(
        None, help="logistic or boosted (default: scoring.yaml's predictive.kind)"
    ),
    test_fraction: float = typer.Option(
        0.2, min=0.05, max=0.5, help="the newest share of the leads kept as the test period"
    ),
    as_json: bool = typer.Option(False, "--json", help="the model and its figures as JSON"),
) -> None:  # fmt: skip
    """Train a predictive model (P(won within the horizon)) on the lead history and
    compare it with the rule-based score on the same, most recent, test period.

    Prints the training window, ROC AUC, PR AUC, Brier score, calibration error and
    precision/recall at MQL and SQL for the model and the rules, and both by decile. The
    model is stored as a candidate (activate it with `nurture models activate`), or, if
    it is worse than the rules or under predictive.min_auc, stored as refused and the
    command exits 1. Too little history: exit 2, nothing stored.

    Examples:
      nurture train
      nurture train --leads history.jsonl --kind boosted
      nurture train --synthetic 5000 --json
    """
    from services.audit import cli_actor
    from services.predictive_models import train_and_store
    from services.runtime import open_database

    if kind not in (None, "logistic", "boosted"):
        errors.print(f"--kind must be logistic or boosted, not {kind!r}", markup=False)
        raise typer.Exit(2)
    settings = get_settings()
    definitions = fail_on_definition_errors(lambda: load(settings))
    history, source = _history(settings, leads, stored, synthetic, seed)
    database = open_database(settings)
    try:
        stored_record, training = _train(
            lambda say: train_and_store(
                database.sessions, history, definitions, kind, test_fraction, cli_actor(), say
            )
        )
    finally:
        database.engine.dispose()
    if as_json:
        _print_training_json(stored_record, training)
    else:
        _print_training(stored_record, training, source)
    if training.refused:
        raise typer.Exit(1)


def _history(settings, leads: Path | None, stored: bool, synthetic: int | None, seed: int):
    """The history to learn from: the --leads file, --synthetic N leads, or (the default)
    the database's; two of them at once exits 2."""
    from cli.scoring import _backtest_history, _stored_history

    if sum((leads is not None, synthetic is not None, stored)) > 1:
        errors.print("give one of --leads FILE (your history), --stored (the database's, "
                     "the default) or --synthetic N (made-up leads)")  # fmt: skip
        raise typer.Exit(2)
    if leads is None and synthetic is None:
        return _stored_history(settings)
    return _backtest_history(leads, synthetic, seed)


def _train(run):
    """Run the training with its progress on stderr; too little history exits 2 (nothing
    stored), a segment rule failing on a lead of the history exits 1."""
    from models.jinja import ConditionError
    from scoring.predictive import TrainingError

    def say(message: str) -> None:
        errors.print(f"[dim]{escape(message)}[/dim]", highlight=False)

    try:
        return run(say)
    except TrainingError as exc:
        errors.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        errors.print("nothing was stored", highlight=False)
        raise typer.Exit(2) from None
    except ConditionError as exc:
        errors.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _print_training(record, training, source: str) -> None:
    summary = record.summary
    metrics = summary["metrics"]
    examples = summary["examples"]
    console.print(
        f"[bold]{summary['kind']}[/bold] model on {escape(source)}: trained on "
        f"{examples['training']:,} moments ({_day(summary['trained_from'])} to "
        f"{_day(summary['trained_to'])}), tested on {metrics['moments']:,} moments "
        f"({_day(summary['tested_from'])} to {_day(summary['tested_to'])}), "
        f"{metrics['won']:,} of them won within {summary['horizon_days']} days",
        highlight=False,
    )
    console.print(_comparison(metrics))
    console.print(_deciles(metrics))
    _print_verdict(record, training)


def _comparison(metrics: dict) -> Table:
    """Model and rules side by side on the test period."""
    from scoring.predictive import calibration_error

    model, rules = metrics["model"], metrics["rules"]
    table = Table("on the test period", "model", "rules", title_justify="left",
                  title="Model against the rules")  # fmt: skip
    for name, key, digits in (("ROC AUC", "roc_auc", 3), ("PR AUC", "pr_auc", 3),
                              ("Brier score", "brier", 4)):  # fmt: skip
        table.add_row(name, f"{model[key]:.{digits}f}", f"{rules[key]:.{digits}f}")
    table.add_row("calibration error", f"{calibration_error(model['deciles']):.4f}",
                  f"{calibration_error(rules['deciles']):.4f}")  # fmt: skip
    for stage in ("mql", "sql"):
        ours, theirs = model[f"at_{stage}"], rules[f"at_{stage}"]
        label = stage.upper()
        table.add_row(f"precision at {label}", f"{_rate(ours['precision'])} "
                      f"(p ≥ {ours['threshold']:.3f})", _rate(theirs["precision"]))  # fmt: skip
        table.add_row(f"recall at {label}", _rate(ours["recall"]), _rate(theirs["recall"]))
    return table


def _deciles(metrics: dict) -> Table:
    """Each side's moments ranked by its own score, in ten groups (1 = highest)."""
    table = Table(title="Calibration and lift by decile (1 = highest)", title_justify="left")
    for column in ("decile", "moments", "model predicted", "model actual", "model lift",
                   "rules actual", "rules lift"):  # fmt: skip
        table.add_column(column, justify="right")
    rules = {row["decile"]: row for row in metrics["rules"]["deciles"]}
    for row in metrics["model"]["deciles"]:
        theirs = rules.get(row["decile"], {})
        table.add_row(str(row["decile"]), f"{row['moments']:,}", _rate(row["predicted"]),
                      _rate(row["actual"]), f"{row['lift']:.2f}",
                      _rate(theirs.get("actual")), _lift(theirs.get("lift")))  # fmt: skip
    return table


def _print_verdict(record, training) -> None:
    """Stored as a candidate (and how to activate it), refused (why), or already known."""
    fingerprint = record.fingerprint
    if training.refused:
        console.print(f"[red]refused[/red]: {escape('; '.join(training.refused))}",
                      highlight=False)  # fmt: skip
        console.print(f"stored as {fingerprint} (status refused) for the record; "
                      "it cannot be activated", highlight=False)  # fmt: skip
    elif record.status == "candidate":
        console.print(f"stored as candidate {fingerprint}; activate it with: "
                      f"nurture models activate {fingerprint}", highlight=False)  # fmt: skip
    else:
        console.print(f"the same model as {fingerprint}, stored before (status "
                      f"{record.status})", highlight=False)  # fmt: skip


def _print_training_json(record, training) -> None:
    from services.json_output import dumps
    from services.predictive_models import describe

    data = describe(record) | {"metrics": record.summary["metrics"],
                               "refused": training.refused}  # fmt: skip
    print(dumps(data))


# --- nurture models ... ------------------------------------------------------------------------


def _database():
    from services.runtime import open_database

    return open_database(get_settings())


def _run(change, *args):
    """Run a model change; a refused one prints why and exits 1."""
    from services.audit import cli_actor
    from services.predictive_models import ModelError

    database = _database()
    try:
        return change(database.sessions, *args, cli_actor())
    except ModelError as exc:
        errors.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        database.engine.dispose()


@models_app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="the models as JSON")) -> None:
    """Every stored model, newest first: status, kind, training window, test ROC AUC of
    the model and of the rules.

    Example: nurture models list
    """
    from services.json_output import dumps
    from services.predictive_models import describe
    from services.predictive_models import list_models as read

    database = _database()
    try:
        with database.sessions() as session:
            rows = [describe(record) for record in read(session)]
    finally:
        database.engine.dispose()
    if as_json:
        print(dumps(rows))
        return
    if not rows:
        console.print("no models yet: train one with `nurture train`")
        return
    # Whole values, on one line each, in 80 columns: test ROC AUC of the model and rules.
    columns = [
        Column(name, no_wrap=True)
        for name in ("fingerprint", "status", "kind", "trained to", "AUC", "rules", "activated")
    ]
    table = Table(*columns, box=None, pad_edge=False)  # fmt: skip
    for row in rows:
        figures = row["metrics"]
        table.add_row(row["fingerprint"], row["status"], row["kind"], _day(row["trained_to"]),
                      _auc(figures, "model"), _auc(figures, "rules"),
                      _day(row["activated_at"]))  # fmt: skip
    console.print(table)


@models_app.command("show")
def show(
    fingerprint: str = typer.Argument(..., help="the model's fingerprint or its start"),
    as_json: bool = typer.Option(False, "--json", help="the model as JSON"),
) -> None:
    """One model: status, window, horizon, kind, features, library versions, its test
    figures beside the rules', who trained and who activated it.

    Example: nurture models show pm-5afdf68a
    """
    from services.json_output import dumps
    from services.predictive_models import ModelError, activated_by, describe, find

    database = _database()
    try:
        with database.sessions() as session:
            record = find(session, fingerprint)
            data = describe(record) | {"activated_by": activated_by(session, record.fingerprint)}
    except ModelError as exc:
        errors.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        database.engine.dispose()
    if as_json:
        print(dumps(data))
    else:
        _print_model(data)


def _print_model(data: dict) -> None:
    versions = ", ".join(f"{k} {v}" for k, v in (data["versions"] or {}).items())
    examples = data["examples"] or {}
    lines = [
        ("model", f"{data['fingerprint']} ({data['kind']})"),
        ("status", data["status"]),
        ("horizon", f"won within {data['horizon_days']} days"),
        ("trained on", f"{_day(data['trained_from'])} to {_day(data['trained_to'])}, "
                       f"{examples.get('training', 0):,} moments"),
        ("tested on", f"{_day(data['tested_from'])} to {_day(data['tested_to'])}, "
                      f"{examples.get('test', 0):,} moments, {examples.get('test_won', 0):,} won"),
        ("features", str(data["features"])),
        ("versions", versions),
        ("created", f"{_day(data['created_at'])} by {data['created_by'] or '-'}"),
        ("activated", f"{_day(data['activated_at'])} by {data['activated_by']}"
                      if data["activated_at"] else "never"),
    ]  # fmt: skip
    if data["retired_at"]:
        lines.append(("retired", _day(data["retired_at"])))
    for name, value in lines:
        console.print(f"{name:<11}{escape(value)}", highlight=False)
    for reason in data["refused"]:
        console.print(f"[red]refused[/red]: {escape(reason)}", highlight=False)
    table = Table("on the test period", "model", "rules")
    figures = data["metrics"]
    for name, key in (("ROC AUC", "roc_auc"), ("PR AUC", "pr_auc"), ("Brier score", "brier"),
                      ("calibration error", "calibration_error")):  # fmt: skip
        sides = (figures.get(side, {}).get(key) for side in ("model", "rules"))
        table.add_row(name, *(_number(value) for value in sides))
    console.print(table)


@models_app.command("activate")
def activate(
    fingerprint: str = typer.Argument(..., help="the model's fingerprint or its start"),
) -> None:
    """Make a model the one every worker predicts with (within 30 s); the active one goes
    back to candidate (`nurture models rollback` brings it back). A refused model cannot
    be activated.

    Example: nurture models activate pm-5afdf68a
    """
    from services.predictive_models import activate as change

    record = _run(change, fingerprint)
    console.print(f"activated {record.fingerprint}; undo with: nurture models rollback",
                  highlight=False)  # fmt: skip


@models_app.command("retire")
def retire(
    fingerprint: str = typer.Argument(..., help="the model's fingerprint or its start"),
) -> None:
    """Take a model out of use. Retiring the active model stops predictions until another
    is activated.

    Example: nurture models retire pm-5afdf68a
    """
    from services.predictive_models import retire as change

    record = _run(change, fingerprint)
    console.print(f"retired {record.fingerprint}", highlight=False)


@models_app.command("rollback")
def rollback() -> None:
    """Activate again the model that was active before the current one.

    Example: nurture models rollback
    """
    from services.predictive_models import rollback as change

    record = _run(change)
    console.print(f"rolled back: {record.fingerprint} is active again", highlight=False)


@models_app.command("check")
def check(
    model: str | None = typer.Option(
        None, "--model", help="a model's fingerprint (default: the active one)"
    ),
    days: int = typer.Option(30, "--days", min=1, max=365, help="the recent window, in days"),
    as_json: bool = typer.Option(False, "--json", help="the report as JSON"),
) -> None:
    """Drift of the active model (or --model): its inputs and predictions now against its
    training, and its calibration on the outcomes known since.

    Examples: nurture models check; nurture models check --model pm-0d3c --days 14 --json
    """
    from models.db import utcnow
    from services.json_output import dumps
    from services.model_drift import DriftError, drift_report, print_drift
    from services.predictive_models import ModelError

    settings = get_settings()
    definitions = fail_on_definition_errors(lambda: load(settings))
    database = _database()
    try:
        report = drift_report(database.sessions, definitions, utcnow(), recent_days=days,
                              fingerprint=_full_fingerprint(database, model))  # fmt: skip
    except (DriftError, ModelError) as exc:
        errors.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        database.engine.dispose()
    if as_json:
        print(dumps(report))
    else:
        print_drift(console, report)


# --- formatting --------------------------------------------------------------------------------


def _day(moment) -> str:
    """A stored or summary moment as its UTC day; `-` for none."""
    from services.json_output import iso

    if moment is None:
        return "-"
    return (iso(moment) if not isinstance(moment, str) else moment)[:10]


def _rate(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _lift(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _auc(figures: dict, side: str) -> str:
    return _rate((figures.get(side) or {}).get("roc_auc"))


def _full_fingerprint(database, model: str | None) -> str | None:
    """A shortened fingerprint made whole (the drift check wants it exactly)."""
    if model is None:
        return None
    from services.predictive_models import find

    with database.sessions() as session:
        return find(session, model).fingerprint
