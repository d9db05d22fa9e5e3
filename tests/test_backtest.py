"""`nurture backtest`: the history file, scoring as of each moment, the figures, the CLI.

The figures are checked exactly on a hand-built history scored by a hand-built model
in which every total is easy to work out: fit is 100 for a VP and 0 otherwise, the
total is half fit plus half engagement, and only page views decay.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from models.definition_set import Definitions
from models.definitions import SalesTeam, Segments
from models.scoring_model import ScoringBook
from scoring import synthetic
from scoring.backtest import LeadResult, Objective, deciles, evaluate, evaluate_lead, report
from scoring.history import HistoryError, load_history, parse_leads

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(days: float) -> str:
    return (T0 + timedelta(days=days)).isoformat()


# --- a small hand-built world ----------------------------------------------------------------

BOOK = ScoringBook.model_validate(
    {
        "default_model": "m",
        "models": {
            "m": {
                "fit": {"max": 10, "rules": [
                    {"id": "vp", "field": "title", "matches": r"\bvp\b", "points": 10}]},
                "engagement": {"max": 100, "half_life": "10d", "rules": [
                    {"id": "demo", "event": "form.submitted", "points": 60, "decays": False},
                    {"id": "click", "event": "email.click", "points": 20, "cap": 40,
                     "decays": False},
                    {"id": "view", "event": "page.view", "points": 10},
                ]},
                "weights": {"fit": 50, "engagement": 50},
                "stages": {
                    "mql": {"at": 40, "recycle_below": 20},
                    "sql": {"at": 70, "when": "grade == 'A'"},
                },
            }
        },
    }
)  # fmt: skip


@pytest.fixture(scope="module")
def definitions() -> Definitions:
    segments = Segments.model_validate(
        {"segments": [], "default": {"id": "everyone", "sequence": "general"}}
    )
    sales = SalesTeam.model_validate({"reps": [{"id": "r", "name": "R", "email": "r@x.example"}]})
    return Definitions(REPO, {}, segments, BOOK, sales)


def lead(
    lead_id: str,
    title: str,
    responses: list[tuple[str, float]],
    customer: bool,
    sold: float | None = None,
) -> dict:
    return {
        "id": lead_id,
        "profile": {"email": f"{lead_id.lower()}@acme.example", "title": title},
        "created_at": at(0),
        "responses": [{"type": kind, "at": at(day)} for kind, day in responses],
        "outcome": {"customer": customer, "at": at(sold) if sold is not None else None},
    }


VP, ANALYST = "VP Sales", "Analyst"
DEMO, CLICK, VIEW = "form.submitted", "email.click", "page.view"
# id: peak total, walked stages, customer
HISTORY = [
    lead("A", VP, [(DEMO, 1)], True, sold=30),  # 50 + 30 = 80: SQL
    lead("B", VP, [(CLICK, 1)], True, sold=30),  # 50 + 10 = 60: MQL
    lead("C", ANALYST, [(DEMO, 1), (CLICK, 2), (CLICK, 3)], False),  # 30, 40, 50: MQL
    lead("D", VP, [], False),  # never responded: never scored
    lead("E", ANALYST, [(CLICK, 1)], True, sold=30),  # 10
    lead("F", VP, [(DEMO, 1)], False),  # 80: SQL
    lead("G", ANALYST, [(CLICK, 1)], False),  # 10
    lead("H", ANALYST, [(DEMO, 1)], False),  # 30
    lead("I", VP, [(CLICK, 1)], False),  # 60: MQL
]


def evaluated(definitions: Definitions, *leads: dict) -> list[LeadResult]:
    return evaluate(definitions, parse_leads(leads))


# --- the history file ------------------------------------------------------------------------


GOOD = json.dumps(lead("L1", VP, [(CLICK, 1)], False))


def first_error(tmp_path: Path, *lines: str) -> HistoryError:
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(HistoryError) as caught:
        load_history(path)
    return caught.value


def test_bad_json_names_file_and_line(tmp_path):
    error = first_error(tmp_path, GOOD, '{"id": "L2", "profile": {')
    assert (error.source, error.line, error.field) == (str(tmp_path / "history.jsonl"), 2, "(line)")
    assert str(error).startswith(f"{tmp_path / 'history.jsonl'}:2: (line): not JSON")


def test_unknown_response_type_names_the_field(tmp_path):
    bad = lead("L2", VP, [(CLICK, 1), ("email.clicked", 2)], False)
    error = first_error(tmp_path, GOOD, "", json.dumps(bad))  # blank lines still count
    assert (error.line, error.field) == (3, "responses[1].type")
    assert "unknown response type 'email.clicked'" in str(error)
    assert str(error).startswith(f"{tmp_path / 'history.jsonl'}:3: responses[1].type: ")


def test_missing_fields_are_named(tmp_path):
    no_customer = lead("L2", VP, [], False)
    del no_customer["outcome"]["customer"]
    error = first_error(tmp_path, json.dumps(no_customer))
    assert (error.line, error.field) == (1, "outcome.customer")
    assert str(error).endswith("outcome.customer: Field required")

    no_date = lead("L2", VP, [], True)  # a customer without the date it became one
    assert first_error(tmp_path, json.dumps(no_date)).field == "outcome.at"

    bad_time = lead("L2", VP, [(CLICK, 1)], False)
    bad_time["responses"][0]["at"] = "last tuesday"
    error = first_error(tmp_path, GOOD, json.dumps(bad_time))
    assert (error.line, error.field) == (2, "responses[0].at")
    assert "last tuesday" in error.problem


def test_duplicate_ids_and_text_that_is_not_utf8(tmp_path):
    error = first_error(tmp_path, GOOD, GOOD)
    assert (error.line, error.field, error.problem) == (2, "id", "'L1' is also on line 1")
    path = tmp_path / "binary.jsonl"
    path.write_bytes(GOOD.encode() + b"\n\xff\xfe\n")
    with pytest.raises(HistoryError, match=r"binary.jsonl:2: \(line\): not UTF-8"):
        load_history(path)


def test_history_is_read_as_exported(tmp_path):
    record = lead("L1", VP, [(DEMO, 5), (CLICK, 1)], False)  # out of order
    record["created_at"] = "2024-01-01T00:00:00"  # no zone: UTC
    record["profile"].update(timezone=None, attributes=None, crm_owner="kim")  # CRM nulls
    path = tmp_path / "history.jsonl"
    path.write_text("\ufeff" + json.dumps(record) + "\r\n\n", encoding="utf-8")  # BOM, CRLF
    (loaded,) = load_history(path)
    assert loaded.created_at == T0
    assert [r.type for r in loaded.responses] == [CLICK, DEMO]
    assert loaded.profile.timezone == "UTC" and loaded.profile.attributes == {}
    assert loaded.profile.model_dump()["crm_owner"] == "kim"


# --- scoring as of each moment ---------------------------------------------------------------


def test_responses_after_the_outcome_are_not_seen(definitions):
    # The demo request came after the sale: it must not make the model look clever.
    (bought,) = evaluated(definitions, lead("X", ANALYST, [(CLICK, 1), (DEMO, 10)], True, sold=5))
    assert bought.peak == 10.0 and bought.reached == frozenset() and bought.stage == "lead"
    # The same lead with nothing to hide: the demo counts.
    (lost,) = evaluated(definitions, lead("X", ANALYST, [(CLICK, 1), (DEMO, 10)], False))
    assert lost.peak == 40.0 and lost.reached == {"mql"}


def test_a_lead_that_peaked_then_decayed_was_still_an_mql(definitions):
    # Eight page views: engagement 80, total 40 (MQL). Forty days (four half-lives) later
    # they are worth 5, a click adds 20: total 12.5, under recycle_below, back to `lead`.
    views = [(VIEW, 1)] * 8
    (result,) = evaluated(definitions, lead("Y", ANALYST, [*views, (CLICK, 41)], True, sold=60))
    assert result.peak == 40.0
    assert result.reached == {"mql"}
    assert result.stage == "lead"  # recycled...
    figures = report([result], BOOK, Objective.named("f1")).models[0]
    (mql,) = [s for s in figures.stages if s.stage == "mql"]
    assert (mql.counts.tp, mql.counts.fn) == (1, 0)  # ...but counted as reached


def test_each_moment_sees_only_what_came_before(definitions):
    # The analyst's MQL needs the second click: scored after the first it was 30, not 50.
    history = list(parse_leads([HISTORY[2]]))
    result = evaluate_lead(definitions, history[0])
    assert (result.peak, result.qualified) == (50.0, {"mql": 50.0, "sql": None})
    # A VP that never responded was never scored, whatever its fit.
    (silent,) = evaluated(definitions, HISTORY[3])
    assert (silent.peak, silent.reached, silent.qualified) == (
        0.0,
        frozenset(),
        {"mql": None, "sql": None},
    )


# --- the figures, exactly --------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(definitions) -> list[LeadResult]:
    return evaluated(definitions, *HISTORY)


def test_peaks_and_stages_per_lead(results):
    walked = {r.id: (r.peak, sorted(r.reached), r.customer) for r in results}
    assert walked == {
        "A": (80.0, ["mql", "sql"], True),
        "B": (60.0, ["mql"], True),
        "C": (50.0, ["mql"], False),
        "D": (0.0, [], False),
        "E": (10.0, [], True),
        "F": (80.0, ["mql", "sql"], False),
        "G": (10.0, [], False),
        "H": (30.0, [], False),
        "I": (60.0, ["mql"], False),
    }


def test_precision_recall_and_lift_of_each_stage(results):
    figures = report(results, BOOK, Objective.named("f1"))
    assert (figures.leads, figures.customers) == (9, 3)
    (model,) = figures.models
    assert model.base_rate == pytest.approx(1 / 3)
    mql, sql = model.stages
    # MQL: A B C F I reached it; A and B bought; E bought without it.
    assert (mql.stage, mql.counts.tp, mql.counts.fp, mql.counts.fn, mql.counts.tn) == (
        "mql", 2, 3, 1, 3)  # fmt: skip
    assert mql.counts.precision == pytest.approx(0.4)
    assert mql.counts.recall == pytest.approx(2 / 3)
    assert mql.counts.lift(model.base_rate) == pytest.approx(1.2)
    # SQL: A and F; only A bought.
    assert (sql.counts.tp, sql.counts.fp, sql.counts.fn, sql.counts.tn) == (1, 1, 2, 5)
    assert sql.counts.precision == pytest.approx(0.5)
    assert sql.counts.recall == pytest.approx(1 / 3)
    assert sql.counts.lift(model.base_rate) == pytest.approx(1.5)
    assert sql.rule == "total ≥ 70; grade == 'A'"

    data = figures.to_dict()
    assert data["base_rate"] == 0.3333
    assert data["models"]["m"]["stages"]["mql"] | {"rule": ""} == {
        "rule": "", "flagged": 5, "tp": 2, "fp": 3, "fn": 1, "tn": 3,
        "precision": 0.4, "recall": 0.6667, "lift": 1.2,
    }  # fmt: skip


def test_lift_by_decile(results):
    (model,) = report(results, BOOK, Objective.named("f1")).models
    # Nine leads, one a decile, by peak then id: A F B I C H E G D.
    assert [(d.decile, d.leads, d.customers) for d in model.deciles] == [
        (1, 1, 1), (2, 1, 0), (3, 1, 1), (4, 1, 0), (5, 1, 0), (6, 1, 0), (7, 1, 1),
        (8, 1, 0), (9, 1, 0),
    ]  # fmt: skip
    top = model.deciles[0]
    assert (top.low, top.high, top.rate, top.lift) == (80.0, 80.0, 1.0, pytest.approx(3.0))
    assert [round(d.captured, 4) for d in model.deciles] == [
        0.3333, 0.3333, 0.6667, 0.6667, 0.6667, 0.6667, 1.0, 1.0, 1.0]  # fmt: skip


def test_deciles_split_evenly_highest_first():
    leads = [LeadResult(f"L{i:02d}", "m", i % 4 == 0, float(i), frozenset(), "lead", {})
             for i in range(20)]  # fmt: skip
    groups = deciles(leads)
    assert [(d.decile, d.leads, d.high, d.low) for d in groups][:2] == [
        (1, 2, 19.0, 18.0), (2, 2, 17.0, 16.0)]  # fmt: skip
    assert [d.customers for d in groups] == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert groups[1].lift == pytest.approx(0.5 / 0.25)
    assert groups[-1].captured == 1.0


def test_the_best_threshold_for_each_objective(results):
    # MQL, a lead counted at t when its total reached t:
    #   t 0-10: 8 leads, 3 buyers   P 3/8  R 1    F1 6/11  F2 3/4
    #   t 11-30: 6 leads, 2 buyers  P 1/3  R 2/3  F1 4/9
    #   t 31-50: 5 leads, 2 buyers  P 2/5  R 2/3  F1 1/2
    #   t 51-60: 4 leads, 2 buyers  P 1/2  R 2/3  F1 4/7   F2 5/8
    #   t 61-80: 2 leads, 1 buyer   P 1/2  R 1/3  F1 2/5
    def pick(objective: Objective, stage: str = "mql"):
        (model,) = report(results, BOOK, objective).models
        return next(p for p in model.picks if p.stage == stage)

    f1 = pick(Objective.named("f1"))
    assert (f1.current, f1.best, f1.value) == (40, 51, pytest.approx(4 / 7))
    assert (f1.best_counts.tp, f1.best_counts.fp, f1.best_counts.fn) == (2, 2, 1)
    assert (f1.now.tp, f1.now.fp, f1.now.fn) == (2, 3, 1)  # what `at: 40` gave
    assert len(f1.curve) == 101 and f1.curve[81][1].flagged == 0

    f2 = pick(Objective.named("f2"))  # recall weighs more: flag everyone who responded
    assert (f2.best, f2.value) == (0, pytest.approx(0.75))  # ties: the lowest threshold

    precise = pick(Objective.named("precision"))  # recall ≥ 0.5 unless told otherwise
    assert (precise.best, precise.value) == (51, pytest.approx(0.5))
    assert pick(Objective.named("precision", min_recall=0.9)).best == 0
    assert pick(Objective.named("recall", min_precision=0.6)).best is None  # none is that good

    # SQL counts only moments when its `when` held: the VPs A, B, F and I.
    sql = pick(Objective.named("f1"), "sql")
    assert (sql.current, sql.best, sql.value) == (70, 0, pytest.approx(4 / 7))
    assert (sql.now.tp, sql.now.fp) == (1, 1)


def test_objective_names_are_checked():
    with pytest.raises(ValueError, match="objective must be one of"):
        Objective.named("accuracy")
    with pytest.raises(ValueError, match="--min-recall"):
        Objective.named("f1", min_recall=2)
    assert Objective.named("fbeta", beta=0.5).label == "F0.5"


# --- the synthetic history -------------------------------------------------------------------


def test_synthetic_history_is_deterministic_per_seed(tmp_path):
    first = list(synthetic.generate(40, seed=7))
    assert first == list(synthetic.generate(40, seed=7))
    assert first[:15] == list(synthetic.generate(15, seed=7))  # lead i does not depend on n
    assert list(synthetic.generate(40, seed=8)) != first
    assert len({record["id"] for record in first}) == 40

    path = tmp_path / "history.jsonl"
    synthetic.main([str(path), "--leads", "40", "--seed", "7"])
    loaded = load_history(path)
    assert [record.id for record in loaded] == [record["id"] for record in first]


def test_synthetic_customers_have_history_after_the_sale():
    leads = list(parse_leads(synthetic.generate(300, seed=1)))
    customers = [lead for lead in leads if lead.outcome.customer]
    assert 0.04 < len(customers) / len(leads) < 0.25
    # The trap the backtest must not fall into is there to fall into.
    assert any(r.at > c.outcome.at for c in customers for r in c.responses)


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def runner(monkeypatch) -> CliRunner:
    monkeypatch.setenv("NURTURE_DEFINITIONS", str(REPO))
    monkeypatch.setenv("COLUMNS", "160")
    return CliRunner()


def test_backtest_synthetic_json(runner):
    result = runner.invoke(app, ["backtest", "--synthetic", "300", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["leads"] == 300 and 0 < data["customers"] < 300
    assert data["objective"]["name"] == "f1"
    assert set(data["models"]) == {"b2b", "trial"}
    assert sum(model["leads"] for model in data["models"].values()) == 300
    for model in data["models"].values():
        assert {"mql", "sql"} <= set(model["stages"])
        assert [d["decile"] for d in model["deciles"]] == list(range(1, 11))
        assert model["deciles"][-1]["captured"] == 1.0
        for stage in ("mql", "sql"):
            pick = model["thresholds"][stage]
            assert pick["current"] is not None and len(pick["curve"]) == 101
            assert {"precision", "recall", "lift"} <= set(pick["at_current"])
    # The model finds customers: an SQL bought far more often than a lead did.
    sql = [model["stages"]["sql"] for model in data["models"].values()]
    assert sum(s["flagged"] for s in sql) > 0
    assert sum(s["tp"] for s in sql) / sum(s["flagged"] for s in sql) > 2 * data["base_rate"]
    b2b = data["models"]["b2b"]
    assert b2b["stages"]["sql"]["precision"] > b2b["base_rate"]
    assert b2b["deciles"][0]["lift"] > 1


def test_backtest_prints_tables(runner, tmp_path):
    path = tmp_path / "history.jsonl"
    synthetic.write(path, synthetic.generate(200, seed=2))
    result = runner.invoke(app, ["backtest", "--leads", str(path), "--objective", "f2"])
    assert result.exit_code == 0, result.output
    for text in ("Backtest of 200 leads", "Model b2b", "base rate", "Lift by decile",
                 "best = highest F2", "MQL", "SQL"):  # fmt: skip
        assert text in result.stdout, text


def test_backtest_refuses_a_bad_file(runner, tmp_path):
    path = tmp_path / "history.jsonl"
    bad = lead("L2", VP, [(CLICK, 1)], False)
    del bad["created_at"]
    path.write_text(GOOD + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["backtest", "--leads", str(path)])
    assert result.exit_code == 2
    assert f"{path}:2: created_at: Field required" in " ".join(result.stderr.split())
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give one of --leads FILE"),
        (["--synthetic", "10", "--leads", "{file}"], "give one of --leads FILE"),
        (["--leads", "{missing}"], "does not exist"),
        (["--leads", "{empty}"], "holds no leads"),
        (["--synthetic", "10", "--objective", "accuracy"], "objective must be one of"),
        (["--synthetic", "10", "--objective", "f1", "--min-recall", "2"], "--min-recall"),
    ],
)
def test_backtest_usage_errors(runner, tmp_path, args, message):
    (tmp_path / "history.jsonl").write_text(GOOD + "\n", encoding="utf-8")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    files = {"file": "history.jsonl", "missing": "nope.jsonl", "empty": "empty.jsonl"}
    args = [arg.format(**{k: str(tmp_path / v) for k, v in files.items()}) for arg in args]
    result = runner.invoke(app, ["backtest", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split()), result.stderr
