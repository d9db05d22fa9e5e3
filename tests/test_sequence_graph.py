"""services/sequence_graph.py: a sequence's steps as nodes and edges, their layout, the SVG.

On the shipped sequences (`sequences/`), the fixture ones and a hand-written branchy one
whose nodes, edges and places are checked exactly: a wait_for whose timeout falls through
to the next step, a branch without `else`, a loop back up, an exit and an implicit end;
and a split, one edge per arm with its share, its holdout arm ending at HOLDOUT."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from models.definitions import Sequence
from services.definitions import load_definitions
from services.sequence_graph import (
    END,
    HOLDOUT,
    NODE_HEIGHT,
    NOTE_HEIGHT,
    Edge,
    Node,
    duration_text,
    layout,
    render_svg,
    reply_policy,
    sequence_graph,
)
from testkit import FIXTURE_DEFINITIONS, REPO

SVG = "{http://www.w3.org/2000/svg}"

BRANCHY = Sequence.model_validate(
    {
        "id": "branchy",
        "name": "Branchy <test>",
        "steps": [
            {"id": "hello", "type": "email", "template": "hello"},
            {"id": "check", "type": "wait_for", "event": "email.click", "timeout": "2d",
             "on_event": "warm"},
            {"id": "nudge", "type": "sms", "template": "ping"},
            {"id": "warm", "type": "branch", "if": "lead.score >= 10", "then": "offer"},
            {"id": "pause", "type": "wait", "duration": "36h", "next": "check"},
            {"id": "offer", "type": "email", "template": "followup"},
            {"id": "fork", "type": "branch", "if": "lead.score < 50", "then": "stop",
             "else": "last"},
            {"id": "stop", "type": "exit", "reason": "not for us"},
            {"id": "last", "type": "email", "template": "followup"},
        ],
    }
)  # fmt: skip

SPLIT = Sequence.model_validate(
    {
        "id": "split",
        "name": "Split",
        "steps": [
            {"id": "hello", "type": "email", "template": "hello"},
            {"id": "subject", "type": "split", "experiment": "subject_test", "arms": [
                {"name": "control", "weight": 2, "next": "long"},
                {"name": "short", "next": "brief"},
                {"name": "rest", "holdout": True},
            ]},
            {"id": "long", "type": "email", "template": "followup", "next": "cta"},
            {"id": "brief", "type": "sms", "template": "ping"},
            {"id": "cta", "type": "split", "winner": "b", "arms": [{"name": "a"},
                                                                   {"name": "b"}]},
        ],
    }
)  # fmt: skip


def all_sequences() -> list[Sequence]:
    shipped = load_definitions(REPO).sequences
    fixtures = load_definitions(FIXTURE_DEFINITIONS).sequences
    return [*shipped.values(), *fixtures.values(), SPLIT]


def test_the_branchy_sequence_has_exactly_its_nodes_and_edges():
    graph = sequence_graph(BRANCHY)
    assert graph.nodes == (
        Node("hello", "email", "email hello"),
        Node("check", "wait_for", "email.click within 2d"),
        Node("nudge", "sms", "SMS ping"),
        Node("warm", "branch", "if lead.score >= 10"),
        Node("pause", "wait", "wait 1d 12h"),
        Node("offer", "email", "email followup"),
        Node("fork", "branch", "if lead.score < 50"),
        Node("stop", "exit", "exit: not for us"),
        Node("last", "email", "email followup"),
        Node(END, "end", "sequence completed"),
    )
    assert graph.edges == (
        Edge("hello", "check"),
        Edge("check", "warm", "responded"),
        Edge("check", "nudge", "timeout"),
        Edge("nudge", "warm"),
        Edge("warm", "offer", "if lead.score >= 10"),
        Edge("warm", "pause", "else"),
        Edge("pause", "check"),
        Edge("offer", "fork"),
        Edge("fork", "stop", "if lead.score < 50"),
        Edge("fork", "last", "else"),
        Edge("last", END),
    )


def test_the_branchy_layout_opens_columns_for_branches_and_loops_back_on_the_side():
    placed = layout(sequence_graph(BRANCHY))
    assert placed.places == {
        "hello": (0, 0),
        "check": (1, 0),
        "nudge": (2, 0),
        "warm": (3, 0),
        "pause": (4, 0),  # file order: the else side first
        "offer": (4, 1),
        "fork": (5, 1),  # under `offer`
        "stop": (6, 0),
        "last": (6, 1),
        END: (7, 1),
    }
    # The response skips `nudge`'s row: it runs beside it, not through it.
    assert placed.bends == {Edge("check", "warm", "responded"): [(2, 1)]}
    assert placed.back == [Edge("pause", "check")]


def test_two_ways_to_the_same_step_are_one_edge_with_both_labels():
    sequence = Sequence.model_validate(
        {"id": "same", "name": "Same", "steps": [
            {"id": "ask", "type": "wait_for", "event": "email.reply", "timeout": "90s",
             "on_event": "done", "on_timeout": "done"},
            {"id": "skipped", "type": "wait", "duration": "1d"},
            {"id": "done", "type": "exit"},
        ]}
    )  # fmt: skip
    graph = sequence_graph(sequence)
    assert graph.edges == (Edge("ask", "done", "responded / timeout"), Edge("skipped", "done"))
    assert graph.node("ask").summary == "email.reply within 1m 30s"
    assert END not in [node.id for node in graph.nodes]  # every path exits


def test_a_split_has_an_edge_per_arm_with_its_share_and_its_holdout_ends():
    graph = sequence_graph(SPLIT)
    assert graph.nodes == (
        Node("hello", "email", "email hello"),
        Node("subject", "split", "subject_test: 3 arms, sql"),
        Node("long", "email", "email followup"),
        Node("brief", "sms", "SMS ping"),
        Node("cta", "split", "split_cta: ended, b won"),  # its default name
        Node(END, "end", "sequence completed"),
        Node(HOLDOUT, "holdout", "held out: sent nothing more"),
    )
    assert graph.edges == (
        Edge("hello", "subject"),
        Edge("subject", "long", "control 50%"),
        Edge("subject", "brief", "short 25%"),
        Edge("subject", HOLDOUT, "rest 25%"),
        Edge("long", "cta"),
        Edge("brief", "cta"),
        Edge("cta", END, "a 50% / b 50%"),
    )
    placed = layout(graph)
    assert placed.places["subject"] == (1, 0)
    assert {placed.places[arm] for arm in ("long", "brief", HOLDOUT)} == {(2, 0), (2, 1), (2, 2)}
    svg = ET.fromstring(str(render_svg(graph)))
    boxes = {g.get("data-step"): " ".join(t.text for t in g.iter(f"{SVG}text"))
             for g in svg.iter(f"{SVG}g") if g.get("data-step")}  # fmt: skip
    assert boxes[HOLDOUT] == "(holdout) held out: sent nothing more"
    assert boxes["subject"] == "subject (split) subject_test: 3 arms, sql"


@pytest.mark.parametrize("seconds, text", [(86400, "1d"), (1209600, "14d"), (7200, "2h"),
                                           (90061, "1d 1h 1m 1s"), (45, "45s")])  # fmt: skip
def test_durations_read_as_written(seconds, text):
    assert duration_text(seconds) == text


@pytest.mark.parametrize("sequence", all_sequences(), ids=lambda s: s.id)
def test_every_step_and_every_way_out_is_drawn(sequence):
    graph = sequence_graph(sequence)
    steps = [step.id for step in sequence.steps]
    ids = [node.id for node in graph.nodes]
    drawn = {(edge.source, edge.target) for edge in graph.edges}
    expected = {(s, t) for s in steps for t in sequence.successors(s)}
    expected |= {(s, END) for s in steps if sequence.step(s).type not in ("exit", "branch",
                                                                           "wait_for", "split")
                 and sequence.after(s) is None}  # fmt: skip
    for split in sequence.splits():  # each arm: its step, the end, or (a holdout) HOLDOUT
        expected |= {(split.id, HOLDOUT if arm.holdout else sequence.after(split.id, arm.name)
                      or END) for arm in split.arms}  # fmt: skip
    completes = any(target == END for _, target in expected)
    holds_out = any(target == HOLDOUT for _, target in expected)
    assert ids == steps + ([END] if completes else []) + ([HOLDOUT] if holds_out else [])
    assert drawn == expected

    placed = layout(graph)
    assert set(placed.places) == set(ids)
    taken = list(placed.places.values()) + [p for ps in placed.bends.values() for p in ps]
    assert len(taken) == len(set(taken)), "two things in one place"
    for edge in graph.edges:
        if edge not in placed.back:
            source, target = placed.places[edge.source][0], placed.places[edge.target][0]
            assert source < target
            assert [row for row, _ in placed.bends.get(edge, [])] == list(range(source + 1, target))


def test_the_shipped_sequences_branch_into_two_columns():
    saas = load_definitions(REPO).sequences["saas_trial"]
    placed = layout(sequence_graph(saas))
    assert placed.places["case_study"][0] == placed.places["demo_offer"][0]
    assert {placed.places["case_study"][1], placed.places["demo_offer"][1]} == {0, 1}
    assert placed.places["welcome"] == (0, 0) and placed.back == []
    assert END not in placed.places  # both of its ends are exits


@pytest.mark.parametrize("sequence", [BRANCHY, *all_sequences()], ids=lambda s: s.id)
def test_the_svg_is_well_formed_names_every_step_and_runs_nothing(sequence):
    notes = {sequence.steps[0].id: "sent 3 · opened 1\nSQLs 1"}  # two lines
    svg = str(render_svg(sequence_graph(sequence), notes))
    root = ET.fromstring(svg)  # escaped: "<" in a condition or a name does not break it
    assert root.get("role") == "img" and root.get("aria-labelledby")
    title_id = root.get("aria-labelledby").split()[0]
    assert root.find(f"{SVG}title").get("id") == title_id
    steps = {g.get("data-step") for g in root.iter(f"{SVG}g") if g.get("data-step")}
    ends = {END, HOLDOUT} & {n.id for n in sequence_graph(sequence).nodes}
    assert steps == {step.id for step in sequence.steps} | ends
    texts = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    for step in sequence.steps:
        assert step.id in texts
    lines = [t.text for t in root.iter(f"{SVG}text")]
    assert "sent 3 · opened 1" in lines and "SQLs 1" in lines
    boxes = {rect.get("height") for rect in root.iter(f"{SVG}rect")}
    assert boxes == {str(NODE_HEIGHT + 2 * NOTE_HEIGHT)}  # every box has room for them
    for element in root.iter():
        assert element.tag not in (f"{SVG}script", f"{SVG}style", f"{SVG}foreignObject")
        assert not [name for name in element.attrib if name.startswith("on") or name == "style"]


def test_labels_and_loops_are_drawn():
    svg = str(render_svg(sequence_graph(BRANCHY)))
    root = ET.fromstring(svg)
    assert root.find(f"{SVG}title").text == "Branchy <test>: the steps as a graph"
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("paint-order")]
    assert sorted(labels) == sorted(["responded", "timeout", "if lead.score >= 10", "else",
                                     "if lead.score < 50", "else"])  # fmt: skip
    lines = root.findall(f".//{SVG}polyline")
    assert len(lines) == len(sequence_graph(BRANCHY).edges)
    # The loop climbs: its last point is above its first.
    loop = lines[-1].get("points").split()
    assert float(loop[-1].split(",")[1]) < float(loop[0].split(",")[1])


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({}, "A person's reply (on_reply: exit) ends the sequence: nothing more is sent. An "
             "out-of-office naming a return date holds its sends until then."),
        ({"on_reply": "pause", "reply_pause": 36 * 3600, "notify_owner": True,
          "on_out_of_office": "ignore"},
         "A person's reply (on_reply: pause) holds its sends for 1d 12h from the last reply "
         "(waits go on), and is forwarded to the lead's owner (notify_owner). An "
         "out-of-office naming a return date changes nothing."),
        ({"on_reply": "continue"}, "A person's reply (on_reply: continue) is scored, and the "
         "sequence goes on. An out-of-office naming a return date holds its sends until then."),
    ],
)  # fmt: skip
def test_the_reply_policy_in_a_sentence(changes, said):
    month = load_definitions(FIXTURE_DEFINITIONS).sequences["month"]
    assert reply_policy(month.model_copy(update=changes)) == said
