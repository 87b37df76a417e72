// Building the page: elements from data (text is always set as text, never parsed as HTML),
// tables, forms and the formats the pages share.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
}

/// A table: `cols` are `{ label, get(row) -> node or text, class? }`.
export function table(cols, rows, attrs) {
  if (!rows.length) return h("p", { class: "muted empty" }, "Nothing here yet.");
  return h(
    "table",
    attrs || {},
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", { class: c.class }, c.label)))),
    h(
      "tbody",
      {},
      rows.map((r) => h("tr", rowAttrs(r), cols.map((c) => h("td", { class: c.class }, c.get(r))))),
    ),
  );
}

function rowAttrs(r) {
  return r && r.id ? { "data-id": r.id } : {};
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind || text}` }, text);
}

export function errorBox(e) {
  return h("p", { class: "error", role: "alert" }, e && e.message ? e.message : String(e));
}

/// A labelled input; `attrs` go to the input.
export function field(label, attrs) {
  const id = attrs.id || `f-${attrs.name}-${Math.random().toString(36).slice(2, 8)}`;
  return h("label", { class: "field", for: id }, h("span", {}, label), h("input", { id, ...attrs }));
}

export function select(label, name, options, value) {
  return h(
    "label",
    { class: "field" },
    h("span", {}, label),
    h(
      "select",
      { name },
      options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)),
    ),
  );
}

export const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));

export function money(usd) {
  if (usd === null || usd === undefined) return "–";
  if (usd === 0) return "$0";
  const digits = Math.abs(usd) >= 1 ? 2 : Math.abs(usd) >= 0.01 ? 4 : 6;
  return `$${Number(usd).toFixed(digits)}`;
}

export function when(ms) {
  if (!ms) return "–";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export function secs(s) {
  if (s === null || s === undefined) return "–";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

/// Comma-separated text as a list (empty: none).
export function list(text) {
  return text
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

/// The form's fields by name, as trimmed strings.
export function values(form) {
  const out = {};
  for (const el of form.elements) if (el.name) out[el.name] = el.value.trim();
  return out;
}
