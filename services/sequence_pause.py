"""Pausing and resuming a sequence (`nurture sequence pause|resume`, the console).

A pause is a `paused_sequences` row. The send activity reads it at send time, like
consent: a send of a paused sequence is deferred ("sequence paused"), never dropped, and
its workflow waits on a timer (PAUSED_RECHECK) or for the resume signal. Waits, wait_for
steps and timers go on as before, so a lead arrives at its next send on time and is held
there. Resuming deletes the row, then signals every lead holding a send: each asks for
its send again at once, and quiet hours and caps are judged then (docs/sending.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from models.db import Enrollment, Message, PausedSequence, utcnow
from models.definition_set import Definitions
from models.workflow_io import PAUSED_REASON
from services import lead_client
from services.audit import record

SIGNALS_IN_FLIGHT = 32


class UnknownSequence(LookupError):
    pass


@dataclass
class Pause:
    sequence_id: str
    paused_at: datetime
    paused_by: str
    reason: str | None
    held_leads: int  # leads whose next send waits for the resume


@dataclass
class Resumed:
    sequence_id: str
    was_paused: bool
    held_leads: int = 0
    woken: int = 0
    not_running: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def check_sequence(definitions: Definitions, sequence_id: str) -> None:
    if sequence_id not in definitions.sequences:
        known = ", ".join(sorted(definitions.sequences)) or "none"
        raise UnknownSequence(f"no sequence {sequence_id!r} in the definitions (known: {known})")


def pause(sessions, definitions: Definitions, sequence_id: str, actor: str,
          reason: str | None = None) -> tuple[Pause, bool]:  # fmt: skip
    """Pause the sequence (its sends held from now on). Returns the pause and whether it
    is new: pausing a paused sequence changes nothing."""
    check_sequence(definitions, sequence_id)
    with sessions.begin() as session:
        row = session.get(PausedSequence, sequence_id, with_for_update=True)
        created = row is None
        if created:
            row = PausedSequence(sequence_id=sequence_id, paused_at=utcnow(), paused_by=actor,
                                 reason=reason)  # fmt: skip
            session.add(row)
            record(session, actor, "sequence.pause", sequence_id, {"reason": reason})
    return _pause_of(sessions, sequence_id), created


def paused_sequences(sessions) -> list[Pause]:
    with sessions() as session:
        ids = session.scalars(select(PausedSequence.sequence_id).order_by(
            PausedSequence.sequence_id)).all()  # fmt: skip
    return [_pause_of(sessions, sequence_id) for sequence_id in ids]


def pause_of(sessions, sequence_id: str) -> Pause | None:
    with sessions() as session:
        if session.get(PausedSequence, sequence_id) is None:
            return None
    return _pause_of(sessions, sequence_id)


def _pause_of(sessions, sequence_id: str) -> Pause:
    with sessions() as session:
        row = session.get(PausedSequence, sequence_id)
        return Pause(sequence_id, row.paused_at, row.paused_by, row.reason,
                     len(held_leads(session, sequence_id)))  # fmt: skip


def held_leads(session, sequence_id: str) -> list[str]:
    """Leads with a send of the sequence held back by its pause."""
    query = (
        select(Message.lead_id)
        .distinct()
        .join(Enrollment, Enrollment.id == Message.enrollment_id)
        .where(
            Enrollment.sequence_id == sequence_id,
            Message.status == "deferred",
            Message.status_reason == PAUSED_REASON,
        )
    )
    return sorted(session.scalars(query))


async def resume(client: Client, sessions, definitions: Definitions, sequence_id: str,
                 actor: str) -> Resumed:  # fmt: skip
    """Resume the sequence: delete its pause, then wake every lead holding a send. Safe to
    run again (after a crash part-way, or to wake leads held by a pause already lifted)."""
    check_sequence(definitions, sequence_id)
    with sessions.begin() as session:
        row = session.get(PausedSequence, sequence_id, with_for_update=True)
        resumed = Resumed(sequence_id, was_paused=row is not None)
        if row is not None:
            session.delete(row)
            record(session, actor, "sequence.resume", sequence_id)
    with sessions() as session:
        lead_ids = held_leads(session, sequence_id)
    resumed.held_leads = len(lead_ids)
    in_flight = asyncio.Semaphore(SIGNALS_IN_FLIGHT)

    async def wake(lead_id: str) -> None:
        async with in_flight:
            try:
                await lead_client.sequence_resumed(client, lead_id, sequence_id)
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    resumed.not_running.append(lead_id)
                else:
                    resumed.failed[lead_id] = f"{exc.status.name}: {exc.message}"
            else:
                resumed.woken += 1

    await asyncio.gather(*(wake(lead_id) for lead_id in lead_ids))
    return resumed
