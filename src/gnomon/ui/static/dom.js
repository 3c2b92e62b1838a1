// Small DOM helpers: build HTML and SVG elements, format numbers, times and durations.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element: h("a", {href: "#/"}, "text", otherNode). Attributes "on…" with a function are listeners. */
export function h(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same call shape as h(). */
export function s(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** A number for people: integers with thousands separators, others with up to `digits` significant digits. */
export function fmtNumber(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  if (Math.abs(value) >= 1e6 || (value !== 0 && Math.abs(value) < 1e-3)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toLocaleString("en-US", { maximumFractionDigits: 6 });
}

/** A number in at most about 6 characters, for axis ticks: 1.8e+12, 12.5k, 0.25. */
export function fmtShort(value) {
  if (value === null || value === undefined) return "–";
  const size = Math.abs(value);
  if (size >= 1e6 || (size !== 0 && size < 1e-3)) return value.toExponential(1);
  if (size >= 1e4) return `${Number((value / 1000).toPrecision(3))}k`;
  return String(Number(value.toPrecision(3)));
}

/** A rate (0..1) as a percentage. */
export function fmtPct(value) {
  if (value === null || value === undefined) return "–";
  const pct = value * 100;
  if (pct === 0) return "0%";
  return `${pct < 0.1 ? pct.toExponential(1) : Number(pct.toPrecision(3))}%`;
}

/** An epoch time (seconds or milliseconds, told apart by size) as "YYYY-MM-DD HH:MM:SS[.mmm] UTC". */
export function fmtTime(epoch) {
  if (epoch === null || epoch === undefined) return "–";
  const ms = epoch > 1e11 ? epoch : epoch * 1000;
  const text = new Date(ms).toISOString().replace("T", " ");
  return `${text.endsWith(".000Z") ? text.slice(0, -5) : text.slice(0, -1)} UTC`;
}

/** A duration in milliseconds, e.g. "850 ms", "4.2 s", "3 min 5 s", "2 h 10 min", "3 d 4 h". */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${Number(seconds.toPrecision(2))} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** A JSON value as compact text (strings as they are). */
export function fmtValue(value) {
  if (value === null || value === undefined) return "null";
  return typeof value === "string" ? value : JSON.stringify(value);
}
