"""Settings: one typed object from the environment; `nurture config` shows it with
secrets masked; a missing or malformed setting stops a process naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.client import TLSConfig
from typer.testing import CliRunner

from nurture.runtime import temporal_tls
from nurture.settings import Settings, SettingsError, get_settings

NURTURE = str(Path(sys.executable).parent / "nurture")
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
    from nurture.cli import app

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
