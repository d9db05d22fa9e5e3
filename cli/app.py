"""The `nurture` command: one module per command group, registered here.

Exit codes: 0 success; 1 the command ran and failed (e.g. definitions with
errors, a demo without a handoff); 2 bad usage.
"""

from __future__ import annotations

import typer

from cli.common import errors
from cli.config import config
from cli.consent import consent
from cli.crm import crm_app
from cli.db import db_app
from cli.doctor import doctor
from cli.experiments import experiments_app
from cli.financial import financial
from cli.handoff import handoff_app
from cli.import_leads import import_leads
from cli.messages import messages
from cli.migrate_leads import migrate_leads
from cli.models import models_app, train
from cli.outcomes import outcomes_app
from cli.reports import leads, report, status
from cli.run import api, demo, dev, worker
from cli.scoring import backtest, rescore, score
from cli.sequences import sequence_app
from cli.simulate import preview, simulate
from cli.users import users_app
from cli.validate import validate

app = typer.Typer(
    help="Nurture: lead-nurture sequences on durable Temporal workflows.\n\n"
    "Exit codes: 0 success; 1 the command ran and failed (invalid definitions, a refused "
    "answer, ...); 2 bad usage. Colours only on a terminal (NO_COLOR turns them off); "
    "--json on the commands that report, for scripts.",
    no_args_is_help=True,
    add_completion=False,
)
for command in (validate, worker, api, dev, demo, consent, score, backtest, rescore, messages,
                status, leads, report, preview, simulate, config, doctor):  # fmt: skip
    app.command()(command)
app.command("import")(import_leads)
app.command("migrate-leads")(migrate_leads)
app.command()(financial)
app.command()(train)
app.add_typer(models_app, name="models")
app.add_typer(handoff_app, name="handoff")
app.add_typer(db_app, name="db")
app.add_typer(outcomes_app, name="outcomes")
app.add_typer(crm_app, name="crm")
app.add_typer(users_app, name="users")
app.add_typer(experiments_app, name="experiments")
app.add_typer(sequence_app, name="sequence")


def main() -> None:
    """The `nurture` script: a bad setting, or a database schema behind the code, is a
    message saying what to do, not a traceback."""
    from infra.settings import SettingsError
    from models.schema import SchemaError

    try:
        app()
    except (SettingsError, SchemaError) as exc:
        errors.print(str(exc), highlight=False, markup=False, soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
