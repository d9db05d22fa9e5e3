"""SMS through Twilio's Messages API, with the official `twilio` SDK."""

from __future__ import annotations

from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from channels.base import PROVIDER_TIMEOUT_SECONDS, OutgoingSms, SendResult
from channels.errors import classify

# Twilio error codes that say the number itself is unusable, or opted out at Twilio.
BAD_NUMBER_CODES = frozenset({21211, 21614})  # invalid 'To'; not a mobile number
OPTED_OUT_CODES = frozenset({21610})  # the recipient replied STOP to our sender


class TwilioSmsChannel:
    name = "twilio"
    idempotent = False

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
        api_base: str | None = None,
    ):
        if not (from_number or messaging_service_sid):
            raise ValueError("Twilio needs TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID")
        # A hung connection must fail well inside the activity's timeout (then retried).
        self.client = Client(
            account_sid, auth_token, http_client=TwilioHttpClient(timeout=PROVIDER_TIMEOUT_SECONDS)
        )
        if api_base:  # a local imitation of the API, in tests
            self.client.api.base_url = api_base
        self.sender = (
            {"messaging_service_sid": messaging_service_sid}
            if messaging_service_sid
            else {"from_": from_number}
        )
        self.status_callback = status_callback

    def send_sms(self, sms: OutgoingSms) -> SendResult:
        options = dict(self.sender)
        if self.status_callback:
            options["status_callback"] = self.status_callback
        try:
            message = self.client.messages.create(to=sms.to, body=sms.body, **options)
        except TwilioRestException as exc:
            consent = (
                "bad_address" if exc.code in BAD_NUMBER_CODES
                else "stop" if exc.code in OPTED_OUT_CODES else None
            )  # fmt: skip
            raise classify(exc.status, f"Twilio {exc.code}: {exc.msg}", consent) from None
        return SendResult(self.name, message.sid)
