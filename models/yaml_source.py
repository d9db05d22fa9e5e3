"""YAML loading that remembers where every value came from.

Marketers need errors that say "sequences/trial.yaml:14:7 steps.2.duration: ...",
so we compose the YAML node tree ourselves and keep a map from the path of each
value (as pydantic reports it in `loc`) to its line and column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class DefinitionProblem:
    """One problem in a definition file, located as precisely as we can."""

    file: str
    line: int | None
    column: int | None
    field: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class DefinitionError(Exception):
    """Raised when definitions hold errors; carries every problem found."""

    def __init__(self, problems: list[DefinitionProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class LocatedYaml:
    """A parsed YAML document plus the position of every node in it."""

    def __init__(self, path: Path, data: Any, positions: dict[Loc, tuple[int, int]]):
        self.path = path
        self.data = data
        self.positions = positions

    def position(self, loc: Loc) -> tuple[int | None, int | None]:
        """Line and column (1-based) of the deepest known node on `loc`."""
        loc = tuple(loc)
        while loc:
            if loc in self.positions:
                return self.positions[loc]
            loc = loc[:-1]
        return self.positions.get((), (None, None))

    def problem(self, loc: Loc, message: str, severity: str = "error") -> DefinitionProblem:
        line, column = self.position(loc)
        field = ".".join(str(part) for part in loc)
        return DefinitionProblem(str(self.path), line, column, field, message, severity)


def load_located(path: Path) -> LocatedYaml:
    """Parse `path`, raising DefinitionError with the YAML syntax error's position."""
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError(
            [DefinitionProblem(str(path), line, column, "", f"YAML syntax error: {reason}")]
        ) from None
    positions: dict[Loc, tuple[int, int]] = {}
    data = _to_python(node, (), positions) if node is not None else None
    return LocatedYaml(path, data, positions)


def _to_python(node: yaml.Node, loc: Loc, positions: dict[Loc, tuple[int, int]]) -> Any:
    positions[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader(  # construct scalar keys with YAML's own typing
                ""
            ).construct_object(key_node)
            result[key] = _to_python(value_node, (*loc, key), positions)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*loc, i), positions) for i, item in enumerate(node.value)]
    return yaml.SafeLoader("").construct_object(node)
