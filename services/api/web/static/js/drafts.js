// What the user typed, kept across a trip to the sign-in page.
//
// When the API refuses the token in the middle of a session (it expired or was revoked), the
// page goes to sign in, and the view, with a form half filled in or just submitted, is gone.
// Before it goes, the fields the user changed in forms marked `data-draft` are kept in
// sessionStorage (this tab only, like the token), with the page they were on. After sign-in
// in the same workspace the page goes back there and the view's forms get their values back;
// nothing is sent until the user submits again. Passwords are never kept.

const KEY = "tieline.drafts";

/** The fields of `form` whose value differs from what the form was drawn with. */
function changedValues(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name || ["password", "hidden", "submit", "button", "file"].includes(el.type)) continue;
    if (el.type === "checkbox" || el.type === "radio") {
      if (el.checked !== el.defaultChecked) out[el.name] = el.checked;
    } else if (el.tagName === "SELECT") {
      if ([...el.options].some((o) => o.selected !== o.defaultSelected)) out[el.name] = el.value;
    } else if (el.value !== el.defaultValue) {
      out[el.name] = el.value;
    }
  }
  return out;
}

function read() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}

/** Keeps the changed fields of every `form[data-draft]` under `root`, and `hash`, the page
 *  to come back to after signing in again to `workspace`. */
export function keepDrafts(root, workspace, hash) {
  const drafts = {};
  for (const form of root.querySelectorAll("form[data-draft]")) {
    const values = changedValues(form);
    if (Object.keys(values).length) drafts[form.dataset.draft] = values;
  }
  try {
    sessionStorage.setItem(KEY, JSON.stringify({ workspace, hash, drafts }));
  } catch {
    // Storage full or turned off: the drafts are lost as before, but sign-in must go on.
  }
}

/** The page to go back to after signing in to `workspace`, if one was kept for it. */
export function returnTo(workspace) {
  const kept = read();
  return kept && kept.workspace === workspace && kept.hash ? kept.hash : null;
}

/** Whether a draft for the form `key` is waiting for `workspace`. */
export function hasDraft(workspace, key) {
  const kept = read();
  return Boolean(kept && kept.workspace === workspace && kept.drafts?.[key]);
}

/** Gives the kept values back to the `form[data-draft]`s under `root` (a view just drawn
 *  after sign-in), then forgets every draft: they are offered once, on the first view drawn.
 *  Returns the forms that got values back. */
export function restoreDrafts(root, workspace) {
  const kept = read();
  sessionStorage.removeItem(KEY);
  if (!kept || kept.workspace !== workspace) return [];
  const restored = [];
  for (const form of root.querySelectorAll("form[data-draft]")) {
    const values = kept.drafts?.[form.dataset.draft];
    if (!values) continue;
    for (const [name, value] of Object.entries(values)) {
      const el = form.elements.namedItem(name);
      if (!el || el instanceof RadioNodeList) continue;
      if (el.type === "checkbox" || el.type === "radio") el.checked = Boolean(value);
      else el.value = String(value);
    }
    restored.push(form);
  }
  return restored;
}
