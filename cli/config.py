"""`nurture config`: the effective settings, where each came from, secrets masked."""

from __future__ import annotations

import json
import os

import typer
from rich.console import Console
from rich.table import Table

from infra.settings import SECRET_NAMES, Settings, SettingsError, describe_errors


def config(
    as_json: bool = typer.Option(False, "--json", help="the settings as a JSON object"),
    show_defaults: bool = typer.Option(
        True, "--defaults/--no-defaults", help="also list settings left at their default"
    ),
) -> None:
    """Print the effective settings: each environment variable, its value and where it
    came from (environment, .env file, default). Secrets are never shown: only whether
    they are set; DATABASE_URL is shown without its password.

    Examples:
      nurture config
      NURTURE_ENVIRONMENT=production nurture config --no-defaults
      nurture config --json | jq .TEMPORAL_ADDRESS

    Exit codes: 0 the settings are valid; 1 a setting is missing or malformed (each
    named, with what is wrong).
    """
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None
    rows = effective_settings(settings)
    if not show_defaults:
        rows = [row for row in rows if row["source"] != "default"]
    if as_json:
        print(json.dumps({row["name"]: row["value"] for row in rows}, indent=2))
        return
    if not rows:
        print("every setting is at its default (none set in the environment or .env)")
        return
    table = Table("setting", "value", "from")
    for row in rows:
        value = row["value"]
        table.add_row(row["name"], "" if value is None else str(value), row["source"])
    Console(soft_wrap=True).print(table)


def effective_settings(settings: Settings) -> list[dict]:
    """Every setting by its environment name: value (secrets masked) and source."""
    rows = []
    for name, field in Settings.model_fields.items():
        alias = field.alias or name.upper()
        value = getattr(settings, name)
        if alias in os.environ:
            source = "environment"
        elif name in settings.model_fields_set:
            source = ".env"
        else:
            source = "default"
        rows.append({"name": alias, "value": _shown(alias, value), "source": source})
    return rows


def _shown(alias: str, value: object) -> object:
    if value is None:
        return None
    if alias == "DATABASE_URL":
        from sqlalchemy.engine import make_url

        try:
            return make_url(str(value)).render_as_string(hide_password=True)
        except Exception:  # not a URL SQLAlchemy can read: show nothing of it
            return "(set, unreadable as a URL)"
    if alias in SECRET_NAMES:
        return "******** (set)"
    if isinstance(value, bool | int | float):
        return value
    return str(value)
