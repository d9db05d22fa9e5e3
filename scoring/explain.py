"""`nurture score LEAD`: a lead's score card now, why, and how it got there.

With a predictive model active (scoring/model_store.py) the card has `predicted` and its
reasons, computed as the scoring activity does; `nurture status` and the console's lead
page show the same card.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.db import Lead, PredictiveModelRecord, ScoreChange, StageChange, as_utc
from models.definition_set import Definitions
from models.jinja import ConditionError
from scoring.engine import ScoreCard, condition_holds, decide_stage, score, stage_context
from scoring.records import lead_responses


def explain(
    session: Session, definitions: Definitions, lead: Lead, now: datetime, history: int = 10
) -> dict[str, Any]:
    """The card at `now` with the current model, the stage checks, and stored history."""
    model = definitions.scoring_model(lead.segment)
    profile = lead.profile()
    responses = lead_responses(session, lead.id)
    card = score(model, profile, responses, now)
    _predict(session, card, profile, responses, as_utc(lead.created_at),
             definitions.scoring.predictive.reasons)  # fmt: skip
    decision = decide_stage(model, lead.stage, card, profile)
    context = stage_context(card, profile)

    def holds(expression: str) -> bool | str:
        try:
            return condition_holds(expression, context)
        except ConditionError as exc:
            return f"error: {exc}"

    stages = []
    for name, stage in model.stages.ladder():
        stages.append({
            "stage": name,
            "at": stage.at,
            "when": stage.when,
            "score_ok": (stage.at is None or card.total >= stage.at)
                        and (stage.when is None or holds(stage.when) is True),
            "gate": {c: holds(e) is True for c, e in stage.gate.items()} or None,
            "recycle_below": stage.recycle_below,
        })  # fmt: skip
    changes = session.scalars(
        select(ScoreChange).where(ScoreChange.lead_id == lead.id)
        .order_by(ScoreChange.id.desc()).limit(history)
    ).all()  # fmt: skip
    stage_changes = session.scalars(
        select(StageChange).where(StageChange.lead_id == lead.id).order_by(StageChange.id)
    ).all()
    return {
        "lead": {"id": lead.id, "email": lead.email, "segment": lead.segment,
                 "stage": lead.stage, "stored_score": lead.score,
                 "scored_at": as_utc(lead.scored_at).isoformat() if lead.scored_at else None},
        "model": model.fingerprint,
        "card": card.to_dict() | {"reasons": card.reasons(10)},
        "prediction": card.prediction_line(),
        "decision": {"stage": decision.new, "entered": decision.entered,
                     "recycled": decision.recycled, "reason": decision.reason},
        "stages": stages,
        "score_changes": [
            {"at": as_utc(c.created_at).isoformat(), "event_id": c.event_id, "cause": c.cause,
             "old": c.old_score, "new": c.new_score, "reason": c.reason,
             "predictive_model": c.predictive_model} for c in changes
        ],
        "stage_changes": [
            {"at": as_utc(c.created_at).isoformat(), "from": c.from_stage, "to": c.to_stage,
             "reason": c.reason} for c in stage_changes
        ],
    }  # fmt: skip


def _predict(session, card: ScoreCard, profile, responses, created_at, limit: int) -> None:
    """The active predictive model's answer on the card (nothing when none is active)."""
    fingerprint = session.scalar(
        select(PredictiveModelRecord.fingerprint).where(PredictiveModelRecord.status == "active")
    )
    if fingerprint is None:
        return
    model = _loaded(session, fingerprint)
    prediction = model.predict(profile, responses, card.at, created_at)
    card.add_prediction(prediction.probability, prediction.reason_lines(limit),
                        prediction.fingerprint, model.horizon_days)  # fmt: skip


_LOADED: dict[str, Any] = {}  # fingerprint -> PredictiveModel: the console loads it once


def _loaded(session: Session, fingerprint: str):
    """Loaded once per process; scikit-learn imported only once a model is active (the
    console imports this module)."""
    from scoring.model_store import load

    if fingerprint not in _LOADED:
        _LOADED.clear()  # one model is active at a time
        _LOADED[fingerprint] = load(session.get(PredictiveModelRecord, fingerprint))
    return _LOADED[fingerprint]


def print_explanation(console: Console, data: dict[str, Any]) -> None:
    lead, card = data["lead"], data["card"]
    console.print(
        f"[bold]{lead['email']}[/bold]  segment {lead['segment']}  model {data['model']}",
        highlight=False,
    )
    console.print(
        f"total [bold]{card['total']:.1f}[/bold]/100   fit {card['fit']:.1f} "
        f"(grade [bold]{card['grade']}[/bold])   engagement {card['engagement']:.1f}   "
        f"stage [bold]{lead['stage']}[/bold]",
        highlight=False,
    )
    if abs(card["total"] - (lead["stored_score"] or 0)) >= 0.05:
        console.print(
            f"stored score {lead['stored_score']:.1f} (scored {lead['scored_at']}); the "
            "difference is decay since then or a model change (`nurture rescore`)",
            highlight=False,
        )
    _print_prediction(console, data)
    table = Table("rule", "dimension", "responses", "points", "total points", "note")
    for line in sorted(card["breakdown"], key=lambda line: -abs(line["contribution"])):
        count = str(line["count"]) if line["dimension"] == "engagement" else ""
        table.add_row(line["rule"], line["dimension"], count, f"{line['points']:+.2f}",
                      f"{line['contribution']:+.2f}", line.get("note", ""))  # fmt: skip
    table.add_row("", "", "", "", f"= {card['total']:.2f}", "", style="bold")
    console.print(table)
    for stage in data["stages"]:
        need = " and ".join(
            part for part in (f"total >= {stage['at']:g}" if stage["at"] is not None else "",
                              stage["when"] or "") if part
        )  # fmt: skip
        mark = "[green]yes[/green]" if stage["score_ok"] else "[dim]no[/dim]"
        text = f"{stage['stage'].upper():<4} {need}: {mark}"
        if stage["gate"]:
            text += "  gate: " + ", ".join(
                f"{c} {'✓' if ok else '✗'}" for c, ok in stage["gate"].items()
            )
        if stage["recycle_below"] is not None:
            text += f"  (recycled below {stage['recycle_below']:g})"
        console.print(text, highlight=False)
    decision = data["decision"]
    console.print(f"stage decision now: {decision['stage']} ({decision['reason']})",
                  highlight=False)  # fmt: skip
    if data["stage_changes"]:
        console.print("[bold]stage history[/bold]")
        for change in data["stage_changes"]:
            console.print(f"  {change['at'][:19]} {change['from']} -> {change['to']}: "
                          f"{change['reason']}", highlight=False)  # fmt: skip
    if data["score_changes"]:
        console.print("[bold]latest score changes[/bold]")
        for change in data["score_changes"]:
            console.print(f"  {change['at'][:19]} {change['old']:5.1f} -> {change['new']:5.1f} "
                          f"{change['reason']}", highlight=False)  # fmt: skip


def _print_prediction(console: Console, data: dict[str, Any]) -> None:
    """`predicted` with its reasons and the model, or that no model is active."""
    card = data["card"]
    if card.get("predicted") is None:
        console.print("[dim]predicted: no predictive model is active[/dim]", highlight=False)
        return
    horizon = card.get("predicted_horizon_days")
    console.print(
        f"predicted [bold]{card['predicted']:.0%}[/bold] likely to be won within {horizon} "
        f"days (predictive model {card['predictive_model']})",
        highlight=False,
    )
    for reason in card["predicted_reasons"]:
        console.print(f"  {escape(reason)}", highlight=False)
