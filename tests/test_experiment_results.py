"""The experiments' results (services/experiment_results.py) on SQLite and PostgreSQL.

Rows are written with the ORM as the activities, webhooks and the CRM's outcomes write
them: leads, their assignments (with the database's `recorded_at`), sends, responses,
stage changes, handoffs and opportunities, some before the assignment (which must not
count). The results code itself is under test: exact counts per arm, the comparisons on
a planted effect and on none, the sample-ratio check, the status from the definitions.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import insert

from experiments.statistics import compare_amounts, compare_moments, plan
from models.db import (
    AMOUNT_SCALE,
    ExperimentAssignment,
    ExperimentRecord,
    Handoff,
    Lead,
    Message,
    Opportunity,
    Response,
    StageChange,
)
from services.definitions import load_definitions
from services.experiment_results import MINIMUM_LIFT, experiment_results
from tests.conftest import FIXTURE_DEFINITIONS

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
RATES = ("open", "click", "mql", "sql", "accepted", "opportunity", "won")


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


class Rows:
    """Rows as the workflow's activities and the webhooks write them."""

    def __init__(self, database):
        self.sessions = database.sessions
        self.n = 0

    def _key(self) -> str:
        self.n += 1
        return f"k{self.n}"

    def experiment(self, name: str, arms: dict[str, float], kind: str = "split",
                   control: str | None = None, metric: str = "sql",
                   holdouts: tuple[str, ...] = (), segment: str | None = None) -> None:  # fmt: skip
        with self.sessions.begin() as session:
            session.add(ExperimentRecord(
                name=name, kind=kind, sequence_id="seq", segment=segment,
                step_id="split" if kind == "split" else None, control=control or next(iter(arms)),
                metric=metric, started_at=T0,
                arms=[{"name": arm, "weight": weight, "holdout": arm in holdouts, "next": None,
                       "path": "p"} for arm, weight in arms.items()],
            ))  # fmt: skip

    def assign(self, experiment: str, lead_id: str, arm: str, moment: datetime = T0) -> None:
        with self.sessions.begin() as session:
            if session.get(Lead, lead_id) is None:
                session.add(Lead(id=lead_id, email=f"{lead_id}@example.com", created_at=at(-48)))
                session.flush()
            session.add(ExperimentAssignment(experiment=experiment, lead_id=lead_id, arm=arm,
                                             assigned_at=moment, recorded_at=moment))  # fmt: skip

    def send(self, lead_id: str, moment: datetime, status: str = "sent") -> None:
        with self.sessions.begin() as session:
            session.add(Message(
                send_key=self._key(), lead_id=lead_id, step_id="s", channel="email",
                template="t", recipient="x", body="", status=status, created_at=moment,
                sent_at=moment if status == "sent" else None,
            ))  # fmt: skip

    def respond(self, lead_id: str | None, kind: str, moment: datetime) -> None:
        with self.sessions.begin() as session:
            session.add(Response(event_id=self._key(), lead_id=lead_id, type=kind,
                                 occurred_at=moment, received_at=moment))  # fmt: skip

    def stage(self, lead_id: str, stage: str, moment: datetime) -> None:
        with self.sessions.begin() as session:
            session.add(StageChange(lead_id=lead_id, change_key=self._key(), from_stage="lead",
                                    to_stage=stage, reason="setup", created_at=moment))  # fmt: skip

    def handoff(self, lead_id: str, status: str, answered: datetime, cycle: int = 1) -> None:
        with self.sessions.begin() as session:
            session.add(Handoff(lead_id=lead_id, cycle=cycle, rep_id="alice", score=80,
                                reason="setup", status=status, created_at=answered,
                                answered_at=answered))  # fmt: skip

    def deal(self, lead_id: str, status: str, opened: datetime, closed: datetime | None = None,
             amount: float = 0, currency: str = "USD") -> None:  # fmt: skip
        with self.sessions.begin() as session:
            session.add(Opportunity(
                crm_id=self._key(), lead_id=lead_id, status=status, opened_at=opened,
                closed_at=closed, amount_units=int(amount * AMOUNT_SCALE), currency=currency,
            ))  # fmt: skip


def results(database, definitions=None, name=None, alpha=0.05):
    found = experiment_results(database.sessions, definitions, name, alpha)
    return {result.name: result for result in found}


# --- what counts ---------------------------------------------------------------------------------


def test_each_arm_counts_what_its_leads_did_after_their_assignment(database):
    rows = Rows(database)
    rows.experiment("subject_test", {"control": 1, "short": 1})
    for lead_id, arm in (("c1", "control"), ("c2", "control"), ("s1", "short"), ("s2", "short")):
        rows.assign("subject_test", lead_id, arm)
    # c1: two sends after (one before, one failed after), an open after, a click before,
    # MQL before and SQL after (an SQL is an MQL too), accepted by sales after, an
    # opportunity opened and won after (1,000 USD).
    rows.send("c1", at(-1))
    rows.send("c1", at(1))
    rows.send("c1", at(2))
    rows.send("c1", at(3), status="failed")
    rows.respond("c1", "email.open", at(1.5))
    rows.respond("c1", "email.click", at(-2))
    rows.stage("c1", "mql", at(-3))
    rows.stage("c1", "sql", at(4))
    rows.handoff("c1", "accepted", at(5))
    rows.deal("c1", "won", at(6), at(30), 1000)
    # c2: everything before its assignment: nothing counts.
    rows.send("c2", at(-5))
    rows.respond("c2", "email.open", at(-4))
    rows.stage("c2", "sql", at(-3))
    rows.stage("c2", "customer", at(-1))
    rows.handoff("c2", "accepted", at(-2))
    rows.deal("c2", "won", at(-2), at(-1), 5000)
    # s1: open and click after, straight to accepted (MQL and SQL with it); two
    # opportunities opened before and won after: won (300 + 200 USD), not opportunity.
    rows.respond("s1", "email.open", at(2))
    rows.respond("s1", "email.click", at(2))
    rows.stage("s1", "accepted", at(3))
    rows.deal("s1", "won", at(-1), at(10), 300)
    rows.deal("s1", "won", at(-0.5), at(12), 200)
    rows.handoff("s1", "rejected", at(4))
    # s2: a lost opportunity opened after (an opportunity), a win in EUR after (won;
    # its amount listed, never added to USD), an opportunity stage change before.
    rows.send("s2", at(1))
    rows.deal("s2", "lost", at(2), at(8), 700)
    rows.deal("s2", "won", at(3), at(9), 100, currency="EUR")
    rows.stage("s2", "opportunity", at(-1))
    # Responses with no lead are nobody's.
    rows.respond(None, "email.open", at(1))

    result = results(database)["subject_test"]
    control, short = result.arm("control"), result.arm("short")
    assert (control.leads, control.sends, short.leads, short.sends) == (2, 2, 2, 1)
    assert control.converted == dict(zip(RATES, (1, 0, 1, 1, 1, 1, 1), strict=True))
    assert short.converted == dict(zip(RATES, (1, 1, 1, 1, 1, 1, 2), strict=True))
    assert result.currency == "USD"
    assert (control.revenue, short.revenue) == (1000.0, 500.0)
    assert short.revenue_by_currency == {"EUR": 100.0, "USD": 500.0}
    assert control.comparisons == {} and set(short.comparisons) == {*RATES, "revenue"}
    revenue = short.comparisons["revenue"]
    assert (revenue.control.value, revenue.arm.value, revenue.difference) == (500, 250, -250)
    assert short.comparisons["click"].difference == 0.5
    assert (result.kind, result.control, result.metric, result.status) == (
        "split", "control", "sql", "running")  # fmt: skip
    assert result.started_at == T0 and result.to_dict()["started_at"] == T0.isoformat()


def test_a_lead_in_two_experiments_counts_from_each_assignment(database):
    rows = Rows(database)
    rows.experiment("first_test", {"a": 1, "b": 1})
    rows.experiment("second_test", {"x": 1, "y": 1})
    rows.assign("first_test", "l1", "a", at(0))
    rows.assign("second_test", "l1", "x", at(10))
    rows.send("l1", at(5))
    rows.respond("l1", "email.open", at(5))
    rows.stage("l1", "sql", at(12))
    found = results(database)
    first, second = found["first_test"].arm("a"), found["second_test"].arm("x")
    assert (first.sends, first.converted["open"], first.converted["sql"]) == (1, 1, 1)
    assert (second.sends, second.converted["open"], second.converted["sql"]) == (0, 0, 1)
    assert [r.name for r in experiment_results(database.sessions, None)] == [
        "first_test", "second_test"]  # fmt: skip


# --- the statistics on planted data --------------------------------------------------------------


def _bulk(database, leads: int, sql: set[int], experiments: dict[str, callable]) -> None:
    """`leads` leads l0..., an SQL after assignment for those in `sql`, each experiment's
    arm from its function of the lead's number (None: not in it)."""
    with database.sessions.begin() as session:
        session.execute(insert(Lead), [
            {"id": f"l{i}", "email": f"l{i}@example.com", "created_at": at(-48)}
            for i in range(leads)])  # fmt: skip
        session.execute(insert(StageChange), [
            {"lead_id": f"l{i}", "change_key": "sql", "from_stage": "lead", "to_stage": "sql",
             "reason": "setup", "created_at": at(5)} for i in sorted(sql)])  # fmt: skip
        for name, arm_of in experiments.items():
            arms = [(i, arm_of(i)) for i in range(leads)]
            session.execute(insert(ExperimentAssignment), [
                {"experiment": name, "lead_id": f"l{i}", "arm": arm, "holdout": False,
                 "assigned_at": T0, "recorded_at": T0} for i, arm in arms if arm])  # fmt: skip


@pytest.fixture
def planted(database):
    """10,000 leads; 10% SQL, and 10 points more among leads 1,000-1,999. `effect`:
    control 0-999 against short 1,000-1,999 (10% vs 20%); `balanced`: blocks of ten
    alternate, 5,000 each at the same rate; `skewed`: 5,300 against 4,700."""
    rows = Rows(database)
    for name in ("effect", "balanced", "skewed", "skewed_effect"):
        rows.experiment(name, {"control": 1, "short": 1})
    sql = {i for i in range(10_000) if i % 10 == 0 or (1000 <= i < 2000 and i % 10 == 5)}
    _bulk(database, 10_000, sql, {
        "effect": lambda i: None if i >= 2000 else ("control" if i < 1000 else "short"),
        "balanced": lambda i: "control" if (i // 10) % 2 == 0 else "short",
        "skewed": lambda i: "control" if i < 5300 else "short",
        "skewed_effect": lambda i: (  # the effect's 1,000 leads against 2,000 on 50/50
            "short" if 1000 <= i < 2000 else "control" if 2000 <= i < 4000 else None),
    })  # fmt: skip
    return database


def test_a_planted_effect_is_found_and_no_effect_is_not(planted):
    found = results(planted)
    effect, balanced = found["effect"], found["balanced"]
    versus = effect.arm("short").comparisons["sql"]
    assert (versus.control.value, versus.arm.value) == (0.1, 0.2)
    assert versus.significant and versus.sequence.low > 0 and effect.conclusive
    assert effect.verdict.startswith("short beats control on sql: +10.0 points (95% always-valid "
                                     "interval +")  # fmt: skip
    same = balanced.arm("short").comparisons["sql"]
    assert same.difference == 0 and not same.significant and not balanced.conclusive
    assert balanced.verdict.startswith("No difference yet on sql: short against control +0.0 "
                                       "points (95% always-valid interval -")  # fmt: skip
    # Planned for a fifth over control's 11%, and each interval narrowest at that count.
    assert same.control.value == same.arm.value == 0.11
    expected = plan(0.11, 0.11 * MINIMUM_LIFT, 2, 0.05, weights=[1.0, 1.0])
    assert balanced.leads_needed == expected.leads_total
    assert same.planned == expected.planned[0]  # every metric's interval tuned to it
    assert balanced.arm("short").comparisons["open"].planned == expected.planned[0]
    assert balanced.minimum_effect == pytest.approx(0.022)


def test_sample_ratio_mismatch_is_flagged_on_skewed_assignment_only(planted):
    found = results(planted)
    skewed, balanced = found["skewed"], found["balanced"]
    assert skewed.srm.counts == {"control": 5300, "short": 4700}
    assert skewed.srm.flagged and skewed.srm.p_value < 1e-6
    assert skewed.verdict.startswith("Sample ratio mismatch (p = ")
    assert "No difference yet on sql" in skewed.verdict
    assert not balanced.srm.flagged and balanced.srm.p_value == 1.0
    assert not balanced.verdict.startswith("Sample")
    # A difference behind a mismatch is shown, but does not make the experiment conclusive.
    biased = found["skewed_effect"]
    assert biased.srm.flagged and biased.arm("short").comparisons["sql"].significant
    assert not biased.conclusive and biased.verdict.startswith("Sample ratio mismatch")


def test_several_arms_are_each_compared_at_a_share_of_alpha(database):
    rows = Rows(database)
    rows.experiment("three_test", {"control": 2, "a": 1, "b": 1})
    for n in range(8):
        rows.assign("three_test", f"c{n}", "control")
    for n in range(4):
        rows.assign("three_test", f"a{n}", "a")
        rows.assign("three_test", f"b{n}", "b")
    result = results(database, alpha=0.1)["three_test"]
    assert (result.alpha, result.compared_at) == (0.1, 0.05)
    assert result.arm("a").comparisons["sql"].alpha == 0.05
    assert not result.srm.flagged and result.srm.expected == {"control": 8, "a": 4, "b": 4}
    assert "95% always-valid interval" in result.verdict
    assert result.leads_needed is None  # control has no SQL: no rate to plan from


def test_an_arm_added_while_running_is_a_mismatch(database):
    rows = Rows(database)
    rows.experiment("grown_test", {"control": 1, "short": 1})
    rows.assign("grown_test", "l1", "control")
    rows.assign("grown_test", "l2", "long")
    result = results(database)["grown_test"]
    assert [arm.name for arm in result.arms] == ["control", "short", "long"]
    assert result.arm("long").weight == 0 and result.srm.flagged
    assert "'long' has leads but was not an arm" in result.srm.message


def test_revenue_as_the_primary_metric_is_judged_per_lead(database):
    rows = Rows(database)
    rows.experiment("price_test", {"a": 1, "b": 1}, metric="revenue")
    for n in range(30):
        rows.assign("price_test", f"a{n}", "a")
        rows.assign("price_test", f"b{n}", "b")
    for n in range(15):  # half of b's leads win 1,000 USD after assignment; a's none
        rows.deal(f"b{n}", "won", at(1), at(2), 1000)
    rows.deal("a0", "won", at(-3), at(-2), 1000)  # before its assignment: not counted
    result = results(database)["price_test"]
    versus = result.arm("b").comparisons["revenue"]
    assert (versus.control.value, versus.arm.value, versus.kind) == (0.0, 500.0, "mean")
    assert result.conclusive and result.currency == "USD"
    assert result.verdict.startswith("b beats a on revenue: +500.00 USD per lead (95% ")
    assert result.leads_needed is None  # control won nothing: no rate to plan from


def test_revenue_from_sums_matches_revenue_from_every_lead():
    rng = np.random.default_rng(5)
    control = np.where(rng.random(3000) < 0.05, rng.lognormal(8, 1, 3000), 0.0)
    arm = np.where(rng.random(3000) < 0.09, rng.lognormal(8, 1, 3000), 0.0)
    every = compare_amounts(control, arm, 0.05, 6000)
    summed = compare_moments((3000, control.sum(), (control**2).sum()),
                             (3000, arm.sum(), (arm**2).sum()), 0.05, 6000)  # fmt: skip
    for name in ("difference", "p_value", "fixed_p_value"):
        assert getattr(summed, name) == pytest.approx(getattr(every, name), rel=1e-9)
    for name in ("sequence", "fixed"):
        mine, theirs = getattr(summed, name), getattr(every, name)
        assert (mine.low, mine.high) == pytest.approx((theirs.low, theirs.high), rel=1e-9)
    assert summed.significant == every.significant
    flat = compare_moments((2, 10.0, 50.0), (2, 14.0, 98.0))
    assert flat.difference == 2.0 and flat.sequence is None and "same" in flat.note


# --- status from the definitions, and errors -----------------------------------------------------

SPLIT = """
id: split_test
name: Split
steps:
  - {id: welcome, type: email, template: hello}
  - id: subject
    type: split
    experiment: subject_test
    winner: short
    arms:
      - {name: control}
      - {name: short}
"""
SEGMENTS = """
segments:
  - {id: held, when: "lead.country == 'NL'", sequence: split_test, holdout: 10}
default: {id: everyone, sequence: month}
"""


def test_status_and_winner_come_from_the_definitions(database, tmp_path):
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    (root / "sequences" / "split_test.yaml").write_text(SPLIT)
    (root / "segments.yaml").write_text(SEGMENTS)
    definitions = load_definitions(root)
    rows = Rows(database)
    rows.experiment("subject_test", {"control": 1, "short": 1})
    rows.experiment("holdout:held", {"holdout": 10, "nurtured": 90}, kind="holdout",
                    holdouts=("holdout",), segment="held")  # fmt: skip
    rows.experiment("old_test", {"a": 1, "b": 1})
    rows.assign("holdout:held", "h1", "holdout")
    rows.assign("holdout:held", "h2", "nurtured")
    found = results(database, definitions)
    assert (found["subject_test"].status, found["subject_test"].winner) == ("ended", "short")
    held = found["holdout:held"]
    assert (held.status, held.winner, held.kind, held.segment) == ("running", None, "holdout",
                                                                   "held")  # fmt: skip
    assert held.arm("holdout").holdout and held.arm("holdout").control
    assert found["old_test"].status == "removed"
    assert {r.status for r in results(database).values()} == {"running"}  # no definitions
    assert found["subject_test"].verdict == "No comparison yet on sql: no leads in control, short."


def test_an_unknown_experiment_names_the_known_ones(database):
    with pytest.raises(LookupError, match=r"no experiment 'nope' \(experiments: none yet\)"):
        experiment_results(database.sessions, None, "nope")
    rows = Rows(database)
    rows.experiment("b_test", {"a": 1, "b": 1})
    rows.experiment("a_test", {"a": 1, "b": 1})
    with pytest.raises(LookupError, match=r"\(experiments: a_test, b_test\)"):
        experiment_results(database.sessions, None, "nope")
    assert [r.name for r in experiment_results(database.sessions, None, "b_test")] == ["b_test"]
    with pytest.raises(ValueError, match="alpha"):
        experiment_results(database.sessions, None, alpha=1.5)
