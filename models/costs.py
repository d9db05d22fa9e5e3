"""What marketing spent: `costs.yaml` in the definitions directory (optional), or a CSV
with the same columns, for the financial model's cost per lead, per SQL and CAC.

```yaml
currency: USD                 # of every entry that names none
costs:
  - {month: 2026-10, campaign: spring-webinar, amount: 12000}
  - {month: 2026-10, source: paid_search, amount: 4000.50, currency: EUR}
  - {month: 2026-11, amount: 30000}      # no dimension: the month's spend, in the total
```

An entry names at most one of `campaign`, `source`, `segment`, `sequence`. The CSV has
a header with the columns `month`, `amount`, `currency` (each row) and any of the four
dimensions; an empty cell is a dimension not given. Problems name the file, the line
and the field, as the other definitions' do.
"""

from __future__ import annotations

import csv
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.definitions import _LocatedValueError
from models.yaml_source import DefinitionError, DefinitionProblem, load_located

DIMENSIONS = ("campaign", "source", "segment", "sequence")
CSV_COLUMNS = ("month", *DIMENSIONS, "amount", "currency")
COSTS_FILE = "costs.yaml"
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_AMOUNT = re.compile(r"^(\d+|\d{1,3}(,\d{3})+)(\.\d+)?$")  # 12000, 12,000.50
_CURRENCY = r"^[A-Za-z]{3}$"


class CostEntry(BaseModel):
    """One month's spend, on one campaign, source, segment or sequence (or on none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    month: str
    campaign: str | None = None
    source: str | None = None
    segment: str | None = None
    sequence: str | None = None
    amount: Decimal = Field(ge=0, lt=Decimal("1e13"))
    currency: str | None = Field(default=None, pattern=_CURRENCY)

    @field_validator("month", mode="before")
    @classmethod
    def _a_month(cls, value: object) -> object:
        # YAML reads 2026-10-01 as a date: say what is wanted rather than "not a string".
        if not isinstance(value, str) or not _MONTH.match(value.strip()):
            raise ValueError(f"{value!s} is not a month: write it as 2026-10")
        return value.strip()

    @field_validator(*DIMENSIONS, mode="before")
    @classmethod
    def _named(cls, value: object, info) -> object:
        # Only a key written with nothing after it gets here with None.
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError(f"no value: name the {info.field_name}, or leave the key out")
        return value

    @field_validator("amount", mode="before")
    @classmethod
    def _plain_amount(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("should be an amount, such as 12000 or 12000.50")
        if isinstance(value, float):
            return Decimal(str(value))  # 12000.5, not its binary neighbour
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("-") and _AMOUNT.match(text[1:]):
                return Decimal(text[1:].replace(",", "")).copy_negate()  # refused by ge=0
            if not _AMOUNT.match(text):
                raise ValueError(f"{value!r} is not an amount: write it as 12000 or 12000.50")
            return Decimal(text.replace(",", ""))
        return value

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @model_validator(mode="after")
    def _one_dimension(self) -> CostEntry:
        named = [name for name in DIMENSIONS if getattr(self, name) is not None]
        if len(named) > 1:
            raise _LocatedValueError(
                (named[1],), f"an entry names one of {', '.join(DIMENSIONS)}, not "
                f"{' and '.join(named)}: give each its own entry",
            )  # fmt: skip
        return self

    @property
    def dimension(self) -> str | None:
        return next((name for name in DIMENSIONS if getattr(self, name) is not None), None)

    @property
    def value(self) -> str | None:
        return getattr(self, self.dimension) if self.dimension else None


class CostBook(BaseModel):
    """`costs.yaml`: the currency of the entries that name none, and the entries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = Field(pattern=_CURRENCY)
    costs: list[CostEntry] = Field(default_factory=list)

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    def entries(self) -> list[CostEntry]:
        """Every entry with its currency."""
        return [e if e.currency else e.model_copy(update={"currency": self.currency})
                for e in self.costs]  # fmt: skip


def load_costs(path: Path) -> list[CostEntry]:
    """The entries of a costs.yaml or a CSV (by its suffix); DefinitionError lists every
    problem."""
    entries, problems = check_costs(path)
    if problems:
        raise DefinitionError(problems)
    return entries


def check_costs(path: Path) -> tuple[list[CostEntry], list[DefinitionProblem]]:
    """The entries (none if any problem) and the problems of a costs file."""
    if not path.is_file():
        return [], [DefinitionProblem(str(path), None, None, "", "file is missing")]
    if path.suffix.lower() == ".csv":
        return _check_csv(path)
    try:
        source = load_located(path)
    except DefinitionError as exc:
        return [], exc.problems
    if not isinstance(source.data, dict):
        return [], [source.problem((), "expected a mapping at the top of the file")]
    try:
        return CostBook.model_validate(source.data).entries(), []
    except ValidationError as exc:
        return [], [source.problem(*_located(error, source.data)) for error in exc.errors()]


def costs_problems(root: Path) -> list[DefinitionProblem]:
    """`nurture validate`: the problems of the directory's costs.yaml, if it has one."""
    path = Path(root) / COSTS_FILE
    return check_costs(path)[1] if path.exists() else []


def _located(error: Any, data: Any) -> tuple[tuple, str]:
    """(location in the data, message) of a pydantic error: a missing field is located at
    its parent, a model-level error at the field it names."""
    loc: list = []
    node = data
    for part in error["loc"]:
        loc.append(part)
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if not (in_dict or in_list):
            break
        node = node[part]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _LocatedValueError):
        loc += cause.loc
    return tuple(loc), error["msg"].removeprefix("Value error, ")


def _check_csv(path: Path) -> tuple[list[CostEntry], list[DefinitionProblem]]:
    entries: list[CostEntry] = []
    problems: list[DefinitionProblem] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip().lower() for name in reader.fieldnames or ()]
        problems += _check_header(str(path), header)
        if problems:
            return [], problems
        reader.fieldnames = header
        for row in reader:
            fields = {k: v.strip() for k, v in row.items() if k and v and v.strip()}
            fields.setdefault("currency", None)  # required in a CSV row: reported below
            problems += _check_row(str(path), reader.line_num, fields, entries)
    return ([] if problems else entries), problems


def _check_header(file: str, header: list[str]) -> list[DefinitionProblem]:
    known = f"unknown column (columns: {', '.join(CSV_COLUMNS)})"
    problems = [DefinitionProblem(file, 1, None, name, known)
                for name in header if name not in CSV_COLUMNS]  # fmt: skip
    for name in ("month", "amount", "currency"):
        if name not in header:
            problems.append(DefinitionProblem(file, 1, None, name, "column is missing"))
    return problems


def _check_row(
    file: str, line: int, fields: dict, entries: list[CostEntry]
) -> list[DefinitionProblem]:
    if fields["currency"] is None:
        return [DefinitionProblem(file, line, None, "currency", "no currency (ISO 4217: USD)")]
    try:
        entries.append(CostEntry.model_validate(fields))
        return []
    except ValidationError as exc:
        located = [_located(error, fields) for error in exc.errors()]
        return [DefinitionProblem(file, line, None, ".".join(map(str, loc)), message)
                for loc, message in located]  # fmt: skip
