// Gnomon's web UI: a single-page app over the JSON API (/v1/...), one view per hash route.

import { api, ApiError } from "./api.js";
import { barChart, groupedBarChart, lineChart, PALETTE } from "./charts.js";
import { fmtDuration, fmtNumber, fmtPct, fmtShort, fmtTime, fmtValue, h } from "./dom.js";
import { KIND_LABELS, lineageSvg } from "./lineage.js";

const NAV = [
  ["catalog", "Catalog"], ["lineage", "Lineage"], ["partitions", "Partitions"], ["runs", "Runs"],
  ["freshness", "Freshness"], ["quality", "Quality"], ["consistency", "Consistency"],
];
const OBJECT_KINDS = ["group_by", "join", "staging_query"];

// ------------------------------------------------------------------ routing

/** The current hash route: its path segments (decoded) and its query parameters. */
function currentRoute() {
  const hash = window.location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = hash.split("?");
  const segments = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { segments, query: new URLSearchParams(search) };
}

/** A hash link for path segments and query parameters (empty parameters left out). */
function link(segments, query = {}) {
  const path = segments.map(encodeURIComponent).join("/");
  const params = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== ""));
  const search = params.toString();
  return `#/${path}${search ? `?${search}` : ""}`;
}

const VIEWS = {
  catalog: catalogView, object: objectView, lineage: lineageView, partitions: partitionsView, runs: runsView,
  freshness: freshnessView, quality: qualityView, consistency: consistencyView,
};

let renderTicket = 0;

async function render() {
  const hash = window.location.hash;
  const { segments, query } = currentRoute();
  const [name = "catalog", ...args] = segments;
  const view = VIEWS[name];
  const section = name === "object" ? "catalog" : name;
  for (const a of document.querySelectorAll("nav.top a")) {
    a.classList.toggle("active", a.dataset.view === section);
  }
  const main = document.getElementById("view");
  const ticket = ++renderTicket;
  main.setAttribute("aria-busy", "true");
  main.replaceChildren(h("div", { class: "loading" }, h("span", { class: "spinner" }), "Loading…"));
  let content;
  try {
    content = view ? await view(args, query) : notFound(name);
  } catch (error) {
    content = errorBox(error);
  }
  if (ticket !== renderTicket) return; // a newer route started meanwhile
  main.replaceChildren(content);
  main.dataset.route = hash; // which route the view shows (tests wait for it)
  main.removeAttribute("aria-busy");
  document.title = `${main.querySelector("h1")?.textContent || "Gnomon"} · Gnomon`;
}

function notFound(name) {
  return page(`No view “${name}”`, "", h("p", {}, "Pick a view in the bar above."));
}

// ------------------------------------------------------------------ shared pieces

function page(title, subtitle, ...content) {
  return h("section", { class: "page" },
    h("header", { class: "page-head" }, h("h1", {}, title), subtitle ? h("p", { class: "subtitle" }, subtitle) : null),
    ...content);
}

function card(title, ...content) {
  return h("div", { class: "card" }, title ? h("h2", {}, title) : null, ...content);
}

function empty(text, ...more) {
  return h("div", { class: "empty" }, h("p", {}, text), ...more);
}

function errorBox(error) {
  const status = error instanceof ApiError ? error.status : null;
  return h("div", { class: "error", role: "alert" },
    h("strong", {}, status === 403 ? "Not allowed" : status === 0 ? "Server unreachable" : "Error"),
    h("p", {}, error.message));
}

function badge(status) {
  const text = status || "unknown";
  return h("span", { class: `badge status-${text.replace(/[^a-z_]/gi, "").toLowerCase()}` }, text);
}

/** A table: columns [header, cell(row) -> node or text, class?]; rowAttrs(row) gives each row's attributes. */
function table(columns, rows, { className = "", rowAttrs = () => ({}) } = {}) {
  return h("div", { class: "table-wrap" }, h("table", { class: `data ${className}` },
    h("thead", {}, h("tr", {}, columns.map(([header, , cls]) => h("th", { class: cls }, header)))),
    h("tbody", {}, rows.map((row) => h("tr", rowAttrs(row),
      columns.map(([, cell, cls]) => h("td", { class: cls }, cell(row))))))));
}

function objectLink(kind, name) {
  return h("a", { href: link(["object", kind, name]) }, name);
}

/** A lineage node id (`kind:name`) as a link: objects to their page, tables and topics to the graph. */
function nodeLink(id) {
  const [kind, ...rest] = id.split(":");
  const name = rest.join(":");
  const href = OBJECT_KINDS.includes(kind) ? link(["object", kind, name]) : link(["lineage", id]);
  return h("a", { class: `node-chip kind-${kind}`, href, title: id }, h("span", { class: "kind" }, KIND_LABELS[kind] || kind), name);
}

function selector(label, current, options, hrefFor) {
  return h("div", { class: "selector", role: "group", "aria-label": label }, h("span", {}, label),
    options.map((value) => h("a", { href: hrefFor(value), class: String(value) === String(current) ? "active" : "",
      "data-value": value }, String(value))));
}

// ------------------------------------------------------------------ catalog

async function catalogView(args, query) {
  const input = h("input", { id: "search", type: "search", value: query.get("q") || "", autocomplete: "off",
    placeholder: "Search names, owners, tags, descriptions, features…", "aria-label": "search the catalog" });
  const kind = h("select", { id: "kind", "aria-label": "kind" },
    h("option", { value: "" }, "every kind"),
    OBJECT_KINDS.map((k) => h("option", { value: k, selected: query.get("kind") === k }, KIND_LABELS[k])));
  const results = h("div", { class: "results" });
  const count = h("span", { class: "count" });
  let ticket = 0;

  async function search(setHash) {
    const mine = ++ticket;
    const params = { q: input.value.trim(), kind: kind.value };
    if (setHash) {
      history.replaceState(null, "", link(["catalog"], params));
      document.getElementById("view").dataset.route = window.location.hash;
    }
    results.setAttribute("aria-busy", "true");
    try {
      const answer = await api("/v1/catalog", params);
      if (mine !== ticket) return;
      count.textContent = `${answer.objects.length} object${answer.objects.length === 1 ? "" : "s"}`;
      results.replaceChildren(catalogTable(answer.objects, params.q, (tag) => {
        input.value = tag;
        search(true);
      }));
    } catch (error) {
      if (mine === ticket) results.replaceChildren(errorBox(error));
    } finally {
      if (mine === ticket) results.removeAttribute("aria-busy");
    }
  }
  let timer;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => search(true), 150);
  });
  kind.addEventListener("change", () => search(true));
  await search(false);
  setTimeout(() => input.focus(), 0);
  return page("Catalog", "Every GroupBy, Join and StagingQuery of the repo, with its owner, tags and features.",
    h("div", { class: "toolbar" }, input, kind, count), results);
}

function catalogTable(objects, q, onTag) {
  if (!objects.length) {
    return q ? empty(`Nothing matches “${q}”.`) : empty("This repo defines no objects yet.",
      h("p", {}, "Define a GroupBy or a Join in a Python file of the repo, then reload."));
  }
  return table([
    ["Kind", (o) => h("span", { class: `kind-tag kind-${o.kind}` }, KIND_LABELS[o.kind] || o.kind)],
    ["Name", (o) => h("div", {}, objectLink(o.kind, o.name), o.online ? h("span", { class: "online-dot", title: "served online" }, "online") : null)],
    ["Owner", (o) => o.owner || h("span", { class: "muted" }, "–"), "nowrap"],
    ["Tags", (o) => h("div", { class: "chips tags" }, (o.tags || []).map((tag) =>
      h("button", { type: "button", class: "chip", "data-tag": tag, title: `search “${tag}”`, onclick: () => onTag(tag) }, tag)))],
    ["Description", (o) => h("span", { class: "description" }, o.description || ""), "wide"],
    ["Features", (o) => h("span", { title: (o.features || []).slice(0, 40).join("\n") }, String((o.features || []).length)), "num"],
  ], objects, { className: "catalog", rowAttrs: (o) => ({ "data-object": `${o.kind}/${o.name}` }) });
}

// ------------------------------------------------------------------ one object

async function objectView([kind, name]) {
  const o = await api(`/v1/objects/${encodeURIComponent(kind)}/${encodeURIComponent(name)}`);
  const id = `${o.kind}:${o.name}`;
  const links = h("div", { class: "links" },
    h("a", { class: "button", href: link(["lineage", id]) }, "Lineage"),
    o.output_table ? h("a", { class: "button", href: link(["quality", o.output_table]) }, "Quality") : null,
    o.output_table ? h("a", { class: "button", href: link(["partitions"], { table: o.output_table }) }, "Partitions") : null,
    o.kind === "join" ? h("a", { class: "button", href: link(["consistency", o.name]) }, "Consistency") : null);
  const facts = h("dl", { class: "facts" },
    fact("Owner", o.owner || h("span", { class: "muted" }, "not set")),
    fact("Tags", (o.tags || []).length ? h("div", { class: "chips" }, o.tags.map((t) =>
      h("a", { class: "chip", href: link(["catalog"], { q: t }) }, t))) : h("span", { class: "muted" }, "none")),
    fact("Description", o.description || h("span", { class: "muted" }, "none")),
    fact("Defined in", h("code", {}, o.defined_in || "–")),
    fact("Output table", o.output_table ? h("code", {}, o.output_table) : "–"),
    fact("Online", o.online ? "yes" : "no"),
    fact("Partitions", partitionsSummary(o.partitions)));
  const sql = Object.entries(o.sql || {});
  return page(h("span", {}, h("span", { class: `kind-tag kind-${o.kind}` }, KIND_LABELS[o.kind] || o.kind), " ", o.name),
    o.description || "",
    links,
    h("div", { class: "grid two" },
      card("Definition", facts),
      card("Lineage",
        h("h3", {}, "Upstream"), nodeList(o.upstream),
        h("h3", {}, "Downstream"), nodeList(o.downstream))),
    card(`Output columns${o.columns_from ? ` (from the ${o.columns_from})` : ""}`,
      (o.columns || []).length ? table([["Column", (c) => h("code", {}, c.name)], ["Type", (c) => h("code", { class: "type" }, c.type)]],
        o.columns, { className: "columns" }) : empty("No columns known yet.")),
    card("Compiled SQL", sql.length ? sql.map(([label, text]) =>
      h("details", { class: "sql", open: true, "data-sql": label }, h("summary", {}, label), h("pre", {}, h("code", {}, text))))
      : empty("This object compiles to no SQL block.")),
    card("Plan", h("details", { class: "plan" }, h("summary", {}, "The compiled plan (JSON)"),
      h("pre", {}, h("code", {}, JSON.stringify(o.definition, null, 2))))));
}

function fact(label, value) {
  return [h("dt", {}, label), h("dd", {}, value)];
}

function partitionsSummary(p) {
  if (!p || !p.count) return h("span", { class: "muted" }, "none written yet");
  return `${fmtNumber(p.count)} partition${p.count === 1 ? "" : "s"}, ${p.first} … ${p.last}`;
}

function nodeList(ids) {
  return (ids || []).length ? h("div", { class: "chips" }, ids.map(nodeLink)) : h("p", { class: "muted" }, "none");
}

// ------------------------------------------------------------------ lineage

/** Output tables that nothing reads: each object has one, so they are drawn only when asked for. */
function sinkOutputs(graph) {
  const writers = new Map(graph.nodes.map((n) => [n.id, n.kind]));
  const reads = new Set(graph.edges.map((e) => e.from));
  return new Set(graph.edges.filter((e) => OBJECT_KINDS.includes(writers.get(e.from)) && writers.get(e.to) === "table"
    && !reads.has(e.to)).map((e) => e.to));
}

async function lineageView([focus], query) {
  const graph = await api("/v1/lineage", { focus });
  if (!graph.nodes.length) {
    return page("Lineage", "", empty("Nothing to draw: the repo defines no objects yet."));
  }
  const withOutputs = query.get("outputs") === "1";
  const hidden = withOutputs ? new Set() : sinkOutputs(graph);
  const shown = {
    nodes: graph.nodes.filter((n) => !hidden.has(n.id) || n.id === focus),
    edges: graph.edges.filter((e) => (!hidden.has(e.to) || e.to === focus)),
  };
  const here = (id, outputs = withOutputs) => link(id ? ["lineage", id] : ["lineage"], { outputs: outputs ? 1 : "" });
  const svg = lineageSvg(shown, { focus, onSelect: (id) => { window.location.hash = here(id); } });
  const toggle = h("label", { class: "toggle" },
    h("input", { type: "checkbox", id: "show-outputs", checked: withOutputs,
      onchange: (event) => { window.location.hash = here(focus, event.target.checked); } }),
    ` output tables nothing reads (${withOutputs ? sinkOutputs(graph).size : hidden.size})`);
  const legend = h("div", { class: "legend" }, Object.entries(KIND_LABELS).map(([kind, label]) =>
    h("span", { class: `legend-item kind-${kind}` }, h("span", { class: "swatch" }), label)), toggle);
  const focused = focus ? graph.nodes.find((n) => n.id === focus) : null;
  const [kind, ...rest] = (focus || "").split(":");
  const info = focus ? h("div", { class: "focus-bar" },
    h("span", {}, "Focused on ", h("strong", {}, focused ? focused.label : focus), ": what it reads and what reads it."),
    OBJECT_KINDS.includes(kind) ? h("a", { class: "button", href: link(["object", kind, rest.join(":")]) }, "Open definition") : null,
    h("a", { class: "button", href: here(null) }, "Show everything")) : null;
  return page("Lineage", "Tables and topics feed GroupBys, GroupBys feed Joins, Joins feed chained GroupBys. Click a node to focus on it.",
    info, legend, h("div", { class: "card graph-wrap" }, svg));
}

// ------------------------------------------------------------------ partitions

async function partitionsView(args, query) {
  const days = Number(query.get("days")) || 30;
  const table = query.get("table") || undefined;
  const answer = await api("/v1/partitions", { days, end: query.get("end"), table });
  const selectorBar = h("div", { class: "toolbar" },
    selector("Days", days, [30, 60, 90], (d) => link(["partitions"], { days: d, table, end: query.get("end") })),
    table ? h("a", { class: "button", href: link(["partitions"], { days }) }, "Every table") : null);
  const gaps = answer.tables.reduce((n, t) => n + t.missing.length, 0);
  const subtitle = `${answer.start} … ${answer.end}: ${answer.tables.length} table${answer.tables.length === 1 ? "" : "s"}, ` +
    `${gaps} missing partition${gaps === 1 ? "" : "s"}.`;
  if (!answer.tables.length) {
    return page("Partitions", subtitle, selectorBar, empty("No tables with partitions in these days."));
  }
  const legend = h("div", { class: "legend" },
    h("span", { class: "legend-item" }, h("span", { class: "cell-sample present" }), "present"),
    h("span", { class: "legend-item" }, h("span", { class: "cell-sample missing" }), "missing (a gap, or due and not written)"),
    h("span", { class: "legend-item" }, h("span", { class: "cell-sample none" }), "not expected"));
  return page("Partitions", subtitle, selectorBar, legend, h("div", { class: "card calendar-wrap" }, calendar(answer)));
}

function calendar(answer) {
  const days = answer.days;
  const months = [];
  for (const ds of days) {
    const month = ds.slice(0, 7);
    if (months.length && months[months.length - 1].month === month) months[months.length - 1].span += 1;
    else months.push({ month, span: 1 });
  }
  // one fixed width per day cell, so that 90 days still fit beside the table names; labels never widen a column
  const cell = days.length <= 31 ? 18 : days.length <= 62 ? 11 : 8;
  const dense = days.length > 31;
  const label = (text) => h("span", { class: "label" }, text);
  const head = [
    h("tr", {}, h("th", { class: "table-name", rowspan: 2 }, "Table"), h("th", { class: "role", rowspan: 2 }, "Role"),
      months.map((m) => h("th", { class: "month", colspan: m.span }, m.span * cell >= 48 ? label(m.month) : "")),
      h("th", { class: "num", rowspan: 2 }, "Gaps")),
    h("tr", {}, days.map((ds) => {
      const day = Number(ds.slice(8));
      return h("th", { class: "day", title: ds }, !dense || day % 5 === 0 ? label(String(day)) : "");
    })),
  ];
  const rows = answer.tables.map((t) => {
    const present = new Set(t.present);
    const missing = new Set(t.missing);
    return h("tr", { "data-table": t.table },
      h("th", { class: "table-name" }, h("a", { href: link(["quality", t.table]), title: `data quality of ${t.table}` }, t.table)),
      h("td", { class: "role" }, h("span", { class: `role-tag role-${t.role}` }, t.role)),
      days.map((ds) => {
        const state = missing.has(ds) ? "missing" : present.has(ds) ? "present" : "none";
        const text = state === "missing" ? "missing: a gap between written partitions, or due and not written"
          : state === "present" ? "present" : "not expected";
        return h("td", { class: `cell ${state}`, "data-ds": ds, "data-state": state, title: `${t.table} ds=${ds}: ${text}` });
      }),
      h("td", { class: `num${t.missing.length ? " gap-count" : ""}` }, String(t.missing.length)));
  });
  return h("table", { class: `calendar${days.length > 62 ? " dense" : ""}`, style: `--cell: ${cell}px` },
    h("thead", {}, head), h("tbody", {}, rows));
}

// ------------------------------------------------------------------ runs

async function runsView(args, query) {
  const days = query.get("days") || undefined;
  const answer = await api("/v1/runs", { days, ds: query.get("ds") });
  const runs = answer.runs || [];
  const bar = h("div", { class: "toolbar" }, selector("Days", days || "", [1, 3, 7, 30], (d) => link(["runs"], { days: d })));
  if (!runs.length) {
    return page("Runs", "The task attempts that gnomon run recorded, latest day first, each day in the order it ran.", bar,
      empty("No runs recorded yet.", h("p", {}, "Run ", h("code", {}, "gnomon run --ds YYYY-MM-DD"),
        " (from cron or Airflow) and its task attempts show up here.")));
  }
  const counts = {};
  for (const r of runs) counts[r.status] = (counts[r.status] || 0) + 1;
  const summary = h("div", { class: "summary" }, Object.entries(counts).map(([status, n]) =>
    h("span", { class: "summary-item" }, badge(status), ` ${n}`)));
  return page("Runs", "The task attempts that gnomon run recorded, latest day first, each day in the order it ran.", bar, summary, card(null, table([
    ["Day", (r) => r.ds, "nowrap"],
    ["Task", (r) => h("code", {}, r.task)],
    ["Status", (r) => badge(r.status)],
    ["Attempt", (r) => String(r.attempt ?? ""), "num"],
    ["Started", (r) => fmtTime(r.started_at), "nowrap"],
    ["Took", (r) => (r.ended_at && r.started_at ? fmtDuration((r.ended_at - r.started_at) * 1000) : "–"), "num nowrap"],
    ["Detail", (r) => runDetail(r), "wide"],
  ], [...runs].sort((a, b) => b.ds.localeCompare(a.ds) || a.started_at - b.started_at), { className: "runs", rowAttrs: (r) => ({ "data-task": r.task, "data-ds": r.ds, "data-status": r.status }) })));
}

function runDetail(r) {
  const parts = [];
  const tone = { failed: " error-text", interrupted: " error-text", waiting: " waiting-text" }[r.status] || "";
  if (r.detail) parts.push(h("div", { class: `detail${tone}` }, r.detail));
  if ((r.outputs || []).length) parts.push(h("div", { class: "outputs" }, "wrote ", r.outputs.map((o) => h("code", {}, o)).flatMap((c, i) => (i ? [", ", c] : [c]))));
  return parts.length ? parts : h("span", { class: "muted" }, "–");
}

// ------------------------------------------------------------------ freshness

async function freshnessView() {
  const answer = await api("/v1/freshness");
  const rows = answer.group_bys || [];
  if (!rows.length) {
    return page("Freshness", "", empty("This repo has no online GroupBys.",
      h("p", {}, "A GroupBy with ", h("code", {}, "online=True"), " is uploaded (gnomon upload) and streamed (gnomon stream).")));
  }
  return page("Freshness", "Per online GroupBy: the last upload of its batch state, and how far its stream workers are behind.",
    card(null, table([
      ["GroupBy", (g) => objectLink("group_by", g.name)],
      ["Status", (g) => h("div", {}, badge(g.status), g.reason ? h("div", { class: "reason" }, g.reason) : null)],
      ["Upload ds", (g) => (g.upload ? g.upload.ds : h("span", { class: "muted" }, "never uploaded")), "nowrap"],
      ["Uploaded at", (g) => (g.upload ? fmtTime(g.upload.uploaded_at) : "–"), "nowrap"],
      ["Keys", (g) => (g.upload && g.upload.keys !== null && g.upload.keys !== undefined ? fmtNumber(g.upload.keys) : "–"), "num"],
      ["Topic", (g) => perTopic(g, "topic", (t) => h("code", {}, t.topic))],
      ["Lag", (g) => perTopic(g, "lag", (t) => (t.lag === null || t.lag === undefined ? "–"
        : `${fmtNumber(t.lag)} event${t.lag === 1 ? "" : "s"}`)), "num nowrap"],
      ["Last event applied", (g) => perTopic(g, "last-event", (t) => fmtTime(t.last_event_ms)), "nowrap"],
      ["Oldest waiting", (g) => perTopic(g, "waiting", (t) => (t.freshness_ms === 0 ? "caught up" : fmtDuration(t.freshness_ms))), "num nowrap"],
    ], rows, { className: "freshness", rowAttrs: (g) => ({ "data-group-by": g.name, "data-status": g.status }) })));
}

/** One line per streamed topic of a GroupBy (`what` names the figure, for tests and styling). */
function perTopic(g, what, cell) {
  const topics = (g.stream && g.stream.topics) || [];
  if (!topics.length) return what === "topic" ? h("span", { class: "muted" }, "not streamed") : "";
  return topics.map((t) => h("div", { class: `topic-line ${what}`, "data-topic": t.topic }, cell(t)));
}

// ------------------------------------------------------------------ data quality

async function qualityView([tableName]) {
  if (!tableName) return qualityIndex();
  const answer = await api(`/v1/stats/${encodeURIComponent(tableName)}`);
  const partitions = [...(answer.partitions || [])].sort((a, b) => a.ds.localeCompare(b.ds));
  const back = h("div", { class: "links" }, h("a", { class: "button", href: link(["quality"]) }, "Every table"),
    h("a", { class: "button", href: link(["partitions"], { table: tableName }) }, "Partitions"));
  if (!partitions.length) {
    return page(`Quality · ${tableName}`, "", back, empty(`No statistics for ${tableName} yet.`,
      h("p", {}, "Backfills store them for every partition they write; for any other table, ",
        h("code", {}, `gnomon stats ${tableName} --ds YYYY-MM-DD`), " computes and stores a partition's.")));
  }
  const days = partitions.map((p) => p.ds);
  const latest = partitions[partitions.length - 1];
  const rowsChart = lineChart({ xs: days, series: [{ name: "rows", values: partitions.map((p) => p.rows) }],
    width: 1140, height: 180, yLabel: "rows", xLabel: "partition (ds)", className: "rows-chart" });
  const names = latest.columns.map((c) => c.name);
  const cards = names.map((name) => columnCard(name, partitions, days));
  return page(`Quality · ${tableName}`,
    `${partitions.length} partition${partitions.length === 1 ? "" : "s"} with statistics, ${days[0]} … ${days[days.length - 1]}; latest: ${fmtNumber(latest.rows)} rows.`,
    back, card("Rows per partition", rowsChart), h("div", { class: "columns-grid" }, cards));
}

async function qualityIndex() {
  const answer = await api("/v1/partitions", { days: 1 });
  const catalog = await api("/v1/catalog");
  const owners = new Map(catalog.objects.filter((o) => o.output_table).map((o) => [o.output_table, o]));
  const tables = answer.tables.map((t) => t.table);
  for (const table of owners.keys()) if (!tables.includes(table)) tables.push(table);
  if (!tables.length) return page("Quality", "", empty("No tables yet."));
  const roles = new Map(answer.tables.map((t) => [t.table, t.role]));
  return page("Quality", "Per-partition statistics of each table: row counts, null rates, histograms and drift. Pick a table.",
    card(null, table([
      ["Table", (t) => h("a", { href: link(["quality", t]) }, t)],
      ["Role", (t) => (roles.get(t) ? h("span", { class: `role-tag role-${roles.get(t)}` }, roles.get(t)) : "–")],
      ["Written by", (t) => (owners.get(t) ? objectLink(owners.get(t).kind, owners.get(t).name) : h("span", { class: "muted" }, "–"))],
    ], tables, { className: "tables" })));
}

/** A chart with a caption above it. */
function chartBox(caption, chart) {
  return h("div", { class: "chart-box" }, h("h3", {}, caption), chart);
}

/** A statistic's value: numbers formatted, text as it is. */
function statValue(value) {
  return typeof value === "number" ? fmtNumber(value) : fmtValue(value);
}

function columnCard(name, partitions, days) {
  const column = (p) => (p.columns || []).find((c) => c.name === name);
  const latestDs = days[days.length - 1];
  const latest = column(partitions[partitions.length - 1]);
  const small = { width: 360, height: 150 };
  const nullRate = partitions.map((p) => {
    const c = column(p);
    return c && p.rows ? (c.nulls + (c.nans || 0)) / p.rows : null;
  });
  const charts = [chartBox("Null rate (nulls and NaNs)", lineChart({ xs: days, series: [{ name: "null rate", values: nullRate }],
    yLabel: "null rate", yFormat: fmtPct, ...small, className: "null-chart" }))];
  const histogram = latest && latest.histogram;
  if (histogram && histogram.kind === "numeric") {
    const bins = histogram.counts.map((_, i) => `[${fmtNumber(histogram.edges[i])}, ${fmtNumber(histogram.edges[i + 1])}${i === histogram.counts.length - 1 ? "]" : ")"}`);
    charts.push(chartBox(`Histogram of ${latestDs} (deciles)`, barChart({ labels: histogram.counts.map((_, i) => fmtShort(histogram.edges[i])),
      values: histogram.counts, titles: histogram.counts.map((n, i) => `${bins[i]}: ${fmtNumber(n)} rows`),
      yLabel: "rows", xLabel: "lower edge of the bin", ...small, className: "histogram" })));
  } else if (histogram && histogram.kind === "categorical") {
    charts.push(chartBox(`Top values of ${latestDs}`, barChart({ labels: histogram.top.map(([v]) => fmtValue(v)),
      values: histogram.top.map(([, n]) => n), yLabel: "rows", xLabel: "value", ...small, className: "histogram" })));
  }
  const drift = partitions.map((p) => column(p)?.drift || null);
  if (drift.some((d) => d && d.kind === "psi")) {
    charts.push(chartBox("Drift from the previous partition (PSI)", lineChart({ xs: days,
      series: [{ name: "PSI", values: drift.map((d) => (d && d.kind === "psi" ? d.psi : null)) }],
      yLabel: "PSI", ...small, className: "drift-chart",
      guides: [{ y: 0.1, label: "0.1 moderate" }, { y: 0.25, label: "0.25 large" }] })));
  } else if (drift.some((d) => d && d.kind === "top_k")) {
    const moved = drift.map((d) => (d && d.kind === "top_k" ? (d.added || []).length + (d.removed || []).length : null));
    const markers = drift.flatMap((d, index) => (d && d.kind === "top_k" && d.changed ? [{ index,
      label: `${days[index]}: top values changed (added ${fmtValue(d.added || [])}, removed ${fmtValue(d.removed || [])})` }] : []));
    charts.push(chartBox("Top values that came and went (▼ changed)", lineChart({ xs: days,
      series: [{ name: "values added + removed", values: moved }], markers, yLabel: "values", ...small,
      className: "drift-chart" })));
  }
  const shown = (value) => value !== null && value !== undefined;
  const figures = latest ? h("div", { class: "figures" },
    figure("nulls", fmtNumber(latest.nulls)), latest.nans ? figure("NaNs", fmtNumber(latest.nans)) : null,
    shown(latest.distinct) ? figure("distinct (approx.)", fmtNumber(latest.distinct)) : null,
    shown(latest.min) ? figure("min", statValue(latest.min)) : null,
    shown(latest.max) ? figure("max", statValue(latest.max)) : null,
    shown(latest.mean) ? figure("mean", fmtNumber(latest.mean)) : null) : null;
  return h("div", { class: "card column-card", "data-column": name },
    h("h2", {}, h("code", {}, name), latest ? h("span", { class: "type" }, latest.type) : null,
      h("span", { class: "as-of" }, `latest: ${latestDs}`)),
    figures, h("div", { class: "charts" }, charts));
}

function figure(label, value) {
  return h("span", { class: "figure" }, h("span", { class: "label" }, label), h("span", { class: "value" }, value));
}

// ------------------------------------------------------------------ consistency

/** A consistency feature row, with either naming of its fields (the API's or the table's columns). */
function featureFigures(f) {
  return {
    feature: f.feature,
    compared: f.compared ?? f.rows_compared ?? 0,
    mismatches: f.mismatches ?? 0,
    rate: f.mismatch_rate ?? null,
    nullOnline: f.null_rate_online ?? f.online_null_rate ?? null,
    nullOffline: f.null_rate_offline ?? f.offline_null_rate ?? null,
    smape: f.smape ?? null,
    maxAbsDiff: f.max_abs_diff ?? null,
    keys: f.mismatching_keys || [],
  };
}

async function consistencyView([join, ds, feature], query) {
  if (!join) return consistencyIndex();
  if (ds && feature) return mismatchView(join, ds, feature);
  const days = Number(query.get("days")) || 30;
  const answer = await api(`/v1/consistency/${encodeURIComponent(join)}`, { days });
  const partitions = [...(answer.partitions || [])].sort((a, b) => a.ds.localeCompare(b.ds));
  const bar = h("div", { class: "toolbar" },
    selector("Days", days, [7, 30, 90], (d) => link(["consistency", join], { days: d })),
    h("a", { class: "button", href: link(["object", "join", join]) }, "Definition"));
  if (!partitions.length) {
    return page(`Consistency · ${join}`, "", bar, empty("No consistency figures yet.",
      h("p", {}, "Log fetches with ", h("code", {}, "serving: {log: {sample: 0.05}}"), ", then run ",
        h("code", {}, `gnomon consistency ${join} --ds YYYY-MM-DD`), " (gnomon run does it daily).")));
  }
  const shownDs = query.get("ds") && partitions.some((p) => p.ds === query.get("ds")) ? query.get("ds") : partitions[partitions.length - 1].ds;
  const xs = partitions.map((p) => p.ds);
  const features = [...new Set(partitions.flatMap((p) => p.features.map((f) => f.feature)))];
  const failing = new Set(partitions.flatMap((p) => p.features.map(featureFigures).filter((f) => f.mismatches > 0).map((f) => f.feature)));
  const ordered = [...features.filter((f) => failing.has(f)), ...features.filter((f) => !failing.has(f))];
  let colour = 0;
  const series = ordered.map((name) => {
    const byDs = new Map(partitions.map((p) => [p.ds, p.features.map(featureFigures).find((f) => f.feature === name)]));
    return {
      name,
      color: failing.has(name) ? PALETTE[colour++ % PALETTE.length] : "#9ca3af",
      values: xs.map((d) => byDs.get(d)?.rate ?? null),
      markAttrs: (i) => {
        const f = byDs.get(xs[i]);
        return { "data-ds": xs[i], "data-feature": name, "data-mismatches": f ? f.mismatches : 0,
          class: f && f.mismatches > 0 ? "bar failing" : "bar",
          onclick: () => { window.location.hash = link(["consistency", join], { days, ds: xs[i] }); } };
      },
    };
  });
  const chart = groupedBarChart({ xs, series, width: 1140, height: 240, yLabel: "mismatch rate",
    xLabel: "day of the logged fetches (a day without compared fetches has no bars)", yFormat: fmtPct,
    className: "consistency-chart" });
  const legend = h("div", { class: "legend" }, series.filter((l) => failing.has(l.name)).map((l) =>
    h("span", { class: "legend-item" }, h("span", { class: "swatch", style: `background:${l.color};border-color:${l.color}` }), l.name)),
  h("span", { class: "legend-item muted" }, h("span", { class: "swatch", style: "background:#9ca3af;border-color:#9ca3af" }),
    failing.size ? "features that always matched" : "every feature matched on every day"));
  const shown = partitions.find((p) => p.ds === shownDs);
  const rows = shown.features.map(featureFigures);
  const details = table([
    ["Feature", (f) => (f.mismatches > 0
      ? h("a", { class: "failing-feature", href: link(["consistency", join, shownDs, f.feature]) }, f.feature)
      : h("code", {}, f.feature))],
    ["Compared", (f) => fmtNumber(f.compared), "num"],
    ["Mismatches", (f) => (f.mismatches > 0 ? h("strong", { class: "error-text" }, fmtNumber(f.mismatches)) : "0"), "num"],
    ["Mismatch rate", (f) => fmtPct(f.rate), "num"],
    ["Null online", (f) => fmtPct(f.nullOnline), "num"],
    ["Null offline", (f) => fmtPct(f.nullOffline), "num"],
    ["SMAPE", (f) => fmtNumber(f.smape), "num"],
    ["Max |diff|", (f) => fmtNumber(f.maxAbsDiff), "num"],
  ], rows.sort((a, b) => b.mismatches - a.mismatches || a.feature.localeCompare(b.feature)),
  { className: "consistency", rowAttrs: (f) => ({ "data-feature": f.feature, "data-mismatches": f.mismatches }) });
  return page(`Consistency · ${join}`,
    `Fetches logged online, recomputed offline at the same keys and times: ${partitions.length} day${partitions.length === 1 ? "" : "s"}, ` +
    `${failing.size} feature${failing.size === 1 ? "" : "s"} with mismatches.`,
    bar, card("Mismatch rate per feature and day", legend, h("div", { class: "chart-scroll" }, chart)),
    card(`Figures of ${shownDs}${shown.rows_compared !== undefined ? ` · ${fmtNumber(shown.rows_compared)} rows compared` : ""}`,
      h("p", { class: "muted" }, "Click a bar of the chart to see another day. A failing feature links to its mismatching keys."), details));
}

async function consistencyIndex() {
  const answer = await api("/v1/consistency");
  const joins = answer.joins || [];
  if (!joins.length) return page("Consistency", "", empty("This repo has no Joins."));
  return page("Consistency", "Per Join: the latest day of logged online fetches recomputed offline.", card(null, table([
    ["Join", (j) => h("a", { href: link(["consistency", j.join]) }, j.join)],
    ["Latest day", (j) => (j.latest ? j.latest.ds : h("span", { class: "muted" }, "never checked"))],
    ["Rows compared", (j) => (j.latest ? fmtNumber(j.latest.rows_compared ?? j.latest.compared) : "–"), "num"],
    ["Mismatches", (j) => (j.latest ? fmtNumber(latestMismatches(j.latest)) : "–"), "num"],
    ["Features with mismatches", (j) => h("div", { class: "chips" }, (j.latest?.features || []).map(featureFigures)
      .filter((f) => f.mismatches > 0).map((f) => h("a", { class: "failing-feature",
        href: link(["consistency", j.join, j.latest.ds, f.feature]) }, f.feature)))],
    ["Status", (j) => badge(!j.latest ? "unchecked" : latestMismatches(j.latest) > 0 ? "mismatches" : "consistent")],
  ], joins, { className: "joins", rowAttrs: (j) => ({ "data-join": j.join }) })));
}

function latestMismatches(latest) {
  if (latest.mismatches !== undefined) return latest.mismatches;
  return (latest.features || []).reduce((n, f) => n + (f.mismatches || 0), 0);
}

/** Days from `start` to `end` (both YYYY-MM-DD), counting both. */
function daysBetween(start, end) {
  return Math.round((Date.parse(`${end}T00:00:00Z`) - Date.parse(`${start}T00:00:00Z`)) / 86400000) + 1;
}

async function mismatchView(join, ds, feature) {
  // the history is asked for by days back from the newest checked day: read just far enough for `ds`
  const overview = await api("/v1/consistency");
  const latest = (overview.joins || []).find((j) => j.join === join)?.latest?.ds;
  const days = latest && latest >= ds ? daysBetween(ds, latest) : 30;
  const answer = await api(`/v1/consistency/${encodeURIComponent(join)}`, { days });
  const partition = (answer.partitions || []).find((p) => p.ds === ds);
  const found = partition && partition.features.map(featureFigures).find((f) => f.feature === feature);
  const back = h("div", { class: "links" }, h("a", { class: "button", href: link(["consistency", join], { ds }) }, `Back to ${join}`));
  const title = `Mismatches · ${feature}`;
  if (!found) return page(title, `${join}, ${ds}`, back, empty(`No figures for ${feature} on ${ds}.`));
  const keyFields = [...new Set(found.keys.flatMap((k) => Object.keys(k.keys || {})))];
  const facts = h("div", { class: "figures" }, figure("compared", fmtNumber(found.compared)),
    figure("mismatches", fmtNumber(found.mismatches)), figure("mismatch rate", fmtPct(found.rate)),
    figure("SMAPE", fmtNumber(found.smape)), figure("max |diff|", fmtNumber(found.maxAbsDiff)));
  const keysTable = found.keys.length ? table([
    ...keyFields.map((field) => [field, (k) => h("code", {}, fmtValue(k.keys?.[field]))]),
    ["Time asked for", (k) => fmtTime(k.ts)],
    ["Online", (k) => h("code", { class: "online-value" }, fmtValue(k.online)), "wide"],
    ["Offline", (k) => h("code", { class: "offline-value" }, fmtValue(k.offline)), "wide"],
    ["Online − offline", (k) => (typeof k.online === "number" && typeof k.offline === "number"
      ? fmtNumber(k.online - k.offline) : "–"), "num"],
  ], found.keys, { className: "mismatching-keys", rowAttrs: (k) => ({ "data-keys": JSON.stringify(k.keys) }) })
    : empty("No sample of mismatching keys was kept.");
  return page(title, `${join}, fetches of ${ds}: the sampled keys whose online value differs from the offline one.`,
    back, facts, card(`Mismatching keys (${found.keys.length} shown of ${fmtNumber(found.mismatches)})`, keysTable));
}

// ------------------------------------------------------------------ start

function start() {
  const nav = document.querySelector("nav.top .views");
  nav.replaceChildren(...NAV.map(([view, label]) => h("a", { href: link([view]), "data-view": view }, label)));
  window.addEventListener("hashchange", render);
  render();
}

start();
