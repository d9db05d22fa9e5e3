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
    env = os.environ.copy() | {"NURTURE_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "160"}
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
        assert worker.wait(timeout=20) == 0
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
