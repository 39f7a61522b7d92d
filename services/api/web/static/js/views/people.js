// The people directory: paged from the API, searchable by name, id, organisation, title or
// e-mail. Names are stored encrypted, so the API cannot search them: a search reads the whole
// directory (1,000 people per request) once and filters it here.

import { ROUTES, api } from "../api.js";
import { add, fill, forgottenBadge, h, loadFailed, loading, notice, table } from "../dom.js";
import * as names from "../names.js";
import { newestOnly } from "./live.js";

const PAGE = 25;
const SEARCH_LIMIT = 20000; // people read for a search at most

/** One page of the directory; `cursor` is the API's: `next_cursor` (issue 12's pagination)
 *  or, before it, `next` with `after`. */
async function page(cursor, limit) {
  const query = { limit };
  if (cursor?.kind === "cursor") query.cursor = cursor.value;
  else if (cursor) query.after = cursor.value;
  const body = await api.get(ROUTES.people, {}, query);
  const rows = body.people || body.items || [];
  names.remember(rows);
  let next = null;
  if (body.next_cursor) next = { kind: "cursor", value: body.next_cursor };
  else if (body.next) next = { kind: "after", value: body.next };
  return { rows, next };
}

async function everyone() {
  const all = [];
  let cursor = null;
  do {
    const { rows, next } = await page(cursor, 1000);
    all.push(...rows);
    cursor = next;
  } while (cursor && all.length < SEARCH_LIMIT);
  return { all, truncated: Boolean(cursor) };
}

function matches(p, q) {
  const hay = [p.display_name, p.person_id, p.organization, p.title, p.email].filter(Boolean).join(" ").toLowerCase();
  return q.split(/\s+/).every((word) => hay.includes(word));
}

function rowsOf(list) {
  return list.map((p) =>
    h(
      "tr",
      { class: p.forgotten ? "is-forgotten" : null },
      h("td", {}, h("a", { href: `#/person/${encodeURIComponent(p.person_id)}` }, p.display_name || p.person_id), p.forgotten ? [" ", forgottenBadge()] : null),
      h("td", {}, h("code", {}, p.person_id)),
      h("td", {}, p.organization || ""),
      h("td", {}, p.title || ""),
    ),
  );
}

export async function render(main, ctx) {
  const search = h("input", { type: "search", id: "people-search", name: "q", value: ctx.query.get("q") || "", autocomplete: "off" });
  const results = h("div", { id: "people-results" });
  const pager = h("nav", { class: "pager", "aria-label": "Directory pages" });
  add(main, 
    h("h1", { tabindex: "-1" }, "People"),
    h("form", { role: "search", class: "inline", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "people-search" }, "Search people"), search),
    results,
    pager,
  );

  let stack = []; // cursors of the pages before the current one
  let cursor = null;
  let directory = null; // the whole directory, once searched (a promise: one read for all)
  const ticket = newestOnly(); // typing and paging start loads; only the newest draws
  let offset = 0;

  function pagerButtons(hasPrev, hasNext, label, prev, next) {
    fill(
      pager,
      h("button", { type: "button", disabled: !hasPrev, onclick: prev }, "← Previous"),
      h("span", { "aria-live": "polite" }, label),
      h("button", { type: "button", disabled: !hasNext, onclick: next }, "Next →"),
    );
  }

  const failed = (err, retry) => fill(results, loadFailed("people", err, retry));

  /** Shows the page at `to` (its cursor and the cursors before it). The paging state moves
   *  only once that page is in, and the pager is off while it loads: a double click on
   *  "Next" would otherwise skip a page or count one twice. */
  async function showPage(to = { cursor, stack }) {
    const newest = ticket();
    fill(pager);
    fill(results, loading("Loading people"));
    let got;
    try {
      got = await page(to.cursor, PAGE);
    } catch (err) {
      if (newest()) failed(err, () => showPage(to));
      return;
    }
    if (!newest()) return;
    ({ cursor, stack } = to);
    const { rows, next } = got;
    fill(results, rows.length
      ? table("People in this workspace", ["Name", "Id", "Organisation", "Title"], rowsOf(rows))
      : notice("info", "No people yet. Add people through the API or `tieline import`."));
    pagerButtons(stack.length > 0, Boolean(next), `Page ${stack.length + 1}`,
      () => showPage({ cursor: stack.at(-1), stack: stack.slice(0, -1) }),
      () => showPage({ cursor: next, stack: [...stack, cursor] }));
  }

  async function showSearch(q) {
    const newest = ticket();
    if (!directory) {
      fill(pager);
      fill(results, loading("Searching the directory"));
      directory = everyone().catch((err) => {
        directory = null; // a failed read is tried again by the next search
        throw err;
      });
    }
    let cache;
    try {
      cache = await directory;
    } catch (err) {
      if (newest()) failed(err, () => showSearch(q));
      return;
    }
    if (!newest()) return;
    const found = cache.all.filter((p) => matches(p, q));
    const slice = found.slice(offset, offset + PAGE);
    fill(results,
      h("p", { role: "status" }, `${found.length} ${found.length === 1 ? "person matches" : "people match"} “${q}”`,
        cache.truncated ? ` (among the first ${cache.all.length})` : ""),
      slice.length ? table(`People matching “${q}”`, ["Name", "Id", "Organisation", "Title"], rowsOf(slice)) : null);
    pagerButtons(offset > 0, offset + PAGE < found.length,
      found.length ? `${offset + 1}–${offset + slice.length} of ${found.length}` : "",
      () => { offset -= PAGE; showSearch(q); },
      () => { offset += PAGE; showSearch(q); });
  }

  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (!search.isConnected) return; // the user has gone to another view meanwhile
      const q = search.value.trim().toLowerCase();
      offset = 0;
      history.replaceState(null, "", q ? `#/people?q=${encodeURIComponent(search.value.trim())}` : "#/people");
      if (q) showSearch(q);
      else showPage();
    }, 200);
  });
  const q = search.value.trim().toLowerCase();
  await (q ? showSearch(q) : showPage());
}
