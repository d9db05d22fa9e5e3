"""The scoring engine and the scoring model: exact numbers, stages, and properties.

Models are written as YAML, as a marketer would, and loaded through the same
validation as scoring.yaml.
"""

from __future__ import annotations

import math
import textwrap
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.scoring_model import ScoringBook, ScoringModel
from scoring.engine import ResponseFact, decide_stage, score
from tests.test_definitions import defs, errors, write  # noqa: F401 (fixture)

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
DAY = timedelta(days=1)


def model(text: str) -> ScoringModel:
    body = yaml.safe_load(textwrap.dedent(text))
    return ScoringBook.model_validate({"default_model": "m", "models": {"m": body}}).models["m"]


def response(kind: str, days_ago: float = 0, **data) -> ResponseFact:
    return ResponseFact(kind, NOW - timedelta(days=days_ago), data)


FIT = model("""
    fit:
      max: 50
      rules:
        - {id: senior, field: title, matches: '\\b(vp|director)\\b', points: 20}
        - {id: big, field: company_size, at_least: 500, points: 15}
        - {id: mid, field: company_size, at_least: 50, below: 500, points: 8}
        - {id: industry, field: industry, in: [Software, fintech], points: 10}
        - {id: us, field: country, equals: us, points: 5}
        - {id: budget, field: attributes.budget, matches: '.', points: 5}
        - {id: student, field: title, matches: student, points: -30}
        - {id: free_mail, field: email_domain, in: [gmail.com], points: -10}
        - {id: founder, when: "lead.title == 'Founder' and lead.company_size < 10", points: -5}
    weights: {fit: 100, engagement: 0}
    stages: {mql: {at: 40}, sql: {at: 80}}
""")


@pytest.mark.parametrize(
    "profile, rules, fit",
    [
        ({"title": "VP Sales", "company_size": 900, "industry": "software", "country": "US"},
         ["senior", "big", "industry", "us"], 100.0),
        ({"title": "Sales Director", "company_size": 120}, ["senior", "mid"], 56.0),
        ({"title": "vpn admin", "company_size": 49}, [], 0.0),  # \b: not "vp"; 49 < 50
        ({"title": "Student", "email": "kid@GMAIL.com"}, ["student", "free_mail", "fit_limit"],
         0.0),
        ({"attributes": {"budget": "50k"}}, ["budget"], 10.0),
        ({"title": "Founder", "company_size": 3}, ["founder", "fit_limit"], 0.0),
        ({"title": "VP", "company_size": "lots"}, ["senior"], 40.0),  # not a number: no match
    ],
)
def test_fit_rules(profile, rules, fit):
    card = score(FIT, profile, [], NOW)
    assert [line.rule for line in card.lines] == rules
    assert card.fit == pytest.approx(fit) and card.total == pytest.approx(fit)
    assert card.problems == []


def test_clamping_is_a_line_so_the_breakdown_adds_up():
    card = score(FIT, {"title": "student", "email": "a@gmail.com"}, [], NOW)
    limit = card.lines[-1]
    assert (limit.rule, limit.points, limit.note) == ("fit_limit", 40.0, "below zero")
    assert sum(line.contribution for line in card.lines) == pytest.approx(card.total) == 0


@pytest.mark.parametrize("fit, grade", [(100, "A"), (75, "A"), (74.9, "B"), (50, "B"),
                                        (49, "C"), (25, "C"), (24, "D"), (0, "D")])  # fmt: skip
def test_grades_from_fit(fit, grade):
    graded = model(f"""
        fit: {{max: 100, rules: [{{id: x, when: "true", points: {fit}}}]}}
        weights: {{fit: 100, engagement: 0}}
        stages: {{mql: {{at: 40}}, sql: {{at: 80}}}}
    """)
    assert score(graded, {}, [], NOW).grade == grade


ENGAGEMENT = model("""
    engagement:
      max: 100
      half_life: 10d
      rules:
        - {id: pricing, event: page.view, where: {url: "*/pricing*"}, points: 20, cap: 30}
        - {id: page, event: page.view, points: 2}
        - {id: open, event: [email.open, email.click], points: 1, cap: 3}
        - {id: trial, event: trial.started, points: 16, once: true}
        - {id: unsubscribed, event: email.unsubscribe, points: -20, once: true, decays: false}
    weights: {fit: 0, engagement: 100}
    stages:
      mql: {at: 40, recycle_below: 25}
      sql: {at: 70}
""")


def test_first_matching_rule_takes_the_response():
    card = score(ENGAGEMENT, {}, [response("page.view", url="https://x.io/Pricing/team"),
                                  response("page.view", url="/blog")], NOW)  # fmt: skip
    assert {line.rule: line.points for line in card.lines} == {"pricing": 20, "page": 2}
    assert card.counts == {"pricing": 1, "page": 1}


@pytest.mark.parametrize("days, points", [(0, 20.0), (10, 10.0), (20, 5.0), (30, 2.5),
                                          (5, 20 / math.sqrt(2))])  # fmt: skip
def test_decay_halves_at_each_half_life(days, points):
    card = score(ENGAGEMENT, {}, [response("page.view", days, url="/pricing")], NOW)
    assert card.lines[0].points == pytest.approx(points)
    assert card.total == pytest.approx(points)


def test_cap_applies_after_decay():
    fresh = [response("page.view", 0, url="/pricing"), response("page.view", 10, url="/pricing")]
    assert score(ENGAGEMENT, {}, fresh, NOW).lines[0].points == 30.0  # 20 + 10 > cap 30 -> 30
    old = [response("page.view", 10, url="/pricing"), response("page.view", 20, url="/pricing")]
    line = score(ENGAGEMENT, {}, old, NOW).lines[0]
    assert (line.points, line.count, line.note) == (15.0, 2, "")  # 10 + 5, under the cap
    many = [response("email.open")] * 5
    line = score(ENGAGEMENT, {}, many, NOW).lines[0]
    assert (line.points, line.count, line.note) == (3.0, 5, "capped at 3")


def test_once_counts_the_freshest_response_and_negative_rules_need_not_decay():
    card = score(ENGAGEMENT, {}, [response("trial.started", 20), response("trial.started", 10),
                                  response("email.unsubscribe", 300)], NOW)  # fmt: skip
    points = {line.rule: line.points for line in card.lines}
    assert points["trial"] == pytest.approx(8.0) and points["unsubscribed"] == -20
    assert card.total == 0 and card.lines[-1].rule == "engagement_limit"


def test_responses_after_now_do_not_count():
    card = score(ENGAGEMENT, {}, [response("page.view", -1, url="/pricing")], NOW)
    assert card.total == 0 and card.lines == []


def test_decaying_flag_stops_when_points_have_faded():
    assert score(ENGAGEMENT, {}, [response("page.view", 10, url="/pricing")], NOW).decaying
    faded = score(ENGAGEMENT, {}, [response("page.view", 300, url="/pricing")], NOW)
    assert faded.total > 0 and not faded.decaying
    # A negative rule that never decays is nothing to rescore for.
    assert not score(ENGAGEMENT, {}, [response("email.unsubscribe")], NOW).decaying


def test_weights_combine_the_dimensions():
    mixed = model("""
        fit: {max: 60, rules: [{id: vp, field: title, matches: vp, points: 30}]}
        engagement: {max: 100, rules: [{id: click, event: email.click, points: 50}]}
        weights: {fit: 40, engagement: 60}
        stages: {mql: {at: 40}, sql: {at: 80}}
    """)
    card = score(mixed, {"title": "VP"}, [response("email.click")], NOW)
    assert (card.fit, card.engagement, card.total) == (50.0, 50.0, 50.0)
    assert {line.rule: line.contribution for line in card.lines} == {"vp": 20.0, "click": 30.0}


def _walk(m: ScoringModel, totals: list[float]) -> list[str]:
    """Stages a lead goes through as its total moves along `totals`."""
    stage, seen = "lead", []
    for total in totals:
        card = score(m, {}, [], NOW)
        card.total = total
        stage = decide_stage(m, stage, card, {}).new
        seen.append(stage)
    return seen


def test_hysteresis_no_flapping_and_recycling_is_recorded():
    assert _walk(ENGAGEMENT, [41, 39, 30, 26, 41, 24, 30, 39, 40]) == [
        "mql", "mql", "mql", "mql", "mql", "lead", "lead", "lead", "mql"
    ]  # fmt: skip
    card = score(ENGAGEMENT, {}, [], NOW)
    card.total = 24
    decision = decide_stage(ENGAGEMENT, "mql", card, {})
    assert decision.recycled and decision.new == "lead" and "below 25" in decision.reason
    card.total = 75
    jump = decide_stage(ENGAGEMENT, "lead", card, {})
    assert jump.entered == ["mql", "sql"] and not jump.recycled


def test_sales_owned_stages_are_never_moved():
    card = score(ENGAGEMENT, {}, [], NOW)
    for stage in ("sql", "accepted", "customer"):
        assert decide_stage(ENGAGEMENT, stage, card, {}).new == stage


GATED = model("""
    engagement:
      rules:
        - {id: demo, event: form.submitted, where: {form: demo*}, points: 40}
        - {id: form, event: form.submitted, points: 10}
        - {id: key_action, event: product.action, where: {action: invite*}, points: 15}
        - {id: trial, event: trial.started, points: 10}
    weights: {fit: 0, engagement: 100}
    stages:
      mql: {at: 20}
      pql: {when: "counts.trial and counts.key_action >= 2", recycle_when: "engagement < 5"}
      sql:
        at: 50
        gate_name: BANT
        gate:
          budget: "lead.attributes.budget or answers.budget"
          timeline: "answers.timeline"
""")


def test_sql_needs_its_gate():
    demo = response("form.submitted", form="demo request", timeline="Q3")
    no_budget = score(GATED, {}, [demo, response("form.submitted")], NOW)
    held = decide_stage(GATED, "lead", no_budget, {})
    assert no_budget.total == 50 and held.new == "mql" and held.gate == {
        "budget": False, "timeline": True}  # fmt: skip
    assert "BANT lacks budget" in decide_stage(GATED, "mql", no_budget, {}).reason
    # Answered in a later form, or known from the profile: now it holds.
    answered = score(GATED, {}, [demo, response("form.submitted", budget="yes")], NOW)
    assert decide_stage(GATED, "mql", answered, {}).new == "sql"
    profile = {"attributes": {"budget": "approved"}}
    known = decide_stage(GATED, "lead", score(GATED, profile, [demo, response("form.submitted")],
                                              NOW), profile)  # fmt: skip
    assert known.entered == ["mql", "sql"] and "BANT holds" in known.reason


def test_pql_from_product_usage():
    usage = [response("trial.started"), response("product.action", action="invite_user")]
    assert decide_stage(GATED, "lead", score(GATED, {}, usage, NOW), {}).new == "mql"
    usage.append(response("product.action", action="invite_admin"))
    decision = decide_stage(GATED, "lead", score(GATED, {}, usage, NOW), {})
    assert decision.new == "pql" and decision.entered == ["mql", "pql"]


# --- properties ------------------------------------------------------------------------------

TYPES = ["email.open", "email.click", "page.view", "form.submitted", "email.unsubscribe"]

rules = st.lists(
    st.fixed_dictionaries({
        "event": st.sampled_from(TYPES),
        "points": st.integers(-40, 40),
        "cap": st.one_of(st.none(), st.integers(1, 60)),
        "once": st.booleans(),
        "decays": st.booleans(),
        "where": st.sampled_from([{}, {"url": "*/pricing*"}]),
    }),
    max_size=6,
)  # fmt: skip
fit_rules = st.lists(
    st.fixed_dictionaries({"points": st.integers(-50, 50),
                           "field": st.just("company_size"),
                           "at_least": st.integers(0, 1000)}),  # fmt: skip
    max_size=4,
)
models = st.builds(
    lambda e, f, wf, fit_max, eng_max, half_life: ScoringModel.model_validate({
        "fit": {"max": fit_max, "rules": [dict(r, id=f"f{i}") for i, r in enumerate(f)]},
        "engagement": {"max": eng_max, "half_life": half_life,
                       "rules": [dict(r, id=f"e{i}") for i, r in enumerate(e)]},
        "weights": {"fit": wf, "engagement": 100 - wf},
        "stages": {"mql": {"at": 40}, "sql": {"at": 70}},
    }),  # fmt: skip
    rules, fit_rules, st.integers(0, 100), st.integers(1, 200), st.integers(1, 200),
    st.sampled_from([None, "1d", "30d"]),
)
responses = st.lists(
    st.builds(lambda kind, age, pricing: response(kind, age, **({"url": "/pricing"} if pricing
                                                                 else {})),
              st.sampled_from(TYPES), st.floats(0, 400), st.booleans()),  # fmt: skip
    max_size=25,
)
profiles = st.fixed_dictionaries({"company_size": st.one_of(st.none(), st.integers(0, 5000))})
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


@PROPERTY
@given(models, profiles, responses)
def test_total_within_0_100_and_breakdown_sums_to_it(m, profile, seen):
    card = score(m, profile, seen, NOW)
    assert 0 <= card.total <= 100 and 0 <= card.fit <= 100 and 0 <= card.engagement <= 100
    assert sum(line.contribution for line in card.lines) == pytest.approx(card.total, abs=1e-6)


@PROPERTY
@given(models, profiles, responses, st.sampled_from(TYPES), st.floats(0, 400), st.booleans())
def test_a_positive_response_never_lowers_the_score(m, profile, seen, kind, age, pricing):
    extra = response(kind, age, **({"url": "/pricing"} if pricing else {}))
    first = next(
        (r for r in m.engagement.rules
         if kind in r.event and all(extra.data.get(k) == "/pricing" for k in r.where)),
        None,
    )  # fmt: skip
    if first is None or first.points <= 0:
        return  # not a positive response under this model
    before = score(m, profile, seen, NOW).total
    assert score(m, profile, [*seen, extra], NOW).total >= before - 1e-9


# --- scoring.yaml validation -----------------------------------------------------------------


def test_scoring_yaml_errors_name_file_line_and_field(defs):  # noqa: F811
    write(defs, "scoring.yaml", """
        default_model: test
        models:
          test:
            fit:
              rules:
                - {id: a, field: titel, matches: x, points: 5}
                - {id: b, field: title, matches: "(", points: 5}
            engagement:
              rules:
                - {id: c, event: email.teleport, points: 1}
                - {id: d, on: email.open, points: 1}
            weights: {fit: 50, engagement: 60}
            stages:
              mql: {at: 40, recycle_below: 45}
              sql: {at: 70}
    """)  # fmt: skip
    found = {p.field: p for p in errors(defs)}
    assert "unknown field 'titel'" in found["models.test.fit.rules.0.field"].message
    assert found["models.test.fit.rules.0.field"].line == 6
    assert "invalid regular expression" in found["models.test.fit.rules.1.matches"].message
    assert "email.teleport" in found["models.test.engagement.rules.0.event"].message
    assert found["models.test.engagement.rules.0.event"].line == 10
    assert "write `event:`" in found["models.test.engagement.rules.1.event"].message
    assert "add up to 100" in found["models.test.weights.fit"].message
    assert "flap" in found["models.test.stages.mql.recycle_below"].message
    assert found["models.test.stages.mql.recycle_below"].line == 14


def test_stage_order_and_gate_syntax(defs):  # noqa: F811
    write(defs, "scoring.yaml", """
        default_model: test
        models:
          test:
            stages:
              mql: {at: 40}
              sql: {at: 30, gate: {budget: "answers.budget or"}}
    """)  # fmt: skip
    (problem,) = errors(defs)
    assert problem.field == "models.test.stages.sql.gate.budget" and problem.line == 6
    write(defs, "scoring.yaml", (defs / "scoring.yaml").read_text().replace(' or"', '"'))
    (problem,) = errors(defs)
    assert problem.field == "models.test.stages.sql.at" and "above mql" in problem.message


def test_expressions_are_checked_against_a_sample_lead(defs):  # noqa: F811
    write(defs, "scoring.yaml", """
        default_model: test
        models:
          test:
            engagement: {rules: [{id: click, event: email.click, points: 5}]}
            weights: {fit: 0, engagement: 100}
            stages:
              mql: {when: "totl >= 40"}
              sql: {at: 70, gate: {budget: "budgt", need: "answers.need"}}
    """)  # fmt: skip
    found = {p.field: p for p in errors(defs)}
    assert "totl" in found["models.test.stages.mql.when"].message
    assert found["models.test.stages.mql.when"].line == 7
    assert found["models.test.stages.sql.gate.budget"].line == 8
    assert "models.test.stages.sql.gate.need" not in found


def test_segments_name_existing_models_and_shadowed_rules_warn(defs):  # noqa: F811
    from nurture.validate import validate

    segments = (defs / "segments.yaml").read_text()
    segments = segments.replace("default:\n", "default:\n  scoring_model: nope\n")
    write(defs, "segments.yaml", segments)
    write(defs, "scoring.yaml", """
        default_model: test
        models:
          test:
            engagement:
              rules:
                - {id: any_page, event: page.view, points: 1}
                - {id: pricing, event: page.view, where: {url: "*pricing*"}, points: 9}
            weights: {fit: 0, engagement: 100}
            stages: {mql: {at: 20}, sql: {at: 50}}
    """)  # fmt: skip
    problems = validate(defs)
    (bad_model,) = [p for p in problems if p.field == "default.scoring_model"]
    assert "no scoring model 'nope'" in bad_model.message
    (shadowed,) = [p for p in problems if "never counts" in p.message]
    assert shadowed.severity == "warning" and shadowed.line == 7
