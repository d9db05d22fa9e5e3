"""Provider rate limits: each channel's sends have a task queue of their own, which
Temporal holds to NURTURE_EMAIL_SENDS_PER_SECOND / NURTURE_SMS_SENDS_PER_SECOND across
every worker, so a burst is spread out instead of refused.

On the dev server (it keeps task-queue rate limits), against the SendGrid and Twilio
imitation answering 429 beyond its own limit: at the configured rate no send is refused
and each goes out once; the control, without our limit, shows the imitation refusing
(each 429 counted, retried with back-off, still sent once).
"""

from __future__ import annotations

import uuid

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from models.db import Message
from services.definitions import load_definitions
from testkit.providers import ProviderServer, sends_definitions
from tests.harness import eventually, running_harness

pytestmark = pytest.mark.devserver

BURST = 20  # leads enrolled at once, each sent one message straight away
IMITATION_LIMIT = 6  # sends per second the imitation takes per API before a 429
TEMPLATES = {"email": "hello", "sms": "burst_sms"}


async def send_a_burst(tmp_path, env, sqlite_settings, providers, channel, per_second):
    """Enroll BURST leads in a one-step sequence sending on `channel`; return their
    messages' statuses once every one is sent (or after a minute)."""
    root = sends_definitions(
        tmp_path / "definitions", "burst", "Burst", [("only", channel, TEMPLATES[channel])], []
    )
    settings = sqlite_settings.model_copy(update={
        "definitions_dir": root, "task_queue": f"rate-{uuid.uuid4().hex[:8]}",
        "email_sends_per_second": per_second, "sms_sends_per_second": per_second,
        "sendgrid_api_key": SecretStr(providers.sendgrid_key), "sendgrid_host": providers.url,
        "twilio_account_sid": providers.twilio_sid, "twilio_from_number": "+14155550000",
        "twilio_auth_token": SecretStr(providers.twilio_token), "twilio_api_base": providers.url,
    })  # fmt: skip
    async with running_harness(env, settings, load_definitions(root)) as harness:
        leads = [
            await harness.enroll(
                "burst", email=f"burst{n}@example.com", phone=f"+1415555{n:04d}"
            )  # fmt: skip
            for n in range(BURST)
        ]

        def statuses() -> list[str]:
            with harness.database.sessions() as session:
                query = select(Message.status).where(Message.lead_id.in_(leads))
                return sorted(session.scalars(query))

        await eventually(lambda: statuses() == ["sent"] * BURST, timeout=60, what="every send")
        return leads, statuses()


@pytest.mark.parametrize("channel", ["email", "sms"])
async def test_a_burst_at_the_configured_rate_is_never_refused(
    tmp_path, dev_server_env, sqlite_settings, channel
):
    providers = ProviderServer(rate_limit=IMITATION_LIMIT)
    try:
        # 1/s, a sixth of the imitation's 6 in any one-second window. Temporal spaces the
        # sends' dispatch, not their calls: a worker short of CPU (a loaded CI machine) may
        # run a few dispatched sends together, so the configured rate keeps a margin under
        # the provider's (at 2/s, three seconds of a starved worker made one 429 in CI).
        leads, statuses = await send_a_burst(
            tmp_path, dev_server_env, sqlite_settings, providers, channel, per_second=1
        )
        assert statuses == ["sent"] * BURST
        assert providers.throttled == 0
        assert len(providers.requests) == BURST  # one request per send, none repeated
        sent = [providers.for_lead(lead_id, f"+1415555{n:04d}")[channel]
                for n, lead_id in enumerate(leads)]  # fmt: skip
        assert sent == [1] * BURST
        assert len(set(providers.issued)) == BURST
    finally:
        providers.close()


async def test_without_the_limit_the_provider_refuses_and_each_send_still_goes_once(
    tmp_path, dev_server_env, sqlite_settings
):
    providers = ProviderServer(rate_limit=IMITATION_LIMIT)
    try:
        leads, statuses = await send_a_burst(
            tmp_path, dev_server_env, sqlite_settings, providers, "email", per_second=1000
        )
        assert statuses == ["sent"] * BURST
        assert providers.throttled > 0  # the imitation's limit bites without ours
        assert len(providers.requests) == BURST + providers.throttled
        assert len(set(providers.issued)) == BURST  # each send accepted once
    finally:
        providers.close()
