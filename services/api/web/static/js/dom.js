// Small DOM helpers. Text from the API always goes in as text nodes (never as HTML), so a
// name or a note can never inject markup.

/** An element: h("a", {href: "#/x", class: "y"}, "text", child, ...). Attributes starting
 *  with "on" are event listeners; false/null/undefined attributes and children are skipped. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Appends children (skipping null/false, unlike Element.append, which writes "null"). */
export function add(el, ...children) {
  append(el, children);
  return el;
}

/** Replaces an element's content. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const TIERS = ["intimate", "close", "friend", "acquaintance", "contact"];

export function tierBadge(tier) {
  if (!tier) return h("span", { class: "badge" }, "no tier");
  return h("span", { class: `badge tier-${tier}`, title: `tier: ${tier}` }, tier);
}

export function forgottenBadge() {
  return h("span", { class: "badge forgotten", title: "this person asked to be forgotten" }, "forgotten");
}

/** A score 0-100 as text plus a bar (the bar is decoration; the text carries the value). */
export function scoreBar(score) {
  const value = Number(score ?? 0);
  return h(
    "span",
    { class: "score" },
    h("span", { class: "score-value" }, value.toFixed(1)),
    h("span", { class: "bar", "aria-hidden": "true" }, h("span", { style: `width:${Math.max(0, Math.min(100, value))}%` })),
  );
}

const dateFmt = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });
const timeFmt = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

export function fmtDate(value) {
  if (value === null || value === undefined || value === "") return "—";
  const d = typeof value === "number" ? new Date(value) : new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : dateFmt.format(d);
}

export function fmtTime(value) {
  if (!value) return "—";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : timeFmt.format(d);
}

/** A <time> element with the machine-readable instant. */
export function timeEl(value, withTime = false) {
  if (!value) return "—";
  return h("time", { datetime: value }, withTime ? fmtTime(value) : fmtDate(value));
}

/** How long ago, from a number of days: "today", "12 days ago", "3 months ago". */
export function fmtAgo(days) {
  if (days === null || days === undefined) return "—";
  const d = Number(days);
  if (d < 1) return "today";
  if (d < 60) return `${Math.round(d)} days ago`;
  if (d < 730) return `${Math.round(d / 30.44)} months ago`;
  return `${(d / 365.25).toFixed(1)} years ago`;
}

export const EVENT_LABELS = {
  "relationship.met": "met",
  "relationship.followed_up": "followed up",
  "relationship.introduced": "introduced",
  "relationship.helped": "helped",
  "relationship.closeness_rated": "rated closeness",
};

export function eventLabel(type) {
  return EVENT_LABELS[type] || type;
}

/** A labelled form control wrapped with a slot for the API's errors about that field. */
let fieldCount = 0;
export function field(label, control, { name, hint } = {}) {
  // Unique ids: two forms on one page may both have, say, an "introducer" field.
  const id = control.id || `f-${name || "field"}-${++fieldCount}`;
  control.id = id;
  const errId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : null;
  control.setAttribute("aria-describedby", [hintId, errId].filter(Boolean).join(" "));
  return h(
    "div",
    { class: "field", dataset: { field: name || control.name || "" } },
    h("label", { for: id }, label),
    control,
    hint ? h("small", { id: hintId, class: "hint" }, hint) : null,
    h("p", { id: errId, class: "field-error", role: "alert", hidden: true }),
  );
}

/** Shows the API's field errors next to the fields of `form` (by `data-field`); returns the
 *  messages about fields the form does not show. */
export function showFieldErrors(form, fields) {
  clearFieldErrors(form);
  const unplaced = [];
  let first = null;
  for (const [name, messages] of Object.entries(fields || {})) {
    const box = form.querySelector(`[data-field="${CSS.escape(name)}"]`);
    if (!box) {
      unplaced.push(...messages.map((m) => `${name}: ${m}`));
      continue;
    }
    const p = box.querySelector(".field-error");
    p.textContent = messages.join("; ");
    p.hidden = false;
    box.classList.add("invalid");
    const control = box.querySelector("input, select, textarea");
    if (control) control.setAttribute("aria-invalid", "true");
    first ||= control;
  }
  // To the first field in error, unless the user has gone on to something else meanwhile
  // (another form of the page): an answer must not pull the focus from where they type.
  const at = document.activeElement;
  if (first && (!at || at === document.body || form.contains(at))) first.focus();
  return unplaced;
}

export function clearFieldErrors(form) {
  for (const box of form.querySelectorAll(".field.invalid")) {
    box.classList.remove("invalid");
    const p = box.querySelector(".field-error");
    p.hidden = true;
    p.textContent = "";
    box.querySelector("[aria-invalid]")?.removeAttribute("aria-invalid");
  }
}

/** A message box (role=status or alert) that views reuse for results and errors. */
export function notice(kind, ...children) {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, ...children);
}

/** A read that failed, said where its content would be, with a button to read it again. */
export function loadFailed(what, err, retry) {
  return notice("error", `Could not load ${what}: ${err.message}. `,
    h("button", { type: "button", onclick: () => retry() }, "Try again"));
}

export function loading(what = "Loading") {
  return h("p", { class: "loading", role: "status" }, `${what}…`);
}

/** Runs `fn` over `items` with at most `limit` at a time; results in input order. */
export async function pool(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** A table; on a phone-width screen its rows become stacked cards, each cell labelled with
 *  its column (data-label). Explicit ARIA roles keep it a table for screen readers when the
 *  phone layout changes its CSS display. */
export function table(caption, headers, rows) {
  for (const tr of rows) {
    tr.setAttribute("role", "row");
    [...tr.children].forEach((td, i) => {
      td.setAttribute("role", "cell");
      if (headers[i]) td.dataset.label = headers[i];
    });
  }
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h(
      "table",
      { role: "table", class: "stack" },
      h("caption", {}, caption),
      h("thead", { role: "rowgroup" }, h("tr", { role: "row" }, headers.map((x) => h("th", { scope: "col", role: "columnheader" }, x)))),
      h("tbody", { role: "rowgroup" }, rows),
    ),
  );
}
