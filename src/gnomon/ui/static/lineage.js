// The lineage graph as SVG: layers by longest path from the sources, left to right, edges with arrowheads.
//
// A layered (Sugiyama-style) drawing kept small: an edge that spans several layers gets a waypoint in
// each layer it crosses, so it runs in a lane of its own instead of through the boxes; the rows inside a
// layer are ordered by a few sweeps that put each node near the mean row of its neighbours.

import { s } from "./dom.js";

const NODE_HEIGHT = 34;
const ROW_GAP = 16;
const LANE_HEIGHT = 18;
const LAYER_GAP = 64;
const CHAR_WIDTH = 7.3;
const PAD = 20;
const SWEEPS = 4;
export const KIND_LABELS = {
  table: "table", topic: "topic", staging_query: "StagingQuery", group_by: "GroupBy", join: "Join",
};

/** Layer of each node: 0 for nodes nothing points to, else one more than its furthest predecessor. */
export function layers(nodes, edges) {
  const preds = new Map(nodes.map((n) => [n.id, []]));
  const succs = new Map(nodes.map((n) => [n.id, []]));
  for (const edge of edges) {
    if (preds.has(edge.to) && succs.has(edge.from)) {
      preds.get(edge.to).push(edge.from);
      succs.get(edge.from).push(edge.to);
    }
  }
  const waiting = new Map(nodes.map((n) => [n.id, preds.get(n.id).length]));
  const layer = new Map();
  const ready = nodes.filter((n) => waiting.get(n.id) === 0).map((n) => n.id);
  while (ready.length) {
    const id = ready.shift();
    layer.set(id, Math.max(0, ...preds.get(id).map((p) => layer.get(p) + 1)));
    for (const next of succs.get(id)) {
      waiting.set(next, waiting.get(next) - 1);
      if (waiting.get(next) === 0) ready.push(next);
    }
  }
  for (const n of nodes) if (!layer.has(n.id)) layer.set(n.id, 0); // a cycle: keep its nodes drawable
  return layer;
}

/** Columns of items (nodes, and waypoints of long edges) in sweep order, and each edge's chain of items. */
function order(nodes, edges, layer) {
  const kindOrder = Object.keys(KIND_LABELS);
  const columns = [];
  const item = new Map();
  const add = (entry) => {
    item.set(entry.id, entry);
    (columns[entry.layer] ||= []).push(entry);
  };
  [...nodes].sort((a, b) => kindOrder.indexOf(a.kind) - kindOrder.indexOf(b.kind) || a.label.localeCompare(b.label))
    .forEach((node) => add({ id: node.id, layer: layer.get(node.id), node, preds: [], succs: [] }));
  const chains = [];
  for (const edge of edges) {
    const from = item.get(edge.from);
    const to = item.get(edge.to);
    if (!from || !to) continue;
    const chain = [from];
    for (let l = from.layer + 1; l < to.layer; l++) {
      const waypoint = { id: `${edge.from}->${edge.to}@${l}`, layer: l, node: null, preds: [], succs: [] };
      add(waypoint);
      chain.push(waypoint);
    }
    chain.push(to);
    for (let i = 1; i < chain.length; i++) {
      chain[i - 1].succs.push(chain[i]);
      chain[i].preds.push(chain[i - 1]);
    }
    chains.push({ edge, chain });
  }
  const row = new Map();
  const number = (column) => column.forEach((entry, i) => row.set(entry.id, i));
  columns.forEach(number);
  const resort = (column, neighbours) => {
    const weight = (entry) => {
      const rows = neighbours(entry).map((n) => row.get(n.id));
      return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : row.get(entry.id);
    };
    const weights = new Map(column.map((entry) => [entry.id, weight(entry)]));
    column.sort((a, b) => weights.get(a.id) - weights.get(b.id) || row.get(a.id) - row.get(b.id));
    number(column);
  };
  const down = () => { for (let l = 1; l < columns.length; l++) resort(columns[l], (e) => e.preds); };
  for (let sweep = 0; sweep < SWEEPS; sweep++) {
    down();
    for (let l = columns.length - 2; l >= 0; l--) resort(columns[l], (e) => e.succs);
  }
  down(); // end reading left to right: each node next to what it reads
  return { columns, chains };
}

/** Where each item sits: x, y (its top), width and height; and the drawing's size. */
function place(columns) {
  const heightOf = (entry) => (entry.node ? NODE_HEIGHT + ROW_GAP : LANE_HEIGHT);
  const widths = columns.map((column) => Math.max(110, ...column.filter((e) => e.node)
    .map((e) => e.node.label.length * CHAR_WIDTH + 24)));
  const heights = columns.map((column) => column.reduce((sum, e) => sum + heightOf(e), 0));
  const tallest = Math.max(...heights);
  const position = new Map();
  let left = PAD;
  columns.forEach((column, index) => {
    let top = PAD + (tallest - heights[index]) / 2;
    for (const entry of column) {
      const height = entry.node ? NODE_HEIGHT : 0;
      const offset = entry.node ? 0 : LANE_HEIGHT / 2;
      position.set(entry.id, { x: left, y: top + offset, width: widths[index], height });
      top += heightOf(entry);
    }
    left += widths[index] + LAYER_GAP;
  });
  return { position, width: left - LAYER_GAP + PAD, height: tallest + 2 * PAD - ROW_GAP };
}

/** The SVG path of an edge through its chain: curves across the gaps, straight across waypoint columns. */
function edgePath(chain, position) {
  let d = "";
  for (let i = 0; i < chain.length - 1; i++) {
    const a = position.get(chain[i].id);
    const b = position.get(chain[i + 1].id);
    const x1 = a.x + a.width;
    const y1 = a.y + a.height / 2;
    const x2 = chain[i + 1].node ? b.x - 2 : b.x;
    const y2 = b.y + b.height / 2;
    const bend = (x2 - x1) / 2;
    d += `${i ? "L" : "M"}${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
    if (!chain[i + 1].node) d += ` L${b.x + b.width},${y2}`;
  }
  return d;
}

/** The graph {nodes, edges} as an SVG element; onSelect(id) is called when a node is clicked. */
export function lineageSvg(graph, { focus, onSelect }) {
  const { columns, chains } = order(graph.nodes, graph.edges, layers(graph.nodes, graph.edges));
  const { position, width, height } = place(columns);
  const svg = s("svg", { class: "lineage", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "lineage graph" });
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" }, s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }))));
  for (const { edge, chain } of chains) {
    const touches = focus && (edge.from === focus || edge.to === focus);
    svg.append(s("path", { class: `edge${touches ? " focused" : ""}`, "data-edge": `${edge.from}->${edge.to}`,
      d: edgePath(chain, position), "marker-end": "url(#arrow)" }, s("title", {}, `${edge.from} → ${edge.to}`)));
  }
  for (const column of columns) {
    for (const { node } of column.filter((e) => e.node)) {
      const at = position.get(node.id);
      svg.append(s("g", {
        class: `node kind-${node.kind}${node.id === focus ? " focused" : ""}`, "data-node-id": node.id, tabindex: 0,
        role: "button", transform: `translate(${at.x},${at.y})`, onclick: () => onSelect(node.id),
        onkeydown: (event) => { if (event.key === "Enter") onSelect(node.id); },
      },
      s("title", {}, `${KIND_LABELS[node.kind] || node.kind} ${node.label}\n${node.id}`),
      s("rect", { width: at.width, height: NODE_HEIGHT, rx: 6 }),
      s("text", { x: 12, y: NODE_HEIGHT / 2 + 4 }, node.label)));
    }
  }
  return svg;
}
