"""`nurture api` as a real process: a SendGrid key given in PEM armour verifies real
signatures, and SIGTERM stops it with exit 0 (while serving, and while starting)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devstack.temporal_server import free_port
from tests.conftest import FIXTURE_DEFINITIONS

NURTURE = str(Path(sys.executable).parent / "nurture")


def api_env(tmp_path: Path, temporal_address: str, **extra: str) -> dict[str, str]:
    return (
        os.environ.copy()
        | {
            "NURTURE_STATE_DIR": str(tmp_path / "state"),
            "NURTURE_DEFINITIONS": str(FIXTURE_DEFINITIONS),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'nurture.db'}",
            "TEMPORAL_ADDRESS": temporal_address,
            "NURTURE_TASK_QUEUE": f"api-{uuid.uuid4().hex[:8]}",
            "NURTURE_API_TOKEN": "test-token",
            "NURTURE_API_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
        | extra
    )


def start_api(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:  # a file, not a pipe: a full pipe would block the API
        return subprocess.Popen([NURTURE, "api"], env=env, stdout=out, stderr=subprocess.STDOUT)


async def until_serving(api: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            assert api.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no 200 from /health in 60 s"
            try:
                if (await http.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)


def signed(key: ec.EllipticCurvePrivateKey, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            "Content-Type": "application/json"}  # fmt: skip


async def stop(api: subprocess.Popen, log: Path) -> int:
    api.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(api.wait, 30)
    finally:
        if api.poll() is None:
            api.kill()
            api.wait(10)


@pytest.mark.devserver
async def test_api_verifies_a_pem_key_and_exits_0_on_sigterm(tmp_path, dev_server_env):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )  # "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n"
    address = dev_server_env.client.service_client.config.target_host
    env = api_env(tmp_path, address, SENDGRID_WEBHOOK_PUBLIC_KEY=pem)
    url = f"http://127.0.0.1:{env['NURTURE_API_PORT']}"
    log = tmp_path / "api.log"
    api = start_api(env, log)
    try:
        await until_serving(api, url, log)
        body = json.dumps([{"event": "group_resubscribe", "email": "ada@example.com"}]).encode()
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            answer = await http.post("/webhooks/sendgrid/events", content=body,
                                     headers=signed(key, body))  # fmt: skip
            forged = await http.post("/webhooks/sendgrid/events", content=body,
                                     headers=signed(ec.generate_private_key(ec.SECP256R1()),
                                                    body))  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert answer.json()["ignored"] == 1
        assert forged.status_code == 403
    finally:
        code = await stop(api, log)
    assert code == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "SIGTERM received: stopping" in text and "API stopped; exiting" in text
    assert "Traceback" not in text


async def test_api_sigterm_while_starting_exits_0(tmp_path):
    """Temporal never answers (a port whose accept queue is full: the SYN is dropped),
    so the API is still starting when SIGTERM comes."""
    with socket.socket() as blackhole, socket.socket() as filler:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(0)
        port = blackhole.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # takes the one slot of the accept queue
        log = tmp_path / "api.log"
        api = start_api(api_env(tmp_path, f"127.0.0.1:{port}"), log)
        deadline = time.monotonic() + 60
        while not (tmp_path / "nurture.db").exists():  # past the database: now connecting
            assert api.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        code = await stop(api, log)
    assert code == 0, log.read_text()[-3000:]
    assert "SIGTERM received while starting: stopping" in log.read_text()
