// One relationship: the strength over time (a marker per event at `strength_after`, the
// model's decay between events), the explanation, the audit timeline with retractions, and an
// "as of" date that redraws everything as of the end of that day (UTC).

import { ApiError, ROUTES, allPages, api } from "../api.js";
import { curvePoints, sampleTimes, scoreAt } from "../decay.js";
import { add, eventLabel, fill, fmtDate, fmtAgo, h, loading, notice, pool, table, tierBadge, timeEl } from "../dom.js";
import * as names from "../names.js";
import { drawStrengthChart } from "../strength-chart.js";
import { debounce, newestOnly, pairOf, seqFloor, seqOf } from "./live.js";

const DENSE = 24; // closed-form points per gap when the API gives states and parameters

/** The decay samples [{x, y}] between events, as the model computes them. */
async function decaySamples(a, b, events, end, tl) {
  if (events.length && events.every((e) => Array.isArray(e.decay_after))) {
    // The API's own samples of the model between events (timeline `decay_after`).
    return events.flatMap((e) => e.decay_after.map((p) => ({ x: Date.parse(p.at), y: p.score })));
  }
  const eventMs = events.map((e) => Date.parse(e.occurred_at));
  const params = tl.params ?? tl.strength_params;
  if (params && events.every((e) => e.state_after)) {
    // The documented closed form over each event's state (no extra requests).
    const out = [];
    events.forEach((e, i) => {
      const from = eventMs[i];
      const to = i + 1 < events.length ? eventMs[i + 1] : end.x;
      for (let j = 1; j <= DENSE && to > from; j++) {
        const t = j === DENSE ? to - 1 : from + ((to - from) * j) / DENSE;
        out.push({ x: t, y: scoreAt(e.state_after, params, t) });
      }
    });
    return out;
  }
  // The model itself at each instant: the pair read with ?as_of=.
  const times = sampleTimes(eventMs, end.x);
  const scores = await pool(times, 6, (t) =>
    api.get(ROUTES.relationship, { person_a: a, person_b: b }, { as_of: new Date(t).toISOString() }),
  );
  return times.map((t, i) => ({ x: t, y: scores[i].score }));
}

function summary(rel, a, b) {
  const rows = [
    ["Strength", h("strong", { id: "score", class: "big" }, Number(rel.score).toFixed(1)), " / 100 ", tierBadge(rel.tier)],
    ["As of", timeEl(rel.as_of, true)],
    ["Events", `${rel.event_count}: met ${rel.meetings}, follow-ups ${rel.follow_ups}, help ${rel.helps}, introductions ${rel.introductions}, ratings ${rel.ratings}`],
    ["First contact", timeEl(rel.first_contact_at)],
    ["Last contact", [timeEl(rel.last_contact_at), ` (${fmtAgo(rel.days_since_contact)})`]],
    ["Can vouch", rel.can_vouch ? "yes, for each other" : "not yet"],
  ];
  return h("dl", { class: "summary" }, rows.map(([k, ...v]) => h("div", { class: "stat" }, h("dt", {}, k), h("dd", {}, ...v))));
}

function explanation(x, a, b) {
  const r = x.reciprocity || {};
  const d = x.decay || {};
  const count = (c) => `${names.nameOf(a)} ${c?.[a] ?? 0} · ${names.nameOf(b)} ${c?.[b] ?? 0}`;
  return h(
    "div",
    { class: "grid" },
    h("section", { class: "card", "aria-labelledby": "top-h" },
      h("h3", { id: "top-h" }, "Top contributions"),
      x.top_contributions?.length
        ? h("ol", {}, x.top_contributions.map((c) =>
          h("li", {}, h("strong", {}, c.reason || eventLabel(c.type)), h("br"),
            `${fmtDate(c.occurred_at)}: +${c.points.toFixed(2)} points then, ${c.current.toFixed(2)} left now`)))
        : h("p", {}, "No contributions.")),
    h("section", { class: "card", "aria-labelledby": "recip-h" },
      h("h3", { id: "recip-h" }, "Reciprocity"),
      h("p", {}, r.one_sided ? h("span", { class: "badge warn" }, "one-sided") : h("span", { class: "badge" }, "balanced"),
        ` balance ${Number(r.balance ?? 0).toFixed(2)} (positive: ${names.nameOf(a)} makes more of the effort)`),
      h("ul", {},
        h("li", {}, "initiated: ", count(r.initiated)),
        h("li", {}, "followed up: ", count(r.followed_up)),
        h("li", {}, "replied: ", count(r.replies)),
        h("li", {}, "helped: ", count(r.helped)),
        h("li", {}, "introduced others: ", count(r.introduced)))),
    h("section", { class: "card", "aria-labelledby": "decay-h" },
      h("h3", { id: "decay-h" }, "Since the last contact"),
      h("ul", {},
        h("li", {}, `days since contact: ${d.days_since_contact === null || d.days_since_contact === undefined ? "—" : Number(d.days_since_contact).toFixed(0)}`),
        h("li", {}, `score at the last contact: ${d.score_at_last_contact ?? "—"}`),
        h("li", {}, `lost since: ${d.lost_since_last_contact ?? "—"}`),
        h("li", {}, `tier then: ${d.tier_at_last_contact ?? "—"}; usual contact every ${d.cadence_days ?? "—"} days`))),
    h("section", { class: "card", "aria-labelledby": "raise-h" },
      h("h3", { id: "raise-h" }, "What would raise it"),
      x.next_tier ? h("p", {}, `next tier: ${x.next_tier} at ${x.next_tier_score}`) : h("p", {}, "already in the innermost tier"),
      x.to_raise?.length ? h("ul", {}, x.to_raise.map((t) => h("li", {}, t))) : h("p", {}, "Nothing to suggest.")),
  );
}

function timelineTable(tl) {
  const rows = [...tl.events, ...(tl.retracted || [])].sort(
    (x, y) => Date.parse(y.occurred_at) - Date.parse(x.occurred_at) || y.seq - x.seq,
  );
  const body = rows.map((e) => {
    const what = [h("strong", {}, eventLabel(e.type)), e.reason ? [": ", e.reason] : null];
    return h(
      "tr",
      { class: e.retracted ? "retracted" : null, dataset: { eventId: e.event_id } },
      h("td", {}, timeEl(e.occurred_at, true)),
      h("td", {}, e.retracted ? [h("del", {}, ...what), " ", h("span", { class: "badge warn" }, "retracted")] : what),
      h("td", { class: "num" }, e.retracted ? "—" : `+${Number(e.contribution).toFixed(2)}`),
      h("td", { class: "num" }, e.strength_after === null || e.strength_after === undefined ? "—" : Number(e.strength_after).toFixed(1)),
      h("td", {}, e.recorded_by || "—"),
      h("td", {}, timeEl(e.recorded_at, true)),
    );
  });
  return table("Audit timeline, newest first", ["Occurred", "What", "Points", "Strength after", "Recorded by", "Recorded at"], body);
}

export async function render(main, ctx) {
  const [a, b] = ctx.params;
  const day = ctx.query.get("as_of") || "";
  const asOf = /^\d{4}-\d{2}-\d{2}$/.test(day) ? `${day}T23:59:59Z` : undefined;
  await names.resolve([a, b]);
  const base = `#/rel/${encodeURIComponent(a)}/${encodeURIComponent(b)}`;
  const dateInput = h("input", { type: "date", id: "as-of", name: "as_of", value: asOf ? day : "", max: new Date().toISOString().slice(0, 10) });
  dateInput.addEventListener("change", () => {
    // Typing a date fires "change" at each digit of the year (0002, 0020, 0202, 2024): only a
    // full year moves the page, or the redraw would take the field from under the keyboard.
    // An empty value comes mid-edit too (a deleted digit, an invalid date on the way): "Now"
    // is the way back.
    if (!dateInput.value || Number(dateInput.value.slice(0, 4)) < 1900) return;
    ctx.navigate(`${base}?as_of=${dateInput.value}`);
  });
  const canvas = h("canvas", { id: "strength-chart", role: "img", tabindex: "0", "aria-label": "Strength over time" });
  const figure = h("figure", { class: "chart card", dataset: { state: "loading", asOf: asOf ? day : "now" } },
    h("div", { class: "chart-box" }, canvas),
    h("figcaption", {}, "Each dot is an event, at the strength right after it; the line is the model's decay between events. Focus the chart and use the arrow keys to step through the events."));
  const summaryBox = h("div", {}, loading("Loading the relationship"));
  const explainBox = h("div", {});
  const timelineBox = h("div", {});
  add(main, 
    h("h1", { tabindex: "-1" }, names.nameOf(a), " & ", names.nameOf(b)),
    h("p", { class: "crumbs" }, names.personLink(a), " · ", names.personLink(b), " · ",
      h("a", { href: `#/record?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}` }, "Record an interaction")),
    h("form", { class: "inline as-of", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "as-of" }, "As of"), dateInput,
      h("button", { type: "button", onclick: () => ctx.navigate(base), disabled: !asOf }, "Now"),
      asOf ? h("span", { class: "hint" }, ` end of ${fmtDate(asOf)} (UTC)`) : null),
    summaryBox,
    h("section", { "aria-labelledby": "chart-h" }, h("h2", { id: "chart-h" }, "Strength over time"), figure),
    h("section", { "aria-labelledby": "explain-h" }, h("h2", { id: "explain-h" }, "Why this score"), explainBox),
    h("section", { "aria-labelledby": "timeline-h" }, h("h2", { id: "timeline-h" }, "Timeline"), timelineBox),
  );

  const ticket = newestOnly();
  const atLeast = seqFloor();
  const decayNote = h("div", {});
  figure.append(decayNote);
  async function load(minSeq) {
    const newest = ticket();
    decayNote.replaceChildren();
    const pair = { person_a: a, person_b: b };
    const query = { as_of: asOf, min_seq: atLeast(minSeq) };
    let rel;
    let x;
    let tl;
    try {
      [rel, x, tl] = await Promise.all([
        api.get(ROUTES.relationship, pair, query),
        api.get(ROUTES.explain, pair, query),
        allPages(ROUTES.timeline, pair, query, ["events", "retracted"]),
      ]);
    } catch (err) {
      if (!newest()) return; // an older load's failure: the newer one draws
      if (!(err instanceof ApiError) || err.status !== 404) throw err;
      fill(summaryBox, notice("info", `No recorded relationship between ${names.nameOf(a)} and ${names.nameOf(b)}${asOf ? ` by ${fmtDate(asOf)}` : ""}.`));
      figure.dataset.state = "empty";
      return;
    }
    if (!newest()) return;
    fill(summaryBox, summary(rel, a, b));
    fill(explainBox, explanation(x, a, b));
    fill(timelineBox, timelineTable(tl));
    const events = tl.events;
    const end = { x: Date.parse(rel.as_of), y: rel.score };
    const points = events.map((e) => ({ x: Date.parse(e.occurred_at), y: e.strength_after }));
    canvas.setAttribute("aria-label",
      `Strength over time: ${events.length} events from ${fmtDate(events[0]?.occurred_at)} to ${fmtDate(rel.as_of)}; now ${Number(rel.score).toFixed(1)} (${rel.tier}).`);
    figure.dataset.state = "drawing";
    const chart = drawStrengthChart(canvas, events, curvePoints(points, [], end), ctx.announce);
    let samples = [];
    try {
      samples = await decaySamples(a, b, events, end, tl);
    } catch (err) {
      // The summary, explanation and markers stand; only the curve between events is missing.
      if (newest()) fill(decayNote, notice("info", `The decay between events could not be drawn: ${err.message}.`));
    }
    if (!newest()) return;
    chart.data.datasets[1].data = curvePoints(points, samples, end);
    chart.update();
    figure.dataset.state = "ready";
    figure.dataset.events = String(events.length);
  }

  await load();
  const reload = debounce((seq) => load(seq).catch((err) => fill(summaryBox, notice("error", err.message))));
  ctx.onLeave(reload.cancel);
  ctx.live({ pair: `${a},${b}` }, (msg) => {
    const pair = pairOf(msg);
    if (pair && !(pair.includes(a) && pair.includes(b))) return;
    if (["event.recorded", "relationship.changed", "reset", "reconnected"].includes(msg.kind)) reload(seqOf(msg));
  });
}
