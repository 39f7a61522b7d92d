// The page's only way to the server: the public HTTP API, with the user's bearer token.
//
// Every route the page calls is listed in ROUTES, spelled exactly as in /openapi.json;
// tests/browser/test_routes.py checks this list (and the requests the browser really made)
// against the running API's /openapi.json.

export const ROUTES = Object.freeze({
  people: "/v1/workspaces/{ws}/people",
  person: "/v1/workspaces/{ws}/people/{person}",
  events: "/v1/workspaces/{ws}/events",
  relationship: "/v1/workspaces/{ws}/relationships/{person_a}/{person_b}",
  explain: "/v1/workspaces/{ws}/relationships/{person_a}/{person_b}/explain",
  timeline: "/v1/workspaces/{ws}/relationships/{person_a}/{person_b}/timeline",
  ties: "/v1/workspaces/{ws}/people/{person}/relationships",
  followUps: "/v1/workspaces/{ws}/people/{person}/follow-ups",
  giveAndTake: "/v1/workspaces/{ws}/people/{person}/give-and-take",
  warmPaths: "/v1/workspaces/{ws}/people/{person}/warm-paths",
  introductions: "/v1/workspaces/{ws}/introductions",
  vouchCheck: "/v1/workspaces/{ws}/introductions/check",
  stream: "/v1/workspaces/{ws}/stream",
});

const KEYS = { token: "tieline.token", ws: "tieline.workspace", me: "tieline.me" };

/** The signed-in session, kept in sessionStorage: it ends with the browser tab. */
export const session = {
  get token() { return sessionStorage.getItem(KEYS.token); },
  get workspace() { return sessionStorage.getItem(KEYS.ws) || "default"; },
  get me() { return sessionStorage.getItem(KEYS.me) || ""; },
  set me(person) {
    if (person) sessionStorage.setItem(KEYS.me, person);
    else sessionStorage.removeItem(KEYS.me);
  },
  signIn(token, workspace, me) {
    sessionStorage.setItem(KEYS.token, token);
    sessionStorage.setItem(KEYS.ws, workspace || "default");
    this.me = me;
  },
  signOut() {
    sessionStorage.removeItem(KEYS.token);
  },
};

/** An API answer other than 2xx, with the field errors the API named (field -> messages). */
export class ApiError extends Error {
  constructor(status, message, fields = {}, body = null) {
    super(message);
    this.status = status;
    this.fields = fields;
    this.body = body;
  }
}

/** The field an error item names: its `loc` (today) or `pointer`/`field` (problem+json). */
function fieldOf(item) {
  let loc = item.loc ?? item.field ?? item.pointer ?? item.name;
  if (typeof loc === "string") loc = loc.replace(/^#?\/?/, "").split(/[./]/);
  if (!Array.isArray(loc)) return null;
  const parts = loc.map(String).filter((p) => !["body", "query", "path", ""].includes(p));
  return parts[0] ?? null;
}

/** An ApiError from any of the API's error bodies: RFC 9457 problem+json (`title`, `detail`,
 *  `errors[]`) and the older `{error, detail[]}`, `{detail}` and per-write `{error, errors[]}`. */
export function errorFrom(status, body) {
  const b = body && typeof body === "object" ? body : {};
  const text = typeof b.detail === "string" ? b.detail : b.error || b.title || `HTTP ${status}`;
  const items = [
    ...(Array.isArray(b.errors) ? b.errors : []),
    ...(Array.isArray(b.detail) ? b.detail : []),
  ];
  const fields = {};
  for (const item of items) {
    if (!item || typeof item !== "object") continue;
    const name = fieldOf(item);
    const msg = item.msg ?? item.message ?? item.detail ?? item.title ?? "invalid";
    if (name) (fields[name] ||= []).push(String(msg));
  }
  return new ApiError(status, String(text), fields, body);
}

/** The concrete path of a route template; `{ws}` is the session's workspace. */
export function pathOf(route, params = {}) {
  return route.replace(/\{(\w+)\}/g, (_, name) => {
    const value = name === "ws" ? (params.ws ?? session.workspace) : params[name];
    if (value === undefined || value === null || value === "") {
      throw new Error(`missing ${name} for ${route}`);
    }
    return encodeURIComponent(String(value));
  });
}

/** The URL of a route with its query (undefined, null and "" values are left out). */
export function urlOf(route, params = {}, query = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return pathOf(route, params) + (s ? `?${s}` : "");
}

let onDenied = () => {};
/** Called with the ApiError whenever the API refuses the token (401) or the workspace (403
 *  on a read): the app sends the user back to sign in with a clear message. */
export function whenDenied(handler) { onDenied = handler; }

async function send(method, route, params, { query, body, token, workspace, quiet } = {}) {
  const headers = { Accept: "application/json" };
  const bearer = token ?? session.token;
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(urlOf(route, workspace ? { ...params, ws: workspace } : params, query), init);
  } catch (err) {
    throw new ApiError(0, `the tieline API did not answer (${err.message})`);
  }
  const type = resp.headers.get("content-type") || "";
  const data = type.includes("json") ? await resp.json().catch(() => null) : null;
  if (resp.ok) return data;
  const error = errorFrom(resp.status, data);
  if (!quiet && (resp.status === 401 || (resp.status === 403 && method === "GET"))) onDenied(error);
  throw error;
}

export const api = {
  get: (route, params, query, opts = {}) => send("GET", route, params, { ...opts, query }),
  post: (route, params, body, opts = {}) => send("POST", route, params, { ...opts, body }),
};

/**
 * Every page of a list: follows `next_cursor` (sent back as ?cursor=, issue 12's pagination)
 * and concatenates the arrays under `keys`, with at most `maxPages` requests. An answer
 * without `next_cursor` is a single page.
 */
export async function allPages(route, params, query, keys, maxPages = 50) {
  let body = await api.get(route, params, query);
  const out = { ...body };
  for (let n = 1; body.next_cursor && n < maxPages; n++) {
    body = await api.get(route, params, { ...query, cursor: body.next_cursor });
    for (const k of keys) out[k] = [...(out[k] || []), ...(body[k] || [])];
  }
  out.next_cursor = body.next_cursor ?? null;
  return out;
}

/** A random UUID (v4) for idempotent writes; works outside secure contexts too. */
export function newId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Records one event (POST /events) and returns the write result ({event_id, seq, ...}).
 *  `event.event_id` makes a retry of the same write record it once. */
export function record(event) {
  return api.post(ROUTES.events, {}, event);
}

/** Whether `err` says the write's `event_id` was already recorded with other content: an
 *  earlier attempt landed but its answer was lost, and the form was changed since. Sending
 *  the same id again can only fail, so the caller takes a new id (and says so). */
export function isEarlierAttempt(err) {
  return err instanceof ApiError && err.status === 409 && Boolean(err.fields?.event_id);
}
