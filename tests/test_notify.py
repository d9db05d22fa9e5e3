"""Handoff notifications: rendering for every channel, webhook signing, and posting."""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import pickle
import re
import shutil
import socket
import subprocess
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import sales.outbound_webhooks as webhooks
from sales.notify import (
    EVENTS,
    KINDS,
    HandoffNotice,
    TimelineItem,
    crm_payload,
    headline,
    render_email,
    render_sms,
    slack_payload,
    sms_segments,
)
from sales.outbound_webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookFailed,
    encode,
    post_json,
    redact_url,
    sign,
    verify,
)
from testkit.webhook_sink import WebhookSink

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
T0 = datetime(2024, 6, 4, 14, 0, tzinfo=UTC)

MAYA = {
    "id": "maya", "name": "Maya Chen", "email": "maya.chen@example.com", "phone": "+14155550101",
    "webhook_url": "https://hooks.example.com/services/T1/B1/SECRET",
}  # fmt: skip
OMAR = {
    "id": "omar", "name": "Omar Haddad", "email": "omar.haddad@example.com",
    "phone": "+14155550102", "webhook_url": "https://crm.example.com/hook?token=CRMSECRET",
}  # fmt: skip
LEAD = {
    "id": "lead-1", "email": "ada@acme.example", "first_name": "Ada", "last_name": "Lovelace",
    "phone": "+442071234567", "title": "VP Engineering", "company": "Acme", "company_size": 250,
    "industry": "software", "country": "GB", "segment": "saas_trial",
    "attributes": {"plan": "pro", "seats": 40},
}  # fmt: skip
SCORE = {"total": 92.0, "fit": 40.0, "engagement": 52.0, "grade": "A", "stage": "sql",
         "model": "default@3"}  # fmt: skip
REASONS = ["pricing_page +10.5 (2 responses)", "BANT holds: budget, authority, need",
           "demo_request +20"]  # fmt: skip
TIMELINE = [
    TimelineItem(T0 - timedelta(minutes=2), "page.view", "url=/pricing"),
    TimelineItem(T0 - timedelta(minutes=9), "email.click", "step=trial_demo_offer"),
    TimelineItem(T0 - timedelta(hours=26), "form.submit", "form=demo_request"),
]
LINKS = {
    "page": "https://nurture.example.com/handoffs/h-123?t=PAGETOKEN",
    "accept": "https://nurture.example.com/handoffs/h-123/accept?t=ACCEPTTOKEN&x=1",
    "reject": "https://nurture.example.com/handoffs/h-123/reject?t=REJECTTOKEN",
    "disqualify": "https://nurture.example.com/handoffs/h-123/disqualify?t=DQTOKEN",
}
ACTIONABLE = ("new", "reminder", "reassigned_to")


def make_notice(kind: str = "new", **changes: Any) -> HandoffNotice:
    fields: dict[str, Any] = dict(
        handoff_id="h-123", kind=kind, rep=MAYA, lead=LEAD, score=SCORE, reasons=REASONS,
        timeline=TIMELINE, links=LINKS, due_at=T0 + timedelta(minutes=15), created_at=T0,
    )  # fmt: skip
    if kind == "reassigned_to":  # to Omar, from Maya
        fields |= {"rep": OMAR, "previous_rep": MAYA}
    if kind == "reassigned_away":  # to Maya: the lead is now with Omar
        fields |= {"rep": MAYA, "previous_rep": OMAR}
    if kind == "reminder":
        fields["created_at"] = T0 + timedelta(minutes=10)
    if kind == "answered":
        fields["answer"] = "accepted"
    return HandoffNotice(**(fields | changes))


# --- email ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_email_of_every_kind_carries_the_lead_score_reasons_and_timeline(kind):
    notice = make_notice(kind)
    subject, body_html, text = render_email(notice, TEMPLATES)
    shown = html.unescape(body_html)

    assert subject == headline(notice)
    assert "\n" not in subject
    for part in (shown, text):
        for needle in ("Ada Lovelace", "Acme", "VP Engineering", "ada@acme.example", "92",
                       "Grade A" if part is shown else "grade A", *REASONS,
                       "page.view", "url=/pricing", "email.click", "form=demo_request",
                       LINKS["page"], "h-123"):  # fmt: skip
            assert needle in part, (kind, needle)
        if kind in ACTIONABLE:
            assert LINKS["accept"] in part and LINKS["reject"] in part
        else:  # the lead moved on or was answered: nothing left to accept
            assert LINKS["accept"] not in part and LINKS["reject"] not in part
    # Addressed to the recipient: the previous rep hears that the lead moved away.
    greeting = (
        "Hi Maya," if kind in ("new", "reminder", "reassigned_away", "answered") else "Hi Omar,"
    )
    assert greeting in text and greeting in shown
    # The newest activity comes first.
    assert text.index("url=/pricing") < text.index("step=trial_demo_offer")


def test_each_kind_has_its_own_subject():
    subjects = {kind: render_email(make_notice(kind), TEMPLATES)[0] for kind in KINDS}
    assert subjects == {
        "new": "Hot lead: Ada Lovelace (Acme, 92 A) — answer within 15 min",
        "reminder": "Reminder: Ada Lovelace (Acme, 92 A) is waiting — answer within 5 min",
        "reassigned_to": "Reassigned to you: Ada Lovelace (Acme, 92 A) from Maya Chen "
        "— answer within 15 min",
        "reassigned_away": "Reassigned: Ada Lovelace (Acme, 92 A) is now with Omar Haddad",
        "answered": "Accepted: Ada Lovelace (Acme, 92 A) by Maya Chen",
    }


def test_deadlines_read_in_the_recipients_time_zone():
    far = make_notice(
        rep=MAYA | {"timezone": "Europe/Berlin"}, due_at=T0 + timedelta(hours=19, minutes=15)
    )
    subject, body_html, text = render_email(far, TEMPLATES)
    assert subject.endswith("— answer by Wed 5 Jun 11:15 CEST")
    assert "Answer by Wed 5 Jun 11:15 CEST." in text

    overdue = make_notice("reminder", created_at=T0 + timedelta(minutes=16))
    subject, body_html, text = render_email(overdue, TEMPLATES)
    assert subject.endswith("is waiting — overdue since 14:15 UTC")
    assert "OVERDUE" in text and "Overdue since 14:15 UTC." in text

    no_sla = make_notice(due_at=None)
    assert render_email(no_sla, TEMPLATES)[0] == "Hot lead: Ada Lovelace (Acme, 92 A)"


def test_html_escapes_hostile_profile_fields():
    hostile = LEAD | {
        "first_name": "<script>alert(1)</script>", "last_name": "O'Brien",
        "company": 'Acme"><img src=x onerror=alert(2)>', "title": "<b>CEO</b>",
        "attributes": {"note": "<iframe src=//evil>"},
    }  # fmt: skip
    reasons = ["<a href='javascript:alert(3)'>click</a>"]
    timeline = [TimelineItem(T0, "page.view", "url=/<svg onload=alert(4)>")]
    notice = make_notice(lead=hostile, reasons=reasons, timeline=timeline)
    _subject, body_html, text = render_email(notice, TEMPLATES)

    for raw in ("<script>", "<img", "<b>CEO", "<iframe", "<a href='javascript", "<svg"):
        assert raw not in body_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body_html
    assert "Acme&#34;&gt;&lt;img" in body_html or "Acme&quot;&gt;&lt;img" in body_html
    assert "<script>alert(1)</script> O'Brien" in text  # plain text shows it as typed


def test_email_renders_with_a_sparse_profile():
    """Strict templates: missing optional fields are defaults, never errors."""
    notice = make_notice(
        lead={"id": "lead-2", "email": "x@corp.example"}, score={"total": 71.25},
        reasons=[], timeline=[], links={}, due_at=None,
    )  # fmt: skip
    subject, body_html, text = render_email(notice, TEMPLATES)
    assert subject == "Hot lead: x@corp.example (71.2)"
    assert "x@corp.example" in text and "Accept:" not in text and ">Accept<" not in body_html
    assert "WHY NOW" not in text and "Why now" not in body_html


def test_notice_validates_its_kind():
    with pytest.raises(ValueError, match="unknown notice kind"):
        make_notice("escalated")
    with pytest.raises(ValueError, match="previous_rep"):
        make_notice("reassigned_to", previous_rep=None)
    with pytest.raises(ValueError, match="answer"):
        make_notice("answered", answer=None)


# --- SMS --------------------------------------------------------------------------------


def test_sms_segments():
    assert sms_segments("a" * 160) == 1
    assert sms_segments("a" * 161) == 2
    assert sms_segments("a" * 306) == 2 and sms_segments("a" * 307) == 3
    assert sms_segments("€" * 80) == 1 and sms_segments("€" * 81) == 2  # two septets each
    assert sms_segments("ł" * 70) == 1 and sms_segments("ł" * 71) == 2  # UCS-2
    assert sms_segments("ł" * 134) == 2 and sms_segments("ł" * 135) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_sms_is_short_and_says_who_how_hot_and_where_to_answer(kind):
    body = render_sms(make_notice(kind))
    assert sms_segments(body) <= 2
    assert "Ada Lovelace" in body and "92 A" in body and "Acme" in body
    if kind in ACTIONABLE:
        assert LINKS["page"] in body
    if kind in ("new", "reassigned_to"):
        assert REASONS[0] in body
    if kind == "reassigned_away":
        assert "Omar Haddad" in body and LINKS["page"] not in body


def test_sms_new_reads_well():
    assert render_sms(make_notice()) == (
        "New lead: Ada Lovelace (VP Engineering, Acme) 92 A. Top: pricing_page +10.5 "
        f"(2 responses). Answer within 15 min: {LINKS['page']}"
    )


def test_long_or_non_gsm_data_still_fits_two_segments_with_the_link_intact():
    long_link = "https://nurture.example.com/handoffs/h-123?t=" + "T" * 120
    lead = LEAD | {"first_name": "Bartholomew-Alexander " * 3, "title": "Senior " * 15,
                   "company": "International Consolidated Holdings " * 3}  # fmt: skip
    body = render_sms(make_notice(lead=lead, reasons=["x" * 300], links={"page": long_link}))
    assert sms_segments(body) <= 2 and long_link in body

    unicode = LEAD | {"first_name": "Łukasz", "last_name": "Żółćński", "company": "Škoda Digital"}
    body = render_sms(make_notice(lead=unicode))
    assert sms_segments(body) <= 2 and LINKS["page"] in body and "Łukasz" in body


# --- Slack ------------------------------------------------------------------------------


def check_block_kit(payload: dict) -> None:
    """The limits Slack enforces on an incoming-webhook message (Block Kit reference)."""
    json.dumps(payload)
    assert isinstance(payload["text"], str) and payload["text"].strip()
    blocks = payload["blocks"]
    assert 0 < len(blocks) <= 50
    action_ids = []
    for block in blocks:
        assert block["type"] in ("header", "section", "context", "actions", "divider")
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text" and 0 < len(block["text"]["text"]) <= 150
        elif block["type"] == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert block["text"]["type"] == "mrkdwn" and 0 < len(block["text"]["text"]) <= 3000
            for item in block.get("fields", []):
                assert item["type"] == "mrkdwn" and 0 < len(item["text"]) <= 2000
            assert len(block.get("fields", [])) <= 10
        elif block["type"] == "context":
            assert 0 < len(block["elements"]) <= 10
            assert all(e["type"] in ("mrkdwn", "plain_text", "image") for e in block["elements"])
        elif block["type"] == "actions":
            assert 0 < len(block["elements"]) <= 25 and len(block["block_id"]) <= 255
            for button in block["elements"]:
                assert button["type"] == "button"
                assert button["text"]["type"] == "plain_text" and len(button["text"]["text"]) <= 75
                assert button["url"].startswith("https://") and len(button["url"]) <= 3000
                assert button.get("style", "primary") in ("primary", "danger")
                action_ids.append(button["action_id"])
    assert len(action_ids) == len(set(action_ids))


def buttons(payload: dict) -> dict[str, dict]:
    return {
        b["text"]["text"]: b
        for block in payload["blocks"]
        if block["type"] == "actions"
        for b in block["elements"]
    }


@pytest.mark.parametrize("kind", KINDS)
def test_slack_payload_is_valid_block_kit(kind):
    payload = slack_payload(make_notice(kind))
    check_block_kit(payload)
    assert [b["type"] for b in payload["blocks"]][:3] == ["header", "section", "section"]
    assert payload["blocks"][0]["text"]["text"] == headline(make_notice(kind))
    found = buttons(payload)
    if kind in ACTIONABLE:
        assert found["Accept"]["url"] == LINKS["accept"] and found["Accept"]["style"] == "primary"
        assert found["Reject"]["url"] == LINKS["reject"] and found["Reject"]["style"] == "danger"
    else:
        assert "Accept" not in found and "Reject" not in found
    everything = json.dumps(payload)
    fields = [f["text"] for f in payload["blocks"][2]["fields"]]
    assert any("Acme (250 people)" in f for f in fields)
    assert any("VP Engineering" in f for f in fields)
    assert any("92 A" in f for f in fields)
    assert REASONS[0] in everything and "url=/pricing" in everything
    assert "SECRET" not in everything  # the rep's webhook URL is never in a message


def test_slack_escapes_markup_from_profile_fields():
    lead = LEAD | {"first_name": "<!channel>", "company": "<https://evil.example|bank> & co"}
    payload = slack_payload(make_notice(lead=lead))
    check_block_kit(payload)
    # mrkdwn is parsed for mentions and links: escaped there. plain_text (the header) is
    # shown literally by Slack and must not be escaped.
    mrkdwn = [payload["text"]] + [
        text["text"]
        for block in payload["blocks"]
        for text in [block.get("text", {}), *block.get("fields", []), *block.get("elements", [])]
        if text.get("type") == "mrkdwn"
    ]
    assert not any("<!channel>" in t or "<https://evil" in t for t in mrkdwn)
    assert "&lt;!channel&gt;" in payload["text"]
    assert any("&lt;https://evil.example|bank&gt; &amp; co" in t for t in mrkdwn)
    assert payload["blocks"][0]["text"]["text"].startswith("Hot lead: <!channel> Lovelace")


# --- CRM --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_crm_payload_is_stable_json(kind):
    notice = make_notice(kind)
    payload = crm_payload(notice)
    assert json.loads(json.dumps(payload)) == payload
    assert set(payload) == {
        "version", "event", "kind", "handoff_id", "occurred_at", "rep", "previous_rep",
        "recipient_rep_id", "lead", "score", "reasons", "timeline", "links", "due_at", "answer",
        "note",
    }  # fmt: skip
    assert payload["event"] == EVENTS[kind] and payload["event"].startswith("handoff.")
    assert payload["handoff_id"] == "h-123" and payload["version"] == 1
    assert payload["occurred_at"] == notice.created_at.isoformat().replace("+00:00", "Z")
    assert payload["due_at"] == "2024-06-04T14:15:00Z"
    assert payload["lead"]["email"] == "ada@acme.example"
    assert payload["lead"]["attributes"] == {"plan": "pro", "seats": 40}
    assert payload["score"] == SCORE
    assert payload["reasons"] == REASONS
    assert payload["timeline"][0] == {"at": "2024-06-04T13:58:00Z", "type": "page.view",
                                      "detail": "url=/pricing"}  # fmt: skip
    assert payload["links"] == LINKS
    assert payload["recipient_rep_id"] == notice.recipient["id"]
    assert "webhook_url" not in json.dumps(payload) and "SECRET" not in json.dumps(payload)


def test_crm_events_per_kind():
    assert {kind: crm_payload(make_notice(kind))["event"] for kind in KINDS} == {
        "new": "handoff.created", "reminder": "handoff.reminder",
        "reassigned_to": "handoff.reassigned", "reassigned_away": "handoff.reassigned",
        "answered": "handoff.answered",
    }  # fmt: skip
    away = crm_payload(make_notice("reassigned_away"))
    assert (away["rep"]["id"], away["previous_rep"]["id"], away["recipient_rep_id"]) == (
        "omar", "maya", "maya",
    )  # fmt: skip


def test_timeline_is_newest_first_and_at_most_ten():
    items = [TimelineItem(T0 - timedelta(minutes=i), "page.view", f"n={i}") for i in range(15)]
    payload = crm_payload(make_notice(timeline=list(reversed(items))))
    assert [item["detail"] for item in payload["timeline"]] == [f"n={i}" for i in range(10)]


# --- signing ----------------------------------------------------------------------------

SECRET = "whsec_test_secret"
BODY = b'{"event":"handoff.created","handoff_id":"h1"}'
STAMP = 1700000000


def documented_signature(secret: str, timestamp: int, body: bytes) -> str:
    """The module docstring's algorithm, written out independently of sales.outbound_webhooks."""
    message = str(timestamp).encode("ascii") + b"." + body
    return "v1=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def test_signature_matches_the_documented_algorithm():
    expected = "v1=cc63781929bb82405bc67bd67f465e80a1f684736cefe3eef6739b6129f78323"
    assert documented_signature(SECRET, STAMP, BODY) == expected
    assert sign(SECRET, STAMP, BODY) == expected
    assert sign(SECRET.encode(), STAMP, BODY) == expected


def test_the_docstring_python_example_verifies(monkeypatch):
    doc = webhooks.__doc__
    start = doc.index("    import hashlib")
    example = textwrap.dedent(doc[start : doc.index("With openssl")])
    namespace: dict[str, Any] = {}
    exec(compile(example, "docstring-example", "exec"), namespace)
    verify_nurture = namespace["verify_nurture"]
    monkeypatch.setattr("time.time", lambda: STAMP + 10)
    headers = {TIMESTAMP_HEADER: str(STAMP), SIGNATURE_HEADER: sign(SECRET, STAMP, BODY)}
    assert verify_nurture(SECRET, headers, BODY)
    assert not verify_nurture(SECRET, headers, BODY + b" ")
    assert not verify_nurture("other", headers, BODY)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl on this machine")
def test_the_docstring_openssl_one_liner_verifies(tmp_path):
    line = next(li.strip() for li in webhooks.__doc__.splitlines() if "openssl dgst" in li)
    (tmp_path / "body.json").write_bytes(BODY)
    result = subprocess.run(
        ["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", "TS": str(STAMP), "SECRET": SECRET},
    )  # fmt: skip
    assert result.stdout.strip() == sign(SECRET, STAMP, BODY)


def test_verify_accepts_good_and_rejects_everything_else():
    good = sign(SECRET, STAMP, BODY)
    now = STAMP + 30
    assert verify(SECRET, STAMP, BODY, good, now=now)
    assert verify(SECRET, str(STAMP), BODY, good, now=now)
    assert verify(SECRET.encode(), STAMP, BODY, good, now=now)
    assert not verify(SECRET, STAMP, BODY + b" ", good, now=now)  # tampered body
    assert not verify(SECRET, STAMP, BODY.replace(b"h1", b"h2"), good, now=now)
    assert not verify("another secret", STAMP, BODY, good, now=now)
    assert not verify(SECRET, STAMP + 1, BODY, good, now=now)  # timestamp changed
    assert not verify(SECRET, STAMP, BODY, good, now=STAMP + 301)  # stale
    assert not verify(SECRET, STAMP, BODY, good, now=STAMP - 301)  # from the future
    assert verify(SECRET, STAMP, BODY, good, now=STAMP + 3600, tolerance=7200)
    for missing in ("", None):
        assert not verify(SECRET, STAMP, BODY, missing, now=now)
        assert not verify(SECRET, missing, BODY, good, now=now)
    for malformed in (good[3:], "v0=" + good[3:], good.upper(), "v1=zz", "v1=ü" + good[4:]):
        assert not verify(SECRET, STAMP, BODY, malformed, now=now)
    for bad_stamp in ("17e8", "-1", " ", "١٧٠٠٠٠٠٠٠٠"):
        assert not verify(SECRET, bad_stamp, BODY, good, now=now)
    assert not verify("", STAMP, BODY, sign("", STAMP, BODY), now=now)  # no secret, no trust


def test_verify_accepts_any_of_several_signatures_and_secrets():
    old, new = sign("old-secret", STAMP, BODY), sign("new-secret", STAMP, BODY)
    now = STAMP
    assert verify("new-secret", STAMP, BODY, f"{old}, {new}", now=now)
    assert verify("old-secret", STAMP, BODY, f"{old},{new}", now=now)
    assert not verify("other", STAMP, BODY, f"{old},{new}", now=now)
    assert verify(["other", "new-secret"], STAMP, BODY, new, now=now)


# --- posting ----------------------------------------------------------------------------


@pytest.fixture
def sink():
    with WebhookSink() as server:
        yield server


def test_post_json_sends_exact_signed_bytes(sink):
    payload = crm_payload(make_notice())
    status = post_json(sink.url_for("/crm"), payload, delivery_id="h-123:new:crm",
                       secret=SECRET, now=lambda: STAMP + 0.9)  # fmt: skip
    assert status == 200
    (request,) = sink.wait_for(1, "/crm")
    assert request.method == "POST"
    assert request.header("Content-Type") == "application/json"
    assert request.header("User-Agent").startswith("Nurture/")
    assert request.header(DELIVERY_HEADER) == "h-123:new:crm"
    assert request.header(TIMESTAMP_HEADER) == str(STAMP)
    expected_body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    assert request.body == expected_body == encode(payload)
    assert request.json() == payload
    signature = request.header(SIGNATURE_HEADER)
    assert signature == documented_signature(SECRET, STAMP, request.body)
    assert verify(SECRET, request.header(TIMESTAMP_HEADER), request.body, signature, now=STAMP)


def test_post_json_without_a_secret_is_unsigned_and_rotation_sends_both(sink):
    post_json(sink.url_for("/slack"), slack_payload(make_notice()), delivery_id="d1")
    (plain,) = sink.wait_for(1, "/slack")
    assert plain.header(SIGNATURE_HEADER) is None and plain.header(TIMESTAMP_HEADER) is None

    post_json(sink.url_for("/crm"), {"a": 1}, delivery_id="d2", secret=["old", "new"],
              now=lambda: STAMP)  # fmt: skip
    (rotated,) = sink.wait_for(1, "/crm")
    values = rotated.header(SIGNATURE_HEADER).split(",")
    assert values == [documented_signature(s, STAMP, rotated.body) for s in ("old", "new")]
    assert verify("new", STAMP, rotated.body, rotated.header(SIGNATURE_HEADER), now=STAMP)


SECRET_PATH = "/services/T0001/B0002/XXSECRETXX"
SECRET_QUERY = "token=QUERYSECRET"


def assert_redacted(error: WebhookFailed, sink: WebhookSink) -> None:
    for text in (str(error), repr(error)):
        assert "XXSECRETXX" not in text and "QUERYSECRET" not in text and "/services" not in text
    assert f"127.0.0.1:{sink.url.rsplit(':', 1)[1]}" in str(error)
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True),
                                                   (408, True), (400, False), (401, False),
                                                   (404, False), (410, False)])  # fmt: skip
def test_post_json_failures_say_whether_to_retry(sink, status, retryable):
    sink.fail_next(status, SECRET_PATH, body=f"nope, {SECRET_PATH} says no")
    url = sink.url_for(SECRET_PATH) + "?" + SECRET_QUERY
    with pytest.raises(WebhookFailed) as caught:
        post_json(url, {"x": 1}, delivery_id="d", secret=SECRET)
    error = caught.value
    assert (error.retryable, error.status) == (retryable, status)
    assert str(status) in str(error) and "says no" in str(error)
    assert_redacted(error, sink)
    assert sink.requests(SECRET_PATH)[0].query == {"token": "QUERYSECRET"}  # it was sent


def test_429_passes_on_retry_after(sink):
    sink.fail_next(429, "/crm", headers={"Retry-After": "7"})
    with pytest.raises(WebhookFailed) as caught:
        post_json(sink.url_for("/crm"), {}, delivery_id="d")
    assert caught.value.retryable and caught.value.retry_after == 7.0


def test_connection_refused_is_retryable():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}{SECRET_PATH}?{SECRET_QUERY}"
    with pytest.raises(WebhookFailed) as caught:
        post_json(url, {"x": 1}, delivery_id="d", timeout=2)
    assert caught.value.retryable and caught.value.status is None
    assert "unreachable" in str(caught.value) and f"127.0.0.1:{port}/…" in str(caught.value)
    assert "XXSECRETXX" not in str(caught.value) and "QUERYSECRET" not in str(caught.value)


def test_timeouts_and_dropped_connections_are_retryable(sink):
    sink.delay(1.0, SECRET_PATH)
    with pytest.raises(WebhookFailed) as caught:
        post_json(sink.url_for(SECRET_PATH), {}, delivery_id="d", timeout=0.2)
    assert caught.value.retryable and "timed out" in str(caught.value)
    assert_redacted(caught.value, sink)

    sink.fail_next(0, "/drop")  # the connection closes without an answer
    with pytest.raises(WebhookFailed) as caught:
        post_json(sink.url_for("/drop"), {}, delivery_id="d")
    assert caught.value.retryable and caught.value.status is None


def test_a_bad_url_is_not_retryable():
    for url in ("ftp://example.com/hook", "http:///nohost"):
        with pytest.raises(WebhookFailed) as caught:
            post_json(url, {}, delivery_id="d")
        assert not caught.value.retryable


def test_retried_attempts_share_the_delivery_id_and_others_are_not_held_up(sink):
    """What the notify activity's retry policy does: a failing CRM hook is tried again
    (same delivery ID, fresh signature) while the Slack hook has already been delivered."""
    sink.fail_next(500, "/crm", times=2)
    clock = iter([STAMP, STAMP + 2, STAMP + 6])

    def crm_attempt() -> int:
        return post_json(sink.url_for("/crm"), {"n": 1}, delivery_id="h-123:crm",
                         secret=SECRET, now=lambda: next(clock))  # fmt: skip

    with pytest.raises(WebhookFailed) as first:
        crm_attempt()
    assert first.value.retryable
    # The other channels go out independently, while the CRM hook waits for its retry.
    assert post_json(sink.url_for("/slack"), {"text": "hi"}, delivery_id="h-123:slack") == 200
    attempts = 1
    while True:
        attempts += 1
        try:
            crm_attempt()
            break
        except WebhookFailed as failure:
            assert failure.retryable
    assert attempts == 3
    crm = sink.wait_for(3, "/crm")
    assert {r.header(DELIVERY_HEADER) for r in crm} == {"h-123:crm"}
    assert [r.header(TIMESTAMP_HEADER) for r in crm] == [str(STAMP), str(STAMP + 2), str(STAMP + 6)]
    assert all(
        verify(
            SECRET, r.header(TIMESTAMP_HEADER), r.body, r.header(SIGNATURE_HEADER), now=STAMP + 6
        )
        for r in crm
    )
    (slack,) = sink.wait_for(1, "/slack")
    assert slack.monotonic < crm[-1].monotonic


def test_httpx_request_log_shows_only_the_host(sink, caplog):
    caplog.set_level(logging.INFO, logger="httpx")
    post_json(sink.url_for(SECRET_PATH) + "?" + SECRET_QUERY, {}, delivery_id="d")
    assert "HTTP Request: POST" in caplog.text
    assert "XXSECRETXX" not in caplog.text and "QUERYSECRET" not in caplog.text
    # Other httpx users keep their full URLs in the log.
    caplog.clear()
    httpx.post(sink.url_for("/elsewhere"), content=b"")
    assert "/elsewhere" in caplog.text


def test_a_shared_client_is_reused_and_left_open(sink):
    with httpx.Client() as client:
        for n in range(3):
            assert post_json(sink.url_for("/crm"), {"n": n}, delivery_id=f"d{n}", client=client)
        assert not client.is_closed
    assert [r.json()["n"] for r in sink.wait_for(3, "/crm")] == [0, 1, 2]


def test_redact_url():
    assert (
        redact_url("https://hooks.slack.com/services/T0/B0/secret") == "https://hooks.slack.com/…"
    )
    assert (
        redact_url("https://user:pw@crm.example.com:8443/h?token=x")
        == "https://crm.example.com:8443/…"
    )
    assert redact_url("https://crm.example.com") == "https://crm.example.com"
    assert redact_url("http://[::1]:9000/x") == "http://[::1]:9000/…"
    assert redact_url("not a url") == "<invalid url>"
    assert redact_url("http://host:99999999/") == "<invalid url>"


def test_webhook_failed_survives_pickling():
    error = WebhookFailed("webhook https://x/… answered 503", retryable=True, status=503,
                          retry_after=2.0)  # fmt: skip
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.retryable, copy.status, copy.retry_after) == (
        str(error), True, 503, 2.0,
    )  # fmt: skip


# --- the sink ---------------------------------------------------------------------------


def test_sink_scripts_failures_per_path_and_waits(sink):
    sink.fail_next(503, "/a")
    sink.fail_next(400)  # any path
    assert httpx.post(sink.url_for("/b"), content=b"1").status_code == 400
    assert httpx.post(sink.url_for("/a"), content=b"2").status_code == 503
    assert httpx.post(sink.url_for("/a"), content=b"3").status_code == 200
    assert [r.body for r in sink.requests("/a")] == [b"2", b"3"]
    assert len(sink.requests()) == 3
    with pytest.raises(TimeoutError, match="2 of 3 requests to /a"):
        sink.wait_for(3, "/a", timeout=0.1)
    received = sink.requests()
    assert all(a.monotonic <= b.monotonic for a, b in zip(received, received[1:], strict=False))
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sink.url)
