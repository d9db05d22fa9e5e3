"""The commands as a user runs them: real processes, real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NURTURE = str(Path(sys.executable).parent / "nurture")


def run_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = os.environ.copy() | {
        "NURTURE_STATE_DIR": str(tmp_path / "state"),
        "COLUMNS": "160",
        "NURTURE_METRICS_PORT": "0",
        "NURTURE_HEALTH_PORT": "0",
    }
    env.pop("DATABASE_URL", None)
    return env | extra


@pytest.mark.devserver
def test_demo_ends_with_a_handoff(tmp_path):
    result = subprocess.run(
        [NURTURE, "demo"], cwd=REPO, env=run_env(tmp_path), capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert out.count("enrolled ") >= 20
    for kind in ("sent ", "score ", "stage ", "HANDOFF ", "response "):
        assert kind in out, kind
    assert "demo ok" in out
    assert list((tmp_path / "state" / "demo" / "outbox").glob("handoff-*.eml"))


@pytest.mark.devserver
async def test_worker_process_runs_and_stops_on_sigterm(tmp_path, dev_server_env):
    target = dev_server_env.client.service_client.config.target_host
    env = run_env(tmp_path, TEMPORAL_ADDRESS=target, NURTURE_TASK_QUEUE="cli-worker")
    worker = subprocess.Popen(
        [sys.executable, "worker.py"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        line = ""
        while "worker on" not in line:
            assert time.monotonic() < deadline and worker.poll() is None, line
            line = worker.stderr.readline()
        assert target in line and "queue=cli-worker" in line
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=20)
        assert code == 0, f"exit {code}: {worker.stderr.read()[-3000:]}"
    finally:
        if worker.poll() is None:
            worker.kill()


def test_worker_refuses_broken_definitions(tmp_path):
    (tmp_path / "defs").mkdir()
    env = run_env(tmp_path, NURTURE_DEFINITIONS=str(tmp_path / "defs"))
    result = subprocess.run([NURTURE, "worker"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert "segments.yaml: file is missing" in result.stderr


def test_consent_and_unknown_sends_from_the_command_line(
    tmp_path, monkeypatch, provider_settings, database, fixture_definitions
):
    from typer.testing import CliRunner

    from cli.app import app
    from services.runtime import build_activities
    from tests.test_providers import died_during_the_call, lead_and_request

    monkeypatch.setenv("DATABASE_URL", provider_settings.effective_database_url)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    request = lead_and_request(database, "sms", "ping", "nudge")
    activities = build_activities(provider_settings, database).lead
    died_during_the_call(activities, request)
    assert activities.send_message(request).status == "unknown"

    listed = runner.invoke(app, ["messages", "--status", "unknown"])
    assert listed.exit_code == 0, listed.output
    assert "nudge" in listed.output and "outcome unknown" in listed.output
    assert "1 message(s)" in listed.output
    assert runner.invoke(app, ["messages", "--status", "lost"]).exit_code == 2

    out = runner.invoke(app, ["consent", "ada@example.com", "--channel", "sms", "--opt-out",
                              "--reason", "asked by phone"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "opted out of sms" in out.output and "manual (asked by phone)" in out.output
    assert activities.send_message(request.model_copy(update={"visit": 2})).status == "skipped"
    back = runner.invoke(app, ["consent", "ada@example.com", "--channel", "sms", "--opt-in",
                               "--source", "trade fair", "--basis", "consent"])  # fmt: skip
    assert "sms    allowed" in back.output
    assert "manual [given, basis consent, from trade fair]" in back.output
    for wrong, said in (
        (["--basis", "liking"], "--basis must be one of consent, contract"),
        (["--source", "x"], "--source and --basis go with a change"),
    ):
        refused = runner.invoke(app, ["consent", "ada@example.com", *wrong])
        assert refused.exit_code == 2 and said in refused.output, refused.output
    assert activities.send_message(request.model_copy(update={"visit": 3})).status == "sent"
    missing = runner.invoke(app, ["consent", "nobody@example.com"])
    assert missing.exit_code == 1 and "no lead 'nobody@example.com'" in missing.output


def _leaf_commands(command, path=()):
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield path, command
        return
    for name, sub in subcommands.items():
        yield from _leaf_commands(sub, (*path, name))


def test_every_command_has_help_with_examples_and_exit_codes_are_documented():
    from typer.main import get_command
    from typer.testing import CliRunner

    from cli.app import app

    runner = CliRunner()
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert top.exit_code == 0
    for text in ("Exit codes: 0 success; 1", "2 bad usage", "Colours only on a terminal"):
        assert text in top.stdout
    leaves = list(_leaf_commands(get_command(app)))
    assert len(leaves) >= 19  # validate ... simulate, handoff list/show/answer
    for path, _command in leaves:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, path
        assert "Example" in result.stdout, f"nurture {' '.join(path)} --help has no example"
