"""A sequence drawn as a graph: its steps as nodes, where each goes as labelled edges, laid
out top to bottom and rendered as SVG on the server (the console's sequence page).

Pure: a `Sequence` in, nodes, edges, a layout and SVG text out. The layout is a small
layered one (Sugiyama's steps, simply): loops are found by a depth-first walk from the
first step and drawn back up the right-hand side; every other step sits one row below the
lowest step that leads to it (longest path); an edge that skips rows passes through a
point in each row it crosses, so it runs beside the steps it skips instead of through
them; and each step takes the column of the step above it, a branch's steps share out the
columns around it, and a merge goes back to the leftmost: the main path stays in the
first column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import groupby

from markupsafe import Markup, escape

from models.definitions import (
    BranchStep,
    EmailStep,
    Sequence,
    SmsStep,
    SplitStep,
    WaitForStep,
    WaitStep,
)

END = "(end)"  # the node a sequence completes at (no step id has brackets)
HOLDOUT = "(holdout)"  # the node a split's holdout arms end at: sent nothing more

# Drawing sizes, in SVG pixels.
NODE_WIDTH, NODE_HEIGHT, NOTE_HEIGHT = 220, 58, 16
COLUMN_WIDTH, ROW_GAP, MARGIN, LANE_WIDTH = 250, 50, 16, 18
CHAR_WIDTH = 6.8  # about one character of 12 px sans-serif: what fits in a box
KIND_COLOURS = {  # fill, stripe: light fills keep the dark text readable
    "email": ("#eef4ff", "#2f5fd0"),
    "sms": ("#eefaf3", "#1d7a46"),
    "wait": ("#f6f6f6", "#6b6b6b"),
    "wait_for": ("#fff7e8", "#a86200"),
    "branch": ("#f7efff", "#7a3fb8"),
    "split": ("#eefafa", "#0f6f78"),
    "exit": ("#fff0f0", "#b3261e"),
    "end": ("#f0f0f0", "#333333"),
    "holdout": ("#f0f0f0", "#333333"),
}


@dataclass(frozen=True)
class Node:
    id: str
    kind: str  # the step's type, or "end" / "holdout"
    summary: str  # one line: channel and template, duration, condition, reason


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str = ""  # "if <condition>", "else", "responded", "timeout", "<arm> 50%"; "" next


@dataclass
class Layout:
    """Where everything goes: each node's (row, column), and each edge's points between
    its ends (a (row, column) in every row it crosses); `back` edges climb a lane on the
    right."""

    places: dict[str, tuple[int, int]]
    bends: dict[Edge, list[tuple[int, int]]] = field(default_factory=dict)
    back: list[Edge] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return 1 + max((row for row, _ in self._points()), default=0)

    @property
    def columns(self) -> int:
        return 1 + max((column for _, column in self._points()), default=0)

    def _points(self):
        yield from self.places.values()
        for points in self.bends.values():
            yield from points


@dataclass(frozen=True)
class SequenceGraph:
    sequence_id: str
    name: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def node(self, node_id: str) -> Node:
        return next(node for node in self.nodes if node.id == node_id)


# --- nodes and edges ---------------------------------------------------------------------------


def sequence_graph(sequence: Sequence) -> SequenceGraph:
    """Every step as a node (file order), then END if some path completes the sequence and
    HOLDOUT if a split has a holdout arm; every way out of a step as an edge (a split: one
    per arm, labelled with its name and share). Two ways out of a step to the same step
    are one edge, their labels joined ("responded / timeout")."""
    edges: dict[tuple[str, str], list[str]] = {}
    for step in sequence.steps:
        for label, target in _ways_out(sequence, step.id):
            edges.setdefault((step.id, target or END), []).append(label)
    nodes = [Node(step.id, step.type, describe_step(step, sequence)) for step in sequence.steps]
    if any(target == END for _, target in edges):
        nodes.append(Node(END, "end", "sequence completed"))
    if any(target == HOLDOUT for _, target in edges):
        nodes.append(Node(HOLDOUT, "holdout", "held out: sent nothing more"))
    joined = (Edge(s, t, " / ".join(filter(None, labels))) for (s, t), labels in edges.items())
    return SequenceGraph(sequence.id, sequence.name, tuple(nodes), tuple(joined))


def _ways_out(sequence: Sequence, step_id: str) -> list[tuple[str, str | None]]:
    """(label, target) of each outcome of the step; a None target completes the sequence."""
    step = sequence.step(step_id)
    if step.type == "exit":
        return []
    if isinstance(step, WaitForStep):
        return [("responded", sequence.after(step_id, "event")),
                ("timeout", sequence.after(step_id, "timeout"))]  # fmt: skip
    if isinstance(step, BranchStep):
        return [(f"if {step.condition}", sequence.after(step_id, "then")),
                ("else", sequence.after(step_id, "else"))]  # fmt: skip
    if isinstance(step, SplitStep):
        total = sum(arm.weight for arm in step.arms)
        return [(f"{arm.name} {arm.weight / total:.0%}",
                 HOLDOUT if arm.holdout else sequence.after(step_id, arm.name))
                for arm in step.arms]  # fmt: skip
    return [("", sequence.after(step_id))]


def describe_step(step, sequence: Sequence | None = None) -> str:
    """What a step does, in one line (a split's experiment is named by its `sequence`'s
    default when the step does not name it)."""
    if isinstance(step, EmailStep | SmsStep):
        return f"{'email' if step.type == 'email' else 'SMS'} {step.template}"
    if isinstance(step, WaitStep):
        return f"wait {duration_text(step.duration)}"
    if isinstance(step, WaitForStep):
        return f"{step.event} within {duration_text(step.timeout)}"
    if isinstance(step, BranchStep):
        return f"if {step.condition}"
    if isinstance(step, SplitStep):
        name = sequence.experiment_of(step) if sequence else step.experiment or step.id
        if step.winner:
            return f"{name}: ended, {step.winner} won"
        return f"{name}: {len(step.arms)} arms, {step.metric}"
    return f"exit: {step.reason}"


def reply_policy(sequence: Sequence) -> str:
    """What a reply and an out-of-office do to a lead in the sequence, in a sentence."""
    does = {
        "exit": "ends the sequence: nothing more is sent",
        "pause": f"holds its sends for {duration_text(sequence.reply_pause)} from the last "
                 "reply (waits go on)",
        "continue": "is scored, and the sequence goes on",
    }[sequence.on_reply]  # fmt: skip
    told = (", and is forwarded to the lead's owner (notify_owner)" if sequence.notify_owner
            else "")  # fmt: skip
    away = ("holds its sends until then" if sequence.on_out_of_office == "defer"
            else "changes nothing")  # fmt: skip
    return (
        f"A person's reply (on_reply: {sequence.on_reply}) {does}{told}. An out-of-office "
        f"naming a return date {away}."
    )


def duration_text(seconds: int) -> str:
    """3d, 1d 12h, 90s -> 1m 30s: each unit that is not zero, largest first (days, as
    definitions are mostly written: 14d rather than 2w)."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts)


# --- layout ------------------------------------------------------------------------------------


def layout(graph: SequenceGraph) -> Layout:
    """Rows by longest path over the edges that do not loop back, long edges bent through
    each row they cross, columns from the row above."""
    order = {node.id: index for index, node in enumerate(graph.nodes)}
    back = _back_edges(graph, order)
    forward = [edge for edge in graph.edges if edge not in back]
    row = _rows(graph, forward, order)
    # Each row's members: node ids, and (edge, row) for an edge passing through the row.
    members: dict[int, list] = {}
    for node in graph.nodes:
        members.setdefault(row[node.id], []).append(node.id)
    for edge in forward:
        for crossed in range(row[edge.source] + 1, row[edge.target]):
            members.setdefault(crossed, []).append((edge, crossed))
    column = _order_rows(members, forward, row, order)
    places = {node.id: (row[node.id], column[node.id]) for node in graph.nodes}
    bends = {
        edge: [(r, column[edge, r]) for r in range(row[edge.source] + 1, row[edge.target])]
        for edge in forward
    }
    return Layout(places, {edge: points for edge, points in bends.items() if points}, back)


def _back_edges(graph: SequenceGraph, order: dict[str, int]) -> list[Edge]:
    """Edges into a step still on the depth-first walk's path: the loops. The walk starts
    at the first step, then at any step it did not reach, in file order."""
    out: dict[str, list[Edge]] = {}
    for edge in graph.edges:
        out.setdefault(edge.source, []).append(edge)
    back: list[Edge] = []
    done: set[str] = set()
    for start in sorted(order, key=order.get):
        if start in done:
            continue
        path, stack = {start}, [(start, iter(out.get(start, [])))]
        done.add(start)
        while stack:
            node, edges = stack[-1]
            edge = next(edges, None)
            if edge is None:
                path.discard(node)
                stack.pop()
            elif edge.target in path:
                back.append(edge)
            elif edge.target not in done:
                done.add(edge.target)
                path.add(edge.target)
                stack.append((edge.target, iter(out.get(edge.target, []))))
    return back


def _rows(graph: SequenceGraph, forward: list[Edge], order: dict[str, int]) -> dict[str, int]:
    """Each node one row below the lowest node leading to it (the edges form no loop)."""
    into: dict[str, list[str]] = {node.id: [] for node in graph.nodes}
    for edge in forward:
        into[edge.target].append(edge.source)
    row: dict[str, int] = {}

    def place(node_id: str) -> int:
        if node_id not in row:
            row[node_id] = 1 + max((place(source) for source in into[node_id]), default=-1)
        return row[node_id]

    for node_id in sorted(order, key=order.get):
        place(node_id)
    return row


def _order_rows(members: dict[int, list], forward: list[Edge], row: dict[str, int],
                order: dict[str, int]) -> dict:  # fmt: skip
    """Column of each member, top row first. A member wants the leftmost column of what
    leads into it from the row above (so a merge returns to the main path); members that
    want the same column share out the columns around it (a branch opens to both sides,
    never left of the columns already taken). Real steps before edges passing through,
    then file order (an edge's: its target's)."""
    above: dict = {}  # member -> its members in the row above
    for edge in forward:
        chain = [edge.source, *((edge, r) for r in range(row[edge.source] + 1, row[edge.target])),
                 edge.target]  # fmt: skip
        for upper, lower in zip(chain, chain[1:], strict=False):
            above.setdefault(lower, []).append(upper)

    def file_order(member) -> int:
        return order[member] if isinstance(member, str) else order[member[0].target]

    column: dict = {}
    for r in sorted(members):

        def wanted(member) -> int:
            return min((column[upper] for upper in above.get(member, [])), default=0)

        ordered = sorted(members[r], key=lambda m: (wanted(m), not isinstance(m, str),
                                                    file_order(m)))  # fmt: skip
        free = 0
        for want, group in groupby(ordered, key=wanted):
            group = list(group)
            first = max(free, want - len(group) // 2)
            column.update((member, first + i) for i, member in enumerate(group))
            free = first + len(group)
    return column


# --- SVG ---------------------------------------------------------------------------------------


def render_svg(graph: SequenceGraph, notes: Mapping[str, str] | None = None) -> Markup:
    """The graph as an SVG image (escaped text, presentation attributes only: no script, no
    style attribute). `notes`: more lines under a node's summary (its figures; a new line
    for each "\\n"), by id."""
    notes = notes or {}
    placed = layout(graph)
    note_lines = max((note.count("\n") + 1 for note in notes.values()), default=0)
    height = NODE_HEIGHT + NOTE_HEIGHT * note_lines
    geometry = _Geometry(height)
    width = 2 * MARGIN + placed.columns * COLUMN_WIDTH + LANE_WIDTH * len(placed.back)
    total_height = 2 * MARGIN + placed.rows * (height + ROW_GAP) - ROW_GAP
    marker = f"arrow-{graph.sequence_id}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_height}" '
        f'viewBox="0 0 {width} {total_height}" role="img" '
        f'aria-labelledby="{marker}-title {marker}-desc" font-family="sans-serif" '
        'font-size="12">',
        f'<title id="{marker}-title">{escape(graph.name)}: the steps as a graph</title>',
        f'<desc id="{marker}-desc">{escape(_description(graph))}</desc>',
        f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#555555"/></marker></defs>',
    ]
    for edge in graph.edges:
        if edge not in placed.back:
            points = geometry.forward(placed, edge)
            parts.append(_edge_svg(points, edge.label, marker))
    right = MARGIN + placed.columns * COLUMN_WIDTH
    for lane, edge in enumerate(placed.back):
        parts.append(_edge_svg(geometry.back(placed, edge, right + lane * LANE_WIDTH),
                               edge.label, marker))  # fmt: skip
    for node in graph.nodes:
        parts.append(_node_svg(node, geometry.corner(placed.places[node.id]), height,
                               notes.get(node.id)))  # fmt: skip
    parts.append("</svg>")
    return Markup("".join(parts))


def _description(graph: SequenceGraph) -> str:
    ways = "; ".join(
        f"{edge.source} to {edge.target}" + (f" ({edge.label})" if edge.label else "")
        for edge in graph.edges
    )
    return f"{len(graph.nodes)} nodes. {ways}."


@dataclass(frozen=True)
class _Geometry:
    height: int  # of a node box

    def corner(self, place: tuple[int, int]) -> tuple[float, float]:
        row, column = place
        return MARGIN + column * COLUMN_WIDTH, MARGIN + row * (self.height + ROW_GAP)

    def forward(self, placed: Layout, edge: Edge) -> list[tuple[float, float]]:
        """Bottom of the source, down each row it crosses (beside that row's steps, never
        through them), top of the target."""
        sx, sy = self.corner(placed.places[edge.source])
        tx, ty = self.corner(placed.places[edge.target])
        points = [(sx + NODE_WIDTH / 2, sy + self.height)]
        for bend in placed.bends.get(edge, []):
            x, y = self.corner(bend)
            points += [(x + NODE_WIDTH / 2, y), (x + NODE_WIDTH / 2, y + self.height)]
        return [*points, (tx + NODE_WIDTH / 2, ty)]

    def back(self, placed: Layout, edge: Edge, lane_x: float) -> list[tuple[float, float]]:
        """Out of the source's right side, up the lane, into the target's right side."""
        sx, sy = self.corner(placed.places[edge.source])
        tx, ty = self.corner(placed.places[edge.target])
        lane = lane_x + LANE_WIDTH / 2
        return [(sx + NODE_WIDTH, sy + self.height / 2), (lane, sy + self.height / 2),
                (lane, ty + self.height / 2), (tx + NODE_WIDTH, ty + self.height / 2)]  # fmt: skip


def _edge_svg(points: list[tuple[float, float]], label: str, marker: str) -> str:
    path = " ".join(f"{x:g},{y:g}" for x, y in points)
    line = (f'<polyline points="{path}" fill="none" stroke="#555555" stroke-width="1.5" '
            f'marker-end="url(#{marker})"/>')  # fmt: skip
    if not label:
        return f"<g>{line}</g>"
    (x0, y0), (x1, y1) = points[0], points[1]
    x, y = x0 + (x1 - x0) * 0.5 + 4, y0 + (y1 - y0) * 0.5 + 4
    text = (f'<text x="{x:g}" y="{y:g}" fill="#222222" stroke="#ffffff" stroke-width="4" '
            f'paint-order="stroke">{escape(_fit(label, 26))}</text>')  # fmt: skip
    return f"<g><title>{escape(label)}</title>{line}{text}</g>"


def _node_svg(node: Node, corner: tuple[float, float], height: int, note: str | None) -> str:
    x, y = corner
    fill, stripe = KIND_COLOURS[node.kind]
    room = int((NODE_WIDTH - 20) / CHAR_WIDTH)
    kind = "" if node.id in (END, HOLDOUT) else f" ({node.kind})"
    lines = [
        f'<text x="{x + 12:g}" y="{y + 20:g}" font-weight="bold" fill="#111111">'
        f"{escape(_fit(node.id + kind, room))}</text>",
        f'<text x="{x + 12:g}" y="{y + 40:g}" fill="#333333">'
        f"{escape(_fit(node.summary, room))}</text>",
    ]
    note_lines = note.split("\n") if note else []
    for number, line in enumerate(note_lines):
        lines.append(f'<text x="{x + 12:g}" y="{y + 58 + number * NOTE_HEIGHT:g}" '
                     f'fill="#333333">{escape(_fit(line, room))}</text>')  # fmt: skip
    tooltip = " · ".join([f"{node.id}: {node.summary}", *note_lines])
    return (
        f'<g data-step="{escape(node.id)}"><title>{escape(tooltip)}</title>'
        f'<rect x="{x:g}" y="{y:g}" width="{NODE_WIDTH}" height="{height}" rx="6" '
        f'fill="{fill}" stroke="{stripe}" stroke-width="1.5"/>'
        f'<rect x="{x:g}" y="{y:g}" width="5" height="{height}" rx="2" fill="{stripe}"/>'
        + "".join(lines)
        + "</g>"
    )


def _fit(text: str, room: int) -> str:
    return text if len(text) <= room else text[: room - 1] + "…"
