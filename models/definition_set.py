"""Everything one definitions directory holds, loaded and checked
(`services.definitions.load_definitions` builds it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.definitions import ConsentPolicy, DeliveryPolicy, SalesTeam, Segments, Sequence
from models.forms import FormBook
from models.jinja import evaluate_condition
from models.scoring_model import ScoringBook, ScoringModel
from models.yaml_source import DefinitionProblem


@dataclass
class Definitions:
    root: Path
    sequences: dict[str, Sequence]
    segments: Segments
    scoring: ScoringBook
    sales: SalesTeam
    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    forms: FormBook = field(default_factory=FormBook)
    warnings: list[DefinitionProblem] = field(default_factory=list)
    # delivery.yaml's `consent:` (defaults, double opt-in, SMS help): intake's, not a send's.
    consent: ConsentPolicy = field(default_factory=ConsentPolicy)

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    def choose_segment(self, lead: dict[str, Any]) -> tuple[str, str]:
        """(segment id, sequence id) for a lead: the first matching rule, else the default."""
        for segment in self.segments.segments:
            if evaluate_condition(segment.when, {"lead": lead}):
                return segment.id, segment.sequence
        return self.segments.default.id, self.segments.default.sequence

    def scoring_model(self, segment_id: str | None) -> ScoringModel:
        """The scoring model a segment uses (the file's default_model if it names none)."""
        named = {s.id: s.scoring_model for s in self.segments.segments}
        named[self.segments.default.id] = self.segments.default.scoring_model
        return self.scoring.model(named.get(segment_id or ""))

    def holdout(self, segment_id: str | None) -> float:
        """The percentage of a segment's leads held out of any nurture (0: none)."""
        for segment in (*self.segments.segments, self.segments.default):
            if segment.id == segment_id:
                return segment.holdout
        return 0.0
