"""Benchmark: `nurture rescore` (services/rescore.py) over generated leads and responses.

Generates the leads and their responses with bench/generate_leads.py (seeded, so every
run is the same data) into a fresh SQLite file, or into a fresh schema of the
PostgreSQL database at --database-url (dropped afterwards), then times one
`rescore_all` with the repository's scoring.yaml at the generator's moment, as the
command runs it (batches of 2,000, every moved lead written). Prints the generation
time, the rescore time, leads/s and responses/s, and what changed.
Target: 100,000 leads with 1,000,000 responses in under 60 s.

    .venv/bin/python -m bench.rescore                  # --leads 100000 --responses 1000000
    .venv/bin/python -m bench.rescore \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine, func, make_url, select, text

from bench.generate_leads import NOW, REPO, generate
from models.db import Response, make_engine, session_factory
from services.definitions import load_definitions
from services.rescore import RescoreReport, rescore_all

TARGET_SECONDS = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--responses", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--database-url", help="PostgreSQL (a fresh schema, dropped after)")
    parser.add_argument("--sqlite-file", type=Path, help="keep the SQLite file here")
    parser.add_argument("--again", action="store_true", help="time a second run too")
    parser.add_argument("--profile", action="store_true", help="cProfile the first run")
    args = parser.parse_args()

    definitions = load_definitions(REPO)
    with tempfile.TemporaryDirectory(prefix="bench-rescore-") as scratch:
        if args.database_url:
            schema = f"bench_rescore_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.database_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text(f'CREATE SCHEMA "{schema}"'))
            url = (
                make_url(args.database_url)
                .update_query_dict({"options": f"-csearch_path={schema}"})
                .render_as_string(hide_password=False)
            )
            where = f"PostgreSQL {make_url(args.database_url).database}, schema {schema}"
        else:
            path = args.sqlite_file or Path(scratch) / "leads.db"
            if path.exists():
                raise SystemExit(f"{path} exists: give a new file")
            url, where = f"sqlite:///{path.resolve()}", f"SQLite {path}"
        try:
            made = generate(url, definitions, args.leads, args.responses)
            print(f"{where}: generated {made.leads:,} leads and {made.responses:,} responses "
                  f"in {made.seconds:.1f} s ({made.segments})")  # fmt: skip
            engine = make_engine(url)
            sessions = session_factory(engine)
            with sessions() as session:
                responses = session.scalar(select(func.count()).select_from(Response)) or 0
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            report = rescore_all(sessions, definitions, NOW, batch_size=args.batch_size)
            if profiler:
                profiler.disable()
            show("rescore", report, responses, args.batch_size)
            verdict = "met" if report.seconds < TARGET_SECONDS else "MISSED"
            print(f"target (< {TARGET_SECONDS:.0f} s): {verdict}")
            if args.again:
                again = rescore_all(sessions, definitions, NOW, batch_size=args.batch_size)
                show("again", again, responses, args.batch_size)
            engine.dispose()
            if profiler:
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        finally:
            if args.database_url:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()


def show(name: str, report: RescoreReport, responses: int, batch_size: int) -> None:
    print(f"{name}: {report.seconds:.1f} s, {report.leads_per_second:,.0f} leads/s, "
          f"{responses / report.seconds:,.0f} responses/s; batches of {batch_size:,}")  # fmt: skip
    print(f"  leads {report.total:,}: scored {report.scored:,}, changed {report.changed:,}, "
          f"unchanged {report.unchanged:,}, to SQL {report.to_sql:,}, sales-owned "
          f"{report.sales_owned:,}, concurrent {report.concurrent:,}")  # fmt: skip
    transitions = ", ".join(f"{t} {n:,}" for t, n in report.transitions.most_common())
    print(f"  transitions: {transitions or 'none'}")
    if report.problems:
        print(f"  problems: {dict(report.problems)}")


if __name__ == "__main__":
    main()
