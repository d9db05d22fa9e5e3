"""Predictive models as people handle them (issue 19, point 2): trained and stored as a
candidate or refused (saying why), activated by an explicit command with at most one
active, the previous one back with `rollback`, retired. The service on SQLite and
PostgreSQL, then `nurture train` and `nurture models` as a person runs them."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from models.db import AuditEntry, PredictiveModelRecord
from scoring.history import HistoryLead
from scoring.model_store import ActiveModel, active_fingerprint, store
from scoring.predictive import train
from scoring.synthetic import generate, write
from services.audit import cli_actor
from services.definitions import load_definitions
from services.predictive_models import (
    ModelError,
    activate,
    activated_by,
    find,
    list_models,
    retire,
    rollback,
    train_and_store,
)
from testkit import FIXTURE_DEFINITIONS

ACTOR = "cli:tester"
LEADS = 3000  # enough history for ~170 wins in the test period; trains in ~3 s


@pytest.fixture(scope="module")
def history() -> list[HistoryLead]:
    return [HistoryLead.model_validate(lead) for lead in generate(LEADS, seed=1)]


@pytest.fixture(scope="module")
def trainings(history):
    """Two accepted models of the same history (test periods of 20% and 30%), trained
    once for every test of the module."""
    definitions = load_definitions(FIXTURE_DEFINITIONS)
    first = train(history, definitions, test_fraction=0.2)
    second = train(history, definitions, test_fraction=0.3)
    assert not first.refused and not second.refused
    assert first.model.fingerprint != second.model.fingerprint
    return first, second


def stored(database, *trainings_) -> list[str]:
    with database.sessions.begin() as session:
        return [store(session, training, ACTOR).fingerprint for training in trainings_]


def statuses(database) -> dict[str, str]:
    with database.sessions() as session:
        return {m.fingerprint: m.status for m in list_models(session)}


def actions(database) -> list[tuple[str, str | None]]:
    with database.sessions() as session:
        rows = session.execute(select(AuditEntry.action, AuditEntry.target)
                               .order_by(AuditEntry.id)).all()  # fmt: skip
    return [tuple(row) for row in rows]


# --- the service -------------------------------------------------------------------------------


def test_activation_rollback_and_retirement(database, trainings):
    first, second = stored(database, *trainings)
    assert set(statuses(database).values()) == {"candidate"}  # nothing active until asked
    workers = ActiveModel(database.sessions, refresh_seconds=0)
    assert workers.get() is None

    assert activate(database.sessions, first, ACTOR).status == "active"
    assert workers.get().fingerprint == first
    activate(database.sessions, second, ACTOR)
    assert statuses(database) == {first: "candidate", second: "active"}  # one active

    assert rollback(database.sessions, ACTOR).fingerprint == first
    assert statuses(database) == {first: "active", second: "candidate"}
    assert workers.get().fingerprint == first
    assert rollback(database.sessions, ACTOR).fingerprint == second  # and back again

    retired = retire(database.sessions, second, ACTOR)
    assert retired.status == "retired" and retired.retired_at is not None
    with database.sessions() as session:
        assert active_fingerprint(session) is None
    assert workers.get() is None  # predictions stop
    # The retired model is not rolled back to: the one active before it is.
    assert rollback(database.sessions, ACTOR).fingerprint == first

    assert actions(database) == [
        ("model.activate", first), ("model.activate", second), ("model.rollback", first),
        ("model.rollback", second), ("model.retire", second), ("model.rollback", first),
    ]  # fmt: skip
    with database.sessions() as session:
        assert activated_by(session, first) == ACTOR


def test_a_refused_model_is_stored_and_cannot_be_activated(database, history, trainings):
    (accepted,) = stored(database, trainings[0])
    activate(database.sessions, accepted, ACTOR)
    definitions = load_definitions(FIXTURE_DEFINITIONS)
    strict = definitions.scoring.predictive.model_copy(update={"min_auc": 0.99})
    record, training = train_and_store(database.sessions, history, definitions, None, 0.25,
                                       ACTOR, settings=strict)  # fmt: skip
    assert record.status == "refused"
    assert "predictive.min_auc (0.99)" in training.refused[0]

    with pytest.raises(ModelError) as refused:
        activate(database.sessions, record.fingerprint, ACTOR)
    message = str(refused.value)
    assert "refused when it was trained" in message and "min_auc (0.99)" in message
    # Nothing changed: the accepted model is still the active one.
    assert statuses(database) == {accepted: "active", record.fingerprint: "refused"}
    assert actions(database)[-1] == ("model.train", record.fingerprint)
    with pytest.raises(ModelError, match="refused already"):
        retire(database.sessions, record.fingerprint, ACTOR)


def test_models_are_found_by_a_unique_start(database, trainings):
    first, second = stored(database, *trainings)
    twin = first[:-1] + ("0" if first[-1] != "0" else "1")  # differs in its last digit
    stored(database, replace(trainings[1], model=replace(trainings[1].model, fingerprint=twin)))
    with database.sessions() as session:
        assert find(session, second).fingerprint == second
        assert find(session, second[:9]).fingerprint == second
        assert find(session, second[3:9].upper()).fingerprint == second  # no `pm-`
        with pytest.raises(ModelError, match="is ambiguous: it starts pm-") as ambiguous:
            find(session, first[:-1])
        assert first in str(ambiguous.value)
        with pytest.raises(ModelError, match="no model 'pm-zzz'"):
            find(session, "pm-zzz")
        with pytest.raises(ModelError, match="give a model's fingerprint"):
            find(session, "pm-")


def test_refused_changes_change_nothing(database, trainings):
    (first,) = stored(database, trainings[0])
    with pytest.raises(ModelError, match="no model to roll back to"):
        rollback(database.sessions, ACTOR)
    activate(database.sessions, first, ACTOR)
    with pytest.raises(ModelError, match="active model already"):
        activate(database.sessions, first, ACTOR)
    with pytest.raises(ModelError, match="no model to roll back to"):
        rollback(database.sessions, ACTOR)
    retire(database.sessions, first, ACTOR)
    with pytest.raises(ModelError, match="retired already"):
        retire(database.sessions, first, ACTOR)
    assert statuses(database) == {first: "retired"}
    assert [a for a, _ in actions(database)] == ["model.activate", "model.retire"]


# --- the commands ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def history_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("history") / "history.jsonl"
    write(path, generate(LEADS, seed=1))
    return path


@pytest.fixture
def cli(database, settings, monkeypatch):
    """Runs `nurture ...` against the test database; returns the result."""
    from cli.app import app

    monkeypatch.setenv("DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("NURTURE_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("NURTURE_DEFINITIONS", str(settings.definitions_dir))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def count_models(database) -> int:
    with database.sessions() as session:
        return session.scalar(select(func.count()).select_from(PredictiveModelRecord))


def test_train_then_activate_from_the_command_line(cli, database, history_file):
    trained = cli("train", "--leads", str(history_file))
    assert trained.exit_code == 0, trained.output
    out = trained.stdout
    for row in ("ROC AUC", "PR AUC", "Brier score", "calibration error", "precision at MQL",
                "recall at SQL", "Calibration and lift by decile"):  # fmt: skip
        assert row in out
    assert "fitting a logistic model" in trained.stderr  # progress, off stdout
    fingerprint = out.split("stored as candidate ")[1].split(";")[0]
    assert f"activate it with: nurture models activate {fingerprint}" in out
    assert statuses(database) == {fingerprint: "candidate"}

    listed = cli("models", "list")
    assert fingerprint in listed.stdout and "candidate" in listed.stdout
    assert cli("models", "activate", fingerprint[:10]).exit_code == 0
    shown = json.loads(cli("models", "show", fingerprint[:10], "--json").stdout)
    assert (shown["status"], shown["activated_by"]) == ("active", cli_actor())
    assert shown["metrics"]["model"]["roc_auc"] > shown["metrics"]["rules"]["roc_auc"]
    assert shown["features"] > 10 and "scikit-learn" in shown["versions"]
    assert "won within 90 days" in cli("models", "show", fingerprint).stdout

    checked = json.loads(cli("models", "check", "--json").stdout)  # the active one
    assert checked["fingerprint"] == fingerprint and checked["verdict"]
    again = cli("models", "rollback")
    assert again.exit_code == 1 and "no model to roll back to" in again.stderr
    assert cli("models", "retire", fingerprint).exit_code == 0
    assert statuses(database) == {fingerprint: "retired"}
    none_active = cli("models", "check")
    assert none_active.exit_code == 1 and "no predictive model is active" in none_active.stderr
    named = json.loads(cli("models", "check", "--model", fingerprint[:10], "--json").stdout)
    assert named["fingerprint"] == fingerprint
    unknown = cli("models", "check", "--model", "pm-ffff")
    assert unknown.exit_code == 1 and "no model 'pm-ffff'" in unknown.stderr


def test_a_refused_model_exits_1_saying_why(
    cli, database, history_file, settings, tmp_path, monkeypatch
):
    strict = tmp_path / "definitions"
    shutil.copytree(settings.definitions_dir, strict)
    with open(strict / "scoring.yaml", "a") as scoring:
        scoring.write("\npredictive:\n  min_auc: 0.99\n")
    monkeypatch.setenv("NURTURE_DEFINITIONS", str(strict))
    refused = cli("train", "--leads", str(history_file))
    assert refused.exit_code == 1, refused.output
    assert "refused: its ROC AUC on the test period" in refused.stdout
    assert "predictive.min_auc (0.99)" in refused.stdout
    (fingerprint,) = statuses(database)
    assert statuses(database)[fingerprint] == "refused"
    activation = cli("models", "activate", fingerprint)
    assert activation.exit_code == 1 and "cannot be activated" in activation.stderr


def test_too_little_history_exits_2_and_stores_nothing(cli, database):
    result = cli("train", "--synthetic", "40")
    assert result.exit_code == 2
    assert "too little history to learn from" in result.stderr
    assert count_models(database) == 0
    both = cli("train", "--stored", "--synthetic", "40")
    assert both.exit_code == 2 and "give one of" in both.stderr
