"""Which rep a sales-qualified lead is handed to (issue "Sales handoff", point 1).

Pure: the caller passes the team (sales.yaml), the lead's profile, the time, each rep's
load and the company's owner, and records the assignment (updating `last_assigned_at`,
which is what makes the round-robin fair). Order:

1. the owner of the lead's company (email domain), if active and not excluded, whatever
   their hours or load: one company, one rep;
2. the pool of the first routing rule the lead matches; among its reps that are active,
   not excluded, cover the lead's territory and segment, have room (open handoffs below
   capacity) and are working now, the one assigned longest ago (never assigned first);
3. the same in the fallback pool;
4. nobody working: the same without working hours, in the matched pool then the
   fallback pool, preferring whoever starts work soonest;
5. everyone full: the same without capacity, preferring the least overloaded;
6. else `NoRepAvailable`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from models.definitions import RoutingRule, SalesRep, SalesTeam
from models.jinja import ConditionError
from sales.hours import is_working, next_working_start

log = logging.getLogger("nurture.routing")

# Webmail domains: a lead writing from one says nothing about their company.
FREE_MAIL_DOMAINS: frozenset[str] = frozenset(
    {
        "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de",
        "yahoo.es", "yahoo.it", "yahoo.co.jp", "yahoo.com.br", "ymail.com", "rocketmail.com",
        "hotmail.com", "hotmail.co.uk", "hotmail.fr", "hotmail.de", "hotmail.it", "hotmail.es",
        "outlook.com", "outlook.de", "outlook.fr", "live.com", "live.co.uk", "live.fr",
        "live.de", "msn.com", "passport.com", "icloud.com", "me.com", "mac.com", "aol.com",
        "aim.com", "proton.me", "protonmail.com", "protonmail.ch", "pm.me", "tutanota.com",
        "tuta.io", "fastmail.com", "fastmail.fm", "hey.com", "zoho.com", "zohomail.com",
        "mail.com", "email.com", "gmx.de", "gmx.net", "gmx.com", "gmx.at", "gmx.ch", "web.de",
        "t-online.de", "freenet.de", "posteo.de", "mailbox.org", "orange.fr", "wanadoo.fr",
        "free.fr", "laposte.net", "sfr.fr", "libero.it", "virgilio.it", "tiscali.it",
        "seznam.cz", "wp.pl", "o2.pl", "onet.pl", "interia.pl", "mail.ru", "bk.ru", "inbox.ru",
        "list.ru", "rambler.ru", "yandex.ru", "yandex.com", "ya.ru", "qq.com", "foxmail.com",
        "163.com", "126.com", "yeah.net", "sina.com", "sina.cn", "sohu.com", "aliyun.com",
        "naver.com", "daum.net", "hanmail.net", "rediffmail.com", "uol.com.br", "bol.com.br",
        "terra.com.br", "comcast.net", "verizon.net", "att.net", "sbcglobal.net",
        "bellsouth.net", "cox.net", "charter.net", "btinternet.com", "sky.com",
        "virginmedia.com", "ntlworld.com", "shaw.ca", "rogers.com", "sympatico.ca",
        "bigpond.com", "optusnet.com.au", "xtra.co.nz",
    }
)  # fmt: skip


class NoRepAvailable(ValueError):
    """No rep can take the lead: every candidate is inactive, excluded or not a match."""


@dataclass(frozen=True)
class RepLoad:
    """What routing needs to know about a rep's current work."""

    open_handoffs: int = 0
    last_assigned_at: datetime | None = None


@dataclass(frozen=True)
class Routing:
    """The rep chosen, the pool they were taken from (None: the company's owner), why,
    and why each rep looked at before them was passed over."""

    rep_id: str
    pool: str | None
    reason: str
    skipped: dict[str, str] = field(default_factory=dict)


def company_domain(email: str | None) -> str | None:
    """The company a lead's email belongs to (its domain, lower case); None for webmail
    (gmail.com, ...) or anything that is not an email address."""
    if not email or "@" not in email:
        return None
    domain = email.rsplit("@", 1)[1].strip().strip(".").lower()
    if not domain or "." not in domain or domain in FREE_MAIL_DOMAINS:
        return None
    return domain


def route(
    team: SalesTeam,
    lead: dict,
    now: datetime,
    loads: dict[str, RepLoad],
    owner_rep_id: str | None = None,
    exclude: frozenset[str] = frozenset(),
) -> Routing:
    """Choose the rep for `lead` (its profile: email, country, company_size, segment, ...)."""
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    skipped: dict[str, str] = {}  # rep id -> why passed over, the first reason found
    if owner_rep_id is not None:
        owner = _owner(team, lead, owner_rep_id, exclude, skipped)
        if owner is not None:
            return owner
    matched = _matched_rule(team, lead)
    pools = _pools(team, matched)
    for _name, busy, order, how in _passes(loads, now):
        for pool, members in pools:
            candidates = []
            for rep in members:
                why = _unsuitable(rep, lead, exclude) or busy(rep)
                if why:
                    skipped.setdefault(rep.id, why)
                else:
                    candidates.append(rep)
            if candidates:
                chosen = min(candidates, key=order)
                passed_over = {k: v for k, v in skipped.items() if k != chosen.id}
                reason = _reason(team, matched, skipped, pool, how)
                return Routing(chosen.id, pool, reason, passed_over)

    looked = ", ".join(f"{rep}: {why}" for rep, why in skipped.items()) or "no reps"
    names = " or ".join(pool for pool, _ in pools)
    raise NoRepAvailable(f"no sales rep can take the lead in {names} ({looked})")


def _owner(
    team: SalesTeam, lead: dict, owner_rep_id: str, exclude: frozenset[str], skipped: dict[str, str]
) -> Routing | None:
    """Step 1: the company's owner, whatever their hours or load; else None, with why
    they were passed over in `skipped`."""
    owner = _find(team, owner_rep_id)
    domain = company_domain(lead.get("email"))
    whose = f"owner of {domain}" if domain else "the lead's owner"
    if owner is None:
        skipped[owner_rep_id] = f"{whose}, but not a rep in sales.yaml"
    elif not owner.active:
        skipped[owner.id] = f"{whose}, but inactive"
    elif owner.id in exclude:
        skipped[owner.id] = f"{whose}, but excluded"
    else:
        return Routing(owner.id, None, whose, {})
    return None


def _matched_rule(team: SalesTeam, lead: dict) -> tuple[int, RoutingRule] | None:
    """The first routing rule the lead matches, numbered from 1; a rule that cannot be
    evaluated for this lead does not match it."""
    for index, rule in enumerate(team.routing, start=1):
        try:
            hit = rule.matches(lead)
        except ConditionError as exc:  # validated on the sample lead; this lead differs
            log.warning("routing rule %d skipped for lead %s: %s", index, lead.get("id"), exc)
            hit = False
        if hit:
            return (index, rule)
    return None


def _pools(
    team: SalesTeam, matched: tuple[int, RoutingRule] | None
) -> list[tuple[str, list[SalesRep]]]:
    """The pools looked in, in order: the matched rule's (if it exists), then the fallback."""
    pools: list[tuple[str, list[SalesRep]]] = []
    if matched is not None and matched[1].pool in team.pool_ids:
        pools.append((matched[1].pool, team.pool_members(matched[1].pool)))
    fallback = (team.fallback_name, team.fallback_members())
    if not pools or pools[0][0] != fallback[0]:
        pools.append(fallback)
    return pools


# A pass: its name, why a rep is too busy in it (None: not), how its candidates are
# ordered (the first is chosen), and how the choice is worded.
_Pass = tuple[str, Callable[[SalesRep], str | None], Callable, str]


def _passes(loads: dict[str, RepLoad], now: datetime) -> list[_Pass]:
    """Steps 2 to 5: each pass relaxes what the one before required of a rep."""

    def load(rep: SalesRep) -> RepLoad:
        return loads.get(rep.id) or RepLoad()

    return [
        (
            "strict",
            lambda rep: _full(rep, load(rep)) or _off_duty(rep, now),
            lambda rep: _fairness(rep, load(rep)),
            "round-robin",
        ),
        (
            "any hours",
            lambda rep: _full(rep, load(rep)),
            lambda rep: (next_working_start(rep, now), *_fairness(rep, load(rep))),
            "nobody working now: first to start work",
        ),
        (
            "any load",
            lambda rep: None,
            lambda rep: (
                load(rep).open_handoffs - rep.capacity,
                next_working_start(rep, now),
                *_fairness(rep, load(rep)),
            ),
            "everyone full: least overloaded",
        ),
    ]


def _reason(
    team: SalesTeam,
    matched: tuple[int, RoutingRule] | None,
    skipped: dict[str, str],
    pool: str,
    how: str,
) -> str:
    """Why the rep chosen in `pool` by a pass worded `how` got the lead; from the
    fallback pool, why nobody in the matched rule's pool could take it."""
    if matched is None:
        return f"{how} in fallback pool {pool} (no routing rule matched)"
    index, rule = matched
    if pool == rule.pool:
        return f"{how} in pool {pool} (rule {index}: {rule.describe()})"
    members = team.pool_members(rule.pool) if rule.pool in team.pool_ids else []
    passed = [f"{rep.id}: {why}" for rep in members if (why := skipped.get(rep.id))]
    why_not = f" ({', '.join(passed)})" if passed else ""
    then = "" if how == "round-robin" else f"; {how}"
    return f"fallback pool {pool}: nobody in {rule.pool} available{why_not}{then}"


def _find(team: SalesTeam, rep_id: str) -> SalesRep | None:
    try:
        return team.rep(rep_id)
    except KeyError:
        return None


def _unsuitable(rep: SalesRep, lead: dict, exclude: frozenset[str]) -> str | None:
    """Why the rep can never take this lead (in any relaxation), or None."""
    if not rep.active:
        return "inactive"
    if rep.id in exclude:
        return "excluded"
    if not rep.covers(lead):
        country, segment = (lead.get("country") or "").upper(), lead.get("segment")
        if rep.territories and country and country not in rep.territories:
            return f"territory {', '.join(rep.territories)} (lead in {country})"
        return f"segments {', '.join(rep.segments)} (lead in {segment})"
    return None


def _full(rep: SalesRep, load: RepLoad) -> str | None:
    if load.open_handoffs >= rep.capacity:
        return f"full {load.open_handoffs}/{rep.capacity}"
    return None


def _off_duty(rep: SalesRep, now: datetime) -> str | None:
    return None if is_working(rep, now) else "outside working hours"


def _fairness(rep: SalesRep, load: RepLoad) -> tuple[int, datetime, str]:
    """Round-robin order: never assigned first, then assigned longest ago, then by id."""
    last = load.last_assigned_at
    if last is None:
        return (0, datetime.min.replace(tzinfo=UTC), rep.id)
    last = last.replace(tzinfo=UTC) if last.tzinfo is None else last.astimezone(UTC)
    return (1, last, rep.id)
