// One person: who they are, their ties ordered by strength with tier badges, and give and
// take (who initiates, who helps, one-sided ties flagged).

import { ApiError, ROUTES, allPages, api, session } from "../api.js";
import { add, fill, forgottenBadge, h, loadFailed, loading, notice, scoreBar, table, tierBadge, timeEl } from "../dom.js";
import * as names from "../names.js";
import { debounce, newestOnly, seqFloor, seqOf } from "./live.js";

function details(p) {
  const rows = [
    ["Organisation", p.organization],
    ["Title", p.title],
    ["E-mail", p.email],
    ["Phone", p.phone],
    ["Added", p.added_at ? timeEl(p.added_at) : null],
  ].filter(([, v]) => v);
  return h("dl", { class: "details" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function tiesTable(person, ties) {
  if (!ties.length) return notice("info", "No recorded relationships yet.");
  const rows = ties.map((t) =>
    h(
      "tr",
      {},
      h("td", {}, names.personLink(t.other)),
      h("td", {}, tierBadge(t.tier)),
      h("td", {}, scoreBar(t.score)),
      h("td", {}, t.event_count),
      h("td", {}, timeEl(t.last_contact_at)),
      h("td", {}, t.one_sided ? h("span", { class: "badge warn" }, "one-sided") : ""),
      h("td", {}, h("a", { href: `#/rel/${encodeURIComponent(person)}/${encodeURIComponent(t.other)}`, "aria-label": `Open the relationship with ${names.nameOf(t.other)}` }, "Open")),
    ),
  );
  return table("Ties, strongest first", ["Person", "Tier", "Strength", "Events", "Last contact", "", "Relationship"], rows);
}

/** "ada 5 · grace 1" for one reciprocity counter. */
function split(counter, person, other) {
  const mine = counter?.[person] ?? 0;
  const theirs = counter?.[other] ?? 0;
  return h("span", {}, `${names.nameOf(person)} ${mine} · ${names.nameOf(other)} ${theirs}`);
}

function giveTable(person, ties) {
  if (!ties.length) return notice("info", "No ties to weigh.");
  const rows = ties.map((t) => {
    const r = t.reciprocity || {};
    return h(
      "tr",
      { class: t.one_sided ? "flagged" : null },
      h("td", {}, names.personLink(t.other)),
      h("td", {}, t.one_sided ? h("span", { class: "badge warn" }, "one-sided") : h("span", { class: "badge" }, "balanced")),
      h("td", {}, split(r.initiated, person, t.other)),
      h("td", {}, split(r.followed_up, person, t.other)),
      h("td", {}, split(r.replies, person, t.other)),
      h("td", {}, split(r.helped, person, t.other)),
      h("td", {}, split(r.introduced, person, t.other)),
    );
  });
  return table("Give and take per tie (one-sided first)", ["Person", "Balance", "Initiated", "Followed up", "Replied", "Helped", "Introduced"], rows);
}

export async function render(main, ctx) {
  const [id] = ctx.params;
  let p;
  try {
    p = await api.get(ROUTES.person, { person: id });
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      add(main, h("h1", { tabindex: "-1" }, "Person not found"), notice("error", `There is no person "${id}" in this workspace.`));
      return;
    }
    throw err;
  }
  names.remember([p]);
  const isMe = session.me === id;
  const meButton = h("button", {
    type: "button",
    onclick: () => {
      session.me = id;
      ctx.refreshChrome();
      ctx.announce(`${p.display_name} is now “me”.`);
      meButton.disabled = true;
      meButton.textContent = "This is me";
    },
    disabled: isMe || p.forgotten,
  }, isMe ? "This is me" : "Set as me");
  add(main, 
    h("h1", { tabindex: "-1" }, p.display_name, p.forgotten ? [" ", forgottenBadge()] : null),
    p.forgotten
      ? notice("info", "This person asked to be forgotten: their personal data was erased and their ties no longer count.")
      : null,
    h("p", { class: "actions" },
      meButton,
      h("a", { class: "button", href: `#/record?a=${encodeURIComponent(id)}` }, "Record an interaction"),
      h("a", { class: "button", href: `#/introductions?from=${encodeURIComponent(id)}` }, "Find introductions"),
      h("a", { class: "button", href: `#/losing-touch?person=${encodeURIComponent(id)}` }, "Losing touch")),
    details(p),
  );
  const tiesBox = h("section", { "aria-labelledby": "ties-h" }, h("h2", { id: "ties-h" }, "Ties"), loading("Loading ties"));
  const onlyOneSided = h("input", { type: "checkbox", id: "only-one-sided" });
  const giveBox = h("div", {}, loading("Loading give and take"));
  add(main, 
    tiesBox,
    h("section", { "aria-labelledby": "give-h" },
      h("h2", { id: "give-h" }, "Give and take"),
      h("p", {}, "Who makes the effort in each tie. A tie is one-sided when one person does nearly all of it (9:1)."),
      h("p", {}, onlyOneSided, " ", h("label", { for: "only-one-sided" }, "Only one-sided ties")),
      giveBox),
  );

  /** A section's read failed: say so in it, with a way to try again (the other section and
   *  the live updates go on). A list already shown stays, with the failure above it. */
  function failedIn(box, what, err, retry) {
    fill(box, box.querySelector("h2"), loadFailed(what, err, retry), box.querySelector("table"));
  }

  // Strongest first, 50 at a time: "Show more" follows next_cursor (issue 12's pagination)
  // or, from an API without it, asks for a longer list.
  let limit = 50;
  let pages = 1;
  const atLeast = seqFloor(); // one floor for both lists: both read the same stream
  const tiesTicket = newestOnly();
  async function loadTies(minSeq) {
    const newest = tiesTicket();
    let body;
    try {
      const query = { order: "strength", limit, min_seq: atLeast(minSeq) };
      body = await allPages(ROUTES.ties, { person: id }, query, ["relationships"], pages);
      await names.resolve((body.relationships || []).map((t) => t.other));
    } catch (err) {
      if (newest()) failedIn(tiesBox, "the ties", err, () => loadTies(minSeq));
      return;
    }
    if (!newest()) return;
    const ties = body.relationships || [];
    const hasMore = body.next_cursor || (ties.length === limit && limit < 1000);
    const more = hasMore
      ? h("button", {
        type: "button",
        onclick: () => {
          if (body.next_cursor) pages += 1;
          else limit = Math.min(limit * 4, 1000);
          loadTies();
        },
      }, "Show more ties")
      : null;
    fill(tiesBox, h("h2", { id: "ties-h" }, "Ties"), tiesTable(id, ties), more);
  }
  const giveTicket = newestOnly();
  async function loadGive(minSeq) {
    const newest = giveTicket();
    let ties;
    try {
      const query = { one_sided: onlyOneSided.checked ? "true" : undefined, min_seq: atLeast(minSeq) };
      const body = await allPages(ROUTES.giveAndTake, { person: id }, query, ["ties"]);
      ties = body.ties || [];
      await names.resolve(ties.map((t) => t.other));
    } catch (err) {
      if (newest()) failedIn(giveBox, "give and take", err, () => loadGive(minSeq));
      return;
    }
    if (!newest()) return;
    fill(giveBox, giveTable(id, ties));
  }
  onlyOneSided.addEventListener("change", () => loadGive());
  await Promise.all([loadTies(), loadGive()]); // each section shows its own failure

  const reload = debounce((seq) => Promise.all([loadTies(seq), loadGive(seq)]));
  ctx.onLeave(reload.cancel);
  ctx.live({ person: id }, (msg) => {
    if (msg.kind === "person.forgotten" && (msg.data?.person_id === id || msg.data?.person === id)) {
      ctx.navigate("#/people");
      return;
    }
    reload(seqOf(msg));
  });
}
