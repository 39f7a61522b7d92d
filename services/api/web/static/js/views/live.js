// What the views read from the stream's messages (issue 12: `event.recorded` carries type,
// people and seq; `relationship.changed` the pair, the score before and after and the event
// that caused it). Readers are tolerant of field names so a small change in the payload
// degrades to a plain reload, never to a wrong page.

/** The stream sequence a message is about (for read-your-writes reloads), if it says. */
export function seqOf(msg) {
  const d = msg.data && typeof msg.data === "object" ? msg.data : {};
  const seq = d.seq ?? d.event?.seq ?? d.caused_by?.seq ?? d.cause?.seq;
  return Number.isInteger(seq) ? seq : undefined;
}

/** The two people a message concerns, if it names a pair. */
export function pairOf(msg) {
  const d = msg.data && typeof msg.data === "object" ? msg.data : {};
  const pair = d.pair ?? d.people;
  if (typeof pair === "string") return pair.split(",");
  if (Array.isArray(pair)) return pair.map(String);
  if (d.person_a && d.person_b) return [d.person_a, d.person_b];
  return null;
}

/** Calls `fn` at most once per `ms` burst (a batch import sends many messages at once).
 *  `.cancel()` drops a call still waiting: a view that is left must not reload into a page
 *  no one sees (views pass it to `ctx.onLeave`). */
export function debounce(fn, ms = 150) {
  let timer = null;
  let latest;
  const call = (arg) => {
    latest = arg === undefined ? latest : Math.max(latest ?? 0, arg);
    clearTimeout(timer);
    timer = setTimeout(() => { const a = latest; latest = undefined; fn(a); }, ms);
  };
  call.cancel = () => { clearTimeout(timer); latest = undefined; };
  return call;
}

/**
 * For a loader that may run again before its last answer is in (a live reload, a write's
 * read-your-writes reload, "Show more"): each call takes a ticket, and only the call started
 * last may draw. Answers can arrive out of order, and an older one must not replace a newer.
 * Returns a function to call at the start of each load; what it returns says, after each
 * await, whether this load is still the newest.
 */
export function newestOnly() {
  let started = 0;
  return () => {
    const mine = ++started;
    return () => mine === started;
  };
}

/**
 * The highest stream sequence a view has read at or after. Each of its loads sends it as
 * `min_seq`, so a load that names none (paging, a filter, a reload for an older event) never
 * shows a list from before a write the view has already shown. Returns a function that takes
 * a load's own `min_seq` (or nothing) and gives the one to send.
 */
export function seqFloor() {
  let floor = 0;
  return (seq) => {
    if (Number.isInteger(seq) && seq > floor) floor = seq;
    return floor || undefined;
  };
}
