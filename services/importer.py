"""Import leads from a CSV file: map columns, validate, upsert by email, enroll.

The file is read as UTF-8 (a BOM is fine) with its delimiter sniffed from the header
line (`,` `;` or tab). Columns map to lead fields by header name, ignoring case,
spaces, underscores and punctuation, with common synonyms ("E-mail", "Company name",
"Time zone"...); `--map HEADER=FIELD` and `--ignore HEADER` override that, and any
other column goes to the lead's `attributes` under a snake_case key.

Each row is validated as the API validates a lead (`LeadIn`: email-validator, phone
numbers to E.164 with phonenumbers, IANA time zones, BCP 47 locales); a rejected row is reported
with its physical line number in the file (the header is line 1), the field and the
reason. A later row with the same email updates the earlier one. Blank cells leave
what a lead already has; attributes are merged into the lead's. UTM columns (`utm_source`
... `utm_content`, or `Campaign`, `Medium`...) are the lead's first touch: kept from the
first row or lead that has them, never overwritten (see `first_touch_only`). Consent
columns (`email_consent`, `email_consent_source`, `_at`, `_basis`, the same for `sms`, or
the API's object as JSON in a `consent` column) are recorded as `POST /leads` records them;
a new lead without them starts as delivery.yaml's defaults say (docs/consent.md).

Valid rows are upserted by email in batches, one transaction per batch, each new
lead getting its segment (segments.yaml); a later batch is validated and written
while the leads of the earlier ones are enrolled through the Intake, `concurrency`
calls in flight: a new lead's workflow is started with its enrollment in its input,
an existing lead's is signalled (signal-with-start).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from models.consent import Told, apply_intake_consent
from models.db import Lead, OutcomeEvent, Response, new_id, utcnow
from sales.outcome_store import match_waiting_outcomes
from services.intake import (
    UTM_FIELDS,
    Intake,
    LeadIn,
    _new_number_clears_bad_address,
    first_touch_only,
)

# Consent per channel (docs/consent.md): flat columns, or the API's object as JSON in one
# `consent` column. `<channel>_consent` is given, withdrawn or pending.
CONSENT_PARTS = {"": "status", "_source": "source", "_at": "at", "_basis": "basis"}
CONSENT_COLUMNS = ("consent", *(f"{channel}_consent{suffix}" for channel in ("email", "sms")
                                for suffix in CONSENT_PARTS))  # fmt: skip
# The lead fields a column can fill (LeadIn's, but `attributes`: see attribute columns).
FIELDS = ("email", "first_name", "last_name", "phone", "title", "company", "company_size",
          "industry", "country", "timezone", "locale", "source", "sequence",
          *UTM_FIELDS, *CONSENT_COLUMNS)  # fmt: skip

# Other header names for the fields, normalised (lower case, letters and digits only).
_ALSO = {
    "email": "emailaddress mail emails workemail businessemail",
    "first_name": "givenname first forename fname",
    "last_name": "surname familyname last lname",
    "phone": "phonenumber mobile mobilephone mobilenumber cell cellphone telephone tel phoneno",
    "title": "jobtitle position role",
    "company": "companyname organization organisation org account accountname employer",
    "company_size": "employees numberofemployees noofemployees ofemployees employeecount "
    "headcount size",
    "industry": "sector vertical",
    "country": "countrycode countryiso iso",
    "timezone": "tz zone tzname",
    "locale": "language lang languagecode languagetag preferredlanguage",
    "source": "leadsource origin",  # "UTM Source" is utm_source's: the campaign's
    "utm_source": "campaignsource",
    "utm_medium": "medium campaignmedium",
    "utm_campaign": "campaign campaignname",
    "utm_term": "campaignterm keyword",
    "utm_content": "campaigncontent adcontent",
    "email_consent": "emailconsentstatus emailoptin",
    "email_consent_at": "emailconsentdate emailconsenttime emailconsentgivenat",
    "email_consent_basis": "emailconsentlegalbasis emaillegalbasis",
    "sms_consent": "smsconsentstatus smsoptin",
    "sms_consent_at": "smsconsentdate smsconsenttime smsconsentgivenat",
    "sms_consent_basis": "smsconsentlegalbasis smslegalbasis",
}
# Header name (normalised) -> field.
SYNONYMS: dict[str, str] = {name.replace("_", ""): name for name in FIELDS} | {
    alias: name for name, aliases in _ALSO.items() for alias in aliases.split()
}

# The columns a rejects file adds: a fixed rejects file imports without them.
REJECT_COLUMNS = ("line", "field", "reason")
CONSECUTIVE_FAILURES = 20  # enrollments failing in a row: Temporal is down, stop trying
DELIMITERS = (",", ";", "\t")


class UsageError(ValueError):
    """The file or the options cannot be used as given (the CLI's exit code 2)."""


class BadRecord(ValueError):
    """A record the csv module cannot read: the import stops there."""


def normalise_header(header: str) -> str:
    return re.sub(r"[^0-9a-z]", "", header.casefold())


def attribute_key(header: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", header.casefold()).strip("_")


# --- the file -------------------------------------------------------------------------------


@dataclass
class CsvSource:
    """A CSV file read whole: its header, delimiter and data records with line numbers."""

    path: Path
    text: str
    delimiter: str
    bom: bool
    headers: list[str]

    def records(self) -> Iterator[tuple[int, list[str]]]:
        """(physical line the record starts on, cells) for every non-blank data record.
        Raises BadRecord where the csv module gives up (a field over its size limit)."""
        reader = csv.reader(io.StringIO(self.text), delimiter=self.delimiter)
        next(reader, None)
        last = reader.line_num
        try:
            for cells in reader:
                line, last = last + 1, reader.line_num
                if any(cell.strip() for cell in cells):
                    yield line, cells
        except csv.Error as exc:
            raise BadRecord(f"line {last + 1}: {exc}") from None

    def count(self) -> int:
        return sum(1 for _ in self.records())


def open_csv(path: Path, encoding: str = "utf-8-sig", delimiter: str | None = None) -> CsvSource:
    """Read `path`; raise UsageError if it cannot be a CSV file of leads."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UsageError(
            f"{path}: line {line} is not {encoding} text ({exc.reason}); save the file as "
            "UTF-8 CSV or give its encoding with --encoding (e.g. cp1252)"
        ) from None
    except LookupError:
        raise UsageError(f"unknown encoding {encoding!r}") from None
    bom = raw.startswith(b"\xef\xbb\xbf")
    text = text.removeprefix("\ufeff")
    first_line = text.split("\n", 1)[0]
    if delimiter is None:
        counts = {d: first_line.count(d) for d in DELIMITERS}
        delimiter = max(DELIMITERS, key=lambda d: counts[d])  # `,` on a tie
    try:
        headers = next(csv.reader(io.StringIO(text), delimiter=delimiter), None)
    except csv.Error as exc:
        raise UsageError(f"{path}: line 1 is not CSV: {exc}") from None
    if not headers or not any(h.strip() for h in headers):
        raise UsageError(f"{path} is empty: the first line must name the columns")
    return CsvSource(path, text, delimiter, bom, [h.strip() for h in headers])


# --- columns --------------------------------------------------------------------------------


@dataclass
class Column:
    index: int
    header: str
    field: str | None = None  # a lead field
    attribute: str | None = None  # or a key in `attributes`
    how: str = "by name"  # by name | --map | unknown column | --ignore | ...

    @property
    def target(self) -> str | None:
        return self.field or (f"attributes.{self.attribute}" if self.attribute else None)


@dataclass
class ColumnPlan:
    columns: list[Column]

    @property
    def width(self) -> int:
        return len(self.columns)

    def describe(self) -> dict[str, str | None]:
        """header -> what it fills (None: ignored)."""
        return {c.header or f"(column {c.index + 1})": c.target for c in self.columns}

    def notes(self) -> list[str]:
        """What a person should know about the mapping: unknown and ignored columns."""
        notes = []
        for c in self.columns:
            name = c.header or f"column {c.index + 1}"
            if c.attribute and c.how != "--map":
                notes.append(f"{name!r} is no lead field: kept as attributes.{c.attribute}"
                             + (f" ({c.how})" if c.how != "unknown column" else ""))  # fmt: skip
            elif c.target is None:
                notes.append(f"{name!r} ignored ({c.how})")
        return notes

    def data(self, cells: list[str]) -> tuple[dict[str, Any], list[Problem]]:
        """The row as LeadIn input (blank cells left out), and a problem if it has more
        cells than the header has columns."""
        problems = []
        extra = [cell for cell in cells[self.width :] if cell.strip()]
        if extra:
            shown = ", ".join(repr(cell) for cell in extra[:3])
            problems.append(Problem("", f"{len(cells)} values but the header has {self.width} "
                                        f"columns (extra: {shown})"))  # fmt: skip
        data: dict[str, Any] = {}
        attributes: dict[str, str] = {}
        for column, cell in zip(self.columns, cells, strict=False):
            value = cell.strip()
            if not value:
                continue
            if column.field:
                data[column.field] = value
            elif column.attribute:
                attributes[column.attribute] = value
        if attributes:
            data["attributes"] = attributes
        return data, problems


def parse_maps(values: list[str]) -> dict[str, str]:
    """`--map HEADER=FIELD` options -> {header: field or attributes.KEY}."""
    mapping = {}
    for value in values:
        header, sep, target = value.rpartition("=")
        header, target = header.strip(), target.strip()
        if not sep or not header or not target:
            raise UsageError(f"--map {value!r}: give HEADER=FIELD, e.g. --map 'Work Email=email'")
        if target.startswith("attributes."):
            if not attribute_key(target.removeprefix("attributes.")):
                raise UsageError(f"--map {value!r}: name the attribute, e.g. attributes.budget")
        elif target == "attributes":
            target = f"attributes.{attribute_key(header) or 'column'}"
        elif target not in FIELDS:
            raise UsageError(f"--map {value!r}: no lead field {target!r}; fields: "
                             f"{', '.join(FIELDS)}, or attributes.KEY")  # fmt: skip
        mapping[header] = target
    return mapping


def _find_header(headers: list[str], name: str, option: str) -> int:
    if name in headers:
        return headers.index(name)
    matches = [i for i, h in enumerate(headers) if normalise_header(h) == normalise_header(name)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(repr(h) for h in headers)
    raise UsageError(f"{option} {name!r}: the file has no such column (columns: {listed})")


def plan_columns(
    headers: list[str], maps: dict[str, str] | None = None, ignore: list[str] | None = None
) -> ColumnPlan:
    """What each column fills: --ignore, then --map, then the header's name; unknown
    columns go to attributes. Raises UsageError naming the problem."""
    columns = [Column(i, h) for i, h in enumerate(headers)]
    decided: set[int] = set()
    for name in ignore or []:
        index = _find_header(headers, name, "--ignore")
        columns[index].how = "--ignore"
        decided.add(index)
    explicit: dict[str, int] = {}
    for name, target in (maps or {}).items():
        index = _find_header(headers, name, "--map")
        if index in decided:
            raise UsageError(f"column {headers[index]!r} is both mapped and ignored")
        column = columns[index]
        if target.startswith("attributes."):
            column.attribute = attribute_key(target.removeprefix("attributes."))
        else:
            if target in explicit:
                earlier = headers[explicit[target]]
                raise UsageError(f"--map gives {target} two columns: {earlier!r} and "
                                 f"{headers[index]!r}")  # fmt: skip
            column.field, explicit[target] = target, index
        column.how = "--map"
        decided.add(index)
    # Unmapped columns from a rejects file: its line, field and reason.
    last_three = {len(headers) - 3, len(headers) - 2, len(headers) - 1}
    if tuple(headers[-3:]) == REJECT_COLUMNS and not decided & last_three:
        for column in columns[-3:]:
            column.how = "a rejects file's column"
            decided.add(column.index)
    by_name: dict[str, int] = {}
    for column in columns:
        if column.index in decided:
            continue
        if not column.header:
            column.how = "no header"
            continue
        target = SYNONYMS.get(normalise_header(column.header))
        if target is None or target in explicit:
            column.attribute = attribute_key(column.header) or f"column_{column.index + 1}"
            column.how = f"--map gave {target} to {headers[explicit[target]]!r}" if target else (
                "unknown column")  # fmt: skip
        elif target in by_name:
            raise UsageError(
                f"columns {headers[by_name[target]]!r} and {column.header!r} both look like "
                f"{target}: say which with --map HEADER={target}, or --ignore the other"
            )
        else:
            column.field, by_name[target] = target, column.index
    seen: Counter[str] = Counter()
    for column in columns:  # two columns with one attribute key: number them
        if column.attribute:
            seen[column.attribute] += 1
            if seen[column.attribute] > 1:
                column.attribute = f"{column.attribute}_{seen[column.attribute]}"
    if not any(c.field == "email" for c in columns):
        listed = ", ".join(repr(h) for h in headers)
        raise UsageError(f"no email column (columns: {listed}); name it with --map HEADER=email")
    return ColumnPlan(columns)


# --- validation -----------------------------------------------------------------------------


@dataclass
class Problem:
    field: str
    reason: str


def problems_of(error: ValidationError) -> list[Problem]:
    """Pydantic's errors as a person reads them: the field, and why with the value."""
    problems = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"])
        kind, message, value = item["type"], item["msg"], item.get("input")
        ctx = item.get("ctx") or {}
        if kind == "missing":
            reason = "no email address" if name == "email" else "missing"
        elif name == "email" and kind == "value_error":
            reason = f"{value!r} is not a valid email address: {ctx.get('reason', message)}"
        elif kind == "value_error":
            reason = message.removeprefix("Value error, ")
        elif kind == "int_parsing":
            reason = f"{value!r} is not a whole number"
        elif kind == "string_too_long":
            reason = f"{value!r} is longer than {ctx.get('max_length')} characters"
        elif kind == "string_too_short":
            reason = f"{value!r} is shorter than {ctx.get('min_length')} characters"
        elif kind == "greater_than_equal":
            reason = f"{value!r} is below {ctx.get('ge')}"
        elif kind == "less_than_equal":
            reason = f"{value!r} is above {ctx.get('le')}"
        else:
            reason = f"{message} (got {value!r})" if value is not None else message
        if name == "country" and kind in ("string_too_long", "string_too_short"):
            reason += " (give a two-letter ISO code such as US or DE)"
        problems.append(Problem(name, reason))
    return problems


# --- the report -----------------------------------------------------------------------------


@dataclass
class Rejected:
    line: int
    cells: list[str]
    problems: list[Problem]

    @property
    def field(self) -> str:
        return ", ".join(dict.fromkeys(p.field for p in self.problems if p.field))

    @property
    def reason(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0].reason
        return "; ".join(f"{p.field}: {p.reason}" if p.field else p.reason for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "reason": self.reason}


@dataclass
class Duplicate:
    line: int
    earlier_line: int
    email: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "earlier_line": self.earlier_line, "email": self.email,
                "note": f"updated earlier row on line {self.earlier_line}"}  # fmt: skip


@dataclass
class EnrollFailure:
    line: int
    email: str
    lead_id: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "email": self.email, "lead_id": self.lead_id,
                "error": self.error}  # fmt: skip


@dataclass
class ImportReport:
    file: str
    dry_run: bool = False
    enroll: bool = True
    read: int = 0  # data rows (blank lines are not rows)
    created: int = 0
    updated: int = 0  # leads that were in the database before this import
    valid: int = 0  # a dry run: leads that would be written
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    enrolled: int = 0
    enroll_failed: list[EnrollFailure] = field(default_factory=list)
    segments: Counter[str] = field(default_factory=Counter)
    sequences: Counter[str] = field(default_factory=Counter)
    columns: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rejects_file: str | None = None
    seconds: float = 0.0
    stopped: str | None = None  # why the import stopped before the end of the file

    @property
    def imported(self) -> int:
        return self.valid if self.dry_run else self.created + self.updated

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "dry_run": self.dry_run, "enroll": self.enroll,
            "read": self.read, "imported": self.imported,
            "created": None if self.dry_run else self.created,
            "updated": None if self.dry_run else self.updated,
            "rejected": len(self.rejected), "duplicates": len(self.duplicates),
            "enrolled": self.enrolled, "enroll_failed": len(self.enroll_failed),
            "segments": dict(self.segments.most_common()),
            "sequences": dict(self.sequences.most_common()),
            "seconds": round(self.seconds, 3), "rate": round(self.rate, 1),
            "rejects_file": self.rejects_file, "stopped": self.stopped,
            "columns": self.columns, "notes": self.notes,
            "rejects": [r.to_dict() for r in self.rejected],
            "duplicate_rows": [d.to_dict() for d in self.duplicates],
            "enroll_failures": [f.to_dict() for f in self.enroll_failed],
        }  # fmt: skip


def write_rejects(path: Path, source: CsvSource, rejected: list[Rejected]) -> None:
    """The rejected rows as they were, with their line, field and reason, in the input's
    dialect (delimiter, BOM), so the file opens the same way and can be fixed and imported."""
    width = len(source.headers)
    with path.open("w", newline="", encoding="utf-8-sig" if source.bom else "utf-8") as handle:
        writer = csv.writer(handle, delimiter=source.delimiter)
        writer.writerow([*source.headers, *REJECT_COLUMNS])
        for row in rejected:
            cells = (row.cells + [""] * width)[:width]
            writer.writerow([*cells, row.line, row.field, row.reason])


def default_rejects_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.rejects.csv")


# --- the import -----------------------------------------------------------------------------


@dataclass
class _Pending:
    line: int
    fields: dict[str, Any]
    sequence: str | None
    told: dict[str, Told] = field(default_factory=dict)  # consent per channel, as the file says


Progress = Callable[[str, int], None]  # ("read" | "imported" | "enrolled", how many more)


class LeadImporter:
    """One import of one file. `intake.client` is needed only to enroll; `intake.sessions`
    not at all in a dry run (which writes nothing and reads no database)."""

    def __init__(
        self,
        source: CsvSource,
        plan: ColumnPlan,
        intake: Intake,
        *,
        enroll: bool = True,
        dry_run: bool = False,
        sequence: str | None = None,
        batch_size: int = 500,
        concurrency: int = 50,
        progress: Progress | None = None,
    ):
        if sequence is not None and sequence not in intake.definitions.sequences:
            known = ", ".join(intake.definitions.sequences)
            raise UsageError(f"no sequence {sequence!r} (known: {known})")
        self.source, self.plan, self.intake = source, plan, intake
        self.definitions = intake.definitions
        self.enroll = enroll and not dry_run
        self.dry_run, self.sequence = dry_run, sequence
        self.batch_size, self.concurrency = batch_size, concurrency
        self.progress = progress or (lambda _kind, _n: None)
        self.report = ImportReport(str(source.path), dry_run=dry_run, enroll=self.enroll,
                                   columns=plan.describe(), notes=plan.notes())  # fmt: skip
        self._first_line: dict[str, int] = {}  # email -> line of its first valid row
        self._source = f"import:{source.path.name}"[:200]  # where consent told without one was
        self._done: set[str] = set()  # emails written (or, dry, validated) in this import
        self._failures_in_a_row = 0

    async def run(self) -> ImportReport:
        started = time.perf_counter()
        records = self.source.records()
        queue: asyncio.Queue = asyncio.Queue(maxsize=2 * self.batch_size)
        enrollers = [asyncio.create_task(self._enroller(queue))
                     for _ in range(self.concurrency if self.enroll else 0)]  # fmt: skip
        try:
            while True:
                # In a thread: the next batch is read, validated and written while this
                # loop enrolls the leads of the batches before it.
                batch = await asyncio.to_thread(self._next_batch, records)
                if batch is None:
                    break
                for item in batch:
                    await queue.put(item)
            for _ in enrollers:
                await queue.put(None)
            await asyncio.gather(*enrollers)
        finally:
            for task in enrollers:
                task.cancel()
            self.report.seconds = time.perf_counter() - started
        return self.report

    def run_sync(self) -> ImportReport:
        return asyncio.run(self.run())

    # --- reading, validating and writing a batch (in a thread) ---------------------------

    def _next_batch(self, records: Iterator[tuple[int, list[str]]]) -> list[tuple] | None:
        rows: list[tuple[int, list[str]]] = []
        try:
            rows.extend(islice(records, self.batch_size))
        except BadRecord as exc:  # the rows before it are imported; none after it
            self.report.stopped = str(exc)
        if not rows:
            return None
        pending = self._validate(rows)
        self.progress("read", len(rows))
        if self.dry_run:
            for item in pending.values():
                if item.fields["email"] not in self._done:
                    self._done.add(item.fields["email"])
                    self.report.valid += 1
                    self.report.segments[self._segment_of_new(item.fields)] += 1
            self.progress("imported", len(pending))
            return []
        written = self._upsert(list(pending.values()))
        to_enroll = []
        for item, lead, created in written:
            if lead.email in self._done:  # an earlier batch wrote it: updated, done
                continue
            self._done.add(lead.email)
            self.report.created += created
            self.report.updated += not created
            self.report.segments[lead.segment] += 1
            to_enroll.append((item.line, lead, item.sequence, created))
        self.progress("imported", len(written))
        return to_enroll if self.enroll else []

    def _validate(self, rows: list[tuple[int, list[str]]]) -> dict[str, _Pending]:
        """The batch's valid rows by email, later rows merged into earlier ones."""
        pending: dict[str, _Pending] = {}
        sequences = self.definitions.sequences
        for line, cells in rows:
            self.report.read += 1
            data, problems = self.plan.data(cells)
            data, flat = _fold_consent(data, problems)
            lead_in = None
            try:
                lead_in = LeadIn.model_validate(data)
            except ValidationError as exc:
                problems += _consent_columns(problems_of(exc)) if flat else problems_of(exc)
            if lead_in is not None and lead_in.sequence and lead_in.sequence not in sequences:
                known = ", ".join(sequences)
                reason = f"no sequence {lead_in.sequence!r} (known: {known})"
                problems.append(Problem("sequence", reason))
            if problems:
                self.report.rejected.append(Rejected(line, cells, problems))
                continue
            fields = lead_in.model_dump(exclude={"sequence", "consent"}, exclude_unset=True)
            email = fields["email"] = str(lead_in.email).lower()
            sequence = lead_in.sequence or self.sequence
            told = lead_in.consent.told(self._source, utcnow()) if lead_in.consent else {}
            if email in self._first_line:
                self.report.duplicates.append(Duplicate(line, self._first_line[email], email))
            else:
                self._first_line[email] = line
            if email in pending:
                earlier = pending[email]
                earlier.fields = _merge(earlier.fields, fields)
                earlier.sequence = lead_in.sequence or earlier.sequence
                earlier.told = earlier.told | told
            else:
                pending[email] = _Pending(line, fields, sequence, told)
        return pending

    def _segment_of_new(self, fields: dict[str, Any]) -> str:
        profile = dict.fromkeys(Lead.PROFILE_FIELDS) | {"timezone": "UTC", "attributes": {}}
        fields = _without_utm(fields)  # as Lead.profile(), which has no UTM
        profile |= fields | {"id": None, "segment": None, "stage": "lead", "score": 0.0}
        return self.definitions.choose_segment(profile)[0]

    def _upsert(self, pending: list[_Pending]) -> list[tuple[_Pending, Lead, bool]]:
        """One transaction for the batch. Another writer creating one of its emails
        meanwhile fails the transaction: it is tried again, and finds that lead."""
        for attempt in range(3):
            try:
                return self._upsert_once(pending)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _upsert_once(self, pending: list[_Pending]) -> list[tuple[_Pending, Lead, bool]]:
        choose = self.definitions.choose_segment
        written = []
        with self.intake.sessions.begin() as session:
            emails = [item.fields["email"] for item in pending]
            query = select(Lead).where(Lead.email.in_(emails))
            existing = {lead.email: lead for lead in session.scalars(query)}
            for item in pending:
                fields = item.fields
                lead = existing.get(fields["email"])
                created = lead is None
                if created:
                    # The columns' defaults, set now: the segment rules see them.
                    lead = Lead(**({"id": new_id(), "timezone": "UTC", "attributes": {},
                                    "stage": "lead", "score": 0.0} | fields))  # fmt: skip
                    session.add(lead)
                else:
                    if "phone" in fields and fields["phone"] != lead.phone:
                        _new_number_clears_bad_address(session, lead)
                    for name, value in first_touch_only(lead, fields).items():
                        if name == "attributes":
                            value = (lead.attributes or {}) | value
                        setattr(lead, name, value)
                if lead.segment is None:  # a lead keeps the segment it was first given
                    lead.segment = choose(lead.profile())[0]
                apply_intake_consent(session, lead, created, item.told,
                                     self.definitions.consent, "import")  # fmt: skip
                written.append((item, lead, created))
            session.flush()
            self._match_pending(session, [lead for _, lead, _ in written])
        return written

    def _match_pending(self, session, leads: list[Lead]) -> None:
        """Responses that arrived before their lead (one query for the batch): the
        Intake gives them to the leads that have some, in this transaction."""
        emails = {lead.email for lead in leads}
        _match_waiting_outcomes(session, leads, emails)
        phones = {lead.phone for lead in leads if lead.phone}
        keys = [Response.lead_email.in_(emails)]
        if phones:
            keys.append(Response.lead_phone.in_(phones))
        waiting = session.execute(
            select(Response.lead_email, Response.lead_phone)
            .where(Response.lead_id.is_(None), or_(*keys))
        ).all()  # fmt: skip
        if not waiting:
            return
        waiting_emails = {email for email, _ in waiting}
        waiting_phones = {phone for _, phone in waiting if phone}
        for lead in leads:
            if lead.email in waiting_emails or (lead.phone and lead.phone in waiting_phones):
                self.intake._match_pending(session, lead)

    # --- enrolling (on the event loop) ---------------------------------------------------

    async def _enroller(self, queue: asyncio.Queue) -> None:
        while (item := await queue.get()) is not None:
            line, lead, sequence, created = item
            if self._failures_in_a_row >= CONSECUTIVE_FAILURES:
                error = f"not tried: the {CONSECUTIVE_FAILURES} enrollments before it failed"
                self.report.enroll_failed.append(EnrollFailure(line, lead.email, lead.id, error))
                continue
            try:
                request = await self.intake.enroll(lead, sequence, new_lead=created)
            except Exception as exc:  # Temporal unreachable, a timeout...
                self._failures_in_a_row += 1
                error = f"{type(exc).__name__}: {exc}"
                self.report.enroll_failed.append(EnrollFailure(line, lead.email, lead.id, error))
            else:
                self._failures_in_a_row = 0
                self.report.enrolled += 1
                self.report.sequences[request.sequence.id] += 1
                self.progress("enrolled", 1)


def _fold_consent(data: dict[str, Any], problems: list[Problem]) -> tuple[dict[str, Any], bool]:
    """The row's consent columns as LeadIn's `consent` object, and whether flat columns
    (`email_consent`...) gave it. A `consent` cell is the API's object as JSON."""
    consent: dict[str, Any] = {}
    if "consent" in data:
        try:
            consent = json.loads(data.pop("consent"))
        except ValueError as exc:
            problems.append(Problem("consent", f"not JSON: {exc}"))
        if not isinstance(consent, dict):
            problems.append(Problem("consent", 'write a JSON object such as {"email": '
                                    '{"status": "given", "basis": "consent"}}'))  # fmt: skip
            consent = {}
    flat = False
    for channel in ("email", "sms"):
        for suffix, part in CONSENT_PARTS.items():
            value = data.pop(f"{channel}_consent{suffix}", None)
            if value is not None:
                flat = True
                value = value.lower() if part in ("status", "basis") else value
                consent.setdefault(channel, {})[part] = value
    if consent:
        data["consent"] = consent
    return data, flat


def _consent_columns(problems: list[Problem]) -> list[Problem]:
    """Problems of `consent.email.basis` named by their column, `email_consent_basis`."""
    parts = {part: suffix for suffix, part in CONSENT_PARTS.items()}
    named = []
    for problem in problems:
        where = problem.field.split(".")
        if where[0] == "consent" and len(where) == 3 and where[2] in parts:
            problem = Problem(f"{where[1]}_consent{parts[where[2]]}", problem.reason)
        elif where[0] == "consent" and len(where) == 2:
            problem = Problem(f"{where[1]}_consent", problem.reason)
        named.append(problem)
    return named


def _match_waiting_outcomes(session, leads: list[Lead], emails: set[str]) -> None:
    """CRM outcomes that arrived before their lead (one query for the batch)."""
    waiting = set(session.scalars(select(OutcomeEvent.lead_email).where(
        OutcomeEvent.lead_id.is_(None), OutcomeEvent.lead_email.in_(emails))))  # fmt: skip
    for lead in leads:
        if lead.email in waiting:
            match_waiting_outcomes(session, lead)


def _without_utm(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if name not in UTM_FIELDS}


def _merge(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    if any(earlier.get(name) for name in UTM_FIELDS):  # the first row's campaign stays
        later = _without_utm(later)
    merged = earlier | later
    if "attributes" in earlier and "attributes" in later:
        merged["attributes"] = earlier["attributes"] | later["attributes"]
    return merged
