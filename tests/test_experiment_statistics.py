"""experiments/statistics.py on simulated populations with a known truth: the always-valid
test keeps its false-positive rate when looked at repeatedly (the naive test does not),
finds a planted effect, covers the true difference at every look; SRM, the planning
helper and the edge cases. Simulations are seeded and vectorised (docs/experiments.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_effectsize

from experiments.statistics import (
    compare,
    compare_amounts,
    confidence_sequence,
    plan,
    rate_sequence,
    sample_ratio_mismatch,
    sequential_inflation,
)

ALPHA = 0.05
SIMULATIONS = 1000
STEP, LOOKS = 200, 25  # a look every 200 leads per arm, up to 5,000 per arm
LEADS = STEP * np.arange(1, LOOKS + 1)
PLANNED = 2 * STEP * LOOKS  # rho tuned for the final look (both arms together)


def looks(rng: np.random.Generator, p0: float, p1: float) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative conversions per (simulation, look) for control and arm."""
    size = (SIMULATIONS, LOOKS)
    return rng.binomial(STEP, p0, size).cumsum(1), rng.binomial(STEP, p1, size).cumsum(1)


def naive_significant(x0: np.ndarray, x1: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The fixed-horizon pooled z-test, as if each look were the only one."""
    pooled = (x0 + x1) / (2 * n)
    with np.errstate(invalid="ignore"):  # 0/0 before any conversion: not significant
        z = (x1 - x0) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    return np.abs(z) > stats.norm.ppf(1 - ALPHA / 2)


# --- (a) no effect, looked at 25 times -----------------------------------------------------------


@pytest.mark.parametrize("rate", [0.10, 0.02])
def test_under_the_null_repeated_looks_keep_the_false_positive_rate(rate):
    x0, x1 = looks(np.random.default_rng(20), rate, rate)
    _, low, high, p = rate_sequence(LEADS, x0, LEADS, x1, ALPHA, PLANNED)
    ever = ((low > 0) | (high < 0)).any(axis=1)
    assert ever.mean() <= ALPHA  # measured 0.010 at 10%, 0.004 at 2%
    assert np.array_equal(ever, (p < ALPHA).any(axis=1))  # p-value and interval agree
    naive = naive_significant(x0, x1, LEADS)
    assert naive[:, -1].mean() <= 0.07  # one look: the naive test is fine (measured 0.047, 0.053)
    assert naive.any(axis=1).mean() > 0.15  # 25 looks: it is not (measured 0.269, 0.265)


def test_rho_tuned_to_the_current_count_also_holds_over_these_looks():
    """Without a plan compare() tunes rho to the current count; over 25 looks that stays
    under alpha too (measured 0.021), though only a fixed rho is valid for any number."""
    x0, x1 = looks(np.random.default_rng(21), 0.10, 0.10)
    _, low, high, _ = rate_sequence(LEADS, x0, LEADS, x1, ALPHA, planned=None)
    assert ((low > 0) | (high < 0)).any(axis=1).mean() <= ALPHA


def test_revenue_per_lead_under_the_null_keeps_the_false_positive_rate():
    """Heavy-tailed amounts (5% win, log-normal deal size) through the same sequence."""
    rng = np.random.default_rng(22)
    sims, n = 400, LEADS

    def cumulative(won_rate: float) -> tuple[np.ndarray, np.ndarray]:
        amounts = np.where(rng.random((sims, n[-1])) < won_rate,
                           rng.lognormal(8, 1, (sims, n[-1])), 0.0)  # fmt: skip
        return amounts.cumsum(1)[:, n - 1], (amounts**2).cumsum(1)[:, n - 1]

    (s0, q0), (s1, q1) = cumulative(0.05), cumulative(0.05)
    m0, m1 = s0 / n, s1 / n
    variance = (q0 - n * m0**2) / (n - 1) / n + (q1 - n * m1**2) / (n - 1) / n
    low, high, _ = confidence_sequence(m1 - m0, variance, 2 * n, ALPHA, PLANNED)
    assert ((low > 0) | (high < 0)).any(axis=1).mean() <= ALPHA  # measured 0.0075


# --- (b), (c) a planted effect -------------------------------------------------------------------


def test_a_planted_effect_is_found_and_the_interval_covers_it_at_every_look():
    x0, x1 = looks(np.random.default_rng(23), 0.10, 0.13)
    difference, low, high, _ = rate_sequence(LEADS, x0, LEADS, x1, ALPHA, PLANNED)
    assert (low > 0).any(axis=1).mean() >= 0.9  # measured 0.959 by 5,000 per arm
    assert not (high < 0).any()  # never the wrong sign
    covered = ((low <= 0.03) & (high >= 0.03)).all(axis=1)  # at all 25 looks at once
    assert covered.mean() >= 1 - ALPHA  # measured 0.986
    assert abs(difference[:, -1].mean() - 0.03) < 0.002


def test_compare_is_the_vectorised_sequence_plus_statsmodels_reference():
    result = compare((5000, 500), (5000, 650), planned=PLANNED)
    difference, low, high, p = rate_sequence(5000, 500, 5000, 650, ALPHA, PLANNED)
    assert result.difference == pytest.approx(0.03) == pytest.approx(float(difference))
    assert (result.sequence.low, result.sequence.high) == pytest.approx((low, high))
    assert result.p_value == pytest.approx(float(p)) and result.significant
    assert result.relative == pytest.approx(0.3)
    reference = confint_proportions_2indep(650, 5000, 500, 5000, compare="diff")
    assert (result.fixed.low, result.fixed.high) == pytest.approx(reference)
    # Always valid costs width: the sequence is wider than the one-look interval.
    assert result.sequence.low < result.fixed.low and result.sequence.high > result.fixed.high


def test_the_sequence_is_narrowest_at_its_planned_count():
    at = {planned: confidence_sequence(0.0, 1e-4, 10_000, ALPHA, planned)[1]
          for planned in (1_000, 10_000, 100_000)}  # fmt: skip
    assert at[10_000] < at[1_000] and at[10_000] < at[100_000]


def test_p_value_below_alpha_exactly_when_the_sequence_excludes_zero():
    rng = np.random.default_rng(24)
    n = rng.integers(50, 5000, (2, 2000))
    x = rng.binomial(n, rng.uniform(0.05, 0.2, (2, 2000)))
    _, low, high, p = rate_sequence(n[0], x[0], n[1], x[1], ALPHA, 4000)
    assert np.array_equal((low > 0) | (high < 0), p < ALPHA)


# --- (d) sample-ratio mismatch -------------------------------------------------------------------


def test_srm_quiet_on_a_fair_split_and_flags_a_skewed_one_naming_the_arms():
    fair = sample_ratio_mismatch({"control": 5000, "b": 5000}, {"control": 0.5, "b": 0.5})
    assert not fair.flagged and fair.p_value == pytest.approx(1.0)
    skewed = sample_ratio_mismatch({"control": 4700, "b": 5300}, {"control": 0.5, "b": 0.5})
    assert skewed.flagged and skewed.p_value < 1e-6
    assert skewed.expected == {"control": 5000.0, "b": 5000.0}
    assert "'b' has 5,300 leads, 300 more" in skewed.message
    assert "'control' has 4,700 leads, 300 fewer" in skewed.message
    assert json.loads(json.dumps(skewed.to_dict()))["flagged"] is True


def test_srm_uses_the_weights_and_tolerates_noise():
    weighted = sample_ratio_mismatch({"a": 8000, "b": 1000, "c": 1000},
                                     {"a": 0.8, "b": 0.1, "c": 0.1})  # fmt: skip
    assert not weighted.flagged  # exactly the configured 80/10/10
    wrong = sample_ratio_mismatch({"a": 5000, "b": 2500, "c": 2500}, {"a": 1, "b": 1, "c": 1})
    assert wrong.flagged and "'a' has 5,000 leads" in wrong.message
    rng = np.random.default_rng(25)  # fair assignment: alarms at about the threshold rate
    alarms = [sample_ratio_mismatch(dict(zip("ab", rng.multinomial(10_000, [0.5, 0.5]),
                                             strict=True)), {"a": 1, "b": 1}).flagged
              for _ in range(500)]  # fmt: skip
    assert sum(alarms) <= 3


def test_srm_edge_cases():
    empty = sample_ratio_mismatch({}, {"a": 1, "b": 1})
    assert not empty.flagged and empty.counts == {"a": 0, "b": 0}
    with pytest.raises(ValueError):
        sample_ratio_mismatch({"z": 3}, {"a": 1, "b": 1})
    with pytest.raises(ValueError):
        sample_ratio_mismatch({"a": 3}, {"a": 1, "b": 0})


# --- (e) planning --------------------------------------------------------------------------------


def test_plan_fixed_horizon_is_statsmodels_figure():
    fixed = plan(0.10, 0.03, sequential=False)
    expected = NormalIndPower().solve_power(
        effect_size=proportion_effectsize(0.13, 0.10), alpha=0.05, power=0.8, ratio=1.0
    )
    assert fixed.leads_per_arm == [int(np.ceil(expected))] * 2 == [1769, 1769]
    assert fixed.inflation == 1.0 and fixed.leads_total == 3538 and fixed.planned == [3538]


def test_plan_sequential_costs_the_stated_factor_and_counts_days():
    sequential = plan(0.10, 0.03, leads_per_day=250)
    assert sequential.fixed_leads_per_arm == [1769, 1769]
    assert sequential.inflation == pytest.approx(sequential_inflation(0.05, 0.8))
    assert 1.85 < sequential.inflation < 1.95  # ((3.03 + 0.84) / (1.96 + 0.84))^2
    assert sequential.leads_per_arm == [3386, 3386] and sequential.planned == [6772]
    assert sequential.days == 28  # ceil(6,772 / 250)
    three = plan(0.10, 0.03, arms=3, weights=[2, 1, 1])
    assert three.leads_per_arm[0] > three.leads_per_arm[1] == three.leads_per_arm[2]
    assert three.leads_total == sum(three.leads_per_arm)
    json.dumps(three.to_dict())


def test_simulation_at_the_planned_count_has_the_planned_power():
    rng, draws = np.random.default_rng(26), 20_000
    sequential = plan(0.10, 0.03)
    n = sequential.leads_per_arm[0]
    x0, x1 = rng.binomial(n, 0.10, draws), rng.binomial(n, 0.13, draws)
    _, low, _, _ = rate_sequence(n, x0, n, x1, ALPHA, sequential.planned[0])
    assert 0.75 <= (low > 0).mean() <= 0.85  # planned 0.80, measured 0.802
    fixed = plan(0.10, 0.03, sequential=False).leads_per_arm[0]
    x0, x1 = rng.binomial(fixed, 0.10, draws), rng.binomial(fixed, 0.13, draws)
    _, low, _, _ = rate_sequence(fixed, x0, fixed, x1, ALPHA, 2 * fixed)
    assert (low > 0).mean() < 0.6  # at the fixed figure: measured 0.405


def test_plan_rejects_impossible_inputs():
    bad = [{"baseline_rate": 0.1, "minimum_effect": 0.0},
           {"baseline_rate": 0.95, "minimum_effect": 0.1},
           {"baseline_rate": 0.1, "minimum_effect": 0.03, "arms": 3, "weights": [1, 1]},
           {"baseline_rate": 0.1, "minimum_effect": 0.03, "weights": [1, -1]}]  # fmt: skip
    for arguments in bad:
        with pytest.raises(ValueError):
            plan(**arguments)
    assert plan(0.10, -0.03, sequential=False).leads_per_arm[0] > 0  # a drop can be planned


# --- (f) edge cases ------------------------------------------------------------------------------


def test_an_arm_without_leads_gives_an_empty_result_not_an_error():
    result = compare((0, 0), (10, 1))
    assert result.difference is None and result.sequence is None and result.fixed is None
    assert not result.significant and result.p_value == 1.0 and "no leads" in result.note
    assert result.arm.value == 0.1
    assert json.loads(json.dumps(result.to_dict()))["sequence"] is None


def test_no_or_all_conversions_still_carry_uncertainty():
    nothing = compare((10, 0), (10, 0))
    assert nothing.difference == 0 and not nothing.significant and nothing.p_value == 1.0
    assert nothing.sequence.low < 0 < nothing.sequence.high and "No conversions" in nothing.note
    assert nothing.relative is None  # no lift against a zero rate
    extreme = compare((3, 0), (3, 3))
    assert extreme.sequence.low >= -1 and extreme.sequence.high <= 1
    assert not compare((2, 0), (2, 1)).significant  # one conversion proves nothing
    with pytest.raises(ValueError):
        compare((10, 11), (10, 1))


def test_revenue_comparison_and_its_edge_cases():
    rng = np.random.default_rng(27)
    control = np.where(rng.random(4000) < 0.05, rng.lognormal(8, 1, 4000), 0.0)
    arm = np.where(rng.random(4000) < 0.08, rng.lognormal(8, 1, 4000), 0.0)
    result = compare_amounts(control, arm)
    assert result.kind == "mean" and result.difference == pytest.approx(arm.mean() - control.mean())
    welch = stats.ttest_ind(arm, control, equal_var=False).confidence_interval(0.95)
    assert (result.fixed.low, result.fixed.high) == pytest.approx((welch.low, welch.high))
    assert result.sequence.low < result.fixed.low and result.significant
    too_few = compare_amounts([100.0], [0.0, 5.0])
    assert too_few.sequence is None and not too_few.significant and "fewer than 2" in too_few.note
    flat = compare_amounts([5.0, 5.0], [7.0, 7.0])
    assert flat.difference == 2.0 and flat.sequence is None and not flat.significant
    assert compare_amounts([], []).to_dict()["control"]["value"] is None
