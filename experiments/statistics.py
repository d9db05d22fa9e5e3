"""The statistics of an experiment: arm against control, assignment checks, sample sizes.

Pure functions, no I/O and no clock: the split steps, `nurture experiments` (and `plan`)
and the console page call them with counts they have read. The distributions come from
scipy and statsmodels; nothing here hand-writes a quantile or a tail (docs/experiments.md).

The interval an experimenter should act on is the *confidence sequence*, the asymptotic
confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform
central limit theory and asymptotic confidence sequences" (Annals of Statistics, 2024;
arXiv:2103.06476), Theorem 2.2 with its Gaussian-mixture boundary. It holds at every look
at once, so the results page can be read daily without raising the false-positive rate.
The fixed-horizon interval is reported beside it for reference only: it is valid at one
pre-planned look, and checking it repeatedly finds "effects" that are not there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    test_proportions_2indep,
)

Counts = tuple[int, int]  # (leads, conversions) of one arm for a rate metric
SRM_THRESHOLD = 0.001  # the conventional sample-ratio-mismatch alarm level


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None, recursively."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Dict:
    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))  # type: ignore[call-overload]


@dataclass(frozen=True)
class Interval(_Dict):
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class ArmSummary(_Dict):
    leads: int
    total: float  # conversions for a rate, summed amount (revenue) for a mean
    value: float | None  # rate or mean per lead; None with no leads


@dataclass(frozen=True)
class Comparison(_Dict):
    """Arm against control. `sequence` and `p_value` are the always-valid figures to act
    on; `fixed` and `fixed_p_value` assume a single pre-planned look (reference only)."""

    kind: str  # "rate" or "mean"
    control: ArmSummary
    arm: ArmSummary
    difference: float | None  # arm - control
    relative: float | None  # difference / control value (the "lift")
    alpha: float
    planned: int | None  # the leads (both arms) the sequence's rho is tuned for
    sequence: Interval | None  # always-valid (1 - alpha) confidence sequence
    p_value: float  # always-valid p-value at this look (1.0 when there is nothing to test)
    significant: bool  # the sequence excludes 0, i.e. p_value < alpha
    fixed: Interval | None  # fixed-horizon (1 - alpha) interval
    fixed_p_value: float | None
    note: str = ""


# --- the confidence sequence ---------------------------------------------------------------------


def rho_squared(alpha: float, planned: float | np.ndarray) -> float | np.ndarray:
    """The mixture's tuning parameter rho^2 that makes the sequence narrowest at
    `planned` observations: rho^2 = (-2 ln a + ln(-2 ln a + 1)) / planned (the paper's
    choice). Any fixed rho keeps validity; it must not be re-tuned on the data."""
    c = -2.0 * math.log(alpha) + math.log(-2.0 * math.log(alpha) + 1.0)
    return c / np.asarray(planned, dtype=float)


def confidence_sequence(
    difference: Any, variance: Any, t: Any, alpha: float = 0.05, planned: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, p) of the asymptotic confidence sequence for an estimate with
    `variance` (its squared standard error) after `t` observations (vectorised).

    With s^2 = t * variance the per-observation variance and x = t rho^2, the half-width
    is sqrt(variance * 2(x + 1)/x * ln(sqrt(x + 1)/alpha)), i.e. the paper's
    s * sqrt(2(t rho^2 + 1)/(t^2 rho^2) * ln(sqrt(t rho^2 + 1)/alpha)). The p-value is
    the smallest alpha whose sequence (same rho) excludes 0:
    min(1, sqrt(x + 1) * exp(-z^2/2 * x/(x + 1))) with z^2 = difference^2 / variance.
    """
    d, v, t = (np.asarray(a, dtype=float) for a in (difference, variance, t))
    x = t * rho_squared(alpha, t if planned is None else planned)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.sqrt(v * 2.0 * (x + 1.0) / x * np.log(np.sqrt(x + 1.0) / alpha))
        z2 = np.where(v > 0, d * d / v, np.where(d == 0, 0.0, np.inf))
        p = np.minimum(1.0, np.sqrt(x + 1.0) * np.exp(-z2 / 2.0 * x / (x + 1.0)))
    return d - half, d + half, p


def rate_variance(leads: Any, conversions: Any) -> np.ndarray:
    """Squared standard error of a rate, from the rate shrunk by one conversion and one
    non-conversion ((x + 1)/(n + 2)), so an arm with none or all converted still carries
    uncertainty instead of a zero-width interval. Negligible once counts are large."""
    n, x = np.asarray(leads, dtype=float), np.asarray(conversions, dtype=float)
    shrunk = (x + 1.0) / (n + 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return shrunk * (1.0 - shrunk) / n


def rate_sequence(
    control_leads: Any,
    control_conversions: Any,
    arm_leads: Any,
    arm_conversions: Any,
    alpha: float = 0.05,
    planned: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(difference, low, high, p) for arm - control rates, vectorised over looks or
    simulated experiments; `compare` is this for one look plus the reference figures."""
    n0, x0, n1, x1 = (np.asarray(a, dtype=float) for a in (control_leads, control_conversions,
                                                          arm_leads, arm_conversions))  # fmt: skip
    with np.errstate(divide="ignore", invalid="ignore"):
        difference = x1 / n1 - x0 / n0
    variance = rate_variance(n0, x0) + rate_variance(n1, x1)
    low, high, p = confidence_sequence(difference, variance, n0 + n1, alpha, planned)
    return difference, np.maximum(low, -1.0), np.minimum(high, 1.0), p  # a rate gap is in [-1, 1]


# --- comparing arms ------------------------------------------------------------------------------


def _empty(kind: str, control: ArmSummary, arm: ArmSummary, alpha: float, note: str) -> Comparison:
    return Comparison(kind, control, arm, None, None, alpha, None, None, 1.0, False, None, None,
                      note)  # fmt: skip


def _relative(difference: float, base: float | None) -> float | None:
    return difference / base if base else None


def _fixed_rates(control: Counts, arm: Counts, alpha: float) -> tuple[Interval, float | None]:
    """statsmodels' Newcomb interval and Agresti-Caffo test (arm first, so arm - control)."""
    (n0, x0), (n1, x1) = control, arm
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = confint_proportions_2indep(x1, n1, x0, n0, compare="diff", alpha=alpha)
        p = test_proportions_2indep(x1, n1, x0, n0, compare="diff").pvalue
    return Interval(float(low), float(high)), float(p) if np.isfinite(p) else None


def compare(
    control: Counts, arm: Counts, alpha: float = 0.05, planned: int | None = None
) -> Comparison:
    """Compare the arm's rate (e.g. SQL per lead) with control's.

    `planned` is the total leads in these two arms the experiment is planned to reach
    (`Plan.planned`); the sequence is narrowest there and valid at every look before and
    after. Without it rho is tuned to the current count: fine for one look, but a caller
    that looks repeatedly should pass the plan's figure so rho stays fixed.
    """
    (n0, x0), (n1, x1) = control, arm
    if min(n0, n1) < 0 or not (0 <= x0 <= n0 and 0 <= x1 <= n1):
        raise ValueError(f"counts must be 0 <= conversions <= leads: {control}, {arm}")
    c = ArmSummary(n0, x0, x0 / n0 if n0 else None)
    a = ArmSummary(n1, x1, x1 / n1 if n1 else None)
    if not (n0 and n1):
        return _empty("rate", c, a, alpha, "No comparison yet: an arm has no leads.")
    difference, low, high, p = (float(v) for v in rate_sequence(n0, x0, n1, x1, alpha, planned))
    fixed, fixed_p = _fixed_rates(control, arm, alpha)
    rho_at = planned if planned is not None else n0 + n1
    significant = bool(p < alpha)
    note = "" if x0 + x1 else "No conversions in either arm yet."
    return Comparison("rate", c, a, difference, _relative(difference, c.value), alpha, rho_at,
                      Interval(low, high), p, significant, fixed, fixed_p, note)  # fmt: skip


def compare_amounts(
    control_values: Sequence[float],
    arm_values: Sequence[float],
    alpha: float = 0.05,
    planned: int | None = None,
) -> Comparison:
    """Compare the arm's mean amount per lead (e.g. revenue, zeros included) with
    control's: the same confidence sequence with the two sample variances, and Welch's
    t interval (scipy) for reference. Heavy tails widen it honestly; nothing is trimmed."""
    y0, y1 = np.asarray(control_values, dtype=float), np.asarray(arm_values, dtype=float)
    n0, n1 = len(y0), len(y1)
    c = ArmSummary(n0, float(y0.sum()), float(y0.mean()) if n0 else None)
    a = ArmSummary(n1, float(y1.sum()), float(y1.mean()) if n1 else None)
    if min(n0, n1) < 2:
        return _empty("mean", c, a, alpha, "No comparison yet: an arm has fewer than 2 leads.")
    difference = float(y1.mean() - y0.mean())
    variance = y0.var(ddof=1) / n0 + y1.var(ddof=1) / n1
    if variance == 0:  # no spread: nothing to say how uncertain the difference is
        note = "Every amount within each arm is the same: no spread to estimate an interval."
        empty = _empty("mean", c, a, alpha, note)
        return replace(empty, difference=difference, relative=_relative(difference, c.value))
    low, high, p = (float(v) for v in confidence_sequence(difference, variance, n0 + n1, alpha,
                                                          planned))  # fmt: skip
    welch = stats.ttest_ind(y1, y0, equal_var=False)
    ci = welch.confidence_interval(1.0 - alpha)
    rho_at = planned if planned is not None else n0 + n1
    return Comparison("mean", c, a, difference, _relative(difference, c.value), alpha, rho_at,
                      Interval(low, high), p, bool(p < alpha), Interval(float(ci.low),
                      float(ci.high)), float(welch.pvalue))  # fmt: skip


Moments = tuple[int, float, float]  # (leads, sum, sum of squares) of an amount per lead


def compare_moments(
    control: Moments, arm: Moments, alpha: float = 0.05, planned: int | None = None
) -> Comparison:
    """`compare_amounts` from each arm's leads, sum and sum of squares of the amount per
    lead (zeros included), which a database can add up without sending every lead's
    amount: the same confidence sequence, and Welch's interval from the same summaries
    (scipy's t distribution, Welch-Satterthwaite degrees of freedom)."""
    (n0, s0, q0), (n1, s1, q1) = ((int(n), float(s), float(q)) for n, s, q in (control, arm))
    if min(n0, n1) < 0 or min(q0, q1) < 0:
        raise ValueError(f"leads and sums of squares must be >= 0: {control}, {arm}")
    c = ArmSummary(n0, s0, s0 / n0 if n0 else None)
    a = ArmSummary(n1, s1, s1 / n1 if n1 else None)
    if min(n0, n1) < 2:
        return _empty("mean", c, a, alpha, "No comparison yet: an arm has fewer than 2 leads.")
    v0, v1 = _sample_variance(n0, s0, q0), _sample_variance(n1, s1, q1)
    difference = s1 / n1 - s0 / n0
    variance = v0 / n0 + v1 / n1
    if variance == 0:
        note = "Every amount within each arm is the same: no spread to estimate an interval."
        empty = _empty("mean", c, a, alpha, note)
        return replace(empty, difference=difference, relative=_relative(difference, c.value))
    low, high, p = (float(v) for v in confidence_sequence(difference, variance, n0 + n1, alpha,
                                                          planned))  # fmt: skip
    fixed, fixed_p = _welch(difference, (n0, v0), (n1, v1), alpha)
    rho_at = planned if planned is not None else n0 + n1
    return Comparison("mean", c, a, difference, _relative(difference, c.value), alpha, rho_at,
                      Interval(low, high), p, bool(p < alpha), fixed, fixed_p)  # fmt: skip


def _sample_variance(n: int, total: float, squares: float) -> float:
    """The sample variance (n - 1) from the sums; what rounding leaves of a spread below
    a 10^-12 share of the mean square is no spread at all (every amount the same)."""
    spread = squares - total * total / n
    return 0.0 if spread <= 1e-12 * squares else spread / (n - 1)


def _welch(
    difference: float, control: tuple[int, float], arm: tuple[int, float], alpha: float
) -> tuple[Interval, float]:
    """Welch's interval and p-value for arm - control from (leads, sample variance)."""
    (n0, v0), (n1, v1) = control, arm
    e0, e1 = v0 / n0, v1 / n1
    freedom = (e0 + e1) ** 2 / (e0 * e0 / (n0 - 1) + e1 * e1 / (n1 - 1))
    half = float(stats.t.ppf(1.0 - alpha / 2.0, freedom)) * math.sqrt(e0 + e1)
    p = float(2.0 * stats.t.sf(abs(difference) / math.sqrt(e0 + e1), freedom))
    return Interval(difference - half, difference + half), p


# --- sample-ratio mismatch -----------------------------------------------------------------------


@dataclass(frozen=True)
class Srm(_Dict):
    counts: dict[str, int]
    expected: dict[str, float]
    p_value: float
    threshold: float
    flagged: bool
    message: str


def _srm_message(counts: Mapping[str, int], expected: Mapping[str, float], p: float) -> str:
    share = {k: (counts[k] - expected[k]) / expected[k] for k in expected}
    over, under = max(share, key=share.__getitem__), min(share, key=share.__getitem__)

    def said(arm: str) -> str:
        gap = counts[arm] - expected[arm]
        word = "more" if gap > 0 else "fewer"
        return f"'{arm}' has {counts[arm]:,} leads, {abs(gap):,.0f} {word} than the " \
               f"{expected[arm]:,.0f} expected ({share[arm]:+.1%})"  # fmt: skip

    return (f"Sample ratio mismatch (p = {p:.2g}): {said(over)}; {said(under)}. Assignment "
            "does not follow the weights; find the cause before trusting the results.")  # fmt: skip


def sample_ratio_mismatch(
    counts: Mapping[str, int], weights: Mapping[str, float], threshold: float = SRM_THRESHOLD
) -> Srm:
    """Chi-square goodness of fit (scipy) of the leads assigned to each arm against the
    configured weights. A mismatch means assignment or tracking is broken (a bug, a
    filter on one arm, lost events), which biases every comparison, so it is checked
    at the strict conventional level 0.001: few false alarms over many looks."""
    if set(counts) - set(weights):
        raise ValueError(f"counts for arms without a weight: {sorted(set(counts) - set(weights))}")
    if any(w <= 0 for w in weights.values()):
        raise ValueError("every arm's weight must be positive")
    arms = list(weights)
    observed = {arm: int(counts.get(arm, 0)) for arm in arms}
    total, weight_sum = sum(observed.values()), sum(weights.values())
    expected = {arm: total * weights[arm] / weight_sum for arm in arms}
    if total == 0 or len(arms) < 2:
        return Srm(observed, expected, 1.0, threshold, False, "No leads assigned yet.")
    p = float(stats.chisquare([observed[a] for a in arms], [expected[a] for a in arms]).pvalue)
    if p < threshold:
        return Srm(observed, expected, p, threshold, True, _srm_message(observed, expected, p))
    message = f"Assignment matches the weights (p = {p:.2g}, alarm below {threshold:g})."
    return Srm(observed, expected, p, threshold, False, message)


# --- planning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan(_Dict):
    """Leads needed per arm (control first). `planned` gives, per treatment arm, the
    leads in control + that arm to pass to `compare(planned=...)`."""

    baseline_rate: float
    minimum_effect: float
    alpha: float
    power: float
    weights: list[float]
    sequential: bool
    fixed_leads_per_arm: list[int]  # statsmodels' fixed-horizon figure
    inflation: float  # sequential / fixed; 1.0 when not sequential
    leads_per_arm: list[int]
    leads_total: int
    planned: list[int]
    leads_per_day: float | None
    days: int | None
    note: str


def sequential_inflation(alpha: float = 0.05, power: float = 0.8) -> float:
    """How many more leads the confidence sequence needs than a fixed-horizon test.

    At the planned count the sequence's half-width is k standard errors, with k fixed by
    alpha alone (t rho^2 is constant there): k = 3.03 at alpha 0.05 against the fixed
    test's z = 1.96. A true effect d is found with the given power when
    d = (k + z_power) * SE, against (z_(1-alpha/2) + z_power) * SE for the fixed test,
    and SE^2 falls as 1/n, so n grows by ((k + z_power) / (z_(1-alpha/2) + z_power))^2:
    about 1.91 at alpha 0.05 and power 0.8. It is the price of looking at any time.
    """
    low, high, _ = confidence_sequence(0.0, 1.0, 1.0, alpha, planned=1.0)
    k = float(high - low) / 2.0
    z_alpha, z_power = stats.norm.ppf(1.0 - alpha / 2.0), stats.norm.ppf(power)
    return float(((k + z_power) / (z_alpha + z_power)) ** 2)


def _control_leads(p0: float, p1: float, ratio: float, alpha: float, power: float) -> float:
    """statsmodels' fixed-horizon control size for one arm at `ratio` x control's traffic
    (Cohen's h, normal approximation, two-sided)."""
    effect = abs(proportion_effectsize(p1, p0))
    return float(NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power,
                                              ratio=ratio, alternative="two-sided"))  # fmt: skip


def plan(
    baseline_rate: float,
    minimum_effect: float,
    arms: int = 2,
    alpha: float = 0.05,
    power: float = 0.8,
    weights: Sequence[float] | None = None,
    leads_per_day: float | None = None,
    sequential: bool = True,
) -> Plan:
    """Leads (and days) to find an absolute change `minimum_effect` in a baseline rate,
    each treatment arm against control at `alpha` (per comparison: with several arms,
    pass alpha / (arms - 1) for a family-wise guarantee). Traffic follows `weights`
    (control first; equal by default); the arm needing the most control leads sets it."""
    w = [float(x) for x in (weights or [1.0] * arms)]
    if len(w) != arms or arms < 2 or min(w) <= 0:
        raise ValueError("need at least 2 arms and one positive weight per arm")
    if (
        minimum_effect == 0
        or not 0 < baseline_rate < 1
        or not 0 < baseline_rate + minimum_effect < 1
    ):
        raise ValueError("baseline rate and baseline + effect must lie strictly inside (0, 1)")
    p0, p1 = baseline_rate, baseline_rate + minimum_effect
    control = max(_control_leads(p0, p1, wi / w[0], alpha, power) for wi in w[1:])
    fixed = [math.ceil(control * wi / w[0]) for wi in w]
    inflation = sequential_inflation(alpha, power) if sequential else 1.0
    per_arm = [math.ceil(control * inflation * wi / w[0]) for wi in w]
    total = sum(per_arm)
    days = math.ceil(total / leads_per_day) if leads_per_day else None
    note = (f"Sequential: {inflation:.2f} x the fixed-horizon leads, so the results can be "
            "read at any time." if sequential else
            "Fixed horizon: read the result once, at this count, and not before.")  # fmt: skip
    return Plan(baseline_rate, minimum_effect, alpha, power, w, sequential, fixed, inflation,
                per_arm, total, [per_arm[0] + n for n in per_arm[1:]], leads_per_day, days,
                note)  # fmt: skip
