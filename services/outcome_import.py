"""`nurture outcomes import FILE.csv`: opportunities from a CRM export, one event a row.

An export is a snapshot, not a stream of events: each row says where an opportunity
stood when it was last modified. So a row becomes one event: `won` or `lost` when its
stage (or Won/Closed flags) says it closed, else `stage_changed`, at the row's
last-modified time (its close date for a closed one without it). Its key is derived
from its content (sales/outcomes.py), so importing the same export twice stores nothing
the second time, and a later export adds only the rows that changed.

Columns map by header name, ignoring case, spaces and punctuation, with the names of a
Salesforce Opportunity export and a HubSpot Deals export among the synonyms
(docs/outcomes.md lists them). A row that does not make a valid event is rejected with
its line (the header is line 1), field and reason; the others are stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time

from pydantic import ValidationError
from sqlalchemy.orm import sessionmaker

from sales.outcome_store import OutcomeResult, UnknownReference, store_outcomes
from sales.outcomes import OutcomeEventIn
from services.importer import CsvSource, UsageError, normalise_header

BATCH = 500  # rows per transaction
# Field -> header names (normalised) that mean it.
_NAMES = {
    "opportunity_id": "opportunityid id dealid recordid opportunity18digitid crmid",
    "email": "email contactemail primarycontactemail associatedcontactemail emailaddress",
    "lead_id": "leadid nurtureleadid",
    "handoff_id": "handoffid nurturehandoffid",
    "stage": "stage dealstage opportunitystage crmstage",
    "won": "won iswon",
    "closed": "closed isclosed",
    "amount": "amount dealamount opportunityamount value",
    "currency": "currency currencycode opportunitycurrency dealcurrencycode currencyisocode",
    "close_date": "closedate expectedclosedate",
    "modified_at": "lastmodifieddate lastmodified lastmodifiedat lastactivitydate "
    "lastmodifieddatetime updatedat modifiedat",
    "created_at": "createddate createdate createdat",
    "lost_reason": "lossreason lostreason closedlostreason reasonlost",
}
SYNONYMS = {alias: name for name, aliases in _NAMES.items() for alias in aliases.split()}
WON_STAGES = {"closedwon", "won"}
LOST_STAGES = {"closedlost", "lost"}
TRUE = {"true", "yes", "1", "y"}


@dataclass
class Rejected:
    line: int
    field: str
    reason: str


@dataclass
class OutcomeImportReport:
    read: int = 0
    stored: OutcomeResult = field(default_factory=OutcomeResult)
    rejected: list[Rejected] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)  # header -> field

    def to_dict(self) -> dict:
        stored = self.stored
        return {"read": self.read, "accepted": stored.accepted, "duplicates": stored.duplicates,
                "waiting": stored.waiting, "columns": self.columns,
                "rejected": [r.__dict__ for r in self.rejected]}  # fmt: skip


def plan_outcome_columns(headers: list[str]) -> dict[int, str]:
    """Column index -> field; a file without an opportunity ID, or any lead column, or a
    time to date the rows, is bad usage."""
    plan = {i: SYNONYMS[normalise_header(h)] for i, h in enumerate(headers)
            if normalise_header(h) in SYNONYMS}  # fmt: skip
    found = set(plan.values())
    if "opportunity_id" not in found:
        raise UsageError("no opportunity ID column (e.g. 'Opportunity ID', 'Record ID')")
    if not found & {"email", "lead_id", "handoff_id"}:
        raise UsageError("no column naming the lead: 'Email', 'Lead ID' or 'Handoff ID'")
    if not found & {"modified_at", "close_date", "created_at"}:
        raise UsageError("no date to place the rows in time: 'Last Modified Date' or "
                         "'Close Date'")  # fmt: skip
    return plan


def import_outcomes(
    sessions: sessionmaker, source: CsvSource, currency: str | None = None,
    progress: Callable[[int], None] = lambda _n: None,
) -> OutcomeImportReport:  # fmt: skip
    plan = plan_outcome_columns(source.headers)
    report = OutcomeImportReport(columns={source.headers[i]: name for i, name in plan.items()})
    batch: list[tuple[int, OutcomeEventIn]] = []
    for line, cells in source.records():
        report.read += 1
        event = _event(line, cells, plan, currency, report)
        if event is not None:
            batch.append((line, event))
        if len(batch) >= BATCH:
            _store(sessions, batch, report)
            progress(report.read)
            batch = []
    if batch:
        _store(sessions, batch, report)
    progress(report.read)
    return report


def _event(line: int, cells: list[str], plan: dict[int, str], currency: str | None,
           report: OutcomeImportReport) -> OutcomeEventIn | None:  # fmt: skip
    row = {
        name: cells[i].strip() for i, name in plan.items() if i < len(cells) and cells[i].strip()
    }
    kind = _kind(row)
    data = {
        "opportunity_id": row.get("opportunity_id"), "kind": kind,
        "email": row.get("email"), "lead_id": row.get("lead_id"),
        "handoff_id": row.get("handoff_id"), "crm_stage": row.get("stage"),
        "amount": row.get("amount", "").replace(",", "") or None,
        "currency": row.get("currency") or (currency if row.get("amount") else None),
        "lost_reason": row.get("lost_reason") if kind == "lost" else None,
        "occurred_at": _moment(row, kind),
        ("close_date" if kind in ("won", "lost") else "expected_close_date"):
            _date(row.get("close_date")),
    }  # fmt: skip
    try:
        return OutcomeEventIn.model_validate({k: v for k, v in data.items() if v is not None})
    except (ValidationError, ValueError) as exc:
        report.rejected.extend(_rejections(line, exc, report.columns))
        return None


def _kind(row: dict[str, str]) -> str:
    stage = normalise_header(row.get("stage", ""))
    won = row.get("won", "").casefold() in TRUE
    closed = row.get("closed", "").casefold() in TRUE
    if stage in WON_STAGES or won:
        return "won"
    if stage in LOST_STAGES or (closed and not won):
        return "lost"
    return "stage_changed"


def _moment(row: dict[str, str], kind: str) -> str | None:
    """When the row's state held: last modified; else a close's date; else creation."""
    text = row.get("modified_at") or (row.get("close_date") if kind != "stage_changed" else None)
    text = text or row.get("created_at")
    if text is None:
        return None
    parsed = _datetime(text)
    return parsed.isoformat() if parsed else text  # as given: the model names the problem


def _datetime(text: str) -> datetime | None:
    """ISO 8601, or a date alone (midnight UTC); no zone given: UTC (exports are in UTC)."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        day = _date(text)
        return datetime.combine(day, time(), UTC) if isinstance(day, date) else None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _date(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date().isoformat()
    except ValueError:
        return text  # the model refuses it, naming the field


# An event field -> the column fields it is made from, first found named in a rejection.
_MADE_FROM = {"occurred_at": ("modified_at", "close_date", "created_at"), "crm_stage": ("stage",),
              "expected_close_date": ("close_date",)}  # fmt: skip


def _rejections(line: int, exc: Exception, columns: dict[str, str]) -> list[Rejected]:
    """Each problem with the event field and the file's column it came from."""
    if not isinstance(exc, ValidationError):
        return [Rejected(line, "", str(exc))]
    header_of = {name: header for header, name in columns.items()}
    rejected = []
    for error in exc.errors():
        name = ".".join(map(str, error["loc"])) or "row"
        sources = [header_of[f] for f in _MADE_FROM.get(name, (name,)) if f in header_of]
        where = f"{name} ({sources[0]})" if sources and sources[0] != name else name
        rejected.append(Rejected(line, where, error["msg"].removeprefix("Value error, ")))
    return rejected


def _store(sessions: sessionmaker, batch: list[tuple[int, OutcomeEventIn]],
           report: OutcomeImportReport) -> None:  # fmt: skip
    """Store the batch; a row naming a lead or handoff ID we do not have is rejected and
    the rest stored."""
    while batch:
        try:
            result = store_outcomes(sessions, [event for _, event in batch], "import")
        except UnknownReference as exc:
            line, _ = batch.pop(exc.index)
            report.rejected.append(Rejected(line, exc.name, str(exc).split(": ", 1)[1]))
            continue
        for name in ("accepted", "duplicates", "waiting"):
            setattr(report.stored, name, getattr(report.stored, name) + getattr(result, name))
        return
