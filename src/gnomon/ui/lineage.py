"""The lineage graph of a plan: tables and topics, through GroupBys, Joins and StagingQueries, to the
tables they write and the GroupBys chained over Joins."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gnomon.compile.plan import Plan, SourcePlan
from gnomon.ui.columns import staging_inputs


@dataclass
class Lineage:
    """The repo's data flow: tables, topics and objects, and edges from what is read to its reader."""

    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: set[tuple[str, str]] = field(default_factory=set)

    def add(self, kind: str, label: str) -> str:
        node_id = f"{kind}:{label}"
        self.nodes.setdefault(node_id, {"id": node_id, "kind": kind, "label": label})
        return node_id

    def link(self, source: str, target: str) -> None:
        self.edges.add((source, target))

    def neighbours(self, node_id: str) -> tuple[list[str], list[str]]:
        """The direct (upstream, downstream) neighbours of a node."""
        upstream = sorted(a for a, b in self.edges if b == node_id)
        downstream = sorted(b for a, b in self.edges if a == node_id)
        return upstream, downstream

    def connected(self, focus: str) -> set[str]:
        """``focus`` and everything upstream and downstream of it, transitively."""
        forward: dict[str, list[str]] = {}
        backward: dict[str, list[str]] = {}
        for a, b in self.edges:
            forward.setdefault(a, []).append(b)
            backward.setdefault(b, []).append(a)
        seen = {focus}
        for links in (forward, backward):
            pending = [focus]
            while pending:
                for other in links.get(pending.pop(), ()):
                    if other not in seen:
                        seen.add(other)
                        pending.append(other)
        return seen

    def to_json(self, keep: set[str] | None = None) -> dict[str, Any]:
        ids = sorted(self.nodes if keep is None else keep)
        return {
            "nodes": [self.nodes[i] for i in ids],
            "edges": [
                {"from": a, "to": b}
                for a, b in sorted(self.edges)
                if keep is None or (a in keep and b in keep)
            ],
        }


def _source_links(graph: Lineage, source: SourcePlan, target: str) -> None:
    """Edges from what a source reads to ``target``: its table (or upstream Join), topics and mutations."""
    if source.kind == "join" and source.upstream_join:
        graph.link(graph.add("join", source.upstream_join), target)
    else:
        graph.link(graph.add("table", source.table), target)
    if source.mutation_table:
        graph.link(graph.add("table", source.mutation_table), target)
    for topic in (source.topic, source.mutation_topic):
        if topic:
            graph.link(graph.add("topic", topic), target)


def build_lineage(plan: Plan) -> Lineage:
    """The lineage graph of a plan (node ids ``table:``, ``topic:``, ``group_by:``, ``join:``,
    ``staging_query:`` followed by the name)."""
    graph = Lineage()
    for name, group_by in plan.group_bys.items():
        node = graph.add("group_by", name)
        for source in group_by.sources:
            _source_links(graph, source, node)
        graph.link(node, graph.add("table", group_by.output_table))
    for name, join in plan.joins.items():
        node = graph.add("join", name)
        _source_links(graph, join.left, node)
        for part in join.parts:
            graph.link(graph.add("group_by", part.group_by), node)
        graph.link(node, graph.add("table", join.output_table))
    for name, query in plan.staging_queries.items():
        node = graph.add("staging_query", name)
        for table in staging_inputs(query) or []:
            graph.link(graph.add("table", table), node)
        graph.link(node, graph.add("table", query.output_table))
    return graph
