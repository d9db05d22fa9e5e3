"""Settings: one typed object from the environment; `nurture config` shows it with
secrets masked; a missing or malformed setting stops a process naming it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from temporalio.client import TLSConfig
from typer.testing import CliRunner

from infra.settings import Settings, SettingsError, get_settings
from services.runtime import temporal_tls

NURTURE = str(Path(sys.executable).parent / "nurture")
REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-value-never-printed"


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No Nurture or Temporal setting from the machine, and no .env file."""
    for name in list(os.environ):
        if name.startswith(("NURTURE_", "TEMPORAL_", "SENDGRID_", "TWILIO_")) or name in (
            "DATABASE_URL",
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def invoke(*args: str):
    from cli.app import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_config_shows_values_and_sources_and_never_a_secret(clean_env, tmp_path):
    clean_env.setenv("TEMPORAL_ADDRESS", "my-ns.a1b2c.tmprl.cloud:7233")
    clean_env.setenv("TEMPORAL_API_KEY", SECRET)
    clean_env.setenv("SENDGRID_API_KEY", SECRET)
    clean_env.setenv("DATABASE_URL", f"postgresql+psycopg://nurture:{SECRET}@db:5432/nurture")
    (tmp_path / ".env").write_text("NURTURE_TASK_QUEUE=from-dotenv\n")
    result = invoke("config", "--json")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    shown = json.loads(result.stdout)
    assert shown["TEMPORAL_ADDRESS"] == "my-ns.a1b2c.tmprl.cloud:7233"
    assert shown["TEMPORAL_API_KEY"] == shown["SENDGRID_API_KEY"] == "******** (set)"
    assert shown["DATABASE_URL"] == "postgresql+psycopg://nurture:***@db:5432/nurture"
    assert shown["NURTURE_TASK_QUEUE"] == "from-dotenv"
    assert shown["TWILIO_AUTH_TOKEN"] is None and shown["NURTURE_SHUTDOWN_TIMEOUT"] == 30.0

    table = invoke("config")
    assert SECRET not in table.output
    lines = {line.split("│")[1].strip(): line for line in table.stdout.splitlines()
             if line.startswith("│")}  # fmt: skip
    assert "environment" in lines["TEMPORAL_API_KEY"]
    assert ".env" in lines["NURTURE_TASK_QUEUE"]
    assert "default" in lines["NURTURE_TEMPORAL_UI_PORT"]
    only_set = invoke("config", "--no-defaults").stdout
    assert "TEMPORAL_API_KEY" in only_set and "NURTURE_TEMPORAL_UI_PORT" not in only_set


def test_config_with_nothing_set_says_so(clean_env):
    result = invoke("config", "--no-defaults")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "every setting is at its default (none set in the environment or .env)"
    ]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"TEMPORAL_ADDRESS": "http://temporal"}, "TEMPORAL_ADDRESS: not host:port"),
        ({"NURTURE_MAX_CONCURRENT_ACTIVITIES": "lots"},
         "NURTURE_MAX_CONCURRENT_ACTIVITIES: Input should be a valid integer"),
        ({"NURTURE_MAX_CONCURRENT_ACTIVITIES": "0"},
         "NURTURE_MAX_CONCURRENT_ACTIVITIES: Input should be greater than or equal to 1"),
        ({"NURTURE_LOG_FORMAT": "xml"}, "NURTURE_LOG_FORMAT: Input should be 'text' or 'json'"),
        ({"TEMPORAL_TLS_CERT": "client.pem"},
         "TEMPORAL_TLS_CERT is set but TEMPORAL_TLS_KEY is not: mTLS needs both"),
        ({"TEMPORAL_TLS_CERT": "nope.pem", "TEMPORAL_TLS_KEY": "nope.key"},
         "TEMPORAL_TLS_CERT: no such file 'nope.pem'"),
        ({"NURTURE_ENVIRONMENT": "production", "DATABASE_URL": "postgresql://db/n"},
         "NURTURE_ENVIRONMENT=production needs NURTURE_SECRET_KEY, NURTURE_API_TOKEN, "
         "NURTURE_PUBLIC_URL"),
    ],
)  # fmt: skip
def test_a_bad_setting_is_named(clean_env, env, message):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        get_settings()
    assert message in str(raised.value)


def test_a_process_with_a_bad_setting_stops_with_its_name_and_no_traceback(clean_env, tmp_path):
    env = os.environ | {"NURTURE_HEALTH_PORT": "99999", "NURTURE_API_TOKEN": SECRET}
    result = subprocess.run([NURTURE, "leads"], env=env, capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert "NURTURE_HEALTH_PORT: Input should be less than or equal to 65535" in result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr


def test_settings_errors_never_echo_a_secret(clean_env):
    clean_env.setenv("NURTURE_ENVIRONMENT", "production")
    clean_env.setenv("NURTURE_API_TOKEN", SECRET)
    with pytest.raises(SettingsError) as raised:
        get_settings()
    assert SECRET not in str(raised.value)


def test_temporal_tls_follows_the_settings(clean_env, tmp_path):
    assert temporal_tls(Settings()) is False  # a local server: plaintext
    assert temporal_tls(Settings(TEMPORAL_API_KEY="key")) is True  # Temporal Cloud
    assert temporal_tls(Settings(TEMPORAL_API_KEY="key", TEMPORAL_TLS=False)) is False
    cert, key, ca = (tmp_path / name for name in ("client.pem", "client.key", "ca.pem"))
    for path in (cert, key, ca):
        path.write_bytes(f"PEM of {path.name}".encode())
    mtls = temporal_tls(Settings(TEMPORAL_TLS_CERT=cert, TEMPORAL_TLS_KEY=key, TEMPORAL_TLS_CA=ca))
    assert isinstance(mtls, TLSConfig)
    assert (mtls.client_cert, mtls.client_private_key, mtls.server_root_ca_cert) == (
        b"PEM of client.pem", b"PEM of client.key", b"PEM of ca.pem")  # fmt: skip


# --- SENDGRID_WEBHOOK_PUBLIC_KEY: read at start, not at the first webhook ----------------------


def public_der(key) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_a_sendgrid_key_is_read_at_start_as_base64_or_pem_and_verifies(clean_env):
    """SendGrid's settings page shows the base64 of the DER key; a PEM file of the same
    key (any line endings, padding lost) is taken too. Each verifies a real signature
    on the webhook's own path (api/provider_webhooks.py)."""
    from api.provider_webhooks import _sendgrid_verifier

    key = ec.generate_private_key(ec.SECP256R1())
    shown = base64.b64encode(public_der(key)).decode()
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    timestamp, payload = str(int(time.time())), '[{"event": "open"}]'
    signature = base64.b64encode(
        key.sign((timestamp + payload).encode(), ec.ECDSA(hashes.SHA256()))
    ).decode()
    for given in (shown, f"  {shown}\n", shown.rstrip("="), pem, pem.replace("\n", "\r\n")):
        clean_env.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", given)
        loaded = get_settings().sendgrid_webhook_public_key
        assert loaded == shown
        assert _sendgrid_verifier(loaded).verify_signature(payload, signature, timestamp)
    clean_env.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", " ")
    assert get_settings().sendgrid_webhook_public_key is None  # unset: events refused


def malformed_sendgrid_keys() -> dict[str, tuple[str, str]]:
    """name: (value, what the error says)."""
    p256 = ec.generate_private_key(ec.SECP256R1())
    shown = base64.b64encode(public_der(p256)).decode()
    private_pem = p256.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "garbage": ("not-a-key-at-all", "not a public key"),
        "truncated": (shown[:60], "not a public key"),
        "bad pem": ("-----BEGIN PUBLIC KEY-----\nMFkw!!\n-----END PUBLIC KEY-----", "not a public"),
        "rsa": (base64.b64encode(public_der(rsa_key)).decode(), "not an ECDSA P-256 key"),
        "p384": (base64.b64encode(public_der(ec.generate_private_key(ec.SECP384R1()))).decode(),
                 "not an ECDSA P-256 key"),
        "private": (private_pem, "a private key"),
    }  # fmt: skip


def test_a_malformed_sendgrid_key_is_named_at_start_and_never_echoed(clean_env):
    for name, (value, says) in malformed_sendgrid_keys().items():
        clean_env.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", value)
        with pytest.raises(SettingsError) as raised:
            get_settings()
        message = str(raised.value)
        assert message.startswith("invalid settings:\n  SENDGRID_WEBHOOK_PUBLIC_KEY: "), name
        assert says in message, (name, message)
        assert value.strip()[:20] not in message and "MFkw" not in message, name


@pytest.mark.parametrize("command", [[NURTURE, "api"], [sys.executable, "worker.py"]])
def test_api_and_worker_stop_at_start_on_a_malformed_sendgrid_key(clean_env, tmp_path, command):
    """Exit 1, `invalid settings:` and the name, no traceback, the value not echoed;
    before any connection (Temporal here is a port where nothing listens)."""
    value = "-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----"
    env = os.environ | {"SENDGRID_WEBHOOK_PUBLIC_KEY": value, "TEMPORAL_ADDRESS": "127.0.0.1:1",
                        "NURTURE_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(
        "invalid settings:\n  SENDGRID_WEBHOOK_PUBLIC_KEY: not a public"
    )
    assert "Traceback" not in result.stderr and "not base64" not in result.stderr
    assert not (tmp_path / "state").exists()  # stopped before touching anything


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NURTURE_METRICS_HOST": "localhost"}, "NURTURE_METRICS_HOST: not an IP address"),
        ({"NURTURE_DB_CONNECT_TIMEOUT": "1"},
         "NURTURE_DB_CONNECT_TIMEOUT: Input should be greater than or equal to 2"),
        ({"NURTURE_DB_STATEMENT_TIMEOUT": "-1"},
         "NURTURE_DB_STATEMENT_TIMEOUT: Input should be greater than or equal to 0"),
    ],
)  # fmt: skip
def test_the_hardening_settings_are_checked_at_start(clean_env, env, message):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        get_settings()
    assert message in str(raised.value)


def test_metrics_and_health_default_to_loopback(clean_env):
    assert Settings().metrics_host == "127.0.0.1"
    assert Settings(NURTURE_METRICS_HOST="::").metrics_host == "::"
