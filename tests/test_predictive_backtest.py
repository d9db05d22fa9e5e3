"""`nurture backtest --predictive` (issue 19, point 5): the rules, the predictive model and
their combination on the same test moments, each with the threshold it needs for a
chosen precision. The pure comparison on planted histories (testkit/planted_history.py)
where who should win is known, then the command: a model trained on the history, the
stored one given with --model, the active one.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from models.db import PredictiveModelRecord
from models.scoring_model import PredictiveSettings, ScoringBook
from scoring import model_store
from scoring.predictive import TrainingError, train
from scoring.predictive_backtest import Pick, compare, pick
from services.definitions import load_definitions
from services.runtime import open_database
from testkit import REPO
from testkit.planted_history import planted_history

SETTINGS = PredictiveSettings(horizon="60d", min_auc=0.5)
OPTIONS = {"settings": SETTINGS, "per_lead": 1, "test_fraction": 0.3}


@pytest.fixture(scope="module")
def definitions():
    return load_definitions(REPO)


def blind(definitions):
    """Rules that never see a page view (so not the planted pricing signal)."""
    data = yaml.safe_load((REPO / "scoring.yaml").read_text())
    for model in data["models"].values():
        model["engagement"]["rules"] = [
            r for r in model["engagement"]["rules"] if r["event"] != "page.view"
        ]
    return dataclasses.replace(definitions, scoring=ScoringBook.model_validate(data))


# --- the threshold for a precision -----------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (0.6, Pick(0.3, 5, 0.6, 1.0)),  # everyone: 3 of 5
        (0.7, Pick(0.5, 4, 0.75, 1.0)),
        (0.9, Pick(0.9, 1, 1.0, 0.3333)),
        # 0.8 is tied between a winner and a loser: it flags both or neither.
        (1.0, Pick(0.9, 1, 1.0, 0.3333)),
    ],
)
def test_the_lowest_threshold_that_reaches_the_precision(target, expected):
    score = np.array([0.8, 0.9, 0.3, 0.8, 0.5])
    won = np.array([True, True, False, False, True])
    assert pick(won, score, target) == expected


def test_no_threshold_reaches_a_precision_above_every_cut():
    score, won = np.array([0.9, 0.9, 0.1]), np.array([True, False, True])
    assert pick(won, score, 0.9) is None  # 0.9 flags one of two; 0.1 two of three
    assert pick(np.array([False, False]), np.array([0.2, 0.1]), 0.5) is None


# --- the comparison ----------------------------------------------------------------------------


def test_a_model_trained_here_against_rules_blind_to_the_signal(definitions):
    history = planted_history(3000, seed=11).leads
    found = compare(history, blind(definitions), precision=0.5, **OPTIONS)
    rules, model, combined = found.contenders
    assert (rules.name, model.name, combined.name) == ("rules", "model", "combination")
    assert found.trained and found.notes == [] and found.refused == []
    assert model.roc_auc >= rules.roc_auc + 0.05
    assert combined.roc_auc >= model.roc_auc - 0.01  # the blind rules add nothing
    for contender in found.contenders:
        if contender.pick is not None:
            assert contender.pick.precision >= 0.5
    assert model.pick is not None
    if rules.pick is not None:  # the rules reach the precision, if at all, with less recall
        assert model.pick.recall > rules.pick.recall
    assert 0 < found.won < found.moments and found.fitted_on > found.moments


def test_the_combination_takes_what_only_the_rules_see(definitions):
    """The signal's views are at /product/pricing: the rules' glob sees them, the model's
    features only /product (busy with the tour). Stacked, the rules lift the model."""
    history = planted_history(3000, seed=11, pricing_url="/product/pricing", tour_rate=3).leads
    found = compare(history, definitions, precision=0.4, **OPTIONS)
    rules, model, combined = found.contenders
    assert rules.roc_auc > model.roc_auc
    assert combined.roc_auc >= max(rules.roc_auc, model.roc_auc)
    assert combined.roc_auc >= model.roc_auc + 0.03
    assert found.weights["rule_total"] > 0
    assert any("worse than the rules" in reason for reason in found.refused)


def test_a_given_model_is_measured_on_its_own_test_period(definitions):
    history = planted_history(3000, seed=11).leads
    training = train(history, definitions, **OPTIONS)
    found = compare(history, definitions, training.model, precision=0.5, **OPTIONS)
    assert not found.trained and found.fingerprint == training.model.fingerprint
    model = found.contenders[1]
    metrics = training.model.summary["metrics"]
    assert found.moments == metrics["moments"] and found.won == metrics["won"]
    assert model.roc_auc == metrics["model"]["roc_auc"]
    assert found.contenders[0].roc_auc == metrics["rules"]["roc_auc"]
    assert found.notes == ["the test period is the model's own (the same history and split): "
                           "it learned from none of these moments"]  # fmt: skip

    # Another history of the same dates: the model may have seen leads like these.
    other = planted_history(3000, seed=12).leads
    elsewhere = compare(other, definitions, training.model, precision=0.5, **OPTIONS)
    assert len(elsewhere.notes) == 1
    assert "test moments are of leads created by then" in elsewhere.notes[0]


def test_the_stage_figures_are_the_rules_stages_at_the_moments(definitions):
    history = planted_history(2000, seed=5).leads
    found = compare(history, definitions, precision=0.5, **OPTIONS)
    mql, sql = found.stages
    assert (mql.stage, sql.stage) == ("mql", "sql")
    assert mql.flagged >= sql.flagged
    if mql.flagged:
        assert 0 <= mql.precision <= 1 and 0 <= mql.recall <= 1


def test_too_little_history_and_a_bad_precision_are_refused(definitions):
    with pytest.raises(TrainingError, match="too little history"):
        compare(planted_history(40, seed=1).leads, definitions, **OPTIONS)
    with pytest.raises(ValueError, match="precision must be above 0"):
        compare(planted_history(40, seed=1).leads, definitions, precision=0, **OPTIONS)


# --- the command -------------------------------------------------------------------------------


@pytest.fixture
def runner(monkeypatch, tmp_path) -> CliRunner:
    monkeypatch.setenv("NURTURE_DEFINITIONS", str(REPO))
    monkeypatch.setenv("NURTURE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "160")
    return CliRunner()


def invoke(runner, *args):
    from cli.app import app

    return runner.invoke(app, ["backtest", *args])


def test_the_command_trains_a_model_when_none_is_active(runner, tmp_path):
    result = invoke(runner, "--synthetic", "800", "--predictive", "--precision", "0.4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "models" in data  # the rules' backtest, as without --predictive
    compared = data["predictive"]
    assert "trained here on the older leads: no database" in compared["model_source"]
    assert not (tmp_path / "state" / "nurture.db").exists()  # none made for this
    assert set(compared["contenders"]) == {"rules", "model", "combination"}
    assert compared["precision"] == 0.4
    for figures in compared["contenders"].values():
        assert 0.5 < figures["roc_auc"] <= 1
        at = figures["at_precision"]
        assert at is None or at["precision"] >= 0.4
    assert compared["combination"]["method"] == "logistic stacking"

    printed = invoke(runner, "--synthetic", "800", "--predictive")
    assert printed.exit_code == 0, printed.output
    for text in ("Rules, predictive model and both", "threshold each needs for precision ≥ 50%",
                 "predictive model", "combination", "rules: reached MQL"):  # fmt: skip
        assert text in printed.stdout


@pytest.fixture
def stored(sqlite_settings, monkeypatch, definitions, tmp_path):
    """A database holding a model trained on one planted history, and another as a file
    (planted: a few responses a lead, so the command is quick)."""
    database = open_database(sqlite_settings)
    training = train(planted_history(1500, seed=2).leads, definitions)
    with database.sessions.begin() as session:
        model_store.store(session, training)
    monkeypatch.setenv("DATABASE_URL", sqlite_settings.effective_database_url)
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in planted_history(1500, 3).rows))
    yield database, training.model, ["--leads", str(path)]
    database.engine.dispose()


def test_the_command_compares_a_stored_model_and_the_active_one(runner, stored):
    database, model, history = stored
    result = invoke(runner, *history, "--model", model.fingerprint, "--json")
    assert result.exit_code == 0, result.output
    compared = json.loads(result.stdout)["predictive"]
    assert compared["model_source"] == f"the stored model {model.fingerprint} (logistic, " + (
        "refused)" if model.summary["refused"] else "candidate)"
    )
    assert compared["model"] == {"fingerprint": model.fingerprint, "kind": "logistic",
                                 "trained_here": False, "refused": []}  # fmt: skip

    none_active = invoke(runner, *history, "--predictive", "--json")
    assert (
        "no predictive model is active"
        in json.loads(none_active.stdout)["predictive"]["model_source"]
    )
    with database.sessions.begin() as session:
        session.get(PredictiveModelRecord, model.fingerprint).status = "active"
    active = invoke(runner, *history, "--predictive", "--json")
    source = json.loads(active.stdout)["predictive"]["model_source"]
    assert source == f"the active model {model.fingerprint} (logistic, active)"

    missing = invoke(runner, *history, "--model", "pm-0000000000000000")
    assert missing.exit_code == 2
    assert "no predictive model pm-0000000000000000" in missing.output


def test_the_command_refuses_a_tampered_model(runner, stored):
    database, model, history = stored
    with database.sessions.begin() as session:
        record = session.get(PredictiveModelRecord, model.fingerprint)
        record.artifact = record.artifact + b"x"
    result = invoke(runner, *history, "--model", model.fingerprint)
    assert result.exit_code == 1
    assert "does not match its fingerprint" in result.output
