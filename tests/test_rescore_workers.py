"""`rescore_all(workers=2)`: the leads split into id ranges, each scored in its own process.

On PostgreSQL two processes share the leads; on SQLite (one writer) `workers` is ignored.
Either way the run reports, writes and hands to `on_sql` exactly what one process does.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from models.db import Lead, Response, ScoreChange, StageChange
from services.rescore import _key_ranges, rescore_all
from tests.test_rescore_command import NOW, snapshot

KINDS = ["page.view", "email.open", "email.reply", "page.view"]


def seed(database, leads: int = 40) -> None:
    """`leads` leads at various stages, with 0 to 5 responses each."""
    with database.sessions.begin() as session:
        for n in range(leads):
            stage = ["lead", "mql", "accepted", "lead"][n % 4]
            lead = Lead(email=f"lead{n}@example.com", stage=stage, score=float(n % 7) * 5)
            session.add(lead)
            session.flush()
            for m in range(n % 6):
                at = NOW - timedelta(days=m, hours=n)
                session.add(Response(event_id=f"{n}-{m}", lead_id=lead.id, type=KINDS[(n + m) % 4],
                                     occurred_at=at, delivered_at=at))  # fmt: skip


def test_workers_write_what_one_process_writes(database, fixture_definitions):
    seed(database)
    expected = rescore_all(database.sessions, fixture_definitions, NOW, dry_run=True)
    with database.sessions() as session:
        ranges = _key_ranges(session, expected.total, 2, batch_size=4)
    postgres = database.engine.dialect.name == "postgresql"
    assert len(ranges) == (2 if postgres else 1)

    handed, progress = [], []
    report = rescore_all(
        database.sessions, fixture_definitions, NOW, batch_size=4, workers=2,
        on_sql=lambda lead_ids, event_id, _: handed.extend((i, event_id) for i in lead_ids),
        progress=lambda done, total: progress.append((done, total)),
    )  # fmt: skip
    figures = ("total", "scored", "sales_owned", "changed", "unchanged", "to_sql", "concurrent")
    assert [getattr(report, name) for name in figures] == [
        getattr(expected, name) for name in figures
    ]
    assert report.changed > 10 and report.to_sql > 0  # the seed moves leads of each kind
    assert report.transitions == expected.transitions
    assert report.models == expected.models
    assert len(handed) == len(set(handed)) == report.to_sql
    assert len(progress) == 10 and progress[-1] == (40, 40)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)

    with database.sessions() as session:
        changes = session.scalars(select(ScoreChange.event_id)).all()
        keys = session.scalars(select(StageChange.change_key)).all()
    assert changes == [report.event_id] * report.changed
    assert keys and all(key.startswith(f"{report.event_id}:") for key in keys)
    # What they wrote is what one process would: a second run finds nothing to change,
    # and hands the same leads to their workflows (not written here) again.
    before = snapshot(database)
    handed_again: list[str] = []
    again = rescore_all(database.sessions, fixture_definitions, NOW, batch_size=7,
                        on_sql=lambda lead_ids, *_: handed_again.extend(lead_ids))  # fmt: skip
    assert (again.changed, again.unchanged) == (0, expected.scored - report.to_sql)
    assert sorted(handed_again) == sorted(lead_id for lead_id, _ in handed)
    assert snapshot(database) == before
