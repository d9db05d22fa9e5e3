"""The OpenAPI document says what the API does: schemathesis, with every one of its checks
(`--checks all`: status codes, content types, response schemas and headers, data the
schema allows accepted and data it forbids refused, missing required headers, unsupported
methods and their `Allow`, ignored authentication), against the real app in-process, on
a real SQLite database and the Temporal dev server's real client (no worker: a signal is
accepted and waits). A client generated from /openapi.json gets no answer it was not told
of.

The webhooks are signed as their providers sign them (a real P-256 key for SendGrid,
the auth token for Twilio), for the cases schemathesis means to be valid; the others keep
its generated signatures and must be refused. Deterministic (a fixed seed, derandomized
generation, no example database): CI checks the cases checked here. About a minute.

(schemathesis's `from_fixture` does not run under pytest 9.2: the document is loaded at
import, from the same `create_app`, and the test checks that the app serves it.)
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import phonenumbers
import pytest
import schemathesis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from email_validator import SPECIAL_USE_DOMAIN_NAMES
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat
from pydantic import SecretStr
from schemathesis.checks import CHECKS, is_check_class, load_all_checks
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy.orm import sessionmaker
from twilio.request_validator import RequestValidator

from api.app import create_app
from api.console.app import LOGIN_CSRF
from api.console.web import COOKIE, session_signer
from api.provider_webhook_docs import SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP, TWILIO_SIGNATURE
from channels.consent_links import confirm_url
from infra.settings import Settings
from models.db import ExperimentAssignment, ExperimentRecord, Handoff
from sales.outbound_webhooks import SIGNATURE_HEADER as CRM_SIGNATURE
from sales.outbound_webhooks import TIMESTAMP_HEADER as CRM_TIMESTAMP
from sales.outbound_webhooks import sign as sign_crm
from scoring import synthetic
from scoring.history import HistoryLead
from scoring.model_store import store
from scoring.predictive import Training, train
from services import accounts
from services.definitions import load_definitions
from services.intake import Intake, LeadIn
from services.runtime import build_links, open_database, sync_sales_reps
from tests.conftest import FIXTURE_DEFINITIONS

API_TOKEN = "contract-api-token"
INBOUND_SECRET = "contract-inbound-secret"
TWILIO_TOKEN = "contract-twilio-token"
CRM_SECRET = "contract-crm-secret"
PUBLIC_URL = "https://nurture.example.com"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
MAX_EXAMPLES = 25  # per operation and phase: ~1 minute for all of them

load_all_checks()
ALL_CHECKS = [check for check in CHECKS.get_all() if not is_check_class(check)]


def contract_settings(**values: Any) -> Settings:
    public = SENDGRID_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Settings(
        NURTURE_DEFINITIONS=FIXTURE_DEFINITIONS,
        NURTURE_API_TOKEN=API_TOKEN,
        NURTURE_SECRET_KEY="contract-secret-key",
        NURTURE_PUBLIC_URL=PUBLIC_URL,
        SENDGRID_WEBHOOK_PUBLIC_KEY=base64.b64encode(public).decode(),
        SENDGRID_INBOUND_SECRET=SecretStr(INBOUND_SECRET),
        TWILIO_AUTH_TOKEN=SecretStr(TWILIO_TOKEN),
        NURTURE_CRM_WEBHOOK_SECRETS=SecretStr(CRM_SECRET),
        NURTURE_FORM_RATE_LIMIT="100000/minute",  # tests/test_forms.py tests the limit
        NURTURE_TRACKING_RATE_LIMIT="100000/minute",  # tests/test_tracking.py tests it
        **values,
    )


def build_app(intake: Intake, settings: Settings) -> FastAPI:
    # Schemathesis sends hundreds of bad credentials on purpose: no lockout here
    # (tests/test_api_security.py tests it).
    return create_app(intake, settings, relay=False, auth_failure_limit="100000/minute")


def the_document() -> dict:
    """/openapi.json (an app's document depends on no database or server)."""
    intake = Intake(load_definitions(FIXTURE_DEFINITIONS), sessionmaker(), None, "contract")
    return build_app(intake, contract_settings()).openapi()


DOCUMENT = the_document()
FORMS = load_definitions(FIXTURE_DEFINITIONS).forms
CONFIG = schemathesis.Config.from_dict({
    "seed": 14,
    # No NUL in text: the API refuses it (a database column cannot hold it), as documented.
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
                   "allow-x00": False},
    "auth": {"openapi": {
        "HTTPBearer": {"bearer": API_TOKEN},
        "HTTPBasic": {"username": "sendgrid", "password": INBOUND_SECRET},
    }},
})  # fmt: skip
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)

# The documented rules no JSON Schema keyword states (api/openapi.py), generated within
# them: a valid phone number, a locale Babel knows, a country code (services/intake.py),
# an event time from 2000 to 2200, an
# email address whose domain is not a special-use name (.test, .local, ...: email-validator
# refuses those).
SPECIAL = set(SPECIAL_USE_DOMAIN_NAMES)
PHONES = [
    phonenumbers.format_number(phonenumbers.example_number(region), PhoneNumberFormat.E164)
    for region in ("US", "GB", "DE", "FR", "IN", "BR", "JP", "AU")
]
schemathesis.openapi.format("phone", st.sampled_from(PHONES))
schemathesis.openapi.format("bcp47", st.sampled_from(["en", "de", "de-AT", "pt-BR", "zh-Hant"]))
schemathesis.openapi.format("iso3166", st.sampled_from(["US", "DE", "GB", "FR", "AT", "JP"]))
EMAILS = st.emails().filter(lambda email: email.rsplit(".", 1)[-1].lower() not in SPECIAL)
schemathesis.openapi.format("email", EMAILS)
schemathesis.openapi.format("mailbox", EMAILS)  # Inbound Parse's From header
schemathesis.openapi.format(
    "date-time",
    st.datetimes(datetime(2000, 1, 2), datetime(2199, 12, 30), timezones=st.just(UTC)).map(
        datetime.isoformat
    ),
)


# Forms whose fields are written in notations no JSON Schema states (responses as
# `2d: email.click`, a lead's fields checked as POST /leads checks them): a value the
# schema allows may still be refused 422, naming the field; every other check holds.
# A form's fields are forms.yaml's, whatever their names: any object of text is in its
# schema, and its lead's fields are checked as POST /leads checks them.
NOTATIONS = {"POST /console/sequences/{sequence_id}/simulate", "POST /forms/{name}"}
# The statuses each operation answered the requests schemathesis meant to be valid:
# checked when the run ends, so a document kept only by refusing everything cannot pass.
ACCEPTED: dict[str, set[int]] = defaultdict(set)
# Its handoff's lead has no workflow: a valid answer is refused, with the reason.
REFUSED_WHEN_VALID = {"POST /handoffs/{handoff_id}/answer": 409,
                      "POST /console/handoffs/{handoff_id}/answer": 409,
                      # A made-up rep, or alice's own handoff to alice: refused, saying so.
                      "POST /console/handoffs/{handoff_id}/reassign": 409,
                      # Made-up credentials: refused, saying so (401), never a 422.
                      "POST /console/login": 401,
                      # Active (or retired) already, or no model active before: saying so.
                      "POST /console/models/{fingerprint}/{action}": 409,
                      "POST /console/models/previous/activate": 409}  # fmt: skip


@dataclass
class Contract:
    app: FastAPI
    unsubscribe_token: str  # of a lead we have
    handoff_id: str  # a pending handoff (its lead has no workflow: answers are refused 409)
    handoff_token: str
    sessions: sessionmaker  # of the database, to give each console request a session
    admin_id: str
    lead_id: str  # a lead with no workflow: its console page answers at once
    user_id: str  # a user to disable and enable
    token_id: str  # a token to revoke
    model: str  # a predictive model's fingerprint (a candidate)
    experiment: str  # an experiment with a lead assigned (a segment's holdout: a colon)
    confirm_token: str  # a lead's double opt-in link, its email consent pending


@pytest.fixture(scope="module")
def contract(tmp_path_factory, dev_server_env) -> Contract:
    state = tmp_path_factory.mktemp("contract")
    settings = contract_settings(
        NURTURE_STATE_DIR=state,
        DATABASE_URL=f"sqlite:///{state / 'nurture.db'}",
        NURTURE_TASK_QUEUE=f"contract-{uuid.uuid4().hex[:8]}",  # no worker polls it
    )
    definitions = load_definitions(FIXTURE_DEFINITIONS)
    database = open_database(settings)
    sync_sales_reps(database, definitions)
    intake = Intake(definitions, database.sessions, dev_server_env.client, settings.task_queue)
    lead, _ = intake.upsert_lead(LeadIn(email="ada@example.com", phone="+14155550123"))
    # Another lead for the handoff: unsubscribing Ada starts her workflow, and an answer
    # to a workflow no worker runs would wait (api/handoffs.py: 503 after ANSWER_TIMEOUT).
    handed_off, _ = intake.upsert_lead(LeadIn(email="grace@example.com"))
    pending = {"email": {"status": "pending", "basis": "consent"}}
    confirming, _ = intake.upsert_lead(LeadIn(email="cy@example.com", consent=pending))
    with database.sessions.begin() as session:
        handoff = Handoff(lead_id=handed_off.id, cycle=1, rep_id="alice", score=80, reason="hot")
        session.add(handoff)
    admin = accounts.add_user(database.sessions, "tests", "admin@example.com", "Admin", "admin",
                              "a long enough password", None, set())  # fmt: skip
    viewer = accounts.add_user(database.sessions, "tests", "viewer@example.com", "Viewer",
                               "viewer", "a long enough password", None, set())  # fmt: skip
    accounts.create_token(database.sessions, "tests", "admin@example.com", "crm", [])
    (token,) = accounts.list_tokens(database.sessions)
    with database.sessions.begin() as session:
        model = store(session, small_model(definitions), "tests").fingerprint
        experiment = an_experiment(session, lead.id)
    links = build_links(settings)
    confirm = confirm_url(links, confirming.id, confirming.email_confirmation_id)
    confirm_token = confirm.rsplit("/", 1)[1]
    app = build_app(intake, settings)
    with TestClient(app) as client:
        assert client.get("/openapi.json").json() == DOCUMENT  # the document tested is served
    # As when the server stops: the live feed (GET /console/feed, minutes long) answers its
    # first line and ends.
    app.state.console.closing.set()
    yield Contract(
        app,
        unsubscribe_token=links.unsubscribe_url(lead.id).rsplit("/", 1)[1],
        handoff_id=handoff.id,
        handoff_token=links.handoff_url(handoff.id, "alice").split("token=")[1],
        sessions=database.sessions,
        admin_id=admin.id,
        lead_id=handed_off.id,
        user_id=viewer.id,
        token_id=token["id"],
        model=model,
        experiment=experiment,
        confirm_token=confirm_token,
    )
    database.engine.dispose()
    for label, statuses in ACCEPTED.items():
        done = range(200, 400) if " /console/" in label else range(200, 300)  # a form redirects
        valid = {s for s in statuses if s in done or s == REFUSED_WHEN_VALID.get(label)}
        assert valid, f"{label}: no valid request got through ({sorted(statuses)})"


def small_model(definitions) -> Training:
    """A predictive model of a small synthetic history, for the Models pages."""
    history = [HistoryLead.model_validate(lead) for lead in synthetic.generate(1500, 1)]
    return train(history, definitions)


def an_experiment(session, lead_id: str) -> str:
    """A segment's holdout with one lead held out, for the Experiments pages."""
    at = datetime(2026, 11, 2, tzinfo=UTC)
    arms = [
        {"name": "holdout", "weight": 10.0, "holdout": True, "next": None, "path": ""},
        {"name": "nurtured", "weight": 90.0, "holdout": False, "next": None, "path": ""},
    ]
    session.add(ExperimentRecord(name="holdout:everyone", kind="holdout", sequence_id="month",
                                 step_id=None, segment="everyone", control="holdout",
                                 metric="sql", arms=arms, started_at=at))  # fmt: skip
    session.add(ExperimentAssignment(experiment="holdout:everyone", lead_id=lead_id,
                                     arm="holdout", holdout=True, assigned_at=at))  # fmt: skip
    return "holdout:everyone"


def made_valid(case: schemathesis.Case, contract: Contract) -> dict[str, Any]:
    """What only a provider or our own links can make, made for the cases schemathesis
    means to be valid: webhook signatures, and signed tokens (of a lead and a handoff we
    have). A negative case keeps what it generated: it must be refused. Returns extra
    arguments of the call (SendGrid signs the raw body: it is sent as signed)."""
    path = case.operation.path
    if path.startswith("/console/"):
        signed_in(case, contract)  # valid or not, a console request comes from a session
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return {}
    if path.startswith("/unsubscribe/"):
        case.path_parameters["token"] = contract.unsubscribe_token
    elif path.startswith("/confirm/"):
        case.path_parameters["token"] = contract.confirm_token
    elif path in ("/console/users/reset-password", "/console/tokens"):
        if isinstance(case.body, dict):
            case.body["email"] = "viewer@example.com" if "reset" in path else "admin@example.com"
    elif path == "/console/users/{user_id}/{action}":
        case.path_parameters["user_id"] = contract.user_id
    elif path == "/console/tokens/{token_id}/revoke":
        case.path_parameters["token_id"] = contract.token_id
    elif path == "/console/leads/{lead_id}":
        case.path_parameters["lead_id"] = contract.lead_id
    elif path.startswith("/console/models/{fingerprint}"):
        case.path_parameters["fingerprint"] = contract.model
    elif path == "/console/experiments/{name}":
        case.path_parameters["name"] = contract.experiment
    elif path.startswith("/console/sequences/"):
        case.path_parameters["sequence_id"] = "quick"
    elif path == "/forms/{name}" and isinstance(case.body, dict):
        form = FORMS.get(case.path_parameters["name"])
        email = next(name for name, target in form.fields.items() if target == "email")
        case.body[email] = "ada@example.com"
    elif path.startswith(("/handoffs/", "/console/handoffs/")):
        case.path_parameters["handoff_id"] = contract.handoff_id
        if "token" in (case.query or {}):
            case.query["token"] = contract.handoff_token
        elif isinstance(case.body, dict) and "token" in case.body:
            case.body["token"] = contract.handoff_token
    return signed(case, path)


def signed_in(case: schemathesis.Case, contract: Contract) -> None:
    """A new admin session for the console request (its cookie and CSRF header); the
    sign-in form gets its own CSRF cookie, and the field to match when meant valid."""
    with contract.sessions.begin() as session:
        secret, csrf = accounts.open_session(session, contract.admin_id)
    cookie = session_signer("contract-secret-key").sign(secret).decode()
    case.cookies = {**(case.cookies or {}), COOKIE: cookie, LOGIN_CSRF: "login-csrf"}
    case.headers = {**(case.headers or {}), "X-CSRF-Token": csrf}
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if case.operation.path == "/console/login" and positive and isinstance(case.body, dict):
        case.body["csrf"] = "login-csrf"


def signed(case: schemathesis.Case, path: str) -> dict[str, Any]:
    headers = case.headers or {}
    if SENDGRID_SIGNATURE in headers and SENDGRID_TIMESTAMP in headers:
        raw = json.dumps(case.body).encode()
        timestamp = str(int(time.time()))
        signature = SENDGRID_KEY.sign(timestamp.encode() + raw, ec.ECDSA(hashes.SHA256()))
        headers[SENDGRID_SIGNATURE] = base64.b64encode(signature).decode()
        headers[SENDGRID_TIMESTAMP] = timestamp
        return {"data": raw}
    if CRM_SIGNATURE in headers and CRM_TIMESTAMP in headers:
        raw = json.dumps(case.body).encode()
        timestamp = int(time.time())
        headers[CRM_SIGNATURE] = sign_crm(CRM_SECRET, timestamp, raw)
        headers[CRM_TIMESTAMP] = str(timestamp)
        return {"data": raw}
    if TWILIO_SIGNATURE in headers and isinstance(case.body, dict):
        form = {name: str(value) for name, value in case.body.items()}
        headers[TWILIO_SIGNATURE] = RequestValidator(TWILIO_TOKEN).compute_signature(
            PUBLIC_URL + path, form
        )
    return {}


@schema.parametrize()
def test_the_api_does_what_its_openapi_document_says(case, contract):
    # The document was loaded before the app existed: the requests (and the checks'
    # own, e.g. without credentials) go to the app, in-process.
    case.operation.app = case.operation.schema.app = contract.app
    excluded = [positive_data_acceptance] if case.operation.label in NOTATIONS else []
    response = case.call_and_validate(
        checks=ALL_CHECKS, excluded_checks=excluded, **made_valid(case, contract)
    )
    if case.meta is not None and case.meta.generation.mode.is_positive:
        ACCEPTED[case.operation.label].add(response.status_code)
