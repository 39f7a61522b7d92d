// Losing touch: the ties of "me" (or ?person=) past their tier's usual contact cadence, most
// strength at stake first, each with a one-click "Followed up" that records the event
// (an idempotent event_id: a retry after a lost answer records it once) and then reads the
// list again with ?min_seq= so the row is gone as soon as the write is applied.

import { ApiError, ROUTES, allPages, isEarlierAttempt, newId, record, session } from "../api.js";
import { add, fill, fmtAgo, h, loadFailed, loading, notice, scoreBar, table, tierBadge, timeEl, field } from "../dom.js";
import * as names from "../names.js";
import { debounce, newestOnly, seqFloor, seqOf } from "./live.js";

const CHANNELS = ["message", "email", "phone", "video", "in_person", "social", "letter", "other"];

function choosePerson(ctx) {
  const input = h("input", { type: "text", name: "person", required: true, pattern: "[A-Za-z0-9_\\-]{1,64}", list: "people-list", autocomplete: "off" });
  const list = h("datalist", { id: "people-list" });
  names.peopleOptions().then((ps) => fill(list, ps.map((p) => h("option", { value: p.person_id }, p.display_name)))).catch(() => {});
  return h("form", {
    class: "card narrow",
    onsubmit: (e) => {
      e.preventDefault();
      session.me = input.value.trim();
      ctx.navigate("#/losing-touch");
    },
  }, field("Your person id", input, { name: "person", hint: "Whose network to look at; kept for this tab." }), list, h("button", { type: "submit" }, "Show"));
}

export async function render(main, ctx) {
  const person = ctx.query.get("person") || session.me;
  add(main, h("h1", { tabindex: "-1" }, "Losing touch"));
  if (!person) {
    add(main, h("p", {}, "Tell tieline who you are to see the ties you are losing touch with."), choosePerson(ctx));
    return;
  }
  await names.resolve([person]);
  const channel = h("select", { id: "fu-channel", name: "channel" }, CHANNELS.map((c) => h("option", { value: c }, c.replace("_", " "))));
  const status = h("div", { "aria-live": "polite" });
  const refreshStatus = h("div", { "aria-live": "polite" }); // live refreshes: apart from writes
  const listBox = h("div", {}, loading("Loading follow-ups"));
  add(main, 
    h("p", {}, "Ties of ", names.personLink(person), " whose time since the last contact is past their tier's usual cadence, with the most strength at stake first."),
    h("p", { class: "inline" }, h("label", { for: "fu-channel" }, "One-click follow-ups are recorded as"), " ", channel),
    status,
    refreshStatus,
    listBox,
  );

  const pending = new Map(); // other -> event_id of a follow-up being recorded (retries reuse it)

  async function followedUp(row, button) {
    button.disabled = true;
    const eventId = pending.get(row.other) ?? newId();
    pending.set(row.other, eventId);
    let result;
    try {
      result = await record({
        type: "relationship.followed_up",
        event_id: eventId,
        from_person: person,
        to_person: row.other,
        channel: channel.value,
      });
    } catch (err) {
      if (isEarlierAttempt(err)) {
        // An earlier click landed (its answer was lost) with another channel: it is recorded.
        pending.delete(row.other);
        fill(status, notice("info", `An earlier click for ${names.nameOf(row.other)}, whose answer was lost, was recorded or is being recorded; the list shows what is.`));
        await load().catch(() => {});
        return;
      }
      button.disabled = false;
      const why = err instanceof ApiError && err.status === 403
        ? "your token may not record events (it needs the write role)"
        : err.message;
      fill(status, notice("error", `Could not record the follow-up with ${names.nameOf(row.other)}: ${why}. Trying again records it once.`));
      return;
    }
    pending.delete(row.other);
    const done = `Recorded a follow-up with ${names.nameOf(row.other)} (event ${result.seq}).`;
    try {
      await load(result.seq);
      fill(status, notice("ok", done));
    } catch (err) {
      // Recorded: the button stays disabled, so a click cannot record it a second time.
      fill(status, notice("info", `${done} The list could not be refreshed (${err.message}); it will be on the next update.`));
    }
  }

  const ticket = newestOnly();
  const atLeast = seqFloor();
  async function load(minSeq) {
    const newest = ticket();
    let due;
    try {
      const body = await allPages(ROUTES.followUps, { person }, { min_seq: atLeast(minSeq) }, ["due"]);
      due = body.due || [];
      await names.resolve(due.map((d) => d.other));
    } catch (err) {
      if (newest()) throw err; // an older load's failure: the newer one draws
      return;
    }
    if (!newest()) return;
    if (!due.length) {
      fill(listBox, notice("ok", "Nobody is overdue. Nice."));
      return;
    }
    const rows = due.map((d) => {
      const button = h("button", { type: "button", class: "primary", "aria-label": `Followed up with ${names.nameOf(d.other)}` }, "Followed up");
      button.addEventListener("click", () => followedUp(d, button));
      return h(
        "tr",
        { dataset: { other: d.other } },
        h("td", {}, names.personLink(d.other), " ", h("a", { href: `#/rel/${encodeURIComponent(person)}/${encodeURIComponent(d.other)}`, class: "small" }, "relationship")),
        h("td", {}, scoreBar(d.score)),
        h("td", {}, tierBadge(d.tier_at_last_contact)),
        h("td", {}, timeEl(d.last_contact_at), h("br"), h("small", {}, `${fmtAgo(d.days_since_contact)}; usual: every ${d.cadence_days} days`)),
        h("td", { class: "num" }, Number(d.at_stake).toFixed(1)),
        h("td", {}, button),
      );
    });
    fill(listBox, table(`${due.length} follow-ups due, most at stake first`, ["Person", "Strength", "Tier then", "Last contact", "At stake", ""], rows));
  }

  const failed = (err) => fill(listBox, loadFailed("the follow-ups", err, () => load().catch(failed)));
  await load().catch(failed);
  // A failed refresh keeps the list shown and says so.
  const reload = debounce((seq) => load(seq).then(
    () => refreshStatus.replaceChildren(),
    (err) => fill(refreshStatus, notice("error", `Could not refresh the list: ${err.message}.`))), 300);
  ctx.onLeave(reload.cancel);
  ctx.live({ person, kinds: "event.recorded,follow_up.due,relationship.changed,person.forgotten" }, (msg) => reload(seqOf(msg)));
}
