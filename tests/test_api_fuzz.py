"""A property-based fuzz of every endpoint: whatever arrives, the answer is never a 5xx.

Every operation of our own /openapi.json gets requests generated from its schemas (bodies
that fit, and bodies with one field dropped, retyped or added), with and without the
credentials it asks for. Hypothesis then goes where the document cannot: arbitrary JSON
(NaN, huge numbers, lone surrogates, deep nesting, bytes that are not UTF-8) for /leads
and /events, SendGrid event batches signed with a real P-256 key, Twilio forms signed
with the auth token, Inbound Parse forms with the right basic auth, unsubscribe tokens
signed with our key or forged, and bodies over the size limit. A test that sends valid
credentials also checks that some of its requests were accepted (2xx), so the fuzz reaches
the code behind authentication and validation, down to the database and Temporal.

Every 4xx is JSON with a `detail`, except the unsubscribe pages (HTML). The app runs
in-process on a real database (SQLite and PostgreSQL); Temporal is the dev server's
real client with no worker on the queue: a signal is accepted and waits.
An exception inside the app is raised into the test, with its traceback.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from twilio.request_validator import RequestValidator

from api.app import create_app
from api.provider_webhooks import SENDGRID_EVENTS, SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP
from models.db import Message
from models.definitions import RESPONSE_TYPES
from services.intake import Intake, LeadIn
from services.runtime import build_links

API_TOKEN = "test-token"  # NURTURE_API_TOKEN of the `settings` fixture
TWILIO_TOKEN = "fuzz-twilio-token"
INBOUND_SECRET = "fuzz-inbound-secret"
PUBLIC_URL = "https://nurture.example.com"
INBOUND_DOMAIN = "in.example.com"
BODY_LIMIT = 100_000
INBOUND_LIMIT = 20_000_000  # api.app.INBOUND_BODY_LIMIT
SMS_SID = "SM" + "f" * 32  # the provider ID of the seeded message

# Derandomized: the same 100 cases every run, so a CI run checks what was checked here
# (the reach assertions below cannot fail by bad luck). To search wider locally, set
# derandomize=False and raise max_examples.
FUZZ = settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- the stack under test ---------------------------------------------------------------------


@dataclass
class Stack:
    client: TestClient
    app: object
    lead_id: str
    message_id: str
    placeholders: dict[bytes, bytes]  # in generated bodies: replaced by real IDs and tokens
    sendgrid_key: ec.EllipticCurvePrivateKey

    def fill(self, raw: bytes) -> bytes:
        for placeholder, value in self.placeholders.items():
            raw = raw.replace(placeholder, value)
        return raw

    def fill_text(self, text: str) -> str:
        return self.fill(text.encode("utf-8", "surrogatepass")).decode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def stack(settings, database, fixture_definitions, dev_server_env, sendgrid_key) -> Iterator:
    public = sendgrid_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fuzz_settings = settings.model_copy(
        update={
            "sendgrid_webhook_public_key": base64.b64encode(public).decode(),
            "twilio_auth_token": SecretStr(TWILIO_TOKEN),
            "inbound_parse_secret": SecretStr(INBOUND_SECRET),
            "inbound_domain": INBOUND_DOMAIN,
            "public_url": PUBLIC_URL,
            "max_body_bytes": BODY_LIMIT,
        }
    )
    # settings.task_queue is unique to this test and no worker polls it.
    intake = Intake(
        fixture_definitions, database.sessions, dev_server_env.client, fuzz_settings.task_queue
    )
    lead, _ = intake.upsert_lead(LeadIn(email="ada@example.com", phone="+14155550123"))
    with database.sessions.begin() as session:
        message = Message(send_key="fuzz-seed", lead_id=lead.id, channel="sms", template="t",
                          recipient="+14155550123", body="hi", provider="twilio",
                          provider_message_id=SMS_SID, status="sent")  # fmt: skip
        session.add(message)
        session.flush()
        message_id = message.id
    links = build_links(fuzz_settings)

    def token(lead_id: str, channel: str) -> bytes:
        return links.unsubscribe_url(lead_id, channel).rsplit("/", 1)[1].encode()

    placeholders = {
        b"@@LEAD@@": lead.id.encode(),
        b"@@MESSAGE@@": message_id.encode(),
        b"@@SID@@": SMS_SID.encode(),
        b"@@REPLY_TO@@": links.reply_to(message_id).encode(),
        b"@@EMAIL_TOKEN@@": token(lead.id, "email"),
        b"@@SMS_TOKEN@@": token(lead.id, "sms"),
        b"@@UNKNOWN_LEAD_TOKEN@@": token("0" * 32, "email"),
        b"@@FAX_TOKEN@@": token(lead.id, "fax"),
    }
    # The fuzz sends bad credentials by the hundred: no lockout, or most answers are 429s
    # (tests/test_api_security.py tests the lockout).
    app = create_app(intake, fuzz_settings, relay=False, auth_failure_limit="100000/minute")
    with TestClient(app) as client:
        yield Stack(client, app, lead.id, message_id, placeholders, sendgrid_key)


def check(response: httpx.Response, html_pages: bool = False) -> None:
    """No 5xx; a 4xx is JSON with a `detail` (an unsubscribe or confirmation page may be HTML)."""
    request = response.request
    try:
        sent = request.content
    except httpx.RequestNotRead:
        sent = b"<streamed>"
    where = (
        f"\n{request.method} {request.url} -> {response.status_code}\n"
        f"request headers: {dict(request.headers)}\n"
        f"request body: {sent[:1500]!r}\nresponse: {response.text[:1500]}"
    )
    assert response.status_code < 500, where
    if 400 <= response.status_code < 500 and request.method != "HEAD":
        kind = response.headers.get("content-type", "")
        if html_pages and kind.startswith("text/html"):
            assert "<h1" in response.text, where
            return
        assert kind.startswith("application/json"), where
        body = response.json()
        assert isinstance(body, dict) and body.get("detail"), where


# --- strategies ---------------------------------------------------------------------------------

any_char = st.characters(exclude_categories=())  # surrogates included
WEIRD_STRINGS = [
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff x", "\u202e\u0301", "💥" * 40, "null", "None",
    "x" * 33, "x" * 101, "x" * 201, "x" * 321, "y" * 5000, "'; DROP TABLE leads; --",
    "{{ 7*7 }}", "%s%n%x", "\r\n\r\n", "é" * 120, "１２３", "٣", "0" * 4400, "-1", "1e309",
    "../../etc/passwd", "<script>alert(1)</script>",
]  # fmt: skip
texts = st.one_of(
    st.text(max_size=20),
    st.text(any_char, max_size=40),
    st.text(min_size=90, max_size=400),
    st.sampled_from(WEIRD_STRINGS),
)
form_texts = st.one_of(  # what a form can carry: no lone surrogates
    st.text(max_size=30), st.text(min_size=90, max_size=300),
    st.sampled_from([s for s in WEIRD_STRINGS if "\ud800" not in s and "\udfff" not in s]),
)  # fmt: skip
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.sampled_from([2**31, 2**63, -(2**63) - 1, 2**64, 10**4000]),
    st.floats(),  # NaN and ±Infinity: Python's json reads them
)
scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(texts, json_values, max_size=5)
emails = st.one_of(
    st.emails(),
    st.sampled_from([
        "ada@example.com", "ADA@Example.COM", "new@example.com", "x@exämple.com",
        "user@[127.0.0.1]", "a" * 64 + "@example.com", "a" * 65 + "@example.com",
        "b@" + "d" * 250 + ".com", "no-at-sign", "a@b", "@example.com", "a@@b.com",
        "\"quoted local\"@example.com", "ü@example.com", "a@example.com\x00",
    ]),
    texts,
)  # fmt: skip
phones = st.one_of(
    st.sampled_from([
        "+14155550123", "+1 (415) 555-0142", "+447911123456", "030 1234567", "+33612345678",
        "555-0100", "12345", "+", "+0", "call me", "+1" + "5" * 40, "+१४१५५५५०१४२", "",
    ]),
    texts,
)  # fmt: skip
datetimes = st.one_of(
    st.datetimes(
        timezones=st.none()
        | st.just(UTC)
        | st.builds(timezone, st.timedeltas(-timedelta(hours=23), timedelta(hours=23)))
    ).map(datetime.isoformat),
    st.sampled_from([
        "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "2026-02-30T00:00:00",
        "2026-01-01", "yesterday", "1e10", "", "2026-01-01T25:00:00Z",
    ]),
    numbers,
)  # fmt: skip


def with_extra(required: dict, optional: dict) -> st.SearchStrategy[dict]:
    """The fields we know, each maybe there, plus perhaps a few we do not."""
    known = st.fixed_dictionaries(required, optional=optional)
    extra = st.dictionaries(texts, json_values, min_size=1, max_size=2)
    return known | st.builds(lambda a, b: b | a, known, extra)


lead_bodies = with_extra(
    {"email": emails},
    {
        "country": st.sampled_from(["US", "de", "FR", "GB", "XX", "zz", "ß", "U"]) | texts,
        "phone": phones | json_values,
        "first_name": texts | json_values, "last_name": texts, "title": texts,
        "company": texts, "industry": texts, "source": texts,
        "company_size": numbers | texts,
        "timezone": st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "America",
                                     "Etc/GMT+14", "", "/etc/passwd", "UTC/"]) | texts,
        "attributes": json_objects | json_values,
        "sequence": st.sampled_from(["month", "exit_early", "nope"]) | texts | json_values,
    },
)  # fmt: skip
lead_ids = st.sampled_from(["@@LEAD@@", "0" * 32, "@@MESSAGE@@"]) | texts | json_values
event_types = st.sampled_from(sorted(RESPONSE_TYPES))
plausible_event_fields = {
    "event_id": st.text(min_size=1, max_size=30),
    "occurred_at": st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
    "data": json_objects,
    "message_id": st.just("@@MESSAGE@@"),
}
event_bodies = st.one_of(
    with_extra(
        {"type": event_types | texts},
        {
            "lead_id": lead_ids, "email": emails, "phone": phones, "event_id": texts | numbers,
            "occurred_at": datetimes, "message_id": lead_ids,
            "data": json_objects | json_values,
        },
    ),
    # plausible: a known type, for the lead we have or for an address
    st.fixed_dictionaries(
        {"type": event_types, "lead_id": st.just("@@LEAD@@")}, optional=plausible_event_fields
    ),
    st.fixed_dictionaries(
        {"type": event_types, "email": st.sampled_from(["ada@example.com"]) | st.emails()},
        optional=plausible_event_fields,
    ),
)  # fmt: skip


class Raw(bytes):
    """A body written by hand, shown short when Hypothesis reports it."""

    def __repr__(self) -> str:
        return f"Raw({bytes(self[:60])!r}{'...' if len(self) > 60 else ''}, {len(self)} bytes)"


TRICKY_RAW = [
    b"", b"null", b"[]", b"{}", b"[{}]", b'"a"', b"NaN", b"-Infinity", b"1" * 5000,
    b"[" * 100_000, b'{"a":' * 30_000, b"\xff\xfe\x00", b"\xed\xa0\x80", b'{"email": "\xff"}',
    b'{"email": "a@example.com", "email": 1}', b'{"type": "page.view", "lead_id": "\\u0000"}',
    b"[" + b"{}," * 1000 + b"{}]",  # a batch of 1,001
    b'{"type": "page.view", "email": "a@example.com", "data": {"n": 1' + b"0" * 5000 + b"}}",
]  # fmt: skip
TRICKY_RAW = [Raw(body) for body in TRICKY_RAW]
CONTENT_TYPES = [
    "application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/merge-patch+json", "application/json; charset=bogus", None,
]  # fmt: skip


def dump(value: object, ascii_only: bool) -> bytes:
    text = json.dumps(value, ensure_ascii=ascii_only)  # NaN and Infinity as Python writes them
    return text.encode("utf-8", "surrogatepass")


def json_bodies(shaped: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    structured = shaped | st.lists(shaped, max_size=3) | json_values
    return st.one_of(
        st.builds(dump, structured, st.booleans()),
        st.sampled_from(TRICKY_RAW),
        st.binary(max_size=100),
    )


bearer_headers = st.one_of(
    st.just({"Authorization": f"Bearer {API_TOKEN}"}),
    st.sampled_from([
        {}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer "},
        {"Authorization": API_TOKEN}, {"Authorization": "Basic dGVzdDp0ZXN0"},
        {"Authorization": f"bearer {API_TOKEN}"}, {"Authorization": f"Bearer {API_TOKEN}x"},
        {"Authorization": b"Bearer \xff\xfe"}, {"Authorization": "Bearer café".encode()},
    ]),
)  # fmt: skip


def headers_with(content_type: str | None, extra: dict) -> dict:
    return extra | ({"Content-Type": content_type} if content_type else {})


# --- every operation of the OpenAPI document --------------------------------------------------


OPERATIONS = {  # at least these; whatever else the document lists is fuzzed too
    "GET /health", "POST /leads", "POST /events", "GET /unsubscribe/{token}",
    "POST /unsubscribe/{token}", "POST /webhooks/sendgrid/events",
    "POST /webhooks/sendgrid/inbound", "POST /webhooks/twilio/sms", "POST /webhooks/twilio/status",
}  # fmt: skip


def from_json_schema(schema: dict, components: dict) -> st.SearchStrategy:
    """Values that fit a schema of our OpenAPI document (the JSON Schema FastAPI writes)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return st.deferred(lambda: from_json_schema(components[name], components))
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema["oneOf"]
        return st.one_of([from_json_schema(option, components) for option in options])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_json_schema(schema | {"type": k}, components) for k in kind])
    if kind is None:
        return json_values
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False)
    if kind == "string":
        if schema.get("format") == "email":
            return st.emails()
        if schema.get("format") == "date-time":
            return st.datetimes(timezones=st.none() | st.just(UTC)).map(datetime.isoformat)
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength"))
    if kind == "array":
        items = from_json_schema(schema.get("items", {}), components)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=4)
    if kind == "object":
        properties = {
            name: from_json_schema(sub, components)
            for name, sub in schema.get("properties", {}).items()
        }
        required = set(schema.get("required", []))
        known = st.fixed_dictionaries(
            {k: v for k, v in properties.items() if k in required},
            optional={k: v for k, v in properties.items() if k not in required},
        )
        extra = schema.get("additionalProperties", True)
        if extra is False:
            return known
        values = json_values if extra is True else from_json_schema(extra, components)
        more = st.dictionaries(st.text(max_size=10), values, max_size=3)
        return st.builds(lambda fixed, others: others | fixed, known, more)
    raise AssertionError(f"the fuzz cannot generate {schema}")


def misfit(value: object) -> st.SearchStrategy:
    """A value that (probably) does not fit: one field dropped, retyped or added, deep down."""
    if isinstance(value, dict) and value:
        key = st.sampled_from(sorted(value))
        return st.one_of(
            key.map(lambda k: {n: v for n, v in value.items() if n != k}),
            st.tuples(key, json_values).map(lambda kv: value | {kv[0]: kv[1]}),
            key.flatmap(lambda k: misfit(value[k]).map(lambda v: value | {k: v})),
            st.tuples(texts, json_values).map(lambda kv: value | {kv[0]: kv[1]}),
        )
    if isinstance(value, list) and value:
        index = st.integers(0, len(value) - 1)
        return index.flatmap(
            lambda i: misfit(value[i]).map(lambda v: value[:i] + [v] + value[i + 1 :])
        )
    return json_values


def openapi_requests(document: dict, negative: bool) -> st.SearchStrategy[tuple]:
    """(operation, method, path, body, headers) for every operation in the document."""
    components = document.get("components", {}).get("schemas", {})
    strategies = []
    for template, methods in document["paths"].items():
        for method, operation in methods.items():
            label = f"{method.upper()} {template}"
            params = {
                p["name"]: from_json_schema(p.get("schema", {}), components)
                for p in operation.get("parameters", [])
                if p["in"] == "path"
            }
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                body = from_json_schema(content["application/json"]["schema"], components)
                body = body.flatmap(misfit) if negative else body
                body = st.builds(dump, body, st.booleans())
            else:  # a webhook reads its own body: no schema to fit
                body = st.none() | st.binary(max_size=50)
            schemes = {name for s in operation.get("security", []) for name in s}
            auth = (
                bearer_headers if "HTTPBearer" in schemes
                else inbound_auth if "HTTPBasic" in schemes
                else st.just({}) | bearer_headers
            )  # fmt: skip
            strategies.append(
                st.tuples(
                    st.just(label), st.just(method.upper()), st.fixed_dictionaries(params),
                    body, auth,
                ).map(
                    lambda t, template=template: (
                        t[0], t[1],
                        template.format(**{k: quote(str(v), safe="") for k, v in t[2].items()}),
                        t[3], t[4],
                    )
                )
            )  # fmt: skip
    return st.one_of(strategies)


@pytest.mark.parametrize("negative", [False, True], ids=["fitting", "misfitting"])
def test_every_openapi_operation_never_answers_5xx(stack, negative):
    """Every path and method of /openapi.json, with bodies and path parameters generated from
    its schemas (`fitting`), or with one field in them dropped, retyped or added
    (`misfitting`); with and without the credentials each operation asks for."""
    document = stack.client.get("/openapi.json").json()
    documented = {f"{m.upper()} {path}" for path, ops in document["paths"].items() for m in ops}
    assert documented >= OPERATIONS, documented
    seen: Counter = Counter()

    # Enough that every operation is drawn (a few dozen, the console's included).
    @settings(FUZZ, max_examples=max(200, 25 * len(documented)))
    @given(request=openapi_requests(document, negative))
    def fuzz(request):
        label, method, path, body, headers = request
        if body is not None:
            headers = headers | {"Content-Type": "application/json"}
        response = stack.client.request(method, path, content=body, headers=headers)
        # The unsubscribe and console pages answer their refusals as pages.
        check(response, html_pages=path.startswith(("/unsubscribe/", "/confirm/", "/console/")))
        seen[label, response.status_code] += 1

    fuzz()
    assert {label for label, _status in seen} == documented, seen  # every one got requests
    if not negative:  # the schema's leads got through to the database and Temporal
        assert seen["POST /leads", 201] > 0, seen


# --- our own API: /leads, /events, /health ----------------------------------------------------


def fuzz_json_endpoint(stack: Stack, path: str, shaped: st.SearchStrategy) -> Counter:
    statuses: Counter = Counter()

    @FUZZ
    @given(
        body=json_bodies(shaped),
        content_type=st.sampled_from(CONTENT_TYPES[:3]) | st.sampled_from(CONTENT_TYPES),
        auth=bearer_headers,
    )
    def fuzz(body, content_type, auth):
        response = stack.client.post(
            path, content=stack.fill(body), headers=headers_with(content_type, auth)
        )
        check(response)
        statuses[response.status_code] += 1

    fuzz()
    return statuses


def test_leads_never_answer_5xx(stack):
    statuses = fuzz_json_endpoint(stack, "/leads", lead_bodies)
    assert statuses[201] > 0, statuses  # some leads got through to the database and Temporal


def test_events_never_answer_5xx(stack):
    statuses = fuzz_json_endpoint(stack, "/events", event_bodies)
    assert statuses[202] > 0, statuses


def test_health_and_unknown_routes(stack):
    assert stack.client.get("/health").json() == {"status": "ok"}

    @FUZZ
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
        path=st.sampled_from(["/health", "/leads", "/events", "/webhooks/twilio/sms", "/"])
        | st.text(max_size=40).map(lambda p: "/" + quote(p, safe="/")),
        query=st.text(max_size=30).map(lambda q: quote(q, safe="=&")),
    )
    def fuzz(method, path, query):
        response = stack.client.request(method, f"{path}?{query}")
        # The unsubscribe and console pages answer their refusals as pages.
        check(response, html_pages=path.startswith(("/unsubscribe/", "/confirm/", "/console/")))

    fuzz()


@pytest.mark.parametrize("method, path", [
    ("GET", "/handoffs/%00?token=x"), ("POST", "/handoffs/%00/answer"),
    ("POST", "/handoffs/a%00b/answer"), ("GET", "/unsubscribe/%00"),
])  # fmt: skip
def test_nul_in_a_path_parameter_is_refused_before_the_database(stack, method, path):
    """PostgreSQL refuses a NUL in text with an error of its own: found by the fuzzer
    above once (a 500); pinned here for every path parameter."""
    body = b'{"answer": "accept"}' if method == "POST" else None
    headers = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
    response = stack.client.request(method, path, content=body, headers=headers)
    assert response.status_code in (403, 404, 422), (response.status_code, response.text)
    if path.startswith("/handoffs/"):
        assert response.status_code == 422, response.text


# --- SendGrid Event Webhook -------------------------------------------------------------------

sendgrid_events = with_extra(
    {},
    {
        "event": st.sampled_from([*SENDGRID_EVENTS, "group_resubscribe"]) | json_values,
        "email": emails | json_values,
        "timestamp": st.integers(0, 2**40) | numbers | texts | json_values,
        "sg_event_id": texts | json_values,
        "sg_message_id": texts,
        "lead_id": lead_ids,
        "message_id": lead_ids,
        **{name: json_values for name in
           ("url", "reason", "type", "status", "category", "step_id", "sequence_id")},
    },
)  # fmt: skip
sendgrid_bodies = st.one_of(
    st.builds(dump, st.lists(sendgrid_events, max_size=5), st.booleans()),
    st.builds(dump, json_values, st.booleans()),
    st.sampled_from(TRICKY_RAW),
    st.binary(max_size=100),
)


def sendgrid_signed(key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: str) -> dict:
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        SENDGRID_SIGNATURE: base64.b64encode(signature).decode(),
        SENDGRID_TIMESTAMP: timestamp,
        "Content-Type": "application/json",
    }


def test_signed_sendgrid_events_never_answer_5xx(stack):
    statuses: Counter = Counter()

    @FUZZ
    @given(body=sendgrid_bodies)
    def fuzz(body):
        body = stack.fill(body)
        headers = sendgrid_signed(stack.sendgrid_key, body, str(int(time.time())))
        response = stack.client.post("/webhooks/sendgrid/events", content=body, headers=headers)
        check(response)
        statuses[response.status_code] += 1

    fuzz()
    assert statuses[200] > 0, statuses  # past the signature, into the database


def test_forged_sendgrid_events_never_answer_5xx(stack):
    now = int(time.time())

    @FUZZ
    @given(
        body=sendgrid_bodies,
        signature=st.none() | st.sampled_from(["", "not base64!", "AAAA", "=" * 8]) | st.text(),
        timestamp=st.none()
        | st.sampled_from([str(now), str(now - 3600), "1e9", "-0", "9" * 5000, "١٢٣", " 1"])
        | st.integers().map(str)
        | st.text(),
        sign_with_our_key=st.booleans(),
    )
    def fuzz(body, signature, timestamp, sign_with_our_key):
        headers: dict = {"Content-Type": "application/json"}
        if sign_with_our_key and timestamp is not None:  # signed, but e.g. stale or malformed
            headers = sendgrid_signed(stack.sendgrid_key, body, timestamp)
        elif signature is not None:
            headers[SENDGRID_SIGNATURE] = signature
        if timestamp is not None:
            headers[SENDGRID_TIMESTAMP] = timestamp
        headers = {k: v.encode("utf-8", "surrogatepass") for k, v in headers.items()}
        response = stack.client.post("/webhooks/sendgrid/events", content=body, headers=headers)
        check(response)

    fuzz()


# --- SendGrid Inbound Parse -------------------------------------------------------------------

addresses = st.one_of(
    emails.filter(lambda s: "\ud800" not in s and "\udfff" not in s),
    st.sampled_from([
        "Ada <ada@example.com>", "@@REPLY_TO@@", "Ada <@@REPLY_TO@@>", "reply+junk@in.example.com",
        "reply+@in.example.com", "reply+@@REPLY_TO@@", "\"a, b\" <x@y.z>", "undisclosed:;",
        "=?utf-8?q?=E2=82=AC?= <new@example.com>", "a@b.c, <@@REPLY_TO@@>", "<>", "@", "(((",
        "ada@example.com (comment", "\"unterminated <a@b.c>",
    ]),
    form_texts,
)  # fmt: skip
envelopes = st.one_of(
    st.builds(lambda to, other: json.dumps({"to": to, "from": other}),
              st.lists(addresses, max_size=3) | json_values, json_values),
    st.builds(json.dumps, json_values),
    st.sampled_from(['{"to": 5}', '{"to": true}', '{"to": [1, null]}', "[[[", "[" * 5000]),
    form_texts,
)  # fmt: skip
mail_headers = st.one_of(
    st.builds(lambda mid, extra: f"Message-ID: {mid}\r\nFrom: a@b.c\r\n{extra}",
              form_texts, form_texts),
    form_texts,
)  # fmt: skip
inbound_forms = st.builds(
    lambda known, extra: extra | known,
    st.fixed_dictionaries(
        {},
        optional={"from": addresses, "to": addresses, "envelope": envelopes,
                  "headers": mail_headers, "subject": form_texts, "text": form_texts,
                  "html": form_texts, "charsets": form_texts, "SPF": form_texts},
    ),
    st.dictionaries(form_texts, form_texts, max_size=2),
)  # fmt: skip


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


inbound_auth = st.one_of(
    st.just(basic("sendgrid", INBOUND_SECRET)),
    st.sampled_from([
        {}, basic("sendgrid", "wrong"), basic("", ""), {"Authorization": "Basic !!!"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()},
        {"Authorization": f"Bearer {INBOUND_SECRET}"},
    ]),
)  # fmt: skip


def test_inbound_parse_never_answers_5xx(stack):
    statuses: Counter = Counter()

    @FUZZ
    @given(
        form=inbound_forms,
        auth=inbound_auth,
        encoding=st.sampled_from(["multipart", "multipart+file", "urlencoded", "raw"]),
        raw=st.binary(max_size=200),
    )
    def fuzz(form, auth, encoding, raw):
        form = {k: stack.fill_text(v) for k, v in form.items()}
        path = "/webhooks/sendgrid/inbound"
        if encoding == "raw":  # a broken multipart body
            headers = auth | {"Content-Type": "multipart/form-data; boundary=xYzZY"}
            response = stack.client.post(path, content=raw, headers=headers)
        elif encoding == "urlencoded":
            response = stack.client.post(path, data=form, headers=auth)
        else:
            files = {"attachment1": ("a.txt", raw, "text/plain")}
            if encoding == "multipart":  # multipart without a file: httpx needs one, so a field
                files = {"attachments": (None, b"0")}
            response = stack.client.post(path, data=form, files=files, headers=auth)
        check(response)
        statuses[response.status_code] += 1

    fuzz()
    assert statuses[200] > 0, statuses


# --- Twilio -----------------------------------------------------------------------------------

sids = st.sampled_from(["@@SID@@", "SM" + "a" * 32]) | form_texts


def no_surrogates(text: str) -> bool:
    """Twilio signs UTF-8: a lone surrogate cannot even be signed (by the test)."""
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


good_phones = st.sampled_from(["+14155550123", "+14155550199", "+447911123456", "+33612345678"])
twilio_fields = {
    "MessageSid": sids, "SmsMessageSid": sids, "AccountSid": form_texts,
    "From": good_phones | phones.filter(no_surrogates),
    "To": good_phones | phones.filter(no_surrogates),
    "Body": st.sampled_from(["STOP", "start", "UNSUBSCRIBE", "help", "Yes"]) | form_texts,
    "MessageStatus": st.sampled_from(["delivered", "undelivered", "failed", "sent"])
    | form_texts,
    "ErrorCode": st.sampled_from(["30003", ""]) | form_texts,
}  # fmt: skip
twilio_forms = st.builds(
    lambda known, extra: extra | known,
    st.one_of(
        st.fixed_dictionaries({}, optional=twilio_fields),
        st.fixed_dictionaries(  # what Twilio sends: the IDs and numbers are there
            {k: twilio_fields[k] for k in ("MessageSid", "From", "To")},
            optional={
                k: v for k, v in twilio_fields.items() if k not in ("MessageSid", "From", "To")
            },
        ),
        st.fixed_dictionaries(  # what a status callback carries
            {k: twilio_fields[k] for k in ("MessageSid", "MessageStatus", "To")},
            optional={"ErrorCode": twilio_fields["ErrorCode"]},
        ),
    ),
    st.dictionaries(form_texts, form_texts, max_size=2),
)
queries = st.sampled_from(["", "?a=1", "?bodySHA256=abc", "?x=%FF&y=%00"])


def test_signed_twilio_webhooks_never_answer_5xx(stack):
    statuses: Counter = Counter()
    validator = RequestValidator(TWILIO_TOKEN)

    @FUZZ
    @given(path=st.sampled_from(["/webhooks/twilio/sms", "/webhooks/twilio/status"]),
           form=twilio_forms, query=queries)  # fmt: skip
    # What Twilio really sends is always among the cases, so both paths are reached.
    @example(path="/webhooks/twilio/sms", query="",
             form={"MessageSid": "SM1", "From": "+14155550123", "To": "+14155550000",
                   "Body": "STOP"})  # fmt: skip
    @example(
        path="/webhooks/twilio/status",
        query="",
        form={"MessageSid": "SM1", "MessageStatus": "delivered", "To": "+14155550123"},
    )
    def fuzz(path, form, query):
        form = {k: stack.fill_text(v) for k, v in form.items()}
        signature = validator.compute_signature(PUBLIC_URL + path + query, form)
        response = stack.client.post(
            path + query, data=form, headers={"X-Twilio-Signature": signature}
        )
        check(response)
        statuses[path, response.status_code] += 1
        if response.status_code == 200 and path.endswith("/sms"):
            assert response.headers["content-type"].startswith("application/xml")

    fuzz()
    assert statuses["/webhooks/twilio/sms", 200] > 0, statuses
    assert statuses["/webhooks/twilio/status", 200] > 0, statuses


def test_forged_twilio_webhooks_never_answer_5xx(stack):
    @FUZZ
    @given(
        path=st.sampled_from(["/webhooks/twilio/sms", "/webhooks/twilio/status"]),
        form=twilio_forms,
        signature=st.none() | st.sampled_from(["", "AAAA", "x" * 500]) | st.text(),
        raw=st.none() | st.binary(max_size=200),
        content_type=st.sampled_from(CONTENT_TYPES),
    )
    def fuzz(path, form, signature, raw, content_type):
        headers = {} if signature is None else {"X-Twilio-Signature": signature}
        headers = {k: v.encode("utf-8", "surrogatepass") for k, v in headers.items()}
        if raw is None:
            response = stack.client.post(path, data=form, headers=headers)
        else:
            response = stack.client.post(
                path, content=raw, headers=headers_with(content_type, headers)
            )
        check(response)

    fuzz()


# --- unsubscribe links ------------------------------------------------------------------------

tokens = st.one_of(
    st.sampled_from(["@@EMAIL_TOKEN@@", "@@SMS_TOKEN@@", "@@UNKNOWN_LEAD_TOKEN@@",
                     "@@FAX_TOKEN@@"]),
    st.text(any_char, max_size=200),
    st.sampled_from(WEIRD_STRINGS),
)  # fmt: skip
tampering = st.none() | st.tuples(st.integers(0, 200), st.sampled_from("aZ0-_.~"))


def test_unsubscribe_links_never_answer_5xx(stack):
    statuses: Counter = Counter()

    @FUZZ
    @given(
        token=tokens,
        tamper=tampering,  # one character of the token changed
        method=st.sampled_from(["GET", "POST"]),
        body=st.binary(max_size=50),
    )
    def fuzz(token, tamper, method, body):
        token = stack.fill_text(token)
        if tamper and token:
            at = tamper[0] % len(token)
            token = token[:at] + tamper[1] + token[at + 1 :]
        path = "/unsubscribe/" + quote(token.encode("utf-8", "surrogatepass"), safe="")
        response = stack.client.request(method, path, content=body or None)
        check(response, html_pages=True)
        statuses[method, response.status_code] += 1

    fuzz()
    assert statuses["POST", 200] > 0 and statuses["GET", 200] > 0, statuses


# --- bodies over the limit --------------------------------------------------------------------

POST_PATHS = [
    "/leads", "/events", "/webhooks/sendgrid/events", "/webhooks/sendgrid/inbound",
    "/webhooks/twilio/sms", "/webhooks/twilio/status", "/unsubscribe/@@EMAIL_TOKEN@@",
]  # fmt: skip


def auth_for(path: str) -> dict:
    if path.startswith("/webhooks/sendgrid/inbound"):
        return basic("sendgrid", INBOUND_SECRET)
    return {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.mark.parametrize("path", POST_PATHS)
def test_oversized_bodies_are_413_not_5xx(stack, path):
    path = stack.fill_text(path)
    limit = INBOUND_LIMIT if path.endswith("/inbound") else BODY_LIMIT
    declared = stack.client.post(
        path, content=b"[" * (limit + 1), headers=auth_for(path) | {"Content-Type": "text/plain"}
    )
    check(declared)
    assert declared.status_code == 413, declared.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        for _ in range(limit // 50_000 + 1):
            yield b"[" * 50_001

    streamed = stack.client.post(
        path, content=chunks(), headers=auth_for(path) | {"Content-Type": "application/json"}
    )
    # Not always a 413 (/leads and /events: FastAPI answers 400 for a body it could not
    # read; a webhook may refuse before reading), but never a 5xx.
    check(streamed, html_pages=True)
