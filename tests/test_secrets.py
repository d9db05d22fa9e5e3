"""Generated secrets (NURTURE_SECRET_KEY, NURTURE_API_TOKEN unset): every process that
starts on a fresh state directory at the same moment gets the same, non-empty secret,
and the file holding it is private; so are the state directory and the SQLite file.

The race is tried with real processes: a few long-lived ones (spawned, not forked:
nothing of the test runner's threads is copied) meet at a barrier, then all resolve
the secrets of the same fresh directory at once, round after round.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from infra.settings import Settings, SettingsError
from services.runtime import open_database
from tests.conftest import FIXTURE_DEFINITIONS

PROCESSES = 6
ROUNDS = 150


def _resolve_rounds(barrier, directories: list[str], results) -> None:
    """In each process: for every round, wait for the others, then resolve both."""
    for directory in directories:
        settings = Settings(NURTURE_STATE_DIR=Path(directory), NURTURE_SECRET_KEY=None,
                            NURTURE_API_TOKEN=None)  # fmt: skip
        barrier.wait(timeout=60)
        try:
            found = (settings.resolved_secret_key(), settings.resolved_api_token())
        except Exception as exc:  # reported, not hung on: the parent counts every answer
            found = (f"error: {type(exc).__name__}: {exc}", "")
        results.put((directory, found))


def test_processes_starting_together_share_one_nonempty_secret(tmp_path, monkeypatch):
    for name in ("NURTURE_SECRET_KEY", "NURTURE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    directories = [str(tmp_path / f"round-{i}" / "state") for i in range(ROUNDS)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=_resolve_rounds, args=(barrier, directories, results))
                 for _ in range(PROCESSES)]  # fmt: skip
    for process in processes:
        process.start()
    answers: dict[str, list[tuple[str, str]]] = {d: [] for d in directories}
    try:
        for _ in range(ROUNDS * PROCESSES):
            directory, found = results.get(timeout=120)
            answers[directory].append(found)
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    different = [d for d, found in answers.items() if len(set(found)) != 1]
    empty = [d for d, found in answers.items() if any(not key for pair in found for key in pair)]
    assert not different and not empty, (
        f"{len(different)} of {ROUNDS} rounds gave different secrets, {len(empty)} an empty one"
    )
    for directory, found in answers.items():
        state = Path(directory)
        assert (state / "secret-key").read_text().strip() == found[0][0]
        assert (state / "api-token").read_text().strip() == found[0][1]
        assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_secrets_and_the_state_directory_are_private(tmp_path):
    settings = Settings(NURTURE_STATE_DIR=tmp_path / "state", NURTURE_SECRET_KEY=None,
                        NURTURE_API_TOKEN=None)  # fmt: skip
    old = os.umask(0o022)  # the usual umask, whatever the runner's
    try:
        key, token = settings.resolved_secret_key(), settings.resolved_api_token()
    finally:
        os.umask(old)
    assert len(key) >= 40 and len(token) >= 40 and key != token
    assert mode(tmp_path / "state") == 0o700
    assert mode(tmp_path / "state" / "secret-key") == 0o600
    assert mode(tmp_path / "state" / "api-token") == 0o600
    # Read again, not generated again: the links signed yesterday still verify.
    assert Settings(NURTURE_STATE_DIR=tmp_path / "state").resolved_secret_key() == key


def test_an_empty_secret_file_is_refused_not_used(tmp_path):
    """An empty file (left by an interrupted start of an older version) would sign
    links with an empty key: anyone could forge them."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "secret-key").write_text("\n")
    with pytest.raises(SettingsError) as raised:
        Settings(NURTURE_STATE_DIR=state, NURTURE_SECRET_KEY=None).resolved_secret_key()
    assert "secret-key" in str(raised.value) and "NURTURE_SECRET_KEY" in str(raised.value)


@pytest.mark.parametrize("name", ["NURTURE_SECRET_KEY", "NURTURE_API_TOKEN"])
def test_an_empty_secret_setting_is_refused_at_start(monkeypatch, tmp_path, name):
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv(name, "  ")
    from infra.settings import get_settings

    with pytest.raises(SettingsError) as raised:
        get_settings()
    assert f"{name}: " in str(raised.value)


def test_the_embedded_sqlite_file_and_state_directory_are_private(tmp_path):
    settings = Settings(
        NURTURE_STATE_DIR=tmp_path / "state",
        DATABASE_URL=None,
        NURTURE_DEFINITIONS=FIXTURE_DEFINITIONS,
        NURTURE_API_TOKEN="token",
    )
    old = os.umask(0o022)
    try:
        database = open_database(settings)
    finally:
        os.umask(old)
    try:
        with database.engine.begin() as connection:  # a write: the -wal and -shm files exist
            connection.execute(text("CREATE TABLE scratch (x INTEGER)"))
            modes = {p.name: mode(p) for p in (tmp_path / "state").iterdir()}
    finally:
        database.engine.dispose()
    assert mode(tmp_path / "state") == 0o700
    assert {"nurture.db", "nurture.db-wal", "nurture.db-shm"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


def test_the_dev_servers_state_directory_is_private_parents_too(tmp_path):
    """`nurture dev` and `nurture demo`: Temporal's own database holds leads' addresses."""
    from devstack.temporal_server import TemporalDevServer, free_port

    state = tmp_path / "nurture-state" / "demo"
    server = TemporalDevServer(port=free_port(), ui_port=None, db_file=state / "temporal.db",
                               log_file=state / "temporal.log")  # fmt: skip
    server.start()
    try:
        assert mode(state) == mode(state.parent) == 0o700
    finally:
        server.stop()
