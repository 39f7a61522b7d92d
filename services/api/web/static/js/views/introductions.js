// Introductions: who can introduce me to X (warm paths, each hop's strength), whether an
// introducer can vouch for both sides, and the double opt-in flow: request, each side's
// consent, the introduction itself, its outcome.

import { ApiError, ROUTES, allPages, api, isEarlierAttempt, newId, record, session } from "../api.js";
import { add, clearFieldErrors, field, fill, h, loadFailed, loading, notice, showFieldErrors, table, tierBadge, timeEl } from "../dom.js";
import * as names from "../names.js";
import { debounce, newestOnly, seqFloor, seqOf } from "./live.js";

function personInput(name, value = "") {
  return h("input", { type: "text", name, value, required: true, pattern: "[A-Za-z0-9_\\-]{1,64}", list: "intro-people", autocomplete: "off" });
}

/** Shows an API error on `form`: field errors next to the fields, the rest in `box`. */
function showError(form, box, err) {
  const rest = err instanceof ApiError ? showFieldErrors(form, err.fields) : [];
  const why = err instanceof ApiError && err.status === 403 ? "your token may not record events (it needs the write role)" : err.message;
  fill(box, notice("error", why, rest.length ? h("ul", {}, rest.map((m) => h("li", {}, m))) : null));
}

function warmPathsSection(from) {
  const source = personInput("person", from);
  const target = personInput("target");
  const out = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "card" },
    h("div", { class: "row" }, field("From", source, { name: "person" }), field("To", target, { name: "target" })),
    h("button", { type: "submit" }, "Find warm paths"), out);
  const ticket = newestOnly(); // a second search before the first is answered: the second shows
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const newest = ticket();
    clearFieldErrors(form);
    fill(out, loading("Looking for paths"));
    try {
      const body = await api.get(ROUTES.warmPaths, { person: source.value.trim() }, { target: target.value.trim() });
      await names.resolve(body.paths.flatMap((p) => p.path));
      if (!newest()) return;
      if (!body.paths.length) {
        fill(out, notice("info", "No warm path: nobody who knows both well enough to vouch, within two intermediaries."));
        return;
      }
      fill(out, h("ol", { class: "paths" }, body.paths.map((p) =>
        h("li", {},
          p.path.map((id, i) => [
            i ? h("span", { class: "hop" }, ` —${Number(p.link_scores[i - 1]).toFixed(1)}→ `) : null,
            names.personLink(id),
          ]),
          h("small", {}, ` (weakest link ${Number(p.weakest_link).toFixed(1)})`)))));
    } catch (err) {
      if (newest()) showError(form, out, err);
    }
  });
  return h("section", { "aria-labelledby": "paths-h" }, h("h2", { id: "paths-h" }, "Who can introduce me to…"), form);
}

function vouchSection(from) {
  const introducer = personInput("introducer");
  const a = personInput("a", from);
  const b = personInput("b");
  const out = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "card" },
    h("div", { class: "row" }, field("Introducer", introducer, { name: "introducer" }), field("Person", a, { name: "a" }), field("Other person", b, { name: "b" })),
    h("button", { type: "submit" }, "Check"), out);
  const ticket = newestOnly(); // a second check before the first is answered: the second shows
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const newest = ticket();
    clearFieldErrors(form);
    try {
      const q = { introducer: introducer.value.trim(), a: a.value.trim(), b: b.value.trim() };
      const body = await api.get(ROUTES.vouchCheck, {}, q);
      await names.resolve([q.introducer, q.a, q.b]);
      if (!newest()) return;
      const side = (id) => {
        const s = body[id] || {};
        return h("li", {}, names.personLink(id), ": ", s.can_vouch ? "can vouch" : "cannot vouch",
          s.tier ? [" ", tierBadge(s.tier), ` ${Number(s.score).toFixed(1)}`] : null,
          s.reasons?.length ? h("ul", {}, s.reasons.map((r) => h("li", {}, r))) : null);
      };
      fill(out, notice(body.can_introduce ? "ok" : "info",
        h("p", {}, body.can_introduce ? `${names.nameOf(q.introducer)} can vouch for both.` : `${names.nameOf(q.introducer)} cannot vouch for both.`),
        h("ul", {}, side(q.a), side(q.b))));
    } catch (err) {
      if (newest()) showError(form, out, err);
    }
  });
  return h("section", { "aria-labelledby": "vouch-h" }, h("h2", { id: "vouch-h" }, "Can they vouch?"), form);
}

/**
 * The next steps of one introduction, as buttons that record the events. `ids` keeps one
 * event id per introduction and step for the life of the view, across redraws: a second click
 * of the same step, on this button or on a redrawn one, records nothing new.
 */
function steps(intro, after, ids) {
  const id = intro.introduction_id;
  const act = (label, event) => {
    const key = `${id} ${event.type} ${event.person ?? ""} ${event.consented ?? ""} ${event.outcome ?? ""}`;
    if (!ids.has(key)) ids.set(key, newId());
    const button = h("button", { type: "button" }, label);
    button.addEventListener("click", async () => {
      // One step at a time per introduction: its other buttons wait for this one's answer.
      const row = [...(button.parentElement?.querySelectorAll("button") ?? [button])];
      for (const b of row) b.disabled = true;
      let r;
      try {
        r = await record({ ...event, event_id: ids.get(key) });
      } catch (err) {
        for (const b of row) b.disabled = false;
        await after(undefined, null, err);
        return;
      }
      await after(r.seq, `${label}: recorded.`);
    });
    return button;
  };
  const out = [];
  if (intro.status === "awaiting consent") {
    for (const [who, consent] of [[intro.requester, intro.requester_consent], [intro.target, intro.target_consent]]) {
      if (consent === null || consent === undefined) {
        out.push(act(`${names.nameOf(who)} agrees`, { type: "introduction.consented", introduction_id: id, person: who, consented: true }));
        out.push(act(`${names.nameOf(who)} declines`, { type: "introduction.consented", introduction_id: id, person: who, consented: false }));
      }
    }
  } else if (intro.status === "ready") {
    out.push(act("Make the introduction", { type: "relationship.introduced", introduction_id: id, introducer: intro.introducer, person_a: intro.requester, person_b: intro.target }));
  } else if (intro.status === "made") {
    for (const outcome of ["met", "talking", "no_response", "declined"]) {
      out.push(act(`Outcome: ${outcome.replace("_", " ")}`, { type: "introduction.outcome", introduction_id: id, outcome }));
    }
  }
  return out;
}

function flowSection(from) {
  const requester = personInput("requester", from);
  const introducer = personInput("introducer");
  const target = personInput("target");
  const reason = h("input", { type: "text", name: "reason", maxlength: "2000" });
  const out = h("div", { "aria-live": "polite" });
  const listBox = h("div", {}, loading("Loading introductions"));
  const stepIds = new Map(); // the steps' event ids, kept across redraws of the list
  let eventId = newId();
  const form = h("form", { class: "card", dataset: { draft: "introduction-request" } },
    h("div", { class: "row" }, field("Requester", requester, { name: "requester" }), field("Introducer", introducer, { name: "introducer" }), field("Target", target, { name: "target" })),
    field("Why (optional)", reason, { name: "reason" }),
    h("button", { type: "submit" }, "Request an introduction"), out);

  const ticket = newestOnly();
  const atLeast = seqFloor();
  async function load(minSeq) {
    const newest = ticket();
    let intros;
    try {
      const query = { person: from || undefined, min_seq: atLeast(minSeq) };
      const body = await allPages(ROUTES.introductions, {}, query, ["introductions"], 5);
      intros = body.introductions || body.items || [];
      await names.resolve(intros.flatMap((i) => [i.requester, i.introducer, i.target]));
    } catch (err) {
      if (newest()) throw err; // an older load's failure: the newer one draws
      return;
    }
    if (!newest()) return;
    const after = async (seq, message, err) => {
      if (err) fill(out, notice("error", err.message));
      if (seq) {
        try {
          await load(seq);
        } catch (e) {
          fill(out, notice("info", `${message} The list could not be refreshed (${e.message}); it will be on the next update.`));
          return;
        }
      }
      if (message) fill(out, notice("ok", message));
    };
    fill(listBox, intros.length
      ? table("Introductions, newest first", ["Requested", "Requester", "Introducer", "Target", "Status", "Next step"],
        intros.map((i) => h("tr", { dataset: { introductionId: i.introduction_id } },
          h("td", {}, timeEl(i.requested_at)),
          h("td", {}, names.personLink(i.requester)),
          h("td", {}, names.personLink(i.introducer)),
          h("td", {}, names.personLink(i.target)),
          h("td", {}, h("span", { class: "badge" }, i.status)),
          h("td", { class: "steps" }, steps(i, after, stepIds)))))
      : notice("info", "No introductions yet."));
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearFieldErrors(form);
    let r;
    try {
      r = await record({
        type: "introduction.requested",
        event_id: eventId,
        introduction_id: eventId,
        requester: requester.value.trim(),
        introducer: introducer.value.trim(),
        target: target.value.trim(),
        reason: reason.value.trim() || undefined,
      });
    } catch (err) {
      if (isEarlierAttempt(err)) {
        eventId = newId(); // that earlier request is in the list; another needs a new id
        fill(out, notice("info", "An earlier attempt, whose answer was lost, was recorded or is being recorded with other values (see the list). Submitting again requests these as a new introduction."));
        await load().catch(() => {});
        return;
      }
      showError(form, out, err); // not recorded: trying again with the same id records it once
      return;
    }
    eventId = newId();
    const done = "Requested. Both sides now need to agree before the introduction is made.";
    fill(out, notice("ok", done));
    try {
      await load(r.seq);
    } catch (err) {
      fill(out, notice("info", `${done} The list could not be refreshed (${err.message}); it will be on the next update.`));
    }
  });
  const failed = (err) => fill(listBox, loadFailed("the introductions", err, () => load().catch(failed)));
  /** A live refresh failed: a list already shown stays, with the failure above it. */
  const refreshFailed = (err) => {
    const shown = listBox.querySelector("table");
    if (!shown) return failed(err);
    fill(listBox, notice("error", `Could not refresh the list: ${err.message}.`), shown);
  };
  return {
    failed,
    refreshFailed,
    section: h("section", { "aria-labelledby": "flow-h" }, h("h2", { id: "flow-h" }, "Double opt-in introductions"),
      h("p", {}, "An introduction is made only after both people agree: request, consent from each side, the introduction, then how it went."),
      form, listBox),
    load,
  };
}

export async function render(main, ctx) {
  const from = ctx.query.get("from") || session.me;
  const list = h("datalist", { id: "intro-people" });
  names.peopleOptions().then((ps) => fill(list, ps.map((p) => h("option", { value: p.person_id }, p.display_name)))).catch(() => {});
  const flow = flowSection(from);
  add(main, h("h1", { tabindex: "-1" }, "Introductions"), list, warmPathsSection(from), vouchSection(from), flow.section);
  await flow.load().catch(flow.failed);
  const reload = debounce((seq) => flow.load(seq).catch(flow.refreshFailed), 300);
  ctx.onLeave(reload.cancel);
  ctx.live({ kinds: "event.recorded" }, (msg) => {
    const type = msg.data?.type || "";
    if (type.startsWith("introduction.") || type === "relationship.introduced") reload(seqOf(msg));
  });
}
