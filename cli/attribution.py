"""`nurture report --attribution MODEL [--by DIM] [--explain KEY]`
(the work is services/attribution_report.py)."""

from __future__ import annotations

import csv
import json
import sys

import typer
from rich.console import Console
from rich.table import Table

errors = Console(stderr=True, soft_wrap=True)


def attribution_report(flt, model: str | None, by: str, explain_key: str | None,
                       as_json: bool, as_csv: bool) -> None:  # fmt: skip
    from infra.settings import get_settings
    from sales.attribution import MODELS
    from services.attribution_report import DIMENSIONS, attribution, explain
    from services.runtime import open_database

    if model not in MODELS:
        _usage(f"--attribution: one of {', '.join(MODELS)}" + (f", not {model!r}" if model else ""))
    if by not in DIMENSIONS:
        _usage(f"--by: one of {', '.join(DIMENSIONS)}, not {by!r}")
    database = open_database(get_settings())
    try:
        with database.sessions() as session:
            report = attribution(session, flt, model, by) | {"filter": flt.to_dict()}
    finally:
        database.engine.dispose()
    if explain_key is not None:
        try:
            leads = explain(report, explain_key)
        except KeyError as exc:
            errors.print(exc.args[0], highlight=False, markup=False)
            raise typer.Exit(1) from None
        print(json.dumps({"key": explain_key, "leads": leads}) if as_json else "\n".join(leads))
        return
    if as_json:
        print(json.dumps(report, indent=2))
    elif as_csv:
        _csv(report)
    else:
        _table(report)


def _measures(report: dict) -> list[str]:
    return sorted({k for row in report["rows"] for k in row if k not in ("key", "leads")},
                  key=lambda m: (m != "sqls", m))  # fmt: skip


def _csv(report: dict) -> None:
    measures = _measures(report)
    writer = csv.writer(sys.stdout)
    writer.writerow([report["by"], *measures, "leads"])
    for row in report["rows"]:
        writer.writerow([row["key"], *(row.get(m, 0.0) for m in measures), len(row["leads"])])


def _table(report: dict) -> None:
    measures = _measures(report)
    table = Table(title=f"credited by {report['model']}, per {report['by']}")
    for name in (report["by"], *measures, "leads"):
        table.add_column(name, justify="left" if name == report["by"] else "right")
    for row in report["rows"]:
        table.add_row(row["key"], *(f"{row.get(m, 0.0):,.2f}" for m in measures),
                      str(len(row["leads"])))  # fmt: skip
    Console(soft_wrap=True).print(table)
    if not report["rows"]:
        print("no SQL or opportunity in the range yet")


def _usage(message: str) -> None:
    errors.print(message, highlight=False, markup=False)
    raise typer.Exit(2)
