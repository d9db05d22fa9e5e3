"""costs.yaml and its CSV twin: the entries they give, and each mistake reported with its
file, line and field, by `nurture validate` too."""

from __future__ import annotations

import json
import shutil
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from models.costs import check_costs, load_costs
from models.yaml_source import DefinitionError
from services.validate import validate
from testkit import FIXTURE_DEFINITIONS

GOOD = """\
currency: usd
costs:
  - {month: 2026-10, campaign: spring-webinar, amount: 12000}
  - {month: 2026-10, source: paid_search, amount: 4000.50, currency: EUR}
  - {month: 2026-11, amount: "30,000"}
"""
BAD = """\
currency: USD
costs:
  - month: 2026-13
    source: ads
    amount: -5
  - month: 2026-11
    campain: spring
    amount: 1
  - month: 2026-11
    segment:
    amount: 1
  - month: 2026-11
    segment: smb
    sequence: welcome
    amount: 1
"""
SPEND = """\
Month,Campaign,Source,Amount,Currency
2026-10,spring-webinar,,"12,000.50",usd
2026-11,,,300,EUR
"""
BAD_SPEND = """\
month,campaign,amount,currency
2026-1,x,5,USD
2026-11,x,3,
2026-12,x,-3,USD
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_entries_take_the_files_currency_unless_they_name_one(tmp_path):
    entries = load_costs(write(tmp_path / "costs.yaml", GOOD))
    assert [(e.month, e.dimension, e.value, e.amount, e.currency) for e in entries] == [
        ("2026-10", "campaign", "spring-webinar", Decimal(12000), "USD"),
        ("2026-10", "source", "paid_search", Decimal("4000.50"), "EUR"),
        ("2026-11", None, None, Decimal(30000), "USD"),
    ]  # fmt: skip


def test_each_mistake_is_named_by_file_line_and_field(tmp_path):
    path = write(tmp_path / "costs.yaml", BAD)
    entries, problems = check_costs(path)
    found = {(p.line, p.field): p.message for p in problems}
    assert entries == [] and {p.file for p in problems} == {str(path)}
    assert set(found) == {(3, "costs.0.month"), (5, "costs.0.amount"), (7, "costs.1.campain"),
                          (10, "costs.2.segment"), (14, "costs.3.sequence")}  # fmt: skip
    assert "2026-13 is not a month" in found[3, "costs.0.month"]
    assert "greater than or equal to 0" in found[5, "costs.0.amount"]
    assert "Extra inputs" in found[7, "costs.1.campain"]
    assert "no value: name the segment" in found[10, "costs.2.segment"]
    assert "not segment and sequence" in found[14, "costs.3.sequence"]
    with pytest.raises(DefinitionError):
        load_costs(path)


def test_a_csv_has_the_same_columns_and_its_lines_are_named(tmp_path):
    good = write(tmp_path / "spend.csv", SPEND)
    entries = load_costs(good)
    assert [(e.dimension, e.amount, e.currency) for e in entries] == [
        ("campaign", Decimal("12000.50"), "USD"), (None, Decimal(300), "EUR")]  # fmt: skip
    bad = write(tmp_path / "bad.csv", BAD_SPEND)
    found = {(p.line, p.field) for p in check_costs(bad)[1]}
    assert found == {(2, "month"), (3, "currency"), (4, "amount")}
    header = write(tmp_path / "header.csv", "month,channel,amount\n2026-10,x,5\n")
    assert {(p.line, p.field) for p in check_costs(header)[1]} == {(1, "channel"), (1, "currency")}


def test_nurture_validate_checks_costs_yaml(tmp_path):
    root = tmp_path / "defs"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    assert [p for p in validate(root) if p.severity == "error"] == []  # costs.yaml: optional
    write(root / "costs.yaml", GOOD)
    assert [p for p in validate(root) if p.severity == "error"] == []
    write(root / "costs.yaml", BAD)
    result = CliRunner().invoke(app, ["validate", str(root), "--json"])
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert {(Path(p["file"]).name, p["line"], p["field"]) for p in problems} >= {
        ("costs.yaml", 3, "costs.0.month"), ("costs.yaml", 10, "costs.2.segment")}  # fmt: skip
