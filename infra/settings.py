"""One typed settings object, read from the environment (and `.env` in development)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import os
import re
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # production: the settings every process of a deployment must share are required
    # (a secret generated per machine would make one machine's links fail on another).
    environment: Literal["development", "production"] = Field(
        default="development", alias="NURTURE_ENVIRONMENT"
    )
    state_dir: Path = Field(default=Path(".nurture"), alias="NURTURE_STATE_DIR")
    definitions_dir: Path = Field(default=Path("."), alias="NURTURE_DEFINITIONS")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    # PostgreSQL: give up on a connection that does not open (a dead host, a blackholed
    # address) instead of libpq's 130 s, and cancel a statement that runs too long (0: never).
    db_connect_timeout: int = Field(default=5, alias="NURTURE_DB_CONNECT_TIMEOUT", ge=2)
    db_statement_timeout: float = Field(default=30.0, alias="NURTURE_DB_STATEMENT_TIMEOUT", ge=0)

    temporal_address: str = Field(default="localhost:7233", alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", alias="TEMPORAL_NAMESPACE", min_length=1)
    task_queue: str = Field(default="nurture", alias="NURTURE_TASK_QUEUE", min_length=1)
    temporal_ui_port: int = Field(default=8233, alias="NURTURE_TEMPORAL_UI_PORT")
    # A Temporal cluster with mTLS: the client certificate and key (PEM files), and the
    # CA that signed the server's certificate if it is not a public one.
    temporal_tls_cert: Path | None = Field(default=None, alias="TEMPORAL_TLS_CERT")
    temporal_tls_key: Path | None = Field(default=None, alias="TEMPORAL_TLS_KEY")
    temporal_tls_ca: Path | None = Field(default=None, alias="TEMPORAL_TLS_CA")
    # TLS without a client certificate (Temporal Cloud with an API key). Implied by a
    # certificate or an API key; set it to false only for a plaintext proxy.
    temporal_tls: bool | None = Field(default=None, alias="TEMPORAL_TLS")
    temporal_api_key: SecretStr | None = Field(default=None, alias="TEMPORAL_API_KEY")

    # Worker: how much one process takes on at once, and how long it lets running
    # activities finish when stopped (SIGTERM) before cancelling them.
    max_concurrent_activities: int = Field(
        default=32, alias="NURTURE_MAX_CONCURRENT_ACTIVITIES", ge=1
    )
    max_concurrent_workflow_tasks: int = Field(
        default=100, alias="NURTURE_MAX_CONCURRENT_WORKFLOW_TASKS", ge=2
    )
    max_cached_workflows: int = Field(default=1000, alias="NURTURE_MAX_CACHED_WORKFLOWS", ge=0)
    shutdown_timeout: float = Field(default=30.0, alias="NURTURE_SHUTDOWN_TIMEOUT", ge=0)
    # Sends per second to each provider, held across every worker by Temporal (each
    # channel's sends have a task queue of their own): a burst is spread, never refused.
    # Set them to your account's limits (docs/operations.md, "Provider rate limits").
    email_sends_per_second: float = Field(
        default=100.0, alias="NURTURE_EMAIL_SENDS_PER_SECOND", gt=0
    )
    sms_sends_per_second: float = Field(default=10.0, alias="NURTURE_SMS_SENDS_PER_SECOND", gt=0)

    # Observability: Prometheus metrics and a health endpoint per worker (0: off), logs.
    metrics_port: int = Field(default=9464, alias="NURTURE_METRICS_PORT", ge=0, le=65535)
    health_port: int = Field(default=8081, alias="NURTURE_HEALTH_PORT", ge=0, le=65535)
    # Loopback unless opted in: metrics and health say what runs and how busy it is,
    # for the node's Prometheus agent, not the network. NURTURE_METRICS_HOST=0.0.0.0 opens them.
    metrics_host: str = Field(default="127.0.0.1", alias="NURTURE_METRICS_HOST")
    log_format: Literal["text", "json"] = Field(default="text", alias="NURTURE_LOG_FORMAT")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", alias="NURTURE_LOG_LEVEL"
    )

    api_host: str = Field(default="127.0.0.1", alias="NURTURE_API_HOST")
    api_port: int = Field(default=8000, alias="NURTURE_API_PORT")
    api_token: SecretStr | None = Field(default=None, alias="NURTURE_API_TOKEN")
    public_url: str = Field(default="http://127.0.0.1:8000", alias="NURTURE_PUBLIC_URL")
    # Signs unsubscribe links and reply-to addresses; generated into the state dir if unset.
    secret_key: SecretStr | None = Field(default=None, alias="NURTURE_SECRET_KEY")
    max_body_bytes: int = Field(default=1_000_000, alias="NURTURE_MAX_BODY_BYTES", gt=0)
    # Refused (401/403) requests a client address may make before it is answered 429.
    auth_failure_limit: str = Field(default="10/minute", alias="NURTURE_AUTH_FAILURE_LIMIT")
    # Posts a client address may make to one form (POST /forms/{id}) before it is answered 429.
    form_rate_limit: str = Field(default="10/minute", alias="NURTURE_FORM_RATE_LIMIT")

    # Webhooks. Each is refused (403) until its verification secret is set.
    sendgrid_webhook_public_key: str | None = Field(
        default=None, alias="SENDGRID_WEBHOOK_PUBLIC_KEY"
    )
    webhook_tolerance_seconds: int = Field(
        default=300, alias="NURTURE_WEBHOOK_TOLERANCE_SECONDS", gt=0
    )
    # The CRM's opportunity events (POST /webhooks/crm): comma-separated, several while
    # one is rotated; refused (403) until set.
    crm_webhook_secrets: SecretStr | None = Field(default=None, alias="NURTURE_CRM_WEBHOOK_SECRETS")
    # Inbound Parse has no signature: SendGrid is given https://sendgrid:<this>@host/...
    inbound_parse_secret: SecretStr | None = Field(default=None, alias="SENDGRID_INBOUND_SECRET")
    # Replies go to reply+<signed message id>@<this domain> (an Inbound Parse domain).
    inbound_domain: str | None = Field(default=None, alias="NURTURE_INBOUND_DOMAIN")
    # Provider events still waiting for their lead (or message) after this are deleted.
    pending_event_retention_days: int = Field(
        default=30, alias="NURTURE_PENDING_EVENT_RETENTION_DAYS", ge=1
    )

    sender_name: str = Field(default="Nurture Demo", alias="NURTURE_SENDER_NAME")
    sender_email: str = Field(default="hello@example.com", alias="NURTURE_SENDER_EMAIL")
    sender_company: str = Field(default="Nurture Demo Co", alias="NURTURE_SENDER_COMPANY")
    sender_postal_address: str = Field(
        default="1 Example Street, Springfield, USA", alias="NURTURE_SENDER_POSTAL_ADDRESS"
    )
    # The language of a lead with no locale: what its dates and numbers are written in,
    # and the variant its templates are taken in (none: the files without a tag).
    default_locale: str = Field(default="en", alias="NURTURE_DEFAULT_LOCALE")

    # Providers: each is used when its key is set; the outbox otherwise.
    sendgrid_api_key: SecretStr | None = Field(default=None, alias="SENDGRID_API_KEY")
    sendgrid_host: str = Field(default="https://api.sendgrid.com", alias="SENDGRID_HOST")
    twilio_account_sid: str | None = Field(default=None, alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: SecretStr | None = Field(default=None, alias="TWILIO_AUTH_TOKEN")
    twilio_from_number: str | None = Field(default=None, alias="TWILIO_FROM_NUMBER")
    twilio_messaging_service_sid: str | None = Field(
        default=None, alias="TWILIO_MESSAGING_SERVICE_SID"
    )
    twilio_api_base: str | None = Field(default=None, alias="TWILIO_API_BASE")

    # The HubSpot connector: deals pulled every so many minutes once a token is set.
    hubspot_access_token: SecretStr | None = Field(default=None, alias="HUBSPOT_ACCESS_TOKEN")
    hubspot_host: str = Field(default="https://api.hubapi.com", alias="HUBSPOT_HOST")
    crm_sync_minutes: int = Field(default=15, alias="NURTURE_CRM_SYNC_MINUTES", ge=1)
    # Each pull starts this far before its cursor: HubSpot's search index lags its writes.
    crm_sync_overlap_seconds: int = Field(
        default=300, alias="NURTURE_CRM_SYNC_OVERLAP_SECONDS", ge=0
    )
    # A deal with no currency of its own: the portal's company currency.
    hubspot_currency: str = Field(
        default="USD", alias="NURTURE_HUBSPOT_CURRENCY", pattern=r"^[A-Z]{3}$"
    )

    # Web tracking (docs/tracking.md): the sites whose pages may send views to POST /collect
    # (comma-separated origins, e.g. https://www.example.com; the API's own origin always
    # may), views a client address may send, and days a view never joined to a lead is kept.
    tracking_origins: str = Field(default="", alias="NURTURE_TRACKING_ORIGINS")
    tracking_rate_limit: str = Field(default="60/minute", alias="NURTURE_TRACKING_RATE_LIMIT")
    tracking_retention_days: int = Field(default=30, alias="NURTURE_TRACKING_RETENTION_DAYS", ge=1)

    @field_validator("temporal_address")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        if not re.fullmatch(r"[^\s:/]+:\d{1,5}", value.strip()):
            raise ValueError(
                "not host:port, such as localhost:7233 or my-ns.a1b2c.tmprl.cloud:7233"
            )
        return value.strip()

    @field_validator("auth_failure_limit", "form_rate_limit", "tracking_rate_limit")
    @classmethod
    def _a_rate(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate: write it as e.g. 10/minute") from None
        return value

    @field_validator("tracking_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in (part.strip() for part in value.split(",")):
            if origin and not re.fullmatch(r"https?://[^\s/?#]+/?", origin):
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme://host[:port], such as "
                    "https://www.example.com, with no path"
                )
        return value

    @field_validator("default_locale")
    @classmethod
    def _a_locale(cls, value: str) -> str:
        from babel import Locale, UnknownLocaleError

        try:  # normalised as models.locales does it (infra imports no models)
            locale = Locale.parse(value.strip().replace("_", "-"), sep="-")
        except (UnknownLocaleError, ValueError):
            raise ValueError(
                f"unknown locale {value!r}: write a BCP 47 tag such as en or de-AT"
            ) from None
        return "-".join(p for p in (locale.language, locale.script, locale.territory) if p)

    @field_validator("metrics_host")
    @classmethod
    def _an_ip_address(cls, value: str) -> str:
        try:  # Temporal's Prometheus exporter binds an IP address, never a host name
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError("not an IP address, such as 127.0.0.1 or 0.0.0.0") from None

    @field_validator("secret_key", "api_token")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty key would sign links anyone can forge; unset, one is generated.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("empty: set a secret, or unset it to have one generated")
        return value

    @field_validator("sendgrid_webhook_public_key")
    @classmethod
    def _sendgrid_key(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return sendgrid_public_key(value)

    @model_validator(mode="after")
    def _tls_files_come_in_pairs(self) -> Settings:
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            given, missing = (("TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY")
                              if self.temporal_tls_key is None
                              else ("TEMPORAL_TLS_KEY", "TEMPORAL_TLS_CERT"))  # fmt: skip
            raise ValueError(f"{given} is set but {missing} is not: mTLS needs both")
        for name, path in (("TEMPORAL_TLS_CERT", self.temporal_tls_cert),
                           ("TEMPORAL_TLS_KEY", self.temporal_tls_key),
                           ("TEMPORAL_TLS_CA", self.temporal_tls_ca)):  # fmt: skip
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file {str(path)!r}")
        if self.environment == "production":
            missing = [name for name, value in (
                ("DATABASE_URL", self.database_url),
                ("NURTURE_SECRET_KEY", self.secret_key),
                ("NURTURE_API_TOKEN", self.api_token),
                ("NURTURE_PUBLIC_URL", "public_url" in self.model_fields_set or None),
            ) if value is None]  # fmt: skip
            if missing:
                raise ValueError(f"NURTURE_ENVIRONMENT=production needs {', '.join(missing)}")
        return self

    @property
    def effective_database_url(self) -> str:
        """DATABASE_URL, or a SQLite file under the state directory."""
        return self.database_url or f"sqlite:///{(self.state_dir / 'nurture.db').resolve()}"

    def resolved_api_token(self) -> str:
        """NURTURE_API_TOKEN, or a token generated once into the state directory.

        The generated token keeps the embedded default runnable without putting a
        secret in the repository; production sets NURTURE_API_TOKEN.
        """
        return self._secret(self.api_token, "api-token", "NURTURE_API_TOKEN")

    def tracking_origin_list(self) -> list[str]:
        """NURTURE_TRACKING_ORIGINS, each as a browser sends it in `Origin` (lower case)."""
        return [o.strip().lower().rstrip("/") for o in self.tracking_origins.split(",")
                if o.strip()]  # fmt: skip

    def crm_webhook_secret_list(self) -> list[str]:
        value = self.crm_webhook_secrets.get_secret_value() if self.crm_webhook_secrets else ""
        return [secret.strip() for secret in value.split(",") if secret.strip()]

    def resolved_secret_key(self) -> str:
        """NURTURE_SECRET_KEY, or one generated once into the state directory."""
        return self._secret(self.secret_key, "secret-key", "NURTURE_SECRET_KEY")

    def _secret(self, value: SecretStr | None, file_name: str, setting: str) -> str:
        if value is not None:
            return value.get_secret_value()
        return generated_secret(self.state_dir / file_name, setting)

    def ensure_state_dir(self) -> Path:
        """The state directory, created private (0700) if missing: it holds the
        generated secrets and, by default, the SQLite database of leads."""
        return private_dir(self.state_dir)

    @property
    def outbox_dir(self) -> Path:
        return self.state_dir / "outbox"

    @cached_property
    def sender(self) -> dict[str, str]:
        return {
            "name": self.sender_name,
            "email": self.sender_email,
            "company": self.sender_company,
            "postal_address": self.sender_postal_address,
        }


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it (its environment name)."""


def private_dir(path: Path) -> Path:
    """`path`, created 0700 if missing, and so are its missing parents (an existing
    directory keeps its mode)."""
    for missing in reversed([p for p in (path, *path.parents) if not p.exists()]):
        missing.mkdir(mode=0o700, exist_ok=True)
    return path


def generated_secret(path: Path, setting: str) -> str:
    """The secret in `path`, generated into it first if there is none.

    Processes starting together on a fresh state directory must all end up with the
    same secret, and never with an empty one: each writes a candidate to a file of its
    own, and only one candidate is published (`_publish`); everyone then reads that one.
    """
    secret = _read_secret(path)
    if secret is None:
        private_dir(path.parent)
        _publish(path, secrets.token_urlsafe(32))
        secret = _read_secret(path)
    if not secret:  # only an older version, or a person, leaves one empty: never sign with it
        raise SettingsError(
            f"{setting}: unset, and its generated file {path} is empty: delete the file "
            f"to have a new secret generated, or set {setting}"
        )
    return secret


def _read_secret(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _publish(path: Path, secret: str) -> None:
    """Make `path` hold `secret` unless it already exists, atomically.

    The candidate is written whole to a temporary file of this process (exclusive
    create, 0600), flushed to disk, then hard-linked to `path`. The name appears only
    with the whole secret behind it, so no reader sees a partial file; and a link, unlike
    a rename, fails when `path` exists, so a secret another process has already read is
    never replaced: the first link wins and the other candidates are thrown away.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(secret)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)  # the new name survives a power cut too


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


PEM_ARMOUR = re.compile(r"-----(BEGIN|END) PUBLIC KEY-----")


def sendgrid_public_key(text: str) -> str:
    """SendGrid's verification key as `EventWebhook` loads it: the base64 of a DER
    (SubjectPublicKeyInfo) ECDSA P-256 public key, what SendGrid's settings page shows.
    The same key in PEM armour is accepted too (the armour and line breaks removed).
    Raises ValueError saying what is wrong, without the value: at start, not as a 403
    on every webhook."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_der_public_key,
    )

    if "PRIVATE KEY" in text:
        raise ValueError("a private key: give the public key SendGrid shows")
    body = "".join(PEM_ARMOUR.sub("", text).split())
    body += "=" * (-len(body) % 4)  # padding lost in a copy and paste
    try:
        key = load_der_public_key(base64.b64decode(body, validate=True))
    except (binascii.Error, ValueError):
        raise ValueError(
            "not a public key: expected the base64 verification key SendGrid shows "
            "(Mail Settings, Signed Event Webhook), or it in PEM armour"
        ) from None
    except UnsupportedAlgorithm:  # a key, of a kind cryptography cannot load
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 key, which SendGrid signs with")
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()  # one line, as `EventWebhook` wants it


def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """One line per bad setting, by the environment variable an operator sets."""
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        value = error.get("input")
        shown = "" if isinstance(value, dict) or name in NOT_ECHOED else f" (got {value!r})"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}{shown}" if name != "settings" else message)
    return "invalid settings:\n  " + "\n  ".join(lines)


# Settings never printed: `nurture config` masks them, errors do not echo them.
SECRET_NAMES = frozenset(
    field.alias
    for field in Settings.model_fields.values()
    if field.annotation in (SecretStr, SecretStr | None)
) | {"DATABASE_URL"}
# Not echoed in errors either: a private key pasted there by mistake must not be printed.
NOT_ECHOED = SECRET_NAMES | {"SENDGRID_WEBHOOK_PUBLIC_KEY"}
