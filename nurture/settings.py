"""One typed settings object, read from the environment (and `.env` in development)."""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    state_dir: Path = Field(default=Path(".nurture"), alias="NURTURE_STATE_DIR")
    definitions_dir: Path = Field(default=Path("."), alias="NURTURE_DEFINITIONS")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")

    temporal_address: str = Field(default="localhost:7233", alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", alias="TEMPORAL_NAMESPACE")
    task_queue: str = Field(default="nurture", alias="NURTURE_TASK_QUEUE")
    temporal_ui_port: int = Field(default=8233, alias="NURTURE_TEMPORAL_UI_PORT")

    api_host: str = Field(default="127.0.0.1", alias="NURTURE_API_HOST")
    api_port: int = Field(default=8000, alias="NURTURE_API_PORT")
    api_token: SecretStr | None = Field(default=None, alias="NURTURE_API_TOKEN")
    public_url: str = Field(default="http://127.0.0.1:8000", alias="NURTURE_PUBLIC_URL")
    # Signs unsubscribe links and reply-to addresses; generated into the state dir if unset.
    secret_key: SecretStr | None = Field(default=None, alias="NURTURE_SECRET_KEY")
    max_body_bytes: int = Field(default=1_000_000, alias="NURTURE_MAX_BODY_BYTES", gt=0)

    # Webhooks. Each is refused (403) until its verification secret is set.
    sendgrid_webhook_public_key: str | None = Field(
        default=None, alias="SENDGRID_WEBHOOK_PUBLIC_KEY"
    )
    webhook_tolerance_seconds: int = Field(
        default=300, alias="NURTURE_WEBHOOK_TOLERANCE_SECONDS", gt=0
    )
    # Inbound Parse has no signature: SendGrid is given https://sendgrid:<this>@host/...
    inbound_parse_secret: SecretStr | None = Field(default=None, alias="SENDGRID_INBOUND_SECRET")
    # Replies go to reply+<signed message id>@<this domain> (an Inbound Parse domain).
    inbound_domain: str | None = Field(default=None, alias="NURTURE_INBOUND_DOMAIN")

    sender_name: str = Field(default="Nurture Demo", alias="NURTURE_SENDER_NAME")
    sender_email: str = Field(default="hello@example.com", alias="NURTURE_SENDER_EMAIL")
    sender_company: str = Field(default="Nurture Demo Co", alias="NURTURE_SENDER_COMPANY")
    sender_postal_address: str = Field(
        default="1 Example Street, Springfield, USA", alias="NURTURE_SENDER_POSTAL_ADDRESS"
    )

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

    @property
    def effective_database_url(self) -> str:
        """DATABASE_URL, or a SQLite file under the state directory."""
        return self.database_url or f"sqlite:///{(self.state_dir / 'nurture.db').resolve()}"

    def resolved_api_token(self) -> str:
        """NURTURE_API_TOKEN, or a token generated once into the state directory.

        The generated token keeps the embedded default runnable without putting a
        secret in the repository; production sets NURTURE_API_TOKEN.
        """
        return self._secret(self.api_token, "api-token")

    def resolved_secret_key(self) -> str:
        """NURTURE_SECRET_KEY, or one generated once into the state directory."""
        return self._secret(self.secret_key, "secret-key")

    def _secret(self, value: SecretStr | None, file_name: str) -> str:
        if value is not None:
            return value.get_secret_value()
        path = self.state_dir / file_name
        if not path.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text().strip()

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


def get_settings() -> Settings:
    return Settings()
