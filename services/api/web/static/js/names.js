// Display names for person ids. Relationship reads return ids only; names are personal data,
// stored encrypted, so they come from the people routes (each read is access-logged).

import { ApiError, ROUTES, api } from "./api.js";
import { h, pool, forgottenBadge } from "./dom.js";

const people = new Map(); // person id -> person row (or null: not found)

export function remember(rows) {
  for (const p of rows) people.set(p.person_id, p);
}

export function known(id) {
  return people.get(id);
}

/** Fetches the people not seen yet (6 requests at a time). A name that cannot be read now
 *  (the server is busy, a rate limit) is shown as the person's id and asked for again next
 *  time: a missing name must not cost the user the whole page. A refused token still fails. */
export async function resolve(ids) {
  const missing = [...new Set(ids)].filter((id) => id && !people.has(id));
  await pool(missing, 6, async (id) => {
    try {
      people.set(id, await api.get(ROUTES.person, { person: id }));
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      if (err.status === 404) people.set(id, null);
      else if (err.status === 401 || err.status === 403) throw err;
    }
  });
}

export function nameOf(id) {
  const p = people.get(id);
  return p?.display_name || id;
}

/** A link to a person's page showing their name (and the forgotten badge). */
export function personLink(id) {
  const p = people.get(id);
  return h(
    "span",
    { class: "person-ref" },
    h("a", { href: `#/person/${encodeURIComponent(id)}` }, nameOf(id)),
    p?.forgotten ? [" ", forgottenBadge()] : null,
  );
}

/** Fills a <datalist> with the first page of the directory, for person-id inputs. */
let directoryPage = null;
export async function peopleOptions() {
  if (!directoryPage) {
    const body = await api.get(ROUTES.people, {}, { limit: 1000 });
    directoryPage = body.people || [];
    remember(directoryPage);
  }
  return directoryPage.filter((p) => !p.forgotten);
}

export function forget() {
  people.clear();
  directoryPage = null;
}
