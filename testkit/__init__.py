"""What tests and benchmarks share, so neither imports the other.

- `FIXTURE_DEFINITIONS`: the path of the test definitions (tests/fixtures/definitions);
- `testkit.providers`: a local imitation of the SendGrid and Twilio APIs;
- `testkit.webhook_sink`: a local server standing in for reps' webhooks (Slack, CRM);
- `testkit.stack`: an in-memory Temporal dev server, and the whole Nurture (worker and
  API) on it, on SQLite and a free port;
- `testkit.synthetic_outcomes`: a synthetic history lead's opportunities as the CRM's
  outcome events, to store.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURE_DEFINITIONS = REPO / "tests" / "fixtures" / "definitions"
