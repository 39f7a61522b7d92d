// Live updates: the workspace's Server-Sent Events stream, GET /v1/workspaces/{ws}/stream.
//
// A browser's EventSource cannot send an Authorization header, so the stream is read with
// fetch() and parsed here as the HTML standard's text/event-stream format: `event:` names the
// kind, `data:` lines carry JSON, `id:` is the position to resume from (sent back as
// Last-Event-ID on reconnect, so nothing is missed), `retry:` sets the reconnect delay, and
// lines starting with ':' are heartbeats.

import { ROUTES, urlOf, session } from "./api.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Parses a text/event-stream body into {event, data, id, retry} messages; `onChunk()` is
 *  called for every piece of the body received, heartbeats included. */
export async function* parseEventStream(body, onChunk = () => {}) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let data = [];
  let event = "";
  let id = null;
  let retry = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onChunk();
    buf += value;
    for (;;) {
      const m = /\r\n|\r|\n/.exec(buf);
      // A '\r' at the end of the chunk may be the first half of '\r\n': wait for more.
      if (!m || (m[0] === "\r" && m.index === buf.length - 1)) break;
      const line = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      if (line === "") {
        if (data.length || retry !== null) {
          yield { event: event || "message", data: data.length ? data.join("\n") : null, id, retry };
        }
        data = [];
        event = "";
        retry = null;
        continue;
      }
      if (line.startsWith(":")) continue; // heartbeat / comment
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? "" : line.slice(colon + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (name === "data") data.push(val);
      else if (name === "event") event = val;
      else if (name === "id" && !val.includes("\0")) id = val;
      else if (name === "retry" && /^\d+$/.test(val)) retry = Number(val);
    }
  }
}

/** The header in which the server says how often it sends a heartbeat (seconds). */
const HEARTBEAT_HEADER = "Tieline-Heartbeat-Seconds";
/** The server's default heartbeat, for a server that does not say. */
const DEFAULT_HEARTBEAT_S = 15;

/** How long the stream may stay silent before it counts as stalled: three heartbeats (one
 *  late or lost heartbeat is no reason to reconnect), and never under 3 s. */
export function stallAfterMs(headerValue) {
  const s = Number(headerValue);
  const beat = Number.isFinite(s) && s > 0 ? s : DEFAULT_HEARTBEAT_S;
  return Math.max(3 * beat * 1000, 3000);
}

/**
 * Opens the stream with `filters` (person, pair, kinds) and keeps it open: on a drop it
 * reconnects with backoff, resuming from the last id it saw. A connection that goes silent
 * (a proxy or a NAT that dropped it without closing it, a server that hangs) would otherwise
 * look "live" for ever: when neither a message nor a heartbeat arrives for three of the
 * server's heartbeat intervals, it is abandoned and reopened the same way.
 * `onMessage({kind, data, id})` gets every message with JSON data; `onState({state, ...})`
 * hears 'open', 'reconnecting', 'reconnected', 'denied' (401/403) and 'unavailable' (the
 * server has no stream route). Returns {close()}.
 */
export function openStream(filters, onMessage, onState) {
  let stopped = false;
  let lastId = null;
  let retryMs = 1000;
  let controller = null;
  let failures = 0;
  let everOpen = false;
  let openedAt = 0;

  async function connectOnce() {
    const mine = new AbortController();
    controller = mine;
    let stalled = false;
    let watchdog = null;
    let silentMs = stallAfterMs(null);
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => { stalled = true; mine.abort(); }, silentMs);
    };
    arm(); // an answer that never comes is a stall too
    try {
      return await readStream(mine, (ms) => { silentMs = ms; arm(); }, arm);
    } catch (err) {
      if (stalled) throw new Error(`nothing heard for ${Math.round(silentMs / 1000)} s`);
      throw err;
    } finally {
      clearTimeout(watchdog);
    }
  }

  async function readStream(mine, opened, heard) {
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${session.token}` };
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    const resp = await fetch(urlOf(ROUTES.stream, {}, filters), {
      headers, signal: mine.signal, cache: "no-store",
    });
    if (resp.status === 401 || resp.status === 403) return { final: "denied", status: resp.status };
    if (resp.status === 404 || resp.status === 405) return { final: "unavailable", status: resp.status };
    const type = resp.headers.get("content-type") || "";
    if (!resp.ok || !resp.body || !type.startsWith("text/event-stream")) {
      throw new Error(`the stream answered HTTP ${resp.status}`);
    }
    opened(stallAfterMs(resp.headers.get(HEARTBEAT_HEADER)));
    onState({ state: everOpen ? "reconnected" : "open" });
    everOpen = true;
    openedAt = Date.now();
    for await (const msg of parseEventStream(resp.body, heard)) {
      if (msg.id !== null) lastId = msg.id;
      if (msg.retry !== null) retryMs = msg.retry;
      if (msg.data === null) continue;
      // The backoff starts again only once the stream has delivered a message: one that opens
      // and drops at once (an overloaded server, a proxy) must not be retried at full speed.
      // The server's first line ("retry:") proves nothing, as it comes before any work.
      failures = 0;
      let data = msg.data;
      try { data = JSON.parse(msg.data); } catch { /* keep the text */ }
      const kind = msg.event !== "message" ? msg.event : (data && data.kind) || "message";
      onMessage({ kind, data, id: msg.id });
    }
    throw new Error("the stream ended");
  }

  (async () => {
    while (!stopped) {
      try {
        const end = await connectOnce();
        if (end) { onState({ state: end.final, status: end.status }); return; }
      } catch (err) {
        if (stopped) return;
        if (openedAt && Date.now() - openedAt >= 30000) failures = 0; // it held for a while
        openedAt = 0;
        failures += 1;
        const wait = Math.min(retryMs * 2 ** (failures - 1), 15000);
        onState({ state: "reconnecting", wait, error: String(err.message || err) });
        await sleep(wait);
      }
    }
  })();

  return {
    close() {
      stopped = true;
      controller?.abort();
    },
  };
}
