// Record what happened: met, followed up, helped, introduced. The form's field names are the
// event's fields, so the API's field errors land next to the right field. Each form keeps one
// event_id until the write succeeds: submitting again after an error or a lost answer records
// the event at most once.

import { ApiError, isEarlierAttempt, newId, record, session } from "../api.js";
import { hasDraft } from "../drafts.js";
import { add, clearFieldErrors, field, fill, h, notice, showFieldErrors } from "../dom.js";
import * as names from "../names.js";

const DEPTHS = ["card_exchange", "brief_chat", "conversation", "deep_conversation", "meal_or_activity"];
const CHANNELS = ["email", "phone", "message", "video", "in_person", "social", "letter", "other"];

const person = (name, value = "") =>
  h("input", { type: "text", name, value, pattern: "[A-Za-z0-9_\\-]{1,64}", list: "record-people", autocomplete: "off" });
const text = (name, max = 200) => h("input", { type: "text", name, maxlength: String(max) });
const select = (name, options, value) =>
  h("select", { name }, options.map((o) => h("option", { value: o, selected: o === value }, o.replaceAll("_", " "))));
const when = () => h("input", { type: "datetime-local", name: "occurred_at", step: "60" });

/** The forms: [type, label, fields(query) -> [label, control, name, hint][], toEvent(form)]. */
const FORMS = [
  ["relationship.met", "Met", (q) => [
    ["Person", person("participant_a", q.get("a") || ""), "participants", null],
    ["Other person", person("participant_b", q.get("b") || ""), "participants_b", null],
    ["More people there (ids, comma-separated)", text("more", 2000), "more", "for a group meeting"],
    ["Depth", select("depth", DEPTHS, "conversation"), "depth", null],
    ["Mode", select("mode", ["in_person", "remote"], "in_person"), "mode", null],
    ["Minutes", h("input", { type: "number", name: "duration_minutes", min: "0", max: "1440", value: "60" }), "duration_minutes", null],
    ["Who initiated (id, optional)", person("initiated_by"), "initiated_by", null],
    ["Where (optional)", text("where"), "where", null],
    ["Context (optional)", h("textarea", { name: "context", maxlength: "2000", rows: "2" }), "context", null],
    ["When (optional; default now)", when(), "occurred_at", null],
  ], (f) => ({
    participants: [f.participant_a.value, f.participant_b.value, ...f.more.value.split(/[,\s]+/)].map((s) => s.trim()).filter(Boolean),
    depth: f.depth.value,
    mode: f.mode.value,
    duration_minutes: f.duration_minutes.value === "" ? undefined : Number(f.duration_minutes.value),
    initiated_by: f.initiated_by.value.trim() || undefined,
    where: f.where.value.trim() || undefined,
    context: f.context.value.trim() || undefined,
  })],
  ["relationship.followed_up", "Followed up", (q) => [
    ["From", person("from_person", q.get("a") || ""), "from_person", null],
    ["To", person("to_person", q.get("b") || ""), "to_person", null],
    ["Channel", select("channel", CHANNELS, "message"), "channel", null],
    ["They replied", h("input", { type: "checkbox", name: "replied" }), "replied", null],
    ["Note (optional)", text("note", 2000), "note", null],
    ["When (optional; default now)", when(), "occurred_at", null],
  ], (f) => ({
    from_person: f.from_person.value.trim(),
    to_person: f.to_person.value.trim(),
    channel: f.channel.value,
    replied: f.replied.checked,
    note: f.note.value.trim() || undefined,
  })],
  ["relationship.helped", "Helped", (q) => [
    ["Helper", person("helper", q.get("a") || ""), "helper", null],
    ["Helped", person("helped", q.get("b") || ""), "helped", null],
    ["What (optional)", text("what", 2000), "what", null],
    ["When (optional; default now)", when(), "occurred_at", null],
  ], (f) => ({ helper: f.helper.value.trim(), helped: f.helped.value.trim(), what: f.what.value.trim() || undefined })],
  ["relationship.introduced", "Introduced", (q) => [
    ["Introducer", person("introducer"), "introducer", null],
    ["Person", person("person_a", q.get("a") || ""), "person_a", null],
    ["Other person", person("person_b", q.get("b") || ""), "person_b", null],
    ["Why (optional)", text("reason", 2000), "reason", null],
    ["When (optional; default now)", when(), "occurred_at", null],
  ], (f) => ({
    introducer: f.introducer.value.trim(),
    person_a: f.person_a.value.trim(),
    person_b: f.person_b.value.trim(),
    reason: f.reason.value.trim() || undefined,
  })],
];

function buildForm(type, label, fieldsOf, toEvent, query) {
  const status = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "card record", dataset: { type, draft: `record:${type}` } });
  for (const [text_, control, name, hint] of fieldsOf(query)) {
    const box = field(text_, control, { name, hint });
    if (control.type === "checkbox") box.classList.add("check");
    form.append(box);
  }
  const submit = h("button", { type: "submit", class: "primary" }, `Record “${label.toLowerCase()}”`);
  form.append(submit, status);
  let eventId = newId();
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearFieldErrors(form);
    submit.disabled = true;
    const f = form.elements;
    let body;
    try {
      body = { type, event_id: eventId, ...toEvent(f) };
      // An unparseable date throws here: inside the try, so the button comes back (finally).
      if (f.occurred_at.value) body.occurred_at = new Date(f.occurred_at.value).toISOString();
      for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
      const r = await record(body);
      eventId = newId();
      const pair = pairOfEvent(body);
      fill(status, notice("ok", `Recorded (event ${r.seq}${r.duplicate ? ", already recorded before" : ""}). `,
        pair ? h("a", { href: `#/rel/${encodeURIComponent(pair[0])}/${encodeURIComponent(pair[1])}` }, "Open the relationship") : null));
    } catch (err) {
      if (isEarlierAttempt(err)) {
        eventId = newId();
        fill(status, notice("info", `An earlier attempt was recorded or is being recorded with other values (its answer was lost). Submitting again records these values as a new event.`));
      } else if (!(err instanceof ApiError) || err.status === 0) {
        fill(status, notice("error", `${err.message}. Submitting again records the event once.`));
      } else {
        const rest = showFieldErrors(form, err.fields);
        const why = err.status === 403 ? "This token may not record events (it needs the write role)." : err.message;
        fill(status, notice("error", why, rest.length ? h("ul", {}, rest.map((m) => h("li", {}, m))) : null));
      }
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function pairOfEvent(e) {
  if (e.participants?.length >= 2) return e.participants.slice(0, 2);
  if (e.from_person) return [e.from_person, e.to_person];
  if (e.helper) return [e.helper, e.helped];
  if (e.person_a) return [e.person_a, e.person_b];
  return null;
}

export async function render(main, ctx) {
  // The form with a draft kept over a sign-in (drafts.js) is the one the user was filling.
  const drafted = FORMS.find(([type]) => hasDraft(session.workspace, `record:${type}`));
  const chosen = drafted?.[0] || ctx.query.get("type") || FORMS[0][0];
  const list = h("datalist", { id: "record-people" });
  names.peopleOptions().then((ps) => fill(list, ps.map((p) => h("option", { value: p.person_id }, p.display_name)))).catch(() => {});
  const holder = h("div", {});
  const radios = h("fieldset", { class: "choices" }, h("legend", {}, "What happened?"),
    FORMS.map(([type, label]) => h("label", {},
      h("input", { type: "radio", name: "kind", value: type, checked: type === chosen }), ` ${label}`)));
  const forms = new Map(FORMS.map(([type, label, fieldsOf, toEvent]) => [type, buildForm(type, label, fieldsOf, toEvent, ctx.query)]));
  const show = (type) => fill(holder, forms.get(type) || forms.get(FORMS[0][0]));
  radios.addEventListener("change", (e) => show(e.target.value));
  add(main, h("h1", { tabindex: "-1" }, "Record an interaction"), list, radios, holder);
  show(chosen);
}
