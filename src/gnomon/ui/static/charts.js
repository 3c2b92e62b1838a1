// Hand-written SVG charts: a line chart over days and a bar chart, with axis labels and <title> tooltips.

import { fmtNumber, s } from "./dom.js";

const MARGIN = { top: 14, right: 14, bottom: 36, left: 60 };
export const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d",
  "#9333ea", "#ea580c"];

/** A round upper bound for an axis whose values reach `value` (1, 2, 2.5 or 5 times a power of ten). */
export function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function frame(width, height, className, label) {
  return s("svg", {
    class: `chart ${className || ""}`, width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": label,
  });
}

/** Y axis with three gridlines, and the axis labels. */
function axes(svg, { width, height, yMax, yFormat, yLabel, xLabel }) {
  const bottom = height - MARGIN.bottom;
  const plotHeight = bottom - MARGIN.top;
  for (const fraction of [0, 0.5, 1]) {
    const y = bottom - fraction * plotHeight;
    svg.append(
      s("line", { class: "grid", x1: MARGIN.left, x2: width - MARGIN.right, y1: y, y2: y }),
      s("text", { class: "tick", x: MARGIN.left - 6, y: y + 4, "text-anchor": "end" }, yFormat(yMax * fraction)));
  }
  if (yLabel) {
    const middle = MARGIN.top + plotHeight / 2;
    svg.append(s("text", { class: "axis-label", x: 12, y: middle, transform: `rotate(-90 12 ${middle})`,
      "text-anchor": "middle" }, yLabel));
  }
  if (xLabel) {
    svg.append(s("text", { class: "axis-label", x: MARGIN.left + (width - MARGIN.left - MARGIN.right) / 2,
      y: height - 4, "text-anchor": "middle" }, xLabel));
  }
}

/** Indexes of the x labels to print: the first, the last and evenly spaced ones between, `room` at most. */
function labelled(count, room) {
  if (count <= room) return [...Array(count).keys()];
  const step = Math.ceil((count - 1) / (room - 1));
  const picked = [];
  for (let i = 0; i < count - 1; i += step) picked.push(i);
  if (picked.length > 1 && count - 1 - picked[picked.length - 1] < step) picked.pop();
  picked.push(count - 1);
  return picked;
}

/**
 * A line chart over evenly spaced x labels (days).
 * series: [{name, values: [number|null] (one per x), color, markAttrs(i) -> extra attributes of a point}]
 * guides: [{y, label}] dashed horizontal lines; markers: [{index, label}] flagged x positions.
 */
export function lineChart({ xs, series, width = 380, height = 170, yLabel, xLabel, yMax, yFormat = fmtNumber,
  guides = [], markers = [], className = "", label = yLabel }) {
  const svg = frame(width, height, `line-chart ${className}`, label);
  const values = series.flatMap((line) => line.values).filter((v) => v !== null && v !== undefined);
  const top = niceMax(yMax ?? Math.max(0, ...values, ...guides.map((g) => g.y * 1.2)));
  axes(svg, { width, height, yMax: top, yFormat, yLabel, xLabel });
  const plotWidth = width - MARGIN.left - MARGIN.right;
  const bottom = height - MARGIN.bottom;
  const x = (i) => MARGIN.left + (xs.length === 1 ? plotWidth / 2 : (i * plotWidth) / (xs.length - 1));
  const y = (v) => bottom - (Math.min(v, top) / top) * (bottom - MARGIN.top);
  for (const i of labelled(xs.length, Math.max(2, Math.floor(plotWidth / 78)))) {
    svg.append(s("text", { class: "tick", x: x(i), y: bottom + 14, "text-anchor": "middle" }, xs[i]));
  }
  let lastLabel = -Infinity;
  for (const guide of [...guides].sort((a, b) => b.y - a.y)) {
    // a label that would touch the one above it goes below its line instead
    const labelY = y(guide.y) - 3 - lastLabel < 11 ? y(guide.y) + 11 : y(guide.y) - 3;
    lastLabel = labelY;
    svg.append(
      s("line", { class: "guide", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(guide.y), y2: y(guide.y) }),
      s("text", { class: "guide-label", x: width - MARGIN.right - 2, y: labelY, "text-anchor": "end" }, guide.label));
  }
  for (const marker of markers) {
    svg.append(s("path", { class: "marker", d: `M${x(marker.index) - 5},${MARGIN.top - 8} h10 l-5,7 z`,
      "data-marker": xs[marker.index] }, s("title", {}, marker.label)));
  }
  series.forEach((line, index) => {
    const color = line.color || PALETTE[index % PALETTE.length];
    let d = "";
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      const gap = i === 0 || line.values[i - 1] === null || line.values[i - 1] === undefined;
      d += `${gap ? "M" : "L"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
    });
    const group = s("g", { class: "series", "data-series": line.name });
    group.append(s("path", { class: "line", d, stroke: color }));
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      group.append(s("circle", { class: "point", cx: x(i), cy: y(v), r: 3, fill: color,
        ...(line.markAttrs ? line.markAttrs(i) : {}) },
        s("title", {}, `${line.name ? `${line.name} ` : ""}${xs[i]}: ${yFormat(v)}`)));
    });
    svg.append(group);
  });
  return svg;
}

/**
 * Grouped bars over evenly spaced x labels (days): per x, one bar per series, side by side. A zero is
 * drawn as a thin stub, so that every (x, series) with a value has a mark; a null has none.
 * series: [{name, values: [number|null], color, markAttrs(i)}]
 */
export function groupedBarChart({ xs, series, width = 760, height = 220, yLabel, xLabel, yFormat = fmtNumber,
  className = "", label = yLabel }) {
  const svg = frame(width, height, `bar-chart grouped ${className}`, label);
  const values = series.flatMap((line) => line.values).filter((v) => v !== null && v !== undefined);
  const top = niceMax(Math.max(0, ...values) * 1.1);
  axes(svg, { width, height, yMax: top, yFormat, yLabel, xLabel });
  const plotWidth = width - MARGIN.left - MARGIN.right;
  const bottom = height - MARGIN.bottom;
  const slot = plotWidth / Math.max(1, xs.length);
  const barWidth = Math.min(28, (slot * 0.8) / Math.max(1, series.length));
  const groupLeft = (i) => MARGIN.left + i * slot + (slot - barWidth * series.length) / 2;
  for (const i of labelled(xs.length, Math.max(2, Math.floor(plotWidth / 78)))) {
    svg.append(s("text", { class: "tick", x: MARGIN.left + (i + 0.5) * slot, y: bottom + 14, "text-anchor": "middle" }, xs[i]));
  }
  series.forEach((line, index) => {
    const color = line.color || PALETTE[index % PALETTE.length];
    const group = s("g", { class: "series", "data-series": line.name });
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      const barHeight = Math.max(1.5, (Math.min(v, top) / top) * (bottom - MARGIN.top));
      group.append(s("rect", { class: "bar", x: groupLeft(i) + index * barWidth, y: bottom - barHeight,
        width: Math.max(1, barWidth - 1), height: barHeight, style: `fill:${color}`, ...(line.markAttrs ? line.markAttrs(i) : {}) },
      s("title", {}, `${line.name} ${xs[i]}: ${yFormat(v)}`)));
    });
    svg.append(group);
  });
  return svg;
}

/** A bar chart: one bar per label, with its value in the bar's tooltip. */
export function barChart({ labels, values, width = 380, height = 170, yLabel, xLabel, yFormat = fmtNumber,
  className = "", label = yLabel, titles }) {
  const svg = frame(width, height, `bar-chart ${className}`, label);
  const top = niceMax(Math.max(0, ...values));
  axes(svg, { width, height, yMax: top, yFormat, yLabel, xLabel });
  const plotWidth = width - MARGIN.left - MARGIN.right;
  const bottom = height - MARGIN.bottom;
  const slot = plotWidth / Math.max(1, labels.length);
  const room = Math.max(2, Math.floor(plotWidth / 60));
  const shown = new Set(labelled(labels.length, room));
  labels.forEach((text, i) => {
    const barHeight = (values[i] / top) * (bottom - MARGIN.top);
    const left = MARGIN.left + i * slot + slot * 0.12;
    svg.append(s("rect", { class: "bar", x: left, y: bottom - barHeight, width: Math.max(1, slot * 0.76),
      height: barHeight, "data-label": text },
      s("title", {}, titles ? titles[i] : `${text}: ${yFormat(values[i])}`)));
    if (shown.has(i)) {
      const short = text.length > 10 ? `${text.slice(0, 9)}…` : text;
      svg.append(s("text", { class: "tick", x: left + slot * 0.38, y: bottom + 14, "text-anchor": "middle" }, short));
    }
  });
  return svg;
}
