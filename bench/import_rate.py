"""Benchmark: `nurture import` of N leads against the bare Temporal workflow-start rate.

- bare Temporal: N `start_workflow` calls of a tiny workflow that waits for a signal,
  `--concurrency` calls in flight;
- import: a generated CSV of N leads (seeded profiles from bench/generate_leads.py, with
  phones, time zones and two attribute columns under spreadsheet-style headers) through
  the importer `nurture import` runs, with the repository's definitions on SQLite:
  read + map + validate + upsert by email (batches) + segment + start of each new
  lead's LeadWorkflow with its enrollment (its real sequence) in the start input, the
  same concurrency. Timed from
  opening the file to the last enrollment accepted.

Each run gets a fresh in-memory Temporal dev server (the server slows down as it fills
up, so no run pays for another's workflows), and no worker runs: what is measured is
how fast workflows are started (in production workers are other processes). Other load
on a shared machine drifts within minutes, so imports alternate with bare runs (bare,
import, bare, import, bare for `--rounds 2`); each round's import is compared with the
bare runs just before and after it, and the ratio is the mean import rate over the mean
bare rate. Target: ratio >= 0.8 at 10,000 leads. `--baselines` then times the tiny
workflow started by signal-with-start (as an enrollment is) and the file's enrollments
alone (the leads prepared in memory, `Intake.enroll` with the real payloads), then a
bare run again: what the enrollment protocol costs Temporal, apart from what reading,
validating and writing cost the import.

    .venv/bin/python -m bench.import_rate        # --leads 10000 --concurrency 50 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import func, select
from temporalio import workflow
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from bench.generate_leads import REPO, _profile
from infra.settings import Settings
from models.db import Lead, new_id
from models.workflow_io import lead_workflow_id
from services.definitions import load_definitions
from services.importer import LeadImporter, open_csv, plan_columns
from services.intake import Intake, LeadIn
from services.runtime import open_database, sync_sales_reps
from testkit.stack import temporal_dev_server

SEED = 11


@workflow.defn
class Waiting:
    """The bare baseline's workflow: starts, then waits for a signal that never comes."""

    def __init__(self) -> None:
        self._go = False

    @workflow.signal
    def go(self) -> None:
        self._go = True

    @workflow.run
    async def run(self, lead_id: str) -> None:
        await workflow.wait_condition(lambda: self._go)


# --- the CSV --------------------------------------------------------------------------------

HEADERS = ["Email", "First Name", "Last Name", "Mobile", "Job Title", "Company Name",
           "Employees", "Industry", "Country Code", "Time Zone", "Lead Source", "Budget",
           "Timeline"]  # fmt: skip
ZONES = {"US": "America/New_York", "GB": "Europe/London", "DE": "Europe/Berlin",
         "FR": "Europe/Paris", "CA": "America/Toronto", "NL": "Europe/Amsterdam",
         "SE": "Europe/Stockholm", "IN": "Asia/Kolkata", "BR": "America/Sao_Paulo",
         "JP": "Asia/Tokyo"}  # fmt: skip


def write_csv(path: Path, leads: int, seed: int = SEED) -> None:
    """`leads` valid leads; US and GB ones (about half) with a mobile number."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADERS)
        for n in range(leads):
            p = _profile(rng, n)
            phone = {"US": f"+1 415 555 {n % 10000:04d}",
                     "GB": f"07911 1{n % 100000:05d}"}.get(p["country"], "")  # fmt: skip
            writer.writerow([
                p["email"], p["first_name"], p["last_name"], phone, p["title"] or "",
                p["company"], p["company_size"] or "", p["industry"] or "",
                p["country"] or "", ZONES.get(p["country"], "UTC"), p["source"],
                p["attributes"].get("budget", ""), p["attributes"].get("timeline", ""),
            ])  # fmt: skip


# --- the runs -------------------------------------------------------------------------------


async def bare_rate(leads: int, concurrency: int, signal: bool = False) -> tuple[float, float]:
    """Starts per second of the tiny workflow, and the seconds it took. Its IDs are
    lead workflow IDs (`lead-` and 32 random hex digits), as the import's are. With
    `signal`, each start is a signal-with-start, as an enrollment is."""
    async with temporal_dev_server() as env:
        client: Client = env.client
        task_queue = f"bare-{uuid.uuid4().hex[:8]}"
        ids = [new_id() for _ in range(leads)]
        remaining = iter(ids)
        signalled = {"id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
                     "start_signal": "go"} if signal else {}  # fmt: skip

        async def starter() -> None:
            for lead_id in remaining:
                await client.start_workflow(Waiting.run, lead_id, id=lead_workflow_id(lead_id),
                                            task_queue=task_queue, **signalled)  # fmt: skip

        async def starts() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(starter() for _ in range(concurrency)))
            return time.perf_counter() - started

        seconds = await starts()
    return leads / seconds, seconds


async def enrollment_rate(csv_path: Path, concurrency: int) -> tuple[float, float]:
    """Enrollments per second of the file's leads prepared in memory beforehand (read,
    validated, given their segment; no database but the templates' version, stored once
    before the clock starts): Intake.enroll alone, as the import calls it, so import /
    this is what reading, validating and writing cost."""
    definitions = load_definitions(REPO)
    source = open_csv(csv_path)
    plan = plan_columns(source.headers)
    prepared = []
    for _line, cells in source.records():
        fields = LeadIn.model_validate(plan.data(cells)[0]).model_dump(exclude_unset=True)
        lead = Lead(**({"id": new_id(), "timezone": "UTC", "attributes": {}, "stage": "lead",
                        "score": 0.0} | fields))  # fmt: skip
        lead.segment = definitions.choose_segment(lead.profile())[0]
        prepared.append(lead)
    async with temporal_dev_server() as env:
        with tempfile.TemporaryDirectory() as tmp:
            database = open_database(Settings(
                NURTURE_STATE_DIR=Path(tmp), DATABASE_URL=f"sqlite:///{Path(tmp) / 'nurture.db'}"
            ))  # fmt: skip
            sessions = database.sessions  # an enrollment names its templates' version
            intake = Intake(definitions, sessions, env.client, f"enroll-{uuid.uuid4().hex[:8]}")
            intake.template_versions.current()  # stored once, here, then known in memory
            remaining = iter(prepared)

            async def enroller() -> None:
                for lead in remaining:
                    await intake.enroll(lead, new_lead=True)

            started = time.perf_counter()
            await asyncio.gather(*(enroller() for _ in range(concurrency)))
            seconds = time.perf_counter() - started
            database.engine.dispose()
    return len(prepared) / seconds, seconds


class Timed(LeadImporter):
    """The importer, noting how long its batches (read, validate, upsert) take."""

    batch_seconds = 0.0

    def _next_batch(self, records):
        started = time.perf_counter()
        try:
            return super()._next_batch(records)
        finally:
            self.batch_seconds += time.perf_counter() - started


async def import_rate(
    csv_path: Path, leads: int, concurrency: int
) -> tuple[float, float, list[str]]:
    """Leads per second through the importer, the seconds, and notes."""
    definitions = load_definitions(REPO)
    notes = []
    async with temporal_dev_server() as env:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                NURTURE_STATE_DIR=Path(tmp),
                NURTURE_DEFINITIONS=REPO,
                DATABASE_URL=f"sqlite:///{Path(tmp) / 'nurture.db'}",
                TEMPORAL_ADDRESS=env.client.service_client.config.target_host,
                NURTURE_TASK_QUEUE=f"import-{uuid.uuid4().hex[:8]}",
            )
            database = open_database(settings)
            sync_sales_reps(database, definitions)
            intake = Intake(definitions, database.sessions, env.client, settings.task_queue)

            async def run():
                started = time.perf_counter()
                source = open_csv(csv_path)
                plan = plan_columns(source.headers)
                importer = Timed(source, plan, intake, concurrency=concurrency)
                report = await importer.run()
                return report, importer.batch_seconds, time.perf_counter() - started

            report, in_batches, seconds = await run()
            with database.sessions() as session:
                stored = session.scalar(select(func.count()).select_from(Lead))
            database.engine.dispose()
    problems = len(report.rejected) + len(report.enroll_failed)
    notes.append(f"{report.read:,} rows read, {report.created:,} leads created, {stored:,} "
                 f"in the database, {report.enrolled:,} enrolled, {problems} problems")  # fmt: skip
    notes.append("sequences: " + ", ".join(f"{k} {v:,}" for k, v in report.sequences.items()))
    notes.append(f"read + validate + upsert (a thread, beside the enrollments): "
                 f"{in_batches:.1f} s")  # fmt: skip
    if report.enrolled != leads or stored != leads or problems:
        notes.append("INCOMPLETE: not every lead was imported and enrolled")
        return 0.0, seconds, notes
    return leads / seconds, seconds, notes


async def main(leads: int, concurrency: int, rounds: int, baselines: bool) -> None:
    print(f"{leads:,} leads, {concurrency} in flight, a fresh in-memory dev server per run, "
          "no worker", flush=True)  # fmt: skip
    bare: list[float] = []
    imported: list[float] = []

    async def bare_run() -> None:
        rate, seconds = await bare_rate(leads, concurrency)
        bare.append(rate)
        print(f"  bare Temporal, start:         {rate:7.1f} starts/s  ({seconds:.1f} s)",
              flush=True)  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "leads.csv"
        write_csv(csv_path, leads)
        await bare_run()
        for _ in range(rounds):
            rate, seconds, notes = await import_rate(csv_path, leads, concurrency)
            imported.append(rate)
            print(f"  import:                       {rate:7.1f} leads/s   ({seconds:.1f} s)",
                  flush=True)  # fmt: skip
            for note in notes:
                print(f"      {note}")
            await bare_run()
        if baselines:
            sws, seconds = await bare_rate(leads, concurrency, signal=True)
            print(f"  bare Temporal, signal-with-start: {sws:7.1f} starts/s  ({seconds:.1f} s)",
                  flush=True)  # fmt: skip
            enrolls, seconds = await enrollment_rate(csv_path, concurrency)
            print(f"  enrollments alone:            {enrolls:7.1f} leads/s   ({seconds:.1f} s)",
                  flush=True)  # fmt: skip
            await bare_run()
    for n, rate in enumerate(imported):
        around = statistics.mean(bare[n : n + 2])
        print(f"round {n + 1}: import / bare start before and after ({around:.1f}/s): "
              f"{rate / around:.2f}")  # fmt: skip
    ratio = statistics.mean(imported) / statistics.mean(bare)
    print(f"ratio import / bare start, all runs: {ratio:.3f}   target >= 0.8: "
          f"{'met' if ratio >= 0.8 else 'MISSED'}")  # fmt: skip
    if baselines:
        around = statistics.mean(bare[-2:])  # the bare start runs either side of them
        print(f"baselines / bare start around them ({around:.1f}/s): signal-with-start "
              f"{sws / around:.2f}, enrollments alone {enrolls / around:.2f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50, help="calls in flight")
    parser.add_argument("--rounds", type=int, default=2, help="imports, each between bare runs")
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="then a bare signal-with-start run and the enrollments alone, and a bare run",
    )
    args = parser.parse_args()
    asyncio.run(main(args.leads, args.concurrency, args.rounds, args.baselines))
