"""Benchmark: `nurture rescore` (services/rescore.py) over generated leads and responses.

Generates the leads and their responses with bench/generate_leads.py (seeded, so every
run is the same data) into a fresh SQLite file, or into a fresh schema of the
PostgreSQL database at --database-url (dropped afterwards; loaded with COPY), then times
one `rescore_all` with the repository's scoring.yaml at the generator's moment, as the
command runs it (batches of 2,000, every moved lead written, --workers processes on
PostgreSQL). Prints the generation time, the rescore time, leads/s and responses/s, what
changed, and the peak memory (RSS) of the rescore: it runs in a process of its own, so
the figure is the rescore's (its largest worker's too), not the generator's. Memory is
bounded by the batch size: it should be the same at 100,000 leads and at 1,000,000.
Targets: 100,000 leads with 1,000,000 responses in under 60 s; 1,000,000 leads with
10,000,000 responses in under 120 s (PostgreSQL, 2 workers).

--model (SQLite): the same rescore with a predictive model active too (issue 19's
target: still under 60 s at 100,000 leads). The model is trained on a synthetic history
(scoring/synthetic.py, 5,000 leads) and stored active in a copy of the generated file,
so both runs start from the same leads: the rescore without a model is the baseline.

    .venv/bin/python -m bench.rescore                  # --leads 100000 --responses 1000000
    .venv/bin/python -m bench.rescore --again \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python -m bench.rescore --leads 1000000 --responses 10000000 --again \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import pstats
import resource
import shutil
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine, func, make_url, select, text

from bench.generate_leads import NOW, REPO, generate
from models.db import Response, make_engine, session_factory
from services.definitions import load_definitions
from services.rescore import RescoreReport, rescore_all

TARGETS = {100_000: 60.0, 1_000_000: 120.0}  # leads (ten responses each): seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--responses", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="processes (PostgreSQL)")
    parser.add_argument("--database-url", help="PostgreSQL (a fresh schema, dropped after)")
    parser.add_argument("--sqlite-file", type=Path, help="keep the SQLite file here")
    parser.add_argument("--again", action="store_true", help="time a second run too")
    parser.add_argument("--model", action="store_true",
                        help="SQLite: also time it with a predictive model active")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the first run (in one process: --workers 1)")  # fmt: skip
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
            with session_factory(engine)() as session:
                responses = session.scalar(select(func.count()).select_from(Response)) or 0
            engine.dispose()
            workers = 1 if args.profile or not args.database_url else args.workers
            with_model = None  # copied before any rescore: both runs start the same
            if args.model and not args.database_url:
                with_model = copy_with_model(path, Path(scratch) / "with-model.db", definitions)
            first = measured(url, args.batch_size, workers, args.profile)
            show("rescore", first, responses, args.batch_size, workers)
            target = TARGETS.get(args.leads)
            if target is not None:
                verdict = "met" if first[0].seconds < target else "MISSED"
                print(f"target (< {target:.0f} s): {verdict}")
            if with_model:
                second = measured(with_model, args.batch_size, workers, False)
                show("rescore with a predictive model active", second, responses,
                     args.batch_size, workers)  # fmt: skip
                added = second[0].seconds - first[0].seconds
                print(f"  the model added {added:+.1f} s; target (< 60 s): "
                      f"{'met' if second[0].seconds < 60 else 'MISSED'}")  # fmt: skip
            if args.again:
                again = measured(url, args.batch_size, workers, False)
                show("again", again, responses, args.batch_size, workers)
        finally:
            if args.database_url:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()


def copy_with_model(path: Path, copy: Path, definitions) -> str:
    """A copy of the generated SQLite file with a predictive model stored active."""
    from scoring.history import HistoryLead
    from scoring.model_store import store
    from scoring.predictive import train
    from scoring.synthetic import generate as synthetic_leads

    shutil.copyfile(path, copy)
    history = [HistoryLead.model_validate(lead) for lead in synthetic_leads(5000, 1)]
    training = train(history, definitions)
    url = f"sqlite:///{copy.resolve()}"
    engine = make_engine(url)
    with session_factory(engine).begin() as session:
        store(session, training, "bench").status = "active"
    engine.dispose()
    print(f"model {training.model.fingerprint} stored active in {copy.name}")
    return url


Measured = tuple[RescoreReport, float, float]  # the report, peak RSS (MB): process, worker


def measured(url: str, batch_size: int, workers: int, profile: bool) -> Measured:
    """One `rescore_all` in a fresh process: its report, and the peak RSS of that
    process and of its largest worker."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_rescore, args=(results, url, batch_size, workers, profile))
    process.start()
    result = results.get()
    process.join()
    if isinstance(result, str):
        raise SystemExit(f"the rescore failed:\n{result}")
    return result


def _rescore(results, url: str, batch_size: int, workers: int, profile: bool) -> None:
    try:
        definitions = load_definitions(REPO)
        engine = make_engine(url)
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        report = rescore_all(session_factory(engine), definitions, NOW, batch_size=batch_size,
                             workers=workers)  # fmt: skip
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        engine.dispose()
        # RUSAGE_CHILDREN: the largest finished worker (KiB on Linux), counting the RSS it
        # was forked with before its exec (this process's, at most).
        worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        peak = _peak_rss_mb()
        results.put((report, peak, worker_peak))
    except BaseException:
        import traceback

        results.put(traceback.format_exc())


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM on Linux, since ru_maxrss also counts the RSS of the
    process it was forked from before its exec (the generator's, here)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def show(name: str, result: Measured, responses: int, batch_size: int, workers: int) -> None:
    report, peak, worker_peak = result
    print(f"{name}: {report.seconds:.1f} s, {report.leads_per_second:,.0f} leads/s, "
          f"{responses / report.seconds:,.0f} responses/s; batches of {batch_size:,}, "
          f"{workers} worker(s)")  # fmt: skip
    print(f"  leads {report.total:,}: scored {report.scored:,}, changed {report.changed:,}, "
          f"unchanged {report.unchanged:,}, to SQL {report.to_sql:,}, sales-owned "
          f"{report.sales_owned:,}, concurrent {report.concurrent:,}")  # fmt: skip
    transitions = ", ".join(f"{t} {n:,}" for t, n in report.transitions.most_common())
    print(f"  transitions: {transitions or 'none'}")
    if report.problems:
        print(f"  problems: {dict(report.problems)}")
    if report.predictive_model:
        print(f"  predicted with {report.predictive_model}")
    largest = f", largest worker {worker_peak:,.0f} MB" if workers > 1 else ""
    print(f"  peak RSS: rescore process {peak:,.0f} MB{largest}")


if __name__ == "__main__":
    main()
